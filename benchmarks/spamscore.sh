#!/usr/bin/env bash
# Score every sample variant with SpamAssassin, local tests only (no network, no DNS).
# Needs Debian's spamassassin: apt-get install -y spamassassin
# Usage: benchmarks/spamscore.sh [ENTRY_ID ...]   (default: both sample entries)
# The footer's tokens (and so a few letters SpamAssassin counts) follow
# $STATUSMAIL_UNSUBSCRIBE_SECRET; unset, the sample signs with the published development
# secret (Maildir outbox only), as the tests do.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$repo"/{statusmail.yaml,regions.yaml,updates,subscribers,templates} "$work"/
entries=("$@")
[ ${#entries[@]} -gt 0 ] || entries=(block-2020-01-23 update-2020-04-21)
printf '%-20s %-8s %6s  %s\n' entry variant score rules
for entry in "${entries[@]}"; do
  statusmail --config "$work/statusmail.yaml" \
    send "$entry" --dry-run --preview-dir "$work/previews" >/dev/null 2>&1
  for eml in "$work/previews/$entry"/*.eml; do
    report=$(spamassassin -L -t -x -p "$work/user_prefs" --cf='use_bayes 0' < "$eml" 2>/dev/null)
    score=$(printf '%s\n' "$report" | sed -n 's/^X-Spam-Status: [A-Za-z]*, score=\([-0-9.]*\).*/\1/p')
    rules=$(printf '%s\n' "$report" | sed -n '/^X-Spam-Status:/,/autolearn=/p' | tr -d '\n\t' \
      | sed 's/.*tests=//; s/ *autolearn=.*//')
    printf '%-20s %-8s %6s  %s\n' "$entry" "$(basename "$eml" .eml)" "$score" "$rules"
  done
done

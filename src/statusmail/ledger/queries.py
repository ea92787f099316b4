"""The statements the delivery side runs, shared by the ledger (SQLite, synchronous) and
the PostgreSQL queue (asynchronous), so each is written once."""

from __future__ import annotations

# Up to :n pending recipients of this selection that nobody holds (or whose holder's
# lease ran out), taken for :me until the lease ends, each with its claim epoch bumped
# (the claim's fencing token, returned last). Suppressed addresses are never taken, nor
# rows :me itself still holds past its lease (they are in its hands: its renewal keeps
# them unless another sender took them). PostgreSQL skips rows another worker is taking
# at the same moment.
CLAIM = {
    "sqlite": """
        UPDATE deliveries SET claimed_by = :me, lease_until = {now} + :lease,
            claim_epoch = claim_epoch + 1
        WHERE rowid IN (
            SELECT rowid FROM deliveries
            WHERE entry_id = :e AND status = 'pending' AND selection = :g
              AND (claimed_by IS NULL OR (lease_until < {now} AND claimed_by <> :me))
              AND address NOT IN (SELECT address FROM suppressions)
            ORDER BY rowid LIMIT :n)
        RETURNING rowid, address, email, ascii_email, name, locale, region, attempts,
                  claim_epoch, topics
    """,
    "postgresql": """
        WITH picked AS (
            SELECT ctid FROM deliveries
            WHERE entry_id = :e AND status = 'pending' AND selection = :g
              AND (claimed_by IS NULL OR (lease_until < {now} AND claimed_by <> :me))
              AND address NOT IN (SELECT address FROM suppressions)
            ORDER BY seq LIMIT :n FOR UPDATE SKIP LOCKED)
        UPDATE deliveries d SET claimed_by = :me, lease_until = {now} + :lease,
            claim_epoch = d.claim_epoch + 1
        FROM picked WHERE d.ctid = picked.ctid
        RETURNING d.seq, d.address, d.email, d.ascii_email, d.name, d.locale, d.region,
                  d.attempts, d.claim_epoch, d.topics
    """,
}

# The lease of what :me still holds, renewed; the answer is what that is (each row
# with its epoch): a row missing from it, or with another epoch, was taken over.
RENEW = (
    "UPDATE deliveries SET lease_until = {now} + :lease"
    " WHERE entry_id = :e AND claimed_by = :me AND status = 'pending'"
    " RETURNING address, claim_epoch"
)

RELEASE = (
    "UPDATE deliveries SET claimed_by = NULL, lease_until = NULL"
    " WHERE entry_id = :e AND claimed_by = :me AND status = 'pending'"
)

RECORD = (
    "UPDATE deliveries SET status = :status, attempts = :attempts, code = :code,"
    " detail = :detail, message_id = COALESCE(:message_id, message_id), updated_at = {stamp},"
    " claimed_by = NULL, lease_until = NULL"
    " WHERE entry_id = :e AND address = :address"
)

# The outcome of a claimed row, only while the row's epoch is the one it was claimed at
# (the fence): a sender whose claim was taken over meanwhile changes nothing. A row
# handed back (pending) stays as another's selection left it: one it skipped (the reader
# unsubscribed meanwhile) went back to pending under an old generation, and every later
# run ended with it still pending. What went out, or failed for good, is recorded.
RECORD_FENCED = (
    RECORD + " AND claim_epoch = :epoch AND (:status <> 'pending' OR status = 'pending')"
)

STATE = "SELECT generation, selected_generation FROM entries WHERE entry_id = :e"

REMAINING = (
    "SELECT COUNT(*) FROM deliveries WHERE entry_id = :e AND status = 'pending'"
    " AND selection = :g AND address NOT IN (SELECT address FROM suppressions)"
)

SUPPRESSED = "SELECT reason FROM suppressions WHERE address = :address"

SUPPRESS = (
    "INSERT INTO suppressions (address, reason, detail, created_at)"
    " VALUES (:address, :reason, :detail, :stamp) ON CONFLICT (address) DO NOTHING"
)

# What the relay accepted: sent, and what came back since (a bounce or complaint keeps
# the row's updated_at, when it went out).
WENT_OUT_SQL = "('sent', 'bounced', 'complained')"

# What counts against sending.max_per_hour, deployment-wide: accepted in the last hour,
# and held by a live claim (about to be sent). An outcome's time and the hour are both
# the database's clock: with each sender's own, a host two hours behind sent the cap
# again on top of the others' (review).
HOURLY = (
    f"SELECT (SELECT COUNT(*) FROM deliveries WHERE status IN {WENT_OUT_SQL}"
    " AND updated_at >= {hour_ago})"
    " + (SELECT COUNT(*) FROM deliveries WHERE status = 'pending'"
    " AND claimed_by IS NOT NULL AND lease_until >= {now})"
)

# Taken (PostgreSQL) before a claim under the cap counts, so that two senders cannot
# both count the same free slots: held to the end of the claim's transaction. (SQLite's
# BEGIN IMMEDIATE is that lock already.) The key is any other than the migrations'.
HOURLY_LOCK = "SELECT pg_advisory_xact_lock(7356283702)"


LIMITER_CREATE = "INSERT INTO limiters (name, tat) VALUES (:name, 0) ON CONFLICT (name) DO NOTHING"

# Reserve a span of the deployment's rate limit (GCRA: from the previous reservation's
# end or now, whichever is later); the answer is the wait for the first slot.
SLOTS = (
    "UPDATE limiters SET tat = {greatest}(tat, {now}) + :span WHERE name = :name"
    " RETURNING tat - :span - {now}"
)

# GCRA: the next slot is interval after the previous one or now, whichever is later;
# the answer is how long to wait for this caller's slot.
LIMITER_TAKE = (
    "UPDATE limiters SET tat = {greatest}(tat, {now}) + :interval WHERE name = :name"
    " RETURNING tat - :interval - {now}"
)


def parents(count: int) -> str:
    """The Message-IDs a thread entry's messages to ``count`` addresses went out with."""
    marks = ", ".join(f":a{i}" for i in range(count))
    return (
        "SELECT address, message_id FROM deliveries"
        f" WHERE entry_id = :thread AND status = 'sent' AND address IN ({marks})"
    )


# -- the selection's lease -----------------------------------------------------------------

# A new generation of the entry's selection, leased to :me until :lease seconds from now
# (the generation is the lease's fencing token): taken only if nobody holds a lease
# that still runs; TAKE_SELECTION_ANYWAY takes it whatever (one run per entry on SQLite).
# PostgreSQL does not wait for a selector that stood still inside a write of its
# selection (the row is locked until the server ends that transaction): not taken yet.
TAKE_SELECTION_ANYWAY = (
    "UPDATE entries SET generation = generation + 1, selector = :me,"
    " selector_until = {now} + :lease, selecting_from = :imported WHERE entry_id = :e"
    " RETURNING generation"
)
TAKE_SELECTION = {
    "sqlite": (
        "UPDATE entries SET generation = generation + 1, selector = :me,"
        " selector_until = {now} + :lease, selecting_from = :imported WHERE entry_id = :e"
        " AND (selector IS NULL OR selector_until < {now}) RETURNING generation"
    ),
    "postgresql": """
        WITH free AS (
            SELECT entry_id FROM entries WHERE entry_id = :e
              AND (selector IS NULL OR selector_until < {now})
            FOR UPDATE SKIP LOCKED)
        UPDATE entries SET generation = generation + 1, selector = :me,
            selector_until = {now} + :lease, selecting_from = :imported
        FROM free WHERE entries.entry_id = free.entry_id
        RETURNING entries.generation
    """,
}

# Someone's lease of the entry's selection still runs.
SELECTION_LEASED = (
    "SELECT COUNT(*) FROM entries WHERE entry_id = :e"
    " AND selector IS NOT NULL AND selector_until >= {now}"
)

# The fence of every write of a selection, first in its transaction: no row when
# another sender has taken the selection over. Renewing, it also extends the lease; the
# row stays locked until the write commits, so a takeover waits for it to end.
RENEW_SELECTION = (
    "UPDATE entries SET selector_until = {now} + :lease"
    " WHERE entry_id = :e AND generation = :g RETURNING generation"
)
SELECTION_HELD = {
    "sqlite": "SELECT generation FROM entries WHERE entry_id = :e AND generation = :g",
    "postgresql": (
        "SELECT generation FROM entries WHERE entry_id = :e AND generation = :g FOR SHARE"
    ),
}

# The selection is over (complete, or given up): nobody holds its lease any more.
RELEASE_SELECTION = (
    "UPDATE entries SET selector = NULL, selector_until = NULL"
    " WHERE entry_id = :e AND generation = :g"
)

# One more change of ``name`` (CHOICES: what readers chose), in the changing transaction.
BUMP = (
    "INSERT INTO changes (name, version) VALUES (:name, 1)"
    " ON CONFLICT (name) DO UPDATE SET version = changes.version + 1"
)
CHOICES = "choices"  # a preference saved, a suppression lifted

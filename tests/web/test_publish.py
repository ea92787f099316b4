"""``statusmail publish``: the sample as a static site in both languages and three
editions, its feeds read back by feedparser, the atomic swap, the ``publish.after``
hook, ``watch`` keeping the site current, and the messages' link to the reader's edition."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import stat
import threading
from pathlib import Path
from typing import Any

import feedparser
import pytest

from conftest import (
    BLOCK,
    CSV_HEADER,
    SAMPLE_ENTRIES,
    UPDATE,
    copy_sample,
    invoke,
    outbox_files,
)
from git_helpers import commit, init_repo, require_git
from statusmail.content.render import Renderer
from statusmail.content.variants import VariantKey, probe_recipient
from statusmail.domain import ExitCode
from statusmail.errors import InputError, StatusmailError
from statusmail.project.config import load_config
from statusmail.project.editions import (
    edition_problems,
    news_urls,
    publish_problems,
    read_editions,
)
from statusmail.project.entries import load_entries
from statusmail.project.regions import link_hosts, load_regions
from statusmail.web.publish import CURRENT, RELEASES, pages_of, publish, site_problems
from statusmail.web.republish import Republisher, publish_command, run_after

EDITIONS = ("www", "mirror", "onion")
LANGUAGES = ("en", "ru")
ONION = "startmailfictionalonionhostforillustrationsonlyxyzzamfqd.onion"
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DRAFT = "draft-2020-05-01"
LATER = "later-2020-06-01"


def add_entry(
    config: Path,
    entry_id: str,
    *,
    status: str = "ready",
    extra: str = "audience: {topics: [service-status]}\n",
) -> None:
    (config.parent / "updates" / f"{entry_id}.yaml").write_text(
        f"id: {entry_id}\ndate: {entry_id[-10:]}\nstatus: {status}\n{extra}"
        "content:\n"
        f"  en: {{subject: 'News {entry_id}', summary: 'What happened.', body: 'More news.'}}\n",
        encoding="utf-8",
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample published, with a draft and an entry whose send_at is still to come."""
    config = copy_sample(tmp_path_factory.mktemp("publish") / "project")
    add_entry(config, DRAFT, status="draft")
    add_entry(config, LATER, extra="send_at: 2099-01-01T00:00:00Z\naudience: {topics: all}\n")
    result = publish(load_config(config), now=NOW)
    assert result.changed and result.editions == EDITIONS
    assert result.next_due == dt.datetime(2099, 1, 1, tzinfo=dt.UTC)  # watch looks again then
    return result.site


def test_the_site_is_readable_by_the_web_server_whatever_the_umask(tmp_path: Path) -> None:
    """The watch unit runs with UMask=0077: the site's folders came out 0700 and its
    pages 0600, which nginx (another user) and publish.after's rsync cannot read."""
    config = load_config(copy_sample(tmp_path / "project"))
    out = tmp_path / "served" / "site"
    before = os.umask(0o077)
    try:
        publish(config, out, now=NOW)
    finally:
        os.umask(before)
    inside = [out.parent, out, *(out / RELEASES).rglob("*")]
    folders = {p: stat.S_IMODE(p.stat().st_mode) for p in inside if p.is_dir()}
    files = {p: stat.S_IMODE(p.stat().st_mode) for p in inside if p.is_file()}
    assert files and set(files.values()) == {0o644}, files
    assert set(folders.values()) == {0o755}, folders
    assert (out / CURRENT / "www" / "index.html").resolve() in files


def test_both_languages_three_editions_small_pages_nothing_loaded(site: Path) -> None:
    for edition in EDITIONS:
        root = (site / edition / "index.html").read_text(encoding="utf-8")
        lang = "en" if edition == "www" else "ru"
        assert f'<html lang="{lang}">' in root  # RU's language
        # a feed reader pointed at the root finds its language's feeds, as on every page
        assert 'type="application/atom+xml" title=' in root and f'/{lang}/feed.atom"' in root
        assert f'<a href="{lang}/feed.atom">Atom</a>' in root
        for lang in LANGUAGES:
            folder = site / edition / lang
            names = {p.name for p in folder.iterdir()}
            assert names == {"index.html", "feed.atom", "feed.json"} | {
                f"{e}.html" for e in SAMPLE_ENTRIES
            }
    pages = pages_of(site)
    assert len(pages) == 3 * (1 + 2 * (1 + len(SAMPLE_ENTRIES)))
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert len(html.encode()) < 30_000, page
        assert not re.search(r"<script|<img|<iframe|\ssrc=|@import|url\(|stylesheet", html)
        assert DRAFT not in html and LATER not in html
    ru = (site / "www/ru" / f"{BLOCK}.html").read_text(encoding="utf-8")
    assert '<html lang="ru">' in ru and "23\u00a0января 2020\u00a0г." in ru  # CLDR, typeset
    assert 'hreflang="en" href="https://www.startmail.example/status/en/' in ru
    assert '<a href="../en/block-2020-01-23.html" hreflang="en" lang="en">English</a>' in ru
    assert "Хронология" in ru and f'href="{UPDATE}.html"' in ru  # the story together
    index = (site / "www/en/index.html").read_text(encoding="utf-8")
    assert index.index(UPDATE) < index.index(BLOCK)  # newest first, in one story
    assert index.count('<section class="sm-card">') == 1
    assert 'type="application/atom+xml"' in index and 'type="application/feed+json"' in index


def test_ru_editions_link_only_to_the_mirror_or_the_onion(site: Path) -> None:
    for edition in ("mirror", "onion"):
        for page in pages_of(site / edition):
            html = page.read_text(encoding="utf-8")
            assert link_hosts(html) <= {"startmail-ru.test", ONION}, page
            assert 'class="sm-access"' in html, page  # the access block on every page
    onion = (site / "onion/en" / f"{BLOCK}.html").read_text(encoding="utf-8")
    assert f'href="http://{ONION}/blog/startmail-blocked-in-russia"' in onion
    www = (site / "www/en" / f"{BLOCK}.html").read_text(encoding="utf-8")
    assert "sm-access" not in www.split("</head>")[1]
    assert 'href="https://www.startmail.example/blog/startmail-blocked-in-russia"' in www


def test_feeds_parse_and_hold_every_ready_entry_once(site: Path) -> None:
    for edition in EDITIONS:
        for lang in LANGUAGES:
            feed = feedparser.parse((site / edition / lang / "feed.atom").read_bytes())
            assert not feed.bozo, feed.bozo_exception
            assert feed.version == "atom10" and feed.feed.language == lang
            ids = [e.id for e in feed.entries]
            assert sorted(ids) == sorted(
                f"tag:startmail.example,{e[-10:]}:status/{e}/{lang}" for e in SAMPLE_ENTRIES
            )
            for item in feed.entries:
                assert item.link.startswith(feed.feed.link.rsplit("/", 1)[0])
                assert item.updated_parsed and item.content[0].value.startswith("<p")
            document = json.loads((site / edition / lang / "feed.json").read_bytes())
            assert document["version"] == "https://jsonfeed.org/version/1.1"
            assert [i["id"] for i in document["items"]] == ids


def test_updated_moves_only_with_the_text(tmp_path: Path) -> None:
    config = load_config(copy_sample(tmp_path / "project"))
    first = publish(config, now=NOW)
    again = publish(config, now=NOW + dt.timedelta(days=1))
    assert not again.changed and again.release == first.release

    def updated(lang: str) -> dict[str, str]:
        feed = feedparser.parse((first.site / "www" / lang / "feed.atom").read_bytes())
        return {e.id.split(":")[-1]: e.updated for e in feed.entries}

    before = {lang: updated(lang) for lang in LANGUAGES}
    path = config.paths.updates / f"{UPDATE}.yaml"
    path.write_text(
        path.read_text(encoding="utf-8").replace("Спасибо за терпение", "Спасибо вам за терпение"),
        encoding="utf-8",
    )
    later = NOW + dt.timedelta(days=2)
    changed = publish(config, now=later)
    assert changed.changed and changed.release != first.release
    assert first.release.is_dir()  # a reader still on the old folder reads it whole
    assert updated("en") == before["en"]
    after = updated("ru")
    assert after[f"status/{UPDATE}/ru"] == "2026-01-03T00:00:00Z"
    assert after[f"status/{BLOCK}/ru"] == before["ru"][f"status/{BLOCK}/ru"]


def test_readers_never_see_half_a_site_and_a_failed_render_keeps_it(tmp_path: Path) -> None:
    project = copy_sample(tmp_path / "project")
    with project.open("a", encoding="utf-8") as handle:
        handle.write("publish: {out: site}\n")
    config = load_config(project)
    out = tmp_path / "site"
    publish(config, out)
    assert not site_problems(config)
    stop, seen, torn = threading.Event(), [0], []

    def read() -> None:
        while not stop.is_set():
            folder = (out / CURRENT).resolve()  # a reader follows the link once per visit
            pages = [folder / e / "en/index.html" for e in EDITIONS]
            for page in pages:
                text = page.read_text(encoding="utf-8")
                if not text.endswith("</html>\n"):
                    torn.append(str(page))
            seen[0] += 1

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(2):
            add_entry(project, f"news-2021-0{n + 1}-01")
            assert publish(config, out).changed
    finally:
        stop.set()
        reader.join(10)
    assert seen[0] > 0 and not torn
    assert len(list((out / RELEASES).iterdir())) == 3  # older ones pruned

    (project.parent / "templates/site/index.html.j2").write_text("{% if %}", encoding="utf-8")
    held = (out / CURRENT).resolve()
    with pytest.raises(StatusmailError, match=r"index\.html\.j2"):
        publish(config, out)
    assert (out / CURRENT).resolve() == held and len(list((out / RELEASES).iterdir())) == 3
    said = site_problems(config)  # what check says of it
    assert [(Path(str(p.path)).name, p.line) for p in said] == [("index.html.j2", 1)]


def test_the_releases_kept_are_the_last_written_even_within_one_second(tmp_path: Path) -> None:
    """Publishes ~40 ms apart share a second; the release before current must survive."""
    project = copy_sample(tmp_path / "project")
    config = load_config(project)
    out = tmp_path / "out"
    written = [publish(config, out, now=NOW).release]
    for n in range(5):
        add_entry(project, f"news-2021-0{n + 1}-01")
        written.append(publish(config, out, now=NOW).release)
    assert sorted(p.name for p in (out / RELEASES).iterdir()) == [p.name for p in written[-3:]]
    assert (out / CURRENT).resolve() == written[-1].resolve()


def test_an_entry_for_elsewhere_cannot_give_blocked_links_to_the_mirror_s_readers(
    tmp_path: Path,
) -> None:
    """The mail's check looks at the regions of an entry's audience; every edition
    publishes every entry. An entry for NL linking the blocked domain in a form RU's
    rewrite misses (the apex) would reach RU's readers on the mirror and the onion."""
    project = copy_sample(tmp_path / "project")
    with project.open("a", encoding="utf-8") as handle:
        handle.write("publish: {out: site}\n")
    (project.parent / "updates" / "nl-2020-05-01.yaml").write_text(
        "id: nl-2020-05-01\ndate: 2020-05-01\nstatus: ready\n"
        "audience: {regions: [NL], topics: [service-status]}\ncontent:\n"
        "  en: {subject: Maintenance, summary: Downtime tonight.,"
        " body: 'Details: <https://startmail.example/help/maintenance>'}\n",
        encoding="utf-8",
    )
    config = load_config(project)
    said = [str(p) for p in site_problems(config)]
    entry = project.parent / "updates" / "nl-2020-05-01.yaml"
    for edition in ("mirror", "onion"):
        assert (
            f"{entry}:5: readers in RU of the {edition!r} edition still get a link to"
            " startmail.example in en/nl-2020-05-01.html" in "\n".join(said)
        ), said
    assert len(said) == 2, said  # the feeds and indexes carry the same link: said once
    with pytest.raises(InputError):
        publish(config, tmp_path / "out", now=NOW)
    assert not (tmp_path / "out" / CURRENT).exists()
    checked = invoke(project, "check")
    assert checked.exit_code == 1 and "blocked-link" not in checked.stdout  # (text format)
    assert "readers in RU of the 'mirror' edition" in checked.stdout


def test_a_region_s_language_written_as_a_locale_still_gives_its_editions_it(
    tmp_path: Path,
) -> None:
    """default_locale_by_region: {RU: ru-RU} means Russian for mail: the mirror's and the onion's
    root pages too (they compared "ru-RU" with "ru" and fell back to English)."""
    project = copy_sample(tmp_path / "project")
    text = project.read_text(encoding="utf-8")
    assert "{RU: ru," in text
    project.write_text(text.replace("{RU: ru,", "{RU: ru-RU,"), encoding="utf-8")
    published = publish(load_config(project), tmp_path / "out", now=NOW)
    for edition in ("mirror", "onion"):
        root = (published.site / edition / "index.html").read_text(encoding="utf-8")
        assert '<html lang="ru">' in root, edition


def test_after_hook_failure_is_reported_and_run_again(tmp_path: Path) -> None:
    project = copy_sample(tmp_path / "project")
    with project.open("a", encoding="utf-8") as handle:
        # fails until the marker exists; then copies the site where a mirror would be
        handle.write(
            "publish: {out: site, after: 'test -e ok && rm -rf mirror"
            ' && cp -RL "$STATUSMAIL_SITE" mirror\'}\n'
        )
    config = load_config(project)

    class Lines:
        said: list[str] = []  # noqa: RUF012

        def print(self, *objects: object, markup: bool = False, highlight: bool = False) -> None:
            self.said.append(" ".join(map(str, objects)))

    assert publish_command(config, None, Lines()) == ExitCode.FAILED
    assert "publish.after failed" in Lines.said[-1] and not (project.parent / "mirror").exists()
    (project.parent / "ok").touch()
    assert publish_command(config, None, Lines()) == ExitCode.OK  # unchanged, hook run again
    assert Lines.said[-1].startswith("unchanged")
    assert (project.parent / "mirror/www/en/index.html").is_file()

    # watch's republisher retries a failed hook by itself, with backoff
    (project.parent / "ok").unlink()
    add_entry(project, "news-2021-01-01")
    quick = dataclasses.replace(config.publish, retry=0.05)
    republisher = Republisher(dataclasses.replace(config, publish=quick))
    republisher.request()
    assert republisher.wait_idle(10) and republisher.last is not None
    assert republisher.last.changed
    (project.parent / "ok").touch()
    deadline = threading.Event()
    for _ in range(200):
        if (project.parent / "mirror/www/en/news-2021-01-01.html").is_file():
            break
        deadline.wait(0.05)
    republisher.close()
    assert (project.parent / "mirror/www/en/news-2021-01-01.html").is_file()


def test_watch_republishes_after_sending_a_new_entry(tmp_path: Path) -> None:
    project = copy_sample(tmp_path / "project")
    text = project.read_text(encoding="utf-8").replace("rate: 20 ", "rate: 0 ")
    project.write_text(text + "publish: {out: site}\n", encoding="utf-8")
    (project.parent / "subscribers/more.yaml").unlink()
    (project.parent / "subscribers/main.csv").write_text(
        CSV_HEADER + "anna@example.org,Anna,en,NL,service-status,active\n", encoding="utf-8"
    )
    site = project.parent / "site" / CURRENT
    old = publish(load_config(project)).release
    add_entry(project, "news-2021-01-01", extra="audience: {topics: [service-status]}\n")
    second = invoke(project, "watch", "--once")
    assert second.exit_code == 0, second.output
    assert len(outbox_files(project)) == 2  # the January notice and the new entry
    assert (site / "mirror/en/news-2021-01-01.html").is_file()
    assert not (old / "www/en/news-2021-01-01.html").exists()  # the old folder, untouched
    assert (old / "www/en/index.html").read_text(encoding="utf-8").endswith("</html>\n")


def test_publish_command_and_its_help(tmp_path: Path) -> None:
    project = copy_sample(tmp_path / "project")
    result = invoke(project, "publish", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("published: www, mirror, onion")
    assert (tmp_path / "out/current/onion/ru/index.html").is_file()
    helped = invoke(None, "publish", "--help")
    assert "--out" in helped.stdout and "regions.yaml" in helped.stdout


def test_messages_link_to_the_edition_of_the_readers_region(tmp_path: Path) -> None:
    config = load_config(copy_sample(tmp_path / "project"))
    regions = load_regions(config.paths.regions)
    editions, problems = read_editions(config.paths.regions, regions)
    assert not problems and not edition_problems(editions)
    renderer = Renderer(config.paths.templates, regions, config.sender.name, news_urls(editions))
    entry = load_entries(config.paths.updates)[0][BLOCK]
    for key, url in (
        (VariantKey("ru", "RU", True), "https://startmail-ru.test/status/ru/"),
        (VariantKey("en"), "https://www.startmail.example/status/en/"),
    ):
        rendered = renderer.render(entry, key, probe_recipient(key).name, "https://u.example/x")
        assert f'<a href="{url}"' in rendered.html and url in rendered.text

    text = config.paths.regions.read_text(encoding="utf-8")
    config.paths.regions.write_text(
        text.replace("https://startmail-ru.test/status/", "https://ru.startmail.example/s/"),
        encoding="utf-8",
    )
    assert not publish_problems(config, {})  # no publish section: no site to keep
    with config.path.open("a", encoding="utf-8") as handle:
        handle.write("publish: {out: site}\n")
    said = publish_problems(load_config(config.path), {})
    assert [p.code for p in said] == ["missing-field"] and "'editions'" in said[0].message
    editions, _ = read_editions(config.paths.regions, regions)
    found = edition_problems(editions)
    assert [p.code for p in found] == ["blocked-link"] and "mirror" in found[0].message
    with pytest.raises(InputError, match="is not a region"):
        config.paths.regions.write_text(
            text.replace("readers: [RU]", "readers: [XX]"), encoding="utf-8"
        )
        from statusmail.project.editions import load_editions

        load_editions(config.paths.regions, regions)


def test_the_ci_dry_run_of_a_changed_entry_renders_its_pages(tmp_path: Path) -> None:
    require_git()
    project = copy_sample(tmp_path / "repo")
    init_repo(project.parent)
    add_entry(
        project,
        "news-2021-01-01",
        status="draft",
        extra="audience: {locales: [en], topics: [service-status]}\n",
    )
    commit(project.parent, "a draft")
    out = tmp_path / "previews"
    result = invoke(
        project, "send", "--dry-run", "--all-changed-since", "HEAD~1", "--preview-dir", str(out)
    )
    assert result.exit_code == 0, result.output
    pages = out / "news-2021-01-01" / "site"
    assert (out / "news-2021-01-01/index.html").is_file()  # the messages' gallery beside them
    assert sorted(p.relative_to(pages).as_posix() for p in pages_of(pages)) == [
        f"{edition}/{name}"
        for edition in sorted(EDITIONS)
        for name in ("en/index.html", "en/news-2021-01-01.html", "index.html")
    ]


def test_the_after_hook_gets_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook publishes files; a failing one printed its environment into the log,
    the unsubscribe secret, the relay's password and PGPASSWORD with it."""
    project = copy_sample(tmp_path / "project")
    with project.open("a", encoding="utf-8") as handle:
        handle.write("publish: {out: site, after: 'env > hook-env'}\n")
    secrets = {
        "STATUSMAIL_UNSUBSCRIBE_SECRET": "SECRET-unsub-0123456789abcdef0123456789",
        "STATUSMAIL_SMTP_PASSWORD": "SECRET-smtp",
        "PGPASSWORD": "SECRET-pg",
        "STATUSMAIL_LEDGER": "postgresql://u:SECRET-url@db.internal/statusmail",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SOMETHING_ELSE", "kept")
    config = load_config(project)
    assert run_after(config, tmp_path / "site")
    seen = (project.parent / "hook-env").read_text(encoding="utf-8")
    assert "SECRET-" not in seen, seen
    assert "SOMETHING_ELSE=kept" in seen and f"STATUSMAIL_SITE={tmp_path / 'site'}" in seen


def test_a_paused_or_cancelled_entry_is_not_published(tmp_path: Path) -> None:
    """pause holds an entry and cancel withdraws it, but publish, and watch after it,
    put the text on the site and in its feeds before anyone was mailed it (review)."""
    project = copy_sample(tmp_path / "project")
    text = project.read_text(encoding="utf-8").replace("rate: 20 ", "rate: 0 ")
    project.write_text(text + "publish: {out: site}\n", encoding="utf-8")
    held, withdrawn = "held-2021-01-01", "withdrawn-2021-01-02"
    for entry_id in (held, withdrawn):
        add_entry(project, entry_id)
    assert invoke(project, "pause", held).exit_code == 0
    assert invoke(project, "cancel", withdrawn).exit_code == 0
    site = project.parent / "site" / CURRENT

    def public() -> str:
        files = [p for p in site.rglob("*") if p.is_file()]
        assert files
        return "\n".join(p.read_text(encoding="utf-8") for p in files)

    done = invoke(project, "watch", "--once")
    assert done.exit_code == 0, done.output
    shown = public()
    assert "update-2020-04-21" in shown
    assert held not in shown and withdrawn not in shown
    assert invoke(project, "resume", held).exit_code == 0
    assert invoke(project, "watch", "--once").exit_code == 0
    assert held in public() and withdrawn not in public()


def test_publish_removes_and_writes_nothing_it_did_not_make(tmp_path: Path) -> None:
    """prune removed every folder of a releases/ that was a link to a shared folder, the
    lock's link had its target emptied, and the state file's was overwritten (review)."""
    config = load_config(copy_sample(tmp_path / "project"))
    out = tmp_path / "site"
    shared = tmp_path / "shared"
    for name in ("backups", "docs", "photos"):
        (shared / name).mkdir(parents=True)
    out.mkdir()
    (out / RELEASES).symlink_to(shared)
    with pytest.raises(InputError, match="is a link"):
        publish(config, out, now=NOW)
    assert sorted(p.name for p in shared.iterdir()) == ["backups", "docs", "photos"]

    (out / RELEASES).unlink()
    (out / RELEASES / "notes").mkdir(parents=True)  # someone else's folder
    victim, victim2 = tmp_path / "victim.txt", tmp_path / "victim2.txt"
    for each in (victim, victim2):
        each.write_text("precious data\n", encoding="utf-8")
    (out / ".statusmail-publish.json.new").symlink_to(victim2)
    for number in range(5):  # more releases than are kept
        add_entry(config.path, f"news-2021-01-0{number + 1}")
        assert publish(config, out, now=NOW).changed
    assert (out / RELEASES / "notes").is_dir()
    assert victim2.read_text(encoding="utf-8") == "precious data\n"
    (out / ".lock").unlink()
    (out / ".lock").symlink_to(victim)
    with pytest.raises(InputError, match=r"\.lock: cannot open it"):
        publish(config, out, now=NOW)
    assert victim.read_text(encoding="utf-8") == "precious data\n"


def test_a_new_entry_is_new_to_feed_readers_and_a_corrected_date_keeps_its_id(
    tmp_path: Path,
) -> None:
    """An entry first published on a site that had been published before was dated
    back to its `date`, and the feed's `updated` did not move: a feed reader that keeps
    the newest time it saw skipped it. Correcting its `date` changed its feed id: feed
    readers showed the correction as a second item (review)."""
    project = copy_sample(tmp_path / "project")
    config = load_config(project)
    publish(config, now=NOW)
    entry_id = "news-2021-01-01"
    add_entry(project, entry_id)
    later = NOW + dt.timedelta(days=3)
    site = publish(config, now=later).site

    def feed() -> Any:
        return feedparser.parse((site / "www" / "en" / "feed.atom").read_bytes())

    [item] = [e for e in feed().entries if entry_id in e.id]
    assert item.published == item.updated == "2026-01-04T00:00:00Z"
    assert feed().feed.updated == "2026-01-04T00:00:00Z"
    path = config.paths.updates / f"{entry_id}.yaml"
    path.write_text(
        path.read_text(encoding="utf-8").replace("date: 2021-01-01", "date: 2021-01-02"), "utf-8"
    )
    assert publish(config, now=later + dt.timedelta(days=1)).changed
    [again] = [e for e in feed().entries if entry_id in e.id]
    assert (again.id, again.published) == (item.id, item.published)

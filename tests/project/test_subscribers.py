"""Subscriber lists (streamed, validated, de-duplicated), audience selection, locales."""

from __future__ import annotations

import datetime as dt
import inspect
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import CSV_HEADER, SECRET_ENV, UPDATE, invoke, outbox_messages, recipient
from statusmail.domain import Audience, Content, Entry, EntryStatus, Recipient
from statusmail.project import subscriber_rows as subscribers_module
from statusmail.project.config import load_config
from statusmail.project.entries import load_entry
from statusmail.project.locales import normalize_locale, resolve_locale
from statusmail.project.selection import Inactive, SelectionStats, select
from statusmail.project.subscriber_rows import RowProblem, Subscriber, clean_name
from statusmail.project.subscribers import iter_subscribers, read_file

BY_REGION = {"RU": "ru", "BY": "ru", "KZ": "ru"}

# The sample's active service-status subscribers, by region, with their resolved locale.
RU_READERS = {
    "anna.petrova@example.org": "ru",  # locale ru (main.csv spelling wins over more.yaml)
    "ivan.smirnov@example.com": "ru",  # ru-RU
    "olga.kuznetsova@example.net": "ru",  # ru_RU
    "dmitry.volkov@example.org": "en",  # en, though in RU
    "kate.morozova@example.com": "en",  # en, though in RU
    "sergey.orlov@example.net": "ru",  # locale "RU"
    "elena.sokolova@example.org": "ru",  # empty locale, RU -> ru
    "maria@пример.испытание": "ru",  # IDN
    "viktor.egorov@example.com": "ru",  # locale "RU"
}
BY_READERS = {
    "alexander.kozlov@example.com": "ru",
    "hanna.sidarenka@example.net": "ru",  # empty locale, BY -> ru
}
KZ_READERS = {
    "aigerim.nurlanova@example.org": "ru",
    "daniyar.abenov@example.com": "en",  # chose de, unsupported: English, not the KZ guess
    "alexei.popov@пример.испытание": "ru",  # empty locale, KZ -> ru
}
OTHER_READERS = {
    "jan.devries@example.net": "en",  # NL
    "lukas.schmidt@example.com": "en",  # DE, de -> en; empty status means active
    "sean.obrien@example.org": "en",  # US
    "grace.oconnor@example.net": "en",  # US, no locale key at all
}
INACTIVE = {
    "pavel.lebedev@example.com",
    "tatiana.belova@example.org",
    "mia.weber@example.net",
    "natalia.fedorova@example.net",
    "nikolai.zaitsev@example.net",
    "john.miller@example.net",
}
NOT_SERVICE_STATUS = {
    "maxim.novikov@example.org",
    "sanne.bakker@example.org",
    "emily.carter@example.com",
    "sophie.mueller@example.com",
}


def subscribers_of(items: list[Subscriber | RowProblem]) -> list[Subscriber]:
    return [i for i in items if isinstance(i, Subscriber)]


def problems_of(items: list[Subscriber | RowProblem]) -> list[RowProblem]:
    return [i for i in items if isinstance(i, RowProblem)]


# -- reading -------------------------------------------------------------------------


def test_iter_subscribers_is_a_generator(project: Path) -> None:
    gen = iter_subscribers(project.parent / "subscribers")
    assert inspect.isgenerator(gen)
    assert inspect.isgenerator(read_file(project.parent / "subscribers/main.csv"))
    assert inspect.isgenerator(read_file(project.parent / "subscribers/more.yaml"))
    gen.close()


def test_sample_yields_each_address_once_first_spelling_wins(project: Path) -> None:
    items = list(iter_subscribers(project.parent / "subscribers"))
    assert problems_of(items) == []
    subs = subscribers_of(items)
    keys = [s.key for s in subs]
    assert len(keys) == 28
    assert len(set(keys)) == 28
    expected = (
        set(RU_READERS)
        | set(BY_READERS)
        | set(KZ_READERS)
        | set(OTHER_READERS)
        | INACTIVE
        | NOT_SERVICE_STATUS
    )
    assert set(keys) == expected
    anna = next(s for s in subs if s.key == "anna.petrova@example.org")
    # main.csv row 2, not more.yaml's spelling (en, NL)
    assert anna.email == "Anna.Petrova@example.org"
    assert anna.path.name == "main.csv"
    assert anna.line == 2
    assert (anna.locale, anna.region) == ("ru", "RU")
    assert anna.name == "Анна Петрова"
    assert anna.topics == frozenset({"service-status", "product-news"})


def test_duplicates_across_files_case_insensitive(tmp_path: Path) -> None:
    folder = tmp_path / "subs"
    folder.mkdir()
    (folder / "a.csv").write_text(CSV_HEADER + "First.Spelling@Example.ORG,One,en,US,t,active\n")
    (folder / "b.yaml").write_text(
        "- email: first.spelling@example.org\n  name: Two\n"
        "- email: FIRST.SPELLING@EXAMPLE.ORG\n  name: Three\n"
        "- email: other@example.org\n  name: Four\n"
    )
    subs = subscribers_of(list(iter_subscribers(folder)))
    assert [(s.email, s.name) for s in subs] == [
        ("First.Spelling@example.org", "One"),
        ("other@example.org", "Four"),
    ]


@pytest.mark.parametrize(
    ("first", "later"),
    [("active", "unsubscribed"), ("active", "bounced"), ("unsubscribed", "active")],
)
def test_a_status_other_than_active_wins_whatever_row_says_it(
    tmp_path: Path, first: str, later: str
) -> None:
    """A list kept as main.csv and unsubscribes.csv: the first spelling won whole, so the
    person the second file unsubscribes (any spelling, any file) was mailed again."""
    folder = tmp_path / "subs"
    folder.mkdir()
    (folder / "main.csv").write_text(
        CSV_HEADER
        + f"anna@example.org,Anna,ru,RU,t,{first}\n"
        + "kate@example.com,Kate,en,RU,t,active\n"
    )
    (folder / "unsubscribes.yaml").write_text(
        f"- email: Anna@Example.ORG\n  name: Other\n  status: {later}\n"
    )
    subs = subscribers_of(list(iter_subscribers(folder)))
    withdrawn = first if first != "active" else later
    assert [(s.key, s.name, s.locale, s.status) for s in subs] == [
        ("anna@example.org", "Anna", "ru", withdrawn),  # the first row, but not active
        ("kate@example.com", "Kate", "en", "active"),
    ]


def test_a_send_never_mails_whom_another_file_unsubscribes(project: Path) -> None:
    unsubscribes = project.parent / "subscribers" / "unsubscribes.csv"
    unsubscribes.write_text(CSV_HEADER + "Anna.Petrova@EXAMPLE.org,,ru,RU,,unsubscribed\n")
    sent = invoke(project, "send", UPDATE, "--yes", "--json", env=SECRET_ENV)
    assert sent.exit_code == 0, sent.output
    mailed = {recipient(message) for message in outbox_messages(project)}
    assert mailed and "anna.petrova@example.org" not in mailed


def test_idn_domain_punycode_and_unicode_are_one_address(tmp_path: Path) -> None:
    folder = tmp_path / "subs"
    folder.mkdir()
    (folder / "a.yaml").write_text(
        "- email: maria@xn--e1afmkfd.xn--80akhbyknj4f\n  name: A\n"
        "- email: MARIA@ПРИМЕР.ИСПЫТАНИЕ\n  name: B\n",
        encoding="utf-8",
    )
    subs = subscribers_of(list(iter_subscribers(folder)))
    assert len(subs) == 1
    assert subs[0].email == "maria@пример.испытание"
    assert subs[0].ascii_email == "maria@xn--e1afmkfd.xn--80akhbyknj4f"


def test_sample_idn_addresses(project: Path) -> None:
    subs = {
        s.key: s for s in subscribers_of(list(iter_subscribers(project.parent / "subscribers")))
    }
    maria = subs["maria@пример.испытание"]
    assert maria.email == "maria@пример.испытание"
    assert maria.ascii_email == "maria@xn--e1afmkfd.xn--80akhbyknj4f"
    assert subs["alexei.popov@пример.испытание"].ascii_email == (
        "alexei.popov@xn--e1afmkfd.xn--80akhbyknj4f"
    )
    # plain ASCII addresses keep their form
    assert subs["ivan.smirnov@example.com"].ascii_email == "ivan.smirnov@example.com"


def test_non_ascii_local_part_has_no_ascii_form(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text(CSV_HEADER + "мария@пример.испытание,Мария,ru,RU,t,active\n", encoding="utf-8")
    (sub,) = list(read_file(path))
    assert isinstance(sub, Subscriber)
    assert sub.email == "мария@пример.испытание"
    assert sub.ascii_email is None


def test_csv_line_numbers_count_blank_lines_and_quoted_cells(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text(
        CSV_HEADER  # line 1
        + 'a@example.org,"Two, ""Quoted""",en,US,t,active\n'  # line 2
        + "not-an-address,x,en,US,t,active\n"  # line 3
        + "\n"  # line 4, blank, skipped
        + ",,,,,\n"  # line 5, empty cells, skipped
        + "b@example.org,B,en,US,t,active\n"  # line 6
        + 'c@example.org,"Кузнецова, Ольга",ru_RU,RU,"t;u",\n'  # line 7
        + "bad@,x,en,US,t,active\n",  # line 8
        encoding="utf-8",
    )
    items = list(read_file(path))
    assert [(type(i).__name__, i.line) for i in items] == [
        ("Subscriber", 2),
        ("RowProblem", 3),
        ("Subscriber", 6),
        ("Subscriber", 7),
        ("RowProblem", 8),
    ]
    first = items[0]
    assert isinstance(first, Subscriber)
    assert first.name == 'Two, "Quoted"'
    third = items[3]
    assert isinstance(third, Subscriber)
    assert third.name == "Кузнецова, Ольга"
    assert third.topics == frozenset({"t", "u"})
    assert third.status == "active"
    bad = items[1]
    assert isinstance(bad, RowProblem)
    assert bad.path == path
    assert bad.email == "not-an-address"
    assert str(bad).startswith(f"{path}:3: invalid address 'not-an-address'")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("not-an-address,x,en,US,t,active", "invalid address 'not-an-address'"),
        (
            "a@example.org,x,en,US,t,gone",
            "status 'gone' is not one of active, unsubscribed, bounced",
        ),
        ("a@example.org,x,en,USA,t,active", "region 'USA' is not an ISO 3166-1 code"),
        ("a@example.org,x,en,R1,t,active", "region 'R1' is not an ISO 3166-1 code"),
        (",x,en,US,t,active", "missing email address"),
    ],
)
def test_csv_bad_rows(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "list.csv"
    path.write_text(
        CSV_HEADER
        + "ok@example.org,OK,en,US,t,active\n"
        + row
        + "\n"
        + "after@example.org,After,en,US,t,active\n"
    )
    items = list(read_file(path))
    assert [i.line for i in items] == [2, 3, 4]
    problem = items[1]
    assert isinstance(problem, RowProblem)
    assert problem.path == path
    assert problem.message.startswith(message), problem.message
    assert str(problem).startswith(f"{path}:3: {message}")
    assert [s.email for s in subscribers_of(items)] == ["ok@example.org", "after@example.org"]


def test_region_is_upper_cased_and_status_default(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text(CSV_HEADER + "a@example.org,A,ru,ru,t,\n")
    (sub,) = list(read_file(path))
    assert isinstance(sub, Subscriber)
    assert sub.region == "RU"
    assert sub.status == "active"


@pytest.mark.parametrize("header", ["mail,name\n", "email,name,colour\n", "name,locale\n"])
def test_csv_bad_header(tmp_path: Path, header: str) -> None:
    path = tmp_path / "list.csv"
    path.write_text(header + "a@example.org,A\n")
    items = list(read_file(path))
    assert len(items) == 1
    problem = items[0]
    assert isinstance(problem, RowProblem)
    assert (problem.path, problem.line) == (path, 1)
    assert problem.message.startswith("header must name the columns")


def test_csv_header_with_subset_of_columns(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("Email,Region\na@example.org,KZ\n")
    (sub,) = list(read_file(path))
    assert isinstance(sub, Subscriber)
    assert (sub.email, sub.region, sub.status, sub.locale) == ("a@example.org", "KZ", "active", "")


def test_yaml_bad_rows_in_the_middle_keep_streaming(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(
        "# comment\n"  # 1
        "- email: a@example.org\n"  # 2
        "  region: RU\n"  # 3
        "- email: not-an-address\n"  # 4
        "  region: RU\n"  # 5
        "- {email: b@example.org, topics: [x, y]}\n"  # 6
        "- email: c@example.org\n"  # 7
        "  colour: red\n"  # 8
        "- just a string\n"  # 9
        "- email: d@example.org\n"  # 10
        "  status: paused\n"  # 11
        "- email: e@example.org\n"  # 12
        "  region: [RU, BY]\n"  # 13
        "- email: f@example.org\n"  # 14
        "  name: F\n",  # 15
    )
    items = list(read_file(path))
    assert [(type(i).__name__, i.line) for i in items] == [
        ("Subscriber", 2),
        ("RowProblem", 4),
        ("Subscriber", 6),
        ("RowProblem", 7),
        ("RowProblem", 9),
        ("RowProblem", 10),
        ("RowProblem", 12),
        ("Subscriber", 14),
    ]
    msgs = [i.message for i in problems_of(items)]
    assert msgs[0].startswith("invalid address 'not-an-address'")
    assert msgs[1].startswith("unknown key 'colour'")
    assert msgs[2] == "each subscriber must be a mapping"
    assert msgs[3].startswith("status 'paused'")
    b = items[2]
    assert isinstance(b, Subscriber)
    assert b.topics == frozenset({"x", "y"})


def test_yaml_is_streamed_rows_before_a_syntax_error_come_out(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(
        "- email: a@example.org\n"
        "- email: b@example.org\n"
        '- email: "unclosed\n'
        "- email: z@example.org\n"
    )
    gen = read_file(path)
    first = next(gen)  # a whole-document load would fail before yielding anything
    assert isinstance(first, Subscriber)
    assert first.email == "a@example.org"
    rest = list(gen)
    assert isinstance(rest[0], Subscriber)
    assert rest[0].email == "b@example.org"
    assert len(rest) == 2
    problem = rest[1]
    assert isinstance(problem, RowProblem)
    assert problem.message.startswith("invalid YAML")
    assert problem.line >= 3


def test_yaml_not_a_list(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("# subscribers\nemail: a@example.org\n")
    (problem,) = list(read_file(path))
    assert isinstance(problem, RowProblem)
    assert (problem.line, problem.message) == (2, "expected a list of subscribers")


def test_missing_folder(tmp_path: Path) -> None:
    (problem,) = list(iter_subscribers(tmp_path / "nope"))
    assert isinstance(problem, RowProblem)
    assert problem.message == "subscribers folder not found"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Line\r\nBcc: evil@example.org", "Line Bcc: evil@example.org"),
        ("Tab\there", "Tab here"),
        ("Bell\x07 and NUL\x00", "Bell and NUL"),
        ("Sep\u2028arator\u2029s\x7f", "Sep arator s"),
        ("NEL\x85and CSI\x9bend", "NEL and CSI end"),
        ("  spaced   out  ", "spaced out"),
        ("Сергей\nОрлов", "Сергей Орлов"),
    ],
)
def test_clean_name(raw: str, clean: str) -> None:
    assert clean_name(raw) == clean


def test_names_with_control_characters_cleaned_in_files(tmp_path: Path) -> None:
    folder = tmp_path / "subs"
    folder.mkdir()
    # A CSV cell cannot hold a line break (the file is refused); other controls are cleaned.
    (folder / "a.csv").write_text(CSV_HEADER + 'a@example.org,"Eve\tBcc:\x01x\u2028y",en,US,t,\n')
    (folder / "b.yaml").write_text('- email: b@example.org\n  name: "Mallory\\r\\nTo: y\\x01"\n')
    subs = subscribers_of(list(iter_subscribers(folder)))
    assert [s.name for s in subs] == ["Eve Bcc: x y", "Mallory To: y"]
    for s in subs:
        assert not any(ord(c) < 32 for c in s.name)


def test_large_csv_streams_in_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Address validation is the slow part and not what this test is about; a trivial
    # stand-in keeps the rows (under tracemalloc) within a second.
    monkeypatch.setattr(
        subscribers_module,
        "validate_email",
        lambda email, **_: SimpleNamespace(normalized=email, ascii_email=email),
    )
    rows = 20_000
    name = "Ж" * 800  # long names: what holding the rows would cost shows at once
    folder = tmp_path / "big"
    folder.mkdir()
    with (folder / "big.csv").open("w", encoding="utf-8") as handle:
        handle.write(CSV_HEADER)
        for i in range(rows):
            handle.write(f"user{i}@example.org,{name} {i},ru,RU,service-status;topic-{i % 50},\n")
    # the last rows repeat the first ones in other spellings
    with (folder / "big.csv").open("a", encoding="utf-8") as handle:
        for i in range(10):
            handle.write(f"USER{i}@EXAMPLE.ORG,dup,en,US,t,active\n")
    tracemalloc.start()
    try:
        count = 0
        last = None
        for item in iter_subscribers(folder):
            assert isinstance(item, Subscriber)
            count += 1
            last = item
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == rows
    assert last is not None and last.email == f"user{rows - 1}@example.org"
    # Holding 20,000 such rows takes about 27 MB (as a list, under tracemalloc); streaming
    # needs a few.
    assert peak < 10 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


# -- selection -----------------------------------------------------------------------


def selected(entry: Entry, folder: Path, **kwargs: object) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in select(entry, folder, BY_REGION, **kwargs):  # type: ignore[arg-type]
        assert isinstance(item, Recipient), item
        assert item.address not in out
        out[item.address] = item.locale
    return out


def test_select_update_2020_04_21(project: Path) -> None:
    config = load_config(project)
    entry = load_entry(config.paths.updates / "update-2020-04-21.yaml")
    stats = SelectionStats()
    got = selected(entry, config.paths.subscribers, stats=stats)
    assert got == RU_READERS | BY_READERS | KZ_READERS
    assert len(got) == 14
    assert sorted(a for a, loc in got.items() if loc == "en") == [
        "daniyar.abenov@example.com",
        "dmitry.volkov@example.org",
        "kate.morozova@example.com",
    ]
    by_region: dict[str | None, int] = {}
    for (_, region), n in stats.selected.items():
        by_region[region] = by_region.get(region, 0) + n
    assert by_region == {"RU": 9, "BY": 2, "KZ": 3}
    assert stats.total == 14
    assert stats.selected[("en", "RU")] == 2
    assert stats.selected[("ru", "RU")] == 7
    # The skip counters count the audience's readers: of the six inactive subscribers,
    # mia.weber (DE) and john.miller (US) are outside this entry's RU, BY and KZ.
    assert stats.inactive == len(INACTIVE - {"mia.weber@example.net", "john.miller@example.net"})
    assert stats.invalid == []
    assert stats.read.duplicates == 1


def test_select_block_2020_01_23(project: Path) -> None:
    config = load_config(project)
    entry = load_entry(config.paths.updates / "block-2020-01-23.yaml")
    got = selected(entry, config.paths.subscribers)
    assert got == RU_READERS | BY_READERS | KZ_READERS | OTHER_READERS
    assert len(got) == 18
    assert sum(1 for loc in got.values() if loc == "ru") == 11
    assert sum(1 for loc in got.values() if loc == "en") == 7


def test_select_recipient_fields(project: Path) -> None:
    config = load_config(project)
    entry = load_entry(config.paths.updates / "update-2020-04-21.yaml")
    recipients = {
        r.address: r
        for r in select(entry, config.paths.subscribers, config.default_locale_by_region)
        if isinstance(r, Recipient)
    }
    maria = recipients["maria@пример.испытание"]
    assert maria.email == "maria@пример.испытание"
    assert maria.ascii_email == "maria@xn--e1afmkfd.xn--80akhbyknj4f"
    assert (maria.name, maria.locale, maria.region) == ("Мария Иванова", "ru", "RU")
    anna = recipients["anna.petrova@example.org"]
    assert anna.email == "Anna.Petrova@example.org"
    assert (anna.locale, anna.region) == ("ru", "RU")


def test_inactive_never_selected(project: Path) -> None:
    config = load_config(project)
    everyone = Entry("e", dt.date(2020, 1, 1), EntryStatus.READY, {"en": Content("s", "s", "b")})
    got = selected(everyone, config.paths.subscribers)
    assert INACTIVE.isdisjoint(got)
    assert set(got) == (
        set(RU_READERS)
        | set(BY_READERS)
        | set(KZ_READERS)
        | set(OTHER_READERS)
        | NOT_SERVICE_STATUS
    )
    assert len(got) == 22


def test_suppressed_never_selected(project: Path) -> None:
    config = load_config(project)
    entry = load_entry(config.paths.updates / "update-2020-04-21.yaml")
    suppressed = {"ivan.smirnov@example.com", "maria@пример.испытание", "jan.devries@example.net"}
    stats = SelectionStats()
    got = selected(entry, config.paths.subscribers, suppressed=suppressed, stats=stats)
    assert set(got) == set(RU_READERS | BY_READERS | KZ_READERS) - suppressed
    assert len(got) == 12
    # jan.devries is outside this audience, so is not one of its skipped readers
    assert stats.suppressed == 2


def test_skip_counters_count_the_audience_not_the_list(project: Path) -> None:
    """An entry for Belarus only: the skip counters name its readers who were left out,
    not every inactive or suppressed subscriber anywhere in the lists."""
    config = load_config(project)
    entry = make_entry(Audience(regions=frozenset({"BY"}), topics=frozenset({"service-status"})))
    stats = SelectionStats()
    everyone = {"ivan.smirnov@example.com", *BY_READERS}
    got = selected(entry, config.paths.subscribers, suppressed=everyone, stats=stats)
    assert got == {}
    assert stats.suppressed == len(BY_READERS)
    assert stats.inactive == 1  # nikolai.zaitsev (BY, bounced); the other five are elsewhere
    items = list(select(entry, config.paths.subscribers, BY_REGION, everyone, inactive=True))
    left_out = {item.address for item in items if isinstance(item, Inactive)}
    # a re-selection still learns of everyone nothing may reach, in the audience or not
    assert left_out == INACTIVE | everyone


def make_entry(audience: Audience) -> Entry:
    content = {"en": Content("s", "s", "b"), "ru": Content("с", "с", "т")}
    return Entry("e", dt.date(2020, 1, 1), EntryStatus.READY, content, audience=audience)


@pytest.fixture
def small_list(tmp_path: Path) -> Path:
    folder = tmp_path / "subs"
    folder.mkdir()
    (folder / "list.csv").write_text(
        CSV_HEADER
        + "ru-a@example.org,,ru,RU,a,\n"
        + "ru-b@example.org,,en,RU,b,\n"
        + "ru-ab@example.org,,,RU,a;b,\n"
        + "by-a@example.org,,,BY,a,\n"
        + "de-a@example.org,,de,DE,a,\n"
        + "de-b@example.org,,ru,DE,b,\n"
        + "none-a@example.org,,,,a,\n"
        + "ru-a-off@example.org,,ru,RU,a,unsubscribed\n",
        encoding="utf-8",
    )
    return folder


@pytest.mark.parametrize(
    ("audience", "expected"),
    [
        (Audience(), {"ru-a", "ru-b", "ru-ab", "by-a", "de-a", "de-b", "none-a"}),
        (Audience(regions=frozenset({"RU"})), {"ru-a", "ru-b", "ru-ab"}),
        # OR within a key
        (Audience(regions=frozenset({"RU", "DE"})), {"ru-a", "ru-b", "ru-ab", "de-a", "de-b"}),
        (
            Audience(topics=frozenset({"a", "b"})),
            {"ru-a", "ru-b", "ru-ab", "by-a", "de-a", "de-b", "none-a"},
        ),
        (Audience(topics=frozenset({"b"})), {"ru-b", "ru-ab", "de-b"}),
        # AND across keys
        (Audience(regions=frozenset({"RU"}), topics=frozenset({"b"})), {"ru-b", "ru-ab"}),
        (
            Audience(regions=frozenset({"RU", "BY"}), topics=frozenset({"a"})),
            {"ru-a", "ru-ab", "by-a"},
        ),
        # locales match the resolved locale (empty in RU/BY -> ru; de in DE -> en)
        (Audience(locales=frozenset({"ru"})), {"ru-a", "ru-ab", "by-a", "de-b"}),
        (Audience(locales=frozenset({"en"})), {"ru-b", "de-a", "none-a"}),
        (
            Audience(regions=frozenset({"RU"}), topics=frozenset({"a"}), locales=frozenset({"ru"})),
            {"ru-a", "ru-ab"},
        ),
        (
            Audience(regions=frozenset({"DE"}), topics=frozenset({"a"}), locales=frozenset({"ru"})),
            set(),
        ),
    ],
)
def test_audience_semantics(small_list: Path, audience: Audience, expected: set[str]) -> None:
    got = selected(make_entry(audience), small_list)
    assert set(got) == {f"{name}@example.org" for name in expected}


def test_select_streams(small_list: Path) -> None:
    assert inspect.isgenerator(select(make_entry(Audience()), small_list, BY_REGION))


def test_select_passes_bad_rows_through(tmp_path: Path) -> None:
    folder = tmp_path / "subs"
    folder.mkdir()
    (folder / "l.csv").write_text(CSV_HEADER + "bad,,,,,\n" + "ok@example.org,,,,,\n")
    stats = SelectionStats()
    items = list(select(make_entry(Audience()), folder, BY_REGION, stats=stats))
    assert isinstance(items[0], RowProblem)
    assert items[0].line == 2
    assert isinstance(items[1], Recipient)
    assert items[1].locale == "en"
    assert [p.line for p in stats.invalid] == [2]


# -- locales -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("ru", "US", "ru"),
        ("ru_RU", None, "ru"),
        ("ru-RU", "NL", "ru"),
        ("RU", None, "ru"),
        (" ru_ru ", None, "ru"),
        ("en", "RU", "en"),  # the subscriber's own choice wins over the region
        ("EN-us", "KZ", "en"),
        ("de", "KZ", "en"),  # chosen but unsupported -> English, never the region's guess
        ("", "RU", "ru"),
        (None, "BY", "ru"),
        ("de", "DE", "en"),  # unknown, no region default -> English
        ("", None, "en"),
        ("fr", "US", "en"),
        ("xx", "XX", "en"),
    ],
)
def test_resolve_locale(raw: str | None, region: str | None, expected: str) -> None:
    assert resolve_locale(raw, region, BY_REGION)[0] == expected


def test_resolve_locale_says_why_it_is_not_the_subscribers_own() -> None:
    assert resolve_locale("ru_RU", "KZ", BY_REGION) == ("ru", None)
    assert resolve_locale("de", "KZ", BY_REGION) == ("en", "unsupported locale 'de'")
    assert resolve_locale("Russian", "RU", BY_REGION) == ("en", "unsupported locale 'Russian'")
    assert resolve_locale("", "RU", BY_REGION) == ("ru", "no locale, region RU")
    assert resolve_locale(None, "NL", BY_REGION) == ("en", "no locale")


def test_resolve_locale_region_default_is_normalized() -> None:
    assert resolve_locale("", "UA", {"UA": "ru_UA"})[0] == "ru"
    assert resolve_locale("", "UA", {"UA": "uk"})[0] == "en"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ru", "ru"),
        ("ru-RU", "ru"),
        ("ru_RU", "ru"),
        ("RU", "ru"),
        ("en_GB", "en"),
        ("ru.UTF-8", "ru"),  # POSIX, as $LANG writes it
        ("ru_RU.UTF-8", "ru"),
        ("de", None),
        ("", None),
        (None, None),
        ("russian", None),
    ],
)
def test_normalize_locale(raw: str | None, expected: str | None) -> None:
    assert normalize_locale(raw) == expected


def test_seen_addresses_spill_to_disk_and_still_dedupe() -> None:
    from statusmail.project.subscribers import SeenAddresses

    seen = SeenAddresses(spill_at=1000)
    try:
        assert all(seen.add(f"user{i}@example.org") for i in range(3000))
        assert seen._db is not None and not seen._memory  # spilled: memory stays flat
        assert not any(seen.add(f"user{i}@example.org") for i in range(0, 3000, 7))
        assert seen.add("new@example.org") and not seen.add("new@example.org")
    finally:
        seen.close()


def test_the_status_pass_is_paced_so_a_stop_ends_it(tmp_path: Path) -> None:
    """The first pass over a long list reads every row: it says how far it is every
    thousand rows, and a stop raised there ends it before any subscriber is read."""
    folder = tmp_path / "subs"
    folder.mkdir()
    rows = "".join(f"reader{i}@example.org,,en,NL,t,active\n" for i in range(2500))
    (folder / "main.csv").write_text(CSV_HEADER + rows)
    told: list[int] = []

    def pace(path: Path, read: int) -> None:
        told.append(read)
        if read >= 2000:
            raise KeyboardInterrupt

    stream = iter_subscribers(folder, pace=pace)
    with pytest.raises(KeyboardInterrupt):
        next(stream)
    assert told == [1000, 2000]

"""A search's pages, whatever the index's state, are exactly the naive scan's answer: every
matching row once, in (cert_index, source_url) order, none skipped or repeated across pages,
also across logs whose rows share indices; and each row as the archive holds it, whether the
index held it whole or it was read from the archive (wide rows, rows not indexed yet)."""

from __future__ import annotations

from pathlib import Path

import pytest
from deltalake import DeltaTable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certlake.lake import domains
from certlake.query import search
from certlake.query.search import search_page
from certlake.query.spec import Cursor, DomainFilter, PageRequest, Query

from .archive_rows import Row, append

LOGS = ("https://one.example/ct/", "https://two.example/ct/", "https://three.example/ct/")
LABELS = ("a", "b", "ex", "Ex", "x-y", "*")
DATES = ("2026-11-30", "2026-12-01", "2026-12-02")
ISSUERS = ("CN=R11, O=Let's Encrypt", "CN=Sectigo RSA", "CN=r11 test")

names = st.lists(st.sampled_from(LABELS), min_size=1, max_size=3).map(
    lambda labels: ".".join([*labels, "com"])
)
rows_st = st.lists(
    st.tuples(
        st.sampled_from(LOGS),
        st.integers(0, 12),
        st.sampled_from(DATES),
        st.lists(names, min_size=0, max_size=3),
        st.sampled_from(ISSUERS),
    ),
    min_size=1,
    max_size=30,
    unique_by=lambda t: (t[0], t[1]),
)


Key = tuple[int, str]


def naive_rows(uri: str, version: int, query: Query) -> dict[Key, dict[str, object]]:
    table = DeltaTable(uri, version=version).to_pyarrow_table(columns=list(search.ROW_COLUMNS))
    return {
        (r["cert_index"], r["source_url"]): r
        for r in table.to_pylist()
        if query.matches(r["all_domains"], r["issuer_aggregated"], r["seen_date"])
    }


def naive(uri: str, version: int, query: Query) -> list[Key]:
    return sorted(naive_rows(uri, version, query))


def all_pages(
    uri: str, query: Query, limit: int, rows: list[dict[str, object]] | None = None
) -> tuple[int, list[Key]]:
    got: list[Key] = []
    cursor: Cursor | None = None
    version = None
    for _ in range(100):
        page = search_page(uri, None, PageRequest(query, limit, cursor))
        version = page.version if version is None else version
        assert page.version == version, "every page reads the first page's version"
        got.extend((r["cert_index"], r["source_url"]) for r in page.rows)
        if rows is not None:
            rows.extend(page.rows)
        assert len(page.rows) <= limit
        if not page.has_more:
            assert page.next_cursor is None
            break
        assert page.next_cursor is not None and len(page.rows) == limit
        cursor = Cursor.decode(page.next_cursor)
    assert version is not None
    return version, got


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=rows_st,
    commits=st.integers(1, 3),
    indexed_after=st.sampled_from([None, 0, 1, 2]),
    compact=st.booleans(),
    follow=st.booleans(),
    wide=st.sampled_from([domains.WIDE_NAMES, 1, 0]),
    pick=st.data(),
)
def test_pages_are_the_naive_scan(
    tmp_path_factory: object,
    data: list[tuple[str, int, str, list[str], str]],
    commits: int,
    indexed_after: int | None,
    compact: bool,
    follow: bool,
    wide: int,
    pick: st.DataObject,
) -> None:
    uri = str(tmp_path_factory.mktemp("archive"))  # type: ignore[attr-defined]
    rows = [Row(u, i, d, tuple(n), iss) for u, i, d, n, iss in data]
    size = -(-len(rows) // commits)
    with pytest.MonkeyPatch.context() as patch:
        # fewer names make a row wide: the index keeps it without its payload
        patch.setattr(domains, "WIDE_NAMES", wide)
        for n, start in enumerate(range(0, len(rows), size)):
            append(uri, rows[start : start + size], commit_id=f"c{n}")
            # built after commit `indexed_after`; kept up with the later ones, or left behind
            if indexed_after is not None and (n == indexed_after or (n > indexed_after and follow)):
                domains.catch_up(uri, None, build=True)
    if compact:
        DeltaTable(uri).optimize.compact()
    all_names = sorted({name for r in rows for name in r.domains} | {"nothing.com"})
    name = pick.draw(st.sampled_from(all_names))
    labels = name.split(".")
    domain_text = pick.draw(
        st.sampled_from(
            [name, name.upper(), "*." + ".".join(labels[1:]), labels[0], "*.com", "x", "*."]
        )
    )
    query = Query(
        domain=pick.draw(st.sampled_from([None, DomainFilter.parse(domain_text)])),
        issuer=pick.draw(st.sampled_from([None, "r11", "sectigo"])),
        date_from=pick.draw(st.sampled_from([None, *DATES])),
        date_to=pick.draw(st.sampled_from([None, *DATES])),
    )
    limit = pick.draw(st.integers(1, 6))
    answered: list[dict[str, object]] = []
    version, got = all_pages(uri, query, limit, answered)
    expected = naive_rows(uri, version, query)
    assert got == sorted(expected)
    assert answered == [expected[k] for k in got]
    # The export: the same rows, in its own order; past `STREAM_CANDIDATES` by a scan.
    most = pick.draw(st.sampled_from([search.STREAM_CANDIDATES, 2]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(search, "STREAM_CANDIDATES", most)
        exported = [
            (r["cert_index"], r["source_url"])
            for r in search.iter_rows(uri, None, query, batch_rows=3)
        ]
    assert sorted(exported) == got


def test_a_cursor_keeps_its_version_while_the_archive_grows(tmp_path: Path) -> None:
    uri = str(tmp_path / "archive")
    first = [Row(LOGS[0], i, DATES[0], (f"h{i}.ex.com",)) for i in range(6)]
    append(uri, first)
    domains.catch_up(uri, None, build=True)
    query = Query(domain=DomainFilter.parse("*.ex.com"))
    page = search_page(uri, None, PageRequest(query, 4, None))
    assert page.has_more and page.next_cursor is not None
    # Rows that sort inside the pages already read, and after them, land before page two.
    append(uri, [Row(LOGS[1], i, DATES[0], (f"n{i}.ex.com",)) for i in range(8)], "later")
    domains.catch_up(uri, None)
    second = search_page(uri, None, PageRequest(query, 4, Cursor.decode(page.next_cursor)))
    assert second.version == page.version
    keys = [(r["cert_index"], r["source_url"]) for r in page.rows + second.rows]
    assert keys == [(i, LOGS[0]) for i in range(6)]
    assert not second.has_more


def test_rows_the_index_does_not_cover_yet_are_found_by_scanning_their_files(
    tmp_path: Path,
) -> None:
    uri = str(tmp_path / "archive")
    append(uri, [Row(LOGS[0], i, DATES[0], (f"h{i}.ex.com",)) for i in range(3)], "first")
    domains.catch_up(uri, None, build=True)
    append(uri, [Row(LOGS[1], i, DATES[1], (f"late{i}.ex.com",)) for i in range(3)], "second")
    query = Query(domain=DomainFilter.parse("*.ex.com"))
    version, got = all_pages(uri, query, 2)
    assert got == naive(uri, version, query)
    assert sorted(got) == sorted(
        [(i, LOGS[0]) for i in range(3)] + [(i, LOGS[1]) for i in range(3)]
    )
    exact = Query(domain=DomainFilter.parse("late1.ex.com"))
    assert all_pages(uri, exact, 5)[1] == [(1, LOGS[1])]

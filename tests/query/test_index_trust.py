"""When the domain index may not answer for a snapshot, searches read the archive instead and
stay exact: after another tool removed rows, for a cursor older than the index's build, and for
an index of an older layout (keys only); and wide rows are indexed without their payload."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from certlake.lake import domains
from certlake.query.search import search_page
from certlake.query.spec import Cursor, DomainFilter, PageRequest, Query

from .archive_rows import Row, append
from .test_search_property import LOGS, all_pages, naive

DAY = "2026-12-01"
SUFFIX = Query(domain=DomainFilter.parse("*.ex.com"))


def archive(tmp_path: Path, count: int = 6) -> str:
    uri = str(tmp_path / "archive")
    append(uri, [Row(LOGS[0], i, DAY, (f"h{i}.ex.com",)) for i in range(count)], "first")
    domains.catch_up(uri, None, build=True)
    return uri


def test_after_another_tool_deletes_rows_searches_read_the_archive_until_a_rebuild(
    tmp_path: Path,
) -> None:
    uri = archive(tmp_path)
    DeltaTable(uri).delete("cert_index = 2")
    version, got = all_pages(uri, SUFFIX, 2)
    assert got == naive(uri, version, SUFFIX) == [(i, LOGS[0]) for i in (0, 1, 3, 4, 5)]
    # the index never covers the commit that removed rows
    with pytest.raises(domains.IndexBehindError, match="removed rows"):
        domains.catch_up(uri, None)
    domains.rebuild(uri, None)
    index = domains.open_index(uri, None)
    assert index is not None and domains.covered_version(index) == version
    assert all_pages(uri, SUFFIX, 2)[1] == got


def test_a_cursor_older_than_the_index_build_pages_on_exactly(tmp_path: Path) -> None:
    uri = archive(tmp_path)
    page = search_page(uri, None, PageRequest(SUFFIX, 2, None))
    assert page.next_cursor is not None
    DeltaTable(uri).delete("cert_index = 4")  # gone after the cursor's version...
    domains.rebuild(uri, None)  # ...so the new index lacks a row the cursor's version holds
    rest = []
    cursor: str | None = page.next_cursor
    while cursor is not None:
        later = search_page(uri, None, PageRequest(SUFFIX, 2, Cursor.decode(cursor)))
        assert later.version == page.version
        rest.extend(r["cert_index"] for r in later.rows)
        cursor = later.next_cursor
    assert [r["cert_index"] for r in page.rows] + rest == list(range(6))


def test_an_index_of_the_older_layout_is_not_used_and_is_built_anew(tmp_path: Path) -> None:
    uri = str(tmp_path / "archive")
    append(uri, [Row(LOGS[0], i, DAY, (f"h{i}.ex.com",)) for i in range(3)])
    old = pa.table(
        {
            "key": ["com.ex.h0"],  # one key of three: a search through it would miss rows
            "cert_index": pa.array([0], pa.int64()),
            "source_url": [LOGS[0]],
            "seen_date": [DAY],
        }
    )
    from deltalake import CommitProperties, Transaction

    write_deltalake(
        domains.index_uri(uri),
        old,
        commit_properties=CommitProperties(app_transactions=[Transaction(domains.COVERED_APP, 1)]),
    )
    assert all_pages(uri, SUFFIX, 5)[1] == [(i, LOGS[0]) for i in range(3)]
    built = domains.catch_up(uri, None)  # a young archive: built again at once
    assert built is not None and built.covered_from is None and built.index_rows == 3
    index = domains.open_index(uri, None)
    assert index is not None and domains.covering(index)


def test_a_wide_row_is_indexed_without_its_payload_and_found_in_the_archive(
    tmp_path: Path,
) -> None:
    uri = str(tmp_path / "archive")
    wide = tuple(f"n{k}.ex.com" for k in range(domains.WIDE_NAMES + 1))
    append(uri, [Row(LOGS[0], 0, DAY, wide), Row(LOGS[0], 1, DAY, wide[:2])])
    domains.catch_up(uri, None, build=True)
    index = DeltaTable(domains.index_uri(uri)).to_pyarrow_table()
    by_row = index.group_by(["cert_index", domains.PAYLOAD]).aggregate([([], "count_all")])
    assert sorted(by_row.to_pylist(), key=lambda r: r["cert_index"]) == [
        {"cert_index": 0, domains.PAYLOAD: False, "count_all": domains.WIDE_NAMES + 1},
        {"cert_index": 1, domains.PAYLOAD: True, "count_all": 2},
    ]
    assert (
        index.filter(pa.compute.invert(index.column(domains.PAYLOAD))).column("sha256").null_count
        == domains.WIDE_NAMES + 1
    )
    rows: list[dict[str, object]] = []
    all_pages(uri, SUFFIX, 5, rows)
    assert [r["all_domains"] for r in rows] == [list(wide), list(wide[:2])]


def test_searches_kept_open_notice_an_index_rebuilt_under_them(tmp_path: Path) -> None:
    """`search.TABLES` keeps the archive and index open between first pages; a rebuild deletes
    the index and writes a new one at the same place, with fewer or more commits than the
    handle had seen: never read as if it were the old one."""
    uri = archive(tmp_path, 3)
    assert all_pages(uri, SUFFIX, 10)[1] == [(i, LOGS[0]) for i in range(3)]
    append(uri, [Row(LOGS[1], i, DAY, (f"b{i}.ex.com",)) for i in range(2)], "second")
    domains.catch_up(uri, None)  # the index now has two commits; the pool's handle saw one
    version, got = all_pages(uri, SUFFIX, 10)
    assert got == naive(uri, version, SUFFIX) and len(got) == 5
    domains.rebuild(uri, None)  # one commit again, other files
    version, got = all_pages(uri, SUFFIX, 10)
    assert got == naive(uri, version, SUFFIX) and len(got) == 5
    append(uri, [Row(LOGS[2], 0, DAY, ("c0.ex.com",))], "third")
    domains.catch_up(uri, None)
    domains.rebuild(uri, None)
    append(uri, [Row(LOGS[2], 1, DAY, ("c1.ex.com",))], "fourth")
    domains.catch_up(uri, None)  # two commits of a new index, against a handle of one
    version, got = all_pages(uri, SUFFIX, 10)
    assert got == naive(uri, version, SUFFIX) and len(got) == 7


def test_searches_in_threads_each_read_their_own_snapshot(tmp_path: Path) -> None:
    """The server searches in threads: a handle kept open serves one search at a time, and each
    page is its snapshot's exact answer while the archive grows."""
    import threading

    from certlake.query.search import TABLES

    uri = archive(tmp_path, 4)
    failures: list[str] = []

    def search() -> None:
        for _ in range(15):
            page = search_page(uri, None, PageRequest(SUFFIX, 100, None))
            keys = [(r["cert_index"], r["source_url"]) for r in page.rows]
            if keys != naive(uri, page.version, SUFFIX):
                failures.append(f"version {page.version}: {keys}")

    threads = [threading.Thread(target=search) for _ in range(4)]
    for t in threads:
        t.start()
    for n in range(5):
        append(uri, [Row(LOGS[1], n, DAY, (f"g{n}.ex.com",))], f"grow{n}")
        domains.catch_up(uri, None)
    for t in threads:
        t.join()
    assert failures == []
    idle = TABLES._idle.get((uri, ()))
    assert idle is not None and 1 <= len(idle) <= 4

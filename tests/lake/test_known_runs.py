"""The runs cache beside a table (`lake/known_runs`): what it records of a file, who reads what
of it, `record`, `prune`, copies and disagreeing records, two recorders at once, tables whose
files can change in place, and a cache that cannot be read or written."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable, TableFeatures, write_deltalake
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.backfill.test_gaps_plan import LOG, LOG_B, LOG_C, archive_rows, write_files

from certlake.backfill.gaps import GapPlan, runs_of
from certlake.backfill.presence import TableUnreadableError, plan_gaps
from certlake.lake.known_runs import (
    RUNS_DIR,
    RUNS_SCHEMA,
    append_runs,
    file_runs,
    prune,
    read_known,
    record,
    runs_of_scan,
    runs_uri,
    union_runs,
)
from certlake.lake.schema import PARTITION_BY
from support.s3 import S3Server

Key = tuple[str, int]


def one_day(uri: Path | str, files: Sequence[Sequence[Key]]) -> str:
    """One append per element of `files`, all in one partition (so that compaction merges
    them)."""
    for rows in files:
        write_deltalake(
            str(uri), archive_rows(rows), partition_by=list(PARTITION_BY), mode="append"
        )
    return str(uri)


def live_paths(uri: str) -> list[str]:
    paths: list[str] = (
        pa.table(DeltaTable(uri).get_add_actions(flatten=True)).column("path").to_pylist()
    )
    return paths


def runs_by_log(table: pa.Table) -> dict[str, list[tuple[int, int]]]:
    """Runs rows (entry rows left out) as {url: sorted runs}."""
    out: dict[str, list[tuple[int, int]]] = {}
    for r in table.to_pylist():
        if r["first"] <= r["last"]:
            out.setdefault(r["source_url"], []).append((r["first"], r["last"]))
    return {url: sorted(runs) for url, runs in out.items()}


def expected_runs(rows: Sequence[Key]) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = {}
    for url in {u for u, _ in rows}:
        runs = runs_of([i for u, i in rows if u == url])
        out[url] = list(zip(runs.starts.to_pylist(), runs.ends.to_pylist(), strict=True))
    return out


def key_batch(rows: Sequence[Key], dictionary: bool = True) -> pa.RecordBatch:
    urls = pa.array([u for u, _ in rows], pa.string())
    return pa.record_batch(
        {
            "source_url": urls.dictionary_encode() if dictionary else urls,
            "cert_index": pa.array([i for _, i in rows], pa.int64()),
        }
    )


def opened(caplog: pytest.LogCaptureFixture) -> list[int]:
    """`files_opened` of each table of the last gap detection logged."""
    lines = [r for r in caplog.records if r.getMessage() == "gap detection read the table"]
    return [getattr(r, "files_opened", 0) for r in lines]


# --- what a file's record holds ---------------------------------------------------------------


def test_a_files_runs_are_per_log_maximal_and_ignore_duplicates() -> None:
    rows = [(LOG, 5), (LOG_B, 1), (LOG, 3), (LOG, 4), (LOG, 4), (LOG, 9), (LOG_B, 1), ("", 7)]
    # batches with dictionaries of their own, one of them plain strings: as Parquet row groups
    table = file_runs("p", [key_batch(rows[:3]), key_batch(rows[3:6], False), key_batch(rows[6:])])
    assert runs_by_log(table) == {LOG: [(3, 5), (9, 9)], LOG_B: [(1, 1)], "": [(7, 7)]}
    entries = [r for r in table.to_pylist() if r["first"] > r["last"]]
    assert entries == [{"path": "p", "source_url": "", "first": 0, "last": -1}]
    assert set(table.column("path").to_pylist()) == {"p"}


def test_a_file_without_rows_is_recorded_as_such() -> None:
    table = runs_of_scan(["empty", "full"], iter([("full", key_batch([(LOG, 1)]))]))
    assert sorted((r["path"], r["first"], r["last"]) for r in table.to_pylist()) == [
        ("empty", 0, -1),
        ("full", 0, -1),
        ("full", 1, 1),
    ]


def test_a_file_whose_batches_come_back_later_is_merged() -> None:
    batches = [
        ("a", key_batch([(LOG, 1), (LOG, 2)])),
        ("b", key_batch([(LOG, 1)])),
        ("a", key_batch([(LOG, 3), (LOG, 2), (LOG_B, 8)])),
    ]
    table = runs_of_scan(["a", "b"], iter(batches))
    a = table.filter(pc.equal(table.column("path"), "a"))
    assert runs_by_log(a) == {LOG: [(1, 3)], LOG_B: [(8, 8)]}
    assert sum(1 for r in a.to_pylist() if r["first"] > r["last"]) == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 6)), max_size=20))
def test_union_runs_is_the_union(intervals: list[tuple[int, int]]) -> None:
    starts = pa.array([s for s, _ in intervals], pa.int64())
    ends = pa.array([s + n for s, n in intervals], pa.int64())
    got = union_runs(starts, ends)
    want = runs_of([i for s, n in intervals for i in range(s, s + n + 1)])
    assert got.starts.to_pylist() == want.starts.to_pylist()
    assert got.ends.to_pylist() == want.ends.to_pylist()


# --- record, read, prune ----------------------------------------------------------------------


def test_record_reads_each_file_once_and_readers_see_only_live_files(tmp_path: Path) -> None:
    files = [[(LOG, 1), (LOG, 2), (LOG_B, 7)], [(LOG, 3), (LOG, 3)], [(LOG_C, 4)]]
    uri = one_day(tmp_path / "t", files)
    first = record(uri, None)
    assert (first.files, first.rows, first.runs) == (3, 6, 4)
    assert record(uri, None).files == 0  # nothing left to read
    known = read_known(uri, None, live_paths(uri), [LOG, LOG_B])
    assert known.paths == set(live_paths(uri))
    assert runs_by_log(known.runs) == {LOG: [(1, 2), (3, 3)], LOG_B: [(7, 7)]}  # LOG_C not read
    only_which = read_known(uri, None, live_paths(uri), [])
    assert only_which.paths == known.paths and only_which.runs.num_rows == 0

    DeltaTable(uri).optimize.compact()  # one new file; the three old ones leave the snapshot
    (merged,) = live_paths(uri)
    assert read_known(uri, None, [merged], None).paths == set()
    assert record(uri, None).files == 1
    known = read_known(uri, None, [merged], None)
    assert known.paths == {merged}
    assert runs_by_log(known.runs) == {LOG: [(1, 3)], LOG_B: [(7, 7)], LOG_C: [(4, 4)]}

    cache = DeltaTable(runs_uri(uri))
    before = cache.to_pyarrow_table().num_rows
    pruned = prune(uri, None)
    assert pruned is not None and pruned.rewritten
    assert (pruned.kept, pruned.dropped) == (4, before - 4)  # the entry row and three runs
    rows = DeltaTable(runs_uri(uri)).to_pyarrow_table()
    assert set(rows.column("path").to_pylist()) == {merged}
    assert len(DeltaTable(runs_uri(uri)).file_uris()) == 1
    again = prune(uri, None)
    assert again is not None and not again.rewritten and again.dropped == 0


def test_record_of_chosen_paths_and_no_table(tmp_path: Path) -> None:
    uri = one_day(tmp_path / "t", [[(LOG, 1)], [(LOG, 5)], [(LOG, 9)]])
    chosen = live_paths(uri)[:2]
    assert record(uri, None, paths=[*chosen, "not/in/the/table.parquet"]).files == 2
    assert read_known(uri, None, live_paths(uri), None).paths == set(chosen)
    assert record(str(tmp_path / "none"), None).files == 0
    assert prune(str(tmp_path / "none"), None) is None
    assert prune(uri, None) is not None
    assert prune(one_day(tmp_path / "fresh", [[(LOG, 1)]]), None) is None  # no cache yet


def test_copies_of_a_record_are_read_once(tmp_path: Path) -> None:
    uri = one_day(tmp_path / "t", [[(LOG, 1), (LOG, 2), (LOG, 4)]])
    (path,) = live_paths(uri)
    rows = file_runs(path, [key_batch([(LOG, 1), (LOG, 2), (LOG, 4)])])
    for _ in range(3):  # three recorders of the same file
        append_runs(uri, None, [rows])
    known = read_known(uri, None, [path], [LOG])
    assert known.paths == {path}
    assert sorted(known.runs.to_pylist(), key=lambda r: r["first"]) == [
        {"path": path, "source_url": LOG, "first": 1, "last": 2},
        {"path": path, "source_url": LOG, "first": 4, "last": 4},
    ]
    pruned = prune(uri, None)
    assert pruned is not None and (pruned.kept, pruned.dropped) == (3, 6)


def test_a_record_that_disagrees_is_not_trusted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = one_day(tmp_path / "t", [[(LOG, 1), (LOG, 2), (LOG, 4)]])
    (path,) = live_paths(uri)
    append_runs(uri, None, [file_runs(path, [key_batch([(LOG, 1), (LOG, 2), (LOG, 4)])])])
    # a record claiming 3 as well: it cannot come from a file, and would hide the hole
    append_runs(uri, None, [file_runs(path, [key_batch([(LOG, 1), (LOG, 2), (LOG, 3)])])])
    with caplog.at_level(logging.INFO):
        assert read_known(uri, None, [path], [LOG]).paths == set()
        plan = plan_gaps(uri, None, {LOG: 9}, None)
    assert [g.missing for g in plan.logs] == [((3, 3),)]
    assert opened(caplog) == [1]
    assert any(r.levelno == logging.ERROR for r in caplog.records)


def test_files_of_an_older_snapshot_are_not_taken_from_the_cache(tmp_path: Path) -> None:
    uri = one_day(tmp_path / "t", [[(LOG, 1), (LOG, 2), (LOG, 3)], [(LOG, 4)]])
    assert gaps(plan_gaps(uri, None, {LOG: 9}, None)) == []
    # the rewritten file has a new path; the cache still holds the old one, with 2
    DeltaTable(uri).delete(f"source_url = '{LOG}' AND cert_index = 2")
    assert gaps(plan_gaps(uri, None, {LOG: 9}, None)) == [(2, 2)]
    assert gaps(plan_gaps(uri, None, {LOG: 9}, None, runs_cache=False)) == [(2, 2)]


def gaps(plan: GapPlan) -> list[tuple[int, int]]:
    return [r for g in plan.logs for r in g.missing]


# --- concurrency ------------------------------------------------------------------------------

# os._exit: deltalake 1.6.6 was seen to abort at interpreter exit ("terminate called without an
# active exception") after reading a table through pyarrow; that is not what this test is about.
_RECORDER = """
import os, sys
from certlake.lake.known_runs import record
sys.stdin.readline()  # all start together
print(record(sys.argv[1], None).files, flush=True)
os._exit(0)
"""


def test_recorders_at_once_leave_a_cache_that_reads_right(tmp_path: Path) -> None:
    files = [[(LOG, i), (LOG, i + 1), (LOG_B, 2 * i)] for i in range(0, 60, 3)]
    uri = one_day(tmp_path / "t", files)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _RECORDER, uri],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    outs = [child.communicate(timeout=120) for child in children]
    assert all(child.returncode == 0 for child in children), outs
    assert sum(int(out) for out, _ in outs) >= len(files)  # some files recorded twice or more
    known = read_known(uri, None, live_paths(uri), None)
    assert known.paths == set(live_paths(uri))
    assert runs_by_log(known.runs) == {
        LOG: sorted((i, i + 1) for i in range(0, 60, 3)),
        LOG_B: [(2 * i, 2 * i) for i in range(0, 60, 3)],
    }
    pruned = prune(uri, None)
    assert pruned is not None and pruned.kept == len(files) * 3
    assert record(uri, None).files == 0


def test_a_prune_does_not_lose_a_record_made_meanwhile(tmp_path: Path) -> None:
    uri = one_day(tmp_path / "t", [[(LOG, 1)], [(LOG, 3)]])
    first, second = live_paths(uri)
    record(uri, None, paths=[first])
    append_runs(uri, None, [file_runs(first, [key_batch([(LOG, 1)])])])  # a copy to prune
    cache = DeltaTable(runs_uri(uri))  # the snapshot a slow prune would hold
    record(uri, None, paths=[second])
    write_deltalake(cache, RUNS_SCHEMA.empty_table(), mode="overwrite")  # its rewrite, late
    # Delta's overwrite removes the files of its own snapshot: the later record survives
    assert second in read_known(uri, None, live_paths(uri), None).paths


# --- tables whose files can change, caches that cannot be used --------------------------------


def test_tables_with_deletion_vectors_are_never_served_from_the_cache(tmp_path: Path) -> None:
    uri = table_of(tmp_path / "t", [[(LOG, 1), (LOG, 3)]])
    assert plan_gaps(uri, None, {LOG: 9}, None).work_items == ((LOG, 2, 2),)
    assert read_known(uri, None, live_paths(uri), None).paths  # recorded
    DeltaTable(uri).alter.add_feature(
        TableFeatures.DeletionVectors, allow_protocol_versions_increase=True
    )
    # a deletion vector could now drop rows of the recorded file under the same path: the
    # files must be read (which this deltalake cannot do), not answered from the cache
    with pytest.raises(TableUnreadableError):
        plan_gaps(uri, None, {LOG: 9}, None)
    assert record(uri, None).files == 0


def table_of(uri: Path, files: Sequence[Sequence[Key]]) -> str:
    write_files(uri, files)
    return str(uri)


def test_an_unreadable_cache_is_read_around_and_pruned_away(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = table_of(tmp_path / "t", [[(LOG, 1), (LOG, 3)], [(LOG, 4)]])
    plan_gaps(uri, None, {LOG: 9}, None)
    log_dir = tmp_path / "t" / RUNS_DIR / "_delta_log"
    for commit in log_dir.glob("*.json"):
        commit.write_text("{not json")
    with caplog.at_level(logging.INFO):
        plan = plan_gaps(uri, None, {LOG: 9}, None)
    assert plan.work_items == ((LOG, 2, 2),)
    assert opened(caplog) == [2]
    assert any("runs cache cannot be read" in r.getMessage() for r in caplog.records)
    pruned = prune(uri, None)
    assert pruned is not None and pruned.reset
    assert not (tmp_path / "t" / RUNS_DIR).exists()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        plan_gaps(uri, None, {LOG: 9}, None)
        plan_gaps(uri, None, {LOG: 9}, None)
    assert opened(caplog) == [2, 0]


def test_a_cache_that_cannot_be_written_costs_only_reads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = table_of(tmp_path / "t", [[(LOG, 1), (LOG, 3)]])

    def refuse(*_: object) -> int:
        raise OSError("read-only store")

    monkeypatch.setattr("certlake.backfill.presence.append_runs", refuse)
    with caplog.at_level(logging.INFO):
        first = plan_gaps(uri, None, {LOG: 9}, None)
        second = plan_gaps(uri, None, {LOG: 9}, None)
    assert first == second == plan_gaps(uri, None, {LOG: 9}, None, runs_cache=False)
    assert opened(caplog) == [1, 1]
    assert any("could not record" in r.getMessage() for r in caplog.records)


def test_runs_cache_off_neither_reads_nor_writes_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = table_of(tmp_path / "t", [[(LOG, 1), (LOG, 3)]])
    plan_gaps(uri, None, {LOG: 9}, None, runs_cache=False)
    assert not (tmp_path / "t" / RUNS_DIR).exists()
    plan_gaps(uri, None, {LOG: 9}, None)
    with caplog.at_level(logging.INFO):
        plan_gaps(uri, None, {LOG: 9}, None, runs_cache=False)
    assert opened(caplog) == [1]


def test_on_s3(s3_server: S3Server, s3_bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    options = s3_server.options()
    uri = f"s3://{s3_bucket}/main"
    write_files(uri, [[(LOG, 1), (LOG, 3)], [(LOG, 4), (LOG_B, 2)]], options)
    with caplog.at_level(logging.INFO):
        first = plan_gaps(uri, None, {LOG: 9}, None, storage_options=options)
        second = plan_gaps(uri, None, {LOG: 9}, None, storage_options=options)
    assert first == second and first.work_items == ((LOG, 2, 2),)
    assert opened(caplog) == [2, 0]
    assert record(uri, options).files == 0
    pruned = prune(uri, options)
    assert pruned is not None and pruned.kept == 6  # two entry rows, four runs

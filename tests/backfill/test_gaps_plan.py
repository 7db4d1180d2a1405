"""Gap detection over real Delta tables: main ∪ staging, ceilings, `--from`, file pruning,
unreadable tables (staging-backfill.AC1.3, AC2.*)."""

from __future__ import annotations

import itertools
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certlake.backfill.gaps import NOT_IN_STATE, NOT_IN_TABLE, GapPlan
from certlake.backfill.presence import TableUnreadableError, plan_gaps
from certlake.lake.schema import ARCHIVE_SCHEMA, PARTITION_BY, ArchiveSchemaError
from certlake.lake.table import record_skipped
from certlake.lake.txn import SkipKind, SkippedRange
from support.s3 import S3Server

LOG = "https://ct.example.com/logs/argon2025h1"
LOG_B = "https://oak.ct.example.org/2025h2"
LOG_C = "https://static.example.net/sycamore"


def archive_rows(rows: Sequence[tuple[str, int]], day: str = "2025-01-01") -> pa.Table:
    """Archive-schema rows for `(source_url, cert_index)` pairs; other columns are filler."""
    n = len(rows)
    columns: dict[str, pa.Array] = {}
    for f in ARCHIVE_SCHEMA:
        if f.name == "cert_index":
            columns[f.name] = pa.array([i for _, i in rows], f.type)
        elif f.name == "source_url":
            columns[f.name] = pa.array([u for u, _ in rows], f.type)
        elif f.name == "seen_date":
            columns[f.name] = pa.array([day] * n, f.type)
        elif pa.types.is_list(f.type):
            columns[f.name] = pa.array([["x"]] * n, f.type)
        elif pa.types.is_timestamp(f.type):
            columns[f.name] = pa.array([1_700_000_000_000_000] * n, pa.int64()).cast(f.type)
        elif pa.types.is_boolean(f.type):
            columns[f.name] = pa.array([False] * n, f.type)
        elif pa.types.is_integer(f.type):
            columns[f.name] = pa.array([0] * n, f.type)
        else:
            columns[f.name] = pa.array(["x"] * n, f.type)
    return pa.table(columns, schema=ARCHIVE_SCHEMA)


def write_files(
    uri: Path | str,
    files: Sequence[Sequence[tuple[str, int]]],
    storage_options: dict[str, str] | None = None,
) -> None:
    """One append (one data file) per element of `files`, days varying across files."""
    for n, rows in enumerate(files):
        write_deltalake(
            str(uri),
            archive_rows(rows, day=f"2025-01-{n % 3 + 1:02d}"),
            partition_by=list(PARTITION_BY),
            mode="append",
            storage_options=storage_options,
        )


def table(
    uri: Path | str,
    *files: Sequence[int],
    url: str = LOG,
    storage_options: dict[str, str] | None = None,
) -> str:
    write_files(uri, [[(url, i) for i in f] for f in files], storage_options)
    return str(uri)


def corrupt_table(path: Path) -> str:
    (path / "_delta_log").mkdir(parents=True)
    (path / "_delta_log" / "00000000000000000000.json").write_text("{not json")
    return str(path)


def gaps_of(plan: GapPlan, url: str = LOG) -> list[tuple[int, int]]:
    return [r for g in plan.logs if g.url == url for r in g.missing]


# --- the seeds' acceptance criteria ---------------------------------------------------------------


def test_staging_ac2_1_union_excludes_entries_in_either_table(tmp_path: Path) -> None:
    main = table(tmp_path / "main", [10, 11, 15, 16])
    staging = table(tmp_path / "staging", [12, 13])
    plan = plan_gaps(main, staging, {LOG: 20}, None)
    assert gaps_of(plan) == [(14, 14)]
    assert plan.work_items == ((LOG, 14, 14),)


def test_staging_ac2_2_second_run_fewer_work_items(tmp_path: Path) -> None:
    main = table(tmp_path / "main", [10, 15])
    first = plan_gaps(main, None, {LOG: 20}, None)
    assert gaps_of(first) == [(11, 14)]
    staging = table(tmp_path / "staging", [11, 12])
    second = plan_gaps(main, staging, {LOG: 20}, None)
    assert gaps_of(second) == [(13, 14)]
    first_indices = {i for _, s, e in first.work_items for i in range(s, e + 1)}
    second_indices = {i for _, s, e in second.work_items for i in range(s, e + 1)}
    assert second_indices < first_indices


def test_staging_ac2_3_ceiling_caps_max_index(tmp_path: Path) -> None:
    main = table(tmp_path / "main", [10, 11, 12])
    staging = table(tmp_path / "staging", [13, 14, 25])
    plan = plan_gaps(main, staging, {LOG: 20}, None)
    # 25 exists, so the window runs to the ceiling: the hole 15..24 is found up to 19, no further
    assert gaps_of(plan) == [(15, 19)]
    assert all(e < 20 for _, _, e in plan.work_items)


def test_staging_ac2_4_missing_staging_falls_back_to_main(tmp_path: Path) -> None:
    main = table(tmp_path / "main", [10, 11, 15])
    without = plan_gaps(main, None, {LOG: 20}, None)
    with_missing = plan_gaps(main, str(tmp_path / "nonexistent_staging_xyz"), {LOG: 20}, None)
    assert gaps_of(without) == [(12, 14)]
    assert with_missing.logs == without.logs
    assert [(s.role, s.present) for s in with_missing.sources] == [
        ("main", True),
        ("staging", False),
    ]


def test_staging_ac1_3_works_with_historical_mode(tmp_path: Path) -> None:
    main = table(tmp_path / "main", [10, 11, 15])
    staging = table(tmp_path / "staging", [12])
    catch_up = plan_gaps(main, staging, {LOG: 20}, None)
    historical = plan_gaps(main, staging, {LOG: 20}, 0)
    assert catch_up.work_items == ((LOG, 13, 14),)
    assert historical.work_items == ((LOG, 0, 9), (LOG, 13, 14), (LOG, 16, 19))


# --- definitions at the edges ---------------------------------------------------------------------


def test_hole_straddling_the_ceiling_is_found_up_to_it(tmp_path: Path) -> None:
    main = table(tmp_path / "main", [5, 6], [30, 31])
    assert gaps_of(plan_gaps(main, None, {LOG: 20}, None)) == [(7, 19)]
    # without anything past the ceiling, catch-up stops at the last present index
    other = table(tmp_path / "other", [5, 6], [9])
    assert gaps_of(plan_gaps(other, None, {LOG: 20}, None)) == [(7, 8)]


def test_hole_straddling_from_is_found_from_it(tmp_path: Path) -> None:
    main = table(tmp_path / "main", [2, 3], [12], [40])
    assert gaps_of(plan_gaps(main, None, {LOG: 20}, 8)) == [(8, 11), (13, 19)]


def test_catch_up_skips_logs_absent_from_the_tables_historical_takes_whole_range(
    tmp_path: Path,
) -> None:
    main = table(tmp_path / "main", [3, 4])
    ceilings = {LOG: 10, LOG_B: 7}
    catch_up = plan_gaps(main, None, ceilings, None)
    assert [(s.url, s.reason) for s in catch_up.skipped] == [(LOG_B, NOT_IN_TABLE)]
    historical = plan_gaps(main, None, ceilings, 2)
    assert gaps_of(historical, LOG_B) == [(2, 6)]
    assert gaps_of(historical) == [(2, 2), (5, 9)]


def test_no_main_table_and_no_state_mean_nothing_to_do(tmp_path: Path) -> None:
    plan = plan_gaps(str(tmp_path / "none"), None, {LOG: 10}, None)
    assert not plan.logs and plan.skipped[0].reason == NOT_IN_TABLE
    assert plan_gaps(str(tmp_path / "none"), None, {}, 0).work_items == ()


def test_logs_not_in_state_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    main = table(tmp_path / "main", [1, 3])
    with caplog.at_level(logging.WARNING):
        plan = plan_gaps(main, None, {LOG: 10}, None, logs={LOG: "Argon", LOG_B: "Oak"})
    assert [(s.url, s.reason) for s in plan.skipped] == [(LOG_B, NOT_IN_STATE)]
    assert any(getattr(r, "url", None) == LOG_B for r in caplog.records)
    assert gaps_of(plan) == [(2, 2)]


def test_logs_filter_matches_url_or_name(tmp_path: Path) -> None:
    main = str(tmp_path / "main")
    write_files(tmp_path / "main", [[(LOG, 1), (LOG, 3), (LOG_B, 1), (LOG_B, 4)]])
    names = {LOG: "Google Argon", LOG_B: "Let's Encrypt Oak"}
    by_name = plan_gaps(main, None, {LOG: 9, LOG_B: 9}, None, logs=names, log_filter="Oak")
    assert [g.url for g in by_name.logs] == [LOG_B]
    by_url = plan_gaps(main, None, {LOG: 9, LOG_B: 9}, None, logs=names, log_filter="argon")
    assert [g.url for g in by_url.logs] == [LOG]


def test_duplicates_and_several_logs_per_file(tmp_path: Path) -> None:
    main = str(tmp_path / "main")
    # 1, 1, 3: as many rows as the range 1..3 is long, yet 2 is missing
    write_files(tmp_path / "main", [[(LOG, 1), (LOG, 1), (LOG, 3), (LOG_B, 2), (LOG_C, 7)]])
    plan = plan_gaps(main, None, {LOG: 9, LOG_B: 9, LOG_C: 9}, 0)
    assert gaps_of(plan) == [(0, 0), (2, 2), (4, 8)]
    assert gaps_of(plan, LOG_B) == [(0, 1), (3, 8)]
    assert gaps_of(plan, LOG_C) == [(0, 6), (8, 8)]


def test_large_ranges_are_split_for_workers(tmp_path: Path) -> None:
    main = table(tmp_path / "main", [0], [1000])
    plan = plan_gaps(main, None, {LOG: 2000}, None, split_size=300)
    assert gaps_of(plan) == [(1, 999)]
    assert [(s, e) for _, s, e in plan.work_items] == [(1, 300), (301, 600), (601, 900), (901, 999)]


# --- ranges the archive recorded as passed without rows -------------------------------------------


def skip(uri: str, kind: SkipKind, start: int, end: int, url: str = LOG) -> None:
    record_skipped(uri, None, [SkippedRange(url, start, end, kind, "test")])


def test_undecodable_entries_recorded_as_skipped_are_not_holes(tmp_path: Path) -> None:
    main = table(tmp_path / "main", [1, 2, 5, 9])
    skip(main, SkipKind.UNPARSEABLE, 3, 3)
    skip(main, SkipKind.MALFORMED, 7, 8)
    assert gaps_of(plan_gaps(main, None, {LOG: 20}, None)) == [(4, 4), (6, 6)]


def test_dropped_ranges_are_refilled_even_past_the_last_row(tmp_path: Path) -> None:
    main = table(tmp_path / "main", [1, 2])
    skip(main, SkipKind.DROPPED, 3, 30)  # the sink's memory bound was hit at the log's tail
    skip(main, SkipKind.GAP, 0, 1, url=LOG_B)  # a log with no rows at all
    plan = plan_gaps(main, None, {LOG: 10, LOG_B: 10}, None)
    assert gaps_of(plan) == [(3, 9)]  # capped at the ceiling
    assert gaps_of(plan, LOG_B) == [(0, 1)]
    staging = table(tmp_path / "staging", [3, 4, 5])  # a backfill refilled part of it
    assert gaps_of(plan_gaps(main, staging, {LOG: 10}, None)) == [(6, 9)]
    assert gaps_of(plan_gaps(main, staging, {LOG: 10}, 5)) == [(6, 9)]  # nothing before --from


def test_unreadable_record_of_skipped_ranges_is_an_error(tmp_path: Path) -> None:
    main = table(tmp_path / "main", [1, 3])
    corrupt_table(tmp_path / "main" / "_certlake_skipped")
    with pytest.raises(TableUnreadableError, match="skipped ranges"):
        plan_gaps(main, None, {LOG: 10}, None)


# --- pruning: only files that can matter are opened -----------------------------------------------


def test_files_outside_the_window_are_not_opened(tmp_path: Path) -> None:
    main = table(tmp_path / "main", [0, 1, 2], [3, 4, 5], [7, 8], [30, 31])
    historical = plan_gaps(main, None, {LOG: 10}, 6)
    assert gaps_of(historical) == [(6, 6), (9, 9)]
    assert historical.sources[0].files_read == 1  # only [7, 8]: the others lie outside [6, 9]
    # catch-up: the window ends at the ceiling only if something lies past it; [7, 8] ends
    # below 9, so the file past the ceiling is opened, and found to settle it
    catch_up = plan_gaps(main, None, {LOG: 10}, None)
    assert gaps_of(catch_up) == [(6, 6), (9, 9)]
    assert catch_up.sources[0].files_read == 4


def test_file_past_the_ceiling_is_not_opened_when_the_window_is_settled(tmp_path: Path) -> None:
    main = table(tmp_path / "main", [0, 1, 3], [4, 5, 6, 7, 8, 9], [30, 31])
    plan = plan_gaps(main, None, {LOG: 10}, None)
    assert gaps_of(plan) == [(2, 2)]
    assert plan.sources[0].files_read == 2


def test_files_without_statistics_are_read_not_trusted(tmp_path: Path) -> None:
    path = str(tmp_path / "nostats")
    for rows in ([(LOG, 1), (LOG, 3)], [(LOG_B, 4)], [(LOG, 30)]):
        write_deltalake(
            path,
            archive_rows(rows),
            partition_by=list(PARTITION_BY),
            mode="append",
            configuration={"delta.dataSkippingNumIndexedCols": "0"},
        )
    plan = plan_gaps(path, None, {LOG: 10}, None)
    assert gaps_of(plan) == [(2, 2), (4, 9)]
    assert plan.sources[0].files_read == 3


def test_empty_table_holds_nothing(tmp_path: Path) -> None:
    DeltaTable.create(str(tmp_path / "empty"), ARCHIVE_SCHEMA, partition_by=list(PARTITION_BY))
    assert plan_gaps(str(tmp_path / "empty"), None, {LOG: 5}, None).skipped[0].url == LOG
    assert gaps_of(plan_gaps(str(tmp_path / "empty"), None, {LOG: 5}, 2)) == [(2, 4)]


def test_files_of_other_logs_are_not_opened(tmp_path: Path) -> None:
    main = str(tmp_path / "main")
    write_files(tmp_path / "main", [[(LOG, 1), (LOG, 3)], [(LOG_B, 1)], [(LOG_C, 5)]])
    plan = plan_gaps(main, None, {LOG: 9}, None)
    assert gaps_of(plan) == [(2, 2)]
    assert (plan.sources[0].files_total, plan.sources[0].files_read) == (3, 1)


# --- tables that exist but cannot be used ---------------------------------------------------------


def test_unreadable_staging_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    main = table(tmp_path / "main", [1, 3])
    staging = corrupt_table(tmp_path / "staging")
    with pytest.raises(TableUnreadableError, match="staging"):
        plan_gaps(main, staging, {LOG: 10}, None)


def test_unreadable_main_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TableUnreadableError, match="main"):
        plan_gaps(corrupt_table(tmp_path / "main"), None, {LOG: 10}, None)


def test_missing_data_file_is_an_error(tmp_path: Path) -> None:
    main = table(tmp_path / "main", [1, 3])
    for data in (tmp_path / "main").rglob("*.parquet"):
        data.unlink()
    with pytest.raises(TableUnreadableError):
        plan_gaps(main, None, {LOG: 10}, None)


def test_table_without_the_columns_is_rejected(tmp_path: Path) -> None:
    write_deltalake(str(tmp_path / "other"), pa.table({"cert_index": pa.array([1], pa.int64())}))
    with pytest.raises(ArchiveSchemaError):
        plan_gaps(str(tmp_path / "other"), None, {LOG: 10}, None)


# --- s3:// tables (a real S3-compatible server on loopback: tests/support/s3.py) ------------


def test_main_and_staging_on_s3(s3_server: S3Server, s3_bucket: str) -> None:
    bucket, options = s3_bucket, s3_server.options()
    main = table(f"s3://{bucket}/main", [10, 11, 15, 16], [30], storage_options=options)
    staging = table(f"s3://{bucket}/staging", [12, 13], storage_options=options)
    plan = plan_gaps(main, staging, {LOG: 20}, None, storage_options=options)
    assert plan.work_items == ((LOG, 14, 14), (LOG, 17, 19))
    absent = f"s3://{bucket}/nothing-here"
    historical = plan_gaps(main, absent, {LOG: 20}, 12, storage_options=options)
    assert historical.work_items == ((LOG, 12, 14), (LOG, 17, 19))
    assert [s.present for s in historical.sources] == [True, False]


# --- property: the plan is the definition ---------------------------------------------------------

URLS = (LOG, LOG_B, LOG_C)
row = st.tuples(st.sampled_from(URLS), st.integers(0, 40))
files = st.lists(st.lists(row, min_size=1, max_size=12), max_size=3)


def brute_force(
    present: set[tuple[str, int]], ceilings: dict[str, int], from_index: int | None
) -> dict[str, set[int]]:
    """The catch-up / `--from` definitions read literally, one index at a time (logs with nothing
    to plan are left out)."""
    out: dict[str, set[int]] = {}
    for url, ceiling in ceilings.items():
        have = {i for u, i in present if u == url}
        if from_index is None:
            if not any(i < ceiling for i in have):
                continue
            lo, hi = min(have), min(max(have), ceiling - 1)
        else:
            lo, hi = from_index, ceiling - 1
        out[url] = {i for i in range(lo, hi + 1) if i not in have}
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    main_files=files,
    staging_files=st.none() | files,
    ceilings=st.dictionaries(st.sampled_from(URLS), st.integers(0, 45), min_size=1),
    from_index=st.none() | st.integers(0, 45),
    split_size=st.integers(1, 7),
)
def test_plan_equals_brute_force(
    main_files: list[list[tuple[str, int]]],
    staging_files: list[list[tuple[str, int]]] | None,
    ceilings: dict[str, int],
    from_index: int | None,
    split_size: int,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        main, staging = Path(tmp) / "main", Path(tmp) / "staging"
        write_files(main, main_files)
        write_files(staging, staging_files or [])
        plan = plan_gaps(
            str(main),
            None if staging_files is None else str(staging),
            ceilings,
            from_index,
            split_size=split_size,
        )
    present = {r for f in main_files + (staging_files or []) for r in f}
    expected = brute_force(present, ceilings, from_index)
    got = {g.url: [i for s, e in g.missing for i in range(s, e + 1)] for g in plan.logs}
    assert {url: set(v) for url, v in got.items()} == expected
    for g in plan.logs:
        assert got[g.url] == sorted(got[g.url])
        assert [i for s, e in g.work for i in range(s, e + 1)] == got[g.url]
        assert all(e - s + 1 <= split_size for s, e in g.work)
        for (_, end), (start, _) in itertools.pairwise(g.missing):
            assert start > end + 1
    assert {s.url for s in plan.skipped} == set(ceilings) - set(expected)

"""`certlake merge` in-process against real Delta tables (local directories and a real
S3-compatible server): the seeds' AC3/AC4 criteria, HV1 and HV2, the same-table guard, schema
refusals, duplicates inside staging, windows and batches, and main pruning."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from deltalake import DeltaTable, write_deltalake

from certlake.backfill.presence import plan_gaps
from certlake.cli.merge import run_merge
from certlake.config import Config, DeltaSinkConfig
from certlake.lake.rows import messages_to_batch
from certlake.lake.schema import ARCHIVE_SCHEMA, PARTITION_BY
from certlake.lake.table import ArchiveTable, read_skipped, record_skipped
from certlake.lake.txn import SkipKind, SkippedRange
from certlake.merge.run import merge_command
from lake.conftest import LOG_A, LOG_B, make_message
from lake.helpers import broken_log, table_keys
from support.procs import CERTLAKE
from support.s3 import S3Server

MERGE_LOGGER = "certlake.merge.run"
T0 = 1_760_000_000.0


def rows(indices: Sequence[int], url: str = LOG_A, seen: float = T0) -> pa.RecordBatch:
    """Archive rows built by the project's own conversion from realistic messages."""
    return messages_to_batch([make_message(i, url, seen + k) for k, i in enumerate(indices)])


def write(uri: Path | str, batch: pa.RecordBatch, options: dict[str, str] | None = None) -> str:
    """One commit (one data file per partition) appended to the table at `uri`."""
    write_deltalake(
        str(uri), batch, mode="append", partition_by=list(PARTITION_BY), storage_options=options
    )
    return str(uri)


def config(main: Path | str, batch_size: int = 10_000) -> Config:
    return dataclasses.replace(
        Config(), delta_sink=DeltaSinkConfig(table_path=str(main), batch_size=batch_size)
    )


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` with a hash of its bytes (the _delta_log included)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def indices(uri: str, options: dict[str, str] | None = None) -> list[int]:
    return [i for _, i in table_keys(uri, options)]


def records(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == MERGE_LOGGER and r.getMessage() == message]


@pytest.fixture(autouse=True)
def merge_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=MERGE_LOGGER)


# --- staging-backfill.AC3 -------------------------------------------------------------------------


def test_merge_ac3_1_inserts_non_duplicate_records(tmp_path: Path) -> None:
    main = write(tmp_path / "main", rows([10, 11, 12]))
    staging_rows = rows([13, 14, 15], seen=T0 + 100)
    staging = write(tmp_path / "staging", staging_rows)
    assert run_merge(config(main), staging) == 0
    assert indices(main) == [10, 11, 12, 13, 14, 15]
    # whole rows arrive unchanged, every column
    merged = DeltaTable(main).to_pyarrow_table().cast(ARCHIVE_SCHEMA).sort_by("cert_index")
    assert merged.slice(3).to_pylist() == pa.Table.from_batches([staging_rows]).to_pylist()


def test_merge_ac3_2_skips_existing_records(tmp_path: Path) -> None:
    main = write(tmp_path / "main", rows([10, 11, 12], seen=T0))
    staging = write(tmp_path / "staging", rows([11, 12, 13], seen=T0 + 500))
    assert run_merge(config(main), staging) == 0
    table = DeltaTable(main).to_pyarrow_table(columns=["cert_index", "seen"]).sort_by("cert_index")
    assert table.column("cert_index").to_pylist() == [10, 11, 12, 13]
    # 11 and 12 are main's rows, not staging's
    seen = [t.timestamp() for t in table.column("seen").to_pylist()]
    assert seen[:3] == [T0, T0 + 1, T0 + 2] and seen[3] == T0 + 502


def test_merge_ac3_3_idempotent(tmp_path: Path) -> None:
    main = write(tmp_path / "main", rows([10, 11]))
    staging = tmp_path / "staging"
    write(staging, rows([12, 13]))
    assert run_merge(config(main), str(staging)) == 0
    after_first = snapshot(tmp_path / "main")
    write(staging, rows([12, 13]))  # the same staging data again, as a new table
    summary = tmp_path / "second.json"
    assert run_merge(config(main), str(staging), summary) == 0
    assert indices(main) == [10, 11, 12, 13]
    assert snapshot(tmp_path / "main") == after_first  # not even an empty commit
    figures = json.loads(summary.read_text())
    assert (figures["total_inserted"], figures["total_skipped"]) == (0, 2)


def test_merge_ac3_4_staging_deleted_on_success(tmp_path: Path) -> None:
    main = write(tmp_path / "main", rows([1]))
    staging = write(tmp_path / "staging", rows([2, 3]))
    write(staging, rows([3, 4]))
    assert run_merge(config(main), staging) == 0
    assert not os.path.exists(staging)
    assert (tmp_path / "main").is_dir()


def test_merge_ac3_4_staging_reached_through_a_symlink_is_deleted_with_the_link(
    tmp_path: Path,
) -> None:
    main = write(tmp_path / "main", rows([1]))
    real = write(tmp_path / "real-staging", rows([2]))
    (tmp_path / "staging").symlink_to(real)
    assert merge_command(main, str(tmp_path / "staging")) == 0
    assert not os.path.lexists(tmp_path / "staging") and not os.path.exists(real)
    assert indices(main) == [1, 2]


def test_merge_ac3_5_hv1_logs_merge_complete_with_totals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    main = write(tmp_path / "main", rows([10, 11, 12]))
    staging = write(tmp_path / "staging", rows([11, 12, 13, 14]))
    write(staging, rows([14, 15]))  # 14 twice within staging
    summary = tmp_path / "summary.json"
    assert run_merge(config(main), staging, summary) == 0
    [done] = records(caplog, "merge complete")
    figures = {k: getattr(done, k) for k in ("total_inserted", "total_skipped")}
    figures["total_staging_rows"] = done.total_staging_rows
    assert figures == {"total_inserted": 3, "total_skipped": 3, "total_staging_rows": 6}
    assert (done.skipped_in_main, done.skipped_duplicates) == (2, 1)
    assert done.total_inserted + done.total_skipped == done.total_staging_rows
    out = capsys.readouterr().out
    assert "merge complete: total_inserted=3 total_skipped=3" in out
    assert "duplicates within staging 1" in out and "total_staging_rows=6" in out
    doc = json.loads(summary.read_text())
    assert {k: doc[k] for k in figures} == figures
    assert doc["outcome"] == "merged" and doc["staging_deleted"] is True


# --- staging-backfill.AC4 -------------------------------------------------------------------------


def test_error_ac4_1_missing_staging_exits_zero(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert run_merge(config(tmp_path / "main"), str(tmp_path / "nonexistent")) == 0
    [line] = records(caplog, "nothing to merge")
    assert line.levelno == logging.INFO and line.reason == "missing staging"
    assert not (tmp_path / "main").exists()  # nothing to merge: main not even created


def test_error_ac4_1_empty_staging_exits_zero(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    main = write(tmp_path / "main", rows([1, 2]))
    staging = tmp_path / "staging"
    DeltaTable.create(str(staging), ARCHIVE_SCHEMA, partition_by=list(PARTITION_BY))
    before = snapshot(tmp_path)
    assert run_merge(config(main), str(staging)) == 0
    [line] = records(caplog, "nothing to merge")
    assert line.reason == "empty staging"
    assert snapshot(tmp_path) == before


def test_error_ac4_2_missing_main_auto_created(tmp_path: Path) -> None:
    main = tmp_path / "lake" / "main"
    staging = write(tmp_path / "staging", rows([10, 11, 12]))
    summary = tmp_path / "s.json"
    assert run_merge(config(main), staging, summary) == 0
    table = DeltaTable(str(main))
    assert table.metadata().partition_columns == list(PARTITION_BY)
    assert pa.schema(table.schema().to_arrow()).names == ARCHIVE_SCHEMA.names
    assert indices(str(main)) == [10, 11, 12]
    doc = json.loads(summary.read_text())
    assert doc["main_created"] is True and doc["total_inserted"] == 3


def break_after_first_batch(action: Callable[[], Any]) -> logging.Handler:
    """A log handler that runs `action` once, right after the first batch committed: a real
    failure in the middle of a real merge."""

    class Trigger(logging.Handler):
        fired = False

        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "merge batch committed" and not self.fired:
                self.fired = True
                action()

    return Trigger()


@pytest.fixture
def hook() -> Iterator[Callable[[logging.Handler], None]]:
    logger = logging.getLogger(MERGE_LOGGER)
    added: list[logging.Handler] = []

    def add(handler: logging.Handler) -> None:
        logger.addHandler(handler)
        added.append(handler)

    yield add
    for handler in added:
        logger.removeHandler(handler)


def test_error_ac4_3_hv2_failed_batch_leaves_staging_intact(
    tmp_path: Path, hook: Callable[[logging.Handler], None], caplog: pytest.LogCaptureFixture
) -> None:
    main_dir = tmp_path / "main"
    main = write(main_dir, rows(range(0, 5)))
    staging = write(tmp_path / "staging", rows(range(3, 33)))
    before = snapshot(tmp_path / "staging")
    with ExitStack() as stack:
        # main's _delta_log becomes a file once batch 1 is in: batch 2's commit really fails
        hook(break_after_first_batch(lambda: stack.enter_context(broken_log(main_dir))))
        summary = tmp_path / "failed.json"
        code = merge_command(main, staging, batch_rows=10, summary_json=summary)
    assert code == 1
    assert snapshot(tmp_path / "staging") == before
    [failed] = records(caplog, "merge failed")
    assert "intact" in failed.staging_state
    assert json.loads(summary.read_text())["outcome"] == "failed"
    assert indices(main) == list(range(0, 15))  # batch 1 (5..14) landed, nothing else
    # the retry finishes: batch 1's rows are found in main and skipped
    assert merge_command(main, staging, batch_rows=10, summary_json=summary) == 0
    assert indices(main) == list(range(0, 33))
    doc = json.loads(summary.read_text())
    assert (doc["total_inserted"], doc["skipped_in_main"]) == (18, 12)
    assert not os.path.exists(staging)


# --- the same-table guard and schema refusals (exit 2, nothing touched) ---------------------------


SPELLINGS: dict[str, Callable[[Path], str]] = {
    "identical": lambda t: str(t / "lake" / "main"),
    "trailing slash": lambda t: str(t / "lake" / "main") + "/",
    "file uri": lambda t: (t / "lake" / "main").as_uri(),
    "file uri, trailing slash": lambda t: (t / "lake" / "main").as_uri() + "/",
    "dot-dot": lambda t: str(t / "lake" / "other" / ".." / "main"),
    "relative": lambda t: os.path.relpath(t / "lake" / "main"),
    "symlink": lambda t: str(t / "link"),
    "symlinked parent": lambda t: str(t / "lakelink" / "main"),
    "inside main": lambda t: str(t / "lake" / "main" / "staging"),
    "containing main": lambda t: str(t / "lake"),
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_merge_refuses_staging_that_is_main(tmp_path: Path, spelling: str) -> None:
    main = tmp_path / "lake" / "main"
    write(main, rows([1, 2, 3]))
    write(main / "staging", rows([4]))  # a table inside main, for "inside main"
    write(tmp_path / "lake", rows([5]))  # a table around main, for "containing main"
    (tmp_path / "link").symlink_to(main)
    (tmp_path / "lakelink").symlink_to(tmp_path / "lake")
    before = snapshot(tmp_path)
    staging = SPELLINGS[spelling](tmp_path)
    assert merge_command(str(main), staging) == 2
    assert snapshot(tmp_path) == before


def test_merge_refuses_main_under_another_spelling_of_its_config_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Main given relative in the configuration, staging given as its file:// URI."""
    main = write(tmp_path / "main", rows([1]))
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    assert run_merge(config("./main/"), Path(main).as_uri()) == 2
    assert snapshot(tmp_path) == before


def test_merge_refuses_a_copy_of_main(tmp_path: Path) -> None:
    """Same Delta table id: main reached through a path certlake cannot see through, or a copy."""
    main = write(tmp_path / "main", rows([1, 2]))
    staging = tmp_path / "copy"
    staging.mkdir()
    for p in Path(main).rglob("*"):
        target = staging / p.relative_to(main)
        if p.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.write_bytes(p.read_bytes())
    before = snapshot(tmp_path)
    assert merge_command(main, str(staging)) == 2
    assert snapshot(tmp_path) == before


def test_merge_refuses_incompatible_schemas(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    main = write(tmp_path / "main", rows([1]))
    other = tmp_path / "other"
    write_deltalake(str(other), pa.table({"source_url": [LOG_A], "cert_index": [2]}))
    before = snapshot(tmp_path)
    assert merge_command(main, str(other)) == 2  # staging is not an archive table
    assert merge_command(str(other), write(tmp_path / "staging", rows([3]))) == 2  # nor main
    reasons = [r.reason for r in records(caplog, "merge refused; nothing was changed")]
    assert "staging" in reasons[0] and "schema" in reasons[0]
    assert "main table" in reasons[1] and "not a certlake archive table" in reasons[1]
    before["staging"] = "new"
    after = snapshot(tmp_path)
    after["staging"] = "new"
    assert {k: v for k, v in after.items() if not k.startswith("staging/")} == before


# --- duplicates, windows, batches, pruning, side table --------------------------------------------


def test_duplicates_inside_staging_collapse_to_the_first_written(tmp_path: Path) -> None:
    main = write(tmp_path / "main", rows([1]))
    staging = tmp_path / "staging"
    write(staging, rows([20, 21, 20], seen=T0 + 10))  # 20 twice in one file: the first is kept
    write(staging, rows([21, 20, 22], seen=T0 + 90))  # and again in later commits
    write(staging, rows([22], url=LOG_B, seen=T0 + 200))  # another log: not a duplicate
    summary = tmp_path / "s.json"
    assert merge_command(main, str(staging), summary_json=summary) == 0
    table = DeltaTable(main).to_pyarrow_table(columns=["source_url", "cert_index", "seen"])
    got = {
        (u, i): s.timestamp()
        for u, i, s in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True)
    }
    assert len(got) == table.num_rows == 5
    assert got[(LOG_A, 20)] == T0 + 10 and got[(LOG_A, 21)] == T0 + 11
    assert got[(LOG_A, 22)] == T0 + 92 and got[(LOG_B, 22)] == T0 + 200
    doc = json.loads(summary.read_text())
    assert (doc["total_inserted"], doc["skipped_duplicates"], doc["skipped_in_main"]) == (4, 3, 0)


def test_windows_and_batches_cover_staging_larger_than_both(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    main = write(tmp_path / "main", rows(range(0, 400, 2)))  # every even index below 400
    staging = tmp_path / "staging"
    for start in range(0, 600, 50):  # 12 files; 100..149 written twice, in different windows
        write(staging, rows(range(start, start + 50)))
    write(staging, rows(range(100, 150), seen=T0 + 1000))
    summary = tmp_path / "s.json"
    code = merge_command(main, str(staging), batch_rows=40, window_rows=120, summary_json=summary)
    assert code == 0
    assert indices(main) == list(range(600))
    doc = json.loads(summary.read_text())
    assert doc["windows"] == 7  # 13 files of 50 rows, two per window of at most 120 rows
    assert doc["total_staging_rows"] == 650 and doc["total_inserted"] == 400
    assert doc["skipped_in_main"] == 250 and doc["skipped_duplicates"] == 0
    committed = [r.rows for r in records(caplog, "merge batch committed")]
    assert sum(committed) == 400 and max(committed) <= 40 and doc["batches"] == len(committed)


def test_main_pruning_reads_only_files_that_can_hold_the_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    main = tmp_path / "main"
    for k in range(20):  # 20 files, each one log's contiguous range of 100 indices
        write(main, rows(range(k * 1000, k * 1000 + 100), url=LOG_A if k % 2 else LOG_B))
    # staging touches two files' ranges of LOG_A (k = 3 and 15) and one index nobody has
    staging = write(tmp_path / "staging", rows([3050, 3150, 15020, 15099], url=LOG_A))
    assert merge_command(str(main), staging) == 0
    [decided] = records(caplog, "merge window decided")
    assert (decided.main_files_read, decided.main_files_total) == (2, 20)
    assert (decided.already_in_main, decided.to_insert) == (3, 1)
    assert len(indices(str(main))) == 2001


def missing_in_main(main: str, ceiling: int) -> list[tuple[int, int]]:
    """What gap detection over main alone lists for LOG_A below `ceiling`, from 0."""
    plan = plan_gaps(main, None, {LOG_A: ceiling}, 0)
    return [r for g in plan.logs if g.url == LOG_A for r in g.missing]


def unparseable(start: int, end: int, url: str = LOG_A) -> SkippedRange:
    return SkippedRange(url, start, end, SkipKind.UNPARSEABLE, f"bad DER at {start}")


def test_skipped_range_records_move_to_main_once_with_the_rows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    main = write(tmp_path / "main", rows([0, 1, 9]))
    record_skipped(main, None, [unparseable(3, 4)])  # main already records 3 and 4
    staging = write(tmp_path / "staging", rows([2, 6, 8]))
    record_skipped(staging, None, [unparseable(3, 5), unparseable(7, 7), unparseable(5, 5, LOG_B)])
    assert missing_in_main(main, 10) == [(2, 2), (5, 8)]
    summary = tmp_path / "s.json"
    assert merge_command(main, staging, summary_json=summary) == 0
    assert indices(main) == [0, 1, 2, 6, 8, 9]
    recorded = sorted((r.source_url, r.start, r.end) for r in read_skipped(main))
    # 3-4 was in main already: only what main lacked was added, each index once.
    assert recorded == [(LOG_A, 3, 4), (LOG_A, 5, 5), (LOG_A, 7, 7), (LOG_B, 5, 5)]
    assert missing_in_main(main, 10) == []
    doc = json.loads(summary.read_text())
    assert (doc["skip_records"], doc["skip_records_added"]) == (3, 3)
    [deleted] = records(caplog, "staging table deleted")
    assert deleted.skip_records_added == 3
    assert not os.path.exists(staging)


def test_staging_holding_only_skip_records_is_merged_and_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What a backfill leaves when every entry it fetched was undecodable: a staging table
    with no rows, and its side table."""
    main = write(tmp_path / "main", rows([0, 1, 5]))
    staging = str(tmp_path / "staging")
    ArchiveTable.open_or_create(staging)
    record_skipped(staging, None, [unparseable(2, 4)])
    assert missing_in_main(main, 6) == [(2, 4)]
    summary = tmp_path / "s.json"
    assert merge_command(main, staging, summary_json=summary) == 0
    assert not records(caplog, "nothing to merge")
    assert [(r.start, r.end, r.kind) for r in read_skipped(main)] == [(2, 4, SkipKind.UNPARSEABLE)]
    assert missing_in_main(main, 6) == []
    doc = json.loads(summary.read_text())
    assert doc["outcome"] == "merged" and doc["total_staging_rows"] == 0
    assert doc["staging_deleted"] is True and not os.path.exists(staging)
    # Run again over a staging that repeats those records: main records them once still.
    ArchiveTable.open_or_create(staging)
    record_skipped(staging, None, [unparseable(2, 4)])
    assert merge_command(main, staging, summary_json=summary) == 0
    assert len(read_skipped(main)) == 1
    assert json.loads(summary.read_text())["skip_records_added"] == 0


# --- s3:// on a real S3-compatible server ---------------------------------------------------------


def objects(server: S3Server, bucket: str) -> dict[str, str]:
    listing = server.client().list_objects_v2(Bucket=bucket)
    return {o["Key"]: o["ETag"] for o in listing.get("Contents", [])}


def test_merge_ac3_4_s3_staging_prefix_deleted_neighbours_kept(
    s3_server: S3Server, s3_bucket: str
) -> None:
    bucket, options = s3_bucket, s3_server.options()
    main = write(f"s3://{bucket}/lake/main", rows([1, 2, 3]), options)
    staging = write(f"s3://{bucket}/lake/staging", rows([3, 4, 5]), options)
    neighbour = write(f"s3://{bucket}/lake/staging2", rows([9]), options)  # a shared key prefix
    kept = {k: v for k, v in objects(s3_server, bucket).items() if k.startswith("lake/staging2/")}
    # the same table, spelled differently: refused, nothing touched
    before = objects(s3_server, bucket)
    for spelling in (f"s3://{bucket}/lake/main/", f"s3://{bucket}//lake/x/../main"):
        assert merge_command(main, spelling, storage_options=options) == 2
    assert objects(s3_server, bucket) == before
    assert merge_command(main, staging, storage_options=options) == 0
    assert indices(main, options) == [1, 2, 3, 4, 5]
    left = objects(s3_server, bucket)
    assert not [k for k in left if k.startswith("lake/staging/")]
    assert {k: v for k, v in left.items() if k.startswith("lake/staging2/")} == kept
    assert indices(neighbour, options) == [9]


def test_error_ac4_3_hv2_s3_outage_mid_merge_leaves_staging_intact(
    s3_server: S3Server,
    s3_bucket: str,
    hook: Callable[[logging.Handler], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    bucket, options = s3_bucket, s3_server.options()
    main = write(f"s3://{bucket}/main", rows(range(0, 4)), options)
    staging = write(f"s3://{bucket}/staging", rows(range(2, 32)), options)
    before = {k: v for k, v in objects(s3_server, bucket).items() if k.startswith("staging/")}
    hook(break_after_first_batch(s3_server.pause))  # the store stops answering (SIGSTOP)
    try:
        code = merge_command(main, staging, storage_options=options, batch_rows=10)
    finally:
        s3_server.resume()
    assert code == 1
    assert records(caplog, "merge failed")
    after = {k: v for k, v in objects(s3_server, bucket).items() if k.startswith("staging/")}
    assert after == before
    assert indices(main, options) == list(range(0, 14))  # batch 1 landed, nothing else
    assert merge_command(main, staging, storage_options=options, batch_rows=10) == 0
    assert indices(main, options) == list(range(0, 32))
    assert not [k for k in objects(s3_server, bucket) if k.startswith("staging/")]


# --- several stagings in one call (issue 17) ------------------------------------------------------


def test_merge_of_several_stagings_inserts_each_key_once_and_deletes_them_all(
    tmp_path: Path,
) -> None:
    main = write(tmp_path / "main", rows([1, 2]))
    # Overlapping stagings (two workers' tables, a rerun's): 3 and 4 are in both.
    first = write(tmp_path / "s1", rows([2, 3, 4], seen=T0 + 10))
    second = write(tmp_path / "s2", rows([3, 4, 5], seen=T0 + 20))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump({"delta_sink": {"table_path": main}, "ct_log": {"state_file": None}})
    )
    summary = tmp_path / "merge.json"
    done = subprocess.run(
        [CERTLAKE, "merge", "--config", str(cfg), "--staging-path", first,
         "--staging-path", second, "--summary-json", str(summary)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert indices(main) == [1, 2, 3, 4, 5]
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()
    figures = json.loads(summary.read_text())
    assert [(f["total_inserted"], f["total_skipped"]) for f in figures] == [(2, 1), (1, 2)]


def test_merge_of_several_stagings_stops_at_the_first_that_fails(tmp_path: Path) -> None:
    main = write(tmp_path / "main", rows([1]))
    good = write(tmp_path / "good", rows([2]))
    later = write(tmp_path / "later", rows([3]))
    # Refused: the main table given as a staging (nothing changed, exit 2); `later` is left.
    assert merge_command(main, [good, main, later]) == 2
    assert indices(main) == [1, 2]
    assert indices(later) == [3]

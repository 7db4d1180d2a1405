"""`certlake backfill` and `certlake gaps` end to end (HV5): the real command in its own
process, against the built-in test log over loopback (one RFC 6962 log, one static-ct log whose
last tile is partial), real Delta tables, real signals."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from deltalake import DeltaTable, write_deltalake

from certlake.lake.schema import ARCHIVE_SCHEMA
from certlake.lake.table import ArchiveTable, read_skipped
from certlake.lake.txn import SkipKind
from certlake.testlog.faults import Endpoint, FaultKind
from support.procs import CERTLAKE
from support.s3 import S3Server

from .conftest import SIZE, Lake

ENTRY_READS = (Endpoint.GET_ENTRIES, Endpoint.DATA_TILE)


def expect_complete(lake: Lake, table: Path, url: str, lo: int, hi: int) -> None:
    """Every index of `[lo, hi]` of `url` is in `table`, and no index of `url` is there twice."""
    counts = lake.keys(table)
    present = {i for (u, i) in counts if u == url}
    assert not set(range(lo, hi + 1)) - present, sorted(set(range(lo, hi + 1)) - present)[:20]
    assert all(counts[(url, i)] == 1 for i in present), "an index was written twice"


def summary_of(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def log_entry(doc: dict[str, Any], url: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [e for e in doc["logs"] if e["url"] == url]
    (entry,) = entries
    return entry


def schema_and_partitions(table: Path) -> tuple[pa.Schema, list[str]]:
    dt = DeltaTable(str(table))
    return pa.schema(dt.schema().to_arrow()), list(dt.metadata().partition_columns)


# --- filling the archive (HV5, both modes) --------------------------------------------------------


def test_hv5_staging_ac5_1_catch_up_without_staging_fills_main_exactly_once(lake: Lake) -> None:
    rfc, static = lake.log.rfc6962.url, lake.log.static.url
    # Holes near the start, across tile boundaries, inside the partial last tile, and one that
    # straddles rfc6962's ceiling (only its part below the ceiling is missing).
    lake.punch(rfc, [1, 2, 3, *range(250, 270), 700, *range(1040, 1066)])
    lake.punch(static, [5, *range(250, 262), *range(500, 520), *range(1030, 1050)])
    lake.ceilings(rfc6962=1060, static=SIZE)
    summary = lake.tmp / "summary.json"
    result = lake.run("backfill", "--summary-json", str(summary))
    assert result.returncode == 0, result.stderr[-3000:]
    # Catch-up fills [min, min(max, C-1)]; past the ceiling nothing is fetched.
    expect_complete(lake, lake.main, rfc, 0, 1059)
    counts = lake.keys(lake.main)
    assert not any((rfc, i) in counts for i in range(1060, 1066))
    expect_complete(lake, lake.main, rfc, 1066, SIZE - 1)
    expect_complete(lake, lake.main, static, 0, SIZE - 1)
    doc = summary_of(summary)
    assert (doc["exit_code"], doc["staging"]) == (0, False)
    assert doc["records_written"] == (3 + 20 + 1 + 20) + (1 + 12 + 20 + 20)
    # The ceiling is the tree size every read assumes; the one tree head each log was asked for
    # is what its ranges were verified against (none was stored beside the archive).
    assert lake.log.requests(Endpoint.GET_STH, Endpoint.CHECKPOINT) == 2
    for url in (rfc, static):
        entry = log_entry(doc, url)
        assert entry["verified_against"] == f"a fresh head from the log ({SIZE})"
        assert entry["verified"] == entry["fetched"] and entry["unverified"] == []
    assert lake.log.requests(*ENTRY_READS) > 0


def test_hv5_historical_from_fills_from_f_up_to_the_ceiling(lake: Lake) -> None:
    rfc, static = lake.log.rfc6962.url, lake.log.static.url
    lake.punch(rfc, [*range(100, 110), *range(395, 410), *range(900, 905)])
    lake.drop_log(static)  # absent from the table: historical mode takes its whole range
    lake.ceilings(rfc6962=SIZE, static=1000)
    result = lake.run("backfill", "--from", "400")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = lake.keys(lake.main)
    # The hole straddling F is filled from F on; the one before F is left alone.
    assert not any((rfc, i) in counts for i in [*range(100, 110), *range(395, 400)])
    expect_complete(lake, lake.main, rfc, 400, SIZE - 1)
    expect_complete(lake, lake.main, static, 400, 999)
    assert {i for (u, i) in counts if u == static} == set(range(400, 1000))


def test_delta_backfill_ac4_2_rows_match_the_live_sinks_rows(lake: Lake) -> None:
    rfc, static = lake.log.rfc6962.url, lake.log.static.url
    holes = {rfc: [7, *range(300, 320)], static: [9, *range(256, 270), *range(1090, 1095)]}
    live = {url: lake.rows(lake.main, url) for url in holes}
    for url, indices in holes.items():
        lake.punch(url, indices)
    lake.ceilings(rfc6962=SIZE, static=SIZE)
    result = lake.run("backfill")
    assert result.returncode == 0, result.stderr[-3000:]
    for url, indices in holes.items():
        refilled = lake.rows(lake.main, url)
        for i in indices:
            # Same schema, every field the same except when it was fetched.
            ours = {k: v for k, v in refilled[i].items() if k not in ("seen", "seen_date")}
            theirs = {k: v for k, v in live[url][i].items() if k not in ("seen", "seen_date")}
            assert ours == theirs
            assert refilled[i]["seen"] > live[url][i]["seen"]
            assert refilled[i]["seen_date"] == refilled[i]["seen"].strftime("%Y-%m-%d")
            assert refilled[i]["source_name"] == lake.log.rfc6962.description or url == static
    assert schema_and_partitions(lake.main) == (ARCHIVE_SCHEMA, ["seen_date"])


def test_delta_backfill_ac4_3_backfill_creates_a_missing_main_table(lake: Lake) -> None:
    main = lake.tmp / "new-archive"
    lake.ceilings(rfc6962=300, static=300)
    result = lake.run(
        "backfill", "--from", "0", config=lake.config(delta_sink={"table_path": str(main)})
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert schema_and_partitions(main) == (ARCHIVE_SCHEMA, ["seen_date"])
    expect_complete(lake, main, lake.log.rfc6962.url, 0, 299)
    expect_complete(lake, main, lake.log.static.url, 0, 299)
    assert len(lake.keys(main)) == 600


def test_staging_ac5_2_rust_spelling_without_staging_path_writes_main(lake: Lake) -> None:
    rfc = lake.log.rfc6962.url
    lake.punch(rfc, [*range(20, 40)])
    lake.ceilings(rfc6962=SIZE)
    before = DeltaTable(str(lake.main)).version()
    result = subprocess.run(
        [CERTLAKE, "--backfill", "--from", "10", "--config", str(lake.config())],
        capture_output=True,
        text=True,
        cwd=lake.tmp,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert DeltaTable(str(lake.main)).version() > before
    expect_complete(lake, lake.main, rfc, 0, SIZE - 1)
    assert not (lake.tmp / "staging").exists()


def test_logs_filter_backfills_only_matching_logs(lake: Lake) -> None:
    rfc, static = lake.log.rfc6962.url, lake.log.static.url
    lake.punch(rfc, [50, 51])
    lake.punch(static, [60, 61])
    lake.ceilings(rfc6962=SIZE, static=SIZE)
    result = lake.run("backfill", "--logs", "static")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = lake.keys(lake.main)
    assert (rfc, 50) not in counts and (rfc, 51) not in counts
    expect_complete(lake, lake.main, static, 0, SIZE - 1)


# --- staging (staging-backfill.AC1) ---------------------------------------------------------------


def test_staging_ac1_1_creates_table_at_staging_path(lake: Lake) -> None:
    lake.punch(lake.log.rfc6962.url, [10, 11, 12])
    lake.ceilings(rfc6962=SIZE, static=SIZE)
    staging = lake.tmp / "staging"
    result = lake.run("backfill", "--staging-path", str(staging))
    assert result.returncode == 0, result.stderr[-3000:]
    assert schema_and_partitions(staging) == (ARCHIVE_SCHEMA, ["seen_date"])
    assert sorted(lake.keys(staging)) == [(lake.log.rfc6962.url, i) for i in (10, 11, 12)]


def test_staging_ac1_2_records_in_staging_not_main_and_a_second_run_fetches_nothing(
    lake: Lake,
) -> None:
    rfc, static = lake.log.rfc6962.url, lake.log.static.url
    lake.punch(rfc, [*range(100, 130)])
    lake.punch(static, [*range(700, 720)])
    lake.ceilings(rfc6962=SIZE, static=SIZE)
    before = (DeltaTable(str(lake.main)).version(), lake.keys(lake.main))
    staging = lake.tmp / "staging"
    assert lake.run("backfill", "--staging-path", str(staging)).returncode == 0
    assert (DeltaTable(str(lake.main)).version(), lake.keys(lake.main)) == before
    assert set(lake.keys(staging)) == {(rfc, i) for i in range(100, 130)} | {
        (static, i) for i in range(700, 720)
    }
    reads = lake.log.requests(*ENTRY_READS)
    summary = lake.tmp / "again.json"
    result = lake.run("backfill", "--staging-path", str(staging), "--summary-json", str(summary))
    assert result.returncode == 0, result.stderr[-3000:]
    assert lake.log.requests(*ENTRY_READS) == reads  # main ∪ staging holds everything
    assert summary_of(summary)["entries_missing"] == 0
    assert len(lake.keys(staging)) == 50


def test_staging_ac1_3_hv5_catch_up_and_historical_modes(lake: Lake) -> None:
    rfc, static = lake.log.rfc6962.url, lake.log.static.url
    lake.punch(rfc, [*range(0, 40), *range(500, 510)])
    lake.drop_log(static)
    lake.ceilings(rfc6962=SIZE, static=600)
    staging = lake.tmp / "staging"
    # Catch-up: rfc6962's interior hole only (nothing before its first row; static is absent).
    assert lake.run("backfill", "--staging-path", str(staging)).returncode == 0
    assert set(lake.keys(staging)) == {(rfc, i) for i in range(500, 510)}
    # Historical from 0, into a fresh staging table (the seed's HV5 cleans up staging first):
    # everything main lacks below the ceilings.
    fresh = lake.tmp / "staging2"
    assert lake.run("backfill", "--from", "0", "--staging-path", str(fresh)).returncode == 0
    assert set(lake.keys(fresh)) == {(rfc, i) for i in [*range(0, 40), *range(500, 510)]} | {
        (static, i) for i in range(600)
    }
    assert max(lake.keys(fresh).values()) == 1


# --- failures (delta-backfill.AC5, AC6) -----------------------------------------------------------


def test_delta_backfill_ac5_3_unreachable_log_does_not_block_others(lake: Lake) -> None:
    rfc, static = lake.log.rfc6962.url, lake.log.static.url
    lake.punch(rfc, [*range(100, 400)])
    lake.punch(static, [*range(10, 20), *range(600, 800)])
    lake.ceilings(rfc6962=SIZE, static=SIZE)
    lake.log.faults("503:1,log=static")  # every request to the static log: 503, forever
    summary = lake.tmp / "summary.json"
    result = lake.run("backfill", "--summary-json", str(summary))
    assert result.returncode == 1
    expect_complete(lake, lake.main, rfc, 0, SIZE - 1)
    assert lake.log.fired(FaultKind.UNAVAILABLE) >= 11  # it was given at least ten retries
    doc = summary_of(summary)
    assert doc["logs_completed"] == [rfc] and doc["logs_failed"] == [static]
    unfetched = log_entry(doc, static)["unfetched"]
    assert {(u["start"], u["end"]) for u in unfetched} >= {(10, 19)}
    assert sum(u["count"] for u in unfetched) == 210 == doc["entries_unfetched"]
    assert any("503" in u["reason"] for u in unfetched)
    # The missing ranges are named on stderr too.
    line = next(x for x in result.stderr.splitlines() if "entries not fetched" in x)
    assert static in line and "10-19, 600-799" in line


def test_delta_backfill_ac5_4_exit_code_reflects_whether_all_logs_completed(lake: Lake) -> None:
    rfc, static = lake.log.rfc6962.url, lake.log.static.url
    lake.punch(rfc, [*range(30, 60)])
    lake.punch(static, [*range(30, 60)])
    lake.ceilings(rfc6962=SIZE, static=SIZE)
    lake.log.faults("503:1,log=rfc6962")
    assert lake.run("backfill").returncode == 1
    expect_complete(lake, lake.main, static, 0, SIZE - 1)
    lake.log.faults()
    summary = lake.tmp / "summary.json"
    assert lake.run("backfill", "--summary-json", str(summary)).returncode == 0
    assert summary_of(summary)["records_written"] == 30  # only what the first run left
    expect_complete(lake, lake.main, rfc, 0, SIZE - 1)


def test_delta_backfill_ac6_2_rate_limits_5xx_and_short_responses_still_deliver_everything(
    lake: Lake,
) -> None:
    rfc, static = lake.log.rfc6962.url, lake.log.static.url
    lake.punch(rfc, [*range(0, 600)])
    lake.punch(static, [*range(100, 700)])
    lake.ceilings(rfc6962=SIZE, static=SIZE)
    # Refusals at random whatever the rate teach the adaptive pacing a limit that is not there
    # (tests/ct/test_pacing.py covers how it copes): with them on every request, the heads and
    # proofs of verification among them, this run takes 80 s instead of 20. 429s are kept to
    # the entry reads; the other failures hit every request.
    lake.log.faults(
        "429:0.25,endpoint=get-entries,endpoint=data-tile", "503:0.15", "502:0.05", "short:0.5"
    )
    summary = lake.tmp / "summary.json"
    result = lake.run("backfill", "--from", "0", "--summary-json", str(summary))
    assert result.returncode == 0, result.stderr[-3000:]
    expect_complete(lake, lake.main, rfc, 0, SIZE - 1)
    expect_complete(lake, lake.main, static, 0, SIZE - 1)
    for kind in (FaultKind.RATE_LIMITED, FaultKind.UNAVAILABLE, FaultKind.SHORT):
        assert lake.log.fired(kind) > 0
    doc = summary_of(summary)
    retries = [log_entry(doc, url)["retries"] for url in (rfc, static)]
    assert all(r.get("429", 0) > 0 for r in retries)
    assert sum(r.get("503", 0) for r in retries) > 0
    for url in (rfc, static):
        assert log_entry(doc, url)["verified"] == log_entry(doc, url)["fetched"]


def test_delta_backfill_ac6_2_rate_limits_get_at_least_ten_retries_with_backoff(
    lake: Lake,
) -> None:
    rfc = lake.log.rfc6962.url
    lake.punch(rfc, [*range(200, 220)])
    lake.ceilings(rfc6962=SIZE)
    # Ten 429s in a row on the one request in flight, though ordinary failures get 2 attempts.
    lake.log.faults("429:n=10,log=rfc6962,endpoint=get-entries,retry_after=0")
    summary = lake.tmp / "summary.json"
    config = lake.config(
        backfill={"per_log_workers": 1, "retry_max_attempts": 2, "retry_max_delay_ms": 80}
    )
    result = lake.run("backfill", "--summary-json", str(summary), config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    expect_complete(lake, lake.main, rfc, 0, SIZE - 1)
    doc = summary_of(summary)
    assert log_entry(doc, rfc)["retries"] == {"429": 10}
    # Exponential back-off from 10 ms, capped at 80 ms, at least half of each step waited:
    # 5 + 10 + 20 + 7 × 40 ms. Without back-off the ten retries take a few milliseconds.
    assert doc["elapsed_secs"] >= 0.315


def test_delta_backfill_ac6_3_summary_reports_records_logs_and_elapsed(lake: Lake) -> None:
    rfc, static = lake.log.rfc6962.url, lake.log.static.url
    lake.punch(rfc, [*range(0, 5), 17])
    lake.punch(static, [3])
    lake.ceilings(rfc6962=SIZE, static=SIZE)
    summary = lake.tmp / "summary.json"
    result = lake.run("backfill", "--from", "0", "--summary-json", str(summary))
    assert result.returncode == 0, result.stderr[-3000:]
    doc = summary_of(summary)
    assert doc["records_written"] == 7 == doc["entries_fetched"]
    assert sorted(doc["logs_completed"]) == sorted([rfc, static]) and doc["logs_failed"] == []
    assert 0 < doc["elapsed_secs"] < 60 and doc["entries_unfetched"] == 0
    line = next(x for x in result.stderr.splitlines() if "backfill finished" in x)
    for field in ("records_written=7", "logs_completed=2", "logs_failed=0", "elapsed_secs="):
        assert field in line


@pytest.mark.parametrize(
    ("kind", "mode"),
    [
        ("rfc6962", "der"),
        ("rfc6962", "framing"),
        ("rfc6962", "base64"),
        ("rfc6962", "null"),
        ("rfc6962", "no-extra"),
        ("static", "leaf-index"),
    ],
)
def test_unparseable_entries_are_recorded_and_not_holes(lake: Lake, kind: str, mode: str) -> None:
    url = getattr(lake.log, kind).url
    lake.punch(url, [*range(40, 50)])
    lake.ceilings(**{kind: SIZE})
    lake.log.faults(f"corrupt:at=44,mode={mode},log={kind}")
    summary = lake.tmp / "summary.json"
    code = lake.run("backfill", "--summary-json", str(summary)).returncode
    entry = log_entry(summary_of(summary), url)
    if mode == "no-extra":
        # The leaf hash covers leaf_input, not extra_data: what was served is the log's.
        assert code == 0 and entry["verified"] == 10
    else:
        # Served otherwise than the log's tree holds: the range does not verify (exit code 1).
        assert code == 1 and entry["verified"] == 0
        assert [(u["start"], u["end"]) for u in entry["unverified"]] == [(40, 49)]
    present = {i for (u, i) in lake.keys(lake.main) if u == url}
    assert set(range(40, 50)) - present == {44}
    (recorded,) = [r for r in read_skipped(str(lake.main)) if r.start <= 44 <= r.end]
    assert recorded.kind is SkipKind.UNPARSEABLE
    assert log_entry(summary_of(summary), url)["unparseable"] == 1
    # Passed, never a hole: the next run finds nothing to fetch.
    lake.log.faults()
    gaps = lake.run("gaps")
    assert "total: 0 missing entries" in gaps.stdout


def test_staging_holding_only_undecodable_entries_merges_and_they_stop_being_holes(
    lake: Lake,
) -> None:
    rfc = lake.log.rfc6962.url
    lake.punch(rfc, [44])
    lake.ceilings(rfc6962=SIZE)
    lake.log.faults("corrupt:at=44,log=rfc6962")
    staging = lake.tmp / "staging"
    # Exit code 1: the garbled entry is not what the log's tree holds, so 44 does not verify.
    backfilled = lake.run("backfill", "--staging-path", str(staging))
    assert backfilled.returncode == 1 and "entries not verified" in backfilled.stderr
    lake.log.faults()
    # Staging has no rows, only the record of 44; main alone still misses it.
    assert len(lake.keys(staging)) == 0 and len(read_skipped(str(staging))) == 1
    assert "total: 1 missing entries" in lake.run("gaps").stdout
    merged = lake.run("merge", "--staging-path", str(staging))
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert "nothing to merge" not in merged.stdout + merged.stderr
    assert not staging.exists()
    (recorded,) = [r for r in read_skipped(str(lake.main)) if r.start <= 44 <= r.end]
    assert recorded.kind is SkipKind.UNPARSEABLE
    assert "total: 0 missing entries" in lake.run("gaps").stdout


# --- interruption ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_run_flushes_exits_1_and_a_rerun_completes(lake: Lake, sig: int) -> None:
    rfc, static = lake.log.rfc6962.url, lake.log.static.url
    lake.punch(rfc, [*range(100, 1000)])
    lake.punch(static, [*range(100, 1000)])
    lake.ceilings(rfc6962=SIZE, static=SIZE)
    lake.log.faults("slow:delay=0.4,endpoint=get-entries", "slow:delay=0.4,endpoint=data-tile")
    # Nothing is written before the signal unless the shutdown flush writes it.
    config = lake.config(delta_sink={"batch_size": 100_000, "flush_interval_secs": 600})
    summary = lake.tmp / "summary.json"
    stderr = lake.tmp / "stderr.log"
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [CERTLAKE, "backfill", "--config", str(config), "--summary-json", str(summary)],
            stderr=err,
            cwd=lake.tmp,
        )
        deadline = time.monotonic() + 60
        while "backfill plan" not in stderr.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.05)
        time.sleep(1.2)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 1, stderr.read_text()[-3000:]
    doc = summary_of(summary)
    assert doc["interrupted"] and 0 < doc["records_written"] < 1800
    assert len(lake.keys(lake.main)) == 2 * SIZE - 1800 + doc["records_written"]
    assert doc["entries_unfetched"] == 1800 - doc["entries_fetched"]
    lake.log.faults()
    assert lake.run("backfill").returncode == 0
    expect_complete(lake, lake.main, rfc, 0, SIZE - 1)
    expect_complete(lake, lake.main, static, 0, SIZE - 1)


# A stopped job has this long after the signal (`stopping.STOP_GRACE`, 5 s, to write what it
# holds), plus the interpreter's own exit; a service manager's stop timeout is 10 s and up.
STOPS_WITHIN = 8.0


def signal_when(
    lake: Lake, args: list[str], ready: Callable[[str], bool], sig: int = signal.SIGTERM
) -> tuple[int, float, str]:
    """Run `certlake backfill ARGS`, send `sig` once `ready(stderr so far)`; the exit code,
    the seconds from the signal to the exit, and stderr."""
    stderr = lake.tmp / "stderr.log"
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [CERTLAKE, "backfill", *args], stdout=subprocess.DEVNULL, stderr=err, cwd=lake.tmp
        )
        try:
            deadline = time.monotonic() + 60
            while not ready(stderr.read_text()):
                assert proc.poll() is None and time.monotonic() < deadline, stderr.read_text()
                time.sleep(0.05)
            signalled = time.monotonic()
            proc.send_signal(sig)
            code = proc.wait(timeout=120)
            took = time.monotonic() - signalled
        finally:
            proc.kill()
            proc.wait()
    return code, took, stderr.read_text()


def left_over(doc: dict[str, Any], url: str) -> tuple[set[int], set[int]]:
    """A log's indices listed as not fetched, and as fetched but not written."""
    entry = log_entry(doc, url)
    unfetched = {i for u in entry["unfetched"] for i in range(u["start"], u["end"] + 1)}
    unwritten = {i for u in entry["unwritten"] for i in range(u["start"], u["end"] + 1)}
    return unfetched, unwritten


def test_sigterm_while_commits_keep_failing_stops_within_seconds_listing_every_range(
    lake: Lake,
) -> None:
    rfc = lake.log.rfc6962.url
    lake.punch(rfc, [*range(10, 1010)])
    lake.ceilings(rfc6962=SIZE)
    # An unwritable target, for root as well: staging opens, but the name of its next commit
    # is taken by a directory, so every commit fails ("Failed to commit transaction").
    staging = lake.tmp / "staging"
    ArchiveTable.open_or_create(str(staging))
    (staging / "_delta_log" / "00000000000000000001.json").mkdir()
    # Back-off up to 60 s between attempts, as configured by default.
    config = lake.config(
        delta_sink={"batch_size": 50},
        backfill={"per_log_workers": 1, "retry_max_delay_ms": 60_000},
    )
    summary = lake.tmp / "summary.json"
    args = ["--config", str(config), "--staging-path", str(staging)]
    code, took, stderr = signal_when(
        lake,
        [*args, "--summary-json", str(summary)],
        lambda err: err.count("archive write failed") >= 3,
    )
    print(f"stopped {took:.2f} s after SIGTERM")
    assert code == 1, stderr[-3000:]
    assert took < STOPS_WITHIN, stderr[-3000:]
    doc = summary_of(summary)
    assert doc["interrupted"] and doc["records_written"] == 0
    assert "Failed to commit transaction" in doc["write_error"]
    unfetched, unwritten = left_over(doc, rfc)
    # Every missing index is listed, once: fetched and not written, or not fetched.
    assert unwritten and not unfetched & unwritten
    assert unfetched | unwritten == set(range(10, 1010))
    assert doc["entries_unwritten"] == len(unwritten) == doc["entries_fetched"]
    assert rfc not in doc["logs_completed"]
    line = next(x for x in stderr.splitlines() if "fetched entries not written" in x)
    assert f"log={rfc}" in line and "ranges=10-" in line


def test_sigterm_while_a_log_answers_503_with_retry_after_an_hour_stops_within_seconds(
    lake: Lake,
) -> None:
    rfc = lake.log.rfc6962.url
    lake.punch(rfc, [*range(10, 1010)])
    lake.ceilings(rfc6962=SIZE)
    summary = lake.tmp / "summary.json"
    config = lake.config(backfill={"retry_max_delay_ms": 60_000})
    lake.log.faults("503:1,log=rfc6962,endpoint=get-entries,retry_after=3600")
    code, took, stderr = signal_when(
        lake,
        ["--config", str(config), "--summary-json", str(summary)],
        lambda err: lake.log.fired(FaultKind.UNAVAILABLE) >= 1,
    )
    print(f"stopped {took:.2f} s after SIGTERM")
    assert code == 1 and took < STOPS_WITHIN, stderr[-3000:]
    doc = summary_of(summary)
    unfetched, unwritten = left_over(doc, rfc)
    assert unfetched == set(range(10, 1010)) and not unwritten
    reasons = {u["reason"] for u in log_entry(doc, rfc)["unfetched"]}
    assert any("while retrying (HTTP 503" in r for r in reasons), reasons


def test_sigterm_while_planning_waits_on_a_retry_after_stops_within_seconds(lake: Lake) -> None:
    """`--to head` asks each log for its tree head; both answer 503 with an hour to wait."""
    summary = lake.tmp / "summary.json"
    config = lake.config(backfill={"retry_max_delay_ms": 60_000})
    lake.log.faults(
        "503:1,endpoint=get-sth,retry_after=3600", "503:1,endpoint=checkpoint,retry_after=3600"
    )
    code, took, stderr = signal_when(
        lake,
        ["--config", str(config), "--to", "head", "--summary-json", str(summary)],
        lambda err: lake.log.fired(FaultKind.UNAVAILABLE) >= 1,
    )
    print(f"stopped {took:.2f} s after SIGTERM")
    assert code == 1 and took < STOPS_WITHIN, stderr[-3000:]
    doc = summary_of(summary)
    assert doc["interrupted"] and doc["records_written"] == 0 and doc["logs"] == []
    assert lake.log.requests(*ENTRY_READS) == 0


def test_sigterm_while_the_store_does_not_answer_stops_within_seconds(
    lake: Lake, s3_server: S3Server, s3_bucket: str
) -> None:
    """A staging table on S3 whose server stops answering (SIGSTOP) after the first commit:
    the next commit hangs in delta-rs (object_store retries for minutes), so it is left
    behind."""
    rfc = lake.log.rfc6962.url
    lake.punch(rfc, [*range(10, 1010)])
    lake.ceilings(rfc6962=SIZE)
    options = s3_server.options()
    s3 = {
        "endpoint": options["AWS_ENDPOINT_URL"],
        "region": options["AWS_REGION"],
        "access_key_id": options["AWS_ACCESS_KEY_ID"],
        "secret_access_key": options["AWS_SECRET_ACCESS_KEY"],
        "allow_http": True,
    }
    config = lake.config(
        delta_sink={"batch_size": 50}, backfill={"retry_max_delay_ms": 60_000}, storage={"s3": s3}
    )
    staging = f"s3://{s3_bucket}/staging"
    summary = lake.tmp / "summary.json"
    args = ["--config", str(config), "--staging-path", staging, "--summary-json", str(summary)]

    def committed_then_pause(err: str) -> bool:
        listing = s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix="staging/_delta_log/")
        if not any(o["Key"].endswith("001.json") for o in listing.get("Contents", [])):
            return False
        s3_server.pause()
        time.sleep(1.5)  # the next commit is on its way, and stuck
        return True

    try:
        code, took, stderr = signal_when(lake, args, committed_then_pause)
    finally:
        s3_server.resume()
    print(f"stopped {took:.2f} s after SIGTERM")
    assert code == 1 and took < STOPS_WITHIN, stderr[-3000:]
    assert "closing gave up on a commit still running" in stderr
    assert "left running after the stop" in stderr
    doc = summary_of(summary)
    assert doc["interrupted"]
    unfetched, unwritten = left_over(doc, rfc)
    # What did not land is listed; a commit left running may have landed since.
    assert not unfetched & unwritten
    assert unfetched | unwritten | set(range(10, 10 + doc["records_written"])) >= set(
        range(10, 1010)
    )
    result = lake.run("backfill", *args[2:4], config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    keys = Lake.keys(staging, s3_server.options())
    assert {i for (u, i) in keys if u == rfc} == set(range(10, 1010))
    assert all(n == 1 for n in keys.values())


# --- inputs that stop the job ---------------------------------------------------------------------


def test_no_state_file_means_nothing_to_do(lake: Lake) -> None:
    lake.punch(lake.log.rfc6962.url, [5])
    result = lake.run("backfill")
    assert result.returncode == 0
    assert "no state file" in result.stderr
    assert lake.log.requests(*ENTRY_READS) == 0
    gaps = lake.run("gaps")
    assert gaps.returncode == 0 and "no state file" in gaps.stdout


def test_damaged_state_file_fails_and_is_left_alone(lake: Lake) -> None:
    lake.state.write_text("{not json")
    result = lake.run("backfill")
    assert result.returncode == 1
    assert "state file" in result.stderr and "damaged" in result.stderr
    assert lake.state.read_text() == "{not json"
    assert sorted(p.name for p in lake.tmp.iterdir() if p.name.startswith("state")) == [
        "state.json"
    ]


def test_unreadable_staging_table_is_an_error_not_a_fallback(lake: Lake) -> None:
    lake.punch(lake.log.rfc6962.url, [5])
    lake.ceilings(rfc6962=SIZE)
    staging = lake.tmp / "staging"
    (staging / "_delta_log").mkdir(parents=True)
    (staging / "_delta_log" / "00000000000000000000.json").write_text("{not json")
    result = lake.run("backfill", "--staging-path", str(staging))
    assert result.returncode == 1
    assert "staging table" in result.stderr and "cannot be read" in result.stderr
    assert lake.log.requests(*ENTRY_READS) == 0
    assert lake.run("gaps", "--staging-path", str(staging)).returncode == 1


def test_staging_path_holding_another_table_is_a_usage_error(lake: Lake) -> None:
    lake.punch(lake.log.rfc6962.url, [5])
    lake.ceilings(rfc6962=SIZE)
    other = lake.tmp / "other"
    write_deltalake(str(other), pa.table({"source_url": ["x"], "cert_index": [1], "n": [2]}))
    result = lake.run("backfill", "--staging-path", str(other))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "other" in result.stderr
    assert DeltaTable(str(other)).version() == 0


def test_log_list_unavailable_configured_logs_are_backfilled_others_listed(lake: Lake) -> None:
    rfc, static = lake.log.rfc6962.url, lake.log.static.url
    lake.punch(rfc, [70, 71])
    lake.punch(static, [80, 81, 82])
    lake.ceilings(rfc6962=SIZE, static=SIZE)
    config = lake.config()
    doc = yaml.safe_load(config.read_text())
    doc["ct_logs_url"] = f"file://{lake.tmp / 'no-such-list.json'}"
    doc["custom_logs"] = [{"name": "configured rfc6962", "url": rfc}]
    config.write_text(yaml.safe_dump(doc))
    summary = lake.tmp / "summary.json"
    result = lake.run("backfill", "--summary-json", str(summary), config=config)
    assert result.returncode == 1
    expect_complete(lake, lake.main, rfc, 0, SIZE - 1)
    assert lake.rows(lake.main, rfc)[70]["source_name"] == "configured rfc6962"
    unfetched = log_entry(summary_of(summary), static)["unfetched"]
    assert [(u["start"], u["end"]) for u in unfetched] == [(80, 82)]
    assert "log list is unavailable" in unfetched[0]["reason"]
    gaps = lake.run("gaps", config=config)
    assert f"not fetchable: {static}" in gaps.stdout


def test_unwritable_target_fails_without_hanging(lake: Lake) -> None:
    lake.punch(lake.log.rfc6962.url, [*range(10, 1010)])
    lake.ceilings(rfc6962=SIZE)
    blocker = lake.tmp / "a-file"
    blocker.write_text("not a directory")
    summary = lake.tmp / "summary.json"
    staging = blocker / "staging"
    # Writes wait once 100 rows are buffered; one fetcher holds at most 3 chunks of 256 more.
    config = lake.config(delta_sink={"batch_size": 50}, backfill={"per_log_workers": 1})
    args = ("--staging-path", str(staging), "--summary-json", str(summary))
    result = lake.run("backfill", *args, config=config)
    assert result.returncode == 1
    assert "the archive cannot be written" in result.stderr
    assert "fetched entries not written" in result.stderr
    doc = summary_of(summary)
    # Fetching stopped once the buffer was full and writes kept failing; the rest is listed.
    assert doc["records_written"] == 0 and doc["entries_unwritten"] == doc["entries_fetched"]
    assert doc["entries_fetched"] <= 100 + 3 * 256 and doc["entries_unfetched"] > 0
    assert doc["entries_fetched"] + doc["entries_unfetched"] == 1000
    assert "a-file" in doc["write_error"]
    assert (
        "archive cannot be written"
        in log_entry(doc, lake.log.rfc6962.url)["unfetched"][0]["reason"]
    )


# --- gaps and the terminal ------------------------------------------------------------------------


def test_gaps_prints_the_plan_and_fetches_nothing(lake: Lake) -> None:
    rfc, static = lake.log.rfc6962.url, lake.log.static.url
    lake.punch(rfc, [*range(10, 20), 500])
    lake.punch(static, [*range(255, 260)])
    lake.ceilings(rfc6962=SIZE, static=SIZE)
    result = lake.run("gaps")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Gap plan (catch-up")
    (rfc_row,) = [x for x in lines if x.startswith(f"{lake.log.rfc6962.description} ({rfc})")]
    assert " 11 " in rfc_row and "10-19, 500" in rfc_row
    (static_row,) = [x for x in lines if x.startswith(lake.log.static.description)]
    assert " 5 " in static_row and "255-259" in static_row
    assert "total: 16 missing entries in 3 ranges" in result.stdout
    assert lake.log.requests(*ENTRY_READS) == 0
    assert len(lake.keys(lake.main)) == 2 * SIZE - 16


def test_delta_backfill_ac6_1_live_progress_display_on_a_terminal(lake: Lake) -> None:
    lake.punch(lake.log.rfc6962.url, [*range(100, 400)])
    lake.ceilings(rfc6962=SIZE)
    lake.log.faults("slow:delay=0.3,endpoint=get-entries")
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [CERTLAKE, "backfill", "--config", str(lake.config())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=secondary,
        cwd=lake.tmp,
        env={**os.environ, "COLUMNS": "160", "TERM": "xterm"},
    )
    os.close(secondary)
    screen = b""
    while True:
        ready, _, _ = select.select([primary], [], [], 60)
        assert ready, "no output on the terminal"
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the process closed its end
            break
        if not chunk:
            break
        screen += chunk
    os.close(primary)
    assert proc.wait(timeout=30) == 0
    text = screen.decode(errors="replace")
    assert lake.log.rfc6962.description in text
    assert "300/300" in text and "ranges left" in text and "/s" in text
    assert "backfill finished" in text  # log lines still reach the terminal

"""`certlake merge` as a real process: a real SIGINT in the middle of a merge (AC4.4, HV3), a
real SIGTERM while main's store does not answer, a delta-rs panic kept off stderr, and memory
that does not grow with the staging table."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from deltalake import write_deltalake

from certlake.lake.rows import messages_to_batch
from certlake.lake.schema import PARTITION_BY
from lake.conftest import LOG_A, LOG_B, make_message
from lake.helpers import table_keys
from support.procs import CERTLAKE
from support.s3 import S3Server

# Runs a command and prints the peak RSS (KiB) of its process tree's largest member. The launcher
# is small, so the child's high-water mark, which Linux carries over from its parent, is its own.
PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def write_staging(path: Path, count: int, per_file: int) -> None:
    """`count` rows over two logs, `per_file` rows a commit, as a backfill writes them."""
    for start in range(0, count, per_file):
        batch = [
            make_message(i // 2, LOG_A if i % 2 else LOG_B, 1_760_000_000.0 + i)
            for i in range(start, min(start + per_file, count))
        ]
        write_deltalake(
            str(path), messages_to_batch(batch), mode="append", partition_by=list(PARTITION_BY)
        )


def config_file(tmp_path: Path, main: Path, batch_size: int) -> Path:
    """Local tables, with S3 options configured as well (as they are when some other table is
    on S3): they must not get in the way of local tables."""
    path = tmp_path / f"config-{batch_size}.yaml"
    s3 = {"endpoint": "http://127.0.0.1:9", "region": "us-east-1", "allow_http": True}
    doc = {
        "delta_sink": {"table_path": str(main), "batch_size": batch_size},
        "storage": {"s3": s3},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_error_ac4_4_hv3_sigint_mid_merge_leaves_staging_intact_and_rerun_completes(
    tmp_path: Path,
) -> None:
    main, staging = tmp_path / "main", tmp_path / "staging"
    write_deltalake(
        str(main),
        messages_to_batch([make_message(i, LOG_A) for i in range(0, 3000, 3)]),
        partition_by=list(PARTITION_BY),
    )
    write_staging(staging, 20_000, 2_000)  # indices 0..9999 of two logs
    before = snapshot(staging)
    cfg = config_file(tmp_path, main, batch_size=400)
    err = tmp_path / "first.log"
    with err.open("wb") as sink:
        proc = subprocess.Popen(
            [CERTLAKE, "merge", "--config", str(cfg), "--staging-path", str(staging)],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            cwd=tmp_path,
        )
        deadline = time.monotonic() + 60
        while err.read_bytes().count(b"merge batch committed") < 2:
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    log = err.read_text()
    assert code == 1, log
    assert "merge interrupted" in log and "merge complete" not in log
    assert snapshot(staging) == before
    keys = table_keys(str(main))
    assert len(keys) == len(set(keys))
    committed = len(keys) - 1000
    assert 0 < committed < 20_000 - 1000 and committed % 400 == 0  # whole batches, not all

    summary = tmp_path / "summary.json"
    merge = [CERTLAKE, "merge", "--config", str(cfg), "--staging-path", str(staging)]
    rerun = subprocess.run(
        [*merge, "--summary-json", str(summary)],
        capture_output=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert b"merge complete: total_inserted=" in rerun.stdout
    keys = table_keys(str(main))
    expected = {(LOG_A, i) for i in range(10_000)} | {(LOG_B, i) for i in range(10_000)}
    assert len(keys) == len(expected) and set(keys) == expected
    doc = json.loads(summary.read_text())
    assert doc["total_inserted"] == 20_000 - 1000 - committed
    assert doc["skipped_in_main"] == 1000 + committed
    assert doc["total_staging_rows"] == 20_000
    assert not staging.exists()


# `stopping.STOP_GRACE` (5 s) after the signal, plus the interpreter's own exit.
STOPS_WITHIN = 8.0


def test_sigterm_while_main_does_not_answer_stops_within_seconds_and_a_rerun_completes(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    """Main on S3, whose server stops answering (SIGSTOP) mid-merge: the commit in flight hangs
    in delta-rs, which object_store retries for minutes; the merge leaves it behind."""
    options = s3_server.options()
    main = f"s3://{s3_bucket}/main"
    write_deltalake(
        main,
        messages_to_batch([make_message(i, LOG_A) for i in range(0, 3000, 3)]),
        partition_by=list(PARTITION_BY),
        storage_options=options,
    )
    staging = tmp_path / "staging"
    write_staging(staging, 20_000, 2_000)
    before = snapshot(staging)
    s3 = {
        "endpoint": options["AWS_ENDPOINT_URL"],
        "region": options["AWS_REGION"],
        "access_key_id": options["AWS_ACCESS_KEY_ID"],
        "secret_access_key": options["AWS_SECRET_ACCESS_KEY"],
        "allow_http": True,
    }
    cfg = tmp_path / "config.yaml"
    doc = {"delta_sink": {"table_path": main, "batch_size": 400}, "storage": {"s3": s3}}
    cfg.write_text(yaml.safe_dump(doc))
    merge = [CERTLAKE, "merge", "--config", str(cfg), "--staging-path", str(staging)]
    err = tmp_path / "first.log"
    summary = tmp_path / "summary.json"
    with err.open("wb") as sink:
        proc = subprocess.Popen(
            [*merge, "--summary-json", str(summary)],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            cwd=tmp_path,
        )
        try:
            deadline = time.monotonic() + 60
            while err.read_bytes().count(b"merge batch committed") < 2:
                assert proc.poll() is None, err.read_text()
                assert time.monotonic() < deadline, err.read_text()
                time.sleep(0.01)
            s3_server.pause()
            time.sleep(1)  # the next batch's commit is on its way, and stuck
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)
            took = time.monotonic() - signalled
        finally:
            s3_server.resume()
            proc.kill()
            proc.wait()
    log = err.read_text()
    print(f"stopped {took:.2f} s after SIGTERM")
    assert code == 1 and took < STOPS_WITHIN, log
    assert "merge interrupted; a delta-rs call was still running" in log
    assert "merge complete" not in log
    assert json.loads(summary.read_text())["outcome"] == "interrupted"
    assert snapshot(staging) == before

    rerun = subprocess.run(merge, capture_output=True, cwd=tmp_path, timeout=120)
    assert rerun.returncode == 0, rerun.stderr.decode()[-3000:]
    keys = table_keys(main, options)
    expected = {(LOG_A, i) for i in range(10_000)} | {(LOG_B, i) for i in range(10_000)}
    assert len(keys) == len(expected) and set(keys) == expected
    assert not staging.exists()


def test_a_rust_panic_is_one_log_line_and_the_merge_fails_with_its_error(tmp_path: Path) -> None:
    """Main cannot take staging's rows: a file stands where their partition directory would
    be (a read-only table does the same for a user other than root). delta-rs panics in a
    worker thread ("Already shut down") and its call raises the I/O error."""
    main, staging = tmp_path / "main", tmp_path / "staging"
    write_deltalake(
        str(main),
        messages_to_batch([make_message(i, LOG_A, 1_700_000_000.0) for i in range(5)]),
        partition_by=list(PARTITION_BY),
    )
    write_staging(staging, 40, 40)  # seen 2025-10-09
    (main / "seen_date=2025-10-09").write_text("in the way")
    before = snapshot(staging)
    cfg = config_file(tmp_path, main, batch_size=400)
    result = subprocess.run(
        [CERTLAKE, "merge", "--config", str(cfg), "--staging-path", str(staging)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "RUST_BACKTRACE": "1"},
    )
    assert result.returncode == 1, result.stderr
    for rust in ("panicked at", "stack backtrace", "RUST_BACKTRACE", "Already shut down\n"):
        assert rust not in result.stderr, result.stderr
    [panic] = [x for x in result.stderr.splitlines() if "delta-rs panicked" in x]
    assert "panic=" in panic and "rust_thread=tokio-rt-worker" in panic
    [failed] = [x for x in result.stderr.splitlines() if "merge failed" in x]
    assert "Not a directory" in failed and "intact" in failed
    assert snapshot(staging) == before


def peak_rss_of_merge(tmp_path: Path, rows: int) -> int:
    main, staging = tmp_path / f"main-{rows}", tmp_path / f"staging-{rows}"
    write_staging(staging, rows, 5_000)
    cfg = config_file(tmp_path, main, batch_size=1_000)
    merge = [CERTLAKE, "merge", "--config", str(cfg), "--staging-path", str(staging)]
    run = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *merge],
        capture_output=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr.decode()
    assert len(table_keys(str(main))) == rows
    return int(run.stderr.decode().strip().splitlines()[-1]) * 1024


@pytest.mark.timeout(120)
def test_merge_memory_is_bounded_by_a_batch_not_by_staging(tmp_path: Path) -> None:
    """Three times the staging rows (72,000 rows, ~390 MB as Arrow, 72 commits of 1,000 rows)
    costs little more peak memory than 24,000 rows: far less than the extra rows' size (what
    reading staging whole, or holding the inserted rows, would add). Both runs are past the
    first commits, where the allocators' pools fill."""
    small = peak_rss_of_merge(tmp_path, 24_000)
    large = peak_rss_of_merge(tmp_path, 72_000)
    row_bytes = messages_to_batch([make_message(i) for i in range(120)]).nbytes / 120
    extra_data = 48_000 * row_bytes
    print(
        f"peak RSS {small / 2**20:.0f} MB vs {large / 2**20:.0f} MB; "
        f"extra staging {extra_data / 2**20:.0f} MB"
    )
    assert large - small < extra_data / 2

"""`certlake backfill --dask`: the real command against a real Dask scheduler and two workers
(separate processes, each on its own loopback address), the test log limiting each client
address per operator, real Delta tables; then `certlake merge`. Every index exactly once."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deltalake import DeltaTable

from certlake.backfill.cluster import fetch_on_cluster
from certlake.backfill.run import JobError
from certlake.backfill.summary import Summary
from certlake.cli.exits import EXIT_USAGE
from certlake.config import parse_config
from support.dask_cluster import DaskCluster
from support.procs import CERTLAKE, Procs

pytestmark = pytest.mark.cluster

ENTRIES = 1500  # per log
LOGS = 2
HOSTS = ["127.0.0.2", "127.0.0.3"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[DaskCluster]:
    c = DaskCluster(tmp_path)
    try:
        yield c.start(HOSTS)
    finally:
        c.close()


def _testlog(procs: Procs, rate_limit: float = 40) -> str:
    log = procs.testlog(
        "--initial-size", str(ENTRIES), "--logs", str(LOGS), "--operators", "1",
        "--static-share", "0.5", "--max-entries", "32", "--rate-limit", str(rate_limit),
        "--sequence-interval", "0", "--seed", "17",
    )  # fmt: skip
    return f"{log.url}/log_list.json"


def _config(tmp_path: Path, list_url: str, **backfill: Any) -> Path:
    cfg = {
        "ct_logs_url": list_url,
        "log_level": "info",
        "ct_log": {
            "state_file": None,
            "retry_initial_delay_ms": 50,
            "default_operator_rate_limit_ms": 0,
            "request_timeout_secs": 10,
        },
        "delta_sink": {"table_path": str(tmp_path / "main"), "batch_size": 200},
        "backfill": {"range_split_size": 250, "retry_max_delay_ms": 1000, **backfill},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _keys(table: Path) -> Counter[tuple[str, int]]:
    t = DeltaTable(str(table)).to_pyarrow_table(columns=["source_url", "cert_index"])
    return Counter(zip(t["source_url"].to_pylist(), t["cert_index"].to_pylist(), strict=True))


def _assert_once(table: Path) -> None:
    counts = _keys(table)
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1][:10]
    per_log = Counter(url for url, _ in counts)
    assert len(per_log) == LOGS and set(per_log.values()) == {ENTRIES}, per_log
    for url in per_log:
        assert {i for u, i in counts if u == url} == set(range(ENTRIES))


def _backfill(config: Path, cluster: DaskCluster, staging: Path, summary: Path) -> list[str]:
    return [
        CERTLAKE, "backfill", "--config", str(config), "--to", str(ENTRIES), "--dask",
        cluster.address, "--staging-path", str(staging), "--summary-json", str(summary),
    ]  # fmt: skip


def _merge(config: Path, staging: Path) -> None:
    merged = subprocess.run(
        [CERTLAKE, "merge", "--config", str(config), "--staging-path", str(staging)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert merged.returncode == 0, merged.stderr[-3000:]


def test_two_workers_fill_staging_and_merge_gives_every_index_once(
    procs: Procs, cluster: DaskCluster, tmp_path: Path
) -> None:
    config = _config(tmp_path, _testlog(procs))
    staging, summary = tmp_path / "staging", tmp_path / "summary.json"
    done = subprocess.run(
        _backfill(config, cluster, staging, summary), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(summary.read_text())
    assert doc["records_written"] == LOGS * ENTRIES and doc["entries_unfetched"] == 0
    # Both workers took items, and what they wrote adds up to the total.
    workers = doc["workers"]
    assert {address.rsplit(":", 1)[0] for address in workers} == {f"tcp://{h}" for h in HOSTS}
    assert all(w["items"] > 0 for w in workers.values())
    assert sum(w["records_written"] for w in workers.values()) == LOGS * ENTRIES
    # Each range was verified against the log's head, on the worker that fetched it.
    assert all(entry["verified"] == ENTRIES for entry in doc["logs"])
    _assert_once(staging)
    _merge(config, staging)
    _assert_once(tmp_path / "main")


def test_a_worker_killed_mid_item_loses_nothing_and_writes_nothing_twice(
    procs: Procs, cluster: DaskCluster, tmp_path: Path
) -> None:
    # Slow enough (10 requests/s per address, 32 entries each) that the kill lands mid-job.
    config = _config(tmp_path, _testlog(procs, rate_limit=10), range_split_size=500)
    staging, summary = tmp_path / "staging", tmp_path / "summary.json"
    job = subprocess.Popen(
        _backfill(config, cluster, staging, summary),
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "backfill.log").open("wb"),
    )  # fmt: skip
    try:
        _wait_for_rows(staging, at_least=300, job=job)
        cluster.kill_worker(HOSTS[1])
        assert job.wait(timeout=300) == 0, (tmp_path / "backfill.log").read_text()[-3000:]
    finally:
        if job.poll() is None:
            job.kill()
    doc = json.loads(summary.read_text())
    assert doc["entries_unfetched"] == 0 and doc["exit_code"] == 0
    # The killed worker's committed rows were found, not fetched again; its items finished on
    # the other worker.
    resumed = sum(entry["resumed"] for entry in doc["logs"])
    assert resumed + doc["records_written"] == LOGS * ENTRIES
    _assert_once(staging)  # not even staging holds a row twice
    _merge(config, staging)
    _assert_once(tmp_path / "main")


def test_sigint_stops_the_cluster_job_and_a_rerun_completes_it(
    procs: Procs, cluster: DaskCluster, tmp_path: Path
) -> None:
    config = _config(tmp_path, _testlog(procs, rate_limit=10))
    staging, summary = tmp_path / "staging", tmp_path / "summary.json"
    job = subprocess.Popen(
        _backfill(config, cluster, staging, summary),
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "backfill.log").open("wb"),
    )  # fmt: skip
    _wait_for_rows(staging, at_least=200, job=job)
    job.send_signal(signal.SIGINT)
    assert job.wait(timeout=60) == 1
    doc = json.loads(summary.read_text())
    assert doc["interrupted"] and doc["entries_unfetched"] > 0
    again = subprocess.run(
        _backfill(config, cluster, staging, summary), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    _assert_once(staging)


def _wait_for_rows(table: Path, at_least: int, job: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert job.poll() is None, "the backfill ended before the moment the test waits for"
        if (table / "_delta_log").exists():
            try:
                if sum(_keys(table).values()) >= at_least:
                    return
            except Exception:  # a version being written; look again
                pass
        time.sleep(0.1)
    raise AssertionError(f"fewer than {at_least} rows in {table} after 120 s")


def test_a_store_without_safe_concurrent_commits_is_refused(tmp_path: Path) -> None:
    config = parse_config({"storage": {"s3": {"allow_unsafe_rename": True}}}, {})
    summary = Summary("historical", 0, "s3://bucket/staging", staging=True)
    with pytest.raises(JobError) as caught:
        asyncio.run(
            fetch_on_cluster(config, summary, [], {}, asyncio.Event(), None, "tcp://x:1", None)
        )
    assert caught.value.code == EXIT_USAGE and "allow_unsafe_rename" in str(caught.value)


def test_without_dask_installed_only_dask_is_refused(procs: Procs, tmp_path: Path) -> None:
    """A machine without the cluster extra: `--dask` says what to install (exit 2); a plain
    backfill runs as before."""
    config = _config(tmp_path, _testlog(procs, rate_limit=1000))
    # `distributed` made unimportable, as on a machine where it is not installed.
    blocked = "import sys; sys.modules['distributed'] = None; from certlake.cli.main import main; "
    args = ["backfill", "--config", str(config), "--to", "100"]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        code = blocked + f"sys.argv = ['certlake', *{[*args, *extra]!r}]; main()"
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )

    refused = run("--dask", "tcp://127.0.0.1:1", "--staging-path", str(tmp_path / "s"))
    assert refused.returncode == EXIT_USAGE, refused.stderr[-2000:]
    assert "pip install 'certlake[cluster]'" in refused.stderr
    plain = run()
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert sum(_keys(tmp_path / "main").values()) == LOGS * 100


def test_progress_of_running_tasks_reaches_the_coordinator(
    procs: Procs, cluster: DaskCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One task holds the whole job (one range per log): every progress line before its end
    can only come from the worker's reports while it runs."""
    from certlake.cli.backfill import run_backfill
    from certlake.config import load_config

    config = load_config(_config(tmp_path, _testlog(procs, rate_limit=10), range_split_size=10**6))
    caplog.set_level(logging.INFO, logger="certlake.backfill.progress")
    code = asyncio.run(
        run_backfill(
            config.config,
            to=ENTRIES,
            staging_path=str(tmp_path / "staging"),
            progress_interval=0.5,
            cluster=cluster.address,
        )
    )
    assert code == 0
    lines = [r.__dict__ for r in caplog.records if r.getMessage() == "backfill progress"]
    partial = [line["fetched"] for line in lines if 0 < line["fetched"] < ENTRIES]
    assert partial, lines
    _assert_once(tmp_path / "staging")

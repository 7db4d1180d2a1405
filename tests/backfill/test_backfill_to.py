"""`certlake backfill --to N|head`: an explicit ceiling, so that a log can be archived from 0
without a state file; capped at the live sink's cursor in the main table. And what the summary
and the progress say of a log that keeps failing. Real `certlake backfill` processes against the
built-in test log."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from certlake.backfill.summary import retry_status
from certlake.ct.errors import FetchError
from certlake.testlog.faults import FaultKind
from support.procs import CERTLAKE

from .conftest import SIZE, Lake


def _fresh(lake: Lake, **ct: Any) -> tuple[Path, Path]:
    """A config writing to an empty table, without a state file."""
    table = lake.tmp / "fresh"
    return table, lake.config(
        ct_log={"state_file": None, "retry_initial_delay_ms": 10, **ct},
        delta_sink={"table_path": str(table), "batch_size": 400},
    )


def _indices(lake: Lake, table: Path, url: str) -> list[int]:
    counts = lake.keys(table)
    assert all(n == 1 for (u, _), n in counts.items() if u == url), "an index written twice"
    return sorted(i for (u, i) in counts if u == url)


def test_to_head_archives_a_log_from_zero_without_a_state_file(lake: Lake) -> None:
    table, config = _fresh(lake)
    summary = lake.tmp / "summary.json"
    result = lake.run(
        "backfill", "--to", "head", "--logs", "rfc6962", "--summary-json", str(summary),
        config=config,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert _indices(lake, table, lake.log.rfc6962.url) == list(range(SIZE))
    assert _indices(lake, table, lake.log.static.url) == []  # not selected
    doc = json.loads(summary.read_text())
    assert doc["records_written"] == SIZE and doc["mode"] == "historical"


def test_to_n_is_an_exclusive_ceiling_for_every_selected_log(lake: Lake) -> None:
    table, config = _fresh(lake)
    result = lake.run("backfill", "--to", "300", config=config)
    assert result.returncode == 0, result.stderr[-2000:]
    for url in (lake.log.rfc6962.url, lake.log.static.url):
        assert _indices(lake, table, url) == list(range(300))
    gaps = lake.run("gaps", "--to", "500", config=config)
    assert gaps.returncode == 0, gaps.stderr
    assert "300-499" in gaps.stdout  # what is left below the new ceiling


def test_to_never_passes_the_live_cursor_of_the_main_table(lake: Lake) -> None:
    """The main table was written by the live sink up to SIZE: above it the live sink writes,
    so `--to` far beyond it fills only what is missing below."""
    rfc = lake.log.rfc6962.url
    lake.punch(rfc, [*range(10, 20)])
    config = lake.config(ct_log={"state_file": None, "retry_initial_delay_ms": 10})
    result = lake.run("backfill", "--to", str(SIZE * 5), "--logs", "rfc6962", config=config)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ceiling capped at the live sink's cursor" in result.stderr
    assert _indices(lake, lake.main, rfc) == list(range(SIZE))


def test_a_range_interrupted_while_retrying_says_what_the_log_answered(lake: Lake) -> None:
    static = lake.log.static.url
    lake.punch(static, [*range(600, 700)])
    lake.ceilings(rfc6962=SIZE, static=SIZE)
    lake.log.faults("503:1,log=static,retry_after=30")  # every read: 503, come back in 30 s
    summary = lake.tmp / "summary.json"
    stderr = lake.tmp / "stderr.log"
    config = lake.config()
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [CERTLAKE, "backfill", "--config", str(config), "--summary-json", str(summary)],
            stderr=err,
            cwd=lake.tmp,
        )
        deadline = time.monotonic() + 60
        while lake.log.fired(FaultKind.UNAVAILABLE) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 1, stderr.read_text()[-3000:]
    doc = json.loads(summary.read_text())
    (entry,) = [e for e in doc["logs"] if e["url"] == static]
    reasons = {u["reason"] for u in entry["unfetched"]}
    assert reasons and all("503" in r and "interrupted" in r for r in reasons), reasons


def test_progress_status_says_what_the_log_answers() -> None:
    assert retry_status(FetchError("HTTP 429 from x", 429, 7.0), 3) == (
        "waiting 7 s on a 429 (3 attempts left)"
    )
    assert retry_status(FetchError("HTTP 503 from x", 503), 2) == (
        "retrying after a 503 (2 attempts left)"
    )
    assert retry_status(FetchError("timeout reading x", timed_out=True), 1).startswith(
        "retrying after timeout reading x"
    )
    assert retry_status(FetchError("HTTP 503 from x", 503), 0) == "gave up: HTTP 503 from x"

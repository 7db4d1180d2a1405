"""`certlake backfill` and `certlake gaps` as real subprocesses against the built-in test log: a
`--logs` filter that selects nothing, and the end-of-job summary on a terminal (a pty) and off
one."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from certlake.testlog.background import BackgroundTestLog
from certlake.testlog.faults import Fault
from support.procs import CERTLAKE

SIZE = 300  # entries per log
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def bg() -> Iterator[BackgroundTestLog]:
    with BackgroundTestLog(initial_size=SIZE, pool_size=32, seed=4) as bg:
        yield bg


def _config(tmp_path: Path, bg: BackgroundTestLog, **sections: object) -> Path:
    cfg = tmp_path / "config.yaml"
    doc = {
        "ct_logs_url": bg.server.log_list_url,
        "ct_log": {"state_file": str(tmp_path / "state.json"), "retry_initial_delay_ms": 10},
        "delta_sink": {"table_path": str(tmp_path / "table")},
        **sections,
    }
    cfg.write_bytes(orjson.dumps(doc))  # JSON is YAML
    return cfg


def _state(tmp_path: Path, ceilings: dict[str, int]) -> None:
    """A state file (the Rust tool's format) with these logs' next indices."""
    logs = {
        url: {"current_index": n, "tree_size": n, "last_success": 1} for url, n in ceilings.items()
    }
    (tmp_path / "state.json").write_bytes(orjson.dumps({"version": 1, "logs": logs}))


def _run(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CERTLAKE, *args, "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cfg.parent,
        stdin=subprocess.DEVNULL,
    )


def _on_a_terminal(cfg: Path, *args: str) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (stdout a pipe): exit code, what the terminal
    showed (escape sequences removed, lines ending in \\n), stdout."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [CERTLAKE, *args, "--config", str(cfg)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        cwd=cfg.parent,
    )
    os.close(slave)
    shown = bytearray()
    deadline = time.monotonic() + 120
    try:
        # Read as it comes: a full pty buffer would block the live display, and the process.
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer of the terminal has gone
                    break
                if not chunk:
                    break
                shown += chunk
            elif proc.poll() is not None:
                break
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = _ANSI.sub(b"", bytes(shown)).replace(b"\r\n", b"\n").decode()
    return code, text, out


def test_a_logs_filter_that_matches_nothing_is_a_usage_error(
    bg: BackgroundTestLog, tmp_path: Path
) -> None:
    _state(tmp_path, {bg.server.rfc6962_url: SIZE})
    cfg = _config(tmp_path, bg)
    for argv in (
        ["backfill", "--logs", "nothingmatches"],
        ["backfill", "--logs", "nothingmatches", "--to", "head"],
        ["gaps", "--logs", "nothingmatches"],
        ["--backfill", "--logs", "nothingmatches"],
    ):
        result = _run(cfg, *argv)
        assert result.returncode == 2, (argv, result.stderr[-2000:])
        assert "--logs 'nothingmatches' matches no log" in result.stderr, argv
        assert "Traceback" not in result.stderr
    # The same filter naming a log that is there selects it (catch-up: the table is empty, so
    # nothing is missing, and that is a success).
    for argv in (["backfill", "--logs", "rfc6962"], ["gaps", "--logs", "rfc6962"]):
        result = _run(cfg, *argv)
        assert result.returncode == 0, (argv, result.stderr[-2000:])
        assert "matches no log" not in result.stderr


def _row(text: str, label_start: str) -> list[str]:
    (line,) = [line for line in text.splitlines() if line.startswith(label_start)]
    return re.split(r" {2,}", line.strip())


def test_backfill_summary_is_a_table_on_a_terminal_and_log_lines_otherwise(
    bg: BackgroundTestLog, tmp_path: Path
) -> None:
    rfc = bg.server.rfc6962_url
    gone = "https://ct.invalid/gone"  # in the state file, unknown to the list and the config
    _state(tmp_path, {rfc: SIZE, gone: 50})
    bg.call(lambda s: s.faults.replace([Fault.from_spec("corrupt:at=7,mode=der,log=rfc6962")]))
    try:
        code, shown, out = _on_a_terminal(_config(tmp_path, bg), "backfill", "--from", "0")
        piped = _run(
            _config(tmp_path, bg, delta_sink={"table_path": str(tmp_path / "other")}),
            "backfill", "--from", "0",
        )  # fmt: skip
    finally:
        bg.call(lambda s: s.faults.replace([]))
    # The unknown log's range was left, and the garbled entry (not the bytes the log's tree
    # holds) kept its range from being verified.
    assert code == 1, shown[-3000:]
    assert out == ""
    summary = shown[shown.index("Backfill summary") :]
    assert summary.startswith(f"Backfill summary (historical from 0, into {tmp_path / 'table'})")
    header = summary.splitlines()[1].split()
    assert header == ["LOG", "MISSING", "FETCHED", "WRITTEN", "UNPARSEABLE", "UNFETCHED", "LEFT"]
    name = "certlake test log rfc6962 (rfc6962)"  # the log list's description, then the URL
    assert _row(summary, name) == [f"{name} ({rfc})", "300", "300", "299", "1", "0", "-"]
    assert _row(summary, gone) == [
        gone, "50", "0", "0", "0", "50", "0-49: cannot be read: neither the log list nor the "
        "configuration names it (add it to custom_logs or static_logs)",
    ]  # fmt: skip
    assert _row(summary, "total") == ["total", "350", "300", "299", "1", "50"]
    assert re.search(
        rf"^skipped: certlake test log static \(tiled\) \({re.escape(bg.server.static_url)}\): "
        "not in the state file$",
        summary,
        re.M,
    )
    assert re.search(
        rf"^verified {re.escape(name)} \({re.escape(rfc)}\): 0 entries against a fresh head "
        rf"from the log \({SIZE}\)$",
        summary,
        re.M,
    ), summary
    assert re.search(r"^  NOT verified \[0, 299\]: entries \[0, 300\) as downloaded", summary, re.M)
    assert re.search(
        r"^0 logs complete, 2 with entries left, \d+\.\d s; exit code 1$", summary, re.M
    )
    # The log lines are still written (before the table, which comes last).
    assert shown.index("backfill finished exit_code=1") < shown.index("Backfill summary")
    # Off a terminal: the key=value lines, and no table.
    assert piped.returncode == 1
    assert "Backfill summary" not in piped.stderr
    assert re.search(r"backfill finished exit_code=1 records_written=299 ", piped.stderr)
    assert re.search(rf"entries not fetched log={re.escape(gone)} entries=50 ", piped.stderr)

"""What the end-to-end benchmarks share: waiting for a condition, and starting the built-in test
log as its own `certlake testlog` process (run by the benchmarks, not by hand)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson
import yaml

CERTLAKE = str(Path(sys.executable).with_name("certlake"))

T = TypeVar("T")


def wait_for(pred: Callable[[], T], what: str, timeout: float = 90) -> T:
    """`pred()` once it is truthy; RuntimeError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def start_testlog(ready: Path, args: Sequence[str]) -> tuple[subprocess.Popen[bytes], str]:
    """`certlake testlog --port 0 ARGS`, and its base URL once it listens (from `ready`)."""
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [CERTLAKE, "testlog", "--port", "0", "--ready-file", str(ready), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def listening() -> str:
        if proc.poll() is not None:
            raise SystemExit("certlake testlog exited")
        return ready.exists() and ready.read_text().strip()

    return proc, wait_for(listening, "the test log")


def backfill_config(
    work: Path, base: str, ceilings: dict[str, int], table: Path, **sections: dict[str, Any]
) -> Path:
    """A state file giving each log URL in `ceilings` its ceiling, and a config reading the test
    log's list into `table`; `sections` add keys (to `ct_log` too). Returns the config's path."""
    state = work / "state.json"
    logs = {u: {"current_index": c, "tree_size": c, "last_success": 1} for u, c in ceilings.items()}
    state.write_bytes(orjson.dumps({"version": 1, "logs": logs}))
    doc: dict[str, Any] = {
        "ct_logs_url": f"{base}/log_list.json",
        "ct_log": {"state_file": str(state), **sections.pop("ct_log", {})},
        "delta_sink": {"table_path": str(table), **sections.pop("delta_sink", {})},
        **sections,
    }
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(doc))
    return config

"""`lake/panics.py`: the panic reports of delta-rs's worker threads become log lines, and nothing
else written to stderr is lost or changed. A real panic of deltalake 1.6.6, in a real process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from certlake.lake.panics import Panic, PanicFilter

# Writes to file descriptor 2 around two real panics of a delta-rs worker thread (a file stands
# where the partition directory of the rows would be), the last line without its newline.
CHILD = r"""
import os, sys
import pyarrow as pa
from deltalake import write_deltalake
from certlake.lake import panics
from certlake.logsetup import setup_logging

panics.contain()
setup_logging("info")
table = sys.argv[1]
rows = pa.table({"day": ["2025-10-09"], "n": [1]})
write_deltalake(table, pa.table({"day": ["2025-10-08"], "n": [0]}), partition_by=["day"])
open(os.path.join(table, "day=2025-10-09"), "w").close()
os.write(2, b"before\n\nafter a blank line\nstack backtrace:\n   not a frame\n")
for _ in range(2):
    try:
        write_deltalake(table, rows, mode="append", partition_by=["day"])
    except Exception as exc:
        print("raised", type(exc).__name__, flush=True)
print("through sys.stderr", file=sys.stderr)
os.write(2, b"after\nno newline")
"""


@pytest.mark.parametrize("backtrace", [None, "1", "full"])
def test_real_panics_become_log_lines_and_nothing_else_changes(
    tmp_path: os.PathLike[str], backtrace: str | None
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RUST_BACKTRACE"}
    if backtrace is not None:
        env["RUST_BACKTRACE"] = backtrace
    table = os.path.join(tmp_path, "table")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, table], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "raised DeltaError\n" * 2
    lines = result.stderr.split("\n")
    panics = [line for line in lines if "delta-rs panicked in a worker thread" in line]
    assert len(panics) == 2
    assert all('panic="Already shut down"' in p and "buffered.rs:" in p for p in panics)
    # sys.stderr writes to the real stderr itself: its line is not ordered with the others.
    others = [line for line in lines if line not in panics and line != "through sys.stderr"]
    assert "through sys.stderr" in lines
    assert others == [
        "before",
        "",
        "after a blank line",
        "stack backtrace:",
        "   not a frame",
        "after",
        "no newline",
    ]


def feed(lines: list[str]) -> tuple[list[str], list[Panic]]:
    found: list[Panic] = []
    f = PanicFilter(found.append)
    out = [o for line in lines for o in f.feed(line)]
    return out + f.close(), found


def test_filter_takes_both_header_styles_and_holds_back_only_the_report() -> None:
    out, found = feed(
        [
            "log line",
            "",
            "thread 'main' panicked at 'boom', src/main.rs:2:5",
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
            "",
            "",
            "thread 'tokio-rt-worker' panicked at src/a.rs:1:2:",
            "first line of the message",
            "second line of the message",
            "note: a note of another program",
            "thread 'w' (7) panicked at src/b.rs:3:4:",
            "short",
            "stack backtrace:",
            "   0: frame",
            "             at src/b.rs:3:4",
            "log line after",
            "",
        ]
    )
    assert found == [
        Panic("main", "src/main.rs:2:5", "boom"),
        Panic("tokio-rt-worker", "src/a.rs:1:2", "first line of the message"),
        Panic("w", "src/b.rs:3:4", "short"),
    ]
    assert out == [
        "log line",
        "",
        "second line of the message",
        "note: a note of another program",
        "log line after",
        "",
    ]

"""`certlake testlog`: run the test log server until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from certlake.testlog.faults import Fault, FaultSpecError
from certlake.testlog.server import DEFAULT_BATCH_CAP, TestLogServer

EXIT_USAGE = 2


async def run_testlog(
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int = 0,
    initial_size: int = 0,
    rate: float = 0.0,
    batch_cap: int = DEFAULT_BATCH_CAP,
    faults: Sequence[str] = (),
    ready_file: Path | None = None,
) -> int:
    """Serve until a signal arrives; returns the exit code (2 for a bad `--fault`)."""
    try:
        plan = [Fault.from_spec(spec) for spec in faults]
    except FaultSpecError as e:
        print(f"Error: --fault: {e}", file=sys.stderr)
        return EXIT_USAGE
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = TestLogServer(
        host=host,
        port=port,
        seed=seed,
        initial_size=initial_size,
        rate=rate,
        batch_cap=batch_cap,
        faults=plan,
    )
    async with server:
        print(f"certlake test log listening on {server.base_url}", flush=True)
        for name in server.logs:
            print(f"  {name}: {server.log_url(name)}", flush=True)
        print(f"  log list: {server.log_list_url}", flush=True)
        if ready_file is not None:
            # Written whole under another name, then renamed: a watcher never reads half a URL.
            partial = ready_file.with_name(ready_file.name + ".tmp")
            partial.write_text(server.base_url + "\n")
            partial.replace(ready_file)
        await stop.wait()
        print("certlake test log stopping", flush=True)
    return 0

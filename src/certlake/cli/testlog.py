"""`certlake testlog`: run the test log server until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from certlake.cli.exits import EXIT_OK, EXIT_USAGE
from certlake.testlog.ecosystem import (
    DEFAULT_LOGS,
    DEFAULT_STATIC_SHARE,
    LogConfig,
    OperatorConfig,
    ecosystem_logs,
    ecosystem_operators,
)
from certlake.testlog.faults import Fault, FaultSpecError
from certlake.testlog.server import DEFAULT_BATCH_CAP, TestLogServer


class UsageError(ValueError):
    """Flags that do not go together; the message names them."""


def hosted_logs(
    logs: int | None, operators: int | None, static_share: float | None
) -> tuple[tuple[LogConfig, ...], tuple[OperatorConfig, ...]]:
    """The default pair, or `--logs N` spread over `--operators K` (1 unless given)."""
    if logs is None:
        if operators is not None or static_share is not None:
            raise UsageError("--operators and --static-share need --logs")
        return DEFAULT_LOGS, ()
    share = DEFAULT_STATIC_SHARE if static_share is None else static_share
    k = 1 if operators is None else operators
    try:
        return ecosystem_logs(logs, k, share), ecosystem_operators(k)
    except ValueError as e:
        raise UsageError(f"--logs/--operators: {e}") from None


def get_entries_cap(batch_cap: int | None, max_entries: int | None) -> tuple[int, bool]:
    """(cap, align): `--max-entries` caps and aligns like Google's logs, `--batch-cap` only caps."""
    if max_entries is not None:
        if batch_cap is not None:
            raise UsageError("--batch-cap and --max-entries exclude each other")
        return max_entries, True
    return DEFAULT_BATCH_CAP if batch_cap is None else batch_cap, False


async def run_testlog(
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int = 0,
    initial_size: int = 0,
    rate: float = 0.0,
    batch_cap: int | None = None,
    faults: Sequence[str] = (),
    ready_file: Path | None = None,
    total_rate: float = 0.0,
    sequence_interval: float = 1.0,
    max_entries: int | None = None,
    logs: int | None = None,
    operators: int | None = None,
    static_share: float | None = None,
    rate_limit: float | None = None,
) -> int:
    """Serve until a signal arrives; returns the exit code (2 for flags that make no log)."""
    try:
        plan = [Fault.from_spec(spec) for spec in faults]
        hosted, hosts = hosted_logs(logs, operators, static_share)
        cap, align = get_entries_cap(batch_cap, max_entries)
    except FaultSpecError as e:
        print(f"Error: --fault: {e}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as e:
        print(f"Error: {e}", file=sys.stderr)
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
        total_rate=total_rate,
        sequence_interval=sequence_interval,
        batch_cap=cap,
        align=align,
        faults=plan,
        logs=hosted,
        operators=hosts,
        rate_limit=rate_limit,
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
    return EXIT_OK

"""`certlake backfill` and `certlake gaps`: the configuration and the options in, the backfill job
(`backfill/run.py`) run or its plan printed, the exit code out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from certlake.backfill.gaps import format_plan_table
from certlake.backfill.run import (
    Ceiling,
    JobError,
    backfill,
    make_plan,
    read_ceilings,
    report,
    unreadable_reason,
)
from certlake.backfill.summary import Summary
from certlake.cli.exits import EXIT_FAILED, EXIT_OK
from certlake.config import Config
from certlake.ingest.readers import http_client
from certlake.ingest.state import write_atomic
from certlake.lake.table import table_uri

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set `stop`: planning and fetching stop, what was fetched is written
    (for at most `stopping.STOP_GRACE` seconds)."""
    loop = asyncio.get_running_loop()

    def handle(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning(
                "signalled again: still writing what was fetched", extra={"signal": sig.name}
            )
            return
        log.warning(
            "signalled: stopping the fetchers, writing what was fetched",
            extra={"signal": sig.name},
        )
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handle, sig)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def run_backfill(
    config: Config,
    *,
    from_index: int | None = None,
    to: Ceiling | None = None,
    logs: str | None = None,
    staging_path: str | None = None,
    summary_json: Path | None = None,
    progress_interval: float | None = None,
    parse_processes: int | None = None,
    cluster: str | None = None,
) -> int:
    """Fill what the archive is missing; returns the exit code (`backfill/run.py`'s docstring).
    `progress_interval`: seconds between progress lines when stderr is not a terminal;
    `parse_processes`: processes building rows (None: decided by `build_pool`); `cluster`: a
    Dask scheduler's address, to run the work items on its workers."""
    started = time.monotonic()
    staging_uri = None if staging_path is None else table_uri(staging_path)
    if to is not None and from_index is None:
        from_index = 0  # an explicit ceiling is for archiving a log, from its start
    summary = Summary(
        mode="catch-up" if from_index is None else "historical",
        from_index=from_index,
        target=staging_uri or table_uri(config.delta_sink.table_path),
        staging=staging_uri is not None,
    )
    if staging_uri is not None:
        log.info("writing to a staging table", extra={"staging_path": staging_uri})
    stop = asyncio.Event()
    with _stop_on_signals(stop):
        try:
            await backfill(
                config,
                summary,
                stop,
                logs,
                staging_uri,
                progress_interval,
                parse_processes,
                to,
                cluster,
            )
        except JobError as exc:
            summary.error, summary.error_code = str(exc), exc.code
            log.error("backfill cannot run", extra={"error": str(exc)})
    summary.elapsed = time.monotonic() - started
    report(summary)
    if summary_json is not None:
        try:
            await asyncio.to_thread(
                write_atomic,
                summary_json,
                orjson.dumps(summary.to_json(), option=orjson.OPT_INDENT_2),
            )
        except OSError as exc:
            log.error(
                "cannot write the summary", extra={"path": str(summary_json), "error": str(exc)}
            )
            return EXIT_FAILED
    return summary.exit_code


async def run_gaps(
    config: Config,
    *,
    from_index: int | None = None,
    to: Ceiling | None = None,
    logs: str | None = None,
    staging_path: str | None = None,
) -> int:
    """Print what backfill would fetch, per log, as a table; fetch nothing."""
    staging_uri = None if staging_path is None else table_uri(staging_path)
    if to is not None and from_index is None:
        from_index = 0
    try:
        ceilings = read_ceilings(config.ct_log.state_file) if to is None else {}
        if ceilings is None:
            print(
                f"no state file ({config.ct_log.state_file}): no log has a ceiling, "
                "nothing to backfill (give one with --to N or --to head)"
            )
            return EXIT_OK
        async with http_client(config.ct_log) as http:
            plan, discovery, readable = await make_plan(
                config, http, ceilings, from_index, logs, staging_uri, to
            )
    except JobError as exc:
        log.error("gap detection failed", extra={"error": str(exc)})
        return exc.code
    out = [format_plan_table(plan)]
    unreadable = unreadable_reason(discovery)
    out.extend(
        f"not fetchable: {g.url}: {unreadable}\n"
        for g in plan.logs
        if g.missing and g.url not in readable
    )
    sys.stdout.write("".join(out))
    return EXIT_OK

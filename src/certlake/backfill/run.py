"""The backfill job: find exactly what the archive is missing, then fetch it and write it.
`certlake backfill` and `certlake gaps` (`cli/backfill.py`) run it or print its plan.

Pipeline: log discovery (the log list and the configuration, as `serve` does) → ceilings from the
state file or `--to` → gap detection over main (∪ staging) → concurrent fetchers → one writer →
summary → exit code.

Decisions:
- Ceilings come from the state file, unless `--to` gives them: no state file (or
  `ct_log.state_file: null`) and no `--to` means nothing to do, exit 0. The file is only read —
  never moved aside or rewritten (it belongs to `serve`); a damaged one ends the job (exit 1),
  since without it no ceiling is known.
- `--to N` is every watchable log's ceiling (the logs `--logs` selects); `--to head` asks each
  log for its tree size (a log that cannot say is listed as skipped, with why). Writing into the
  main table, a ceiling never passes the live sink's committed cursor of that log: above it the
  live sink writes, and two writers of one index would be a duplicate.
- Logs are those `serve` would watch plus the state file's logs that the list still describes
  in another state (a `readonly` or `retired` log can be read, and its archive may have holes).
  A state file's log that neither the list nor the configuration describes cannot be read (its
  protocol is unknown; backfill never probes a log). Gap detection still runs for it: if it has
  nothing missing it is not mentioned again; otherwise its missing ranges are listed as not
  fetched and the run fails (exit 1) — the archive is incomplete and the operator can add the log
  to `custom_logs` / `static_logs`. This also covers a log list that cannot be fetched: the
  configured logs are still backfilled.
- SIGINT/SIGTERM (`stop`): planning is abandoned at once, fetchers stop and hand over what
  they fetched, and the writer has `stopping.STOP_GRACE` seconds to write it, whatever the
  table's state (failing, or not answering); what is left is listed per log, as ranges.
- Exit codes: 0 every missing range fetched and written; 1 anything left (listed), interrupted,
  a damaged state file, or a table that exists but cannot be read (main or staging: never
  silently taken as empty); 2 a table at the main or staging path that is not an archive table
  (the path names something else: a usage error), or a `--logs` filter that matches no log.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Final

from certlake.backfill.build import BuiltRows
from certlake.backfill.fetcher import INTERRUPTED, Fetchers, LogJob
from certlake.backfill.gaps import GapPlan, SkippedLog, log_matches
from certlake.backfill.presence import plan_gaps
from certlake.backfill.progress import LOG_INTERVAL, is_terminal, live_display, log_lines
from certlake.backfill.summary import LogOutcome, Summary, format_summary, reasons_text
from certlake.backfill.verify import SignedHead, head_for
from certlake.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from certlake.config import Config, s3_storage_options
from certlake.ct.backoff import RetryPolicy
from certlake.ct.client.http import CTHttp
from certlake.ct.client.static import IssuerCache
from certlake.ct.errors import FetchError
from certlake.ct.loglist import LogInfo
from certlake.ct.urls import URLError, normalize_url
from certlake.ingest.discovery import Discovery, discover_logs
from certlake.ingest.packed import build_workers
from certlake.ingest.readers import http_client, make_reader
from certlake.ingest.state import StateDecodeError, parse_state
from certlake.lake.committer import WriterSettings
from certlake.lake.heads import append_heads, verified_heads
from certlake.lake.schema import ArchiveSchemaError
from certlake.lake.table import (
    TableUnreadableError,
    committed_cursors,
    table_storage_options,
    table_uri,
)
from certlake.lake.writer import RowWriter
from certlake.ranges import ranges_text
from certlake.stopping import STOP_GRACE, Stopped, abandon, until_stopped

log = logging.getLogger(__name__)

WATCH_INTERVAL: Final = 0.25  # seconds between looks at the writer's health
POOL_MIN: Final = 20_000  # missing entries from which rows are built in worker processes
MAX_PROCESSES: Final = 4
# Ranges shown per log in the human-readable lines (the JSON summary lists all of them).
SHOWN_RANGES: Final = 20


# `--to`: an index (exclusive) or "head", the log's tree size.
Ceiling = int | str


class JobError(Exception):
    """The job cannot run; `code` is its exit code, the message says why."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# --- inputs ---------------------------------------------------------------------------------------


def read_ceilings(path: str | None) -> dict[str, int] | None:
    """Each log's ceiling (`current_index`, exclusive) from the state file, by normalized URL;
    None when there is no state file."""
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise JobError(f"cannot read the state file {path}: {exc}", EXIT_FAILED) from exc
    try:
        logs = parse_state(data)
    except StateDecodeError as exc:
        raise JobError(
            f"the state file {path} is damaged ({exc}); backfill leaves it as it is", EXIT_FAILED
        ) from exc
    ceilings: dict[str, int] = {}
    for url, state in logs.items():
        try:
            ceilings.setdefault(normalize_url(url), state.current_index)
        except URLError:
            log.warning("state file names a log without a usable URL", extra={"url": url})
    return ceilings


def candidate_logs(
    discovery: Discovery, ceilings: Mapping[str, int]
) -> tuple[dict[str, str | None], dict[str, LogInfo]]:
    """The logs to plan for (URL → name, None when unknown) and those that can be read."""
    readable = {info.url: info for info in discovery.watchable}
    for url in ceilings:
        info = discovery.resolve(url)
        if info is not None:
            readable.setdefault(url, info)
    names: dict[str, str | None] = {url: info.description for url, info in readable.items()}
    for url in ceilings:
        names.setdefault(url, None)
    return names, readable


def unreadable_reason(discovery: Discovery) -> str:
    if discovery.list_error is not None:
        return (
            f"cannot be read: protocol unknown (the log list is unavailable: "
            f"{discovery.list_error}; the configuration does not name the log)"
        )
    return (
        "cannot be read: neither the log list nor the configuration names it "
        "(add it to custom_logs or static_logs)"
    )


def no_match(log_filter: str, known: int) -> str:
    """Why a `--logs` filter is a usage error (exit 2, not 1): it selects nothing, so there is no
    job that could have run and failed — the text is wrong (a typo, a name not in the list), and
    exiting 0 would let a cron job archive nothing, silently, forever."""
    return (
        f"--logs {log_filter!r} matches no log: none of the {known} known logs (the log list's, "
        "the configuration's and the state file's) has it in its URL or name"
    )


async def explicit_ceilings(
    config: Config,
    http: CTHttp,
    discovery: Discovery,
    to: Ceiling,
    log_filter: str | None,
    main_uri: str | None,
) -> tuple[dict[str, int], list[SkippedLog]]:
    """Each selected watchable log's ceiling from `--to`; with `main_uri`, capped at the live
    sink's committed cursor there. Logs whose tree size cannot be read are returned as skipped."""
    logs = [
        info for info in discovery.watchable if log_matches(log_filter, info.url, info.description)
    ]
    skipped: list[SkippedLog] = []
    sizes: dict[str, int] = {}
    if to == "head":
        readers = [make_reader(http, info, config.ct_log) for info in logs]
        answers = await asyncio.gather(*(r.latest_size() for r in readers), return_exceptions=True)
        for info, answer in zip(logs, answers, strict=True):
            if isinstance(answer, FetchError):
                skipped.append(SkippedLog(info.url, info.description, f"no tree size: {answer}"))
            elif isinstance(answer, BaseException):
                raise answer
            else:
                sizes[info.url] = answer
    else:
        assert isinstance(to, int)
        sizes = {info.url: to for info in logs}
    if main_uri is not None and sizes:
        cursors = await asyncio.to_thread(
            committed_cursors, main_uri, list(sizes), s3_storage_options(config.storage.s3)
        )
        for url, cursor in cursors.items():
            if cursor is not None and cursor < sizes[url]:
                log.info(
                    "ceiling capped at the live sink's cursor",
                    extra={"log": url, "asked": sizes[url], "cursor": cursor},
                )
                sizes[url] = cursor
    return sizes, skipped


async def make_plan(
    config: Config,
    http: CTHttp,
    ceilings: Mapping[str, int],
    from_index: int | None,
    log_filter: str | None,
    staging_uri: str | None,
    to: Ceiling | None = None,
) -> tuple[GapPlan, Discovery, dict[str, LogInfo]]:
    """The gap plan, the discovered logs, and those that can be read. With `to`, the ceilings
    are `explicit_ceilings` instead of `ceilings`; logs it could not size are `plan.skipped`."""
    discovery = await discover_logs(config, http)
    main_uri = table_uri(config.delta_sink.table_path)
    unsized: list[SkippedLog] = []
    if to is not None:
        ceilings, unsized = await explicit_ceilings(
            config, http, discovery, to, log_filter, main_uri if staging_uri is None else None
        )
    names, readable = candidate_logs(discovery, ceilings)
    if log_filter is not None and not any(log_matches(log_filter, u, n) for u, n in names.items()):
        raise JobError(no_match(log_filter, len(names)), EXIT_USAGE)
    try:
        plan = await asyncio.to_thread(
            plan_gaps,
            main_uri,
            staging_uri,
            ceilings,
            from_index,
            logs=names,
            log_filter=log_filter,
            storage_options=s3_storage_options(config.storage.s3),
            split_size=config.backfill.range_split_size,
        )
    except TableUnreadableError as exc:
        raise JobError(str(exc), EXIT_FAILED) from exc
    except ArchiveSchemaError as exc:
        raise JobError(str(exc), EXIT_USAGE) from exc
    if unsized:
        plan = dataclasses.replace(plan, skipped=plan.skipped + tuple(unsized))
    return plan, discovery, readable


# --- backfill -------------------------------------------------------------------------------------


def backfill_retry_policy(config: Config) -> RetryPolicy:
    """Backfill's own budget (`backfill.retry_max_attempts`, `backfill.retry_max_delay_ms`): a
    batch job can afford to wait far longer for a log than the live stream."""
    return RetryPolicy(
        max_attempts=config.backfill.retry_max_attempts,
        initial_delay=config.ct_log.retry_initial_delay_ms / 1000,
        max_delay=config.backfill.retry_max_delay_ms / 1000,
    )


def make_writer(config: Config, target: str) -> RowWriter:
    """The one writer. It never compacts (only the live sink does). Memory: at most two
    batches wait. When closing, a failing write is retried for a few back-off periods."""
    ds = config.delta_sink
    policy = backfill_retry_policy(config)
    settings = WriterSettings(
        batch_size=ds.batch_size,
        flush_interval=float(ds.flush_interval_secs),
        compression_level=ds.compression_level,
        retry=policy,
        close_timeout=3 * policy.max_delay,
    )
    return RowWriter(
        target,
        storage_options=s3_storage_options(config.storage.s3),
        settings=settings,
        high_water=min(2 * ds.batch_size, ds.max_buffer_records),
    )


def build_pool(missing: int, parse_processes: int | None) -> ProcessPoolExecutor | None:
    """Processes that build rows, or None to build them on the event loop. By default a job
    big enough to repay their start-up (about a second) gets one per core, up to
    `MAX_PROCESSES`: building rows is most of backfill's CPU time, and one core would cap it."""
    if parse_processes is None:
        cores = os.cpu_count() or 1
        parse_processes = min(cores, MAX_PROCESSES) if cores > 1 and missing >= POOL_MIN else 0
    if parse_processes < 1:
        return None
    return build_workers(parse_processes)


class _CountingWriter:
    """The writer as the fetchers see it, counting each log's rows on their way in: once the
    writer has landed everything it was handed (nothing unwritten), that is what each log had
    written (`LogOutcome.written`)."""

    def __init__(self, writer: RowWriter, outcomes: Iterable[LogOutcome]) -> None:
        self._writer = writer
        self._outcomes = {o.url: o for o in outcomes}

    async def put(self, built: BuiltRows) -> None:
        await self._writer.put(built)
        self._count(built)

    def put_nowait(self, built: BuiltRows) -> None:
        self._writer.put_nowait(built)
        self._count(built)

    def _count(self, built: BuiltRows) -> None:
        for url, rows in Counter(built.rows.column("source_url").to_pylist()).items():
            self._outcomes[url].written += rows


async def _watch_writer(
    writer: RowWriter, stop: asyncio.Event, max_failures: int, summary: Summary
) -> None:
    """Returns when `stop` is set, or when the writer has failed `max_failures` times in a row
    (then fetching stops: with nowhere to write, the fetchers would only wait)."""
    commits, base = writer.stats.commits, writer.stats.errors
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), WATCH_INTERVAL)
        if writer.stats.commits != commits:
            commits, base = writer.stats.commits, writer.stats.errors
        if writer.stats.errors - base >= max_failures:
            summary.write_error = writer.stats.last_error
            log.error(
                "the archive cannot be written; stopping",
                extra={"table": writer.uri, "attempts": max_failures, "error": summary.write_error},
            )
            return


async def fetch_and_write(
    config: Config,
    summary: Summary,
    jobs: list[LogJob],
    stop: asyncio.Event,
    progress_interval: float | None,
    parse_processes: int | None,
    *,
    progress: bool = True,
) -> None:
    """Fetch `jobs` into `summary.target`, filling `summary`. `progress`: show it (a cluster
    worker running one item does not; its coordinator shows them all)."""
    writer = make_writer(config, summary.target)
    try:
        await until_stopped(writer.start(), stop, f"opening the table {summary.target}")
    except Stopped:  # the table does not answer; nothing was fetched yet
        summary.interrupted = True
        for job in jobs:
            for start, end in job.items:
                job.outcome.add_unfetched(start, end, INTERRUPTED)
        return
    except Exception as exc:  # storage errors of any kind: nothing was fetched yet
        await writer.close()
        if isinstance(exc, ArchiveSchemaError):
            raise JobError(str(exc), EXIT_USAGE) from exc
        raise JobError(f"cannot open the table {summary.target}: {exc}", EXIT_FAILED) from exc
    bf = config.backfill
    pool = build_pool(sum(job.outcome.missing for job in jobs), parse_processes)
    outcomes = [job.outcome for job in jobs]
    fetchers = Fetchers(
        jobs,
        _CountingWriter(writer, outcomes),
        workers=bf.workers,
        per_log_workers=bf.per_log_workers,
        policy=backfill_retry_policy(config),
        pool=pool,
    )
    reporter = asyncio.create_task(
        show_progress(outcomes, progress_interval) if progress else asyncio.sleep(0)
    )
    fetching = asyncio.create_task(fetchers.run(), name="backfill fetchers")
    watching = asyncio.create_task(_watch_writer(writer, stop, bf.retry_max_attempts, summary))
    try:
        await asyncio.wait({fetching, watching}, return_when=asyncio.FIRST_COMPLETED)
        if not fetching.done():
            fetchers.cancel(
                "interrupted" if stop.is_set() else "stopped: the archive cannot be written"
            )
        await fetching
    finally:
        watching.cancel()
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        await _close(writer, stop)
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
    if fetchers.records:
        await _record_heads(writer, fetchers, summary, stop)
    summary.interrupted = stop.is_set()
    summary.records_written = writer.stats.rows_written
    unwritten = writer.unwritten()
    for outcome in summary.logs:
        outcome.unwritten = unwritten.get(outcome.url, [])
    if summary.unwritten and summary.write_error is None:
        summary.write_error = writer.stats.last_error or (
            "a commit was still running when closing gave up on it"
            if writer.abandoned
            else "closing ran out of time"
        )


async def show_progress(outcomes: list[LogOutcome], interval: float | None) -> None:
    """Until cancelled: a live display on a terminal, else a line per log every `interval`."""
    if is_terminal():
        await live_display(outcomes)
    else:
        await log_lines(outcomes, interval or LOG_INTERVAL)


async def _record_heads(
    writer: RowWriter, fetchers: Fetchers, summary: Summary, stop: asyncio.Event
) -> None:
    """Each range's verification, beside the rows it vouches for; after a stop, for
    `STOP_GRACE` seconds at most (a store that does not answer is left behind)."""
    work = asyncio.ensure_future(
        asyncio.to_thread(append_heads, writer.uri, writer.storage_options, fetchers.records)
    )
    what = f"recording verification in {writer.uri}"
    try:
        if stop.is_set():
            try:
                await asyncio.wait_for(asyncio.shield(work), STOP_GRACE)
            except TimeoutError:
                abandon(what)
                raise Stopped(what) from None
        else:
            await until_stopped(work, stop, what)
    except Stopped:
        summary.write_error = "the verification records were not written: stopped"
    except Exception as exc:  # storage errors of any kind: the rows are written all the same
        summary.write_error = f"the verification records were not written: {exc}"
        log.error(
            "verification records not written",
            extra={"table": writer.uri, "records": len(fetchers.records), "error": str(exc)},
        )


async def _signed_heads(config: Config, jobs: list[LogJob], stop: asyncio.Event) -> None:
    """Which head each job's ranges are checked against: the newest the live server verified,
    recorded beside the main archive, or else one asked of the log."""
    uri = table_uri(config.delta_sink.table_path)
    options = table_storage_options(uri, s3_storage_options(config.storage.s3))
    try:
        stored = await until_stopped(
            asyncio.to_thread(verified_heads, uri, options), stop, "reading the verified heads"
        )
    except TableUnreadableError as exc:
        log.warning("verified heads unreadable; asking the logs", extra={"error": str(exc)})
        stored = {}
    policy = backfill_retry_policy(config)
    last_error: dict[str, str] = {}

    def noting(job: LogJob) -> Callable[[FetchError, int], None]:
        def note(error: FetchError, attempt: int) -> None:
            job.outcome.count_retry(error.status)
            job.outcome.retrying(error, policy.attempts_for(error.status) - attempt)
            last_error[job.outcome.url] = str(error)

        return note

    async def ask() -> list[SignedHead | str]:
        return await asyncio.gather(
            *(head_for(job.reader, job.ceiling, stored, policy, noting(job)) for job in jobs)
        )

    try:
        signed = await until_stopped(ask(), stop, "asking the logs for signed heads", threads=False)
    except Stopped:
        for job in jobs:  # nothing was fetched yet: say what each log was answering
            error = last_error.get(job.outcome.url)
            why = INTERRUPTED if error is None else f"{INTERRUPTED} while retrying ({error})"
            for start, end in job.items:
                job.outcome.add_unfetched(start, end, why)
        raise
    for job, head in zip(jobs, signed, strict=True):
        job.signed = head
        if isinstance(head, SignedHead):
            job.outcome.head_source = head.source


async def _close(writer: RowWriter, stop: asyncio.Event) -> None:
    """Close the writer. At the end of the input it retries a failing write for its close
    timeout (minutes); once `stop` is set, before or during that, for `STOP_GRACE` seconds."""
    closing = asyncio.ensure_future(writer.close())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({closing, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if stopped.done():
            writer.hurry(STOP_GRACE)
        await closing
    finally:
        stopped.cancel()


async def backfill(
    config: Config,
    summary: Summary,
    stop: asyncio.Event,
    log_filter: str | None,
    staging_uri: str | None,
    progress_interval: float | None,
    parse_processes: int | None,
    to: Ceiling | None = None,
    cluster: str | None = None,
) -> None:
    """Plan, fetch and write into `summary` until done or `stop` is set; raises `JobError` when
    the job cannot run at all. `cluster`: a Dask scheduler's address; the work items then run
    on its workers (`backfill/cluster.py`)."""
    ceilings = read_ceilings(config.ct_log.state_file) if to is None else {}
    if ceilings is None:
        log.info(
            "no state file: no log has a ceiling, nothing to backfill (give one with --to)",
            extra={"state_file": config.ct_log.state_file},
        )
        return
    async with http_client(config.ct_log) as http:
        try:
            plan, discovery, readable = await until_stopped(
                make_plan(config, http, ceilings, summary.from_index, log_filter, staging_uri, to),
                stop,
                "gap detection",
            )
        except Stopped:  # nothing was fetched: nothing to write
            summary.interrupted = True
            return
        summary.skipped = list(plan.skipped)
        issuers = IssuerCache()
        unreadable = unreadable_reason(discovery)
        jobs: list[LogJob] = []
        for g in plan.logs:
            outcome = LogOutcome(g.url, g.name, g.missing_count, len(g.work))
            summary.logs.append(outcome)
            info = readable.get(g.url)
            if info is None:
                for start, end in g.missing:
                    outcome.add_unfetched(start, end, unreadable)
                outcome.ranges_done = outcome.ranges
            elif g.work:
                reader = make_reader(http, info, config.ct_log, issuers)
                jobs.append(LogJob(reader, g.ceiling, outcome, deque(g.work)))
        log.info(
            "backfill plan",
            extra={
                "mode": plan.mode,
                "target": summary.target,
                "logs": len(plan.logs),
                "missing": plan.missing_count,
                "work_items": len(plan.work_items),
                "skipped_logs": len(plan.skipped),
            },
        )
        if jobs and config.ct_log.verify:
            try:
                await _signed_heads(config, jobs, stop)
            except Stopped:  # nothing was fetched yet; what is left is recorded
                summary.interrupted = True
                if not any(job.outcome.unfetched for job in jobs):
                    for job in jobs:
                        for start, end in job.items:
                            job.outcome.add_unfetched(start, end, INTERRUPTED)
                return
        if jobs and cluster is not None:
            from certlake.backfill.cluster import fetch_on_cluster

            infos = {job.outcome.url: readable[job.outcome.url] for job in jobs}
            await fetch_on_cluster(
                config, summary, jobs, infos, stop, progress_interval, cluster, staging_uri
            )
        elif jobs:
            await fetch_and_write(config, summary, jobs, stop, progress_interval, parse_processes)


def report(summary: Summary) -> None:
    """The end of the job told: log lines — totals, then each log's unfetched ranges — and, on a
    terminal (as the progress display is chosen), last, a table for the person watching."""
    failed = summary.exit_code != EXIT_OK
    (log.error if failed else log.info)(
        "backfill finished",
        extra={
            "exit_code": summary.exit_code,
            "records_written": summary.records_written,
            "entries_fetched": summary.fetched,
            "logs_completed": len(summary.completed),
            "logs_failed": len(summary.failed),
            "entries_unfetched": sum(o.unfetched_count for o in summary.logs),
            "interrupted": summary.interrupted,
            "elapsed_secs": round(summary.elapsed, 1),
        },
    )
    for o in summary.logs:
        if o.unfetched:
            log.error(
                "entries not fetched",
                extra={
                    "log": o.url,
                    "entries": o.unfetched_count,
                    "ranges": ranges_text(o.left(), SHOWN_RANGES),
                    "reasons": reasons_text(o),
                },
            )
        if o.unwritten:
            log.error(
                "fetched entries not written; the next run fetches them again",
                extra={
                    "log": o.url,
                    "entries": o.unwritten_count,
                    "ranges": ranges_text(o.unwritten, SHOWN_RANGES),
                    "error": summary.write_error,
                },
            )
        if o.unverified:
            ordered = sorted(o.unverified, key=lambda u: u.start)
            log.error(
                "fetched entries not verified",
                extra={
                    "log": o.url,
                    "entries": sum(u.count for u in ordered),
                    "ranges": ranges_text([(u.start, u.end) for u in ordered], SHOWN_RANGES),
                    "reasons": "; ".join(dict.fromkeys(u.reason for u in ordered)),
                    "against": o.head_source,
                },
            )
        elif o.head_source is not None:
            log.info(
                "fetched entries verified",
                extra={"log": o.url, "entries": o.verified, "against": o.head_source},
            )
    if is_terminal():
        sys.stderr.write(format_summary(summary))

"""Backfill work on a Dask worker (`backfill/cluster.py` sends it): each task is a slice of the
plan, a few work items of every log, run as a local backfill would run them: the same fetchers,
writer and verification.

- Every task of a worker process shares one event loop, in a thread of its own, and one HTTP
  client: the worker's per-operator budgets are those of one client address, as a local run's
  are. Each worker reads from its own address when its environment says so
  (`CERTSTREAM_CT_LOG_SOURCE_ADDRESS`, as any option: logs limit each client address, so that
  is what makes N workers N budgets).
- Why a slice of every log, not one log's items: the budgets are per operator, and a task of
  one log uses one of them. Measured here with one-log tasks, Dask put each log's tasks on one
  worker (2 logs, 2 workers), and two tasks of one operator in one process starved each other
  (one took 9.7 s, the other 43 s for the same 1,000 entries): two workers ran no faster than
  one. A slice gives every running task every operator, each log one job with
  `backfill.per_log_workers` fetchers, as in a local run.
- A task first asks the tables what of its ranges is still missing (the coordinator's gap
  detection, on their span alone): a task run again after its worker was lost does not fetch
  or write twice what that worker committed. Those entries are counted as `resumed`.
- Rows go to the coordinator's target (main, or the staging table) through delta-rs's
  concurrent appends; the coordinator refuses a store where those are not safe.
- The coordinator's stop is a Dask `Event`; so is a log's failure elsewhere (its ranges in a
  later task are then not attempted, as a local run stops attempting a failed log's ranges).
- Rows are built on the task's event loop, not in processes: a Dask worker's process may not
  start children (it is a daemon), and a cluster scales by workers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from certlake.backfill.fetcher import LogJob
from certlake.backfill.presence import plan_gaps
from certlake.backfill.run import fetch_and_write
from certlake.backfill.summary import LogOutcome, Summary
from certlake.backfill.verify import SignedHead
from certlake.config import Config, CtLogConfig, s3_storage_options
from certlake.ct.client.http import CTHttp
from certlake.ct.client.static import IssuerCache
from certlake.ct.loglist import LogInfo
from certlake.ingest.readers import http_client, make_reader
from certlake.lake.table import table_uri
from certlake.ranges import Range, intersect_ranges

log = logging.getLogger(__name__)

SOURCE_ADDRESS_ENV: Final = "CERTSTREAM_CT_LOG_SOURCE_ADDRESS"
STOP_POLL: Final = 0.5  # seconds between looks at the coordinator's stop


@dataclass(frozen=True, slots=True)
class LogSlice:
    """One log's share of a task."""

    log: LogInfo
    ceiling: int  # the tree size every read of the log assumes
    ranges: tuple[Range, ...]  # ascending, inclusive
    signed: SignedHead | str | None  # what the ranges are checked against (None: not checked)
    failed_event: str  # the name of the Dask Event set when the log failed on another task


@dataclass(frozen=True, slots=True)
class SliceTask:
    """What one Dask task is given: plain values, pickled to the worker."""

    config: Config
    slices: tuple[LogSlice, ...]
    staging_uri: str | None  # None: the rows go to the main table
    stop_event: str  # the name of the coordinator's Dask Event
    progress_topic: str  # the Dask event topic the coordinator reads progress from


@dataclass(slots=True)
class SliceResult:
    outcomes: list[LogOutcome]  # one per slice, in order
    records_written: int
    write_error: str | None
    interrupted: bool
    worker: str  # the worker's address, for the coordinator's per-worker tally


class _Runtime:
    """A worker process's event loop (in its own thread) and HTTP client, shared by its items."""

    def __init__(self, ct: CtLogConfig) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(
            target=self.loop.run_forever, name="certlake backfill loop", daemon=True
        ).start()
        self.http: CTHttp = http_client(ct)
        self.issuers = IssuerCache()
        asyncio.run_coroutine_threadsafe(self.http.__aenter__(), self.loop).result()


_runtimes: dict[str, _Runtime] = {}
_runtimes_lock = threading.Lock()


def worker_ct_config(ct: CtLogConfig) -> CtLogConfig:
    """The coordinator's `ct_log` with this worker's own source address, when it has one."""
    address = os.environ.get(SOURCE_ADDRESS_ENV)
    return ct if not address else dataclasses.replace(ct, source_address=address)


def _runtime(ct: CtLogConfig) -> _Runtime:
    # Keyed by the whole configuration: a worker may serve jobs configured differently.
    key = repr(ct)
    with _runtimes_lock:
        runtime = _runtimes.get(key)
        if runtime is None:
            runtime = _runtimes[key] = _Runtime(ct)
        return runtime


def run_slice(task: SliceTask) -> SliceResult:
    """The Dask task: run the slice on this process's loop until done or stopped."""
    from distributed import Event, get_worker

    ct = worker_ct_config(task.config.ct_log)
    runtime = _runtime(ct)
    worker = get_worker()
    key = worker.get_current_task()
    failed = {s.log.url for s in task.slices if Event(s.failed_event).is_set()}
    outcomes = [
        LogOutcome(s.log.url, s.log.description, _count(s.ranges), len(s.ranges))
        for s in task.slices
    ]
    stop = asyncio.Event()
    running = _run(task, outcomes, runtime, stop, failed)
    done = asyncio.run_coroutine_threadsafe(running, runtime.loop)
    stopping = Event(task.stop_event)
    while True:
        try:
            result = done.result(timeout=STOP_POLL)
        except concurrent.futures.TimeoutError:
            if not stop.is_set() and stopping.is_set():
                runtime.loop.call_soon_threadsafe(stop.set)
            # Read across threads: plain counters and strings, each read whole.
            progress = {
                "key": str(key),
                "fetched": [o.fetched for o in outcomes],
                "status": [o.status for o in outcomes],
            }
            worker.log_event(task.progress_topic, progress)
            continue
        result.worker = worker.address
        return result


async def _run(
    task: SliceTask,
    outcomes: list[LogOutcome],
    runtime: _Runtime,
    stop: asyncio.Event,
    failed: set[str],
) -> SliceResult:
    config = task.config
    main_uri = table_uri(config.delta_sink.table_path)
    summary = Summary(
        mode="historical",
        from_index=min(s.ranges[0][0] for s in task.slices),
        target=task.staging_uri or main_uri,
        staging=task.staging_uri is not None,
        logs=outcomes,
    )
    plan = await asyncio.to_thread(
        plan_gaps,
        main_uri,
        task.staging_uri,
        {s.log.url: s.ranges[-1][1] + 1 for s in task.slices},
        summary.from_index,
        logs={s.log.url: s.log.description for s in task.slices},
        storage_options=s3_storage_options(config.storage.s3),
        split_size=config.backfill.range_split_size,
        # The runs cache is the coordinator's to keep; a task reads the few files of its span.
        runs_cache=False,
    )
    missing = {g.url: g.missing for g in plan.logs}
    jobs = []
    for s, outcome in zip(task.slices, outcomes, strict=True):
        if s.log.url in failed:
            for start, end in s.ranges:
                outcome.add_unfetched(start, end, "not attempted: the log failed in another task")
            continue
        # The span's holes between the slice's ranges belong to other tasks (or to no one).
        work = intersect_ranges(missing.get(s.log.url, ()), s.ranges)
        outcome.resumed = outcome.missing - _count(work)
        if outcome.resumed:
            log.info(
                "work items started again: part of them was written before",
                extra={"log": s.log.url, "ranges": s.ranges, "written": outcome.resumed},
            )
        if work:
            reader = make_reader(runtime.http, s.log, config.ct_log, runtime.issuers)
            jobs.append(LogJob(reader, s.ceiling, outcome, deque(work), signed=s.signed))
    if jobs:
        await fetch_and_write(config, summary, jobs, stop, None, 0, progress=False)
    for outcome in outcomes:  # the coordinator counts the ranges it sent as done
        outcome.ranges_done = 0
    return SliceResult(
        outcomes=outcomes,
        records_written=summary.records_written,
        write_error=summary.write_error,
        interrupted=summary.interrupted,
        worker="",
    )


def _count(ranges: Iterable[Range]) -> int:
    return sum(end - start + 1 for start, end in ranges)

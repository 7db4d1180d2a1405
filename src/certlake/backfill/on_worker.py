"""One backfill work item on a Dask worker (`backfill/cluster.py` sends them): the same
fetchers, writer and verification as a local run, for one range of one log.

- Every item of a worker process shares one event loop, in a thread of its own, and one HTTP
  client: the worker's per-operator budgets are those of one client address, as a local run's
  are. Each worker reads from its own address when its environment says so
  (`CERTSTREAM_CT_LOG_SOURCE_ADDRESS`, as any option: logs limit each client address, so that
  is what makes N workers N budgets).
- An item first asks the tables what of its range is still missing (the coordinator's gap
  detection, on the range alone): an item run again after its worker was lost does not fetch
  or write twice what that worker committed. Those entries are counted as `resumed`.
- Rows go to the coordinator's target (main, or the staging table) through delta-rs's
  concurrent appends; the coordinator refuses a store where those are not safe.
- The coordinator's stop is a Dask `Event`: the item stops its fetchers, writes what it has
  fetched (`stopping.STOP_GRACE`), and returns what is left, as a local run does.
- Rows are built on the item's event loop, not in processes: a Dask worker's process may not
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

log = logging.getLogger(__name__)

SOURCE_ADDRESS_ENV: Final = "CERTSTREAM_CT_LOG_SOURCE_ADDRESS"
STOP_POLL: Final = 0.5  # seconds between looks at the coordinator's stop


@dataclass(frozen=True, slots=True)
class ItemTask:
    """What one Dask task is given: plain values, pickled to the worker."""

    config: Config
    log: LogInfo
    ceiling: int  # the tree size every read of the log assumes
    start: int
    end: int  # inclusive
    signed: SignedHead | str | None  # what the range is checked against (None: not checked)
    staging_uri: str | None  # None: the rows go to the main table
    stop_event: str  # the name of the coordinator's Dask Event


@dataclass(slots=True)
class ItemResult:
    outcome: LogOutcome
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


def run_item(task: ItemTask) -> ItemResult:
    """The Dask task: run the item on this process's loop until done or stopped."""
    from distributed import Event, get_worker

    ct = worker_ct_config(task.config.ct_log)
    runtime = _runtime(ct)
    stop = asyncio.Event()
    done = asyncio.run_coroutine_threadsafe(_run(task, runtime, stop), runtime.loop)
    stopping = Event(task.stop_event)
    while True:
        try:
            result = done.result(timeout=STOP_POLL)
        except concurrent.futures.TimeoutError:
            if not stop.is_set() and stopping.is_set():
                runtime.loop.call_soon_threadsafe(stop.set)
            continue
        result.worker = get_worker().address
        return result


async def _run(task: ItemTask, runtime: _Runtime, stop: asyncio.Event) -> ItemResult:
    config, url = task.config, task.log.url
    main_uri = table_uri(config.delta_sink.table_path)
    outcome = LogOutcome(url, task.log.description, task.end - task.start + 1, 1)
    summary = Summary(
        mode="historical",
        from_index=task.start,
        target=task.staging_uri or main_uri,
        staging=task.staging_uri is not None,
        logs=[outcome],
    )
    plan = await asyncio.to_thread(
        plan_gaps,
        main_uri,
        task.staging_uri,
        {url: task.end + 1},
        task.start,
        logs={url: task.log.description},
        storage_options=s3_storage_options(config.storage.s3),
        split_size=config.backfill.range_split_size,
        # The runs cache is the coordinator's to keep; an item reads the few files of its range.
        runs_cache=False,
    )
    work = [r for g in plan.logs for r in g.work]
    outcome.resumed = outcome.missing - sum(end - start + 1 for start, end in work)
    if outcome.resumed:
        log.info(
            "work item started again: part of it was written before",
            extra={"log": url, "start": task.start, "end": task.end, "written": outcome.resumed},
        )
    if work:
        reader = make_reader(runtime.http, task.log, config.ct_log, runtime.issuers)
        job = LogJob(reader, task.ceiling, outcome, deque(work), signed=task.signed)
        await fetch_and_write(config, summary, [job], stop, None, 0, progress=False)
    # The item counts as one range done for the coordinator, however the re-plan split it.
    outcome.ranges_done = 0
    return ItemResult(
        outcome=outcome,
        records_written=summary.records_written,
        write_error=summary.write_error,
        interrupted=summary.interrupted,
        worker="",
    )

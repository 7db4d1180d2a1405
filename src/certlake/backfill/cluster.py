"""`certlake backfill --dask ADDRESS`: the plan's work items run as Dask tasks on a cluster's
workers (`backfill/on_worker.py`), the summary and progress gathered here.

Why Dask distributed and not a queue of our own: it already schedules tasks onto workers as they
free up, notices a worker that is lost and runs its tasks elsewhere, retries failed ones, and is
what the users' clusters run. What certlake adds is what makes a re-run safe: an item started
again asks the tables first what of its range is still missing, so a lost worker's commits are
neither fetched nor written twice (`on_worker.py`).

- Planning, the signed heads and the summary stay here, as in a local run; each item is one
  task (`ItemTask`), and its result (`ItemResult`) is folded into its log's outcome.
- Rows go to one table (main, or `--staging-path`) from every worker at once: delta-rs commits
  each append atomically (a rename that does not replace, on local disks; a conditional put on
  S3), so concurrent appends neither lose nor mix rows. A store configured with
  `allow_unsafe_rename` has no such guarantee, and the job refuses to start there (exit 2).
  The table is created here, before any task starts, so that workers never race to create it.
- A log that gives up on an item has failed, as in a local run: its items not yet finished are
  cancelled and listed as not attempted.
- SIGINT/SIGTERM: the stop `Event` is set, running items write what they fetched and return
  within `stopping.STOP_GRACE` (plus the time to say so); items not started are cancelled and
  listed as interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from certlake.backfill.fetcher import INTERRUPTED, LogJob
from certlake.backfill.on_worker import ItemResult, ItemTask, run_item
from certlake.backfill.run import JobError, show_progress
from certlake.backfill.summary import LogOutcome, Summary, WorkerTally
from certlake.cli.exits import EXIT_FAILED, EXIT_USAGE
from certlake.config import Config, s3_storage_options
from certlake.ct.loglist import LogInfo
from certlake.lake.table import ArchiveTable, table_storage_options, unsafe_rename
from certlake.stopping import STOP_GRACE

if TYPE_CHECKING:
    from distributed import Client, Event, Future

log = logging.getLogger(__name__)

# A task that raised (a bug, a store error) is run again this many times before its range is
# listed as left; a lost worker's tasks are rescheduled by Dask itself
# (`distributed.scheduler.allowed-failures`).
TASK_RETRIES: Final = 2
# After the stop, how long running items have to report, beyond their own grace.
_REPORT_MARGIN: Final = 10.0
NEEDS_DASK: Final = (
    "certlake backfill --dask needs Dask distributed: install certlake with its cluster extra "
    "(pip install 'certlake[cluster]')"
)


def _client_class() -> type[Client]:
    try:
        from distributed import Client
    except ImportError as exc:
        raise JobError(NEEDS_DASK, EXIT_USAGE) from exc
    return Client


async def fetch_on_cluster(
    config: Config,
    summary: Summary,
    jobs: list[LogJob],
    infos: Mapping[str, LogInfo],
    stop: asyncio.Event,
    progress_interval: float | None,
    address: str,
    staging_uri: str | None,
) -> None:
    """Run every job's items on the cluster at `address`, filling `summary` as they finish."""
    client_class = _client_class()
    options = table_storage_options(summary.target, s3_storage_options(config.storage.s3))
    if unsafe_rename(options):
        raise JobError(
            f"{summary.target}: storage.s3.allow_unsafe_rename is set, so two workers' commits "
            "could overwrite each other; a cluster backfill needs a store with conditional "
            "writes (leave allow_unsafe_rename off)",
            EXIT_USAGE,
        )
    try:
        await asyncio.to_thread(
            ArchiveTable.open_or_create,
            summary.target,
            storage_options=options,
            compression_level=config.delta_sink.compression_level,
        )
    except Exception as exc:  # storage errors of any kind: nothing was fetched yet
        raise JobError(f"cannot open the table {summary.target}: {exc}", EXIT_FAILED) from exc
    try:
        client = await client_class(address, asynchronous=True, timeout="30s")
    except (OSError, TimeoutError) as exc:
        raise JobError(f"cannot reach the Dask scheduler at {address}: {exc}", EXIT_FAILED) from exc
    try:
        await _run(client, config, summary, jobs, infos, stop, progress_interval, staging_uri)
    finally:
        await client.close()


async def _run(
    client: Client,
    config: Config,
    summary: Summary,
    jobs: list[LogJob],
    infos: Mapping[str, LogInfo],
    stop: asyncio.Event,
    progress_interval: float | None,
    staging_uri: str | None,
) -> None:
    from distributed import Event, wait

    job_id = uuid.uuid4().hex[:12]
    stopping = Event(f"certlake-backfill-stop-{job_id}", client=client)
    items: dict[object, tuple[LogJob, int, int]] = {}
    futures: list[Future[ItemResult]] = []
    for job in jobs:
        job.outcome.status = "queued on the cluster"
        while job.items:
            start, end = job.items.popleft()
            task = ItemTask(
                config=config,
                log=infos[job.outcome.url],
                ceiling=job.ceiling,
                start=start,
                end=end,
                signed=job.signed,
                staging_uri=staging_uri,
                stop_event=stopping.name,
            )
            key = f"certlake-backfill-{job_id}-{len(futures)}"
            futures.append(client.submit(run_item, task, key=key, retries=TASK_RETRIES, pure=False))
            items[key] = (job, start, end)
    log.info(
        "work items sent to the cluster",
        extra={"scheduler": client.scheduler_info().get("address"), "items": len(futures)},
    )
    outcomes = [job.outcome for job in jobs]
    reporter = asyncio.create_task(show_progress(outcomes, progress_interval))
    pending = set(futures)
    stop_wait = asyncio.ensure_future(stop.wait())
    try:
        while pending:
            waiting = asyncio.ensure_future(wait(list(pending), return_when="FIRST_COMPLETED"))
            await asyncio.wait({waiting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
                await _stop(client, stopping, pending, items, summary)
                break
            for future in [f for f in pending if f.done()]:
                pending.discard(future)
                await _finished(future, items, summary, pending)
    finally:
        stop_wait.cancel()
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
    summary.interrupted = summary.interrupted or stop.is_set()


async def _finished(
    future: Future[ItemResult],
    items: Mapping[object, tuple[LogJob, int, int]],
    summary: Summary,
    pending: set[Future[ItemResult]],
) -> None:
    job, start, end = items[future.key]
    outcome = job.outcome
    if future.status == "cancelled":
        return
    try:
        result: ItemResult = await future
    except Exception as exc:  # the task raised on every attempt, or its workers kept dying
        reason = f"failed on the cluster: {type(exc).__name__}: {exc}"
        outcome.add_unfetched(start, end, reason)
        outcome.ranges_done += 1
        log.error("work item failed", extra={"log": outcome.url, "start": start, "end": end})
        return
    outcome.absorb(result.outcome)
    outcome.status = result.outcome.status if result.outcome.unfetched else "fetching"
    summary.records_written += result.records_written
    summary.interrupted = summary.interrupted or result.interrupted
    if result.write_error is not None:
        summary.write_error = result.write_error
    tally = summary.workers.setdefault(result.worker, WorkerTally())
    tally.items += 1
    tally.records_written += result.records_written
    failed = result.outcome.status.startswith("failed")
    if failed and not result.interrupted:
        _fail_log(outcome, result.outcome.status, items, pending)


def _fail_log(
    outcome: LogOutcome,
    status: str,
    items: Mapping[object, tuple[LogJob, int, int]],
    pending: set[Future[ItemResult]],
) -> None:
    """A log gave up on an item: its other items are not attempted (each would spend the whole
    retry budget on a log that is down), and are listed with why."""
    outcome.status = status
    reason = f"not attempted: {status.removeprefix('failed: ')}"
    for future in [f for f in pending if items[f.key][0].outcome is outcome]:
        pending.discard(future)
        future.cancel()
        _, start, end = items[future.key]
        outcome.add_unfetched(start, end, reason)
        outcome.ranges_done += 1
    log.error("log failed; its other ranges are not attempted", extra={"log": outcome.url})


async def _stop(
    client: Client,
    stopping: Event,
    pending: set[Future[ItemResult]],
    items: Mapping[object, tuple[LogJob, int, int]],
    summary: Summary,
) -> None:
    """Tell running items to stop, wait for their reports, cancel the rest."""
    from distributed import wait

    summary.interrupted = True
    await stopping.set()
    processing = {key for keys in (await client.processing()).values() for key in keys}
    running = [f for f in pending if f.key in processing]
    for future in [f for f in pending if f.key not in processing]:
        future.cancel()
    if running:
        with contextlib.suppress(TimeoutError):
            await wait(running, timeout=STOP_GRACE + _REPORT_MARGIN)
    for future in list(pending):
        if future.status == "finished":
            pending.discard(future)
            await _finished(future, items, summary, pending)
    for future in pending:
        # Not started, or not reporting in time: what it wrote, the next run's plan finds.
        future.cancel()
        job, start, end = items[future.key]
        job.outcome.add_unfetched(start, end, INTERRUPTED)
        job.outcome.ranges_done += 1

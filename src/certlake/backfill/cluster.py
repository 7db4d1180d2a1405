"""`certlake backfill --dask ADDRESS`: the plan's work items run as Dask tasks on a cluster's
workers (`backfill/on_worker.py`), the summary and progress gathered here.

Why Dask distributed and not a queue of our own: it already schedules tasks onto workers as they
free up, notices a worker that is lost and runs its tasks elsewhere, retries failed ones, and is
what the users' clusters run. What certlake adds is what makes a re-run safe: an item started
again asks the tables first what of its range is still missing, so a lost worker's commits are
neither fetched nor written twice (`on_worker.py`).

- Planning, the signed heads and the summary stay here, as in a local run; each task
  (`SliceTask`) carries up to `backfill.per_log_workers` work items of every log, and its
  result (`SliceResult`) is folded into the logs' outcomes.
- Rows go to one table (main, or `--staging-path`) from every worker at once: delta-rs commits
  each append atomically (a rename that does not replace, on local disks; a conditional put on
  S3), so concurrent appends neither lose nor mix rows. A store configured with
  `allow_unsafe_rename` has no such guarantee, and the job refuses to start there (exit 2).
  The table is created here, before any task starts, so that workers never race to create it.
- A log that gives up on an item has failed, as in a local run: tasks that start later skip
  its items and list them as not attempted (the log's Dask `Event`).
- Progress: running tasks report per log what they fetched (`_Progress`), so the display and
  the progress lines cover every worker while the tasks run, not only when they end.
- SIGINT/SIGTERM: the stop `Event` is set, running items write what they fetched and return
  within `stopping.STOP_GRACE` (plus the time to say so); items not started are cancelled and
  listed as interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from certlake.backfill.fetcher import INTERRUPTED, LogJob
from certlake.backfill.on_worker import LogSlice, SliceResult, SliceTask, run_slice
from certlake.backfill.run import JobError, show_progress
from certlake.backfill.summary import LogOutcome, Summary, WorkerTally
from certlake.cli.exits import EXIT_FAILED, EXIT_USAGE
from certlake.config import Config, s3_storage_options
from certlake.ct.loglist import LogInfo
from certlake.lake.table import ArchiveTable, table_storage_options, unsafe_rename
from certlake.ranges import Range
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


# What each task carries: per log, its job here and the ranges sent.
Sent = list[tuple[LogJob, tuple[Range, ...]]]


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
    failed = {
        job.outcome.url: f"certlake-backfill-failed-{job_id}-{n}" for n, job in enumerate(jobs)
    }
    sent: dict[object, Sent] = {}
    progress = _Progress(f"certlake-backfill-progress-{job_id}", sent)
    client.subscribe_topic(progress.topic, progress.update)
    futures: list[Future[SliceResult]] = []
    for part in _slices(jobs, config.backfill.per_log_workers):
        slices = tuple(
            LogSlice(
                log=infos[job.outcome.url],
                ceiling=job.ceiling,
                ranges=ranges,
                signed=job.signed,
                failed_event=failed[job.outcome.url],
            )
            for job, ranges in part
        )
        task = SliceTask(config, slices, staging_uri, stopping.name, progress.topic)
        key = f"certlake-backfill-{job_id}-{len(futures)}"
        futures.append(client.submit(run_slice, task, key=key, retries=TASK_RETRIES, pure=False))
        sent[key] = part
    log.info(
        "work sent to the cluster",
        extra={"scheduler": client.scheduler_info().get("address"), "tasks": len(futures)},
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
                await _stop(client, stopping, pending, sent, summary, progress)
                break
            for future in [f for f in pending if f.done()]:
                pending.discard(future)
                progress.settle(future.key)
                await _finished(future, sent[future.key], summary, client, failed)
    finally:
        stop_wait.cancel()
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
    summary.interrupted = summary.interrupted or stop.is_set()


class _Progress:
    """Running tasks' progress, as their workers report it every `on_worker.STOP_POLL` seconds
    (Dask's event topics), added to the logs' outcomes for the progress display until each
    task's result replaces it. A task run again after a lost worker reports from zero: what the
    display shows then falls back, as it should (those entries are being fetched again)."""

    def __init__(self, topic: str, sent: Mapping[object, Sent]) -> None:
        self.topic = topic
        self._sent = sent
        self._seen: dict[str, list[int]] = {}
        self._settled: set[str] = set()

    def update(self, event: tuple[float, dict[str, Any]]) -> None:
        msg = event[1]
        key = msg["key"]
        part = self._sent.get(key)
        if part is None or key in self._settled:  # a report overtaken by the task's result
            return
        seen = self._seen.setdefault(key, [0] * len(part))
        for n, ((job, _), fetched, status) in enumerate(
            zip(part, msg["fetched"], msg["status"], strict=True)
        ):
            job.outcome.fetched += fetched - seen[n]
            seen[n] = fetched
            if not job.outcome.status.startswith("failed"):
                job.outcome.status = status

    def settle(self, key: object) -> None:
        """Take the task's reported progress back out: its result is added instead."""
        name = str(key)
        self._settled.add(name)
        for (job, _), fetched in zip(self._sent[key], self._seen.pop(name, []), strict=False):
            job.outcome.fetched -= fetched


def _slices(jobs: list[LogJob], per_log: int) -> Iterator[Sent]:
    """The plan cut into tasks, each with up to `per_log` items of every log that has items
    left (`on_worker.py` says why). Dask starts tasks in the order they were sent, so every
    log advances from the start."""
    for job in jobs:
        job.outcome.status = "queued on the cluster"
    while any(job.items for job in jobs):
        part: Sent = []
        for job in jobs:
            if job.items:
                n = min(per_log, len(job.items))
                part.append((job, tuple(job.items.popleft() for _ in range(n))))
        yield part


async def _finished(
    future: Future[SliceResult],
    part: Sent,
    summary: Summary,
    client: Client,
    failed: Mapping[str, str],
) -> None:
    from distributed import Event

    if future.status == "cancelled":
        return
    try:
        result: SliceResult = await future
    except Exception as exc:  # the task raised on every attempt, or its workers kept dying
        reason = f"failed on the cluster: {type(exc).__name__}: {exc}"
        for job, ranges in part:
            _left(job.outcome, ranges, reason)
        log.error("a task of the backfill failed", extra={"error": reason})
        return
    summary.records_written += result.records_written
    summary.interrupted = summary.interrupted or result.interrupted
    if result.write_error is not None:
        summary.write_error = result.write_error
    tally = summary.workers.setdefault(result.worker, WorkerTally())
    tally.items += sum(len(ranges) for _, ranges in part)
    tally.records_written += result.records_written
    for (job, ranges), done in zip(part, result.outcomes, strict=True):
        outcome = job.outcome
        outcome.absorb(done, len(ranges))
        if done.status.startswith("failed") and not result.interrupted:
            # Later tasks skip the log's ranges (a local run stops attempting a failed log's).
            outcome.status = done.status
            await Event(failed[outcome.url], client=client).set()
            log.error("log failed; its other ranges are not attempted", extra={"log": outcome.url})
        elif not outcome.status.startswith("failed"):
            outcome.status = "fetching"


async def _stop(
    client: Client,
    stopping: Event,
    pending: set[Future[SliceResult]],
    sent: Mapping[object, Sent],
    summary: Summary,
    progress: _Progress,
) -> None:
    """Tell running tasks to stop, wait for their reports, cancel the rest."""
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
            progress.settle(future.key)
            await _finished(future, sent[future.key], summary, client, {})
    for future in pending:
        # Not started, or not reporting in time: what it wrote, the next run's plan finds.
        future.cancel()
        progress.settle(future.key)
        for job, ranges in sent[future.key]:
            _left(job.outcome, ranges, INTERRUPTED)


def _left(outcome: LogOutcome, ranges: tuple[Range, ...], reason: str) -> None:
    for start, end in ranges:
        outcome.add_unfetched(start, end, reason)
    outcome.ranges_done += len(ranges)

"""Backfill's concurrent fetchers: a bounded pool over the work items of every log.

- At most `workers` work items are fetched at once over all logs, and at most `per_log_workers`
  of one log; requests are further limited per operator by the readers' shared budget.
- Each item `[start, end]` goes through `fetch_range` with the log's ceiling as tree size, so
  every index of it arrives once, in order, retried with back-off; static logs read only the
  tiles that hold the range and emit only its indices.
- Entries are turned into archive rows in chunks of consecutive indices (`build.build_rows`,
  seen = fetch time), in worker processes when a pool is given, while the fetcher reads on:
  at most `MAX_PENDING` chunks per fetcher are being built. Rows go to the one writer in index
  order; undecodable entries and certificates that do not parse go with them as skipped
  ranges, so gap detection never takes them for holes.
- Memory is bounded: the writer makes a fetcher wait while it holds its high-water mark.
- A log that gives up on a range has failed: its other ranges are not attempted (each would
  spend the whole retry budget on a log that is down), and the other logs go on.
- Stopped (SIGINT, or the writer failing), a fetcher hands over what it has fetched and records
  the rest of its range as not fetched.
- Each range fetched whole is then checked against a signed head of its log
  (`backfill/verify.py`) from the leaf hashes its chunks were built with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Final, Protocol

from certlake.backfill.build import BuiltRows, build_rows
from certlake.backfill.summary import FETCHING, LogOutcome
from certlake.backfill.verify import SignedHead, check_range
from certlake.ct.backoff import RetryPolicy
from certlake.ct.client.fetch import GaveUp, fetch_range
from certlake.ct.client.reader import FetchedEntry, LogReader, RawEntry, Unparseable
from certlake.ct.compact import CompactRange
from certlake.ct.errors import FetchError
from certlake.ingest.packed import pack
from certlake.lake.heads_rows import HeadKind, HeadRecord
from certlake.lake.txn import SkipKind
from certlake.ranges import Range

log = logging.getLogger(__name__)

CHUNK: Final = 256  # entries per build task: one data tile, one default get-entries batch
MAX_PENDING: Final = 2  # chunks per fetcher being built while it reads on
INTERRUPTED: Final = "interrupted"


class Writer(Protocol):
    """The writer as fetchers see it (`writer.RowWriter`)."""

    async def put(self, built: BuiltRows) -> None: ...

    def put_nowait(self, built: BuiltRows) -> None: ...


@dataclass(slots=True)
class LogJob:
    """One log's work: its reader, its ceiling (the tree size every read assumes), the items
    not yet started, and why it failed, once it has."""

    reader: LogReader
    ceiling: int
    outcome: LogOutcome
    items: deque[Range] = field(default_factory=deque)
    failed: str | None = None
    # What its ranges are checked against, or why they cannot be; None: not checked.
    signed: SignedHead | str | None = None
    # What was handed to the writer, as compact ranges with their first leaf hash, by begin:
    # adjacent pieces are merged and each run checked once, when the job is done.
    fetched: dict[int, tuple[CompactRange, bytes]] = field(default_factory=dict)


class Fetchers:
    def __init__(
        self,
        jobs: Sequence[LogJob],
        writer: Writer,
        *,
        workers: int,
        per_log_workers: int,
        policy: RetryPolicy,
        pool: Executor | None = None,
    ) -> None:
        """`pool`: processes that build rows; None builds them on the event loop."""
        self.writer = writer
        self.policy = policy
        self.stopped = INTERRUPTED  # why items were left when cancelled
        self._jobs = jobs
        self._slots = asyncio.Semaphore(workers)
        self._per_log = per_log_workers
        self._pool = pool
        self._tasks: list[asyncio.Task[None]] = []
        self.records: list[HeadRecord] = []  # each range's verification, for the heads table
        self._cancelled = False

    async def run(self) -> None:
        """Fetch every item of every job; returns when all are done, failed or cancelled
        (`cancel`). Afterwards each job's outcome lists whatever was left."""
        for job in self._jobs:
            for n in range(min(self._per_log, len(job.items))):
                name = f"backfill {job.outcome.url} #{n}"
                self._tasks.append(asyncio.create_task(self._worker(job), name=name))
        for result in await asyncio.gather(*self._tasks, return_exceptions=True):
            if isinstance(result, Exception):  # never expected: items record their own errors
                log.error("backfill fetcher failed", exc_info=result)
        await asyncio.gather(*(self._check(job) for job in self._jobs))
        for job in self._jobs:
            reason = self.stopped if job.failed is None else f"not attempted: {job.failed}"
            while job.items:
                start, end = job.items.popleft()
                job.outcome.add_unfetched(start, end, reason)
                job.outcome.ranges_done += 1

    def cancel(self, reason: str = INTERRUPTED) -> None:
        """Stop fetching now: items in flight hand over what they fetched and record where
        they stopped, items not started stay listed, both with `reason`."""
        self.stopped = reason
        self._cancelled = True
        for task in self._tasks:
            task.cancel()

    async def _worker(self, job: LogJob) -> None:
        while True:
            async with self._slots:
                if job.failed is not None or not job.items:
                    return
                start, end = job.items.popleft()
                try:
                    await _Item(self, job, start, end).fetch()
                finally:
                    job.outcome.ranges_done += 1

    def build(
        self, job: LogJob, items: list[FetchedEntry | Unparseable | RawEntry]
    ) -> asyncio.Future[BuiltRows]:
        """The rows of `items`, built in the pool (or here, at once, without one)."""
        source = job.reader.source
        packed = pack(items)
        seen = time.time()
        if self._pool is not None:
            return asyncio.get_running_loop().run_in_executor(
                self._pool, build_rows, source, packed, seen
            )
        done: asyncio.Future[BuiltRows] = asyncio.get_running_loop().create_future()
        done.set_result(build_rows(source, packed, seen))
        return done

    def fetched(self, job: LogJob, leaves: CompactRange, first: bytes) -> None:
        """`leaves` were handed to the writer: merged with what was before and after them."""
        for begin, (r, _) in list(job.fetched.items()):
            if r.begin == leaves.end:  # the piece that follows
                leaves.merge(r)
                del job.fetched[begin]
        before = next((b for b, (r, _) in job.fetched.items() if r.end == leaves.begin), None)
        if before is not None:
            job.fetched[before][0].merge(leaves)
        else:
            job.fetched[leaves.begin] = (leaves, first)

    async def _check(self, job: LogJob) -> None:
        """Check each run of what the job fetched against its signed head."""
        outcome, signed = job.outcome, job.signed
        if signed is None:
            return
        for leaves, first in sorted(job.fetched.values(), key=lambda f: f[0].begin):
            last = leaves.end - 1
            if isinstance(signed, str):
                outcome.add_unverified(leaves.begin, last, signed)
                continue
            if self._cancelled:
                outcome.add_unverified(leaves.begin, last, f"not verified: {self.stopped}")
                continue
            try:
                record = await check_range(job.reader, signed, leaves, first, self.policy)
            except FetchError as e:
                outcome.add_unverified(leaves.begin, last, f"no proof from the log: {e}")
                continue
            self.records.append(record)
            if record.kind is HeadKind.RANGE_VERIFIED:
                outcome.verified += leaves.end - leaves.begin
            else:
                outcome.add_unverified(leaves.begin, last, record.detail, evidence=True)

    def fail(self, job: LogJob, reason: str) -> None:
        if job.failed is None:
            job.failed = reason
            job.outcome.status = f"failed: {reason}"
            log.error(
                "log failed; its other ranges are not attempted",
                extra={"log": job.outcome.url, "reason": reason, "ranges_left": len(job.items)},
            )


class _Item:
    """One work item in flight: entries read, chunks being built, and `done`, the index below
    which everything has been handed to the writer."""

    def __init__(self, fetchers: Fetchers, job: LogJob, start: int, end: int) -> None:
        self._f = fetchers
        self._job = job
        self._end = end
        self._chunk: list[FetchedEntry | Unparseable | RawEntry] = []
        self._pending: deque[tuple[int, asyncio.Future[BuiltRows]]] = deque()
        self._retrying: str | None = None  # the last failure, while a read is being retried
        self.done = start
        # The leaf hashes of what was handed over, as a compact range, and the first of them.
        self._leaves: CompactRange | None = None
        self._first_leaf: bytes | None = None

    async def fetch(self) -> None:
        job, outcome = self._job, self._job.outcome
        outcome.status = FETCHING

        def on_error(error: FetchError, attempt: int) -> None:
            outcome.count_retry(error.status)
            outcome.retrying(error, self._f.policy.attempts_for(error.status) - attempt)
            self._retrying = str(error)

        try:
            items = fetch_range(
                job.reader, self.done, self._end, tree_size=job.ceiling,
                policy=self._f.policy, on_error=on_error,
            )  # fmt: skip
            async with contextlib.aclosing(items):
                async for item in items:
                    if isinstance(item, GaveUp):
                        await self._hand_over_all()
                        outcome.add_unfetched(item.start, item.end, f"gave up: {item.error}")
                        self._f.fail(job, f"the log gave up at {item.start}: {item.error}")
                        return
                    self._chunk.append(item)
                    outcome.fetched += 1
                    if self._retrying is not None:
                        self._retrying = None
                        outcome.status = FETCHING
                    if len(self._chunk) >= CHUNK or item.index == self._end:
                        self._submit()
                        if len(self._pending) > MAX_PENDING:
                            await self._hand_over_oldest()
            await self._hand_over_all()
        except asyncio.CancelledError:
            await self._stop()
            raise
        except Exception as exc:  # a misbehaving log must not take the other logs down
            log.exception(
                "backfill of a range failed",
                extra={"log": outcome.url, "start": self.done, "end": self._end},
            )
            await self._stop(f"error: {exc}")
            self._f.fail(job, f"error at {self.done}: {exc}")
        finally:
            # Whatever was handed over is checked, the whole range or the part fetched.
            if self._leaves is not None and self._first_leaf is not None:
                self._f.fetched(job, self._leaves, self._first_leaf)

    def _submit(self) -> None:
        if self._chunk:
            upto = self._chunk[-1].index + 1
            self._pending.append((upto, self._f.build(self._job, self._chunk)))
            self._chunk = []

    async def _hand_over_oldest(self) -> None:
        upto, building = self._pending[0]
        # Shielded: cancelling this fetcher must not cancel the build, whose rows `_stop`
        # still hands over.
        built = await asyncio.shield(building)
        await self._f.writer.put(built)
        self._pending.popleft()
        self._delivered(built, upto)

    async def _hand_over_all(self) -> None:
        self._submit()
        while self._pending:
            await self._hand_over_oldest()

    def _delivered(self, built: BuiltRows, upto: int) -> None:
        for s in built.skipped:
            log.error(
                "entry passed without a row",
                extra={"log": s.source_url, "index": s.start, "kind": s.kind.value,
                       "reason": s.reason},
            )  # fmt: skip
        self._job.outcome.unparseable += sum(
            s.end - s.start + 1 for s in built.skipped if s.kind is SkipKind.UNPARSEABLE
        )
        self.done = upto
        if built.leaves is not None:
            if self._leaves is None:
                self._leaves, self._first_leaf = built.leaves, built.first_leaf
            else:
                self._leaves.merge(built.leaves)

    async def _stop(self, reason: str | None = None) -> None:
        """Hand what was fetched to the writer — chunks being built once they are, the chunk
        being filled built here — then record the rest of the range as not fetched."""
        try:
            while self._pending:
                upto, building = self._pending.popleft()
                built = await building
                self._f.writer.put_nowait(built)
                self._delivered(built, upto)
            if self._chunk:
                upto = self._chunk[-1].index + 1
                built = build_rows(self._job.reader.source, pack(self._chunk), time.time())
                self._chunk = []
                self._f.writer.put_nowait(built)
                self._delivered(built, upto)
        except Exception:  # a broken build pool: what it held is fetched again next time
            log.exception(
                "could not hand over what was fetched", extra={"log": self._job.outcome.url}
            )
        finally:
            why = reason or self._f.stopped
            if self._retrying is not None:
                # Stopped while a read was being retried: say what the log was answering.
                why = f"{why} while retrying ({self._retrying})"
            self._job.outcome.add_unfetched(self.done, self._end, why)

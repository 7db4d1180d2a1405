"""The fetch loop shared by the live watcher and backfill: range → reads in flight → index order.

`fetch_range` yields every index of `[start, end]` exactly once, in order — as a `FetchedEntry`,
or as `Unparseable` when the log's bytes do not decode. It cuts the range into reads where the
reader says a log's answers end (`LogReader.chunk_end`: a learned `get-entries` cap aligned to
its multiples, or a data tile), keeps up to `reader.depth` reads in flight, and hands their
answers on in index order. A short answer is normal: its remainder becomes a new read at once.
A failed read is retried with back-off (Retry-After honoured) while the later reads go on; when
one keeps failing, the loop stops and yields `GaveUp` naming exactly the indices not yielded.
It never skips and never yields an index twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from certlake.ct.backoff import RetryPolicy
from certlake.ct.client.reader import Batch, FetchedEntry, LogReader, RawEntry, Unparseable
from certlake.ct.errors import FetchError

log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class GaveUp:
    """Indices `[start, end]` could not be fetched; `error` is the last failure."""

    start: int
    end: int
    error: str
    status: int | None


FetchItem = FetchedEntry | Unparseable | RawEntry | GaveUp
# Called on every failed read (with the attempt number), including the one that gives up.
ErrorHook = Callable[[FetchError, int], None]


# Reads planned ahead of the one being handed on, in units of `reader.depth`: enough to keep
# the log busy while the consumer works, bounded so a slow consumer does not buffer a backlog.
_AHEAD = 2


@dataclass(eq=False, slots=True)
class _Read:
    """One read of `[start, end]`: pending (no task yet) or in flight / answered."""

    start: int
    end: int
    task: asyncio.Task[Batch | GaveUp] | None = field(default=None, repr=False)
    handled: bool = False  # its answer was taken into account (split, depth freed)


class _Reads:
    """The reads of one `fetch_range`, contiguous and in index order from the next index due.

    At most `reader.depth` are in flight (one while the reader is not `settled`); a short answer
    is cut where it ended and its remainder queued right behind it, cut again at the reader's
    chunk boundaries, so the next reads keep the log's alignment.
    """

    def __init__(
        self,
        reader: LogReader,
        start: int,
        end: int,
        size: int,
        policy: RetryPolicy,
        rng: random.Random,
        sleep: Callable[[float], Awaitable[None]],
        on_error: ErrorHook | None,
    ) -> None:
        self.reader = reader
        self.end = end
        self.size = size
        self.policy = policy
        self.rng = rng
        self.sleep = sleep
        self.on_error = on_error
        self.queue: deque[_Read] = deque()
        self.planned = start  # the first index no read covers yet
        self.in_flight = 0

    def pump(self) -> None:
        """Start pending reads, then plan new ones, while the depth allows."""
        depth = self.reader.depth if self.reader.settled else 1
        for read in self.queue:
            if self.in_flight >= depth:
                return
            if read.task is None:
                self.start(read)
        while (
            self.in_flight < depth and self.planned <= self.end and len(self.queue) < _AHEAD * depth
        ):
            (read,) = self._cut(self.planned, self.end, limit=1)
            self.queue.append(read)
            self.planned = read.end + 1
            self.start(read)

    def start(self, read: _Read) -> None:
        read.task = asyncio.ensure_future(self._read(read.start, read.end))
        self.in_flight += 1
        read.task.add_done_callback(lambda _t: self.answered(read))

    def _cut(self, start: int, end: int, limit: int | None = None) -> list[_Read]:
        out: list[_Read] = []
        while start <= end and (limit is None or len(out) < limit):
            last = min(end, max(start, self.reader.chunk_end(start, end, self.size)))
            out.append(_Read(start, last))
            start = last + 1
        return out

    async def _read(self, start: int, end: int) -> Batch | GaveUp:
        try:
            return await retried(
                lambda: self.reader.read(start, end, self.size),
                self.policy,
                on_error=self.on_error,
                rng=self.rng,
                sleep=self.sleep,
            )
        except FetchError as e:
            return GaveUp(start, end, str(e), e.status)

    def answered(self, read: _Read) -> None:
        """Take a finished read into account, once: from its done-callback, or from
        `fetch_range` when it finds the task done before the callback has run."""
        if read.handled:
            return
        read.handled = True
        self.in_flight -= 1
        assert read.task is not None
        if read.task.cancelled() or read.task.exception() is not None:
            return
        batch = read.task.result()
        if not isinstance(batch, GaveUp) and batch:
            last = batch[-1].index
            consistent = batch[0].index == read.start and last - read.start + 1 == len(batch)
            # A broken answer is left as it is: `fetch_range` raises when it reaches it.
            if consistent and read.start <= last < read.end:
                rest = self._cut(last + 1, read.end)
                read.end = last
                position = next(i for i, r in enumerate(self.queue) if r is read) + 1
                for offset, piece in enumerate(rest):
                    self.queue.insert(position + offset, piece)
        self.pump()

    async def cancel(self) -> None:
        tasks = [r.task for r in self.queue if r.task is not None]
        self.queue.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def retried(
    call: Callable[[], Awaitable[_T]],
    policy: RetryPolicy,
    *,
    on_error: Callable[[FetchError, int], None] | None = None,
    rng: random.Random | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> _T:
    """`call()`'s answer, retried with back-off (and any `Retry-After`) on `FetchError`; the
    last error once the policy's attempts for its status are spent."""
    rng = rng or random.Random()
    attempt = 0
    while True:
        try:
            return await call()
        except FetchError as e:
            attempt += 1
            if on_error is not None:
                on_error(e, attempt)
            if attempt >= policy.attempts_for(e.status):
                raise
            await sleep(policy.delay(attempt, e.retry_after, rng))


async def fetch_range(
    reader: LogReader,
    start: int,
    end: int,
    *,
    tree_size: int | None = None,
    policy: RetryPolicy | None = None,
    rng: random.Random | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_error: ErrorHook | None = None,
) -> AsyncGenerator[FetchItem, None]:
    """Fetch `[start, end]` (inclusive). `tree_size` defaults to `end + 1`: the caller knows the
    range exists (from a tree head, or a state file's cursor). Use it inside
    `contextlib.aclosing` so that reads still in flight are cancelled when the caller stops."""
    if start > end:
        return
    size = end + 1 if tree_size is None else tree_size
    if end >= size:
        raise ValueError(f"range end {end} is beyond the tree size {size}")
    reads = _Reads(
        reader, start, end, size, policy or RetryPolicy(), rng or random.Random(), sleep, on_error
    )
    cursor = start  # the next index to yield
    try:
        while cursor <= end:
            reads.pump()
            head = reads.queue[0]
            if head.task is None:
                reads.start(head)  # later reads filled the depth first: the head goes anyway
            assert head.task is not None
            result = await head.task
            reads.answered(head)
            reads.queue.popleft()
            if isinstance(result, GaveUp):
                log.warning(
                    "giving up on a range",
                    extra={
                        "log_url": reader.source.url,
                        "start": cursor,
                        "end": end,
                        "error": result.error,
                        "status": result.status,
                    },
                )
                yield GaveUp(cursor, end, result.error, result.status)
                return
            if not result:
                raise RuntimeError(
                    f"{reader.source.url}: reader returned an empty batch at {cursor}"
                )
            for item in result:
                # A reader that returns anything but the next index is broken; trusting it
                # would create a gap or a duplicate downstream.
                if item.index != cursor or cursor > head.end:
                    raise RuntimeError(
                        f"{reader.source.url}: reader returned index {item.index}, "
                        f"expected {cursor}"
                    )
                cursor += 1
                yield item
    finally:
        await reads.cancel()

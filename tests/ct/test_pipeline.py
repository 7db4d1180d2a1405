"""Pipelined reads (`fetch_range` with several reads in flight) against a scripted log: whatever
the answers' lengths, order of arrival and failures, each index comes out exactly once, in order,
and a read that keeps failing ends in a `GaveUp` naming exactly what was not yielded."""

from __future__ import annotations

import asyncio
import contextlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from certlake.ct.backoff import RetryPolicy
from certlake.ct.client.fetch import FetchItem, GaveUp, fetch_range
from certlake.ct.client.reader import Batch, FetchedEntry
from certlake.ct.entry import EntryType, LogEntry, LogKind, LogSource
from certlake.ct.errors import FetchError

FAST = RetryPolicy(max_attempts=50, initial_delay=0.0001, max_delay=0.001, rate_limit_attempts=50)


def _entry(index: int) -> FetchedEntry:
    entry = LogEntry(
        index=index,
        timestamp_ms=index,
        entry_type=EntryType.X509,
        leaf_input=index.to_bytes(8, "big"),
        cert_der=b"",
        chain=(),
    )
    return FetchedEntry(entry, f"link/{index}")


class ScriptedLog:
    """A log capped at `cap` entries per answer (aligned like Google's when `aligned`), whose
    answers arrive after random delays (so out of order), are cut short at random, and fail at
    random (429 with a Retry-After, 503, timeouts)."""

    def __init__(
        self,
        rng: random.Random,
        *,
        cap: int,
        aligned: bool,
        depth: int,
        p_short: float,
        p_fail: float,
        fail_forever_at: int | None = None,
    ) -> None:
        self.source = LogSource("https://scripted.example/log", "scripted", LogKind.RFC6962)
        self.rng = rng
        self.cap = cap
        self.aligned = aligned
        self._depth = depth
        self.p_short = p_short
        self.p_fail = p_fail
        self.fail_forever_at = fail_forever_at
        self.in_flight = 0
        self.max_seen_in_flight = 0
        self.learned: int | None = None
        self.requests: list[tuple[int, int]] = []

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def settled(self) -> bool:
        return self.learned is not None

    @property
    def answer_cap(self) -> int | None:
        return self.learned

    def chunk_end(self, start: int, end: int, tree_size: int) -> int:
        cap = self.learned or 256
        return min(end, tree_size - 1, (start // cap + 1) * cap - 1)

    async def latest_size(self) -> int:
        raise AssertionError("not used")

    async def read(self, start: int, end: int, tree_size: int) -> Batch:
        self.requests.append((start, end))
        self.in_flight += 1
        self.max_seen_in_flight = max(self.max_seen_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.rng.uniform(0, 0.003))
            if self.fail_forever_at is not None and start <= self.fail_forever_at <= end:
                raise FetchError("HTTP 503: down", 503)
            if self.rng.random() < self.p_fail:
                status = self.rng.choice([429, 503, None])
                raise FetchError(f"scripted {status}", status, 0.0 if status == 429 else None)
            last = min(end, start + self.cap - 1)
            if self.aligned:
                last = min(last, (start // self.cap + 1) * self.cap - 1)
            if self.rng.random() < self.p_short:
                last = self.rng.randint(start, last)
            self.learned = self.learned or self.cap
            return [_entry(i) for i in range(start, last + 1)]
        finally:
            self.in_flight -= 1


async def _collect(log: ScriptedLog, start: int, end: int) -> list[FetchItem]:
    items = fetch_range(log, start, end, tree_size=end + 1, policy=FAST, rng=random.Random(0))
    async with contextlib.aclosing(items):
        return [item async for item in items]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    start=st.integers(0, 500),
    length=st.integers(1, 600),
    cap=st.sampled_from([1, 7, 32, 100, 256]),
    aligned=st.booleans(),
    depth=st.integers(1, 8),
    p_short=st.sampled_from([0.0, 0.3, 1.0]),
    p_fail=st.sampled_from([0.0, 0.2, 0.5]),
)
def test_every_index_exactly_once_in_order(
    seed: int,
    start: int,
    length: int,
    cap: int,
    aligned: bool,
    depth: int,
    p_short: float,
    p_fail: float,
) -> None:
    log = ScriptedLog(
        random.Random(seed), cap=cap, aligned=aligned, depth=depth, p_short=p_short, p_fail=p_fail
    )
    end = start + length - 1
    items = asyncio.run(_collect(log, start, end))
    assert [i.index for i in items if not isinstance(i, GaveUp)] == list(range(start, end + 1))
    assert log.max_seen_in_flight <= depth
    assert log.in_flight == 0


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    length=st.integers(50, 600),
    depth=st.integers(1, 8),
    where=st.floats(0.0, 0.99),
)
def test_a_read_that_keeps_failing_names_exactly_what_is_missing(
    seed: int, length: int, depth: int, where: float
) -> None:
    broken = int(length * where)
    log = ScriptedLog(
        random.Random(seed),
        cap=32,
        aligned=True,
        depth=depth,
        p_short=0.3,
        p_fail=0.1,
        fail_forever_at=broken,
    )
    items = asyncio.run(_collect(log, 0, length - 1))
    *entries, last = items
    assert isinstance(last, GaveUp)
    assert [e.index for e in entries] == list(range(last.start))
    assert last.start <= broken and last.end == length - 1
    assert last.status == 503
    assert log.in_flight == 0  # reads still in flight were cancelled


def test_reads_are_pipelined_and_aligned_once_the_cap_is_known() -> None:
    log = ScriptedLog(random.Random(1), cap=32, aligned=True, depth=4, p_short=0.0, p_fail=0.0)
    items = asyncio.run(_collect(log, 30, 1000))
    assert [i.index for i in items] == list(range(30, 1001))
    assert log.max_seen_in_flight == 4
    # After the first answer every read is one aligned 32-entry block.
    for start, end in log.requests[1:]:
        assert start % 32 == 0 or start == 30
        assert end == min(1000, (start // 32 + 1) * 32 - 1)


def test_stopping_early_cancels_the_reads_in_flight() -> None:
    log = ScriptedLog(random.Random(2), cap=32, aligned=True, depth=6, p_short=0.0, p_fail=0.0)

    async def first_ten() -> list[int]:
        got: list[int] = []
        items = fetch_range(log, 0, 10_000, tree_size=10_001, policy=FAST)
        async with contextlib.aclosing(items):
            async for item in items:
                got.append(item.index if not isinstance(item, GaveUp) else -1)
                if len(got) == 10:
                    break
        await asyncio.sleep(0.01)
        return got

    assert asyncio.run(first_ten()) == list(range(10))
    assert log.in_flight == 0
    assert len(log.requests) <= 2 * 6 + 1  # bounded read-ahead

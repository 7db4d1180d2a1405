"""The fetch loop shared by the live watcher and backfill.

`fetch_range` yields every index of `[start, end]` exactly once, in order — as a `FetchedEntry`,
or as `Unparseable` when the log's bytes do not decode — advancing only by what the log actually
returned. Failures are retried with back-off (Retry-After honoured); when a read keeps failing it
stops and yields `GaveUp` naming exactly the indices it could not get. It never skips.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from certlake.ct.backoff import RetryPolicy
from certlake.ct.client.reader import FetchedEntry, LogReader, Unparseable
from certlake.ct.errors import FetchError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GaveUp:
    """Indices `[start, end]` could not be fetched; `error` is the last failure."""

    start: int
    end: int
    error: str
    status: int | None


FetchItem = FetchedEntry | Unparseable | GaveUp
# Called on every failed read (with the attempt number), including the one that gives up.
ErrorHook = Callable[[FetchError, int], None]


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
) -> AsyncIterator[FetchItem]:
    """Fetch `[start, end]` (inclusive). `tree_size` defaults to `end + 1`: the caller knows the
    range exists (from a tree head, or a state file's cursor)."""
    if start > end:
        return
    policy = policy or RetryPolicy()
    rng = rng or random.Random()
    size = end + 1 if tree_size is None else tree_size
    if end >= size:
        raise ValueError(f"range end {end} is beyond the tree size {size}")
    cursor = start
    attempt = 0
    while cursor <= end:
        try:
            batch = await reader.read(cursor, end, size)
        except FetchError as e:
            attempt += 1
            if on_error is not None:
                on_error(e, attempt)
            if attempt >= policy.attempts_for(e.status):
                log.warning(
                    "giving up on %s [%d, %d] after %d attempts: %s",
                    reader.source.url,
                    cursor,
                    end,
                    attempt,
                    e,
                )
                yield GaveUp(cursor, end, str(e), e.status)
                return
            await sleep(policy.delay(attempt, e.retry_after, rng))
            continue
        attempt = 0
        for item in batch:
            # A reader that returns anything but the next index is broken; trusting it would
            # create a gap or a duplicate downstream.
            if item.index != cursor or cursor > end:
                raise RuntimeError(
                    f"{reader.source.url}: reader returned index {item.index}, expected {cursor}"
                )
            cursor += 1
            yield item
        if not batch:
            raise RuntimeError(f"{reader.source.url}: reader returned an empty batch at {cursor}")

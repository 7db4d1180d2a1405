"""The live watcher of one log: follows the tree head and hands every index, in order, to a
consumer. The cursor is the next index to fetch; it advances only by what was received, and never
jumps on errors (certstream-server-rust's watcher skips the tail of every short `get-entries`
answer and jumps to the tree head on any error but 429/503, losing entries both ways)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from certlake.ct.backoff import RetryPolicy
from certlake.ct.client.fetch import GaveUp, fetch_range
from certlake.ct.client.reader import Decoded, LogReader, Unparseable, settle
from certlake.ct.errors import FetchError
from certlake.ct.health import Health, LogHealth
from certlake.ct.lag import LagReport, LagTracker

log = logging.getLogger(__name__)

_YIELD_EVERY_MASK = 31  # yield to the event loop every 32 entries

Consumer = Callable[[Decoded], Awaitable[None]]
ErrorReporter = Callable[[str, FetchError], None]


@dataclass(slots=True)
class WatcherStatus:
    """What /api/logs and the state file need to know about a watcher."""

    url: str
    cursor: int | None = None  # next index to fetch; None until the first tree head is known
    tree_size: int | None = None
    last_success: float | None = None  # Unix seconds of the last successful read
    entries: int = 0
    unparseable: int = 0
    lag_tracker: LagTracker = field(default_factory=LagTracker, repr=False)

    def lag_report(self) -> LagReport:
        return self.lag_tracker.report(time.monotonic())

    @property
    def lag(self) -> int | None:
        if self.cursor is None or self.tree_size is None:
            return None
        return max(0, self.tree_size - self.cursor)


class LogWatcher:
    def __init__(
        self,
        reader: LogReader,
        consumer: Consumer,
        *,
        start_index: int | None,
        poll_interval: float = 1.0,
        policy: RetryPolicy | None = None,
        health: LogHealth | None = None,
        max_batch: int = 100_000,
        on_error: ErrorReporter | None = None,
    ) -> None:
        """`start_index` is the saved cursor; None means a fresh start at the current tree head
        (only new entries, like the Go server). `max_batch` bounds one fetch pass so the status
        and state advance regularly while a log is far behind."""
        self.reader = reader
        self.status = WatcherStatus(reader.source.url, cursor=start_index)
        self.health = health or LogHealth()
        self._consumer = consumer
        self._poll = poll_interval
        # A live watcher keeps its cursor and simply tries again on the next pass; the retry
        # budget per pass is therefore small, so health reflects trouble quickly.
        self._policy = policy or RetryPolicy(max_attempts=3, rate_limit_attempts=11)
        self._max_batch = max_batch
        self._on_error = on_error

    @property
    def health_state(self) -> Health:
        """The breaker's state, or `behind` for a log that answers but is not kept up with."""
        state = self.health.state
        if state is not Health.UNHEALTHY and self.status.lag_report().behind:
            return Health.BEHIND
        return state

    async def run(self) -> None:
        """Watch until cancelled. Never returns on log errors."""
        while True:
            try:
                await self.poll_once()
            except FetchError as e:
                self._report(e)
                self.health.failure(str(e))
                log.warning("log read failed", extra={"log": self.status.url, "error": str(e)})
            await asyncio.sleep(self.health.retry_delay(self._poll))

    def _report(self, error: FetchError) -> None:
        if self._on_error is not None:
            self._on_error(self.status.url, error)

    async def poll_once(self) -> None:
        """Read the tree head, then fetch up to it (at most `max_batch` entries)."""
        size = await self.reader.latest_size()
        st = self.status
        if st.tree_size is not None and size < st.tree_size:
            # A smaller tree than seen before is a stale cache or a misbehaving log: ignore it.
            log.warning(
                "tree head went back; ignored",
                extra={"log": st.url, "tree_size": st.tree_size, "new_size": size},
            )
            return
        st.tree_size = size
        if st.cursor is None:
            st.cursor = size
            log.info("fresh start at the tree head", extra={"log": st.url, "tree_size": size})
        st.lag_tracker.head(time.monotonic(), size)
        st.lag_tracker.read(time.monotonic(), st.cursor)
        if st.cursor > size:
            log.warning(
                "saved cursor is beyond the tree",
                extra={"log": st.url, "cursor": st.cursor, "tree_size": size},
            )
            return
        if st.cursor == size:
            self.health.success()
            st.last_success = time.time()
            return
        end = min(size, st.cursor + self._max_batch) - 1
        items = fetch_range(
            self.reader,
            st.cursor,
            end,
            tree_size=size,
            policy=self._policy,
            on_error=lambda e, _attempt: self._report(e),
        )
        async with contextlib.aclosing(items):
            async for item in items:
                if isinstance(item, GaveUp):
                    self.health.failure(item.error)
                    return
                item = settle(item, self.reader.source.url)
                await self._consumer(item)
                st.cursor = item.index + 1
                if isinstance(item, Unparseable):
                    st.unparseable += 1
                    log.error(
                        "entry does not decode",
                        extra={"log": st.url, "index": item.index, "error": item.error},
                    )
                else:
                    st.entries += 1
                if (st.cursor & _YIELD_EVERY_MASK) == 0:
                    st.lag_tracker.read(time.monotonic(), st.cursor)
                    # A batch is hundreds of entries; letting the loop run between slices lets the
                    # stream flush what is already built and other logs' watchers take their turn.
                    await asyncio.sleep(0)
        st.lag_tracker.read(time.monotonic(), st.cursor)
        self.health.success()
        st.last_success = time.time()

"""Keeps the domain index in step behind an archive writer (the live sink, backfill's writer).

After each commit lands the writer pokes the indexer, which runs `domains.catch_up` in a thread of
its own: the writer's next commit never waits for indexing, and pokes that arrive while a catch-up
runs fold into one more run after it. What the index covers is recorded in the index itself (see
`domains`), so a crash, a failure or two processes indexing the same archive never index a row
twice or leave one out; a lagging index only makes searches read the newest files directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor

from certlake.lake import domains

log = logging.getLogger(__name__)


class DomainIndexer:
    def __init__(
        self,
        uri: str,
        storage_options: Mapping[str, str] | None,
        compression_level: int,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        """`executor`: the writer's own thread, when the index's commits must take the writer's
        turn (S3 without safe renames: two concurrent commits could overwrite each other)."""
        self.uri = uri
        self._options = storage_options
        self._level = compression_level
        self._own = executor is None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="domain-index"
        )
        self._running: Future[None] | None = None
        self._again = False
        self._closed = False
        self._said_missing = False
        self.runs = 0
        self.failures = 0

    @property
    def running(self) -> bool:
        """A catch-up is running (or queued) in the indexer's thread."""
        return self._running is not None and not self._running.done()

    def poke(self) -> None:
        """A commit landed: index it soon (called from the event loop)."""
        if self._closed:
            return
        if self.running:
            self._again = True
            return
        self._again = False
        self._running = self._executor.submit(self._catch_up)
        loop = asyncio.get_running_loop()

        def done(_: Future[None]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nothing more to do
                loop.call_soon_threadsafe(self._after)

        self._running.add_done_callback(done)

    def _after(self) -> None:
        if self._again and not self._closed:
            self.poke()

    async def close(self, seconds: float) -> bool:
        """Index what has landed, for at most `seconds` in all (the rest is indexed by the next
        catch-up, whoever runs it), then stop. True if a catch-up is left running in its thread
        (a store that does not answer): the process must not wait for it at exit."""
        if self._closed:
            return False
        self._closed = True
        deadline = time.monotonic() + seconds
        with contextlib.suppress(TimeoutError):
            if self._running is not None:
                await asyncio.wait_for(asyncio.wrap_future(self._running), seconds)
            left = deadline - time.monotonic()
            if left > 0:
                self._running = self._executor.submit(self._catch_up)
                await asyncio.wait_for(asyncio.wrap_future(self._running), left)
        if self._own:
            self._executor.shutdown(wait=False)
        return self.running

    def _catch_up(self) -> None:
        self.runs += 1
        try:
            done = domains.catch_up(self.uri, self._options, compression_level=self._level)
        except Exception as exc:  # indexing must never stop the writer; the next poke retries
            self.failures += 1
            log.warning(
                "the domain index could not catch up with the archive; searches read the"
                " newest files directly meanwhile",
                extra={"table": self.uri, "error": str(exc)[:500]},
            )
            return
        if done is None and not self._said_missing:
            self._said_missing = True
            log.warning(
                "the archive has no domain index: domain searches scan the whole archive;"
                " `certlake index rebuild` (or `certlake maintain`) builds it",
                extra={"table": self.uri},
            )

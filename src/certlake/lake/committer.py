"""The buffered committer under both archive writers (the live sink, `sink.py`, and backfill's,
`writer.py`): a buffer goes to the table in chunks, from one writer thread, and nothing taken is
lost or written twice.

- Flushes on a full batch, every `flush_interval` seconds (the size trigger writes full chunks
  only, the timer what is buffered when it fires), and on `close()`.
- Writes run in one worker thread (delta-rs releases the GIL), so the event loop goes on while
  Parquet is encoded.
- A failed write keeps its chunk and is retried with back-off until it lands. A chunk keeps its
  commit id across attempts, and after a failure the table is asked whether that commit landed
  anyway (`ArchiveTable.landed`): a timeout can lose the reply of a commit that succeeded, and
  sending it again would write its rows twice.
- Each attempt is planned (`_prepare`) on the newest snapshot of the table: another writer (a
  second `serve` on the same table, as in a rolling restart) may have committed some of the same
  logs meanwhile. A commit that loses that race to the other writer (`CursorConflictError`) is
  planned again at once, without back-off: it is not a failure.
- Skipped ranges go to the side table before the commit that covers them: a crash in between
  leaves them recorded twice at worst, never covered and unrecorded.
- `close()` retries a failing chunk for `close_timeout` seconds, then gives up on what is left;
  `hurry(seconds)` (a stop signal) brings that deadline closer. An attempt still running at the
  deadline (delta-rs cannot be interrupted: a store that does not answer) is abandoned in the
  writer thread, where it lands whole or not at all; `abandoned` says so, and its rows count as
  not written. It, or an index catch-up left running the same way, is noted with
  `stopping.abandon`, so that the process leaves without joining that thread (which would wait
  for as long as the store takes).

A subclass says what its buffer holds: how a chunk is taken from it (`_take`, event loop), what
the chunk commits (`_prepare`, writer thread, at each attempt) and what its landing changes
(`_land`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from abc import ABC, abstractmethod
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

import pyarrow as pa

from certlake.ct.backoff import RetryPolicy
from certlake.lake.indexer import DomainIndexer
from certlake.lake.table import (
    ArchiveTable,
    CursorConflictError,
    record_skipped,
    table_storage_options,
    table_uri,
    unsafe_rename,
)
from certlake.lake.txn import SkippedRange
from certlake.stopping import abandon

log = logging.getLogger(__name__)

_R = TypeVar("_R")
# How long closing waits for the domain index to cover the last commits: what it does not
# cover then, the next catch-up does (searches meanwhile read those files directly).
_INDEX_CLOSE_SECS: Final = 10.0


@dataclass(slots=True)
class Commit:
    """What one chunk writes: rows, the skipped ranges recorded first, and the transaction
    identifiers (log → cursor) the commit carries."""

    batch: pa.Table
    skipped: list[SkippedRange]
    versions: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class Chunk:
    """One prefix of the buffer on its way to the table; retried as is until it lands."""

    taken: int  # buffered items it covers
    rows: int  # rows among them
    commit_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    failures: int = 0
    # Filled in the writer thread:
    commit: Commit | None = None  # what the latest attempt commits
    recorded: list[SkippedRange] = field(default_factory=list)  # in the side table already
    base_version: int | None = None  # table version before the first commit attempt


@dataclass(frozen=True, slots=True)
class WriterSettings:
    """How a committer writes: rows per commit, seconds between timer flushes, zstd level, the
    back-off between failed attempts, and how long closing keeps retrying."""

    batch_size: int
    flush_interval: float
    compression_level: int
    retry: RetryPolicy
    close_timeout: float


@dataclass(slots=True)
class CommitStats:
    rows_written: int = 0
    commits: int = 0
    errors: int = 0  # failed write attempts
    conflicts: int = 0  # attempts planned again because another writer committed first
    last_error: str | None = None


C = TypeVar("C", bound=Chunk)


class Committer(ABC, Generic[C]):
    def __init__(
        self,
        uri: str,
        *,
        storage_options: Mapping[str, str] | None,
        settings: WriterSettings,
        thread_name: str,
    ) -> None:
        """`storage_options`: the configured object-store options (used for s3:// tables only)."""
        self.uri = table_uri(uri)
        self.storage_options = table_storage_options(self.uri, storage_options)
        self.stats = CommitStats()
        self._batch_size = settings.batch_size
        self._flush_interval = settings.flush_interval
        self._level = settings.compression_level
        self._retry = settings.retry
        self._close_timeout = settings.close_timeout
        self._rng = random.Random()
        self._rows = 0  # rows taken and not yet landed, those of the chunk in flight included
        self._inflight: C | None = None
        self._table: ArchiveTable | None = None  # used only in the writer thread
        self._name = thread_name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._wake = asyncio.Event()  # the buffer reached batch_size, or closing
        # Set when closing begins or its deadline moves: waits look at the deadline again.
        self._alarm = asyncio.Event()
        self._closing = False
        self._close_deadline = 0.0
        self._hurry_deadline = float("inf")
        self.abandoned = False  # closing gave up on an attempt still running (it may land)
        self._drain_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.indexer = DomainIndexer(
            self.uri,
            self.storage_options,
            self._level,
            self._executor if unsafe_rename(self.storage_options) else None,
        )

    @property
    def buffered(self) -> int:
        """Rows taken but not yet committed."""
        return self._rows

    async def close(self) -> None:
        """Write everything taken, then stop (see the module doc for failures)."""
        if self._closing:
            return
        self._closing = True
        self._close_deadline = min(time.monotonic() + self._close_timeout, self._hurry_deadline)
        self._alarm.set()
        self._wake.set()
        await self._stopping()
        if self._task is not None:
            await self._task
        else:  # never started: still write what was taken
            await self._drain(full_only=False, until_empty=True)
        self._closed()
        # A store that stopped answering (an attempt abandoned) would not answer the index.
        left = self._close_deadline - time.monotonic()
        indexing = await self.indexer.close(
            0.0 if self.abandoned else max(1.0, min(_INDEX_CLOSE_SECS, left))
        )
        if indexing:
            abandon(f"indexing {self.uri}")
        self._executor.shutdown(wait=not (self.abandoned or indexing))

    def hurry(self, seconds: float) -> None:
        """Closing, begun or to come, gives up on what is left `seconds` from now at the latest."""
        self._hurry_deadline = min(self._hurry_deadline, time.monotonic() + seconds)
        if self._closing:
            self._close_deadline = min(self._close_deadline, self._hurry_deadline)
            self._alarm.set()

    # --- what a subclass provides ---------------------------------------------------------------

    @abstractmethod
    def _pending(self) -> int:
        """Items in the buffer (a chunk's items may stay among them until it lands)."""

    @abstractmethod
    def _take(self) -> C:
        """The next chunk: a prefix of the buffer, at most `batch_size` rows (event loop)."""

    @abstractmethod
    def _prepare(self, table: ArchiveTable, chunk: C) -> Commit:
        """What `chunk` commits given the table's current snapshot (writer thread, at each
        attempt)."""

    @abstractmethod
    async def _land(self, chunk: C, seconds: float) -> None:
        """Apply a chunk that is now in the table; `seconds`: its last attempt (event loop)."""

    @abstractmethod
    async def _stopping(self) -> None:
        """Closing has begun; the buffer is about to be drained."""

    def _closed(self) -> None:
        """The buffer is drained, or closing gave up on what is left."""

    def _failed(self) -> None:
        """A write attempt failed (it is counted in `stats` already)."""

    def _conflicted(self) -> None:
        """An attempt lost to another writer's commit (it is counted in `stats` already)."""

    # --- the writer task ------------------------------------------------------------------------

    def _start_writing(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_flush = loop.time() + self._flush_interval
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_flush - loop.time()))
            self._wake.clear()
            if self._closing:
                break
            if loop.time() >= next_flush:
                await self._drain(full_only=False)
                next_flush = loop.time() + self._flush_interval
            elif self._rows >= self._batch_size:
                await self._drain(full_only=True)
        await self._drain(full_only=False, until_empty=True)

    async def _drain(self, *, full_only: bool, until_empty: bool = False) -> None:
        """Write the buffer in chunks: only full chunks (size trigger: a busy stream must not
        turn into a stream of tiny commits), or what is buffered now (timer), or until it is
        empty (close). A failed chunk is retried with back-off until it lands; when closing,
        until the close timeout."""
        async with self._drain_lock:
            budget = self._pending()
            while self._inflight is not None or self._pending():
                if self._inflight is None and not until_empty:
                    if full_only and self._rows < self._batch_size:
                        return
                    if not full_only and budget <= 0:
                        return
                chunk = self._inflight or self._take()
                self._inflight = chunk
                if not await self._write(chunk):
                    return
                budget -= chunk.taken

    async def _write(self, chunk: C) -> bool:
        """Write `chunk` until it lands (True), or the close timeout passes (False)."""
        while True:
            if self._closing and time.monotonic() >= self._close_deadline:
                return False
            started = time.perf_counter()
            attempt = asyncio.ensure_future(self._in_writer(self._commit, chunk))
            if not await self._until_deadline(attempt):
                attempt.cancel()  # its thread runs on; nothing waits for its outcome any more
                self.abandoned = True
                log.warning(
                    "closing gave up on a commit still running; it may yet land",
                    extra={"table": self.uri, "rows": chunk.rows},
                )
                abandon(f"a commit to {self.uri}")
                return False
            try:
                attempt.result()
            except CursorConflictError as exc:
                self.stats.conflicts += 1
                self._conflicted()
                log.info(
                    "another writer committed to these logs first; planning the commit again",
                    extra={"table": self.uri, "rows": chunk.rows, "error": str(exc)[:200]},
                )
                continue  # the deadline is checked at the top
            except Exception as exc:  # any storage or delta-rs failure: keep the rows, retry
                chunk.failures += 1
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                self._failed()
                log.warning(
                    "archive write failed; keeping the rows and retrying",
                    extra={
                        "table": self.uri,
                        "rows": self._rows,
                        "attempt": chunk.failures,
                        "error": str(exc)[:500],
                    },
                )
                # The exponent is capped: an outage can last for thousands of attempts.
                delay = self._retry.delay(min(chunk.failures, 32), None, self._rng)
                # Only closing (and hurrying it) cuts the back-off short; offers filling the
                # buffer do not.
                pause = asyncio.ensure_future(asyncio.sleep(delay))
                await self._until_deadline(pause, until_alarm=True)
                pause.cancel()
                continue
            self._inflight = None
            self._rows -= chunk.rows
            await self._land(chunk, time.perf_counter() - started)
            self.indexer.poke()
            return True

    async def _until_deadline(self, work: asyncio.Future[None], until_alarm: bool = False) -> bool:
        """Wait until `work` is done (True) or, once closing, its deadline passes (False); with
        `until_alarm`, also until closing begins or its deadline moves (False)."""
        while not work.done():
            timeout = None
            if self._closing:
                timeout = self._close_deadline - time.monotonic()
                if timeout <= 0:
                    return False
            self._alarm.clear()
            alarm = asyncio.ensure_future(self._alarm.wait())
            waiting: set[asyncio.Future[Any]] = {work, alarm}
            try:
                done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=FIRST_COMPLETED)
            finally:
                alarm.cancel()
            if until_alarm and alarm in done and work not in done:
                return False
        return True

    async def _in_writer(self, fn: Callable[..., _R], *args: object) -> _R:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- writer thread --------------------------------------------------------------------------

    def _open_existing(self) -> None:
        """Open the table if it exists (raises `ArchiveSchemaError` if it is not an archive
        table); the first commit creates it otherwise."""
        self._table = ArchiveTable.open(
            self.uri, storage_options=self.storage_options, compression_level=self._level
        )

    def _commit(self, chunk: C) -> None:
        if self._table is None:
            self._table = ArchiveTable.open_or_create(
                self.uri, storage_options=self.storage_options, compression_level=self._level
            )
        table = self._table
        if chunk.base_version is not None and table.landed(chunk.commit_id, chunk.base_version):
            return
        # Planned on the newest snapshot, and checked against it when committing (see
        # `ArchiveTable.append`): what another writer archived since is left out, never
        # written twice.
        table.refresh()
        chunk.commit = commit = self._prepare(table, chunk)
        # Ranges an earlier attempt of this chunk recorded are not recorded again (a plan made
        # on a newer snapshot can only clip them; readers take the union of what is recorded).
        unrecorded = [r for r in commit.skipped if r not in chunk.recorded]
        if unrecorded:
            record_skipped(self.uri, self.storage_options, unrecorded)
            chunk.recorded.extend(unrecorded)
        if not commit.versions and commit.batch.num_rows == 0:
            return
        if chunk.base_version is None:
            chunk.base_version = table.version
        table.append(commit.batch, versions=commit.versions, commit_id=chunk.commit_id)

"""Backfill's one writer: Arrow rows (already converted by the build workers) and skipped ranges
in, Delta commits out (SPEC §8).

It commits with the same table shell as the live sink (`lake/table.ArchiveTable`: zstd, the
archive schema, `seen_date` partitions; the table is created on the first commit if missing)
but takes Arrow tables instead of messages, and keeps none of the live sink's exactly-once
bookkeeping: backfill writes below the live cursors, without transaction identifiers
(docs/architecture.md, "Archive and state agree").

- Flushes when `batch_size` rows are buffered, every `flush_interval` seconds, and on `close()`.
- Memory is bounded: `put` waits while `high_water` rows are buffered.
- Skipped ranges (entries that do not decode, rows that do not fit) go to the side table before
  the rows of their commit, so gap detection never takes them for holes.
- A failed commit keeps its rows and is retried with back-off; a commit whose reply was lost is
  looked up (`ArchiveTable.landed`) before it is retried, so no row is written twice. When
  closing, failures are retried for `close_timeout` seconds, then the rows left are reported.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import pyarrow as pa

from certlake.backfill.build import BuiltRows
from certlake.ct.backoff import RetryPolicy
from certlake.lake.flushing import flush_loop
from certlake.lake.table import ArchiveTable, record_skipped
from certlake.lake.txn import SkippedRange

log = logging.getLogger(__name__)

_R = TypeVar("_R")


@dataclass(slots=True)
class WriterStats:
    rows_written: int = 0
    commits: int = 0  # chunks landed
    errors: int = 0  # failed commit attempts
    last_error: str | None = None


@dataclass(slots=True)
class _Chunk:
    tables: list[pa.Table]
    rows: int
    skipped: list[SkippedRange]
    commit_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    failures: int = 0
    skipped_recorded: bool = False
    base_version: int | None = None  # table version before the first commit attempt


def coalesce_skipped(ranges: Iterable[SkippedRange]) -> list[SkippedRange]:
    """Adjacent or overlapping ranges of one log and kind merged (the first reason kept)."""
    out: list[SkippedRange] = []
    for r in sorted(ranges, key=lambda r: (r.source_url, r.kind.value, r.start)):
        last = out[-1] if out else None
        if (
            last is not None
            and (last.source_url, last.kind) == (r.source_url, r.kind)
            and r.start <= last.end + 1
        ):
            out[-1] = SkippedRange(
                last.source_url, last.start, max(last.end, r.end), last.kind, last.reason
            )
        else:
            out.append(r)
    return out


class RowWriter:
    def __init__(
        self,
        uri: str,
        *,
        storage_options: dict[str, str] | None,
        batch_size: int,
        flush_interval: float,
        compression_level: int,
        high_water: int,
        retry: RetryPolicy,
        close_timeout: float,
    ) -> None:
        self.uri = uri
        self.stats = WriterStats()
        self._options = storage_options
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._level = compression_level
        self._high_water = high_water
        self._retry = retry
        self._close_timeout = close_timeout
        self._rng = random.Random()
        self._tables: list[pa.Table] = []
        self._rows = 0  # rows in `_tables`
        self._skipped: list[SkippedRange] = []
        self._inflight: _Chunk | None = None
        self._room = asyncio.Condition()
        self._wake = asyncio.Event()
        self._closing = False
        self._deadline = 0.0
        self._table: ArchiveTable | None = None  # used only in the writer thread
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backfill-writer")
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the table if it exists (raises `ArchiveSchemaError` if it is not an archive
        table; it is created by the first commit otherwise) and start the writer task."""
        self._table = await self._in_writer(
            lambda: ArchiveTable.open(
                self.uri, storage_options=self._options, compression_level=self._level
            )
        )
        self._task = asyncio.create_task(self._run(), name="backfill writer")

    @property
    def buffered(self) -> int:
        """Rows taken but not yet committed."""
        return self._rows + (self._inflight.rows if self._inflight is not None else 0)

    async def put(self, built: BuiltRows) -> None:
        """Take a chunk's rows and skipped ranges, once fewer than `high_water` rows wait."""
        async with self._room:
            await self._room.wait_for(lambda: self.buffered < self._high_water or self._closing)
        self.put_nowait(built)

    def put_nowait(self, built: BuiltRows) -> None:
        """Take them now, whatever is buffered: for what is fetched while stopping."""
        if built.rows.num_rows:
            self._tables.append(built.rows)
            self._rows += built.rows.num_rows
        self._skipped.extend(built.skipped)
        if self._rows >= self._batch_size:
            self._wake.set()

    async def close(self) -> None:
        """Write everything taken, then stop (see the module doc for failures)."""
        if self._closing:
            return
        self._closing = True
        self._deadline = time.monotonic() + self._close_timeout
        self._wake.set()
        async with self._room:
            self._room.notify_all()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    # --- the writer task ------------------------------------------------------------------------

    async def _run(self) -> None:
        await flush_loop(
            wake=self._wake,
            closing=lambda: self._closing,
            interval=self._flush_interval,
            full=lambda: self._rows >= self._batch_size,
            drain=lambda full_only: self._drain(full_only=full_only),
        )
        await self._drain(full_only=False)

    async def _drain(self, *, full_only: bool) -> None:
        """Commit full chunks only (size trigger), or everything taken so far."""
        while True:
            if self._inflight is None:
                if full_only and self._rows < self._batch_size:
                    return
                if not self._tables and not self._skipped:
                    return
                self._inflight = self._take()
            if not await self._write(self._inflight):
                return
            landed, self._inflight = self._inflight, None
            self.stats.rows_written += landed.rows
            self.stats.commits += 1
            async with self._room:
                self._room.notify_all()

    def _take(self) -> _Chunk:
        tables: list[pa.Table] = []
        rows = 0
        while self._tables and rows < self._batch_size:
            table = self._tables.pop(0)
            tables.append(table)
            rows += table.num_rows
        self._rows -= rows
        skipped, self._skipped = coalesce_skipped(self._skipped), []
        return _Chunk(tables, rows, skipped)

    async def _write(self, chunk: _Chunk) -> bool:
        """Commit `chunk` until it lands (True), or until closing gives up on it (False)."""
        while True:
            try:
                await self._in_writer(self._commit, chunk)
                return True
            except Exception as exc:  # any storage or delta-rs failure: keep the rows, retry
                chunk.failures += 1
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "archive write failed; keeping the rows and retrying",
                    extra={
                        "table": self.uri,
                        "rows": chunk.rows,
                        "attempt": chunk.failures,
                        "error": str(exc)[:500],
                    },
                )
            # The exponent is capped: an outage can last for many attempts.
            delay = self._retry.delay(min(chunk.failures, 32), None, self._rng)
            if self._closing:
                left = self._deadline - time.monotonic()
                if left <= 0:
                    return False
                delay = min(delay, left)
            await asyncio.sleep(delay)

    async def _in_writer(self, fn: Callable[..., _R], *args: object) -> _R:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- writer thread ----------------------------------------------------------------------------

    def _commit(self, chunk: _Chunk) -> None:
        if self._table is None:
            self._table = ArchiveTable.open_or_create(
                self.uri, storage_options=self._options, compression_level=self._level
            )
        table = self._table
        if chunk.skipped and not chunk.skipped_recorded:
            record_skipped(self.uri, self._options, chunk.skipped)
            chunk.skipped_recorded = True
        if not chunk.rows:
            return
        if chunk.base_version is not None and table.landed(chunk.commit_id, chunk.base_version):
            return
        if chunk.base_version is None:
            chunk.base_version = table.version
        table.append(pa.concat_tables(chunk.tables), versions={}, commit_id=chunk.commit_id)

"""Backfill's one writer: Arrow rows (already converted by the build workers) and skipped ranges
in, Delta commits out.

It is the live sink's committer (`committer.py`: chunks, retries, the lost-reply check, skipped
ranges first, the table created on the first commit if missing) taking Arrow tables instead of
messages, and keeping none of the live sink's exactly-once bookkeeping: backfill writes below the
live cursors, without transaction identifiers (docs/architecture.md, "Archive and state agree").

Memory is bounded: `put` waits while `high_water` rows are buffered. When closing, failures are
retried for `close_timeout` seconds (less when hurried: a stop signal); what is left then is
reported by `buffered` and, index by index, by `unwritten`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from certlake.lake.committer import Chunk, Commit, Committer, WriterSettings
from certlake.lake.schema import ARCHIVE_SCHEMA, CERT_INDEX, SOURCE_URL
from certlake.lake.table import ArchiveTable
from certlake.lake.txn import SkippedRange, coalesce_skipped
from certlake.ranges import Range, union_ranges


class Rows(Protocol):
    """A chunk's rows and the indices that became no row (`backfill.build.BuiltRows`)."""

    @property
    def rows(self) -> pa.Table: ...

    @property
    def skipped(self) -> Sequence[SkippedRange]: ...


@dataclass(slots=True, kw_only=True)
class _Chunk(Chunk):
    tables: list[pa.Table]
    skipped: list[SkippedRange]


class RowWriter(Committer[_Chunk]):
    def __init__(
        self,
        uri: str,
        *,
        storage_options: Mapping[str, str] | None,
        settings: WriterSettings,
        high_water: int,
    ) -> None:
        """`storage_options`: the configured object-store options (used for s3:// tables only)."""
        super().__init__(
            uri, storage_options=storage_options, settings=settings, thread_name="backfill-writer"
        )
        self._high_water = high_water
        self._tables: list[pa.Table] = []
        self._skipped: list[SkippedRange] = []
        self._room = asyncio.Condition()

    async def start(self) -> None:
        """Open the table if it exists (raises `ArchiveSchemaError` if it is not an archive
        table; it is created by the first commit otherwise) and start the writer task."""
        await self._in_writer(self._open_existing)
        self._start_writing()

    async def put(self, built: Rows) -> None:
        """Take a chunk's rows and skipped ranges, once fewer than `high_water` rows wait."""
        async with self._room:
            await self._room.wait_for(lambda: self.buffered < self._high_water or self._closing)
        self.put_nowait(built)

    def put_nowait(self, built: Rows) -> None:
        """Take them now, whatever is buffered: for what is fetched while stopping."""
        if built.rows.num_rows:
            self._tables.append(built.rows)
            self._rows += built.rows.num_rows
        self._skipped.extend(built.skipped)
        if self._rows >= self._batch_size:
            self._wake.set()

    def unwritten(self) -> dict[str, list[Range]]:
        """Per log, the indices taken and not written: rows not committed, and skipped ranges
        not recorded (a chunk abandoned in flight counts: it may or may not land)."""
        tables = list(self._tables)
        skipped = list(self._skipped)
        chunk = self._inflight
        if chunk is not None:
            tables.extend(chunk.tables)
            skipped.extend(r for r in chunk.skipped if r not in chunk.recorded)
        spans: dict[str, list[Range]] = {}
        for table in tables:
            urls, indices = table.column(SOURCE_URL).to_pylist(), table.column(CERT_INDEX)
            for url, index in zip(urls, indices.to_pylist(), strict=True):
                spans.setdefault(url, []).append((index, index))
        for r in skipped:
            spans.setdefault(r.source_url, []).append((r.start, r.end))
        return {url: union_ranges(ranges) for url, ranges in spans.items()}

    # --- the committer's hooks ------------------------------------------------------------------

    def _pending(self) -> int:
        return len(self._tables) + len(self._skipped)

    def _take(self) -> _Chunk:
        tables: list[pa.Table] = []
        rows = 0
        while self._tables and rows < self._batch_size:
            table = self._tables.pop(0)
            tables.append(table)
            rows += table.num_rows
        taken = len(tables) + len(self._skipped)
        skipped, self._skipped = coalesce_skipped(self._skipped), []
        return _Chunk(taken=taken, rows=rows, tables=tables, skipped=skipped)

    def _prepare(self, table: ArchiveTable, chunk: _Chunk) -> Commit:
        batch = pa.concat_tables(chunk.tables) if chunk.tables else ARCHIVE_SCHEMA.empty_table()
        return Commit(batch, chunk.skipped)

    async def _land(self, chunk: _Chunk, seconds: float) -> None:
        self.stats.rows_written += chunk.rows
        self.stats.commits += 1
        async with self._room:
            self._room.notify_all()

    async def _stopping(self) -> None:
        async with self._room:
            self._room.notify_all()

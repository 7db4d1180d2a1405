"""The side table of tree heads (`<archive>/_certlake_heads`): the shell.

`append_heads`, `read_heads`, `verified_heads` and `verified_size` do blocking I/O; on an event
loop they run in a thread. `HeadsRecorder` is the live server's writer: the watchers hand it
records without waiting, and it commits them in the background, one commit at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Final

import pyarrow.compute as pc
from deltalake import write_deltalake

from certlake.ct.verify import TreeHead
from certlake.lake.heads_rows import HeadKind, HeadRecord, batch_to_records, records_to_batch
from certlake.lake.schema import HEADS_DIR
from certlake.lake.table import child_uri, open_table

log = logging.getLogger(__name__)

# How long a first piece of evidence waits for the rest of its burst (a mismatch is often
# followed by the re-fetch's own records) before it is written: one commit rather than several.
EVIDENCE_DELAY: Final = 0.2


def heads_uri(uri: str) -> str:
    """Where the heads table of the archive table at `uri` lives."""
    return child_uri(uri, HEADS_DIR)


def _options(storage_options: Mapping[str, str] | None) -> dict[str, str] | None:
    return None if storage_options is None else dict(storage_options)


def append_heads(
    uri: str, storage_options: Mapping[str, str] | None, records: Sequence[HeadRecord]
) -> None:
    """Append `records` to the heads table of the archive at `uri` in one commit (the table is
    created on first use). Nothing is written for no records."""
    if not records:
        return
    batch = records_to_batch(records, recorded_us=int(time.time() * 1_000_000))
    write_deltalake(heads_uri(uri), batch, mode="append", storage_options=_options(storage_options))


def read_heads(
    uri: str, storage_options: Mapping[str, str] | None = None, source_url: str | None = None
) -> list[HeadRecord]:
    """Every record of the heads table of the archive at `uri` (of one log with `source_url`);
    empty when there is no such table. A record may repeat (written again after a write whose
    outcome was lost); readers take them as a set."""
    table = open_table(heads_uri(uri), storage_options, role="heads")
    if table is None:
        return []
    data = table.to_pyarrow_table()
    if source_url is not None:
        data = data.filter(pc.equal(data.column("source_url"), source_url))
    return batch_to_records(data)


def verified_heads(uri: str, storage_options: Mapping[str, str] | None) -> dict[str, TreeHead]:
    """The newest verified head of each log in the heads table of the archive at `uri` (none for
    a log never verified; empty without the table). Only the verified rows' head columns are
    read: the table holds a row per log every flush, evidence and backfill's ranges besides."""
    table = open_table(heads_uri(uri), storage_options, role="heads")
    if table is None:
        return {}
    columns = ["source_url", "tree_size", "root_hash", "timestamp_ms", "signature"]
    data = table.to_pyarrow_dataset().to_table(
        columns=columns, filter=pc.field("kind") == HeadKind.VERIFIED.value
    )
    newest = data.group_by("source_url").aggregate([("tree_size", "max")])
    newest = newest.rename_columns({"tree_size_max": "tree_size"})
    rows = data.join(newest, keys=["source_url", "tree_size"], join_type="inner").to_pylist()
    return {
        r["source_url"]: TreeHead(r["tree_size"], r["root_hash"], r["timestamp_ms"], r["signature"])
        for r in rows
    }


def verified_size(uri: str, storage_options: Mapping[str, str] | None, source_url: str) -> int:
    """The largest verified tree size recorded for the log `source_url` (0: none): its archived
    rows below this index are covered by a signed head."""
    head = verified_heads(uri, storage_options).get(source_url)
    return 0 if head is None else head.size


class HeadsRecorder:
    """Buffers records and commits them to the heads table: every `flush_interval` seconds,
    within about `EVIDENCE_DELAY` of a piece of evidence, and on `close()`. A failed write keeps
    its records for the next attempt. `record` is called on the event loop's thread."""

    def __init__(
        self, uri: str, storage_options: Mapping[str, str] | None, flush_interval: float = 30.0
    ) -> None:
        self.uri = uri
        self.storage_options = _options(storage_options)
        self.flush_interval = flush_interval
        # A verified head of size N means the log's first N entries reproduced its root, so
        # every verified head of that log below N is a prefix of what it already proves: only
        # the newest per log is worth a row, and a log verified every few seconds costs one row
        # a flush rather than one per head.
        self._verified: dict[str, HeadRecord] = {}
        self._evidence: list[HeadRecord] = []
        self._urgent = False  # evidence is buffered: write it soon
        self._wake = asyncio.Event()
        self._closing = False
        # The write under way: only ever one, so that two commits never race each other for the
        # table's next version (and a write left running by a cancelled flush is waited for).
        self._inflight: asyncio.Future[None] | None = None
        self._inflight_records = 0
        self.written = 0
        self.failures = 0

    @property
    def pending(self) -> int:
        """Records not known to be written yet: buffered, or in the write under way."""
        return len(self._verified) + len(self._evidence) + self._inflight_records

    def record(self, rec: HeadRecord) -> None:
        """Buffer `rec`; returns at once."""
        if rec.is_evidence:
            self._evidence.append(rec)
            self._urgent = True
            self._wake.set()
        else:
            self._keep_verified(rec)

    def _keep_verified(self, rec: HeadRecord) -> None:
        held = self._verified.get(rec.source_url)
        if held is None or _newer(rec, held):
            self._verified[rec.source_url] = rec

    async def run(self) -> None:
        """Flush until `close()`: every `flush_interval`, and soon after evidence arrives (while
        writes succeed: after a failure, the store is given the whole interval)."""
        loop = asyncio.get_running_loop()
        failing = False
        while not self._closing:
            deadline = loop.time() + self.flush_interval
            while not self._closing and (failing or not self._urgent):
                left = deadline - loop.time()
                if left <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
            if self._closing:
                return
            if self._urgent and not failing:
                await asyncio.sleep(EVIDENCE_DELAY)
            failing = not await self.flush()

    async def close(self) -> None:
        """Stop `run` and write what is buffered (once; what a failure leaves stays `pending`)."""
        self._closing = True
        self._wake.set()
        await self.flush()

    async def flush(self) -> bool:
        """Write what is buffered in one commit; False if the write failed (its records are kept
        for the next flush)."""
        while self._inflight is not None:
            await asyncio.wait([self._inflight])
        records = [*self._evidence, *self._verified.values()]
        self._evidence, self._verified, self._urgent = [], {}, False
        if not records:
            return True
        write = asyncio.ensure_future(
            asyncio.to_thread(append_heads, self.uri, self.storage_options, records)
        )
        self._inflight, self._inflight_records = write, len(records)
        # Settled by a callback, not after the await: a flush cancelled while waiting (its
        # `run` task cancelled at shutdown) leaves the thread running, and its outcome must
        # still reach the buffer.
        write.add_done_callback(functools.partial(self._settle, records))
        await asyncio.wait([write])
        return not write.cancelled() and write.exception() is None

    def _settle(self, records: list[HeadRecord], write: asyncio.Future[None]) -> None:
        self._inflight, self._inflight_records = None, 0
        error = None if write.cancelled() else write.exception()
        if not write.cancelled() and error is None:
            self.written += len(records)
            return
        # Kept when cancelled too (the event loop shutting down), though the commit may have
        # landed: a record written twice is still the same evidence, one lost is not.
        self.failures += 1
        log.warning(
            "heads table write failed; keeping the records for the next attempt",
            extra={
                "table": heads_uri(self.uri),
                "records": len(records),
                "error": "cancelled" if error is None else f"{type(error).__name__}: {error}"[:500],
            },
        )
        self._restore(records)

    def _restore(self, records: Sequence[HeadRecord]) -> None:
        evidence = [r for r in records if r.is_evidence]
        self._evidence[:0] = evidence
        for rec in records:
            if not rec.is_evidence:
                self._keep_verified(rec)


def _newer(rec: HeadRecord, held: HeadRecord) -> bool:
    return (rec.head.size, rec.head.timestamp_ms) > (held.head.size, held.head.timestamp_ms)

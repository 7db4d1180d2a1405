"""The live archive sink: a parallel consumer of the parsed entries (SPEC §6).

The producer (the event loop that feeds the stream) calls `offer` / `offer_unparseable`; both
return at once and never raise. A background task writes the buffer to Delta when it holds
`batch_size` rows, every `flush_interval` seconds, and on `close()`. Writes run in one worker
thread (delta-rs releases the GIL), so the loop keeps streaming while Parquet is encoded.

Nothing offered is lost silently:
- a failed write keeps its rows and is retried with back-off; a commit whose reply was lost is
  looked up before it is retried (`ArchiveTable.landed`), so it is never written twice;
- memory is bounded by `max_buffer_records`; past it, entries are dropped and recorded as index
  ranges in the side table (`_certlake_skipped`, kind `dropped`) for backfill to refill;
- undecodable entries and messages that do not fit the schema are recorded there too
  (kinds `unparseable`, `malformed`): passed, never mistaken for holes.

With `exactly_once` (the live server), each commit carries the per-log cursor as a Delta
transaction identifier (see `txn.py`), rows below a log's committed cursor are not written again,
and `committed_cursor` tells the state writer how far the state file may claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final, TypeVar

import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from certlake.certs.message import CertMessage
from certlake.config import Config, DeltaSinkConfig, s3_storage_options
from certlake.ct.backoff import RetryPolicy
from certlake.lake.flushing import flush_loop
from certlake.lake.rows import split_malformed
from certlake.lake.table import ArchiveTable, compact, record_skipped, table_uri, unsafe_rename
from certlake.lake.txn import CommitPlan, OpenRange, SkipKind, SkippedRange, plan_commit

log = logging.getLogger(__name__)

_R = TypeVar("_R")
_FLUSH_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


# One set of defaults: the configuration's.
_DEFAULTS: Final = DeltaSinkConfig()


class SinkMetrics:
    """The sink's Prometheus collectors, on the registry passed in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "certlake_sink_records_written", "Rows committed to the archive", registry=registry
        )
        self.flushes = Counter("certlake_sink_flushes", "Commits to the archive", registry=registry)
        self.errors = Counter(
            "certlake_sink_flush_errors",
            "Failed archive writes (the rows are kept and the write retried)",
            registry=registry,
        )
        self.buffer = Gauge(
            "certlake_sink_buffer_records", "Rows waiting to be written", registry=registry
        )
        self.flush_seconds = Histogram(
            "certlake_sink_flush_seconds",
            "Time to convert and commit one batch",
            buckets=_FLUSH_BUCKETS,
            registry=registry,
        )
        self.skipped = Counter(
            "certlake_sink_skipped_entries",
            "Entries passed without a row, by kind (unparseable, malformed, dropped, gap)",
            ["kind"],
            registry=registry,
        )
        self.duplicates = Counter(
            "certlake_sink_duplicates",
            "Entries offered again below their log's archived cursor, not written twice",
            registry=registry,
        )
        self.compactions = Counter(
            "certlake_sink_compactions", "Compaction runs, by result", ["result"], registry=registry
        )


@dataclass(slots=True)
class _Chunk:
    """One prefix of the buffer on its way to the table; retried as is until it lands."""

    items: list[CertMessage | SkippedRange]
    taken: int  # buffer items it covers
    rows: int  # messages among them
    known: dict[str, int | None]  # committed cursors known when it was taken
    commit_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    failures: int = 0
    # Filled in the writer thread on the first attempt:
    plan: CommitPlan | None = None
    batch: pa.Table | None = None
    read: dict[str, int | None] = field(default_factory=dict)  # cursors read from the table
    skipped_recorded: bool = False
    base_version: int | None = None  # table version before the first commit attempt


@dataclass(slots=True)
class SinkStats:
    rows_written: int = 0
    commits: int = 0
    errors: int = 0
    duplicates: int = 0
    skipped: dict[SkipKind, int] = field(default_factory=lambda: dict.fromkeys(SkipKind, 0))
    last_error: str | None = None


class DeltaSink:
    def __init__(
        self,
        table_path: str,
        *,
        registry: CollectorRegistry,
        storage_options: dict[str, str] | None = None,
        batch_size: int = _DEFAULTS.batch_size,
        flush_interval: float = _DEFAULTS.flush_interval_secs,
        compression_level: int = _DEFAULTS.compression_level,
        max_buffer_records: int = _DEFAULTS.max_buffer_records,
        compaction_interval: float = _DEFAULTS.compaction_interval_secs,
        exactly_once: bool = True,
        retry: RetryPolicy | None = None,
        close_timeout: float = 30.0,
    ) -> None:
        """`exactly_once` is for the live server: entries per log arrive in index order and the
        table's transaction identifiers keep the cursor. Batch writers whose entries arrive out of
        order (backfill) pass False. `compaction_interval` 0 disables compaction."""
        self.uri = table_uri(table_path)
        self.storage_options = storage_options
        self.metrics = SinkMetrics(registry)
        self.stats = SinkStats()
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._level = compression_level
        self._max_rows = max_buffer_records
        self._compaction_interval = compaction_interval
        self._exactly_once = exactly_once
        self._retry = retry or RetryPolicy(initial_delay=1.0, max_delay=60.0)
        self._close_timeout = close_timeout
        self._rng = random.Random()

        self._buf: list[CertMessage | OpenRange] = []
        self._rows = 0
        self._open: dict[str, OpenRange] = {}  # per log: the skipped range at its tail, if any
        self._next: dict[str, int] = {}  # per log: lowest index still accepted
        self._first: dict[str, int] = {}  # per log: first index offered in this process
        self._committed: dict[str, int | None] = {}  # per log: cursor in the table, when known
        self._inflight: _Chunk | None = None

        self._table: ArchiveTable | None = None  # used only in the writer thread
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="delta-sink")
        self._wake = asyncio.Event()  # the buffer reached batch_size, or closing
        self._stop = asyncio.Event()
        self._closing = False
        self._close_deadline = 0.0
        self._drain_lock = asyncio.Lock()
        self._compact_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._compactor: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, config: Config, registry: CollectorRegistry) -> DeltaSink | None:
        """The live sink `config` asks for, or None when `delta_sink.enabled` is false."""
        sink = config.delta_sink
        if not sink.enabled:
            return None
        options = (
            s3_storage_options(config.storage.s3) if sink.table_path.startswith("s3://") else None
        )
        return cls(
            sink.table_path,
            registry=registry,
            storage_options=options,
            batch_size=sink.batch_size,
            flush_interval=float(sink.flush_interval_secs),
            compression_level=sink.compression_level,
            max_buffer_records=sink.max_buffer_records,
            compaction_interval=float(sink.compaction_interval_secs),
        )

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self, source_urls: Iterable[str] = ()) -> None:
        """Open the table if it exists (it is created by the first flush otherwise), load the
        committed cursors of `source_urls` (see `committed_cursor`), start the background tasks.
        Raises `ArchiveSchemaError` if the table there is not an archive table."""
        await self._in_writer(self._open_existing)
        await self.load_committed(source_urls)
        self._task = asyncio.create_task(self._run(), name="delta-sink")
        if self._compaction_interval > 0:
            self._compactor = asyncio.create_task(self._compact_loop(), name="delta-compact")

    async def load_committed(self, source_urls: Iterable[str]) -> dict[str, int | None]:
        """Read the committed cursors of `source_urls` from the table (I/O, in the writer
        thread) so that `committed_cursor` knows them; returns them."""
        wanted = [u for u in dict.fromkeys(source_urls) if u not in self._committed]
        if self._exactly_once and wanted:
            read = await self._in_writer(self._read_cursors, wanted)
            for url, value in read.items():
                self._committed.setdefault(url, value)
        return {u: self._committed.get(u) for u in source_urls}

    async def close(self) -> None:
        """Flush everything buffered and stop. A write that keeps failing is retried for up to
        `close_timeout` seconds; what is still unwritten then is reported (nothing claims it:
        the committed cursors, and so the state file, stay below it)."""
        if self._closing:
            return
        self._closing = True
        self._close_deadline = time.monotonic() + self._close_timeout
        self._stop.set()
        self._wake.set()
        if self._compactor is not None:
            self._compactor.cancel()
            await asyncio.gather(self._compactor, return_exceptions=True)
        if self._task is not None:
            await self._task
        else:  # never started: still write what was offered
            await self._drain(full_only=False, until_empty=True)
        if self._buf:
            log.error(
                "archive sink closed with entries unwritten; they will be fetched again",
                extra={"table": self.uri, "rows": self._rows, "error": self.stats.last_error},
            )
        self._executor.shutdown(wait=True)

    # --- producer side (event loop; never blocks, never raises) ---------------------------------

    def offer(self, msg: CertMessage) -> None:
        """Take one message for the archive."""
        if type(msg) is not CertMessage:
            self._reject(msg)
            return
        url, index = msg.source_url, msg.cert_index
        if type(url) is not str or type(index) is not int or index < 0:
            self._reject(msg)
            return
        if not self._accept(url, index):
            return
        if self._rows >= self._max_rows:
            self._skip(url, index, SkipKind.DROPPED, "archive buffer full")
            return
        self._buf.append(msg)
        self._rows += 1
        self._open.pop(url, None)
        self.metrics.buffer.set(self._rows)
        if self._rows >= self._batch_size:
            self._wake.set()

    def offer_unparseable(self, source_url: str, index: int, reason: str) -> None:
        """Record that entry `index` of `source_url` was passed without a message (its bytes or
        its certificate do not decode). Every index the producer passes must be offered one way
        or the other; an index never offered is recorded as a gap for backfill."""
        if type(source_url) is not str or type(index) is not int or index < 0:
            self._reject((source_url, index))
            return
        if self._accept(source_url, index):
            self._skip(source_url, index, SkipKind.UNPARSEABLE, str(reason)[:500])

    def committed_cursor(self, source_url: str) -> int | None:
        """How far the state file may claim for `source_url` while the sink is enabled: every
        index below it is in the table or recorded in the side table. Before this process's first
        commit of the log it is the table's cursor if `load_committed` read one, else the first
        index offered in this process; None when the sink knows nothing of the log (nothing was
        offered, so the producer has passed nothing)."""
        committed = self._committed.get(source_url)
        return committed if committed is not None else self._first.get(source_url)

    @property
    def buffered(self) -> int:
        return self._rows

    async def flush(self) -> None:
        """Write what is buffered now (returns once written, retrying failures)."""
        await self._drain(full_only=False)

    def _accept(self, url: str, index: int) -> bool:
        if not self._exactly_once:
            return True
        floor = self._next.get(url)
        if floor is None:
            self._first[url] = index
            committed = self._committed.get(url)
            floor = committed if committed is not None else index
        if index < floor:
            self.stats.duplicates += 1
            self.metrics.duplicates.inc()
            return False
        self._next[url] = index + 1
        return True

    def _skip(self, url: str, index: int, kind: SkipKind, reason: str) -> None:
        tail = self._open.get(url)
        if tail is not None and tail.kind is kind and tail.end + 1 == index:
            tail.end = index
        else:
            tail = OpenRange(url, index, index, kind, reason)
            self._open[url] = tail
            self._buf.append(tail)
        if kind is SkipKind.DROPPED:
            # Counted here: the decision is made now. Other kinds are counted once committed.
            self.stats.skipped[kind] += 1
            self.metrics.skipped.labels(kind.value).inc()
            if tail.start == index:
                log.error(
                    "archive buffer full; dropping entries (recorded for backfill)",
                    extra={"log": url, "index": index, "bound": self._max_rows},
                )

    def _reject(self, what: object) -> None:
        self.stats.skipped[SkipKind.MALFORMED] += 1
        self.metrics.skipped.labels(SkipKind.MALFORMED.value).inc()
        log.error("archive sink: not an archivable message: %.200r", what)

    # --- writer side ---------------------------------------------------------------------------

    async def _run(self) -> None:
        await flush_loop(
            wake=self._wake,
            closing=lambda: self._closing,
            interval=self._flush_interval,
            full=lambda: self._rows >= self._batch_size,
            drain=lambda full_only: self._drain(full_only=full_only),
        )
        await self._drain(full_only=False, until_empty=True)

    async def _drain(self, *, full_only: bool, until_empty: bool = False) -> None:
        """Write the buffer in chunks of at most `batch_size` rows: only full chunks (size
        trigger: a busy stream must not turn into a stream of tiny commits), or what is buffered
        now (timer), or until it is empty (close). A failed chunk is retried with back-off until
        it lands; when closing, until the close timeout."""
        async with self._drain_lock:
            budget = len(self._buf)
            while self._inflight is not None or self._buf:
                if self._inflight is None and not until_empty:
                    if full_only and self._rows < self._batch_size:
                        return
                    if not full_only and budget <= 0:
                        return
                chunk = self._inflight or self._take_chunk()
                self._inflight = chunk
                if not await self._write(chunk):
                    return
                budget -= chunk.taken

    async def _write(self, chunk: _Chunk) -> bool:
        """Write `chunk` until it lands (True), or the close timeout passes (False)."""
        while True:
            started = time.perf_counter()
            try:
                await self._in_writer(self._write_chunk, chunk)
            except Exception as exc:  # any storage or delta-rs failure: keep the rows, retry
                chunk.failures += 1
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                self.metrics.errors.inc()
                log.warning(
                    "archive write failed; keeping %d rows and retrying",
                    self._rows,
                    extra={"table": self.uri, "attempt": chunk.failures, "error": str(exc)[:500]},
                )
                if self._closing and time.monotonic() >= self._close_deadline:
                    return False
                # The exponent is capped: an outage can last for thousands of attempts.
                delay = self._retry.delay(min(chunk.failures, 32), None, self._rng)
                if self._closing:
                    await asyncio.sleep(min(delay, self._close_deadline - time.monotonic()))
                    continue
                # Only closing cuts the back-off short; offers filling the buffer do not.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                continue
            self.metrics.flush_seconds.observe(time.perf_counter() - started)
            self._inflight = None
            self._land(chunk)
            return True

    def _take_chunk(self) -> _Chunk:
        items: list[CertMessage | SkippedRange] = []
        rows = 0
        taken = 0
        for item in self._buf:
            if isinstance(item, OpenRange):
                if self._open.get(item.source_url) is item:
                    del self._open[item.source_url]  # frozen from now on
                items.append(item.frozen())
            else:
                if rows == self._batch_size:
                    break
                items.append(item)
                rows += 1
            taken += 1
        urls = {i.source_url for i in items}
        known = {u: self._committed[u] for u in urls if u in self._committed}
        return _Chunk(items=items, taken=taken, rows=rows, known=known)

    def _land(self, chunk: _Chunk) -> None:
        """Apply a chunk that is now in the table (event loop)."""
        plan = chunk.plan
        assert plan is not None and chunk.batch is not None
        del self._buf[: chunk.taken]
        self._rows -= chunk.rows
        self.metrics.buffer.set(self._rows)
        for url, value in chunk.read.items():
            self._committed.setdefault(url, value)
        self._committed.update(plan.versions)
        written = chunk.batch.num_rows
        self.stats.rows_written += written
        self.metrics.records.inc(written)
        if plan.versions or written:
            self.stats.commits += 1
            self.metrics.flushes.inc()
        self.stats.duplicates += plan.duplicates
        self.metrics.duplicates.inc(plan.duplicates)
        for r in plan.skipped:
            if r.kind is not SkipKind.DROPPED:
                self.stats.skipped[r.kind] += r.end - r.start + 1
                self.metrics.skipped.labels(r.kind.value).inc(r.end - r.start + 1)
            if r.kind is SkipKind.MALFORMED:
                log.error(
                    "message does not fit the archive; recorded as skipped",
                    extra={"log": r.source_url, "index": r.start, "reason": r.reason},
                )
            elif r.kind is SkipKind.GAP:
                log.warning(
                    "entries never offered to the archive; recorded for backfill",
                    extra={"log": r.source_url, "start": r.start, "end": r.end},
                )

    async def _in_writer(self, fn: Callable[..., _R], *args: object) -> _R:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- writer thread -------------------------------------------------------------------------

    def _open_existing(self) -> None:
        self._table = ArchiveTable.open(
            self.uri, storage_options=self.storage_options, compression_level=self._level
        )

    def _read_cursors(self, urls: list[str]) -> dict[str, int | None]:
        if self._table is None:
            self._open_existing()
        table = self._table
        if table is None:
            return dict.fromkeys(urls)
        return {url: table.committed_cursor(url) for url in urls}

    def _write_chunk(self, chunk: _Chunk) -> None:
        if self._table is None:
            self._table = ArchiveTable.open_or_create(
                self.uri, storage_options=self.storage_options, compression_level=self._level
            )
        table = self._table
        if chunk.plan is None:
            if self._exactly_once:
                missing = [u for u in {i.source_url for i in chunk.items} if u not in chunk.known]
                chunk.read = {url: table.committed_cursor(url) for url in missing}
                plan = plan_commit(chunk.items, {**chunk.known, **chunk.read})
            else:
                plan = CommitPlan(
                    rows=[i for i in chunk.items if isinstance(i, CertMessage)],
                    skipped=[i for i in chunk.items if isinstance(i, SkippedRange)],
                )
            batch, malformed = split_malformed(plan.rows)
            plan.add_malformed(malformed)
            chunk.plan, chunk.batch = plan, batch
        plan, batch = chunk.plan, chunk.batch
        assert batch is not None
        if chunk.base_version is not None and table.landed(chunk.commit_id, chunk.base_version):
            return
        if plan.skipped and not chunk.skipped_recorded:
            # Before the commit that moves the cursors past them: a crash in between leaves
            # them recorded twice at worst, never claimed and unrecorded.
            record_skipped(self.uri, self.storage_options, plan.skipped)
            chunk.skipped_recorded = True
        if not plan.versions and batch.num_rows == 0:
            return
        if chunk.base_version is None:
            chunk.base_version = table.version
        table.append(batch, versions=plan.versions, commit_id=chunk.commit_id)

    # --- maintenance ---------------------------------------------------------------------------

    async def _compact_loop(self) -> None:
        while True:
            await asyncio.sleep(self._compaction_interval)
            await self.compact_now()

    async def compact_now(self) -> None:
        """Compact the table once (no-op before it exists). Runs beside the writer — appends and
        compaction do not conflict — except with unsafe S3 renames, where it takes the writer's
        turn because two concurrent commits could overwrite each other.

        Never two at once: delta-rs 1.6.6 lets two concurrent compactions of the same files both
        commit (removes with dataChange=false are not treated as conflicting), which duplicates
        every row they rewrote."""
        async with self._compact_lock:
            await self._compact()

    async def _compact(self) -> None:
        args = (self.uri, self.storage_options, self._level)
        try:
            if unsafe_rename(self.storage_options):
                metrics = await self._in_writer(compact, *args)
            else:
                metrics = await asyncio.to_thread(compact, *args)
        except Exception as exc:  # a failed compaction leaves the table as it was
            self.metrics.compactions.labels("error").inc()
            log.warning("archive compaction failed", extra={"table": self.uri, "error": str(exc)})
            return
        if metrics is None:
            return
        self.metrics.compactions.labels("ok").inc()
        log.info("archive compacted", extra={"table": self.uri, **_plain(metrics)})


def _plain(metrics: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float | str)}

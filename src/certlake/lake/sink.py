"""The live archive sink: a parallel consumer of the parsed entries.

The producer (the event loop that feeds the stream) calls `offer` / `offer_unparseable`; both
return at once and never raise. The buffer goes to Delta through the committer (`committer.py`:
flushes on `batch_size` rows, every `flush_interval` seconds and on `close()`, in a writer
thread; failed writes retried, never written twice), so the loop keeps streaming while Parquet
is encoded.

Nothing offered is lost silently:
- memory is bounded by `max_buffer_records`; past it, entries are dropped and recorded as index
  ranges in the side table (`_certlake_skipped`, kind `dropped`) for backfill to refill;
- undecodable entries and messages that do not fit the schema are recorded there too
  (kinds `unparseable`, `malformed`): passed, never mistaken for holes.

Exactly once: each commit carries the per-log cursor as a Delta transaction identifier (see
`txn.py`), rows below a log's committed cursor are not written again, and `committed_cursor`
tells the state writer how far the state file may claim. Every commit is planned against the
cursors of the snapshot it is committed on, and delta-rs refuses it if another writer moved one
of them meanwhile (then it is planned again): two servers writing one table (a rolling restart
that starts the new one before stopping the old) archive each index once between them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from certlake.certs.message import CertMessage
from certlake.config import Config, DeltaSinkConfig, s3_storage_options
from certlake.ct.backoff import RetryPolicy
from certlake.lake.committer import Chunk, Commit, CommitStats, Committer, WriterSettings
from certlake.lake.maintain import maintain
from certlake.lake.rows import WRITE_SCHEMA, split_malformed
from certlake.lake.table import ArchiveTable, cursors_in, unsafe_rename
from certlake.lake.txn import CommitPlan, OpenRange, SkipKind, SkippedRange, plan_commit

log = logging.getLogger(__name__)

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
        self.conflicts = Counter(
            "certlake_sink_commit_conflicts",
            "Commits planned again because another writer had committed the same logs first",
            registry=registry,
        )


@dataclass(slots=True, kw_only=True)
class _Chunk(Chunk):
    items: list[CertMessage | SkippedRange]
    # Filled in the writer thread at each attempt:
    plan: CommitPlan | None = None
    cursors: dict[str, int | None] = field(default_factory=dict)  # what it was planned against


@dataclass(slots=True)
class SinkStats(CommitStats):
    duplicates: int = 0
    skipped: dict[SkipKind, int] = field(default_factory=lambda: dict.fromkeys(SkipKind, 0))
    last_commit: float | None = None  # Unix seconds of this process's latest commit
    failing: bool = False  # the latest write attempt failed; its rows are kept and retried


class DeltaSink(Committer[_Chunk]):
    stats: SinkStats

    def __init__(
        self,
        table_path: str,
        *,
        registry: CollectorRegistry,
        storage_options: Mapping[str, str] | None = None,
        batch_size: int = _DEFAULTS.batch_size,
        flush_interval: float = _DEFAULTS.flush_interval_secs,
        compression_level: int = _DEFAULTS.compression_level,
        max_buffer_records: int = _DEFAULTS.max_buffer_records,
        compaction_interval: float = _DEFAULTS.compaction_interval_secs,
        retention_hours: int = _DEFAULTS.retention_hours,
        retry: RetryPolicy | None = None,
        close_timeout: float = 30.0,
    ) -> None:
        """Entries of each log must be offered in index order. `storage_options`: the
        configured object-store options (used for s3:// tables only). `compaction_interval`:
        how often `lake.maintain` runs (0: never)."""
        settings = WriterSettings(
            batch_size,
            flush_interval,
            compression_level,
            retry or RetryPolicy(initial_delay=1.0, max_delay=60.0),
            close_timeout,
        )
        super().__init__(
            table_path, storage_options=storage_options, settings=settings, thread_name="delta-sink"
        )
        self.metrics = SinkMetrics(registry)
        self.stats = SinkStats()
        self._max_rows = max_buffer_records
        self._compaction_interval = compaction_interval
        self._retention_hours = retention_hours

        self._buf: list[CertMessage | OpenRange] = []
        self._open: dict[str, OpenRange] = {}  # per log: the skipped range at its tail, if any
        self._next: dict[str, int] = {}  # per log: lowest index still accepted
        self._first: dict[str, int] = {}  # per log: first index offered in this process
        self._committed: dict[str, int | None] = {}  # per log: cursor in the table, when known
        self._compact_lock = asyncio.Lock()
        self._compactor: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, config: Config, registry: CollectorRegistry) -> DeltaSink | None:
        """The live sink `config` asks for, or None when `delta_sink.enabled` is false."""
        sink = config.delta_sink
        if not sink.enabled:
            return None
        return cls(
            sink.table_path,
            registry=registry,
            storage_options=s3_storage_options(config.storage.s3),
            batch_size=sink.batch_size,
            flush_interval=float(sink.flush_interval_secs),
            compression_level=sink.compression_level,
            max_buffer_records=sink.max_buffer_records,
            compaction_interval=float(sink.compaction_interval_secs),
            retention_hours=sink.retention_hours,
        )

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self, source_urls: Iterable[str] = ()) -> None:
        """Open the table if it exists (it is created by the first flush otherwise), load the
        committed cursors of `source_urls` (see `committed_cursor`), start the background tasks.
        Raises `ArchiveSchemaError` if the table there is not an archive table."""
        await self._in_writer(self._open_existing)
        await self.load_committed(source_urls)
        self._start_writing()
        if self._compaction_interval > 0:
            self._compactor = asyncio.create_task(self._compact_loop(), name="delta-compact")

    async def load_committed(self, source_urls: Iterable[str]) -> dict[str, int | None]:
        """Read the committed cursors of `source_urls` from the table (I/O, in the writer
        thread) so that `committed_cursor` knows them; returns them."""
        wanted = [u for u in dict.fromkeys(source_urls) if u not in self._committed]
        if wanted:
            read = await self._in_writer(self._read_cursors, wanted)
            for url, value in read.items():
                self._committed.setdefault(url, value)
        return {u: self._committed.get(u) for u in source_urls}

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
        # The archive has no column for the stream's payloads (~9 KB of the ~17 KB a message
        # holds); the stream keeps them while it needs them.
        self._buf.append(msg._replace(full=b"", lite=b"", domains=b""))
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

    async def flush(self) -> None:
        """Write what is buffered now (returns once written, retrying failures)."""
        await self._drain(full_only=False)

    def _accept(self, url: str, index: int) -> bool:
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
        log.error("archive sink: not an archivable message", extra={"value": repr(what)[:200]})

    # --- the committer's hooks (event loop) -----------------------------------------------------

    def _pending(self) -> int:
        return len(self._buf)

    def _take(self) -> _Chunk:
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
        return _Chunk(items=items, taken=taken, rows=rows)

    async def _land(self, chunk: _Chunk, seconds: float) -> None:
        plan, commit = chunk.plan, chunk.commit
        assert plan is not None and commit is not None
        self.stats.failing = False
        self.metrics.flush_seconds.observe(seconds)
        del self._buf[: chunk.taken]
        self.metrics.buffer.set(self._rows)
        # The table's cursors, moved by this commit or by another writer's: how far it holds.
        self._committed.update(chunk.cursors)
        self._committed.update(plan.versions)
        written = commit.batch.num_rows
        self.stats.rows_written += written
        self.metrics.records.inc(written)
        if plan.versions or written:
            self.stats.commits += 1
            self.stats.last_commit = time.time()
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

    def _failed(self) -> None:
        self.stats.failing = True
        self.metrics.errors.inc()

    def _conflicted(self) -> None:
        self.metrics.conflicts.inc()

    async def _stopping(self) -> None:
        if self._compactor is not None:
            self._compactor.cancel()
            await asyncio.gather(self._compactor, return_exceptions=True)

    def _closed(self) -> None:
        # Nothing claims what is left: the committed cursors, and so the state file, stay
        # below it.
        if self._buf:
            log.error(
                "archive sink closed with entries unwritten; they will be fetched again",
                extra={"table": self.uri, "rows": self._rows, "error": self.stats.last_error},
            )

    # --- writer thread -------------------------------------------------------------------------

    def _read_cursors(self, urls: list[str]) -> dict[str, int | None]:
        if self._table is None:
            self._open_existing()
        return cursors_in(self._table, urls)

    def _prepare(self, table: ArchiveTable, chunk: _Chunk) -> Commit:
        # The snapshot's cursors, not this process's: another writer may have moved them.
        chunk.cursors = table.cursors(list(dict.fromkeys(i.source_url for i in chunk.items)))
        plan = plan_commit(chunk.items, chunk.cursors)
        batch, malformed = split_malformed(plan.rows, schema=WRITE_SCHEMA)
        plan.add_malformed(malformed)
        chunk.plan = plan
        return Commit(batch, plan.skipped, plan.versions)

    # --- maintenance ---------------------------------------------------------------------------

    async def _compact_loop(self) -> None:
        while True:
            await asyncio.sleep(self._compaction_interval)
            await self.compact_now()

    async def compact_now(self) -> None:
        """Maintain the table once (`lake.maintain`: compaction, the domain index, vacuum; a
        no-op before the table exists). Runs beside the writer — appends and compaction do not
        conflict — except with unsafe S3 renames, where it takes the writer's turn because two
        concurrent commits could overwrite each other. Never two at once (see
        `table.compaction_lease`)."""
        async with self._compact_lock:
            await self._compact()

    async def _compact(self) -> None:
        run = functools.partial(
            maintain,
            self.uri,
            self.storage_options,
            compression_level=self._level,
            retention_hours=self._retention_hours,
        )
        try:
            if unsafe_rename(self.storage_options):
                report = await self._in_writer(run)
            else:
                report = await asyncio.to_thread(run)
        except Exception as exc:  # a failed step leaves the table as the steps before left it
            self.metrics.compactions.labels("error").inc()
            log.warning("archive maintenance failed", extra={"table": self.uri, "error": str(exc)})
            return
        if report is not None:
            self.metrics.compactions.labels("ok").inc()

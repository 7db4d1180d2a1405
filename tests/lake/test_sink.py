"""The live sink on local tables: flush triggers, failures, bounds, exactly-once, metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable
from prometheus_client import CollectorRegistry

from certlake.backfill.build import BuiltRows
from certlake.config import Config, DeltaSinkConfig
from certlake.ct.backoff import RetryPolicy
from certlake.lake.rows import split_malformed
from certlake.lake.schema import ARCHIVE_SCHEMA, PARTITION_BY
from certlake.lake.sink import DeltaSink
from certlake.lake.table import ArchiveTable, read_skipped
from certlake.lake.txn import SkipKind, SkippedRange, app_id
from support.waiting import until

from .conftest import LOG_A, LOG_B, MakeMessages, make_message
from .helpers import broken_log, make_sink, make_writer, table_keys


def _metric(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    value = registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def _assert_archive_table(path: str) -> None:
    table = DeltaTable(path)
    schema = pa.schema(table.schema().to_arrow())
    assert schema.names == ARCHIVE_SCHEMA.names
    assert [str(f.type) for f in schema] == [
        "list<element: string>" if pa.types.is_list(f.type) else str(f.type) for f in ARCHIVE_SCHEMA
    ]
    assert table.metadata().partition_columns == list(PARTITION_BY)


async def test_delta_backfill_ac4_3_writer_creates_missing_table_with_schema_and_partitioning(
    tmp_path: Path, messages: MakeMessages
) -> None:
    # The backfill writer commits through the sink's committer, out of index order.
    path = str(tmp_path / "missing" / "archive")
    writer = make_writer(path)
    await writer.start()
    rows = messages(40, 45) + messages(10, 12)
    for part in (rows[:5], rows[5:]):
        await writer.put(BuiltRows(split_malformed(part)[0], ()))
    await writer.close()
    _assert_archive_table(path)
    assert table_keys(path) == sorted((m.source_url, m.cert_index) for m in rows)
    days = DeltaTable(path).to_pyarrow_table(columns=["seen_date"])["seen_date"].to_pylist()
    assert set(days) == {time.strftime("%Y-%m-%d", time.gmtime(m.seen)) for m in rows}


async def test_table_is_created_on_first_flush_with_20_columns(
    tmp_path: Path, messages: MakeMessages
) -> None:
    path = str(tmp_path / "archive")
    sink = make_sink(path)
    await sink.start([LOG_A])
    assert not DeltaTable.is_deltatable(path)
    for msg in messages(0, 3):
        sink.offer(msg)
    await sink.flush()
    _assert_archive_table(path)
    assert len(DeltaTable(path).schema().fields) == 20
    await sink.close()


async def test_reopened_table_is_appended_without_conflict(
    tmp_path: Path, messages: MakeMessages
) -> None:
    path = str(tmp_path / "archive")
    for start in (0, 10, 20):
        sink = make_sink(path)
        await sink.start([LOG_A])
        assert sink.committed_cursor(LOG_A) == (start or None)
        for msg in messages(start, start + 10):
            sink.offer(msg)
        await sink.close()
    assert table_keys(path) == [(LOG_A, i) for i in range(30)]
    assert DeltaTable(path).transaction_version(app_id(LOG_A)) == 30


async def test_size_triggered_flush_then_shutdown_flush(
    tmp_path: Path, messages: MakeMessages
) -> None:
    path = str(tmp_path / "archive")
    sink = make_sink(path, batch_size=5)
    await sink.start()
    for msg in messages(0, 12):
        sink.offer(msg)
    await until(lambda: sink.stats.rows_written == 10, within=20)
    # Full chunks only: the 2 left over wait for the timer (an hour away) or shutdown.
    await asyncio.sleep(0.3)
    assert sink.stats.commits == 2 and sink.stats.rows_written == 10 and sink.buffered == 2
    await sink.close()
    assert sink.stats.commits == 3
    assert table_keys(path) == [(LOG_A, i) for i in range(12)]


async def test_time_triggered_flush(tmp_path: Path, messages: MakeMessages) -> None:
    path = str(tmp_path / "archive")
    sink = make_sink(path, batch_size=10_000, flush_interval=0.2)
    await sink.start()
    for msg in messages(0, 3):
        sink.offer(msg)
    await until(lambda: sink.stats.rows_written == 3, within=20)
    assert table_keys(path) == [(LOG_A, i) for i in range(3)]
    await sink.close()


async def test_write_failure_keeps_the_buffer_and_succeeds_later(
    tmp_path: Path, messages: MakeMessages, registry: CollectorRegistry
) -> None:
    path = tmp_path / "archive"
    sink = make_sink(str(path), registry)
    await sink.start()
    for msg in messages(0, 5):
        sink.offer(msg)
    await sink.flush()
    with broken_log(path):
        for msg in messages(5, 10):
            sink.offer(msg)
        flushing = asyncio.create_task(sink.flush())
        await until(lambda: sink.stats.errors >= 2, within=20)
        assert sink.buffered == 5 and not flushing.done()
        assert _metric(registry, "certlake_sink_flush_errors_total") >= 2
        assert _metric(registry, "certlake_sink_buffer_records") == 5
    await flushing
    await sink.close()
    assert table_keys(str(path)) == [(LOG_A, i) for i in range(10)]
    assert DeltaTable(str(path)).transaction_version(app_id(LOG_A)) == 10


async def test_backoff_is_not_cut_short_by_offers_filling_the_buffer(
    tmp_path: Path, messages: MakeMessages
) -> None:
    path = tmp_path / "archive"
    sink = make_sink(str(path), batch_size=100, retry=RetryPolicy(initial_delay=0.2, max_delay=0.2))
    await sink.start()
    sink.offer(make_message(0))
    await sink.flush()
    with broken_log(path):
        started = time.perf_counter()
        for msg in messages(1, 1001):  # every offer past batch_size wakes the writer
            sink.offer(msg)
            if msg.cert_index % 50 == 0:
                await asyncio.sleep(0.005)
        await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - started)))
        # 0.1–0.2 s between attempts: at most ~10 in a second, however many offers arrived.
        assert 1 <= sink.stats.errors <= 12
    await sink.close()
    assert table_keys(str(path)) == [(LOG_A, i) for i in range(1001)]


async def test_close_gives_up_after_its_timeout_and_claims_nothing(
    tmp_path: Path, messages: MakeMessages
) -> None:
    path = tmp_path / "archive"
    sink = make_sink(str(path), close_timeout=0.5)
    await sink.start([LOG_A])
    for msg in messages(0, 5):
        sink.offer(msg)
    await sink.flush()
    with broken_log(path):
        for msg in messages(5, 9):
            sink.offer(msg)
        started = time.perf_counter()
        await sink.close()
        assert time.perf_counter() - started < 5
    assert sink.buffered == 4 and sink.committed_cursor(LOG_A) == 5
    # The next process is told 5, refetches from there, and nothing is lost or doubled.
    again = make_sink(str(path))
    await again.start([LOG_A])
    assert again.committed_cursor(LOG_A) == 5
    for msg in messages(3, 9):
        again.offer(msg)
    await again.close()
    assert table_keys(str(path)) == [(LOG_A, i) for i in range(9)]


async def test_landed_finds_a_commit_by_its_id(tmp_path: Path, messages: MakeMessages) -> None:
    # The check that makes a retry after a lost reply safe.
    table = ArchiveTable.open_or_create(str(tmp_path / "archive"))
    before = table.version
    from certlake.lake.rows import messages_to_batch

    table.append(messages_to_batch(messages(0, 2)), versions={LOG_A: 2}, commit_id="first")
    assert table.landed("first", before)
    assert not table.landed("never-sent", before)
    assert not table.landed("first", table.version)


async def test_malformed_messages_are_skipped_counted_and_recorded(
    tmp_path: Path, messages: MakeMessages, registry: CollectorRegistry
) -> None:
    path = str(tmp_path / "archive")
    sink = make_sink(path, registry)
    await sink.start()
    rows = messages(0, 6)
    rows[2] = rows[2]._replace(is_ca="yes")
    for msg in rows:
        sink.offer(msg)
    sink.offer("not a message")  # type: ignore[arg-type]
    await sink.close()
    assert table_keys(path) == [(LOG_A, i) for i in (0, 1, 3, 4, 5)]
    assert sink.stats.skipped[SkipKind.MALFORMED] == 2
    assert _metric(registry, "certlake_sink_skipped_entries_total", {"kind": "malformed"}) == 2
    [recorded] = read_skipped(path)
    assert (recorded.source_url, recorded.start, recorded.end, recorded.kind) == (
        LOG_A,
        2,
        2,
        SkipKind.MALFORMED,
    )
    assert recorded.reason.startswith("is_ca:")
    assert DeltaTable(path).transaction_version(app_id(LOG_A)) == 6  # passed, not a gap


async def test_unparseable_entries_advance_the_cursor_and_are_not_gaps(
    tmp_path: Path, messages: MakeMessages
) -> None:
    path = str(tmp_path / "archive")
    sink = make_sink(path)
    await sink.start()
    for msg in messages(0, 3):
        sink.offer(msg)
    sink.offer_unparseable(LOG_A, 3, "data tile 0: truncated")
    sink.offer_unparseable(LOG_A, 4, "data tile 0: truncated")
    for msg in messages(5, 7):
        sink.offer(msg)
    await sink.close()
    assert table_keys(path) == [(LOG_A, i) for i in (0, 1, 2, 5, 6)]
    assert read_skipped(path) == [
        SkippedRange(LOG_A, 3, 4, SkipKind.UNPARSEABLE, "data tile 0: truncated")
    ]
    assert not SkipKind.UNPARSEABLE.refill
    reopened = make_sink(path)
    await reopened.start([LOG_A])
    assert reopened.committed_cursor(LOG_A) == 7
    await reopened.close()


async def test_indices_never_offered_are_recorded_as_gaps(
    tmp_path: Path, messages: MakeMessages
) -> None:
    path = str(tmp_path / "archive")
    sink = make_sink(path)
    await sink.start()
    for msg in messages(0, 3) + messages(6, 8):
        sink.offer(msg)
    await sink.close()
    [gap] = read_skipped(path)
    assert (gap.start, gap.end, gap.kind, gap.kind.refill) == (3, 5, SkipKind.GAP, True)


async def test_dropped_ranges_are_recorded_when_the_bound_is_hit(
    tmp_path: Path, messages: MakeMessages, registry: CollectorRegistry
) -> None:
    path = tmp_path / "archive"
    sink = make_sink(str(path), registry, max_buffer_records=10)
    await sink.start()
    sink.offer(make_message(0, LOG_B))
    await sink.flush()
    with broken_log(path):
        for msg in messages(0, 30) + messages(1, 4, url=LOG_B):
            sink.offer(msg)
        assert sink.buffered == 10
        assert _metric(registry, "certlake_sink_skipped_entries_total", {"kind": "dropped"}) == 23
    await sink.close()
    assert table_keys(str(path)) == [(LOG_A, i) for i in range(10)] + [(LOG_B, 0)]
    dropped = sorted((r.source_url, r.start, r.end) for r in read_skipped(str(path)))
    assert dropped == [(LOG_A, 10, 29), (LOG_B, 1, 3)]
    # The cursor passes the recorded drops: the live stream goes on, backfill refills them.
    assert DeltaTable(str(path)).transaction_version(app_id(LOG_A)) == 30
    assert all(r.kind is SkipKind.DROPPED and r.kind.refill for r in read_skipped(str(path)))


async def test_exactly_once_across_a_restart_that_refetches(
    tmp_path: Path, messages: MakeMessages, registry: CollectorRegistry
) -> None:
    path = str(tmp_path / "archive")
    first = make_sink(path)
    await first.start([LOG_A, LOG_B])
    for msg in messages(0, 30) + messages(100, 110, url=LOG_B):
        first.offer(msg)
    await first.close()
    # A new process: the watcher resumes from an older state file position and refetches.
    second = make_sink(path, registry)
    cursors = await second.load_committed([LOG_A, LOG_B, "https://never.example"])
    assert cursors == {LOG_A: 30, LOG_B: 110, "https://never.example": None}
    await second.start()
    for msg in messages(20, 40) + messages(105, 112, url=LOG_B):
        second.offer(msg)
    await second.close()
    keys = table_keys(path)
    assert keys == sorted([(LOG_A, i) for i in range(40)] + [(LOG_B, i) for i in range(100, 112)])
    assert second.stats.duplicates == 15
    assert _metric(registry, "certlake_sink_duplicates_total") == 15


async def test_rows_below_an_unloaded_cursor_are_filtered_at_write_time(
    tmp_path: Path, messages: MakeMessages
) -> None:
    # The server may start a log without load_committed; the writer reads the cursor itself.
    path = str(tmp_path / "archive")
    first = make_sink(path)
    await first.start()
    for msg in messages(0, 10):
        first.offer(msg)
    await first.close()
    second = make_sink(path)
    await second.start()
    for msg in messages(5, 15):
        second.offer(msg)
    assert second.committed_cursor(LOG_A) == 5  # conservative until its first commit
    await second.close()
    assert table_keys(path) == [(LOG_A, i) for i in range(15)]
    assert second.committed_cursor(LOG_A) == 15


async def test_committed_cursor_caps_what_the_state_may_claim(
    tmp_path: Path, messages: MakeMessages
) -> None:
    path = str(tmp_path / "archive")
    sink = make_sink(path)
    await sink.start([LOG_A])
    assert sink.committed_cursor(LOG_A) is None  # nothing archived, nothing offered
    for msg in messages(50, 60):
        sink.offer(msg)
    assert sink.committed_cursor(LOG_A) == 50  # offered, not yet written
    await sink.flush()
    assert sink.committed_cursor(LOG_A) == 60
    sink.offer(make_message(60))
    assert sink.committed_cursor(LOG_A) == 60
    await sink.close()


async def test_event_loop_keeps_running_while_a_batch_is_written(tmp_path: Path) -> None:
    sink = make_sink(str(tmp_path / "archive"), batch_size=100_000)
    await sink.start()
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    for i in range(100_000):
        sink.offer(make_message(i))
    started = time.perf_counter()
    await sink.flush()
    elapsed = time.perf_counter() - started
    tick.cancel()
    await sink.close()
    assert sink.stats.rows_written == 100_000
    assert elapsed > 0.3, "the batch should take a while to write"
    assert len(gaps) > 10 and max(gaps) < elapsed / 2


async def test_compaction_racing_writes_loses_and_duplicates_nothing(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    path = str(tmp_path / "archive")
    sink = make_sink(path, registry, batch_size=20)
    await sink.start()
    for i in range(100):  # 5 small files first
        sink.offer(make_message(i))
    await sink.flush()

    async def produce() -> None:
        for i in range(100, 400):
            sink.offer(make_message(i))
            if i % 20 == 0:
                await asyncio.sleep(0.01)

    await asyncio.gather(produce(), sink.compact_now(), sink.compact_now())
    await sink.close()
    assert table_keys(path) == [(LOG_A, i) for i in range(400)]
    assert DeltaTable(path).transaction_version(app_id(LOG_A)) == 400
    assert _metric(registry, "certlake_sink_compactions_total", {"result": "ok"}) == 2
    history = [c["operation"] for c in DeltaTable(path).history()]
    assert "OPTIMIZE" in history


async def test_metrics_count_records_and_flushes(
    tmp_path: Path, messages: MakeMessages, registry: CollectorRegistry
) -> None:
    sink = make_sink(str(tmp_path / "archive"), registry, batch_size=4)
    await sink.start()
    for msg in messages(0, 10):
        sink.offer(msg)
    await sink.close()
    assert _metric(registry, "certlake_sink_records_written_total") == 10
    assert _metric(registry, "certlake_sink_flushes_total") == 3
    assert _metric(registry, "certlake_sink_flush_seconds_count") == 3
    assert _metric(registry, "certlake_sink_buffer_records") == 0


def test_sink_is_disabled_by_default(tmp_path: Path, registry: CollectorRegistry) -> None:
    assert DeltaSink.from_config(Config(), registry) is None
    enabled = dataclasses.replace(
        Config(),
        delta_sink=DeltaSinkConfig(enabled=True, table_path=str(tmp_path / "t"), batch_size=7),
    )
    sink = DeltaSink.from_config(enabled, registry)
    assert sink is not None and sink.uri == str(tmp_path / "t") and sink.storage_options is None


async def test_file_uri_tables_work(tmp_path: Path, messages: MakeMessages) -> None:
    uri = (tmp_path / "archive").as_uri()
    sink = make_sink(uri)
    await sink.start([LOG_A])
    for msg in messages(0, 4):
        sink.offer(msg)
    sink.offer_unparseable(LOG_A, 4, "bad")
    await sink.close()
    assert table_keys(str(tmp_path / "archive")) == [(LOG_A, i) for i in range(4)]
    assert [(r.start, r.kind) for r in read_skipped(uri)] == [(4, SkipKind.UNPARSEABLE)]
    assert (tmp_path / "archive" / "_certlake_skipped" / "_delta_log").is_dir()


async def test_rows_read_back_as_the_archive_schema_says_chain_included(tmp_path: Path) -> None:
    """The live sink hands delta-rs `chain` dictionary-encoded (`rows.WRITE_SCHEMA`); what the
    table holds reads back as the archive's schema, every value as the message had it, and the
    stream's payloads (no column of the archive) are not needed to write it."""
    path = str(tmp_path / "archive")
    sink = make_sink(path, batch_size=50)
    await sink.start()
    sent = [make_message(i) for i in range(120)]
    for msg in sent:
        sink.offer(msg)
    await sink.close()
    table = DeltaTable(path).to_pyarrow_table()
    assert table.schema.field("chain").type == ARCHIVE_SCHEMA.field("chain").type
    got = {row["cert_index"]: row for row in table.to_pylist()}
    assert sorted(got) == list(range(120))
    for msg in sent:
        row = got[msg.cert_index]
        assert row["chain"] == msg.chain and msg.chain
        assert row["as_der"] == msg.as_der and row["all_domains"] == msg.all_domains
        assert row["sha256"] == msg.sha256 and row["issuer_aggregated"] == msg.issuer_aggregated

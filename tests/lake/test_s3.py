"""`s3://` tables against a real S3-compatible server (moto) on loopback."""

from __future__ import annotations

import asyncio

from deltalake import DeltaTable

from certlake.lake.table import read_skipped
from certlake.lake.txn import SkipKind, app_id
from support.s3 import S3Server
from support.waiting import until

from .conftest import LOG_A, LOG_B, MakeMessages
from .helpers import make_sink, table_keys, two_sinks_on_one_table


async def test_s3_create_append_read_back_and_transaction_versions(
    s3_server: S3Server, s3_bucket: str, messages: MakeMessages
) -> None:
    uri = f"s3://{s3_bucket}/certstream"
    options = s3_server.options()
    first = make_sink(uri, storage_options=options)
    await first.start([LOG_A, LOG_B])
    for msg in messages(0, 20) + messages(5, 10, url=LOG_B):
        first.offer(msg)
    first.offer_unparseable(LOG_B, 10, "bad entry")
    await first.close()
    table = DeltaTable(uri, storage_options=options)
    assert table.metadata().partition_columns == ["seen_date"]
    assert table.transaction_version(app_id(LOG_A)) == 20
    assert table.transaction_version(app_id(LOG_B)) == 11
    [skipped] = read_skipped(uri, options)
    assert (skipped.source_url, skipped.start, skipped.kind) == (LOG_B, 10, SkipKind.UNPARSEABLE)

    second = make_sink(uri, storage_options=options)
    assert await second.load_committed([LOG_A, LOG_B]) == {LOG_A: 20, LOG_B: 11}
    await second.start()
    for msg in messages(15, 25) + messages(11, 13, url=LOG_B):
        second.offer(msg)
    await second.close()
    assert table_keys(uri, options) == sorted(
        [(LOG_A, i) for i in range(25)] + [(LOG_B, i) for i in (5, 6, 7, 8, 9, 11, 12)]
    )


async def test_s3_outage_keeps_the_buffer_and_writes_once_after_it(
    s3_server: S3Server, s3_bucket: str, messages: MakeMessages
) -> None:
    uri = f"s3://{s3_bucket}/certstream"
    options = s3_server.options()
    sink = make_sink(uri, storage_options=options)
    await sink.start()
    for msg in messages(0, 5):
        sink.offer(msg)
    await sink.flush()
    s3_server.pause()
    try:
        for msg in messages(5, 12):
            sink.offer(msg)
        flushing = asyncio.create_task(sink.flush())
        await until(lambda: sink.stats.errors >= 2, within=20)
        assert sink.buffered == 7 and not flushing.done()
    finally:
        s3_server.resume()
    await flushing
    await sink.close()
    assert table_keys(uri, options) == [(LOG_A, i) for i in range(12)]
    assert DeltaTable(uri, storage_options=options).transaction_version(app_id(LOG_A)) == 12


async def test_s3_unsafe_rename_compacts_in_the_writers_turn(
    s3_server: S3Server, s3_bucket: str, messages: MakeMessages
) -> None:
    # For stores without conditional writes: one committer at a time, compaction included.
    uri = f"s3://{s3_bucket}/certstream"
    options = {**s3_server.options(), "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
    sink = make_sink(uri, storage_options=options, batch_size=5)
    await sink.start()
    for msg in messages(0, 10):
        sink.offer(msg)
    await sink.flush()
    for msg in messages(10, 20):
        sink.offer(msg)
    await asyncio.gather(sink.flush(), sink.compact_now())
    await sink.close()
    assert table_keys(uri, options) == [(LOG_A, i) for i in range(20)]
    operations = [c["operation"] for c in DeltaTable(uri, storage_options=options).history()]
    assert operations.count("OPTIMIZE") == 1


async def test_s3_two_sinks_on_one_table_archive_each_index_once(
    s3_server: S3Server, s3_bucket: str
) -> None:
    # Conditional puts make each commit atomic; the transaction identifiers make two writers'
    # commits exactly-once between them.
    await two_sinks_on_one_table(f"s3://{s3_bucket}/certstream", s3_server.options())

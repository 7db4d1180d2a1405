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


def test_s3_search_through_the_covering_index_and_gap_runs(
    s3_server: S3Server, s3_bucket: str
) -> None:
    """The index and the runs cache are read through delta-rs's object store too: a search
    over `s3://` reads the index files the key range needs and nothing of the archive, and gap
    detection after `record` opens no data file."""
    from tests.query.archive_rows import Row, rows_table

    from certlake.backfill.presence import plan_gaps
    from certlake.lake import domains, known_runs
    from certlake.lake.table import ArchiveTable
    from certlake.query.search import search_page
    from certlake.query.spec import DomainFilter, PageRequest, Query

    uri = f"s3://{s3_bucket}/searched"
    options = s3_server.options()
    rows = [Row(LOG_A, i, "2026-12-01", (f"h{i}.ex.com", f"other{i}.org")) for i in range(8)]
    table = ArchiveTable.open_or_create(uri, storage_options=options, compression_level=1)
    table.append(rows_table([r for r in rows if r.index != 5]), versions={LOG_A: 8}, commit_id="a")
    assert domains.catch_up(uri, options, build=True) is not None
    query = Query(domain=DomainFilter.parse("*.ex.com"))
    page = search_page(uri, options, PageRequest(query, 10, None))
    assert [r["cert_index"] for r in page.rows] == [0, 1, 2, 3, 4, 6, 7]
    assert page.rows[0]["all_domains"] == ["h0.ex.com", "other0.org"]
    exact = search_page(
        uri, options, PageRequest(Query(domain=DomainFilter.parse("other6.org")), 5, None)
    )
    assert [r["cert_index"] for r in exact.rows] == [6]
    assert known_runs.record(uri, options).files == 1
    plan = plan_gaps(uri, None, {LOG_A: 8}, None, storage_options=options)
    assert plan.work_items == ((LOG_A, 5, 5),)

"""The committer under both archive writers: a lost reply is looked up, not written again;
skipped ranges are recorded once, before their commit; closing gives up after its timeout."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from certlake.backfill.build import BuiltRows
from certlake.lake.rows import split_malformed
from certlake.lake.table import ArchiveTable, read_skipped
from certlake.lake.txn import SkipKind, SkippedRange, app_id
from support.waiting import until

from .conftest import LOG_A, MakeMessages
from .helpers import broken_log, broken_partition, make_sink, make_writer, table_keys


@pytest.fixture
def lost_first_reply(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The first append commits, then fails as a timeout would: the caller never hears that it
    landed. Returns the ids of the commits whose reply was lost."""
    real = ArchiveTable.append
    lost: list[str] = []

    def append(
        self: ArchiveTable,
        batch: pa.Table | pa.RecordBatch,
        *,
        versions: Mapping[str, int],
        commit_id: str,
    ) -> None:
        real(self, batch, versions=versions, commit_id=commit_id)
        if not lost:
            lost.append(commit_id)
            raise OSError("connection reset after the commit was sent")

    monkeypatch.setattr(ArchiveTable, "append", append)
    return lost


def _built(rows: pa.Table, *skipped: SkippedRange) -> BuiltRows:
    return BuiltRows(rows, skipped)


async def test_writer_retry_after_a_lost_reply_does_not_write_twice(
    tmp_path: Path, messages: MakeMessages, lost_first_reply: list[str]
) -> None:
    path = str(tmp_path / "archive")
    writer = make_writer(path)
    await writer.start()
    await writer.put(_built(split_malformed(messages(0, 5))[0]))
    await writer.close()
    assert lost_first_reply and writer.stats.errors == 1
    assert table_keys(path) == [(LOG_A, i) for i in range(5)]
    assert (writer.stats.rows_written, writer.stats.commits, writer.buffered) == (5, 1, 0)


async def test_sink_retry_after_a_lost_reply_does_not_write_twice(
    tmp_path: Path, messages: MakeMessages, lost_first_reply: list[str]
) -> None:
    path = str(tmp_path / "archive")
    sink = make_sink(path)
    await sink.start([LOG_A])
    for msg in messages(0, 5):
        sink.offer(msg)
    await sink.close()
    assert lost_first_reply and sink.stats.errors == 1
    assert table_keys(path) == [(LOG_A, i) for i in range(5)]
    assert DeltaTable(path).transaction_version(app_id(LOG_A)) == 5


async def test_skipped_ranges_are_recorded_once_before_their_commit(
    tmp_path: Path, messages: MakeMessages
) -> None:
    path = tmp_path / "archive"
    writer = make_writer(str(path), batch_size=5)
    await writer.start()
    await writer.put(_built(split_malformed(messages(0, 5))[0]))
    await until(lambda: writer.stats.commits == 1, within=20)
    bad = SkippedRange(LOG_A, 5, 6, SkipKind.UNPARSEABLE, "data tile 0: truncated")
    rows = messages(7, 12)
    with broken_partition(path, time.strftime("%Y-%m-%d", time.gmtime(rows[0].seen))):
        await writer.put(_built(split_malformed(rows)[0], bad))
        await until(lambda: writer.stats.errors >= 2, within=20)
        # The rows' commit keeps failing; the record of the range is already there, once.
        assert read_skipped(str(path)) == [bad]
    await until(lambda: writer.stats.commits == 2, within=20)
    await writer.close()
    assert read_skipped(str(path)) == [bad]
    assert table_keys(str(path)) == [(LOG_A, i) for i in (*range(5), *range(7, 12))]


async def test_close_gives_up_after_its_timeout_and_reports_what_is_left(
    tmp_path: Path, messages: MakeMessages
) -> None:
    path = tmp_path / "archive"
    writer = make_writer(str(path), batch_size=5, close_timeout=0.5)
    await writer.start()
    await writer.put(_built(split_malformed(messages(0, 5))[0]))
    await until(lambda: writer.stats.commits == 1, within=20)
    with broken_log(path):
        await writer.put(_built(split_malformed(messages(5, 8))[0]))
        started = time.perf_counter()
        await writer.close()
        assert time.perf_counter() - started < 5
    assert writer.buffered == 3 and writer.stats.rows_written == 5
    assert writer.stats.last_error is not None
    assert table_keys(str(path)) == [(LOG_A, i) for i in range(5)]

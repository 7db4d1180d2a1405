"""Two writers on one table (two `serve` processes during a rolling restart): each commit is
planned on the cursors of the snapshot it commits on, delta-rs refuses it when another writer
moved one of them since, and it is planned again without what the other writer archived."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from prometheus_client import CollectorRegistry

from certlake.lake.maintain import MaintainReport, maintain
from certlake.lake.rows import messages_to_batch
from certlake.lake.schema import ARCHIVE_SCHEMA
from certlake.lake.table import (
    COMPACTION_LEASE,
    ArchiveTable,
    CursorConflictError,
    read_skipped,
)
from certlake.lake.txn import SkipKind, app_id

from .conftest import LOG_A, LOG_B, MakeMessages
from .helpers import make_sink, table_keys, two_sinks_on_one_table


def test_a_cursor_moved_by_another_writer_refuses_a_commit_planned_before(
    tmp_path: Path, messages: MakeMessages
) -> None:
    uri = str(tmp_path / "archive")
    first = ArchiveTable.open_or_create(uri)
    second = ArchiveTable.open_or_create(uri)
    assert second.cursors([LOG_A]) == {LOG_A: None}
    first.append(messages_to_batch(messages(0, 5)), versions={LOG_A: 5}, commit_id="first")
    with pytest.raises(CursorConflictError):
        second.append(messages_to_batch(messages(0, 5)), versions={LOG_A: 5}, commit_id="second")
    # Another log's cursor does not conflict: delta-rs commits it after the first writer's.
    second.append(
        messages_to_batch(messages(0, 3, url=LOG_B)), versions={LOG_B: 3}, commit_id="other log"
    )
    assert table_keys(uri) == [(LOG_A, i) for i in range(5)] + [(LOG_B, i) for i in range(3)]
    # Its snapshot now holds the first writer's commit too, and so do the cursors it reports.
    assert second.cursors([LOG_A, LOG_B]) == {LOG_A: 5, LOG_B: 3}


def test_cursors_are_read_again_once_another_writer_committed(
    tmp_path: Path, messages: MakeMessages
) -> None:
    uri = str(tmp_path / "archive")
    mine = ArchiveTable.open_or_create(uri)
    mine.append(messages_to_batch(messages(0, 5)), versions={LOG_A: 5}, commit_id="mine")
    assert mine.cursors([LOG_A]) == {LOG_A: 5}
    other = ArchiveTable.open_or_create(uri)
    other.append(messages_to_batch(messages(5, 9)), versions={LOG_A: 9}, commit_id="other")
    assert mine.cursors([LOG_A]) == {LOG_A: 5}  # its snapshot is older
    mine.refresh()
    assert mine.cursors([LOG_A]) == {LOG_A: 9}


async def test_a_commit_that_loses_the_race_is_planned_again_without_the_rivals_rows(
    tmp_path: Path,
    messages: MakeMessages,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The other writer commits between this one's plan and its commit: the instant no timing
    # can aim at, made certain by committing it from inside the first append.
    uri = str(tmp_path / "archive")
    real = ArchiveTable.append
    rivals: list[str] = []

    def append(
        self: ArchiveTable,
        batch: pa.Table | pa.RecordBatch,
        *,
        versions: Mapping[str, int],
        commit_id: str,
    ) -> None:
        if not rivals:
            rivals.append(commit_id)
            rival = ArchiveTable.open_or_create(uri)
            rival.append(messages_to_batch(messages(0, 6)), versions={LOG_A: 6}, commit_id="rival")
        real(self, batch, versions=versions, commit_id=commit_id)

    monkeypatch.setattr(ArchiveTable, "append", append)
    sink = make_sink(uri, registry)
    await sink.start([LOG_A])
    for msg in messages(0, 10):
        sink.offer(msg)
    sink.offer_unparseable(LOG_A, 10, "undecodable")
    for msg in messages(11, 13):
        sink.offer(msg)
    await sink.close()

    assert rivals and sink.stats.conflicts == 1 and sink.stats.errors == 0
    assert registry.get_sample_value("certlake_sink_commit_conflicts_total") == 1
    assert table_keys(uri) == [(LOG_A, i) for i in (*range(10), 11, 12)]
    assert DeltaTable(uri).transaction_version(app_id(LOG_A)) == 13
    assert (sink.stats.rows_written, sink.stats.duplicates) == (6, 6)
    assert sink.committed_cursor(LOG_A) == 13
    assert [(r.start, r.end, r.kind) for r in read_skipped(uri)] == [(10, 10, SkipKind.UNPARSEABLE)]


async def test_two_sinks_on_one_table_archive_each_index_once(tmp_path: Path) -> None:
    await two_sinks_on_one_table(str(tmp_path / "archive"), None)


def _small_files(uri: str, messages: MakeMessages, n: int) -> None:
    table = ArchiveTable.open_or_create(uri)
    for i in range(n):
        batch = messages_to_batch(messages(10 * i, 10 * i + 10))
        table.append(batch, versions={LOG_A: 10 * i + 10}, commit_id=f"c{i}")


def _lease(uri: str, until_ms: int) -> None:
    """Another writer's compaction lease, as it records it."""
    write_deltalake(
        uri,
        ARCHIVE_SCHEMA.empty_table(),
        mode="append",
        commit_properties=CommitProperties(
            app_transactions=[Transaction(COMPACTION_LEASE, until_ms)]
        ),
    )


def _maintain(uri: str) -> MaintainReport | None:
    return maintain(uri, None, compression_level=3, retention_hours=168)


def _operations(uri: str) -> list[str]:
    return [c["operation"] for c in DeltaTable(uri).history()]


def test_compaction_waits_its_turn_while_another_writer_holds_the_lease(
    tmp_path: Path, messages: MakeMessages
) -> None:
    uri = str(tmp_path / "archive")
    _small_files(uri, messages, 5)
    _lease(uri, int(time.time() * 1000) + 60_000)
    assert _maintain(uri) is None
    assert "OPTIMIZE" not in _operations(uri)
    _lease(uri, int(time.time() * 1000))  # handed back
    report = _maintain(uri)
    assert report is not None
    assert (report.archive_files_before, report.archive_files_after) == (5, 1)
    assert _operations(uri).count("OPTIMIZE") == 1
    # This compaction handed the lease back too.
    assert DeltaTable(uri).transaction_version(COMPACTION_LEASE) <= time.time() * 1000


def test_two_writers_compacting_at_once_duplicate_nothing(
    tmp_path: Path, messages: MakeMessages
) -> None:
    # Two servers' compactors, in two threads (delta-rs lets two concurrent compactions of the
    # same files both commit: without the lease, every row rewritten would be there twice).
    uri = str(tmp_path / "archive")
    _small_files(uri, messages, 40)
    start = threading.Barrier(2)
    results: list[object] = []

    def compactor() -> None:
        start.wait()
        results.append(_maintain(uri))

    threads = [threading.Thread(target=compactor) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert table_keys(uri) == [(LOG_A, i) for i in range(400)]
    assert 1 <= _operations(uri).count("OPTIMIZE") <= 2 and any(results)

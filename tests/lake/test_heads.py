"""The side table of tree heads: every kind of record survives a real Delta table as it was
written; the recorder keeps one verified head per log a flush, writes evidence at once, and loses
nothing to a failed write."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pyarrow as pa
import pytest

from certlake.ct.verify import Mismatch, ServedDifferently, SplitView, TreeHead, Verified
from certlake.lake.heads import (
    EVIDENCE_DELAY,
    HeadsRecorder,
    append_heads,
    heads_uri,
    read_heads,
    verified_size,
)
from certlake.lake.heads_rows import HeadKind, HeadRecord, batch_to_records, records_to_batch
from certlake.lake.schema import HEADS_DIR, HEADS_SCHEMA
from certlake.lake.table import open_table
from support.waiting import until

from .conftest import LOG_A, LOG_B


def head(size: int, tag: int = 0) -> TreeHead:
    root = bytes([size % 256, tag]) * 16
    return TreeHead(size, root, 1_750_000_000_000 + size, b"sig" + root[:4])


def every_kind() -> list[HeadRecord]:
    verified = head(100)
    return [
        HeadRecord.verified(LOG_A, verified),
        HeadRecord.from_event(LOG_A, Mismatch(head(120), b"\x07" * 32, 100), verified),
        HeadRecord.from_event(LOG_A, Mismatch(head(50), b"\x08" * 32, 0), None),
        HeadRecord.from_event(LOG_B, SplitView(head(80), head(80, tag=1)), None),
        HeadRecord.from_event(LOG_B, SplitView(head(80), head(90), proof_checked=True), None),
        HeadRecord.served_differently(
            LOG_A,
            head(120),
            100,
            120,
            [103, 117],
            "entries 103, 117 differ on a second read",
            verified_head=verified,
        ),
        HeadRecord.served_differently(LOG_B, head(90), 80, 90, [], "no index known"),
        HeadRecord.from_event(LOG_A, ServedDifferently(head(130), 120, 130, (121,)), verified),
        HeadRecord.from_event(
            LOG_A,
            Mismatch(head(60), b"\x09" * 32, 40, "the inclusion proof does not lead to it"),
            None,
        ),
        HeadRecord.range_verified(LOG_B, head(90), 30, 60, "entries [30, 60) are in the tree"),
    ]


def archive(tmp_path: Path) -> str:
    return str(tmp_path / "archive")


def block(uri: str) -> Path:
    """A regular file where the heads table of `uri` goes: its Delta writes fail."""
    os.makedirs(uri, exist_ok=True)
    path = Path(heads_uri(uri))
    path.write_text("not a table")
    return path


def unblock(path: Path) -> None:
    path.unlink()


# -- the rows, pure ------------------------------------------------------------------------


def test_events_map_to_the_documented_columns() -> None:
    verified = head(100)
    mismatch = HeadRecord.from_event(LOG_A, Mismatch(head(120), b"\x07" * 32, 100), verified)
    assert mismatch.kind == "mismatch"
    assert (mismatch.head, mismatch.other) == (head(120), verified)
    assert (mismatch.computed_root, mismatch.first_index, mismatch.end_index) == (
        b"\x07" * 32,
        100,
        120,
    )
    split = HeadRecord.from_event(LOG_B, SplitView(head(80), head(90), proof_checked=True), None)
    assert (split.kind, split.head, split.other) == ("split-view", head(90), head(80))
    assert "consistency proof" in split.detail and "does not hold" in split.detail
    assert "the entries do not hash to the signed root" in mismatch.detail
    served = HeadRecord.from_event(
        LOG_A, ServedDifferently(head(130), 120, 130, (121, 125)), verified
    )
    assert (served.kind, served.head, served.other) == ("served-differently", head(130), verified)
    assert (served.first_index, served.end_index, served.indices) == (120, 130, (121, 125))
    assert served.computed_root is None
    same = HeadRecord.from_event(LOG_B, SplitView(head(80), head(80, tag=1)), None)
    assert "no consistency proof" in same.detail
    assert HeadRecord.from_event(LOG_A, Verified(verified), None) == HeadRecord.verified(
        LOG_A, verified
    )
    assert not HeadRecord.verified(LOG_A, verified).is_evidence
    *evidence, range_verified = every_kind()[1:]
    assert all(r.is_evidence for r in evidence) and not range_verified.is_evidence


def test_batch_has_the_table_schema_and_reads_back() -> None:
    records = every_kind()
    batch = records_to_batch(records, recorded_us=1_750_000_000_000_000)
    assert batch.schema == HEADS_SCHEMA
    assert batch_to_records(batch) == records
    assert {r.recorded_us for r in batch_to_records(pa.Table.from_batches([batch]))} == {
        1_750_000_000_000_000
    }


# -- the table -----------------------------------------------------------------------------


def test_every_kind_round_trips_through_a_delta_table(tmp_path: Path) -> None:
    uri = archive(tmp_path)
    records = every_kind()
    append_heads(uri, None, records[:3])
    append_heads(uri, None, records[3:])
    assert heads_uri(uri) == os.path.join(uri, HEADS_DIR)
    table = open_table(heads_uri(uri))
    assert table is not None and table.version() == 1  # one commit per append
    back = read_heads(uri, None)
    assert sorted(back, key=repr) == sorted(records, key=repr)
    assert {r.kind for r in back} == set(HeadKind)
    assert all(r.recorded_us is not None for r in back)
    assert read_heads(uri, None, source_url=LOG_B) == [r for r in records if r.source_url == LOG_B]


def test_verified_size_is_the_largest_verified_head_of_the_log(tmp_path: Path) -> None:
    uri = archive(tmp_path)
    assert verified_size(uri, None, LOG_A) == 0  # no table
    append_heads(uri, None, [HeadRecord.verified(LOG_A, head(100))])
    append_heads(
        uri,
        None,
        [
            HeadRecord.verified(LOG_A, head(250)),
            HeadRecord.verified(LOG_A, head(180)),
            # Evidence of a larger size does not count: its entries were not verified.
            HeadRecord.from_event(LOG_A, Mismatch(head(900), b"\x01" * 32, 250), head(250)),
            HeadRecord.verified(LOG_B, head(7)),
        ],
    )
    assert verified_size(uri, None, LOG_A) == 250
    assert verified_size(uri, None, LOG_B) == 7
    assert verified_size(uri, None, "https://other.example.test/") == 0


def test_a_missing_table_reads_empty(tmp_path: Path) -> None:
    assert read_heads(archive(tmp_path), None) == []
    assert read_heads(archive(tmp_path), None, source_url=LOG_A) == []


def test_nothing_to_append_makes_no_table(tmp_path: Path) -> None:
    append_heads(archive(tmp_path), None, [])
    assert open_table(heads_uri(archive(tmp_path))) is None


# -- the recorder --------------------------------------------------------------------------


async def test_verified_heads_are_kept_newest_per_log_per_flush(tmp_path: Path) -> None:
    uri = archive(tmp_path)
    recorder = HeadsRecorder(uri, None, flush_interval=3600.0)
    for size in (5, 10, 7):
        recorder.record(HeadRecord.verified(LOG_A, head(size)))
    recorder.record(HeadRecord.verified(LOG_B, head(3)))
    assert recorder.pending == 2
    await recorder.close()
    assert recorder.pending == 0
    back = read_heads(uri, None)
    assert sorted((r.source_url, r.head.size) for r in back) == [(LOG_A, 10), (LOG_B, 3)]
    # The next flush starts afresh: a newer head is a new row, the older rows stay.
    recorder.record(HeadRecord.verified(LOG_A, head(12)))
    await recorder.flush()
    assert sorted(r.head.size for r in read_heads(uri, None, source_url=LOG_A)) == [10, 12]


async def test_evidence_is_written_within_a_second_verified_heads_wait(tmp_path: Path) -> None:
    uri = archive(tmp_path)
    recorder = HeadsRecorder(uri, None, flush_interval=3600.0)
    runner = asyncio.create_task(recorder.run())
    try:
        recorder.record(HeadRecord.verified(LOG_A, head(100)))
        await asyncio.sleep(2 * EVIDENCE_DELAY + 0.2)
        assert recorder.pending == 1 and read_heads(uri, None) == []
        evidence = HeadRecord.from_event(LOG_A, Mismatch(head(120), b"\x07" * 32, 100), head(100))
        loop = asyncio.get_running_loop()
        started = loop.time()
        recorder.record(evidence)
        await until(lambda: recorder.written == 2, within=5.0, what="the evidence written")
        assert loop.time() - started < 1.0
        assert sorted(read_heads(uri, None), key=repr) == sorted(
            [HeadRecord.verified(LOG_A, head(100)), evidence], key=repr
        )
    finally:
        await recorder.close()
        await asyncio.wait_for(runner, 5.0)


async def test_the_interval_flushes_and_close_ends_run(tmp_path: Path) -> None:
    uri = archive(tmp_path)
    recorder = HeadsRecorder(uri, None, flush_interval=0.2)
    runner = asyncio.create_task(recorder.run())
    recorder.record(HeadRecord.verified(LOG_A, head(100)))
    await until(lambda: recorder.written == 1, what="the interval's flush")
    recorder.record(HeadRecord.verified(LOG_B, head(9)))
    await recorder.close()  # before the next interval: written by close
    await asyncio.wait_for(runner, 5.0)
    assert recorder.pending == 0
    assert verified_size(uri, None, LOG_B) == 9


async def test_a_failed_write_keeps_the_records_for_the_next_flush(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = archive(tmp_path)
    blocker = block(uri)
    recorder = HeadsRecorder(uri, None, flush_interval=0.3)
    evidence = HeadRecord.served_differently(LOG_A, head(120), 100, 120, [101], "differs")
    runner = asyncio.create_task(recorder.run())
    try:
        with caplog.at_level(logging.WARNING, logger="certlake.lake.heads"):
            recorder.record(HeadRecord.verified(LOG_A, head(100)))
            recorder.record(evidence)
            await until(lambda: recorder.failures >= 1, what="the failed write")
            assert recorder.pending == 2 and recorder.written == 0
            warned = [r for r in caplog.records if r.name == "certlake.lake.heads"]
            assert warned and warned[0].levelno == logging.WARNING
            assert getattr(warned[0], "records", None) == 2
            # A newer verified head recorded meanwhile replaces the one kept from the failure.
            recorder.record(HeadRecord.verified(LOG_A, head(110)))
            assert recorder.pending == 2
            unblock(blocker)
            await until(lambda: recorder.written == 2, what="the flush after the fix")
    finally:
        await recorder.close()
        await asyncio.wait_for(runner, 5.0)
    assert recorder.pending == 0
    assert sorted(read_heads(uri, None), key=repr) == sorted(
        [HeadRecord.verified(LOG_A, head(110)), evidence], key=repr
    )


async def test_close_keeps_what_it_could_not_write(tmp_path: Path) -> None:
    uri = archive(tmp_path)
    blocker = block(uri)
    recorder = HeadsRecorder(uri, None)
    recorder.record(HeadRecord.verified(LOG_A, head(100)))
    await recorder.close()
    assert recorder.pending == 1 and recorder.failures == 1
    unblock(blocker)
    assert await recorder.flush()
    assert verified_size(uri, None, LOG_A) == 100


async def test_writes_never_overlap(tmp_path: Path) -> None:
    uri = archive(tmp_path)
    recorder = HeadsRecorder(uri, None)
    recorder.record(HeadRecord.verified(LOG_A, head(1)))
    first = asyncio.create_task(recorder.flush())
    await asyncio.sleep(0)  # the first write is under way
    recorder.record(HeadRecord.verified(LOG_A, head(2)))
    second = asyncio.create_task(recorder.flush())
    assert await first and await second
    table = open_table(heads_uri(uri))
    assert table is not None and table.version() == 1  # two commits, one after the other
    assert sorted(r.head.size for r in read_heads(uri, None)) == [1, 2]

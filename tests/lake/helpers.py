"""Small helpers shared by the sink and writer tests."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deltalake import DeltaTable
from prometheus_client import CollectorRegistry

from certlake.ct.backoff import RetryPolicy
from certlake.lake.committer import WriterSettings
from certlake.lake.sink import DeltaSink
from certlake.lake.table import read_skipped
from certlake.lake.txn import app_id
from certlake.lake.writer import RowWriter

from .conftest import LOG_A, LOG_B, make_message

FAST_RETRY = RetryPolicy(initial_delay=0.05, max_delay=0.2)


def make_sink(path: str, registry: CollectorRegistry | None = None, **kw: object) -> DeltaSink:
    options: dict[str, object] = {
        "batch_size": 1000,
        "flush_interval": 3600.0,
        "compaction_interval": 0.0,
        "retry": FAST_RETRY,
        "close_timeout": 10.0,
    }
    options.update(kw)
    return DeltaSink(path, registry=registry or CollectorRegistry(), **options)  # type: ignore[arg-type]


def make_writer(
    path: str,
    batch_size: int = 1000,
    close_timeout: float = 10.0,
    storage_options: dict[str, str] | None = None,
) -> RowWriter:
    """The backfill writer with the sink tests' defaults: no timer flush, fast retries."""
    settings = WriterSettings(batch_size, 3600.0, 3, FAST_RETRY, close_timeout)
    return RowWriter(
        path, storage_options=storage_options, settings=settings, high_water=2 * batch_size
    )


def table_keys(uri: str, storage_options: dict[str, str] | None = None) -> list[tuple[str, int]]:
    """Every (source_url, cert_index) in the table, sorted, duplicates kept."""
    table = DeltaTable(uri, storage_options=storage_options).to_pyarrow_table(
        columns=["source_url", "cert_index"]
    )
    return sorted(
        zip(table["source_url"].to_pylist(), table["cert_index"].to_pylist(), strict=True)
    )


@contextmanager
def broken_log(table_dir: Path) -> Iterator[None]:
    """A real storage failure for a local table: `_delta_log` replaced by a file (tests run as
    root, so permissions cannot make writes fail). Restored on exit."""
    log_dir = table_dir / "_delta_log"
    aside = table_dir / "_delta_log.aside"
    os.rename(log_dir, aside)
    log_dir.write_text("not a directory")
    try:
        yield
    finally:
        log_dir.unlink()
        if log_dir.exists():
            shutil.rmtree(log_dir)
        os.rename(aside, log_dir)


@contextmanager
def broken_partition(table_dir: Path, day: str) -> Iterator[None]:
    """A real storage failure that leaves the log readable: the directory of partition
    `seen_date=<day>` replaced by a file, so writing a data file there fails. Restored on exit."""
    part = table_dir / f"seen_date={day}"
    aside = table_dir / f"seen_date={day}.aside"
    if part.exists():
        os.rename(part, aside)
    part.write_text("not a directory")
    try:
        yield
    finally:
        part.unlink()
        if aside.exists():
            os.rename(aside, part)


async def two_sinks_on_one_table(uri: str, storage_options: dict[str, str] | None) -> None:
    """Two sinks (two writer threads, as two servers would have) offered the same entries of two
    logs, slice by slice, committing small chunks that race each other; afterwards every index
    is in the table once (or recorded as undecodable) and each cursor is at the end."""
    end = 300
    undecodable = {LOG_A: {37, 38}, LOG_B: {101}}
    sinks = [
        make_sink(uri, batch_size=10, flush_interval=0.05, storage_options=storage_options)
        for _ in range(2)
    ]
    for sink in sinks:
        await sink.start([LOG_A, LOG_B])
    for start in range(0, end, 20):
        for sink in sinks:
            for url in (LOG_A, LOG_B):
                for i in range(start, start + 20):
                    if i in undecodable[url]:
                        sink.offer_unparseable(url, i, "undecodable")
                    else:
                        sink.offer(make_message(i, url))
            await asyncio.sleep(0.01)
    # Written out before closing: a close gives up after its timeout, and on a slow store the
    # racing commits can take longer than that.
    await asyncio.gather(*(sink.flush() for sink in sinks))
    await asyncio.gather(*(sink.close() for sink in sinks))

    rows = [(url, i) for url in (LOG_A, LOG_B) for i in range(end) if i not in undecodable[url]]
    keys = table_keys(uri, storage_options)
    twice = sorted(k for k, n in Counter(keys).items() if n > 1)
    assert not twice, f"written twice: {len(twice)}, such as {twice[:5]}"
    assert keys == sorted(rows), f"missing: {sorted(set(rows) - set(keys))[:5]}"
    table = DeltaTable(uri, storage_options=storage_options)
    assert [table.transaction_version(app_id(url)) for url in (LOG_A, LOG_B)] == [end, end]
    recorded = {
        (r.source_url, i)
        for r in read_skipped(uri, storage_options)
        if not r.kind.refill
        for i in range(r.start, r.end + 1)
    }
    assert recorded == {(url, i) for url, indices in undecodable.items() for i in indices}
    assert not [r for r in read_skipped(uri, storage_options) if r.kind.refill]
    # Every row was offered to both and written by one: the other left it out.
    assert sum(s.stats.rows_written for s in sinks) == len(rows)
    assert sum(s.stats.duplicates for s in sinks) == len(rows)

"""Small helpers shared by the sink and writer tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deltalake import DeltaTable
from prometheus_client import CollectorRegistry

from certlake.ct.backoff import RetryPolicy
from certlake.lake.committer import WriterSettings
from certlake.lake.sink import DeltaSink
from certlake.lake.writer import RowWriter

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

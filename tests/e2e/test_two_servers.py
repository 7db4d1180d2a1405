"""Two `certlake serve` processes on one table and one state file, as an overlapping rolling
deploy runs them: both stream and both archive, and the archive holds every index once with no
gap up to its cursors (docs/architecture.md, "Two writers on one table")."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
from deltalake import DeltaTable
from prometheus_client.parser import text_string_to_metric_families

from certlake.lake.txn import app_id
from support.archive import check_archive
from support.procs import Proc, Procs, server_config
from support.waiting import until

WRITTEN = "certlake_sink_records_written_total"
LEFT_OUT = "certlake_sink_duplicates_total"


def _config(tmp_path: Path, log_list_url: str) -> dict[str, Any]:
    return server_config(
        tmp_path,
        log_list_url,
        delta_sink={
            "enabled": True,
            "table_path": str(tmp_path / "archive"),
            # Small commits, often: the two servers' commits race many times a second.
            "batch_size": 50,
            "flush_interval_secs": 1,
            "compaction_interval_secs": 0,
        },
    )


async def _sink_counters(server: Proc) -> dict[str, float]:
    """The sink's counters on the server's /metrics."""
    async with aiohttp.ClientSession() as s, s.get(f"{server.url}/metrics") as r:
        text = await r.text()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in (WRITTEN, LEFT_OUT)
    }


def _read_cursors(table: Path, urls: list[str]) -> dict[str, int | None]:
    if not (table / "_delta_log").is_dir():
        return dict.fromkeys(urls)
    delta = DeltaTable(str(table))
    return {url: delta.transaction_version(app_id(url)) for url in urls}


async def _cursors(table: Path, urls: list[str]) -> dict[str, int | None]:
    return await asyncio.to_thread(_read_cursors, table, urls)


async def _archiving(server: Proc, table: Path) -> list[str]:
    """The server's two logs, once the table has a cursor for each."""
    urls: list[str] = []

    async def started() -> bool:
        async with aiohttp.ClientSession() as s, s.get(f"{server.url}/api/logs") as r:
            urls[:] = [log["url"] for log in (await r.json())["logs"]]
        return len(urls) == 2 and None not in (await _cursors(table, urls)).values()

    await until(started, 60, "the first commit of both logs")
    return urls


async def _advanced(table: Path, urls: list[str], by: int) -> None:
    """Wait until every log's cursor in the table is `by` past where it is now."""
    start = await _cursors(table, urls)

    async def moved() -> bool:
        now = await _cursors(table, urls)
        return all((now[u] or 0) >= (start[u] or 0) + by for u in urls)

    await until(moved, 60, f"the cursors {by} further")


async def _has_written(server: Proc) -> bool:
    return (await _sink_counters(server))[WRITTEN] > 0


async def _stop(server: Proc) -> None:
    assert await asyncio.to_thread(server.stop) == 0, server.log.read_text()[-3000:]
    # Closing flushed everything it had taken, beside the other writer's commits.
    assert "entries unwritten" not in server.log.read_text()


async def test_two_servers_on_one_table_archive_each_index_once(
    procs: Procs, tmp_path: Path
) -> None:
    testlog = procs.testlog("--rate", "150", "--initial-size", "100", "--seed", "31")
    table = tmp_path / "archive"
    config = _config(tmp_path, f"{testlog.url}/log_list.json")
    first = procs.serve(config)
    urls = await _archiving(first, table)
    before = (await _sink_counters(first))[WRITTEN]
    second = procs.serve(config)
    overlap_from = time.monotonic()

    async def both_archiving() -> bool:
        ones, twos = await _sink_counters(first), await _sink_counters(second)
        # Each commits rows of its own, and leaves out rows the other committed first.
        return (
            ones[WRITTEN] > before
            and twos[WRITTEN] > 0
            and ones[LEFT_OUT] > 0
            and twos[LEFT_OUT] > 0
            and time.monotonic() - overlap_from > 5
        )

    await until(both_archiving, 90, "both servers archiving the same logs for 5 s")
    await _advanced(table, urls, 200)
    await asyncio.gather(_stop(first), _stop(second))
    assert check_archive(tmp_path, table) > 0


async def test_rolling_restart_archives_each_index_once(procs: Procs, tmp_path: Path) -> None:
    testlog = procs.testlog("--rate", "150", "--initial-size", "100", "--seed", "32")
    table = tmp_path / "archive"
    config = _config(tmp_path, f"{testlog.url}/log_list.json")
    old = procs.serve(config)
    urls = await _archiving(old, table)
    # The new server starts before the old one stops, and archives beside it...
    new = procs.serve(config)
    await until(lambda: _has_written(new), 60, "the new server's first rows")
    # ... then the old one is told to stop (it flushes its buffer), and the new one goes on.
    await _stop(old)
    await _advanced(table, urls, 300)
    await _stop(new)
    assert check_archive(tmp_path, table) > 0

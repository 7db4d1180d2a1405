"""Backfill's pieces in-process: progress lines (delta-backfill.AC6.1), the summary and its exit
code, which logs are candidates, and how ceilings are read from the state file."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import sys
from pathlib import Path

import orjson
import pytest

from certlake.backfill.progress import LogRates
from certlake.backfill.run import JobError, candidate_logs, read_ceilings
from certlake.backfill.summary import LogOutcome, Summary, reasons_text
from certlake.cli.backfill import run_backfill
from certlake.config import load_config
from certlake.ct.entry import LogKind
from certlake.ct.loglist import LogInfo
from certlake.ingest.discovery import Discovery
from certlake.ranges import ranges_text

from .conftest import SIZE, Lake


async def test_delta_backfill_ac6_1_progress_is_logged_per_log(
    lake: Lake, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    rfc, static = lake.log.rfc6962.url, lake.log.static.url
    lake.punch(rfc, [*range(100, 700)])
    lake.punch(static, [*range(100, 700)])
    lake.ceilings(rfc6962=SIZE, static=SIZE)
    lake.log.faults("slow:delay=0.15,endpoint=get-entries", "slow:delay=0.15,endpoint=data-tile")
    config = load_config(lake.config()).config
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: log lines, not a display
    caplog.set_level(logging.INFO)
    assert await run_backfill(config, progress_interval=0.2) == 0
    lines = [r.__dict__ for r in caplog.records if r.getMessage() == "backfill progress"]
    for url in (rfc, static):
        mine = [x for x in lines if x["log"] == url]
        assert len(mine) >= 2, lines
        assert all(x["total"] == 600 for x in mine)
        fetched = [x["fetched"] for x in mine]
        remaining = [x["ranges_remaining"] for x in mine]
        assert fetched == sorted(fetched) and fetched[-1] > fetched[0]
        assert remaining == sorted(remaining, reverse=True) and remaining[0] > 0
        assert all(x["rate"].endswith("/s") for x in mine)
    assert lake.keys(lake.main).total() == 2 * SIZE


async def test_rows_built_in_worker_processes_are_the_rows_built_in_the_loop(lake: Lake) -> None:
    rfc, static = lake.log.rfc6962.url, lake.log.static.url
    holes = {rfc: [*range(0, 300), *range(900, 1000)], static: [*range(250, 700)]}
    live = {url: lake.rows(lake.main, url) for url in holes}
    for url, indices in holes.items():
        lake.punch(url, indices)
    lake.ceilings(rfc6962=SIZE, static=SIZE)
    config = load_config(lake.config()).config
    assert await run_backfill(config, from_index=0, parse_processes=2) == 0
    counts = lake.keys(lake.main)
    assert counts.total() == 2 * SIZE and max(counts.values()) == 1
    for url, indices in holes.items():
        refilled = lake.rows(lake.main, url)
        for i in indices:
            ours = {k: v for k, v in refilled[i].items() if k not in ("seen", "seen_date")}
            assert ours == {k: v for k, v in live[url][i].items() if k not in ("seen", "seen_date")}


async def test_sigint_with_build_workers_writes_what_was_built_and_a_rerun_completes(
    lake: Lake,
) -> None:
    rfc, static = lake.log.rfc6962.url, lake.log.static.url
    lake.punch(rfc, [*range(50, 1050)])
    lake.punch(static, [*range(50, 1050)])
    lake.ceilings(rfc6962=SIZE, static=SIZE)
    lake.log.faults("slow:delay=0.3,endpoint=get-entries", "slow:delay=0.3,endpoint=data-tile")
    config = load_config(
        lake.config(delta_sink={"batch_size": 100_000, "flush_interval_secs": 600})
    ).config
    summary = lake.tmp / "summary.json"
    job = asyncio.create_task(
        run_backfill(config, summary_json=summary, parse_processes=2, progress_interval=0.1)
    )
    await asyncio.sleep(1.5)  # workers started, several chunks fetched and built
    os.kill(os.getpid(), signal.SIGINT)  # a real signal; run_backfill's handler takes it
    assert await job == 1
    doc = orjson.loads(summary.read_bytes())
    assert doc["interrupted"] and 0 < doc["records_written"] < 2000
    assert doc["records_written"] + doc["entries_unfetched"] == 2000
    assert lake.keys(lake.main).total() == 2 * SIZE - 2000 + doc["records_written"]
    lake.log.faults()
    assert await run_backfill(config) == 0
    counts = lake.keys(lake.main)
    assert counts.total() == 2 * SIZE and max(counts.values()) == 1


# --- summary and exit code (pure) -----------------------------------------------------------------


def _summary(*outcomes: LogOutcome) -> Summary:
    return Summary("catch-up", None, "/t", False, logs=list(outcomes))


def test_exit_code_is_0_only_when_everything_was_fetched_and_written() -> None:
    done = LogOutcome("https://a", "A", missing=10, ranges=1, fetched=10, ranges_done=1)
    assert _summary(done).exit_code == 0
    left = LogOutcome("https://b", None, missing=10, ranges=2, fetched=4)
    left.add_unfetched(4, 9, "gave up: HTTP 503")
    assert _summary(done, left).exit_code == 1
    assert [o.url for o in _summary(done, left).failed] == ["https://b"]
    unwritten = LogOutcome("https://c", None, missing=10, ranges=1, fetched=10, ranges_done=1)
    unwritten.unwritten = [(0, 2), (7, 9)]
    assert _summary(done, unwritten).exit_code == 1
    assert [o.url for o in _summary(done, unwritten).failed] == ["https://c"]
    assert _summary(done, unwritten).to_json()["entries_unwritten"] == 6
    for broken in (
        Summary("catch-up", None, "/t", False, logs=[done], interrupted=True),
        Summary("catch-up", None, "/t", False, logs=[done], write_error="disk full"),
    ):
        assert broken.exit_code == 1
    usage = Summary("catch-up", None, "/t", False, error="not an archive table", error_code=2)
    assert usage.exit_code == 2


def test_unfetched_ranges_are_listed_coalesced_with_their_reasons() -> None:
    o = LogOutcome("https://a", "A", missing=100, ranges=3)
    o.add_unfetched(50, 59, "interrupted")
    o.add_unfetched(10, 19, "gave up: HTTP 503")
    o.add_unfetched(20, 29, "not attempted: the log gave up at 10")
    o.add_unfetched(30, 29, "empty: ignored")
    assert o.left() == [(10, 29), (50, 59)]
    assert o.unfetched_count == 30
    assert reasons_text(o) == (
        "gave up: HTTP 503; not attempted: the log gave up at 10; interrupted"
    )
    doc = _summary(o).to_json()
    assert doc["entries_unfetched"] == 30 and doc["logs_failed"] == ["https://a"]
    logs = doc["logs"]
    assert isinstance(logs, list)
    assert [(u["start"], u["end"]) for u in logs[0]["unfetched"]] == [(10, 19), (20, 29), (50, 59)]
    assert ranges_text([(i, i) for i in range(0, 50, 2)], shown=3) == "0, 2, 4, … (+22 more)"


def test_rate_meter_reports_rate_eta_and_ranges_left() -> None:
    o = LogOutcome("https://a", "A", missing=1000, ranges=4)
    meter = LogRates([o], now=100.0, window=1.0)
    o.fetched, o.ranges_done = 300, 1
    (p,) = meter.read(now=102.0)
    assert (p.fetched, p.total, p.ranges_remaining, p.rate) == (300, 1000, 3, 150.0)
    assert p.eta == pytest.approx(700 / 150)
    (p,) = meter.read(now=103.0)  # nothing new: no rate, no estimate
    assert (p.rate, p.eta) == (0.0, None)


# --- inputs ---------------------------------------------------------------------------------------


def _info(url: str, name: str, kind: LogKind = LogKind.RFC6962) -> LogInfo:
    return LogInfo(description=name, url=url, kind=kind, operator="op")


def test_candidates_are_serves_logs_plus_state_logs_the_list_still_describes() -> None:
    watched = _info("https://watched.example/log", "watched")
    readonly = _info("https://frozen.example/log", "frozen", LogKind.STATIC)
    discovery = Discovery((watched,), (watched, readonly), None)
    ceilings = {
        "https://frozen.example/log": 10,
        "https://gone.example/log": 5,
        "https://watched.example/log": 7,
    }
    names, readable = candidate_logs(discovery, ceilings)
    assert names == {
        "https://watched.example/log": "watched",
        "https://frozen.example/log": "frozen",
        "https://gone.example/log": None,
    }
    assert set(readable) == {"https://watched.example/log", "https://frozen.example/log"}
    assert readable["https://frozen.example/log"].kind is LogKind.STATIC


def test_ceilings_are_read_by_normalized_url_and_damage_is_an_error(tmp_path: Path) -> None:
    assert read_ceilings(None) is None
    assert read_ceilings(str(tmp_path / "missing.json")) is None
    state = tmp_path / "state.json"
    entry = {"current_index": 42, "tree_size": 50, "last_success": 1}
    state.write_bytes(orjson.dumps({"version": 1, "logs": {"ct.example.com/log/": entry}}))
    assert read_ceilings(str(state)) == {"https://ct.example.com/log": 42}
    state.write_text('{"version": 2, "logs": {}}')
    with pytest.raises(JobError, match="damaged") as caught:
        read_ceilings(str(state))
    assert caught.value.code == 1
    assert state.read_text() == '{"version": 2, "logs": {}}'

"""Backfill progress, per log: a live display on a terminal, periodic log lines otherwise.

The fetchers only bump plain counters on their `LogOutcome`; a reporter task reads them every so
often, so the hot path never calls into logging or rich.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from certlake.backfill.summary import LogOutcome
from certlake.rates import RateMeter

log = logging.getLogger(__name__)

LOG_INTERVAL: Final = 10.0  # seconds between progress lines when stderr is not a terminal
LIVE_INTERVAL: Final = 0.5  # seconds between refreshes of the live display


@dataclass(frozen=True, slots=True)
class LogProgress:
    url: str
    fetched: int
    total: int
    ranges_remaining: int
    rate: float  # entries/s since the previous report
    eta: float | None  # seconds, at that rate
    status: str  # fetching, waiting on a 429 for N s, retrying after a 503, ...

    def fields(self) -> dict[str, object]:
        return {
            "log": self.url,
            "status": self.status,
            "fetched": self.fetched,
            "total": self.total,
            "ranges_remaining": self.ranges_remaining,
            "rate": f"{self.rate:.0f}/s",
            "eta_secs": None if self.eta is None else round(self.eta),
        }


class LogRates:
    """Each log's progress, its rate taken over the last `window` seconds of readings."""

    def __init__(self, outcomes: Sequence[LogOutcome], now: float, window: float) -> None:
        self._outcomes = outcomes
        self._meters = {o.url: RateMeter(window) for o in outcomes}
        for o in outcomes:
            self._meters[o.url].observe(now, o.fetched)

    def read(self, now: float) -> list[LogProgress]:
        out = []
        for o in self._outcomes:
            meter = self._meters[o.url]
            meter.observe(now, o.fetched)
            rate = meter.rate()
            left = o.missing - o.fetched - o.unfetched_count
            eta = left / rate if rate > 0 else None
            out.append(
                LogProgress(
                    o.url, o.fetched, o.missing, o.ranges - o.ranges_done, rate, eta, o.status
                )
            )
        return out


async def log_lines(outcomes: Sequence[LogOutcome], interval: float) -> None:
    """Until cancelled: every `interval` seconds, one line per log still in progress."""
    # A window of one interval: each line's rate is that of the interval it reports on.
    meter = LogRates(outcomes, time.monotonic(), window=interval)
    while True:
        await asyncio.sleep(interval)
        for p in meter.read(time.monotonic()):
            if p.ranges_remaining:
                log.info("backfill progress", extra=p.fields())


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f}/s", style="progress.data.speed")


async def live_display(outcomes: Sequence[LogOutcome], interval: float = LIVE_INTERVAL) -> None:
    """Until cancelled: a rich progress bar per log on stderr (entries done/total, rate, ETA)."""
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TextColumn("{task.fields[left]}"),
        TimeRemainingColumn(),
        console=console,
        refresh_per_second=4,
    )
    tasks: dict[str, TaskID] = {
        o.url: progress.add_task(o.name or o.url, total=o.missing, left="") for o in outcomes
    }

    def update() -> None:
        for o in outcomes:
            remaining = o.ranges - o.ranges_done
            progress.update(
                tasks[o.url],
                completed=o.fetched,
                left=f"{remaining} ranges left, {o.status}" if remaining else "done",
            )

    with progress, _logging_through(console):
        try:
            while True:
                update()
                await asyncio.sleep(interval)
        finally:
            update()


@contextmanager
def _logging_through(console: Console) -> Iterator[None]:
    """Route log lines that go to stderr above the live display instead of through it: rich
    redirects `sys.stderr` while the display runs, but logging handlers hold the original."""
    moved = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and h.stream is console.file
    ]
    for h in moved:
        h.setStream(sys.stderr)  # rich's proxy, which prints above the display
    try:
        yield
    finally:
        for h in moved:
            h.setStream(console.file)


def is_terminal() -> bool:
    return sys.stderr.isatty()

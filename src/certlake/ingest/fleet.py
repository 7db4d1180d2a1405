"""The set of watched logs: which logs (log list + config, re-read periodically), one watcher
task each, and the state file that remembers where each one is."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from certlake.config import Config
from certlake.ct.client.http import CTHttp, OperatorBudget
from certlake.ct.client.static import IssuerCache
from certlake.ct.entry import LogSource
from certlake.ct.errors import AnswerTooLarge, FetchError
from certlake.ct.health import Health, LogHealth
from certlake.ct.loglist import LogInfo
from certlake.ct.verify import Event, TreeHead, Verification, Verified
from certlake.ingest.discovery import discover_logs
from certlake.ingest.metrics import IngestMetrics
from certlake.ingest.readers import ct_log_retry_policy, make_reader
from certlake.ingest.state import StateStore
from certlake.ingest.watcher import Consumer, LogWatcher

if TYPE_CHECKING:  # Delta and Arrow load only where an archive is written
    from certlake.lake.heads_rows import HeadRecord


log = logging.getLogger(__name__)

STATE_SAVE_INTERVAL = 1.0


@dataclass(slots=True)
class Watched:
    info: LogInfo
    watcher: LogWatcher
    task: asyncio.Task[None] = field(repr=False)


class Fleet:
    def __init__(
        self,
        config: Config,
        http: CTHttp,
        consumer_for: Callable[[LogSource], Consumer],
        metrics: IngestMetrics,
        state: StateStore | None,
        archive_cursor: Callable[[str], int | None] | None = None,
        prepare: Callable[[list[str]], Awaitable[object]] | None = None,
        record_head: Callable[[HeadRecord], None] | None = None,
    ) -> None:
        """`archive_cursor(url)` is how far the archive has a log (docs/architecture.md, "Archive
        and state agree"): a watcher resumes at no more than it, and the state file never claims
        more. `prepare(urls)` runs before watchers of new logs start (the sink reads their
        committed cursors). `record_head` keeps verified heads and evidence beside the archive."""
        self._config = config
        self._http = http
        self._consumer_for = consumer_for
        self.metrics = metrics
        self.state = state
        self._archive_cursor = archive_cursor
        self._prepare = prepare
        self._record_head = record_head
        self.watched: dict[str, Watched] = {}
        self._issuers = IssuerCache()
        self.list_error: str | None = None
        self.list_fetched_at: float | None = None

    @property
    def budgets(self) -> Mapping[str, OperatorBudget]:
        """Each operator's request pacing, shared by its logs (and every job of the process)."""
        return self._http.budgets

    # --- which logs -----------------------------------------------------------------------------

    async def desired_logs(self) -> list[LogInfo]:
        """The list's watchable logs plus the configured ones; config logs alone (and a loud
        warning) when the list cannot be had — the server never stops for that."""
        found = await discover_logs(self._config, self._http)
        self.list_error = found.list_error
        if found.list_error is None:
            self.list_fetched_at = time.time()
        return list(found.watchable)

    async def refresh(self) -> None:
        desired = await self.desired_logs()
        wanted = {info.url for info in desired}
        new = [info for info in desired if info.url not in self.watched]
        if new and self._prepare is not None:
            await self._prepare([info.url for info in new])
        for info in new:
            self._start(info)
        if self.list_error is None:
            # Only a list that was read can retire a log; an outage must not stop watchers.
            for url in [u for u in self.watched if u not in wanted]:
                log.info("log left the watch list; stopping its watcher", extra={"log": url})
                self.watched.pop(url).task.cancel()

    def _start(self, info: LogInfo) -> None:
        ct = self._config.ct_log
        saved = self.state.get(info.url) if self.state is not None else None
        start = saved.current_index if saved is not None else None
        start = self._capped(info.url, start)
        watcher = LogWatcher(
            make_reader(self._http, info, ct, self._issuers),
            self._consumer_for(info.source),
            start_index=start,
            poll_interval=ct.poll_interval_ms / 1000,
            policy=ct_log_retry_policy(ct),
            health=LogHealth(
                healthy_threshold=ct.healthy_threshold,
                unhealthy_threshold=ct.unhealthy_threshold,
                max_delay=float(ct.health_check_interval_secs),
            ),
            on_error=self._count_error,
            verify=ct.verify,
            snapshot=saved.verified if saved is not None else None,
            on_verification=self._verification,
        )
        task = asyncio.create_task(watcher.run(), name=f"watch {info.url}")
        self.watched[info.url] = Watched(info, watcher, task)
        log.info(
            "watching a log",
            extra={
                "log": info.url,
                "description": info.description,
                "from": "the tree head" if start is None else start,
            },
        )

    def _capped(self, url: str, cursor: int | None) -> int | None:
        cap = self._archive_cursor(url) if self._archive_cursor is not None else None
        if cap is None:
            return cursor
        return cap if cursor is None else min(cursor, cap)

    def _count_error(self, url: str, error: FetchError) -> None:
        status = "none" if error.status is None else str(error.status)
        self.metrics.fetch_errors.labels(url, status).inc()
        if isinstance(error, AnswerTooLarge):
            self.metrics.over_limit.labels(url, error.limit.value).inc()

    def _verification(self, url: str, event: Event, verified_before: TreeHead | None) -> None:
        from certlake.lake.heads_rows import HeadRecord  # only with an archive: loads Arrow

        record = HeadRecord.from_event(url, event, verified_before)
        if isinstance(event, Verified):
            self.metrics.verified_heads.labels(url).inc()
        else:
            self.metrics.verification_failures.labels(url, record.kind.value).inc()
            if record.first_index is not None and record.end_index is not None:
                self.metrics.suspect_range.labels(url, "first").set(record.first_index)
                self.metrics.suspect_range.labels(url, "end").set(record.end_index)
        if self._record_head is not None:
            self._record_head(record)

    # --- running --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch until cancelled: refresh the list periodically, save the state every second."""
        refresh_every = self._config.ct_log.log_refresh_interval_secs
        next_refresh = 0.0
        try:
            while True:
                now = time.monotonic()
                if now >= next_refresh:
                    await self.refresh()
                    next_refresh = now + refresh_every
                self.update_gauges()
                await self.save_state()
                await asyncio.sleep(STATE_SAVE_INTERVAL)
        finally:
            await self.stop()

    def update_gauges(self) -> None:
        m = self.metrics
        for url, w in self.watched.items():
            st = w.watcher.status
            if st.tree_size is not None:
                m.tree_size.labels(url).set(st.tree_size)
            if st.lag is not None:
                m.lag.labels(url).set(st.lag)
            m.lag_seconds.labels(url).set(st.lag_report().seconds)
            state = w.watcher.health_state
            for h in Health:
                m.healthy.labels(url, h.value).set(1 if state is h else 0)
            if st.verification is not None:
                m.verified_index.labels(url).set(st.verified_index)
                for v in Verification:
                    m.verification.labels(url, v.value).set(1 if st.verification is v else 0)

    async def save_state(self) -> None:
        if self.state is None:
            return
        for url, w in self.watched.items():
            st = w.watcher.status
            cursor = self._capped(url, st.cursor)
            if cursor is None or st.tree_size is None:
                continue
            prev = self.state.get(url)
            verifier = w.watcher.verifier
            verified = verifier.snapshot() if verifier is not None else None
            if verified is None and prev is not None:
                verified = prev.verified  # not verified further yet this run: kept as it was
            if (
                prev is None
                or prev.current_index != cursor
                or prev.tree_size != st.tree_size
                or prev.verified != verified
            ):
                self.state.update(
                    url, cursor, st.tree_size, int(st.last_success or time.time()), verified
                )
        await asyncio.to_thread(self.state.save_if_dirty)

    async def stop(self) -> None:
        tasks = [w.task for w in self.watched.values()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.save_state()

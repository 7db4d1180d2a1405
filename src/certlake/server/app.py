"""The live server's aiohttp application: the stream routes, the HTTP endpoints listed below and the
guard in front of them all.

    /example.json       the newest lite message, as the stream sent it (503 before the first)
    /latest.json        {"messages": [...]}: the 25 newest lite messages as the stream sent them
                        (with their cursors, so `since=` joins the stream where they end),
                        newest first
    /health             OK — open even when auth is on
    /health/deep        per-log health and the archive's; 503 when more than half the watched
                        logs are unhealthy
    /metrics            Prometheus text: certlake's names, then certstream-server-rust's
                        (`rust_metrics.py`)
    /api/stats          uptime, throughput, clients, drops, logs by health, refusals
    /api/logs           every watched log's position and health, and the log list's status
    /api/cert/{key}     full message of a certificate by sha256/sha1/fingerprint: one seen
                        recently, else (with `query_api.enabled`) one in the archive
    /api/query/certs    search the archive (`query_api.enabled`; `archive_api.py`)

Each group is switched by `protocols.*` (`example_json`, `health`, `metrics`, `api`, and
`websocket` / `sse` for the streams); a route switched off is simply absent (404).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import string
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from certlake.config import Config
from certlake.ct.client.http import OperatorBudget
from certlake.ct.health import Health
from certlake.ct.lag import LagReport
from certlake.ingest.fleet import Fleet, Watched
from certlake.ingest.metrics import IngestMetrics
from certlake.ingest.pipeline import Pipeline, Sent
from certlake.rates import RateMeter
from certlake.server.guard import Guard, guard_middleware
from certlake.server.page import is_page_request, with_page
from certlake.server.rust_metrics import exposition, rust_families
from certlake.stream.fanout import Fanout
from certlake.stream.hub import StreamKind
from certlake.stream.resume import stamp_cursor
from certlake.stream.web import SocketOptions, add_stream_routes

if TYPE_CHECKING:  # Delta and Arrow load only where an archive is written or searched
    from certlake.lake.sink import DeltaSink
    from certlake.server.archive_api import ArchiveApi


GUARD = web.AppKey("guard", Guard)
HTTP_LOGGER = "certlake.http"

RATE_WINDOW = 10.0  # seconds of history behind messages_per_second
_HEX = frozenset(string.hexdigits)


# --- pure helpers -------------------------------------------------------------------------------


def overall_health(
    states: Sequence[Health], archive_failing: bool = False, inconsistent: bool = False
) -> Health:
    """Unhealthy when no log is watched or more than half are unhealthy; healthy when all are and
    the archive is not failing and no log was found inconsistent; degraded otherwise (a log that
    is behind counts as not healthy). A failing archive alone is not unhealthy: the stream goes
    on and the rows are kept; nor is a lying log: the others are read as before."""
    unhealthy = sum(1 for s in states if s is Health.UNHEALTHY)
    if not states or 2 * unhealthy > len(states):
        return Health.UNHEALTHY
    if not archive_failing and not inconsistent and all(s is Health.HEALTHY for s in states):
        return Health.HEALTHY
    return Health.DEGRADED


def _rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def lag_status(report: LagReport) -> dict[str, Any]:
    """A log's lag as /api/logs and /health/deep show it, with the figures that explain it."""
    out: dict[str, Any] = {
        "lag_entries": report.entries,
        "lag_seconds": round(report.seconds, 1),
        "growth_per_second": _rounded(report.growth_per_second),
        "read_per_second": _rounded(report.read_per_second),
        "behind": report.behind,
        "cannot_keep_up": report.cannot_keep_up,
    }
    if report.cannot_keep_up:
        out["behind_reason"] = (
            f"the log grows {report.growth_per_second:.1f} entries/s and is read at "
            f"{report.read_per_second:.1f} entries/s; {report.entries} entries "
            f"({report.seconds:.0f} s) behind"
        )
    return out


def operator_status(budget: OperatorBudget) -> dict[str, Any]:
    """One operator's request pacing, shared by all its logs."""
    s = budget.snapshot()
    return {
        "requests_per_second": round(s.rate, 2),
        "learned_limit": _rounded(s.learned_limit),
        "in_flight": s.in_flight,
        "max_in_flight": budget.max_in_flight,
        "paused_for": round(s.paused_for, 2),
        "requests": s.requests,
        "refused": s.refused,
        "failed": s.failed,
    }


def log_status(w: Watched, budgets: Mapping[str, OperatorBudget]) -> dict[str, Any]:
    """One log as /api/logs shows it; times are Unix seconds."""
    st, health = w.watcher.status, w.watcher.health
    budget = budgets.get(w.info.operator)
    return {
        "url": w.info.url,
        "name": w.info.description,
        "kind": w.info.kind.value,
        "operator": w.info.operator,
        "health": w.watcher.health_state.value,
        "cursor": st.cursor,
        "tree_size": st.tree_size,
        "lag": st.lag,
        **lag_status(st.lag_report()),
        "answer_cap": w.watcher.reader.answer_cap,
        "pacing": None if budget is None else operator_status(budget),
        "verification": "off" if st.verification is None else st.verification.value,
        "verified_index": None if st.verification is None else st.verified_index,
        "verification_error": st.verification_error,
        "entries": st.entries,
        "unparseable": st.unparseable,
        "last_success": st.last_success,
        "last_error": health.last_error,
        "consecutive_failures": health.consecutive_failures,
        "total_failures": health.total_failures,
    }


_DEEP_KEYS = (
    "url",
    "name",
    "health",
    "lag",
    "lag_seconds",
    "behind",
    "cannot_keep_up",
    "behind_reason",
    "verification",
    "verified_index",
    "verification_error",
    "last_success",
    "last_error",
)


def archive_status(sink: DeltaSink | None) -> dict[str, Any]:
    """The live archive sink as /health/deep shows it; times are Unix seconds."""
    if sink is None:
        return {"enabled": False}
    stats = sink.stats
    return {
        "enabled": True,
        "table": sink.uri,
        "failing": stats.failing,
        "last_error": stats.last_error if stats.failing else None,
        "last_commit": stats.last_commit,
        "buffered_records": sink.buffered,
        "records_written": stats.rows_written,
        "commits": stats.commits,
        "write_errors": stats.errors,
    }


def as_sent(sent: Sent) -> bytes:
    """The lite payload as the stream sent it: with its cursor, when it had one."""
    lite = sent.message.lite
    return lite if sent.cursor is None else stamp_cursor(lite, sent.cursor)


def latest_document(messages: Iterable[bytes]) -> bytes:
    """`{"messages":[...]}` from serialized messages, without re-encoding them."""
    return b'{"messages":[' + b",".join(m.rstrip(b"\n") for m in messages) + b"]}"


def is_cert_key(key: str) -> bool:
    """A SHA-1 or SHA-256 in hex, with or without colons, any case."""
    digits = key.replace(":", "")
    return len(digits) in (40, 64) and set(digits) <= _HEX


class MalformedRequests(logging.Filter):
    """aiohttp answers a request its parser cannot read (a raw \\xff in the request line, a
    header too long) with a 400 and logs it at ERROR with a traceback: any client could fill the
    log with them. Such a record becomes one WARNING line naming the peer and the parser's
    complaint; errors of the server itself are left as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        # aiohttp's message is "Error handling request from %s", with the peer's address.
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
        record.msg, record.args = "malformed request refused", ()
        record.exc_info = record.exc_text = None
        # aiohttp logs non-HTTP bytes on a connection's first request at DEBUG already.
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        reason = exc.message.strip().partition("\n")[0].rstrip(":")[:200]
        record.__dict__.update(peer=peer, status=exc.code, reason=reason)
        return True


def http_logger() -> logging.Logger:
    """The logger to give aiohttp's request handler (`web.AppRunner(app, logger=...)`)."""
    logger = logging.getLogger(HTTP_LOGGER)
    if not any(isinstance(f, MalformedRequests) for f in logger.filters):
        logger.addFilter(MalformedRequests())
    return logger


# --- the HTTP shell -----------------------------------------------------------------------------


def _json(obj: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _message(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


class HttpApi:
    """The endpoint handlers, over the live server's parts."""

    def __init__(
        self,
        config: Config,
        pipeline: Pipeline,
        fleet: Fleet,
        fanout: Fanout,
        metrics: IngestMetrics,
        guard: Guard,
        meter: RateMeter,
        sink: DeltaSink | None,
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.fleet = fleet
        self.fanout = fanout
        self.metrics = metrics
        self.guard = guard
        self.meter = meter
        self.sink = sink
        self.archive: ArchiveApi | None = None

    async def example(self, request: web.Request) -> web.Response:
        if not self.pipeline.latest:
            return _json({"error": "no certificate seen yet; try again shortly"}, 503)
        return _message(as_sent(self.pipeline.latest[-1]))

    async def latest(self, request: web.Request) -> web.Response:
        return _message(latest_document(as_sent(m) for m in reversed(self.pipeline.latest)))

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def health_deep(self, request: web.Request) -> web.Response:
        logs = [log_status(w, self.fleet.budgets) for w in self.fleet.watched.values()]
        archive = archive_status(self.sink)
        inconsistent = [row["url"] for row in logs if row["verification"] == "inconsistent"]
        status = overall_health(
            [w.watcher.health_state for w in self.fleet.watched.values()],
            archive_failing=archive.get("failing", False),
            inconsistent=bool(inconsistent),
        )
        body = {
            "status": status.value,
            "inconsistent_logs": inconsistent,
            "logs": [{k: row[k] for k in _DEEP_KEYS if k in row} for row in logs],
            "log_list_error": self.fleet.list_error,
            "archive": archive,
        }
        return _json(body, 503 if status is Health.UNHEALTHY else 200)

    async def metrics_text(self, request: web.Request) -> web.Response:
        # Gauges read at scrape time, not up to a state-save interval old.
        self.fleet.update_gauges()
        # Read on the loop, where the values live; rendered beside certlake's own.
        rust = rust_families(self.fleet, self.metrics, self.fanout.hub, self.guard.stats, self.sink)

        def render() -> bytes:
            return generate_latest(self.metrics.registry) + exposition(rust)

        # Rendering every per-log series takes milliseconds the stream should not wait for.
        body = await asyncio.to_thread(render)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stats(self, request: web.Request) -> web.Response:
        hub = self.fanout.hub.stats
        by_health = Counter(w.watcher.health_state for w in self.fleet.watched.values())
        guard, limiter = self.guard.stats, self.guard.connections
        body = {
            "uptime_seconds": round(time.time() - self.pipeline.started, 3),
            "entries_processed": self.pipeline.processed,
            "messages_per_second": round(self.meter.rate(), 3),
            "clients": {kind.value: hub.clients[kind] for kind in StreamKind}
            | {"total": sum(hub.clients.values())},
            "messages_published": hub.published,
            "messages_dropped": hub.dropped,
            "clients_disconnected_stalled": hub.disconnected_stalled,
            "logs": {"watched": len(self.fleet.watched)} | {h.value: by_health[h] for h in Health},
            "refused": {
                "unauthorized": guard.unauthorized,
                "rate_limited": guard.rate_limited,
                "server_full": guard.server_full,
                "client_full": guard.client_full,
            },
            "limited_connections": None if limiter is None else limiter.total,
        }
        return _json(body)

    async def logs(self, request: web.Request) -> web.Response:
        body = {
            "logs": [log_status(w, self.fleet.budgets) for w in self.fleet.watched.values()],
            "operators": {name: operator_status(b) for name, b in self.fleet.budgets.items()},
            "log_list": {
                "url": self.config.ct_logs_url,
                "error": self.fleet.list_error,
                "fetched_at": self.fleet.list_fetched_at,
            },
        }
        return _json(body)

    async def cert(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if not is_cert_key(key):
            return _json({"error": "expected a SHA-256 or SHA-1 in hex (colons optional)"}, 400)
        full = self.pipeline.certs.get(key)
        if full is None and self.archive is not None:
            found = await self.archive.find(key)
            if isinstance(found, web.Response):
                return found
            full = found
        if full is None:
            where = "seen recently" if self.archive is None else "seen recently nor in the archive"
            return _json({"error": f"not among the certificates {where}", "key": key}, 404)
        return _message(full)


class LiveCollector(Collector):
    """Prometheus view of values owned elsewhere (the hub, the guard), read at scrape time."""

    def __init__(self, fanout: Fanout, guard: Guard) -> None:
        self._fanout = fanout
        self._guard = guard

    def collect(self) -> Iterable[Metric]:
        hub = self._fanout.hub.stats
        clients = GaugeMetricFamily(
            "certlake_stream_clients", "Connected stream clients", labels=["stream"]
        )
        for kind in StreamKind:
            clients.add_metric([kind.value], hub.clients[kind])
        yield clients
        yield CounterMetricFamily(
            "certlake_stream_dropped",
            "Messages dropped from slow clients' queues",
            value=hub.dropped,
        )
        yield CounterMetricFamily(
            "certlake_stream_disconnected_stalled",
            "Clients cut off for taking nothing, heartbeats included, for too long",
            value=hub.disconnected_stalled,
        )
        refused = CounterMetricFamily(
            "certlake_requests_refused", "Requests refused by the guard", labels=["reason"]
        )
        g = self._guard.stats
        for reason, n in (
            ("unauthorized", g.unauthorized),
            ("rate_limited", g.rate_limited),
            ("server_full", g.server_full),
            ("client_full", g.client_full),
        ):
            refused.add_metric([reason], n)
        yield refused


class PacingCollector(Collector):
    """Each operator's request pacing and each log's learned answer cap, read at scrape time."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    def collect(self) -> Iterable[Metric]:
        labels = ["operator"]
        rate = GaugeMetricFamily(
            "certlake_operator_requests_per_second", "Current adaptive request rate", labels=labels
        )
        limit = GaugeMetricFamily(
            "certlake_operator_learned_limit",
            "Request rate the operator was found to allow (absent until it refused one)",
            labels=labels,
        )
        in_flight = GaugeMetricFamily(
            "certlake_operator_in_flight", "Requests to the operator in flight", labels=labels
        )
        requests = CounterMetricFamily(
            "certlake_operator_requests", "Requests sent to the operator", labels=labels
        )
        refused = CounterMetricFamily(
            "certlake_operator_refused",
            "Requests the operator refused with 429 or 503",
            labels=labels,
        )
        for name, budget in self._fleet.budgets.items():
            s = budget.snapshot()
            rate.add_metric([name], s.rate)
            if s.learned_limit is not None:
                limit.add_metric([name], s.learned_limit)
            in_flight.add_metric([name], s.in_flight)
            requests.add_metric([name], s.requests)
            refused.add_metric([name], s.refused)
        cap = GaugeMetricFamily(
            "certlake_log_answer_cap", "Entries per get-entries answer, as learned", labels=["log"]
        )
        for url, w in self._fleet.watched.items():
            if w.watcher.reader.answer_cap is not None:
                cap.add_metric([url], w.watcher.reader.answer_cap)
        yield from (rate, limit, in_flight, requests, refused, cap)


def build_app(
    config: Config,
    pipeline: Pipeline,
    fleet: Fleet,
    fanout: Fanout,
    metrics: IngestMetrics,
    *,
    sink: DeltaSink | None = None,
    socket_options: SocketOptions | None = None,
    rate_sample_interval: float = 1.0,
) -> web.Application:
    """The live server's application. The caller runs it and starts `fanout` and `fleet` (and
    `sink`, the live archive, when there is one)."""
    guard = Guard.from_config(config)
    stream_resources: set[web.AbstractResource] = set()

    def is_stream(request: web.Request) -> bool:
        # `/` is also the live page: a browser fetching it holds no stream slot, so reloading
        # the page while its own WebSocket is still open is not refused at a per-IP limit of 1.
        resource = request.match_info.route.resource
        if resource is not None and resource.canonical == "/" and is_page_request(request):
            return False
        return resource in stream_resources

    app = web.Application(middlewares=[guard_middleware(guard, is_stream)])
    meter = RateMeter(RATE_WINDOW)
    app[GUARD] = guard
    api = HttpApi(config, pipeline, fleet, fanout, metrics, guard, meter, sink)
    p = config.protocols
    stream_resources.update(
        add_stream_routes(
            app,
            fanout,
            socket_options,
            websocket=p.websocket,
            sse=p.sse,
            dedupe_window=config.stream.dedupe_window,
            wrap_root=with_page,
        )
    )
    add = app.router.add_get
    if p.example_json:
        add("/example.json", api.example)
        add("/latest.json", api.latest)
    if p.health:
        add("/health", api.health)
        add("/health/deep", api.health_deep)
    if p.metrics:
        # A `_created` series per counter and histogram child doubles the output, and neither
        # dashboards nor rate() read them. The switch is prometheus_client's, process-wide.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
        metrics.registry.register(LiveCollector(fanout, guard))
        metrics.registry.register(PacingCollector(fleet))
        add("/metrics", api.metrics_text)
    if p.api:
        add("/api/stats", api.stats)
        add("/api/logs", api.logs)
        add("/api/cert/{key}", api.cert)
    if config.query_api.enabled:
        from certlake.server.archive_api import ArchiveApi

        api.archive = archive = ArchiveApi(config)
        add("/api/query/certs", archive.query_certs)

        async def close_archive(_: web.Application) -> None:
            archive.close()

        app.on_cleanup.append(close_archive)

    async def sample_rate(_: web.Application) -> AsyncIterator[None]:
        async def run() -> None:
            while True:
                meter.observe(time.monotonic(), pipeline.processed)
                await asyncio.sleep(rate_sample_interval)

        task = asyncio.create_task(run(), name="rate meter")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(sample_rate)
    return app

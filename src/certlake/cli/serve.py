"""`certlake serve [--demo]`: watchers → messages → stream (and archive), until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractResolver
from prometheus_client import CollectorRegistry

from certlake.certs.message import Streamed
from certlake.cli.exits import EXIT_OK, EXIT_USAGE
from certlake.config import Config, s3_storage_options
from certlake.ingest.build import build_messages
from certlake.ingest.fleet import Fleet
from certlake.ingest.metrics import IngestMetrics
from certlake.ingest.pipeline import Pipeline
from certlake.ingest.readers import http_client
from certlake.ingest.state import LogState, StateStore
from certlake.ingest.workers import WorkerPool
from certlake.server.app import build_app, http_logger
from certlake.stream.fanout import Fanout
from certlake.stream.hub import HubConfig
from certlake.stream.jetstream import NatsUnavailableError

log = logging.getLogger(__name__)

DEMO_DIR = Path("data")
MAX_BUILD_WORKERS = 8
DEMO_RATE = 25.0  # entries per second: lively on screen, light on a laptop
# The demo's test log is published under this name, whatever port it is bound to: its logs keep
# one identity (state key, the archive's source_url) from run to run (testlog/resolver.py).
DEMO_LOG_HOST = "demo.certlake.invalid"


def hub_config(config: Config) -> HubConfig:
    s = config.stream
    return HubConfig(
        backlog=s.client_queue_size,
        backlog_bytes=s.client_queue_megabytes * 1024 * 1024,
        heartbeat_interval=float(s.heartbeat_interval_secs),
        ping_interval=float(s.ping_interval_secs),
        stall_timeout=float(s.slow_client_timeout_secs),
        resume_ring=s.resume_ring_size,
        resume_ring_bytes=s.resume_ring_megabytes * 1024 * 1024,
    )


def workers_wanted(configured: int | None) -> int:
    """How many build workers to start: as configured, or one per core on a machine with two or
    more (the event loop mostly waits; at 5,000 entries/s on two cores, one worker queued
    entries for over a second, two kept p99 under 0.5 s: benchmarks/server.py, lite5000)."""
    if configured is not None:
        return configured
    cores = os.cpu_count() or 1
    return min(cores, MAX_BUILD_WORKERS) if cores > 1 else 0


def demo_log_size(saved: Iterable[LogState | None], committed: Iterable[int | None]) -> int:
    """How many entries the demo's test log starts with: as many as earlier runs saw, so that
    what the state file and the archive say was passed lies inside the log again (a log that
    restarted empty would leave them beyond its tree, and nothing would stream until it grew
    back). The test log is deterministic: its entries come back with the same certificates at
    the same indices (not the same timestamps, so not the same Merkle tree)."""
    sizes = [0]
    for state in saved:
        if state is not None:
            sizes += [state.current_index, state.tree_size]
    sizes += [c for c in committed if c is not None]
    return max(sizes)


@dataclasses.dataclass(frozen=True, slots=True)
class Demo:
    """What `serve` runs with in the demo: the config watching only the test log, the state
    file read to size that log, and the name resolution that reaches it."""

    config: Config
    state: StateStore
    resolver: AbstractResolver


@contextlib.asynccontextmanager
async def demo_log(config: Config) -> AsyncIterator[Demo]:
    """The built-in test log, growing, and a config that watches only it and archives to
    ./data/certstream — everything offline."""
    from certlake.lake.table import committed_cursors, table_uri
    from certlake.testlog.ecosystem import DEFAULT_LOGS
    from certlake.testlog.resolver import PinnedResolver
    from certlake.testlog.server import TestLogServer, hosted_log_url

    base = f"http://{DEMO_LOG_HOST}"
    urls = [hosted_log_url(base, log) for log in DEFAULT_LOGS]
    state_file = DEMO_DIR / "demo_state.json"
    await asyncio.to_thread(DEMO_DIR.mkdir, exist_ok=True)
    state = await asyncio.to_thread(StateStore.load, state_file)
    committed = await asyncio.to_thread(
        committed_cursors,
        table_uri(config.delta_sink.table_path),
        urls,
        s3_storage_options(config.storage.s3),
    )
    size = demo_log_size((state.get(u) for u in urls), committed.values())
    for url in urls:
        saved = state.get(url)
        if saved is not None and saved.verified is not None:
            # The log is rebuilt each run: the same certificates at the same indices, logged at
            # other times, so another tree. What an earlier run verified was that tree's: kept, it
            # would make this one a split view.
            state.update(url, saved.current_index, saved.tree_size, saved.last_success, None)
    async with TestLogServer(
        host="127.0.0.1", rate=DEMO_RATE, seed=1, initial_size=size, public_url=base
    ) as srv:
        demo = dataclasses.replace(
            config,
            ct_logs_url=srv.log_list_url,
            custom_logs=(),
            static_logs=(),
            ct_log=dataclasses.replace(
                config.ct_log,
                state_file=str(state_file),
                poll_interval_ms=500,
                default_operator_rate_limit_ms=0,
            ),
            # A commit every 5 s: maintenance every 5 minutes keeps the file count down.
            delta_sink=dataclasses.replace(
                config.delta_sink,
                enabled=True,
                flush_interval_secs=5,
                compaction_interval_secs=min(config.delta_sink.compaction_interval_secs, 300),
            ),
            query_api=dataclasses.replace(config.query_api, enabled=True),
        )
        print(
            f"certlake demo: built-in test log at {srv.address}, starting with {size} entries; "
            f"its logs are {' and '.join(urls)}",
            flush=True,
        )
        # aiohttp's connector closes only a resolver it made itself.
        resolver = PinnedResolver({DEMO_LOG_HOST: ("127.0.0.1", srv.port)})
        try:
            yield Demo(demo, state, resolver)
        finally:
            await resolver.close()


async def run_serve(config: Config, demo: bool = False, edge: bool = False) -> int:
    if edge:
        return await serve_edge(config)
    if demo:
        async with demo_log(config) as d:
            return await serve(d.config, state=d.state, resolver=d.resolver)
    return await serve(config)


async def serve(
    config: Config,
    *,
    state: StateStore | None = None,
    resolver: AbstractResolver | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM. `state`: the state file, if the caller read it already;
    `resolver`: name resolution for reading the logs (see `CTHttp`)."""
    registry = CollectorRegistry()
    metrics = IngestMetrics(registry)
    fanout = Fanout(hub_config(config))
    sink = None
    if config.delta_sink.enabled:
        # Delta and Arrow are ~40 MB of the process's memory: loaded only for an archive.
        from certlake.lake.sink import DeltaSink

        sink = DeltaSink.from_config(config, registry)
    relay = None
    publish: Callable[[Streamed], int] = fanout.publish
    if config.stream.nats_url is not None:
        from certlake.stream.jetstream import JetStreamRelay

        relay = JetStreamRelay(config.stream, registry)
        try:
            await relay.start()
        except NatsUnavailableError as exc:
            log.error("cannot start", extra={"error": str(exc)})
            return EXIT_USAGE
        publish = _relayed(fanout.publish, relay.offer)
    n = workers_wanted(config.stream.build_workers)
    workers = WorkerPool(build_messages, n) if n else None
    if workers is not None:
        await workers.start()
    pipeline = Pipeline(metrics, publish, sink, config.api.cache_capacity, workers)
    if state is None and config.ct_log.state_file:
        state = StateStore.load(config.ct_log.state_file)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async with http_client(config.ct_log, resolver) as http:
        if sink is not None:
            await sink.start()
        # Verified heads and the evidence of lying logs, beside the archive they vouch for.
        heads = None
        if sink is not None and config.ct_log.verify:
            from certlake.lake.heads import HeadsRecorder

            heads = HeadsRecorder(sink.uri, sink.storage_options)
        heads_task = asyncio.create_task(heads.run(), name="heads") if heads else None
        fleet = Fleet(
            config,
            http,
            pipeline.consumer,
            metrics,
            state,
            archive_cursor=sink.committed_cursor if sink is not None else None,
            prepare=sink.load_committed if sink is not None else None,
            record_head=heads.record if heads is not None else None,
        )
        app = build_app(config, pipeline, fleet, fanout, metrics, sink=sink)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, logger=http_logger())
        await runner.setup()
        await _listen(runner, config, fanout)
        fleet_task = asyncio.create_task(fleet.run(), name="fleet")
        try:
            stop_task = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait(
                {fleet_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
            )
            if fleet_task in done:
                fleet_task.result()  # the fleet never ends by itself: surface why it did
        finally:
            log.info("shutting down")
            fleet_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fleet_task
            # What the watchers handed over is built and delivered before the archive closes.
            await pipeline.drain()
            if workers is not None:
                await workers.close()
            if heads is not None and heads_task is not None:
                await heads.close()
                await heads_task
                if heads.pending:
                    log.error(
                        "verified heads not written to the archive's side table",
                        extra={"table": heads.uri, "records": heads.pending},
                    )
            if sink is not None:
                # Watchers are stopped: flush what they handed over, then let the state file
                # claim what the archive now holds.
                before = sink.stats.rows_written
                await sink.close()
                log.info(
                    "archive flushed",
                    extra={
                        "table": sink.uri,
                        "final_flush": sink.stats.rows_written - before,
                        "records_committed": sink.stats.rows_written,  # by this run
                        "unwritten": sink.buffered,
                    },
                )
                await fleet.save_state()
            _report_state(state, fleet.watched)
            if relay is not None:
                await relay.close()
            clients = len(fanout.hub.clients())
            fanout.stop()
            await runner.cleanup()
            log.info("clients disconnected; stopped", extra={"clients": clients})
    return EXIT_OK


async def serve_edge(config: Config) -> int:
    """`serve --edge`: no log watched, no archive; clients served from the NATS relay's stream
    (`stream/edge.py`), with its sequence as their cursor."""
    from certlake.stream.edge import EdgeFeed

    try:
        EdgeFeed.check_installed()
    except NatsUnavailableError as exc:
        log.error("cannot start", extra={"error": str(exc)})
        return EXIT_USAGE
    registry = CollectorRegistry()
    metrics = IngestMetrics(registry)

    def deliver(s: Streamed, seq: int) -> None:
        pipeline.keep(s, fanout.publish(s, seq))

    feed = EdgeFeed(config.stream, deliver, config.stream.resume_ring_size)
    fanout = Fanout(hub_config(config), history=feed)
    feed.answer = fanout.hub.give_history
    pipeline = Pipeline(metrics, fanout.publish, None, config.api.cache_capacity, None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with http_client(config.ct_log) as http:
        # Never run: an edge watches no log, and its /api/logs lists none.
        fleet = Fleet(config, http, pipeline.consumer, metrics, None)
        app = build_app(config, pipeline, fleet, fanout, metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, logger=http_logger())
        await runner.setup()
        following = asyncio.create_task(feed.run(), name="edge feed")
        stopping = asyncio.create_task(stop.wait())
        try:
            # Clients only once the edge has caught up with the relay (`EdgeFeed.ready`).
            ready = asyncio.create_task(feed.ready.wait())
            await asyncio.wait({ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if not stop.is_set():
                await _listen(runner, config, fanout)
                await stopping
        finally:
            log.info("shutting down", extra={"last_sequence": feed.last})
            stopping.cancel()
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
            clients = len(fanout.hub.clients())
            fanout.stop()
            await runner.cleanup()
            log.info("clients disconnected; stopped", extra={"clients": clients})
    return EXIT_OK


async def _listen(runner: web.AppRunner, config: Config, fanout: Fanout) -> None:
    """Open the listening socket, start the fan-out, say where clients connect."""
    tls = _tls_context(config)
    await web.TCPSite(runner, config.host, config.port, ssl_context=tls).start()
    fanout.start()
    host, port = runner.addresses[0][:2]
    _announce(str(host), int(port), tls is not None)


def _relayed(
    publish: Callable[[Streamed], int], offer: Callable[[Streamed], None]
) -> Callable[[Streamed], int]:
    """Publish to the local clients and offer to the NATS relay: one build, both ways."""

    def both(s: Streamed) -> int:
        cursor = publish(s)
        offer(s)
        return cursor

    return both


def _report_state(state: StateStore | None, watched: Iterable[str]) -> None:
    """Where the state file says each watched log is to be read next: where the next start
    resumes."""
    if state is None:
        log.info("no state file (ct_log.state_file is null): the next start begins at the heads")
        return
    saved = state.snapshot()
    log.info(
        "state file saved",
        extra={
            "path": str(state.path),
            "cursors": {url: saved[url].current_index for url in watched if url in saved},
        },
    )


def _tls_context(config: Config) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


def _announce(host: str, port: int, tls: bool) -> None:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"{shown}:{port}"
    http, ws = ("https", "wss") if tls else ("http", "ws")
    print(
        f"certlake serving on {http}://{base}\n"
        f"  Page       {http}://{base}/  (open it in a browser)\n"
        f"  WebSocket  {ws}://{base}/ (lite)  {ws}://{base}/full-stream  {ws}://{base}/domains-only\n"
        f"  SSE        {http}://{base}/sse?stream=lite|full|domains\n"
        f"  HTTP       {http}://{base}/example.json  /latest.json  /api/logs  /metrics",
        file=sys.stdout,
        flush=True,
    )

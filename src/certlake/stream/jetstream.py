"""Every streamed entry relayed to a NATS JetStream stream (`stream.nats_url`), for fan-out
beyond one process: the shell around `relay_codec`.

- Ingest never waits for NATS: `offer` appends the entry's relayed bytes to a bounded buffer
  (`stream.nats_buffer` entries) and returns; one task publishes from it. With NATS down or slow
  the buffer fills and its oldest entries are dropped, counted
  (`certlake_nats_dropped_total`) and logged once per outage; the live stream and the archive go
  on as without NATS.
- The stream is created if missing, with bounded retention (`stream.nats_max_age_secs`,
  `stream.nats_max_megabytes`, oldest discarded): it is a relay, not an archive.
- Publishes are pipelined (up to `_WINDOW` unacknowledged) and acknowledged in order. Each
  carries `Nats-Msg-Id = <source_url>#<cert_index>`: after a failure the unacknowledged ones
  are sent again, and JetStream's duplicate window drops those that had landed after all.
- Order per log survives a lost connection: what one TCP connection delivered before it broke is
  a prefix of what was sent on it, so the publisher opens a new connection (nats-py's own
  reconnect would later send what its buffer held, after messages lost in flight, out of order:
  the relay tests caught 173 stored before 172) and resends from the first unacknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from certlake.certs.message import Streamed
from certlake.config import StreamConfig
from certlake.stream.relay_codec import encode_streamed

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.js import JetStreamContext
    from nats.js.api import PubAck

log = logging.getLogger(__name__)

_DEDUPE_WINDOW: Final = 120.0  # seconds JetStream remembers a Nats-Msg-Id

_WINDOW: Final = 256  # publishes awaiting their acknowledgement
_ACK_TIMEOUT: Final = 5.0  # seconds; then the window is sent again
_RETRY_PAUSE: Final = 0.5  # seconds between attempts while NATS does not answer
NEEDS_NATS: Final = (
    "stream.nats_url needs the NATS client: install certlake with its cluster extra "
    "(pip install 'certlake[cluster]')"
)


class NatsUnavailableError(RuntimeError):
    """The NATS client library is not installed."""


class JetStreamRelay:
    def __init__(self, config: StreamConfig, registry: CollectorRegistry) -> None:
        assert config.nats_url is not None
        self.url = config.nats_url
        self.stream = config.nats_stream
        self.subject = config.nats_subject
        self._config = config
        self._buffer: deque[tuple[bytes, str]] = deque()
        self._limit = config.nats_buffer
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()  # nothing buffered, nothing awaiting its acknowledgement
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._nc: NATS | None = None
        self._dropping = False
        self._disconnected = False
        self._closing = False
        self.published = Counter(
            "certlake_nats_published_total",
            "Entries JetStream acknowledged",
            registry=registry,
        )
        self.dropped = Counter(
            "certlake_nats_dropped_total",
            "Entries dropped before NATS took them (its buffer was full)",
            registry=registry,
        )
        self.buffered = Gauge(
            "certlake_nats_buffered", "Entries waiting to be published", registry=registry
        )
        self.buffered.set_function(lambda: len(self._buffer))

    def offer(self, s: Streamed) -> None:
        """Queue `s` for publishing; never waits (see the module doc)."""
        if len(self._buffer) >= self._limit:
            self._buffer.popleft()
            self.dropped.inc()
            if not self._dropping:
                self._dropping = True
                log.error(
                    "NATS is not keeping up: dropping the oldest unpublished entries",
                    extra={"url": self.url, "buffer": self._limit},
                )
        self._buffer.append((encode_streamed(s), f"{s.source_url}#{s.cert_index}"))
        self._idle.clear()
        self._ready.set()

    async def start(self) -> None:
        try:
            import nats  # noqa: F401
        except ImportError as exc:
            raise NatsUnavailableError(NEEDS_NATS) from exc
        self._task = asyncio.create_task(self._run(), name="nats relay")

    async def flushed(self) -> None:
        """Return once everything offered has been acknowledged (or dropped)."""
        await self._idle.wait()

    async def close(self, grace: float = 2.0) -> None:
        """Publish what is buffered for up to `grace` seconds, then disconnect."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flushed(), grace)
        self._closing = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        if self._buffer:
            log.warning(
                "entries not published to NATS at shutdown", extra={"entries": len(self._buffer)}
            )

    async def _connect(self) -> JetStreamContext:
        import nats

        while True:
            try:
                self._nc = await nats.connect(
                    self.url,
                    allow_reconnect=False,  # a new connection instead (see the module doc)
                    name="certlake ingest",
                    # One line per event, not nats-py's traceback per failure.
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                )
                js = self._nc.jetstream(timeout=_ACK_TIMEOUT)
                await self._ensure_stream(js)
                log.info(
                    "publishing to NATS JetStream", extra={"url": self.url, "stream": self.stream}
                )
                return js
            except Exception as exc:  # unreachable, refused, not JetStream: try again later
                if not self._disconnected:
                    self._disconnected = True
                    log.warning(
                        "NATS not reachable; buffering entries",
                        extra={"url": self.url, "error": str(exc) or repr(exc)},
                    )
                if self._nc is not None:
                    with contextlib.suppress(Exception):
                        await self._nc.close()
                    self._nc = None
                await asyncio.sleep(_RETRY_PAUSE)

    async def _on_error(self, exc: Exception) -> None:
        if not self._disconnected:
            log.warning("NATS error", extra={"url": self.url, "error": repr(exc)})

    async def _on_disconnected(self) -> None:
        if not self._disconnected and not self._closing:
            self._disconnected = True
            log.warning(
                "NATS disconnected; buffering entries until a new connection",
                extra={"url": self.url, "buffered": len(self._buffer)},
            )

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        from nats.js.api import DiscardPolicy
        from nats.js.api import StreamConfig as JsStreamConfig
        from nats.js.errors import NotFoundError

        max_age = float(self._config.nats_max_age_secs)
        cfg = JsStreamConfig(
            name=self.stream,
            subjects=[self.subject],
            max_age=max_age,
            max_bytes=self._config.nats_max_megabytes * 1024 * 1024,
            discard=DiscardPolicy.OLD,
            # The server refuses a dedupe window longer than the retention (a test with 1 s
            # of retention found it); a resend comes within seconds of the first send anyway.
            duplicate_window=min(_DEDUPE_WINDOW, max_age),
        )
        try:
            await js.stream_info(self.stream)
        except NotFoundError:
            await js.add_stream(cfg)
        else:
            await js.update_stream(cfg)

    async def _run(self) -> None:
        js = await self._connect()
        window: deque[tuple[tuple[bytes, str], asyncio.Future[PubAck]]] = deque()
        while True:
            if not self._buffer and not window:
                self._idle.set()
                self._ready.clear()
                await self._ready.wait()
            try:
                while self._buffer and len(window) < _WINDOW:
                    # Taken from the buffer only once sent: a publish that raises keeps it.
                    item = self._buffer[0]
                    data, msg_id = item
                    future = await js.publish_async(
                        self.subject, data, headers={"Nats-Msg-Id": msg_id}
                    )
                    self._buffer.popleft()
                    window.append((item, future))
                # Acknowledgements arrive in batches: take every one that has, and wait only
                # when the head has not. (Waiting on each would yield once per entry, and
                # nats-py's flusher would then send each publish in a write of its own.)
                while window and window[0][1].done():
                    window.popleft()[1].result()  # raises what the stream answered
                    self.published.inc()
                    self._dropping = False
                if window and (not self._buffer or len(window) >= _WINDOW):
                    await asyncio.wait_for(asyncio.shield(window[0][1]), _ACK_TIMEOUT)
            except Exception as exc:  # lost connection, a timeout, the stream refused it
                # Send the unacknowledged ones again, first and in order; the message ids make
                # the ones that did land count once.
                for item, future in reversed(window):
                    future.cancel()
                    self._buffer.appendleft(item)
                window.clear()
                log.warning(
                    "NATS publish failed; resending",
                    extra={"error": str(exc) or repr(exc), "buffered": len(self._buffer)},
                )
                assert self._nc is not None
                if not self._nc.is_connected:
                    with contextlib.suppress(Exception):
                        await self._nc.close()
                    js = await self._connect()
                else:
                    await asyncio.sleep(_RETRY_PAUSE)

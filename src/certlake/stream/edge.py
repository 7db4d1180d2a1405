"""`certlake serve --edge`: the relay's JetStream stream (`stream/jetstream.py` publishes it)
read into this process's hub, which serves clients exactly as a single server does.

- The cursor of a message is its JetStream stream sequence, the same on every edge: a client
  cut from one edge resumes on another with `?since=` and misses nothing the ring still holds.
- An edge starts `stream.resume_ring_size` messages back (or at the stream's first), and takes
  clients (`ready`) only once it has read up to where the stream was when it started: a client
  resuming on an edge just restarted would otherwise be told its cursor is ahead of the stream
  (the relay tests caught that) and miss what it asked for.
- nats-py reconnects by itself; the subscription is then made again from the last sequence
  delivered here (the ordered consumer's own recovery waits for missed heartbeats, and a
  restarted NATS has forgotten the consumer: measured, nothing arrived for 4 s after it was
  back). A sequence at or below the last one delivered is a repeat and is left out; one past the
  next one means the stream no longer holds those between (retention passed them while the
  edge was away): the hub skips them (`HubStats.skipped_cursors`) and it is logged.
- A message that does not decode (another producer on the subject) is logged and left out; its
  sequence is skipped like any other.
- The feed is also the hub's `History`: a client resuming from a cursor the ring does not hold
  is fed from the stream itself, read by a short-lived pull consumer from that cursor, as far
  back as the stream's retention reaches (`hub.py` says how it joins the ring).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from certlake.certs.message import Streamed
from certlake.config import StreamConfig
from certlake.stream.hub import Client, StreamMessage
from certlake.stream.jetstream import NEEDS_NATS, NatsUnavailableError
from certlake.stream.relay_codec import RelayDecodeError, decode_streamed

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.subscription import Subscription
    from nats.js import JetStreamContext

log = logging.getLogger(__name__)

_RETRY_PAUSE: Final = 0.5  # seconds between attempts while NATS or the stream is not there
# Messages one history read brings a resuming client: its next read is asked for once the hub
# has queued these, so a client that reads slowly holds no more than this.
_HISTORY_BATCH: Final = 500
_HISTORY_READERS: Final = 4  # history reads in flight at once, for all clients
_HISTORY_TIMEOUT: Final = 5.0  # seconds one read may take

Answer = Callable[[Client, int, list[tuple[int, StreamMessage]], "int | None", int], None]


class EdgeFeed:
    def __init__(
        self, config: StreamConfig, deliver: Callable[[Streamed, int], None], ring: int
    ) -> None:
        assert config.nats_url is not None
        self.url = config.nats_url
        self.stream = config.nats_stream
        self.subject = config.nats_subject
        self._deliver = deliver
        self._ring = ring
        self.last = 0  # the newest sequence delivered
        self._sub: Subscription | None = None
        self._erring = False
        self.ready = asyncio.Event()
        self._ready_at: int | None = None  # the stream's last sequence when the edge started
        self._js: JetStreamContext | None = None
        self.answer: Answer | None = None  # the hub's `give_history`
        self._readers = asyncio.Semaphore(_HISTORY_READERS)
        self._reads: set[asyncio.Task[None]] = set()

    @staticmethod
    def check_installed() -> None:
        try:
            import nats  # noqa: F401
        except ImportError as exc:
            raise NatsUnavailableError(NEEDS_NATS) from exc

    async def run(self) -> None:
        """Until cancelled."""
        nc = await self._connect()
        try:
            js = self._js = nc.jetstream()
            while True:
                try:
                    await self._follow(js)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the stream is not there yet, the subscription ended
                    log.warning(
                        "edge not following the relay stream; trying again",
                        extra={"stream": self.stream, "error": str(exc) or repr(exc)},
                    )
                    await asyncio.sleep(_RETRY_PAUSE)
        finally:
            self._js = None
            for task in list(self._reads):
                task.cancel()
            with contextlib.suppress(Exception):
                await nc.close()

    async def _connect(self) -> NATS:
        import nats

        while True:
            try:
                nc = await nats.connect(
                    self.url,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    name="certlake edge",
                    error_cb=self._on_error,
                    reconnected_cb=self._on_reconnected,
                )
            except Exception as exc:  # not up yet
                log.warning("NATS not reachable yet", extra={"url": self.url, "error": repr(exc)})
                await asyncio.sleep(_RETRY_PAUSE)
                continue
            log.info("edge connected to NATS", extra={"url": self.url, "stream": self.stream})
            return nc

    async def _on_error(self, exc: Exception) -> None:
        if not self._erring:  # one line per outage, not one per reconnect attempt
            self._erring = True
            log.warning("NATS error; reconnecting", extra={"url": self.url, "error": repr(exc)})

    async def _on_reconnected(self) -> None:
        self._erring = False
        log.info("edge reconnected to NATS", extra={"url": self.url, "last_sequence": self.last})
        if self._sub is not None:  # ends `_follow`'s loop: `run` follows again from `last`
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _follow(self, js: JetStreamContext) -> None:
        from nats.js.api import ConsumerConfig, DeliverPolicy

        if self.last:
            start = self.last + 1
        else:
            info = await js.stream_info(self.stream)
            start = max(info.state.first_seq, info.state.last_seq - self._ring + 1, 1)
            if self._ready_at is None:
                self._ready_at = info.state.last_seq
                if self.last >= self._ready_at:
                    self.ready.set()
        sub = await js.subscribe(
            self.subject,
            ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
            ),
        )
        self._sub = sub
        log.info("edge following the relay stream", extra={"stream": self.stream, "from": start})
        try:
            async for msg in sub.messages:
                seq = msg.metadata.sequence.stream
                if seq <= self.last:
                    continue  # a repeat after a reconnect
                if self.last and seq > self.last + 1:
                    log.error(
                        "the relay stream no longer holds what this edge missed",
                        extra={"from": self.last + 1, "to": seq - 1, "lost": seq - self.last - 1},
                    )
                self.last = seq
                try:
                    entry = decode_streamed(msg.data)
                except RelayDecodeError as exc:
                    log.error(
                        "relayed message does not decode", extra={"seq": seq, "error": str(exc)}
                    )
                    continue
                self._deliver(entry, seq)
                if self._ready_at is not None and seq >= self._ready_at:
                    self.ready.set()
        finally:
            self._sub = None
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # --- the hub's History ----------------------------------------------------------------------

    def request(self, client: Client, start: int) -> None:
        task = asyncio.create_task(self._read_history(client, start), name="edge history read")
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _read_history(self, client: Client, start: int) -> None:
        messages: list[tuple[int, StreamMessage]] = []
        first: int | None = None
        last = 0
        try:
            async with self._readers:
                js = self._js
                if js is None:
                    raise NatsUnavailableError("not connected to NATS")
                info = await asyncio.wait_for(js.stream_info(self.stream), _HISTORY_TIMEOUT)
                first, last = info.state.first_seq, info.state.last_seq
                begin = max(start, first)
                count = min(_HISTORY_BATCH, last - begin + 1)
                if count > 0:
                    messages = await asyncio.wait_for(
                        self._fetch(js, begin, count), _HISTORY_TIMEOUT
                    )
        except Exception as exc:  # NATS away, the stream gone, a read that timed out
            log.warning(
                "the relay stream's history could not be read; the client gets what the ring holds",
                extra={"stream": self.stream, "from": start, "error": str(exc) or repr(exc)},
            )
            first = None
        if self.answer is not None:
            self.answer(client, start, messages, first, last)

    async def _fetch(
        self, js: JetStreamContext, begin: int, count: int
    ) -> list[tuple[int, StreamMessage]]:
        """Up to `count` decoded messages from sequence `begin` on."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        sub = await js.pull_subscribe(
            self.subject,
            stream=self.stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=begin,
                # Nothing is acknowledged (pull consumers of this server version need a
                # policy): the consumer lives for this read only.
                ack_policy=AckPolicy.EXPLICIT,
                max_ack_pending=count,
                inactive_threshold=30.0,
                mem_storage=True,
            ),
        )
        got: list[tuple[int, StreamMessage]] = []
        try:
            seen = 0
            while seen < count:
                batch = await sub.fetch(count - seen, timeout=_HISTORY_TIMEOUT)
                for msg in batch:
                    seen += 1
                    seq = msg.metadata.sequence.stream
                    try:
                        got.append((seq, decode_streamed(msg.data)))
                    except RelayDecodeError as exc:
                        log.error(
                            "relayed message does not decode",
                            extra={"seq": seq, "error": str(exc)},
                        )
                if got and got[-1][0] >= begin + count - 1:
                    break
        finally:
            with contextlib.suppress(Exception):
                name = (await sub.consumer_info()).name
                await js.delete_consumer(self.stream, name)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return got

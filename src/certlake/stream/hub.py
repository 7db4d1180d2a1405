"""The fan-out core of the live stream: clients, bounded backlogs, heartbeats, coalesced writes.

No sockets and no event loop here. Time comes in as arguments, bytes leave through a `Sink`
(anything with `write`, `buffered` and `abort`), and the hub asks for a flush through the `wake`
callback it was given. The asyncio shell (`fanout.py`) turns `wake` into a timer and calls
`flush` and `tick`; the transport adapters turn sockets into sinks.

Why it is shaped this way:
- The producer calls `publish` for every CT entry. It must never wait for a client, so publish
  only appends a reference to an already-framed payload to each client's backlog: O(clients)
  appends, no awaits, no I/O.
- Each payload is framed once per wire encoding and the same bytes object is shared by every
  client's backlog; a slow client costs references, not copies.
- A backlog holds at most `backlog` messages. Appending to a full one drops the oldest message,
  and the drop is counted and reported to the client as `"skipped"` in the next heartbeat.
- Writes are coalesced: the flush runs `coalesce` seconds after the first publish that found the
  hub idle, so one `transport.write` carries every frame a client got in that window. A write
  syscall costs far more than a frame, so this is where most of the throughput comes from.
- The kernel buffers megabytes per connection before the transport pushes back, so the hub
  bounds what it hands over: nothing is written to a sink holding `high_water` bytes or more,
  so a sink never holds more than that plus one message frame and a heartbeat and a ping.
  Everything a client is behind by sits in its own backlog, where drop-oldest applies.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from certlake.stream.frames import PING_FRAME, heartbeat_payload, sse_event, ws_frame


class StreamConfigError(ValueError):
    """A fan-out setting is out of range."""


class StreamKind(enum.Enum):
    """Which of the three payloads a client receives; the value names the message attribute."""

    FULL = "full"
    LITE = "lite"
    DOMAINS = "domains"


class Wire(enum.Enum):
    """How payloads are encoded on a client's connection."""

    WEBSOCKET = "websocket"
    SSE = "sse"

    def encode(self, payload: bytes) -> bytes:
        return ws_frame(payload) if self is Wire.WEBSOCKET else sse_event(payload)

    @property
    def ping(self) -> bytes | None:
        """The keep-alive control frame, for wires that have one."""
        return PING_FRAME if self is Wire.WEBSOCKET else None


class StreamMessage(Protocol):
    """One CT entry serialized once into the three certstream payloads."""

    @property
    def full(self) -> bytes: ...

    @property
    def lite(self) -> bytes: ...

    @property
    def domains(self) -> bytes: ...


class Sink(Protocol):
    """The byte side of one client connection."""

    def write(self, data: bytes) -> None:
        """Hand `data` to the transport; must not block."""

    def buffered(self) -> int:
        """Bytes handed over but not yet taken by the kernel."""

    def abort(self) -> None:
        """Drop the connection now, discarding whatever is still buffered."""


Predicate = Callable[[StreamMessage], bool]


@dataclass(frozen=True, slots=True)
class HubConfig:
    """Fan-out tuning. Times are in seconds, sizes in bytes unless named otherwise."""

    backlog: int = 1000  # messages per client
    heartbeat_interval: float = 15.0
    ping_interval: float = 30.0
    # How long a client may be unable to take anything, heartbeats included, before it is cut.
    stall_timeout: float = 120.0
    coalesce: float = 0.005
    high_water: int = 64 * 1024
    tick: float = 0.1

    def __post_init__(self) -> None:
        positive = {
            "backlog": self.backlog,
            "heartbeat_interval": self.heartbeat_interval,
            "ping_interval": self.ping_interval,
            "stall_timeout": self.stall_timeout,
            "high_water": self.high_water,
            "tick": self.tick,
        }
        for name, value in positive.items():
            if value <= 0:
                raise StreamConfigError(f"{name} must be > 0, got {value!r}")
        if self.coalesce < 0:
            raise StreamConfigError(f"coalesce must be >= 0, got {self.coalesce!r}")


@dataclass(eq=False, slots=True)
class Client:
    """One connected client. Identity semantics: clients are keys in the hub's registries."""

    kind: StreamKind
    wire: Wire
    sink: Sink
    # Seam for per-connection filters: a client only queues messages this accepts.
    accepts: Predicate | None
    backlog: deque[bytes]
    last_sent: float
    last_ping: float
    skipped: int = 0  # dropped since the client was last told
    dropped: int = 0  # dropped over the connection's life
    heartbeat_due: bool = False
    ping_due: bool = False
    pending: bool = False
    stalled_since: float | None = None
    closed: bool = False


@dataclass(slots=True)
class HubStats:
    published: int = 0
    dropped: int = 0
    disconnected_stalled: int = 0
    clients: dict[StreamKind, int] = field(default_factory=lambda: dict.fromkeys(StreamKind, 0))


class Hub:
    """Client registry and fan-out state. Single-threaded: call everything from one loop."""

    def __init__(
        self,
        config: HubConfig,
        wake: Callable[[], None],
        wall_clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.stats = HubStats()
        self._wake = wake
        self._wall_clock = wall_clock
        self._seq = 0
        self._groups: dict[tuple[StreamKind, Wire], dict[Client, None]] = {
            (kind, wire): {} for kind in StreamKind for wire in Wire
        }
        self._pending: list[Client] = []
        self._stalled: dict[Client, None] = {}
        self._flush_requested = False

    @property
    def seq(self) -> int:
        """Sequence number of the newest published message (0 before the first)."""
        return self._seq

    def clients(self) -> list[Client]:
        return [c for group in self._groups.values() for c in group]

    def add(
        self,
        kind: StreamKind,
        wire: Wire,
        sink: Sink,
        now: float,
        accepts: Predicate | None = None,
    ) -> Client:
        client = Client(
            kind=kind,
            wire=wire,
            sink=sink,
            accepts=accepts,
            backlog=deque(maxlen=self.config.backlog),
            last_sent=now,
            last_ping=now,
        )
        self._groups[(kind, wire)][client] = None
        self.stats.clients[kind] += 1
        return client

    def remove(self, client: Client) -> None:
        """Forget a client; idempotent, so both the hub and the transport may call it."""
        if client.closed:
            return
        client.closed = True
        del self._groups[(client.kind, client.wire)][client]
        self._stalled.pop(client, None)
        client.backlog.clear()
        self.stats.clients[client.kind] -= 1

    def publish(self, message: StreamMessage) -> int:
        """Queue `message` for every client that accepts it; returns its sequence number."""
        self._seq += 1
        self.stats.published += 1
        limit = self.config.backlog
        pending = self._pending
        for (kind, wire), group in self._groups.items():
            if not group:
                continue
            frame = wire.encode(getattr(message, kind.value))
            for client in group:
                if client.accepts is not None and not client.accepts(message):
                    continue
                backlog = client.backlog
                if len(backlog) == limit:
                    client.skipped += 1
                    client.dropped += 1
                    self.stats.dropped += 1
                backlog.append(frame)
                if not client.pending:
                    client.pending = True
                    pending.append(client)
        self._request_flush()
        return self._seq

    def flush(self, now: float) -> None:
        """Write what each pending client can take; clients that cannot take more are parked."""
        self._flush_requested = False
        batch, self._pending = self._pending, []
        for client in batch:
            client.pending = False
            if not client.closed:
                self._write(client, now)
        self._request_flush()

    def tick(self, now: float) -> None:
        """Housekeeping every `config.tick`: heartbeats, pings, stalled clients."""
        config = self.config
        for client in list(self._stalled):
            if client.sink.buffered() < config.high_water:
                self._mark_pending(client)
            elif now - (client.stalled_since or now) >= config.stall_timeout:
                self.stats.disconnected_stalled += 1
                self.remove(client)
                client.sink.abort()
        for group in self._groups.values():
            for client in group:
                due = False
                if now - client.last_sent >= config.heartbeat_interval:
                    client.heartbeat_due = due = True
                if client.wire.ping is not None and now - client.last_ping >= config.ping_interval:
                    client.ping_due = due = True
                    client.last_ping = now
                if due:
                    self._mark_pending(client)
        self._request_flush()

    def _write(self, client: Client, now: float) -> None:
        room = self.config.high_water - client.sink.buffered()
        if room <= 0:
            if client.stalled_since is None:
                client.stalled_since = now
                self._stalled[client] = None
            return
        if client.stalled_since is not None:
            client.stalled_since = None
            del self._stalled[client]
        chunks: list[bytes] = []
        if client.ping_due:
            ping = client.wire.ping
            if ping is not None:
                chunks.append(ping)
            client.ping_due = False
        heartbeat = bool(client.skipped or client.heartbeat_due)
        if heartbeat:
            payload = heartbeat_payload(self._wall_clock(), client.skipped)
            chunks.append(client.wire.encode(payload))
            client.skipped = 0
            client.heartbeat_due = False
        size = 0
        backlog = client.backlog
        while backlog and size < room:
            frame = backlog.popleft()
            chunks.append(frame)
            size += len(frame)
        if chunks:
            client.sink.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            # A ping alone does not count: certstream-go clients only see data frames.
            if heartbeat or size:
                client.last_sent = now
        if backlog:
            self._mark_pending(client)

    def _mark_pending(self, client: Client) -> None:
        if not client.pending:
            client.pending = True
            self._pending.append(client)

    def _request_flush(self) -> None:
        if self._pending and not self._flush_requested:
            self._flush_requested = True
            self._wake()

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
- A backlog holds at most `backlog` messages and `backlog_bytes` of frames. Appending to a
  full one drops the oldest message(s), and the drop is counted and reported to the client as
  `"skipped"` in the next heartbeat.
- Every message gets the next cursor (see `resume.py`), spliced into its payload once per
  stream kind, and goes into a bounded ring. A client that connects with `since` is fed from
  the ring, as its connection takes it, and joins the live fan-out when it has caught up:
  `add` registers it and plans its replay in one synchronous step, and `publish` appends to
  the ring before it looks at any client, so every message reaches it exactly once — from the
  ring or live.
- Clients choose what they get before anything is queued for them, live and in replay alike.
  A client registered with `keys` (its exact and `*.` domain filters, see `filters.py`) is
  only offered messages whose facts share one of them: the hub looks each of a message's few
  keys up in an index, so such clients cost nothing for the messages they do not want, however
  many there are. Then a client's `accepts` predicate (its other filters, its
  de-duplication), if any, decides. The frame of a message no client takes is never built.
- Writes are coalesced: the flush runs `coalesce` seconds after the first publish that found the
  hub idle, so one `transport.write` carries every frame a client got in that window. A write
  syscall costs far more than a frame, so this is where most of the throughput comes from.
- The kernel buffers megabytes per connection before the transport pushes back, so the hub
  bounds what it hands over: nothing is written to a sink holding `high_water` bytes or more,
  so a sink never holds more than that plus one message frame and a heartbeat and a ping.
  Everything a client is behind by sits in its own backlog, where drop-oldest applies.
- An edge's hub (`stream/edge.py`) numbers messages by the relay's sequence, the same on every
  edge and in the relay's stream, and is given a `History`: that stream. A client resuming from
  before the ring is fed from it, then from the ring, with no gap and no duplicate at either
  seam; one resuming from a cursor this edge has not read yet (it lags the edge the client came
  from) waits for it instead of being told it is ahead. Only what the stream no longer holds is
  reported lost. Cursors an edge skips (the stream dropped them while it was away) are counted
  in every live client's `skipped`, which its next heartbeat reports.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from certlake.stream.dedupe import Identified
from certlake.stream.filters import FactsCache, Selectable
from certlake.stream.frames import PING_FRAME, heartbeat_payload, sse_event, ws_frame
from certlake.stream.resume import CursorRing, ResumeError, plan_resume, stamp_cursor

# Ring entries a replaying client's filter looks at per flush, so that many clients resuming at
# once (after a network blip) cannot hold the loop for long in one go.
REPLAY_SCAN = 1000


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

    def encode(self, payload: bytes, cursor: int | None = None) -> bytes:
        """`payload` framed for this wire; `cursor` is the message's, None for heartbeats and
        notices (SSE names it as the event id; a WebSocket frame has no place for it)."""
        return ws_frame(payload) if self is Wire.WEBSOCKET else sse_event(payload, cursor)

    @property
    def ping(self) -> bytes | None:
        """The keep-alive control frame, for wires that have one."""
        return PING_FRAME if self is Wire.WEBSOCKET else None


class StreamMessage(Selectable, Identified, Protocol):
    """One CT entry serialized once into the three certstream payloads, with the fields that
    clients' filters and de-duplication read."""

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


class History(Protocol):
    """Where an edge's hub finds the messages its ring does not hold (the relay's stream)."""

    def request(self, client: Client, start: int) -> None:
        """Read messages from cursor `start` on for `client`, and answer, later and on the
        hub's loop, with `Hub.give_history`."""


@dataclass(frozen=True, slots=True)
class HubConfig:
    """Fan-out tuning. Times are in seconds, sizes in bytes unless named otherwise."""

    # Messages per client. A tree head of a busy log, or of many logs at once, brings thousands
    # of entries within a second; the backlog must hold such a burst for a client that keeps up
    # on average. It holds references to frames shared by every client, not copies.
    backlog: int = 10_000
    # ... and at most this many bytes of frames: a full-stream message is ~5x a lite one, and
    # the count alone would let one slow full-stream client hold ~75 MB.
    backlog_bytes: int = 32 * 1024 * 1024
    heartbeat_interval: float = 15.0
    ping_interval: float = 30.0
    # How long a client may be unable to take anything, heartbeats included, before it is cut.
    stall_timeout: float = 120.0
    coalesce: float = 0.005
    # Bytes a sink may hold before the hub stops handing it more. Each flush writes up to this
    # much, so it also caps one client's rate at high_water per coalescing window: 64 KiB
    # every 5 ms (12.8 MB/s) was below a full stream's bursts at 2,000 entries/s.
    high_water: int = 1024 * 1024
    tick: float = 0.1
    resume_ring: int = 10_000  # messages kept for `since`; 0 disables replay
    # ... and at most this many payload bytes of them (all three payloads of each message): the
    # ring is most of what the server's memory holds.
    resume_ring_bytes: int = 48 * 1024 * 1024

    def __post_init__(self) -> None:
        positive = {
            "backlog": self.backlog,
            "backlog_bytes": self.backlog_bytes,
            "heartbeat_interval": self.heartbeat_interval,
            "ping_interval": self.ping_interval,
            "stall_timeout": self.stall_timeout,
            "high_water": self.high_water,
            "resume_ring_bytes": self.resume_ring_bytes,
            "tick": self.tick,
        }
        for name, value in positive.items():
            if value <= 0:
                raise StreamConfigError(f"{name} must be > 0, got {value!r}")
        for name, value in (("coalesce", self.coalesce), ("resume_ring", self.resume_ring)):
            if value < 0:
                raise StreamConfigError(f"{name} must be >= 0, got {value!r}")


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
    queued: int = 0  # bytes in `backlog`
    skipped: int = 0  # dropped since the client was last told
    dropped: int = 0  # dropped over the connection's life
    heartbeat_due: bool = False
    ping_due: bool = False
    pending: bool = False
    stalled_since: float | None = None
    closed: bool = False
    # The next cursor to feed from the ring while the client catches up; None once it is live.
    replay_next: int | None = None
    # An edge's client outside the ring: what `History` answered, (cursor, message) in order,
    # whether an answer is awaited, and whether the last one held nothing (no use asking again
    # until the ring reaches the client's cursor).
    history: deque[tuple[int, StreamMessage]] = field(default_factory=deque)
    history_asked: bool = False
    history_dry: bool = False
    # Index keys: when set, the client is only offered messages whose facts share one.
    keys: frozenset[str] | None = None


@dataclass(slots=True)
class HubStats:
    published: int = 0
    # Messages dropped from slow clients' backlogs, by the clients' wire.
    dropped_on: dict[Wire, int] = field(default_factory=lambda: dict.fromkeys(Wire, 0))
    disconnected_stalled: int = 0
    # Cursors never published here: an edge that started, or came back, past them.
    skipped_cursors: int = 0
    clients: dict[StreamKind, int] = field(default_factory=lambda: dict.fromkeys(StreamKind, 0))

    @property
    def dropped(self) -> int:
        return sum(self.dropped_on.values())


class Hub:
    """Client registry and fan-out state. Single-threaded: call everything from one loop."""

    def __init__(
        self,
        config: HubConfig,
        wake: Callable[[], None],
        wall_clock: Callable[[], float],
        cursor_base: int = 0,
        history: History | None = None,
    ) -> None:
        """`history`: an edge's relay stream (see the module doc); cursors are then given with
        each message."""
        self.config = config
        self._history = history
        self.stats = HubStats()
        self._wake = wake
        self._wall_clock = wall_clock
        self._base = cursor_base
        self._seq = cursor_base
        self._ring: CursorRing[StreamMessage] = CursorRing(
            config.resume_ring, cursor_base, config.resume_ring_bytes, _payload_bytes
        )
        # What clients' filters derive from a message, computed once per message for all.
        self.facts = FactsCache()
        # Every client, by stream and wire; `_scan` holds those without keys, which publish
        # offers every message, and `_index` the others, by each of their keys.
        self._groups: dict[tuple[StreamKind, Wire], dict[Client, None]] = {
            (kind, wire): {} for kind in StreamKind for wire in Wire
        }
        self._scan: dict[tuple[StreamKind, Wire], dict[Client, None]] = {
            group: {} for group in self._groups
        }
        self._index: dict[str, dict[Client, None]] = {}
        self._pending: list[Client] = []
        self._stalled: dict[Client, None] = {}
        # Replaying clients with nothing to read until the next publish (edges only).
        self._waiting: dict[Client, None] = {}
        self._flush_requested = False

    @property
    def seq(self) -> int:
        """Cursor of the newest published message (`cursor_base` before the first)."""
        return self._seq

    def clients(self) -> list[Client]:
        return [c for group in self._groups.values() for c in group]

    def client_count(self, kind: StreamKind, wire: Wire) -> int:
        return len(self._groups[(kind, wire)])

    def add(
        self,
        kind: StreamKind,
        wire: Wire,
        sink: Sink,
        now: float,
        accepts: Predicate | None = None,
        since: int | None = None,
        keys: frozenset[str] | None = None,
    ) -> Client:
        """Register a client. `keys` and `accepts` choose the messages it gets (see the module
        doc). With `since`, it first gets every message after that cursor that the ring still
        holds (preceded by a notice when that is not all of them; see `resume.py`), then the
        live stream: the plan is made here, in the same step as the registration, so no publish
        can fall between the two."""
        client = Client(
            kind=kind,
            wire=wire,
            sink=sink,
            accepts=accepts,
            backlog=deque(maxlen=self.config.backlog),
            last_sent=now,
            last_ping=now,
            keys=keys,
        )
        self._groups[(kind, wire)][client] = None
        if keys is None:
            self._scan[(kind, wire)][client] = None
        else:
            for key in keys:
                self._index.setdefault(key, {})[client] = None
        self.stats.clients[kind] += 1
        if since is not None:
            self._resume(client, since)
        return client

    def remove(self, client: Client) -> None:
        """Forget a client; idempotent, so both the hub and the transport may call it."""
        if client.closed:
            return
        client.closed = True
        del self._groups[(client.kind, client.wire)][client]
        if client.keys is None:
            del self._scan[(client.kind, client.wire)][client]
        else:
            for key in client.keys:
                indexed = self._index[key]
                del indexed[client]
                if not indexed:
                    del self._index[key]
        self._stalled.pop(client, None)
        self._waiting.pop(client, None)
        client.history.clear()
        client.backlog.clear()
        client.queued = 0
        self.stats.clients[client.kind] -= 1

    def publish(self, message: StreamMessage, cursor: int | None = None) -> int:
        """Queue `message` for every live client that takes it; returns its cursor, the next
        one, or `cursor` when given (an edge numbers messages by their relay's sequence). A
        given cursor past the next one skips the ones between: the ring starts again there (a
        resume from before it is told what it lost, `resume.py`); `skipped_cursors` counts
        them."""
        if cursor is None:
            cursor = self._seq + 1
        elif cursor != self._seq + 1:
            if cursor <= self._seq:
                raise ResumeError(f"cursor {cursor} is not after {self._seq}")
            gone = cursor - self._seq - 1
            self.stats.skipped_cursors += gone
            self._ring.restart(cursor - 1)
            if self._seq > self._base:  # live clients were owed those: say so
                for client in self.clients():
                    if client.replay_next is None:
                        client.skipped += gone
                        self._mark_pending(client)
        self._seq = cursor
        self.stats.published += 1
        self._ring.append(cursor, message)
        if self._waiting:
            for client in self._waiting:
                self._mark_pending(client)
            self._waiting.clear()
        frames = _Frames(message, cursor)
        groups: Iterable[tuple[tuple[StreamKind, Wire], Iterable[Client]]] = self._scan.items()
        if self._index:
            groups = itertools.chain(groups, self._offered(message).items())
        limit = self.config.backlog
        byte_limit = self.config.backlog_bytes
        pending = self._pending
        for (kind, wire), group in groups:
            frame: bytes | None = None
            for client in group:
                if client.replay_next is not None:
                    continue  # still catching up: the ring will carry this message to it
                if client.accepts is not None and not client.accepts(message):
                    continue
                if frame is None:
                    frame = frames.get(kind, wire)
                backlog = client.backlog
                if len(backlog) == limit:
                    client.queued -= len(backlog[0])  # the append below pushes it out
                    client.skipped += 1
                    client.dropped += 1
                    self.stats.dropped_on[wire] += 1
                backlog.append(frame)
                client.queued += len(frame)
                if client.queued > byte_limit:
                    self._drop_to_fit(client)
                if not client.pending:
                    client.pending = True
                    pending.append(client)
        self._request_flush()
        return cursor

    def _offered(self, message: StreamMessage) -> dict[tuple[StreamKind, Wire], list[Client]]:
        """The indexed clients whose keys the message's facts share, by stream and wire."""
        index = self._index
        offered: dict[Client, None] = {}
        for key in self.facts.of(message).keys:
            clients = index.get(key)
            if clients is not None:
                offered |= clients
        groups: dict[tuple[StreamKind, Wire], list[Client]] = {}
        for client in offered:
            groups.setdefault((client.kind, client.wire), []).append(client)
        return groups

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
        if client.replay_next is not None:
            self._replay(client, room)
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
        client.queued -= size
        if chunks:
            client.sink.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            # A ping alone does not count: certstream-go clients only see data frames.
            if heartbeat or size:
                client.last_sent = now
        if backlog or (client.replay_next is not None and client not in self._waiting):
            self._mark_pending(client)

    def give_history(
        self,
        client: Client,
        start: int,
        messages: Iterable[tuple[int, StreamMessage]],
        first: int | None,
        last: int,
    ) -> None:
        """`History`'s answer to `request(client, start)`: `messages` from `start` on, in cursor
        order, and the oldest (`first`) and newest (`last`) cursor the stream held; `first` is
        None when it could not be read (the client then gets what the ring holds, told what it
        lost)."""
        client.history_asked = False
        if client.closed or client.replay_next != start:
            return
        ring = self._ring
        client.history = deque(messages)
        client.history_dry = first is not None and not client.history
        if first is None:
            plan = plan_resume(start - 1, ring.oldest, ring.newest, self._base)
        else:
            # What the stream and the ring hold together: the ring may still hold what the
            # stream's retention dropped, and may have moved past the stream's answer.
            plan = plan_resume(
                start - 1, min(first, ring.oldest), max(last, ring.newest), self._base
            )
        if plan.notice is not None:
            self._enqueue(client, client.wire.encode(plan.notice))
        client.replay_next = plan.start
        self._waiting.pop(client, None)
        self._mark_pending(client)
        self._request_flush()

    def _resume(self, client: Client, since: int) -> None:
        ring = self._ring
        if self._history is not None and not ring.oldest - 1 <= since <= ring.newest:
            client.replay_next = since + 1  # from the relay's stream first (`_replay`)
            self._mark_pending(client)
            self._request_flush()
            return
        plan = plan_resume(since, ring.oldest, ring.newest, self._base)
        if plan.notice is not None:
            self._enqueue(client, client.wire.encode(plan.notice))
        if plan.start <= ring.newest:
            client.replay_next = plan.start
        if client.backlog or client.replay_next is not None:
            self._mark_pending(client)
            self._request_flush()

    def _replay(self, client: Client, room: int) -> None:
        """Move what the client is owed from the ring into its backlog: about `room` bytes, at
        most `REPLAY_SCAN` ring entries; it goes live when nothing is left to replay."""
        ring, backlog = self._ring, client.backlog
        start = client.replay_next
        assert start is not None
        if len(backlog) == backlog.maxlen:
            return  # a full deque would drop its oldest frame on the next append
        outside = start < ring.oldest or start > ring.newest + 1
        if outside and self._history is not None:
            self._replay_history(client, room)
            return
        client.history.clear()
        if start < ring.oldest:  # the ring moved on while the client was reading slowly
            plan = plan_resume(start - 1, ring.oldest, ring.newest, self._base)
            if plan.notice is not None:
                self._enqueue(client, client.wire.encode(plan.notice))
            start = plan.start
        size = client.queued
        for cursor, message in ring.items(start, REPLAY_SCAN):
            if size >= room or len(backlog) == backlog.maxlen:
                break
            start = cursor + 1
            size += self._offer(client, cursor, message)
        client.replay_next = start if start <= ring.newest else None

    def _replay_history(self, client: Client, room: int) -> None:
        """`_replay` for a client outside the ring, from what `History` answered; ask it for
        more when that is used up (unless its last answer held nothing and the client is ahead
        of the ring: the ring will reach it)."""
        ring, backlog, history = self._ring, client.backlog, client.history
        start = client.replay_next
        assert start is not None and self._history is not None
        size, scanned, most = client.queued, 0, backlog.maxlen or self.config.backlog
        while history and size < room and len(backlog) < most and scanned < REPLAY_SCAN:
            cursor, message = history.popleft()
            scanned += 1
            if cursor < start:
                continue
            start = cursor + 1  # the stream holds none of the cursors between
            size += self._offer(client, cursor, message)
            if ring.oldest <= start <= ring.newest + 1:
                history.clear()  # the ring takes over from here
                break
        client.replay_next = start
        if ring.oldest <= start <= ring.newest + 1 or history:
            return  # `_write` comes back: the ring, or more of the answer, is ready
        self._waiting[client] = None  # until the answer, or a publish that brings the ring closer
        if not client.history_asked and not (client.history_dry and start > ring.newest + 1):
            client.history_asked = True
            self._history.request(client, start)

    def _offer(self, client: Client, cursor: int, message: StreamMessage) -> int:
        """Queue a replayed message if the client's filters take it; the bytes queued."""
        keys, accepts = client.keys, client.accepts
        if keys is not None and keys.isdisjoint(self.facts.of(message).keys):
            return 0
        if accepts is not None and not accepts(message):
            return 0
        frame = _Frames(message, cursor).get(client.kind, client.wire)
        self._enqueue(client, frame)
        return len(frame)

    def _enqueue(self, client: Client, frame: bytes) -> None:
        """Append outside the publish loop (notices, replay): the same bounds, the same count."""
        backlog = client.backlog
        if len(backlog) == backlog.maxlen:
            client.queued -= len(backlog[0])
            client.skipped += 1
            client.dropped += 1
            self.stats.dropped_on[client.wire] += 1
        backlog.append(frame)
        client.queued += len(frame)
        if client.queued > self.config.backlog_bytes:
            self._drop_to_fit(client)

    def _drop_to_fit(self, client: Client) -> None:
        """Drop the oldest frames until the backlog is within its bytes (the newest stays)."""
        backlog, limit = client.backlog, self.config.backlog_bytes
        while client.queued > limit and len(backlog) > 1:
            client.queued -= len(backlog.popleft())
            client.skipped += 1
            client.dropped += 1
            self.stats.dropped_on[client.wire] += 1

    def _mark_pending(self, client: Client) -> None:
        if not client.pending:
            client.pending = True
            self._pending.append(client)

    def _request_flush(self) -> None:
        if self._pending and not self._flush_requested:
            self._flush_requested = True
            self._wake()


def _payload_bytes(message: StreamMessage) -> int:
    return len(message.full) + len(message.lite) + len(message.domains)


class _Frames:
    """The frames of one message, each built on first use: the cursor is spliced in once per
    stream kind and the result framed once per wire, whatever the number of clients."""

    __slots__ = ("_cursor", "_frames", "_message", "_stamped")

    def __init__(self, message: StreamMessage, cursor: int) -> None:
        self._message = message
        self._cursor = cursor
        self._stamped: dict[StreamKind, bytes] = {}
        self._frames: dict[tuple[StreamKind, Wire], bytes] = {}

    def get(self, kind: StreamKind, wire: Wire) -> bytes:
        frame = self._frames.get((kind, wire))
        if frame is None:
            payload = self._stamped.get(kind)
            if payload is None:
                payload = stamp_cursor(getattr(self._message, kind.value), self._cursor)
                self._stamped[kind] = payload
            frame = self._frames[(kind, wire)] = wire.encode(payload, self._cursor)
        return frame

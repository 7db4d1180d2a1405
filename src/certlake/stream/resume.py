"""Stream cursors and resume: what lets a client reconnect without losing anything.

Cursors. The hub numbers every message it publishes: consecutive integers, +1 per message. They
start just above the server's start time in microseconds since the Unix epoch, so a restarted
server's cursors are all greater than its previous run's (a run would have to average a million
messages a second to catch up), they tell a cursor from an earlier run apart, and they stay
below 2**53, exact in JavaScript, until the 2250s.

Where a cursor goes. Payloads are serialized once per entry by the message builder; the hub
splices the cursor in once per message (not per client), as the first member of `data` for the
full and lite streams — certstream clients hand `data` to their callback, so it travels with
it — and, since `data` is a list there, as a last top-level member for domains-only:

    {"data":{"cursor":1732291200000001,"cert_index":…},"message_type":"certificate_update"}\\n
    {"data":["example.com"],"message_type":"dns_entries","cursor":1732291200000001}

Everything else is byte for byte what the builder made. Payloads of any other shape are sent
unchanged (the hub is also used with plain test payloads).

Resume. `?since=C` asks for every message with a cursor greater than C, then the live stream.
The hub keeps the last `resume_ring_size` messages in a `CursorRing` and plays them to the
client before it joins the live stream, with no gap and no duplicate at the seam (see
`hub.Hub.add`). When the client cannot get everything, it is told first, in one message:

    {"message_type":"resume_gap","since":C,"oldest_cursor":M,"lost":N}

`oldest_cursor` is where the replay starts: the oldest cursor the ring holds (or the next one to
be published, when the ring is empty). `lost` is how many messages were published after C and
are gone, counted before the client's own filters (it may have wanted none of them); it is null
when C is from an earlier run of the server, whose messages after C cannot be counted. A cursor the
server has not issued yet (its clock was set back, or the client made it up) gives

    {"message_type":"resume_ahead","since":C,"latest_cursor":L}

and the client continues from now. The same `resume_gap` message is sent later if the client
replays so slowly that the ring overwrites what it had not read yet.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class ResumeError(ValueError):
    """A cursor ring used out of its contract (negative size, a cursor out of sequence)."""


_OBJECT_DATA = b'{"data":{'
_LIST_DATA = b'{"data":['


def cursor_base(unix_ns: int) -> int:
    """The cursor before a run's first message, from the run's start time."""
    return unix_ns // 1000


def stamp_cursor(payload: bytes, cursor: int) -> bytes:
    """`payload` with `cursor` spliced in where the module doc says."""
    if payload.startswith(_OBJECT_DATA):
        rest = payload[len(_OBJECT_DATA) :]
        comma = b"" if rest.startswith(b"}") else b","
        return b'{"data":{"cursor":%d%b%b' % (cursor, comma, rest)
    if payload.startswith(_LIST_DATA) and payload.endswith(b"}"):
        return b'%b,"cursor":%d}' % (payload[:-1], cursor)
    return payload


class CursorRing(Generic[T]):
    """The last `capacity` published items, by cursor, and no more than `max_bytes` of them by
    `size_of`: the oldest go first when either bound is passed. Cursors are consecutive, so an
    item is found by arithmetic: slot = cursor mod capacity."""

    def __init__(
        self,
        capacity: int,
        base: int,
        max_bytes: int | None = None,
        size_of: Callable[[T], int] | None = None,
    ) -> None:
        if capacity < 0:
            raise ResumeError(f"ring capacity must be >= 0, got {capacity}")
        if (max_bytes is None) != (size_of is None):
            raise ResumeError("a ring bounded in bytes needs both max_bytes and size_of")
        self.capacity = capacity
        self._slots: list[T | None] = [None] * capacity
        self._first = base + 1  # the oldest cursor held: nothing older was ever held this run
        self._next = base + 1  # the cursor the next append gets
        self._max_bytes = max_bytes
        self._size_of = size_of
        self._sizes: deque[int] = deque()  # of the items held, oldest first (bytes bound only)
        self.bytes = 0

    @property
    def oldest(self) -> int:
        """The oldest cursor held; `newest + 1` when nothing is."""
        return max(self._next - self.capacity, self._first)

    @property
    def newest(self) -> int:
        return self._next - 1

    def append(self, cursor: int, item: T) -> None:
        if cursor != self._next:
            raise ResumeError(f"cursor {cursor} out of sequence, expected {self._next}")
        if self.capacity:
            slot = cursor % self.capacity
            sizes = self._sizes
            if self._size_of is not None:
                if len(sizes) == self.capacity:  # the slot's item leaves by the count bound
                    self.bytes -= sizes.popleft()
                    self._first = max(self._first, cursor - self.capacity + 1)
                size = self._size_of(item)
                sizes.append(size)
                self.bytes += size
            self._slots[slot] = item
            self._next = cursor + 1
            assert self._max_bytes is None or self._size_of is not None
            while self._max_bytes is not None and self.bytes > self._max_bytes and len(sizes) > 1:
                self.bytes -= sizes.popleft()
                self._slots[self._first % self.capacity] = None
                self._first += 1
        else:
            self._next = cursor + 1

    def restart(self, base: int) -> None:
        """Hold nothing, the next append being `base + 1`: the cursors between were never
        published here."""
        self._slots = [None] * self.capacity
        self._sizes.clear()
        self.bytes = 0
        self._first = self._next = base + 1

    def get(self, cursor: int) -> T:
        if not self.oldest <= cursor <= self.newest:
            raise KeyError(cursor)
        item = self._slots[cursor % self.capacity]
        assert item is not None  # every cursor in range was appended
        return item

    def items(self, start: int, limit: int) -> Iterator[tuple[int, T]]:
        """Up to `limit` (cursor, item) pairs from cursor `start` (clamped to what is held)."""
        for cursor in range(max(start, self.oldest), min(self._next, start + limit)):
            yield cursor, self.get(cursor)


@dataclass(frozen=True, slots=True)
class ResumePlan:
    """Where a resuming client starts in the ring, and what it is told first (a JSON payload)."""

    start: int
    notice: bytes | None


def plan_resume(since: int, oldest: int, newest: int, base: int) -> ResumePlan:
    """The plan for `?since=since` when the ring holds cursors `oldest..newest` (oldest =
    newest + 1 when empty) and this run's cursors began after `base`."""
    if since > newest:
        notice = b'{"message_type":"resume_ahead","since":%d,"latest_cursor":%d}' % (since, newest)
        return ResumePlan(newest + 1, notice)
    if since >= oldest - 1:
        return ResumePlan(since + 1, None)
    lost = b"%d" % (oldest - since - 1) if since >= base else b"null"
    notice = b'{"message_type":"resume_gap","since":%d,"oldest_cursor":%d,"lost":%b}' % (
        since,
        oldest,
        lost,
    )
    return ResumePlan(oldest, notice)

"""An edge's hub and its `History` (the relay's stream), without sockets or NATS: a client
resuming from any cursor the stream still holds gets every message after it exactly once, from
the stream and then from the ring; what the stream no longer holds is counted; a cursor the edge
has not read yet (it lags) is waited for; one the relay never issued is called ahead."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from certlake.stream.hub import Client, Hub, HubConfig, StreamKind, StreamMessage, Wire
from support.stream import MemorySink, Msg, split_frames


def msg(cursor: int) -> Msg:
    return Msg(b'{"full":%d}\n' % cursor, b'{"lite":%d}\n' % cursor, b'{"domains":%d}' % cursor)


class Stream:
    """The relay's stream as History sees it: sequences `first..last`, read `batch` at a time;
    requests are answered when the test says (`answer`), as NATS answers later."""

    def __init__(self, first: int, last: int, batch: int = 7) -> None:
        self.first, self.last, self.batch = first, last, batch
        self.hub: Hub | None = None
        self.asked: list[tuple[Client, int]] = []
        self.broken = False

    def request(self, client: Client, start: int) -> None:
        self.asked.append((client, start))

    def answer(self) -> int:
        assert self.hub is not None
        asked, self.asked = self.asked, []
        for client, start in asked:
            if self.broken:
                self.hub.give_history(client, start, [], None, 0)
                continue
            begin = max(start, self.first)
            got: list[tuple[int, StreamMessage]] = [
                (c, msg(c)) for c in range(begin, min(self.last, begin + self.batch - 1) + 1)
            ]
            self.hub.give_history(client, start, got, self.first, self.last)
        return len(asked)


class Edge:
    def __init__(self, stream: Stream, ring: int = 10) -> None:
        self.stream = stream
        self.hub = Hub(
            HubConfig(resume_ring=ring),
            wake=lambda: None,
            wall_clock=lambda: 1_700_000_000.0,
            history=stream,
        )
        stream.hub = self.hub
        self.now = 0.0

    def publish(self, first: int, last: int) -> None:
        for c in range(first, last + 1):
            self.hub.publish(msg(c), cursor=c)

    def connect(self, since: int | None = None) -> MemorySink:
        sink = MemorySink()
        self.hub.add(StreamKind.LITE, Wire.WEBSOCKET, sink, self.now, since=since)
        return sink

    def settle(self) -> None:
        """Flush and answer until nothing moves."""
        for _ in range(10_000):
            self.now += 0.001
            self.hub.flush(self.now)
            if not self.stream.answer() and not self.hub._pending:
                return
        raise AssertionError("the hub did not settle")


def received(sink: MemorySink) -> tuple[list[int], list[dict[str, Any]]]:
    """The cursors of the messages a client got, in order, and every other message."""
    cursors, others = [], []
    for write in sink.writes:
        for _, payload in split_frames(write):
            doc = json.loads(payload)
            if "lite" in doc:
                cursors.append(doc["lite"])
            else:
                others.append(doc)
    return cursors, others


def test_a_cursor_older_than_the_ring_is_read_from_the_stream_then_the_ring_then_live() -> None:
    edge = Edge(Stream(first=1, last=50), ring=10)
    edge.publish(1, 50)  # the ring holds 41..50
    sink = edge.connect(since=5)
    edge.settle()
    edge.publish(51, 53)
    edge.settle()
    cursors, others = received(sink)
    assert cursors == list(range(6, 54)) and others == []


def test_what_the_streams_retention_dropped_is_counted_and_the_rest_follows() -> None:
    edge = Edge(Stream(first=20, last=50), ring=10)
    edge.publish(1, 50)
    sink = edge.connect(since=5)
    edge.settle()
    cursors, others = received(sink)
    assert others == [{"message_type": "resume_gap", "since": 5, "oldest_cursor": 20, "lost": 14}]
    assert cursors == list(range(20, 51))


def test_a_cursor_this_edge_has_not_read_yet_is_waited_for_not_called_ahead() -> None:
    """The client comes from an edge further along: this one has read 1..30, the stream 1..40."""
    edge = Edge(Stream(first=1, last=40), ring=10)
    edge.publish(1, 30)
    sink = edge.connect(since=35)
    edge.settle()
    assert received(sink) == ([36, 37, 38, 39, 40], [])  # from the stream
    edge.publish(31, 42)  # this edge catches up: nothing twice, then live
    edge.settle()
    assert received(sink) == (list(range(36, 43)), [])


def test_a_cursor_at_the_streams_end_waits_for_the_ring_without_asking_again() -> None:
    edge = Edge(Stream(first=1, last=35), ring=10)
    edge.publish(1, 30)
    sink = edge.connect(since=35)
    edge.settle()
    assert received(sink) == ([], [])
    edge.publish(31, 35)
    edge.settle()
    assert edge.stream.asked == [] and received(sink) == ([], [])
    edge.stream.last = 37
    edge.publish(36, 37)
    edge.settle()
    assert received(sink) == ([36, 37], [])


def test_a_cursor_the_relay_never_issued_is_ahead_and_the_client_goes_live() -> None:
    edge = Edge(Stream(first=1, last=30), ring=10)
    edge.publish(1, 30)
    sink = edge.connect(since=10**12)
    edge.settle()
    edge.publish(31, 32)
    edge.settle()
    cursors, others = received(sink)
    assert others == [{"message_type": "resume_ahead", "since": 10**12, "latest_cursor": 30}]
    assert cursors == [31, 32]


def test_an_unreadable_stream_gives_what_the_ring_holds_and_says_what_was_lost() -> None:
    stream = Stream(first=1, last=50)
    stream.broken = True
    edge = Edge(stream, ring=10)
    edge.publish(1, 50)
    sink = edge.connect(since=5)
    edge.settle()
    cursors, others = received(sink)
    assert others == [{"message_type": "resume_gap", "since": 5, "oldest_cursor": 41, "lost": 35}]
    assert cursors == list(range(41, 51))


def test_live_clients_are_told_of_cursors_the_edge_skipped() -> None:
    """The edge was away longer than the stream's retention: 21..29 are gone for everyone."""
    edge = Edge(Stream(first=1, last=20), ring=10)
    edge.publish(1, 20)
    sink = edge.connect()
    edge.publish(30, 31)
    edge.settle()
    cursors, others = received(sink)
    assert cursors == [30, 31]
    assert [o.get("skipped") for o in others] == [9]
    assert others[0]["message_type"] == "heartbeat"


@settings(max_examples=300, deadline=None)
@given(
    first=st.integers(1, 40),
    read=st.integers(0, 60),
    since=st.integers(0, 80),
    ring=st.integers(1, 15),
    batch=st.integers(1, 9),
    steps=st.lists(st.integers(0, 6), max_size=12),
)
def test_every_cursor_after_since_once_in_order_or_counted(
    first: int, read: int, since: int, ring: int, batch: int, steps: list[int]
) -> None:
    """The stream holds first..last (last = 60 + what is published while the client resumes);
    the edge has read 1..read of it (the ring: its last `ring`); answers and publishes
    interleave. The client gets a contiguous run X..end ending at the newest published, X >
    since; a gap (X > since + 1) is announced once with its exact count, and only when the
    stream and the ring held neither since + 1 nor anything up to X."""
    last = 60
    ring_oldest = max(read - ring + 1, 1)
    # Retention never drops what the ring still holds here, so what is lost is the stream's.
    stream = Stream(first=min(first, ring_oldest), last=last, batch=batch)
    edge = Edge(stream, ring=ring)
    if read:
        edge.publish(1, read)
    sink = edge.connect(since=since)
    published = read
    for step in steps:
        edge.hub.flush(edge.now)
        edge.now += 0.001
        if step == 0:
            stream.answer()
        else:
            top = published + step
            stream.last = max(stream.last, top)
            edge.publish(published + 1, top)
            published = top
    if published < stream.last:
        edge.publish(published + 1, stream.last)
        published = stream.last
    edge.settle()
    cursors, others = received(sink)
    end = published
    if since > last and others:  # beyond what the relay had issued when it was asked
        assert len(others) == 1 and others[0]["message_type"] == "resume_ahead"
        assert others[0]["since"] == since
        assert cursors == list(range(others[0]["latest_cursor"] + 1, end + 1))
        return
    x = max(since + 1, stream.first)
    assert cursors == list(range(x, end + 1))
    if x > since + 1:
        assert others == [
            {
                "message_type": "resume_gap",
                "since": since,
                "oldest_cursor": x,
                "lost": x - since - 1,
            }
        ]
    else:
        assert others == []

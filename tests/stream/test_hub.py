"""The fan-out core without sockets: plain values in, bytes out through an in-memory sink."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certlake.stream.frames import PING_FRAME, ws_frame
from certlake.stream.hub import (
    Client,
    Hub,
    HubConfig,
    StreamConfigError,
    StreamKind,
    Wire,
)
from certlake.stream.resume import ResumeError
from support.stream import MemorySink, Msg, split_frames


def msg(i: int) -> Msg:
    return Msg(b'{"full":%d}\n' % i, b'{"lite":%d}\n' % i, b'{"domains":%d}' % i)


class Rig:
    def __init__(self, **config: float) -> None:
        self.wakes = 0
        self.wall = 1_700_000_000.25
        self.hub = Hub(HubConfig(**config), wake=self._wake, wall_clock=lambda: self.wall)  # type: ignore[arg-type]

    def _wake(self) -> None:
        self.wakes += 1

    def connect(
        self,
        kind: StreamKind = StreamKind.LITE,
        wire: Wire = Wire.WEBSOCKET,
        now: float = 0.0,
        accepts: object = None,
    ) -> tuple[Client, MemorySink]:
        sink = MemorySink()
        return self.hub.add(kind, wire, sink, now, accepts), sink  # type: ignore[arg-type]


def payloads(sink: MemorySink) -> list[bytes]:
    return [p for write in sink.writes for _, p in split_frames(write)]


def test_publish_frames_once_and_flush_coalesces_into_one_write_per_client() -> None:
    rig = Rig()
    a, sink_a = rig.connect()
    b, sink_b = rig.connect()
    _, sink_full = rig.connect(StreamKind.FULL)
    for i in range(3):
        rig.hub.publish(msg(i))
    assert rig.wakes == 1  # one flush requested for the whole burst
    assert a.backlog[0] is b.backlog[0]  # the same frame object, not a copy per client
    rig.hub.flush(now=0.001)
    assert len(sink_a.writes) == len(sink_b.writes) == len(sink_full.writes) == 1
    assert payloads(sink_a) == [msg(i).lite for i in range(3)]
    assert payloads(sink_full) == [msg(i).full for i in range(3)]
    assert sink_a.writes == sink_b.writes
    assert split_frames(sink_a.writes[0])[0][0] == 0x1  # text frames


def test_sequence_numbers_are_monotonic_and_counted_without_clients() -> None:
    rig = Rig()
    assert [rig.hub.publish(msg(i)) for i in range(4)] == [1, 2, 3, 4]
    assert rig.hub.seq == 4
    assert rig.wakes == 0  # nobody to write to, nothing to schedule


def test_accepts_hook_filters_before_queueing() -> None:
    rig = Rig()
    odd, sink = rig.connect(accepts=lambda m: m.lite.endswith(b"1}\n") or m.lite.endswith(b"3}\n"))
    for i in range(5):
        rig.hub.publish(msg(i))
    assert len(odd.backlog) == 2
    rig.hub.flush(now=0.0)
    assert payloads(sink) == [msg(1).lite, msg(3).lite]


def test_full_backlog_drops_oldest_and_reports_skipped_in_next_heartbeat() -> None:
    rig = Rig(backlog=3, high_water=100)
    client, sink = rig.connect()
    sink.held = 100  # the transport already holds its bound: nothing more may be handed over
    for i in range(5):
        rig.hub.publish(msg(i))
    rig.hub.flush(now=1.0)
    assert sink.writes == []
    assert client.stalled_since == 1.0
    assert [split_frames(f)[0][1] for f in client.backlog] == [msg(i).lite for i in (2, 3, 4)]
    assert (client.skipped, client.dropped, rig.hub.stats.dropped) == (2, 2, 2)
    # Counted by wire too (certstream-server-rust reports WebSocket and SSE drops apart).
    assert rig.hub.stats.dropped_on == {Wire.WEBSOCKET: 2, Wire.SSE: 0}
    assert rig.hub.client_count(StreamKind.LITE, Wire.WEBSOCKET) == 1
    assert rig.hub.client_count(StreamKind.LITE, Wire.SSE) == 0

    sink.held = 0  # the client read again
    rig.hub.tick(now=2.0)
    rig.hub.flush(now=2.0)
    frames = payloads(sink)
    heartbeat = json.loads(frames[0])
    assert heartbeat == {"message_type": "heartbeat", "timestamp": rig.wall, "skipped": 2}
    assert list(json.loads(frames[0]).keys()) == ["message_type", "timestamp", "skipped"]
    assert frames[1:] == [msg(i).lite for i in (2, 3, 4)]
    assert client.skipped == 0 and client.stalled_since is None


def test_writes_stop_at_high_water_and_resume_from_the_backlog() -> None:
    frame_size = len(ws_frame(msg(0).lite))
    rig = Rig(high_water=frame_size * 2)
    client, sink = rig.connect()
    for i in range(5):
        rig.hub.publish(msg(i))
    rig.hub.flush(now=0.0)
    assert payloads(sink) == [msg(0).lite, msg(1).lite]  # one write, bounded by the room left
    assert len(client.backlog) == 3 and client.pending
    sink.held = frame_size * 2
    rig.hub.flush(now=0.0)
    assert len(sink.writes) == 1 and not client.pending  # parked until the transport drains
    sink.held = 0
    rig.hub.tick(now=0.0)
    rig.hub.flush(now=0.0)
    rig.hub.flush(now=0.0)
    assert payloads(sink) == [msg(i).lite for i in range(5)]


def test_heartbeat_only_after_an_interval_without_data() -> None:
    rig = Rig(heartbeat_interval=15.0, ping_interval=1000.0)
    _, sink = rig.connect(now=0.0)
    rig.hub.tick(now=14.9)
    rig.hub.flush(now=14.9)
    assert sink.writes == []
    rig.hub.publish(msg(0))
    rig.hub.flush(now=10.0)  # data at t=10 restarts the interval
    rig.hub.tick(now=24.9)
    rig.hub.flush(now=24.9)
    assert len(sink.writes) == 1
    rig.hub.tick(now=25.0)
    rig.hub.flush(now=25.0)
    beat = json.loads(payloads(sink)[-1])
    assert beat == {"message_type": "heartbeat", "timestamp": rig.wall}
    assert isinstance(beat["timestamp"], float)


def test_pings_are_periodic_and_do_not_stand_in_for_heartbeats() -> None:
    rig = Rig(heartbeat_interval=15.0, ping_interval=10.0)
    client, sink = rig.connect(now=0.0)
    _, sse_sink = rig.connect(wire=Wire.SSE, now=0.0)
    rig.hub.tick(now=10.0)
    rig.hub.flush(now=10.0)
    assert sink.writes == [PING_FRAME]
    assert sse_sink.writes == []  # SSE has no ping
    assert client.last_sent == 0.0  # certstream-go clients ignore pings: heartbeat still due at 15
    rig.hub.tick(now=15.0)
    rig.hub.flush(now=15.0)
    assert json.loads(split_frames(sink.writes[1])[0][1])["message_type"] == "heartbeat"
    assert sse_sink.writes[0].startswith(b'data: {"message_type":"heartbeat"')
    assert sse_sink.writes[0].endswith(b"}\n\n")


def test_stalled_client_is_cut_only_after_stall_timeout() -> None:
    rig = Rig(stall_timeout=30.0, heartbeat_interval=15.0, high_water=10)
    client, sink = rig.connect(now=0.0)
    healthy, healthy_sink = rig.connect(now=0.0)
    sink.held = 10
    rig.hub.tick(now=15.0)
    rig.hub.flush(now=15.0)  # the heartbeat cannot be handed over: stalled from t=15
    assert client.stalled_since == 15.0 and healthy_sink.writes
    rig.hub.tick(now=44.9)
    assert not sink.aborted and not client.closed
    rig.hub.tick(now=45.0)
    assert sink.aborted and client.closed
    assert rig.hub.stats.disconnected_stalled == 1
    assert rig.hub.clients() == [healthy]
    assert rig.hub.stats.clients[StreamKind.LITE] == 1


def test_remove_is_idempotent_and_stops_delivery() -> None:
    rig = Rig()
    client, sink = rig.connect()
    rig.hub.publish(msg(0))
    rig.hub.remove(client)
    rig.hub.remove(client)
    rig.hub.flush(now=0.0)
    rig.hub.publish(msg(1))
    assert sink.writes == [] and rig.hub.clients() == []
    assert rig.hub.stats.clients[StreamKind.LITE] == 0


@pytest.mark.parametrize(
    "setting", [{"backlog": 0}, {"heartbeat_interval": 0.0}, {"coalesce": -1.0}, {"tick": 0.0}]
)
def test_invalid_config_is_a_typed_error(setting: dict[str, float]) -> None:
    with pytest.raises(StreamConfigError, match=next(iter(setting))):
        HubConfig(**setting)  # type: ignore[arg-type]


ops = st.lists(
    st.one_of(
        st.just(("publish", 0)),
        st.tuples(st.just("flush"), st.integers(0, 4)),  # 0 = blocked, else room in frames
        st.just(("tick", 0)),
    ),
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops, backlog=st.integers(1, 6))
def test_every_message_is_either_delivered_in_order_or_counted_as_skipped(
    ops: list[tuple[str, int]], backlog: int
) -> None:
    frame_size = len(ws_frame(msg(0).lite))
    rig = Rig(backlog=backlog, high_water=frame_size * 4, heartbeat_interval=1e9)
    client, sink = rig.connect()
    published = 0
    for op, arg in ops:
        if op == "publish":
            rig.hub.publish(msg(published))
            published += 1
        elif op == "flush":
            sink.held = frame_size * (4 - arg) if arg else frame_size * 4
            rig.hub.flush(now=0.0)
        else:
            rig.hub.tick(now=0.0)
    sink.held = 0
    while client.backlog or client.skipped:
        rig.hub.tick(now=0.0)
        rig.hub.flush(now=0.0)
    received: list[int] = []
    reported = 0
    for payload in payloads(sink):
        document = json.loads(payload)
        if document.get("message_type") == "heartbeat":
            reported += document["skipped"]
        else:
            received.append(document["lite"])
    assert received == sorted(set(received))  # in order, no duplicates
    assert len(received) + reported == published
    assert reported == client.dropped


def test_backlog_bounded_in_bytes_drops_oldest_and_reports_skipped() -> None:
    # Frames of 13 bytes (a 2-byte header, an 11-byte payload): 100 bytes hold 7 of them.
    rig = Rig(backlog=1000, backlog_bytes=100, high_water=100)
    client, sink = rig.connect()
    sink.held = 100
    for i in range(12):
        rig.hub.publish(msg(i))
    rig.hub.flush(now=1.0)
    assert client.queued == sum(len(f) for f in client.backlog) <= 100
    kept = [json.loads(split_frames(f)[0][1])["lite"] for f in client.backlog]
    assert kept == list(range(5, 12))
    assert client.skipped == client.dropped == 5 == rig.hub.stats.dropped

    sink.held = 0  # the client read again
    rig.hub.tick(now=2.0)
    rig.hub.flush(now=2.0)
    frames = payloads(sink)
    assert json.loads(frames[0])["skipped"] == 5
    assert [json.loads(f)["lite"] for f in frames[1:]] == kept
    assert client.queued == 0


def test_a_frame_larger_than_the_byte_bound_is_still_delivered() -> None:
    rig = Rig(backlog=1000, backlog_bytes=10, high_water=1000)
    client, sink = rig.connect()
    rig.hub.publish(msg(7))
    rig.hub.flush(now=1.0)
    assert [json.loads(f)["lite"] for f in payloads(sink)] == [7]
    assert client.dropped == 0


# --- cursors given with the message (an edge: the relay's sequence) -------------------------------


def test_given_cursors_are_the_messages_cursors_and_a_jump_restarts_the_ring() -> None:
    rig = Rig(resume_ring=10)
    assert [rig.hub.publish(msg(i), cursor=100 + i) for i in range(3)] == [100, 101, 102]
    assert rig.hub.stats.skipped_cursors == 99  # the edge started at 100
    rig.hub.publish(msg(3), cursor=110)  # the relay no longer held 103..109
    assert rig.hub.stats.skipped_cursors == 99 + 7
    # A client resuming from before the jump is told what it lost, then gets what is held.
    sink = MemorySink()
    rig.hub.add(StreamKind.LITE, Wire.WEBSOCKET, sink, 0.0, since=101)
    rig.hub.flush(now=0.001)
    got = payloads(sink)
    notice = json.loads(got[0])
    assert notice["message_type"] == "resume_gap"
    assert (notice["oldest_cursor"], notice["lost"]) == (110, 8)
    assert got[1:] == [msg(3).lite]


def test_a_given_cursor_not_after_the_last_is_refused() -> None:
    rig = Rig()
    rig.hub.publish(msg(0), cursor=5)
    with pytest.raises(ResumeError):
        rig.hub.publish(msg(1), cursor=5)

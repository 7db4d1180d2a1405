"""Cursors and resume: splicing the cursor into payloads, the ring, the resume plan, and the hub
replaying missed messages into a client before it joins the live stream."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certlake.certs.message import build_message
from certlake.ct.entry import EntryType, LogEntry, LogKind, LogSource
from certlake.stream.filters import FactsCache
from certlake.stream.hub import Client, Hub, HubConfig, StreamKind, Wire
from certlake.stream.resume import (
    CursorRing,
    ResumeError,
    cursor_base,
    plan_resume,
    stamp_cursor,
)
from certlake.stream.web import QueryError, parse_subscription
from certlake.testlog.certs import CertFactory
from support.stream import MemorySink, sse_events, text_payloads

BASE = 1_700_000_000_000_000  # a run that started at 2023-11-14T22:13:20Z


@dataclass(frozen=True)
class Msg:
    """A message in the builder's shapes, with the fields filters and de-duplication read."""

    n: int
    full: bytes
    lite: bytes
    domains: bytes
    all_domains: list[str] = field(default_factory=list)
    issuer_aggregated: str = "/CN=Test CA"
    source_url: str = "https://log.example/"
    source_name: str = "Example log"
    update_type: str = "X509LogEntry"
    sha256: str = ""
    serial_number: str = ""


def msg(n: int) -> Msg:
    return Msg(
        n,
        b'{"data":{"n":%d,"chain":[]},"message_type":"certificate_update"}\n' % n,
        b'{"data":{"n":%d},"message_type":"certificate_update"}\n' % n,
        b'{"data":["d%d.example"],"message_type":"dns_entries"}' % n,
        all_domains=[f"d{n}.example"],
    )


class Rig:
    def __init__(self, **config: int | float) -> None:
        settings_ = {"heartbeat_interval": 1e9, "ping_interval": 1e9} | config
        self.hub = Hub(
            HubConfig(**settings_),  # type: ignore[arg-type]
            wake=lambda: None,
            wall_clock=lambda: 1.0,
            cursor_base=BASE,
        )
        self.published = 0

    def publish(self, n: int = 1) -> None:
        for _ in range(n):
            self.hub.publish(msg(self.published))  # type: ignore[arg-type]
            self.published += 1

    def connect(
        self,
        since: int | None = None,
        kind: StreamKind = StreamKind.LITE,
        accepts: object = None,
    ) -> tuple[Client, MemorySink]:
        sink = MemorySink()
        client = self.hub.add(kind, Wire.WEBSOCKET, sink, 0.0, accepts, since)  # type: ignore[arg-type]
        return client, sink

    def drain(self, client: Client, sink: MemorySink) -> None:
        sink.held = 0
        for _ in range(10_000):
            if not (client.backlog or client.replay_next is not None):
                return
            self.hub.tick(now=0.0)  # un-parks a client whose sink was full
            self.hub.flush(now=0.0)
        raise AssertionError("the client never caught up")


def documents(sink: MemorySink) -> list[dict[str, object]]:
    return [json.loads(p) for w in sink.writes for p in text_payloads(w)]


def cursors(docs: list[dict[str, object]]) -> list[int]:
    out = []
    for d in docs:
        if d["message_type"] == "certificate_update":
            data = d["data"]
            assert isinstance(data, dict)
            out.append(data["cursor"])
    return out


def notices(docs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [d for d in docs if str(d["message_type"]).startswith("resume_")]


# --- the cursor in the payload ------------------------------------------------------------------


def test_cursor_goes_first_into_data_of_full_and_lite_and_last_into_domains_only() -> None:
    factory = CertFactory(seed=5)
    issued = factory.issue()
    source = LogSource("https://ct.example/log", "Example 'log'", LogKind.RFC6962)
    entry = LogEntry(7, 1_750_000_000_000, EntryType.X509, issued.der, issued.chain)
    m = build_message(entry, source, 1_750_000_001.5, "https://ct.example/log/ct/v1/get-entries")
    c = cursor_base(1_750_000_000_123_456_789) + 1
    assert c == 1_750_000_000_123_457
    for payload in (m.full, m.lite):
        stamped = stamp_cursor(payload, c)
        # Byte for byte the builder's payload, with one member inserted.
        assert stamped == payload.replace(b'{"data":{', b'{"data":{"cursor":%d,' % c, 1)
        doc, original = json.loads(stamped), json.loads(payload)
        assert next(iter(doc["data"])) == "cursor" and doc["data"].pop("cursor") == c
        assert doc == original
        assert stamped.endswith(b"}\n")
    stamped = stamp_cursor(m.domains, c)
    assert stamped == m.domains[:-1] + b',"cursor":%d}' % c
    doc = json.loads(stamped)
    assert list(doc) == ["data", "message_type", "cursor"]
    assert doc["data"] == m.all_domains and doc["cursor"] == c


@given(
    data=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=4),
    names=st.lists(st.text(max_size=8), max_size=4),
    cursor=st.integers(0, 2**53),
)
def test_any_builder_shaped_payload_keeps_its_content(
    data: dict[str, object], names: list[str], cursor: int
) -> None:
    obj = json.dumps({"data": data, "message_type": "certificate_update"}, separators=(",", ":"))
    doc = json.loads(stamp_cursor(obj.encode() + b"\n", cursor))
    assert doc["data"].pop("cursor") == cursor
    assert doc == {"data": data, "message_type": "certificate_update"}
    dns = json.dumps({"data": names, "message_type": "dns_entries"}, separators=(",", ":"))
    assert json.loads(stamp_cursor(dns.encode(), cursor)) == {
        "data": names,
        "message_type": "dns_entries",
        "cursor": cursor,
    }


@pytest.mark.parametrize("payload", [b'{"full":1}\n', b'{"data": {"seq": 1}}', b"", b"[1]"])
def test_payloads_of_other_shapes_are_left_alone(payload: bytes) -> None:
    assert stamp_cursor(payload, 5) is payload


# --- the ring -----------------------------------------------------------------------------------


@given(capacity=st.integers(0, 12), n=st.integers(0, 40))
def test_ring_holds_the_last_capacity_items_by_cursor(capacity: int, n: int) -> None:
    ring: CursorRing[str] = CursorRing(capacity, BASE)
    for c in range(BASE + 1, BASE + n + 1):
        ring.append(c, f"m{c}")
    assert ring.newest == BASE + n
    held = list(range(max(BASE + 1, BASE + n + 1 - capacity), BASE + n + 1))
    assert ring.oldest == (held[0] if held else ring.newest + 1)
    assert list(ring.items(BASE - 5, 1000)) == [(c, f"m{c}") for c in held]
    assert list(ring.items(BASE + n - 1, 1)) == [(c, f"m{c}") for c in held if c == BASE + n - 1]
    for c in (ring.oldest - 1, ring.newest + 1):
        with pytest.raises(KeyError):
            ring.get(c)


def test_ring_refuses_misuse() -> None:
    ring: CursorRing[int] = CursorRing(3, BASE)
    with pytest.raises(ResumeError, match="out of sequence"):
        ring.append(BASE + 2, 0)
    with pytest.raises(ResumeError, match="capacity"):
        CursorRing(-1, 0)


# --- the plan -----------------------------------------------------------------------------------


@given(
    n=st.integers(0, 30),
    capacity=st.integers(0, 10),
    offset=st.integers(-5, 40),
)
def test_resume_plan_replays_exactly_what_is_held_after_since(
    n: int, capacity: int, offset: int
) -> None:
    newest = BASE + n
    oldest = max(BASE + 1, newest + 1 - capacity)
    since = BASE + offset
    plan = plan_resume(since, oldest, newest, BASE)
    held = set(range(oldest, newest + 1))
    missed = set(range(since + 1, newest + 1))
    replayed = set(range(plan.start, newest + 1))
    if since > newest:
        assert replayed == set()
        assert plan.notice is not None
        assert json.loads(plan.notice) == {
            "message_type": "resume_ahead",
            "since": since,
            "latest_cursor": newest,
        }
        return
    assert replayed == missed & held
    gone = missed - held
    if not gone:
        assert plan.notice is None
    else:
        assert plan.notice is not None
        assert json.loads(plan.notice) == {
            "message_type": "resume_gap",
            "since": since,
            "oldest_cursor": oldest,
            # A cursor before this run's first: what the earlier run sent after it is unknown.
            "lost": len(gone) if since >= BASE else None,
        }


# --- the hub ------------------------------------------------------------------------------------


def test_every_message_carries_its_cursor_on_every_stream_and_wire() -> None:
    rig = Rig()
    sinks = {}
    for kind in StreamKind:
        for wire in Wire:
            sinks[kind, wire] = MemorySink()
            rig.hub.add(kind, wire, sinks[kind, wire], 0.0)
    rig.publish(3)
    rig.hub.flush(now=0.0)
    for (kind, wire), sink in sinks.items():
        raw = b"".join(sink.writes)
        if wire is Wire.WEBSOCKET:
            payloads = text_payloads(raw)
        else:
            events = sse_events(raw)
            # The event id is the cursor, for EventSource's Last-Event-ID.
            assert [i for i, _ in events] == [BASE + 1, BASE + 2, BASE + 3]
            payloads = [p for _, p in events]
        docs = [json.loads(p) for p in payloads]
        if kind is StreamKind.DOMAINS:
            assert [d["cursor"] for d in docs] == [BASE + 1, BASE + 2, BASE + 3]
        else:
            assert [d["data"]["cursor"] for d in docs] == [BASE + 1, BASE + 2, BASE + 3]
            assert [d["data"]["n"] for d in docs] == [0, 1, 2]


def test_a_resuming_client_gets_what_it_missed_then_the_live_stream() -> None:
    # The backlog (10) is far smaller than what was missed: replay is paced by the connection.
    rig = Rig(backlog=10, high_water=400)
    rig.publish(60)
    client, sink = rig.connect(since=BASE + 20)
    assert client.replay_next == BASE + 21
    for _ in range(5):
        rig.hub.flush(now=0.0)
        rig.publish(3)  # live messages keep coming while it catches up
    rig.drain(client, sink)
    assert client.replay_next is None  # live now
    rig.publish(4)
    rig.drain(client, sink)
    docs = documents(sink)
    assert notices(docs) == []
    assert cursors(docs) == list(range(BASE + 21, BASE + rig.published + 1))
    assert client.dropped == 0


def test_filters_apply_to_what_is_replayed() -> None:
    rig = Rig()
    rig.publish(30)
    odd = lambda m: m.n % 2 == 1  # noqa: E731
    client, sink = rig.connect(since=BASE + 10, accepts=odd)
    rig.hub.flush(now=0.0)
    rig.publish(10)
    rig.drain(client, sink)
    ns = [d["data"]["n"] for d in documents(sink)]  # type: ignore[index]
    assert ns == [n for n in range(10, 40) if n % 2 == 1]


def test_index_keys_apply_to_what_is_replayed() -> None:
    rig = Rig()
    rig.publish(30)
    sink = MemorySink()
    keys = frozenset({"=d7.example", "=d25.example", "=d33.example"})
    client = rig.hub.add(StreamKind.LITE, Wire.WEBSOCKET, sink, 0.0, None, BASE + 5, keys)
    rig.publish(10)
    rig.drain(client, sink)
    assert [d["data"]["n"] for d in documents(sink)] == [7, 25, 33]  # type: ignore[index]


def test_a_cursor_older_than_the_ring_is_told_how_much_was_lost() -> None:
    rig = Rig(resume_ring=25)
    rig.publish(100)
    client, sink = rig.connect(since=BASE + 40)
    rig.drain(client, sink)
    docs = documents(sink)
    assert docs[0] == {
        "message_type": "resume_gap",
        "since": BASE + 40,
        "oldest_cursor": BASE + 76,
        "lost": 35,
    }
    assert cursors(docs[1:]) == list(range(BASE + 76, BASE + 101))


def test_a_cursor_from_an_earlier_run_cannot_count_the_loss() -> None:
    rig = Rig(resume_ring=25)
    rig.publish(30)
    client, sink = rig.connect(since=BASE - 1_000)
    rig.drain(client, sink)
    docs = documents(sink)
    assert docs[0] == {
        "message_type": "resume_gap",
        "since": BASE - 1_000,
        "oldest_cursor": BASE + 6,
        "lost": None,
    }
    assert cursors(docs[1:]) == list(range(BASE + 6, BASE + 31))


def test_a_cursor_from_the_future_is_said_and_streaming_starts_now() -> None:
    rig = Rig()
    rig.publish(5)
    client, sink = rig.connect(since=BASE + 999)
    rig.publish(2)
    rig.drain(client, sink)
    docs = documents(sink)
    assert docs[0] == {
        "message_type": "resume_ahead",
        "since": BASE + 999,
        "latest_cursor": BASE + 5,
    }
    assert cursors(docs[1:]) == [BASE + 6, BASE + 7]


def test_without_a_ring_resume_reports_the_loss_and_goes_live() -> None:
    rig = Rig(resume_ring=0)
    rig.publish(10)
    client, sink = rig.connect(since=BASE + 4)
    assert client.replay_next is None
    rig.publish(1)
    rig.drain(client, sink)
    docs = documents(sink)
    assert docs[0] == {
        "message_type": "resume_gap",
        "since": BASE + 4,
        "oldest_cursor": BASE + 11,
        "lost": 6,
    }
    assert cursors(docs[1:]) == [BASE + 11]


def test_a_replay_the_ring_overtakes_says_so_again_and_skips_ahead() -> None:
    rig = Rig(resume_ring=20, high_water=200)
    rig.publish(20)
    client, sink = rig.connect(since=BASE)  # everything the ring holds
    rig.hub.flush(now=0.0)  # one write of ~200 bytes: a few messages
    got = len(cursors(documents(sink)))
    assert 0 < got < 20
    rig.publish(30)  # the ring moves past what the client had not read
    rig.drain(client, sink)
    docs = documents(sink)
    gap = notices(docs)
    assert len(gap) == 1 and gap[0]["message_type"] == "resume_gap"
    seen = cursors(docs)
    assert seen == sorted(set(seen))
    assert seen[-1] == BASE + 50
    # Every cursor was either received or counted as lost, once.
    assert len(seen) + gap[0]["lost"] == 50  # type: ignore[operator]


ops = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(1, 5)),
        st.tuples(st.just("flush"), st.integers(0, 3)),  # 0 = blocked, else room in ~messages
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    before=st.integers(0, 40),
    ring=st.integers(0, 30),
    since_offset=st.integers(-3, 45),
    ops=ops,
)
def test_no_gap_and_no_duplicate_at_the_seam(
    before: int, ring: int, since_offset: int, ops: list[tuple[str, int]]
) -> None:
    frame = len(msg(0).lite) + 40  # a stamped lite frame, roughly
    rig = Rig(resume_ring=ring, high_water=frame * 3, backlog=1000)
    rig.publish(before)
    oldest = max(BASE + 1, BASE + before + 1 - ring)
    since = BASE + since_offset
    client, sink = rig.connect(since=since)
    for op, arg in ops:
        if op == "publish":
            rig.publish(arg)
        else:
            sink.held = frame * (3 - arg) if arg else frame * 3
            rig.hub.flush(now=0.0)
    rig.drain(client, sink)
    docs = documents(sink)
    got = cursors(docs)
    end = BASE + rig.published
    # A cursor from the future resumes from now.
    first = BASE + before + 1 if since > BASE + before else max(since + 1, oldest)
    # The ring may have moved on while the client replayed slowly: that is announced too.
    lost = sum(int(n["lost"] or 0) for n in notices(docs) if n["message_type"] == "resume_gap")
    assert got == sorted(set(got))
    assert all(first <= c <= end for c in got)
    if end >= first:
        assert got[-1] == end
    if ring >= rig.published:  # nothing ever overwritten: exactly the owed cursors
        assert got == list(range(first, end + 1))
    if since >= BASE:  # each owed cursor was received or counted as lost
        assert len(got) + lost == end - min(since, BASE + before)


# --- Last-Event-ID: an EventSource resuming by itself ---------------------------------------------


def test_last_event_id_resumes_like_since_and_takes_its_place() -> None:
    def since(query: list[tuple[str, str]], last_event_id: str | None) -> int | None:
        return parse_subscription(
            query, facts=FactsCache(), dedupe_window=10, last_event_id=last_event_id
        ).since

    assert since([], f"{BASE + 7}") == BASE + 7
    # The URL keeps the since= the connection started with; the header is how far it got.
    assert since([("since", f"{BASE + 2}")], f"{BASE + 7}") == BASE + 7
    # EventSource sends no header before its first event with an id; empty means the same.
    assert since([("since", f"{BASE + 2}")], "") == BASE + 2
    assert since([], None) is None
    for bad in ("abc", "-1", "1.5", "١٢", "9" * 21):
        with pytest.raises(QueryError, match=r"Last-Event-ID=.*expected a cursor"):
            since([], bad)

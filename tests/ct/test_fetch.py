"""The fetch loop against the built-in test log over loopback, with injected faults.

Property: whatever mix of short responses, 429s, 503s and dropped connections the log produces,
`fetch_range` yields every index of the range exactly once, in order, with the log's own bytes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certlake.ct.backoff import RetryPolicy
from certlake.ct.client.fetch import FetchItem, GaveUp, fetch_range
from certlake.ct.client.http import CTHttp
from certlake.ct.client.reader import FetchedEntry, LogReader, Unparseable, settle
from certlake.ct.client.rfc6962 import Rfc6962Log
from certlake.ct.client.static import StaticLog
from certlake.ct.entry import LogKind, LogSource
from certlake.ct.merkle import leaf_hash
from certlake.testlog.background import BackgroundTestLog
from certlake.testlog.faults import Fault
from certlake.testlog.server import TestLogServer

SIZE = 1500
# Fast retries keep the suite quick. A Retry-After is honoured whatever the policy's cap, so the
# injected 429s and 503s say `Retry-After: 0`.
FAST = RetryPolicy(max_attempts=30, initial_delay=0.001, max_delay=0.005, rate_limit_attempts=60)


@pytest.fixture(scope="module")
def bg() -> Iterator[BackgroundTestLog]:
    with BackgroundTestLog(initial_size=SIZE, batch_cap=100, pool_size=64, seed=7) as bg:
        yield bg


def _reader(http: CTHttp, srv: TestLogServer, kind: LogKind) -> LogReader:
    if kind is LogKind.RFC6962:
        src = LogSource(srv.rfc6962_url, "test rfc6962", kind)
        return Rfc6962Log(http, src, batch_size=1000)
    return StaticLog(http, LogSource(srv.static_url, "test static", kind))


async def _collect(
    srv: TestLogServer, kind: LogKind, start: int, end: int, policy: RetryPolicy = FAST
) -> list[FetchItem]:
    async with CTHttp(timeout=5) as http:
        reader = _reader(http, srv, kind)
        return [
            item if isinstance(item, GaveUp) else settle(item, reader.source.url)
            async for item in fetch_range(reader, start, end, policy=policy)
        ]


def _set_faults(bg: BackgroundTestLog, specs: list[str], seed: int = 0) -> None:
    faults = [Fault.from_spec(s) for s in specs]
    bg.call(lambda s: s.faults.replace(faults, seed))


def _expected_hash(bg: BackgroundTestLog, kind: LogKind, index: int) -> bytes:
    name = "rfc6962" if kind is LogKind.RFC6962 else "static"
    return bg.call(lambda s: s.logs[name].tree.leaf_hash_at(index))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kind=st.sampled_from([LogKind.RFC6962, LogKind.STATIC]),
    start=st.integers(0, SIZE - 1),
    length=st.integers(1, 700),
    p_short=st.sampled_from([0.0, 0.5, 1.0]),
    p_429=st.sampled_from([0.0, 0.2, 0.4]),
    p_503=st.sampled_from([0.0, 0.2]),
    p_drop=st.sampled_from([0.0, 0.15]),
    seed=st.integers(0, 1000),
)
def test_every_index_exactly_once_under_faults(
    bg: BackgroundTestLog,
    kind: LogKind,
    start: int,
    length: int,
    p_short: float,
    p_429: float,
    p_503: float,
    p_drop: float,
    seed: int,
) -> None:
    end = min(SIZE - 1, start + length - 1)
    specs = [
        f"short:{p_short}",
        f"429:{p_429},retry_after=0",
        f"503:{p_503},retry_after=0",
        f"drop:{p_drop}",
    ]
    _set_faults(bg, specs, seed)
    try:
        items = asyncio.run(_collect(bg.server, kind, start, end))
    finally:
        _set_faults(bg, [])
    assert all(isinstance(i, FetchedEntry) for i in items), items[-1:]
    assert [i.index for i in items if not isinstance(i, GaveUp)] == list(range(start, end + 1))
    # The bytes are the log's own: each leaf hashes to the log's Merkle leaf at that index.
    rng = random.Random(seed)
    for item in rng.sample(items, min(5, len(items))):
        assert isinstance(item, FetchedEntry)
        assert leaf_hash(item.entry.leaf_input) == _expected_hash(bg, kind, item.index)


def test_faults_really_happened(bg: BackgroundTestLog) -> None:
    _set_faults(bg, ["short:1", "429:n=3,retry_after=0", "503:n=3", "drop:n=4"])
    try:
        before = bg.call(lambda s: dict(s.stats.faults))
        items = asyncio.run(_collect(bg.server, LogKind.RFC6962, 0, 499))
        after = bg.call(lambda s: dict(s.stats.faults))
    finally:
        _set_faults(bg, [])
    assert [i.index for i in items] == list(range(500))
    injected = {k.value: after.get(k, 0) - before.get(k, 0) for k in after}
    assert injected["short"] > 0 and injected["429"] == 3 and injected["503"] == 3
    assert injected["drop"] == 4


@pytest.mark.parametrize("kind", [LogKind.RFC6962, LogKind.STATIC])
def test_gives_up_and_names_exactly_what_is_missing(bg: BackgroundTestLog, kind: LogKind) -> None:
    policy = RetryPolicy(
        max_attempts=3, initial_delay=0.001, max_delay=0.002, rate_limit_attempts=11
    )

    async def run() -> list[FetchItem]:
        out: list[FetchItem] = []
        async with CTHttp(timeout=5) as http:
            async for item in fetch_range(_reader(http, bg.server, kind), 10, 900, policy=policy):
                out.append(item)
                if len(out) == 300:
                    # From now on the log is down for good.
                    await asyncio.to_thread(_set_faults, bg, ["503:1"])
        return out

    try:
        items = asyncio.run(run())
    finally:
        _set_faults(bg, [])
    *entries, last = items
    assert isinstance(last, GaveUp)
    got = [i.index for i in entries]
    assert got == list(range(10, 10 + len(got)))
    assert (last.start, last.end, last.status) == (10 + len(got), 900, 503)


def test_retry_after_is_honoured(bg: BackgroundTestLog) -> None:
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    async def run() -> list[FetchItem]:
        async with CTHttp(timeout=5) as http:
            reader = _reader(http, bg.server, LogKind.RFC6962)
            policy = RetryPolicy(initial_delay=0.001, max_delay=60)
            return [i async for i in fetch_range(reader, 0, 9, policy=policy, sleep=no_wait)]

    _set_faults(bg, ["429:n=2,retry_after=7", "503:n=1,retry_after=date+30"])
    try:
        items = asyncio.run(run())
    finally:
        _set_faults(bg, [])
    assert [i.index for i in items] == list(range(10))
    assert len(waits) == 3
    assert waits.count(7.0) == 2
    assert 28 <= max(waits) <= 30  # an HTTP date 30 s ahead (whole seconds on the wire)


def test_unparseable_entries_are_reported_and_passed(bg: BackgroundTestLog) -> None:
    _set_faults(bg, ["corrupt:at=20,at=33,mode=framing"])
    try:
        items = asyncio.run(_collect(bg.server, LogKind.RFC6962, 15, 40))
    finally:
        _set_faults(bg, [])
    assert [i.index for i in items] == list(range(15, 41))
    bad = [i.index for i in items if isinstance(i, Unparseable)]
    assert bad == [20, 33]


def test_a_tile_that_stays_corrupt_does_not_stall_the_log(bg: BackgroundTestLog) -> None:
    _set_faults(bg, ["corrupt:at=300,mode=framing"])
    try:
        items = asyncio.run(_collect(bg.server, LogKind.STATIC, 260, 530))
    finally:
        _set_faults(bg, [])
    assert [i.index for i in items] == list(range(260, 531))
    bad = [i.index for i in items if isinstance(i, Unparseable)]
    # Entries after the corrupt one in tile 1 cannot be located; the next tile is whole again.
    assert bad == list(range(300, 512))


# A bad element in each position of an answer: answer k of the log's 100-entry answers holds
# one at position k, broken in each of the ways a log has been seen to break one.
BAD_ELEMENT_MODES = ["base64", "null", "no-extra", "framing", "der"]
BAD_AT = {100 * k + k: BAD_ELEMENT_MODES[k % len(BAD_ELEMENT_MODES)] for k in range(15)}
BAD_AT |= {100 * 14 + 99: "null"}  # and the very last position


def test_a_bad_element_in_any_position_costs_only_itself(bg: BackgroundTestLog) -> None:
    specs = [
        "corrupt:" + ",".join(f"at={i}" for i, m in BAD_AT.items() if m == mode) + f",mode={mode}"
        for mode in BAD_ELEMENT_MODES
    ]
    _set_faults(bg, specs)
    try:
        items = asyncio.run(_collect(bg.server, LogKind.RFC6962, 0, SIZE - 1))
    finally:
        _set_faults(bg, [])
    assert [i.index for i in items] == list(range(SIZE))
    bad = {i.index: i.error for i in items if isinstance(i, Unparseable)}
    # A certificate of garbage bytes still decodes as an entry: it fails later, as a certificate.
    assert set(bad) == {i for i, m in BAD_AT.items() if m != "der"}
    for index, error in bad.items():
        assert error, index
    assert "not base64" in bad[0] and "missing" in bad[101] and "extra_data[202]" in bad[202]


def test_a_wrong_leaf_index_in_a_tile_costs_only_that_entry(bg: BackgroundTestLog) -> None:
    _set_faults(bg, ["corrupt:at=300,at=511,mode=leaf-index", "corrupt:at=400,mode=issuer"])
    try:
        items = asyncio.run(_collect(bg.server, LogKind.STATIC, 260, 530))
    finally:
        _set_faults(bg, [])
    assert [i.index for i in items] == list(range(260, 531))
    bad = [i for i in items if isinstance(i, Unparseable)]
    assert [i.index for i in bad] == [300, 400, 511]
    assert "claims leaf_index 301" in bad[0].error
    # An issuer the log answers 404 for is its answer for good: that entry, not a stalled log.
    assert "issuer not found" in bad[1].error

"""Verified ingest end to end: `LogWatcher` with verification on, reading the built-in test log
over loopback with certlake's real readers (`make_reader` from the log list, signatures checked),
for both protocols. The watcher is driven by `poll_once`, the log grown between polls, so every
step is deterministic; what verification finds is collected through `on_verification`.

Each test names what the log did (honest, tampered entry, lying head, split view, a head
inconsistent with those before it, a forged older head) and checks what the watcher made of it:
the events, the verified position, the state, what the consumer got and what was read again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from certlake.config import CtLogConfig
from certlake.ct.backoff import RetryPolicy
from certlake.ct.client.http import CTHttp
from certlake.ct.client.reader import Decoded, FetchedEntry, LogReader, served_leaf_hash
from certlake.ct.entry import LogKind
from certlake.ct.loglist import LogInfo, parse_log_list
from certlake.ct.merkle import TILE_WIDTH
from certlake.ct.verify import (
    Event,
    Mismatch,
    ServedDifferently,
    Snapshot,
    SplitView,
    TreeHead,
    Verification,
    Verified,
)
from certlake.ingest.readers import make_reader
from certlake.ingest.watcher import LogWatcher
from certlake.testlog.faults import Endpoint, Fault
from certlake.testlog.server import TestLogServer

pytestmark = pytest.mark.timeout(60)

KINDS = [LogKind.RFC6962, LogKind.STATIC]
_NAMES = {LogKind.RFC6962: "rfc6962", LogKind.STATIC: "static"}
_CT = CtLogConfig(default_operator_rate_limit_ms=0)
# Retries stay fast: no test here expects a read to fail.
_POLICY = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.05)
_WATCHER_LOG = "certlake.ingest.watcher"


@dataclass
class Log:
    """One log of a fresh test log server, and how certlake reads it."""

    srv: TestLogServer
    kind: LogKind
    http: CTHttp
    info: LogInfo

    @property
    def name(self) -> str:
        return _NAMES[self.kind]

    @property
    def url(self) -> str:
        return self.info.url

    def reader(self) -> LogReader:
        return make_reader(self.http, self.info, _CT)

    def grow(self, n: int) -> None:
        self.srv.grow(n)

    def faults(self, *specs: str) -> None:
        self.srv.faults.replace([Fault.from_spec(s) for s in specs])

    def served(self) -> int:
        """Entries the server has served so far (a data tile counts all its entries)."""
        return self.srv.stats.entries_served

    def root(self) -> bytes:
        """The log's honest root at its published size."""
        head = self.srv.logs[self.name].head
        assert head is not None
        return head.sth.root_hash

    def leaf_hash(self, index: int) -> bytes:
        return self.srv.logs[self.name].tree.leaf_hash_at(index)

    def reads_for(self, first: int, end: int) -> int:
        """What `served` counts for one read of [first, end) at tree size `end`: the entries
        themselves (get-entries), or every entry of the data tiles holding them."""
        if self.kind is LogKind.RFC6962:
            return end - first
        tiles = range(first // TILE_WIDTH, (end - 1) // TILE_WIDTH + 1)
        return sum(min(TILE_WIDTH, end - n * TILE_WIDTH) for n in tiles)


@dataclass
class Recorder:
    """The consumer and the verification reporter of one watcher."""

    url: str
    items: list[Decoded] = field(default_factory=list)
    events: list[tuple[Event, TreeHead | None]] = field(default_factory=list)
    # Called once the consumer has had the entry at that index.
    after: dict[int, Callable[[], None]] = field(default_factory=dict)

    async def consume(self, item: Decoded) -> None:
        self.items.append(item)
        hook = self.after.pop(item.index, None)
        if hook is not None:
            hook()

    def report(self, url: str, event: Event, before: TreeHead | None) -> None:
        assert url == self.url
        self.events.append((event, before))

    @property
    def indices(self) -> list[int]:
        return [item.index for item in self.items]

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e, _ in self.events if isinstance(e, kind)]

    def mismatches(self) -> list[Mismatch]:
        return [e for e, _ in self.events if isinstance(e, Mismatch)]

    def verified_sizes(self) -> list[int]:
        return [e.head.size for e, _ in self.events if isinstance(e, Verified)]

    def failures(self) -> list[Event]:
        return [e for e, _ in self.events if not isinstance(e, Verified)]


@pytest.fixture(params=KINDS, ids=lambda k: k.value)
async def log(request: pytest.FixtureRequest) -> AsyncIterator[Log]:
    kind: LogKind = request.param
    async with (
        TestLogServer(seed=11, pool_size=40, sequence_interval=0) as srv,
        CTHttp(timeout=10) as http,
    ):
        listed = parse_log_list(await http.get(srv.log_list_url)).logs
        (info,) = [i for i in listed if i.kind is kind]
        assert info.key_der is not None  # heads are signature-checked
        yield Log(srv, kind, http, info)


def watcher(
    log: Log,
    rec: Recorder,
    start_index: int | None,
    snapshot: Snapshot | None = None,
    max_batch: int = 100_000,
) -> LogWatcher:
    return LogWatcher(
        log.reader(),
        rec.consume,
        start_index=start_index,
        policy=_POLICY,
        max_batch=max_batch,
        snapshot=snapshot,
        on_verification=rec.report,
    )


async def caught_up(w: LogWatcher, size: int, polls: int = 20) -> None:
    """Poll until the cursor and the verifier's download reach `size`."""
    for _ in range(polls):
        await w.poll_once()
        assert w.verifier is not None
        if w.status.cursor == size and w.verifier.downloaded == size:
            return
    raise AssertionError(f"not caught up with {size} after {polls} polls: {w.status}")


def assert_status(w: LogWatcher) -> None:
    v = w.verifier
    assert v is not None
    assert w.status.verified_index == v.verified_index
    assert w.status.verification is v.state


def error_lines(caplog: pytest.LogCaptureFixture, url: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == _WATCHER_LOG and r.levelno == logging.ERROR and getattr(r, "log", None) == url
    ]


# --- an honest log ------------------------------------------------------------------------------


async def test_an_honest_log_watched_from_0_is_verified_at_every_head(log: Log) -> None:
    log.grow(300)
    rec = Recorder(log.url)
    # Three passes to reach the first head: it stays pending until the entries reach it.
    w = watcher(log, rec, start_index=0, max_batch=128)
    await w.poll_once()
    assert w.verifier is not None
    assert w.status.cursor == 128
    assert w.verifier.state is Verification.PENDING and w.verifier.verified_index == 0
    assert_status(w)
    await caught_up(w, 300)
    assert w.verifier.verified_index == 300
    assert w.verifier.state is Verification.OK
    assert_status(w)
    verified_300 = w.verifier.verified_head
    assert verified_300 is not None and verified_300.root == log.root()

    log.grow(333)  # across tile boundaries: 633 = 2 full tiles and 121
    await caught_up(w, 633)
    await w.poll_once()  # nothing new: nothing changes
    assert w.verifier.verified_index == 633
    assert w.verifier.state is Verification.OK
    assert_status(w)
    assert w.verifier.verified_head is not None and w.verifier.verified_head.root == log.root()

    assert rec.failures() == []
    assert rec.verified_sizes() == [300, 633]
    assert rec.indices == list(range(633))
    assert all(isinstance(item, FetchedEntry) for item in rec.items)
    # Each event came with the verified head before it.
    assert [before for _, before in rec.events] == [None, verified_300]


async def test_a_fresh_start_mid_log_is_anchored_by_the_logs_proof(log: Log) -> None:
    log.grow(300)
    rec = Recorder(log.url)
    w = watcher(log, rec, start_index=None)
    await w.poll_once()
    v = w.verifier
    assert v is not None
    assert w.status.cursor == 300 and v.start == 300
    if log.kind is LogKind.RFC6962:
        # Proven by the inclusion of the first entry read: none yet.
        assert not v.anchored
        assert v.state is Verification.PENDING and v.verified_index == 0
        assert rec.events == []
    else:
        # The hash tiles give [0, 300) at once, and the head at the start is checked by them.
        assert v.anchored
        assert v.state is Verification.OK and v.verified_index == 300
        assert rec.verified_sizes() == [300]
    assert_status(w)
    assert log.served() == 0

    log.grow(50)
    await w.poll_once()
    assert v.anchored
    assert v.state is Verification.OK
    assert v.verified_index == 350
    assert v.verified_head is not None and v.verified_head.root == log.root()
    assert_status(w)
    assert rec.failures() == []
    assert rec.verified_sizes()[-1] == 350
    # Nothing below the start was downloaded.
    assert rec.indices == list(range(300, 350))
    assert log.served() == log.reads_for(300, 350)
    if log.kind is LogKind.RFC6962:
        assert log.srv.stats.requests[Endpoint.GET_PROOF_BY_HASH] == 1


# --- a restart from a snapshot ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cursor", "max_batch"),
    [(300, 100_000), (320, 100_000), (340, 16), (250, 100_000)],
    ids=["at-snapshot", "above", "above-in-passes", "below"],
)
async def test_a_restart_goes_on_from_the_snapshot(log: Log, cursor: int, max_batch: int) -> None:
    log.grow(300)
    rec_a = Recorder(log.url)
    a = watcher(log, rec_a, start_index=0)
    await caught_up(a, 300)
    assert a.verifier is not None and a.verifier.verified_index == 300
    snap = a.verifier.snapshot()
    assert snap is not None and snap.head.size == 300 and not snap.inconsistent

    # The archive stopped at `cursor`; the log grew meanwhile.
    log.grow(50)
    rec = Recorder(log.url)
    b = watcher(log, rec, start_index=cursor, snapshot=snap, max_batch=max_batch)
    await caught_up(b, 350)
    v = b.verifier
    assert v is not None
    assert rec.failures() == []
    assert v.verified_index == 350, rec.events
    assert v.state is Verification.OK
    assert v.verified_head is not None and v.verified_head.root == log.root()
    assert_status(b)
    # Entries between the snapshot and the cursor went to the verifier, not the consumer again.
    assert rec.indices == list(range(cursor, 350))
    # The archive behind the snapshot: its head is verified again when the entries reach it.
    assert rec.verified_sizes() == ([300, 350] if cursor < 300 else [350])


async def test_a_restart_with_a_cursor_beyond_the_tree_verifies_what_there_is(log: Log) -> None:
    log.grow(300)
    a = watcher(log, Recorder(log.url), start_index=0)
    await caught_up(a, 300)
    assert a.verifier is not None
    snap = a.verifier.snapshot()
    assert snap is not None
    log.grow(50)
    # A saved cursor past the head served (a stale replica): nothing is handed on, but the
    # verifier reads what the head covers.
    rec = Recorder(log.url)
    b = watcher(log, rec, start_index=400, snapshot=snap)
    await b.poll_once()
    v = b.verifier
    assert v is not None
    assert rec.items == [] and b.status.cursor == 400
    assert rec.verified_sizes() == [350] and v.state is Verification.OK
    log.grow(100)
    await b.poll_once()
    assert rec.indices == list(range(400, 450))
    assert rec.failures() == []
    assert rec.verified_sizes() == [350, 450]
    assert v.verified_index == 450 and v.state is Verification.OK
    assert_status(b)


# --- entries other than the tree holds ----------------------------------------------------------


async def _verified_at_100(log: Log, rec: Recorder, max_batch: int = 100_000) -> LogWatcher:
    log.grow(100)
    w = watcher(log, rec, start_index=0, max_batch=max_batch)
    await caught_up(w, 100)
    assert rec.verified_sizes() == [100]
    return w


async def test_a_tampered_entry_is_a_mismatch_read_again_once(
    log: Log, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder(log.url)
    w = await _verified_at_100(log, rec)
    log.faults("corrupt:at=150,mode=tamper")
    log.grow(200)
    before = log.served()
    await w.poll_once()
    v = w.verifier
    assert v is not None

    (m,) = rec.mismatches()
    assert m.head.size == 300 and m.head.root == log.root()  # the head is honest; entry 150 not
    assert m.first <= 150 < m.head.size
    assert m.first == 100  # everything since the head verified last
    assert m.computed != m.head.root
    # Read once more; the log serves the same bytes, so nothing was served otherwise.
    assert log.served() - before == 2 * log.reads_for(100, 300)
    assert rec.of(ServedDifferently) == []
    assert v.state is Verification.INCONSISTENT
    assert v.verified_index == 100
    assert_status(w)
    # The consumer had every entry once, the tampered one as served.
    assert rec.indices == list(range(300))
    assert served_leaf_hash(rec.items[150]) != log.leaf_hash(150)
    (line,) = error_lines(caplog, log.url)
    assert "does not match the entries" in line.getMessage()
    assert line.__dict__["range"] == "[100, 300)"

    # Later heads are never verified, and the range is not read again.
    log.grow(50)
    before = log.served()
    await w.poll_once()
    await w.poll_once()
    assert log.served() - before == log.reads_for(300, 350)
    assert rec.verified_sizes() == [100]
    assert len(rec.failures()) == 1
    assert v.state is Verification.INCONSISTENT and v.verified_index == 100
    assert_status(w)
    assert rec.indices == list(range(350))


@pytest.mark.parametrize("max_batch", [100_000, 64], ids=["one-pass", "in-passes"])
async def test_a_tampered_entry_served_once_is_named_by_the_second_read(
    log: Log, caplog: pytest.LogCaptureFixture, max_batch: int
) -> None:
    rec = Recorder(log.url)
    w = await _verified_at_100(log, rec, max_batch)
    log.faults("corrupt:at=150,mode=tamper")
    # `corrupt` has no count (`n`): the fault is lifted once the consumer has the bad entry,
    # so the second read of the range is honest. Read in passes, the range read again
    # ([100, 300)) is longer than one pass: it is still read and compared whole.
    rec.after[150] = log.faults
    log.grow(200)
    await caught_up(w, 300)
    v = w.verifier
    assert v is not None

    (m,) = rec.mismatches()
    assert m.head.size == 300 and m.first == 100
    (sd,) = rec.of(ServedDifferently)
    assert isinstance(sd, ServedDifferently)
    assert (sd.first, sd.end, sd.indices) == (100, 300, (150,))
    assert sd.head == m.head
    assert v.state is Verification.INCONSISTENT
    assert v.verified_index == 100
    assert_status(w)
    messages = [r.getMessage() for r in error_lines(caplog, log.url)]
    assert len(messages) == 2 and "served otherwise" in messages[1]
    assert error_lines(caplog, log.url)[1].__dict__["indices"] == [150]


async def test_a_garbled_entry_is_caught_by_its_leaf_hash(log: Log) -> None:
    rec = Recorder(log.url)
    w = await _verified_at_100(log, rec)
    log.faults("corrupt:at=150")  # certificate bytes replaced by garbage, framing intact
    log.grow(200)
    await w.poll_once()
    v = w.verifier
    assert v is not None
    (m,) = rec.mismatches()
    assert m.head.size == 300 and m.first <= 150 < 300
    assert rec.of(ServedDifferently) == []
    assert v.state is Verification.INCONSISTENT and v.verified_index == 100
    assert_status(w)
    assert rec.indices == list(range(300))
    assert served_leaf_hash(rec.items[150]) != log.leaf_hash(150)


# --- heads the entries do not match -------------------------------------------------------------


async def test_a_lying_head_is_a_mismatch(log: Log, caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder(log.url)
    w = await _verified_at_100(log, rec)
    log.faults("lie:at=150")  # every head of more than 150 entries
    log.grow(200)
    await w.poll_once()
    v = w.verifier
    assert v is not None
    (m,) = rec.mismatches()
    assert m.head.size == 300 and m.head.root != log.root()
    assert m.computed == log.root()  # the entries are honest
    assert m.first == 100
    assert rec.of(ServedDifferently) == []
    assert v.state is Verification.INCONSISTENT and v.verified_index == 100
    assert_status(w)
    assert len(error_lines(caplog, log.url)) == 1

    log.grow(50)
    await w.poll_once()
    assert rec.verified_sizes() == [100]
    assert len(rec.failures()) == 1  # reported once
    assert v.state is Verification.INCONSISTENT and v.verified_index == 100
    assert rec.indices == list(range(350))


async def test_a_lying_head_at_a_mid_log_start_is_refused_by_the_logs_proof(log: Log) -> None:
    log.grow(300)
    log.faults("lie:at=100")
    rec = Recorder(log.url)
    w = watcher(log, rec, start_index=None)
    await w.poll_once()
    log.grow(50)
    await w.poll_once()
    v = w.verifier
    assert v is not None
    (m,) = rec.mismatches()
    assert m.head.root != log.root()
    assert m.first == 300
    if log.kind is LogKind.RFC6962:
        assert m.head.size == 350
        assert "inclusion proof of leaf 300" in m.detail
    else:
        assert m.head.size == 300  # checked by the hash tiles at once
    assert rec.verified_sizes() == []
    assert v.state is Verification.INCONSISTENT and v.verified_index == 0
    assert_status(w)


async def test_a_tampered_first_entry_at_a_mid_log_start_is_refused_by_the_log(
    log: Log, caplog: pytest.LogCaptureFixture
) -> None:
    """The log cannot prove the entry it served at the start (RFC 6962: get-proof-by-hash of
    its hash is refused, again and again): taken at its word after three polls. Static-ct: the
    hash tiles prove the start, and the tampered entry is a mismatch at the next head."""
    log.grow(300)
    rec = Recorder(log.url)
    w = watcher(log, rec, start_index=None)
    await w.poll_once()
    log.faults("corrupt:at=300,mode=tamper")
    log.grow(50)
    for _ in range(4):
        await w.poll_once()
    v = w.verifier
    assert v is not None
    (m,) = rec.mismatches()
    assert (m.first, m.head.size) == (300, 350)
    if log.kind is LogKind.RFC6962:
        assert "answered 400 3 times to the inclusion proof of the entry it served at 300" in (
            m.detail
        )
    assert v.state is Verification.INCONSISTENT and v.verified_index == (
        0 if log.kind is LogKind.RFC6962 else 300
    )
    assert error_lines(caplog, log.url)


async def test_a_split_view_at_one_size_is_caught(
    log: Log, caplog: pytest.LogCaptureFixture
) -> None:
    log.grow(300)
    log.faults("lie:mode=fork,at=50")  # the 2nd, 4th, … head asked for at a size lies
    rec = Recorder(log.url)
    w = watcher(log, rec, start_index=0)
    for _ in range(3):  # no growth between
        await w.poll_once()
    v = w.verifier
    assert v is not None
    honest = log.root()
    assert v.state is Verification.INCONSISTENT
    assert_status(w)
    failures = rec.failures()
    assert failures and all(isinstance(e, SplitView | Mismatch) for e in failures)
    assert all(isinstance(e, Verified) and e.head.root == honest for e in rec.of(Verified))
    assert v.verified_index <= 300
    # The first head asked for is the honest one: verified, then contradicted.
    assert rec.verified_sizes() == [300]
    (split,) = failures
    assert isinstance(split, SplitView) and not split.proof_checked
    assert split.earlier.size == split.later.size == 300
    assert split.earlier.root == honest and split.later.root != honest
    (line,) = error_lines(caplog, log.url)
    assert "split view" in line.getMessage()


async def test_a_head_inconsistent_with_the_verified_one_is_a_mismatch(log: Log) -> None:
    log.grow(300)
    rec = Recorder(log.url)
    w = watcher(log, rec, start_index=0)
    await caught_up(w, 300)
    assert rec.verified_sizes() == [300]
    log.faults("lie:n=1,at=100")  # one head, about an entry below the verified size
    log.grow(50)
    await w.poll_once()
    v = w.verifier
    assert v is not None
    (m,) = rec.mismatches()
    assert m.head.size == 350 and m.head.root != log.root()
    assert m.computed == log.root()
    assert v.state is Verification.INCONSISTENT and v.verified_index == 300
    assert_status(w)
    await w.poll_once()  # honest again: not believed
    assert rec.verified_sizes() == [300]
    assert len(rec.failures()) == 1
    assert v.state is Verification.INCONSISTENT and v.verified_index == 300


# --- an older head ------------------------------------------------------------------------------


async def test_an_older_head_is_checked_by_the_logs_consistency_proof(
    log: Log, caplog: pytest.LogCaptureFixture
) -> None:
    # The test log serves only its newest head: the "went back" path is called directly with
    # one seen before (honest) and one made up (a root the log never signed).
    log.grow(300)
    rec = Recorder(log.url)
    w = watcher(log, rec, start_index=0)
    await caught_up(w, 300)
    v = w.verifier
    assert v is not None
    old = v.verified_head
    assert old is not None and old.size == 300
    log.grow(50)
    await caught_up(w, 350)
    assert v.verified_index == 350

    proofs = _proof_requests(log)
    await w._older_head(old)
    assert _proof_requests(log) > proofs  # the proof was asked for, and it holds
    assert rec.failures() == []
    assert v.state is Verification.OK and v.verified_index == 350
    asked = _proof_requests(log)
    await w._older_head(old)  # proven once is enough
    assert _proof_requests(log) == asked

    forged = TreeHead(200, hashlib.sha256(b"not the log's root").digest(), old.timestamp_ms)
    await w._older_head(forged)
    (split,) = rec.failures()
    assert isinstance(split, SplitView) and split.proof_checked
    assert split.earlier == forged and split.later == v.verified_head
    assert v.state is Verification.INCONSISTENT
    assert v.verified_index == 350
    assert_status(w)
    (line,) = error_lines(caplog, log.url)
    assert "split view" in line.getMessage() and line.__dict__["proof_checked"] is True


def _proof_requests(log: Log) -> int:
    """Requests a consistency proof takes: get-sth-consistency, or hash tiles."""
    requests = log.srv.stats.requests
    return requests[Endpoint.GET_STH_CONSISTENCY] + requests[Endpoint.HASH_TILE]

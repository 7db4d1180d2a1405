"""The live watcher of one log: follows the tree head and hands every index, in order, to a
consumer. The cursor is the next index to fetch; it advances only by what was received, and never
jumps on errors (certstream-server-rust's watcher skips the tail of every short `get-entries`
answer and jumps to the tree head on any error but 429/503, losing entries both ways).

Every entry handed on is also folded into the log's verifier (`ct/verify`), which checks the
signed tree heads against the entries as downloaded: entries reach the consumer as soon as they
arrive, and the verified position says which of them the log has committed to."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from certlake.ct.backoff import RetryPolicy
from certlake.ct.client.fetch import GaveUp, fetch_range
from certlake.ct.client.reader import (
    Decoded,
    LogReader,
    ProofRefused,
    Unparseable,
    served_leaf_hash,
    settle,
)
from certlake.ct.errors import FetchError
from certlake.ct.health import Health, LogHealth
from certlake.ct.lag import LagReport, LagTracker
from certlake.ct.verify import (
    Event,
    LogVerifier,
    Mismatch,
    ServedDifferently,
    Snapshot,
    SplitView,
    TreeHead,
    Verification,
    Verified,
)

log = logging.getLogger(__name__)

_YIELD_EVERY_MASK = 31  # yield to the event loop every 32 entries

# A watcher that starts mid-log reads no further than this until the log has proven what came
# before its start (the verifier keeps the hashes meanwhile, and must not keep too many).
_UNANCHORED_READ = 4096
# A log that keeps refusing the proof of an entry it served itself (400 / 404 to its
# get-proof-by-hash) is taken at its word after this many polls: the entry is not in its tree.
_PROOF_REFUSALS = 3

Consumer = Callable[[Decoded], Awaitable[None]]
ErrorReporter = Callable[[str, FetchError], None]
# (log url, event, the verified head before it): verification's findings, for the metrics and
# the archive's table of verified heads.
VerificationReporter = Callable[[str, Event, TreeHead | None], None]


@dataclass(slots=True)
class WatcherStatus:
    """What /api/logs and the state file need to know about a watcher."""

    url: str
    cursor: int | None = None  # next index to fetch; None until the first tree head is known
    tree_size: int | None = None
    last_success: float | None = None  # Unix seconds of the last successful read
    entries: int = 0
    unparseable: int = 0
    lag_tracker: LagTracker = field(default_factory=LagTracker, repr=False)

    verification_error: str | None = None  # what made the log inconsistent
    verifier: LogVerifier | None = field(default=None, repr=False)  # None: not (yet) verifying

    def lag_report(self) -> LagReport:
        return self.lag_tracker.report(time.monotonic())

    @property
    def verified_index(self) -> int:
        return 0 if self.verifier is None else self.verifier.verified_index

    @property
    def verification(self) -> Verification | None:
        """None: not verified (switched off, or before the first tree head)."""
        return None if self.verifier is None else self.verifier.state

    @property
    def lag(self) -> int | None:
        if self.cursor is None or self.tree_size is None:
            return None
        return max(0, self.tree_size - self.cursor)


class LogWatcher:
    def __init__(
        self,
        reader: LogReader,
        consumer: Consumer,
        *,
        start_index: int | None,
        poll_interval: float = 1.0,
        policy: RetryPolicy | None = None,
        health: LogHealth | None = None,
        max_batch: int = 100_000,
        on_error: ErrorReporter | None = None,
        verify: bool = True,
        snapshot: Snapshot | None = None,
        on_verification: VerificationReporter | None = None,
    ) -> None:
        """`start_index` is the saved cursor; None means a fresh start at the current tree head
        (only new entries, like the Go server). `max_batch` bounds one fetch pass so the status
        and state advance regularly while a log is far behind. `snapshot` is where verification
        stood when the state was saved."""
        self.reader = reader
        self.status = WatcherStatus(reader.source.url, cursor=start_index)
        self.health = health or LogHealth()
        self._consumer = consumer
        self._poll = poll_interval
        # A live watcher keeps its cursor and simply tries again on the next pass; the retry
        # budget per pass is therefore small, so health reflects trouble quickly.
        self._policy = policy or RetryPolicy(max_attempts=3, rate_limit_attempts=11)
        self._max_batch = max_batch
        self._on_error = on_error
        self._verify = verify
        self._snapshot = snapshot
        self._on_verification = on_verification
        self._hashes: list[bytes] = []  # leaf hashes not yet handed to the verifier
        self._checked_old: set[tuple[int, bytes]] = set()  # older heads already proven
        self._proof_refusals = 0
        # The verified head as of the last event reported: the verifier's own has already moved
        # past the events it returns.
        self._verified_before: TreeHead | None = None

    @property
    def verifier(self) -> LogVerifier | None:
        return self.status.verifier

    @property
    def health_state(self) -> Health:
        """The breaker's state, or `behind` for a log that answers but is not kept up with."""
        state = self.health.state
        if state is not Health.UNHEALTHY and self.status.lag_report().behind:
            return Health.BEHIND
        return state

    async def run(self) -> None:
        """Watch until cancelled. Never returns on log errors."""
        while True:
            try:
                await self.poll_once()
            except FetchError as e:
                self._report(e)
                self.health.failure(str(e))
                log.warning("log read failed", extra={"log": self.status.url, "error": str(e)})
            await asyncio.sleep(self.health.retry_delay(self._poll))

    def _report(self, error: FetchError) -> None:
        if self._on_error is not None:
            self._on_error(self.status.url, error)

    async def poll_once(self) -> None:
        """Read the tree head, then fetch up to it (at most `max_batch` entries)."""
        head = await self.reader.latest_head()
        size = head.size
        st = self.status
        if st.tree_size is not None and size < st.tree_size:
            # A smaller tree than seen before is a stale cache or a misbehaving log: not read
            # from, but its root is checked against what is verified.
            log.warning(
                "tree head went back; ignored",
                extra={"log": st.url, "tree_size": st.tree_size, "new_size": size},
            )
            await self._older_head(head)
            return
        st.tree_size = size
        if st.cursor is None:
            st.cursor = size
            log.info("fresh start at the tree head", extra={"log": st.url, "tree_size": size})
        if self._verify and self.verifier is None:
            st.verifier = self._new_verifier(st.cursor)
            self._verified_before = st.verifier.verified_head
        v = self.verifier
        if v is not None:
            self._events(v.head(head))
            await self._verify_more(head)
        st.lag_tracker.head(time.monotonic(), size)
        st.lag_tracker.read(time.monotonic(), st.cursor)
        if st.cursor > size:
            log.warning(
                "saved cursor is beyond the tree",
                extra={"log": st.url, "cursor": st.cursor, "tree_size": size},
            )
            return
        if st.cursor == size:
            self.health.success()
            st.last_success = time.time()
            return
        end = min(size, st.cursor + self._max_batch) - 1
        if v is not None and not v.anchored:
            end = min(end, v.start + _UNANCHORED_READ - 1)
            if end < st.cursor:
                return  # waiting for the proof: `_verify_more` asks again next poll
        # The verifier takes these entries only when it has had every one before them; if not
        # (its catch-up since a restart is not done), `_verify_more` reads them for it later.
        feed = v is not None and v.downloaded == st.cursor
        items = fetch_range(
            self.reader,
            st.cursor,
            end,
            tree_size=size,
            policy=self._policy,
            on_error=lambda e, _attempt: self._report(e),
        )
        try:
            async with contextlib.aclosing(items):
                async for item in items:
                    if isinstance(item, GaveUp):
                        self.health.failure(item.error)
                        return
                    item = settle(item, self.reader.source.url)
                    await self._consumer(item)
                    st.cursor = item.index + 1
                    if feed:
                        self._hashes.append(served_leaf_hash(item))
                    if isinstance(item, Unparseable):
                        st.unparseable += 1
                        log.error(
                            "entry does not decode",
                            extra={"log": st.url, "index": item.index, "error": item.error},
                        )
                    else:
                        st.entries += 1
                    if (st.cursor & _YIELD_EVERY_MASK) == 0:
                        st.lag_tracker.read(time.monotonic(), st.cursor)
                        self._feed()
                        # A batch is hundreds of entries; letting the loop run between slices
                        # lets the stream flush what is already built and other logs' watchers
                        # take their turn.
                        await asyncio.sleep(0)
        finally:
            self._feed()
        st.lag_tracker.read(time.monotonic(), st.cursor)
        self.health.success()
        st.last_success = time.time()
        if v is not None:
            await self._verify_more(head)

    # --- verification ---------------------------------------------------------------------------

    def _new_verifier(self, cursor: int) -> LogVerifier:
        snap = self._snapshot
        if snap is None:
            return LogVerifier() if cursor == 0 else LogVerifier.unanchored(cursor)
        if snap.inconsistent:
            self.status.verification_error = (
                "found inconsistent before a restart: the evidence is in the archive's table of "
                "verified heads (_certlake_heads)"
            )
        if snap.inconsistent or snap.head.size <= cursor:
            # Entries between the snapshot and the cursor are read once more for the verifier
            # alone (`_verify_more`).
            return LogVerifier.resumed(snap, downloaded=cursor)
        # The archive is behind what was verified: those entries are downloaded again, from a
        # start proven by the log, and the head verified before is checked once they reach it.
        v = LogVerifier.unanchored(cursor)
        v.head(snap.head)
        return v

    def _feed(self) -> None:
        v, hashes = self.verifier, self._hashes
        if v is None or not hashes:
            return
        self._hashes = []
        self._events(v.leaves(v.downloaded, hashes))

    async def _verify_more(self, head: TreeHead) -> None:
        """What the entries alone cannot settle: the proof of a mid-log start, entries the
        verifier has not seen since a restart, the second read of a mismatched range. Each is
        tried again on the next poll when the log does not answer."""
        v = self.verifier
        assert v is not None
        try:
            if not v.anchored and v.state is not Verification.INCONSISTENT:
                try:
                    prefix = await self.reader.prefix(v.start, head, v.first_leaf)
                except ProofRefused as e:
                    self._events(v.anchor_failed(e.head, e.computed, str(e)))
                except FetchError as e:
                    if e.status not in (400, 404):
                        raise
                    self._proof_refusals += 1
                    if self._proof_refusals < _PROOF_REFUSALS:
                        raise
                    detail = (
                        f"the log answered {e.status} {self._proof_refusals} times to the "
                        f"inclusion proof of the entry it served at {v.start}"
                    )
                    self._events(v.anchor_failed(head, b"", detail))
                else:
                    if prefix is not None:
                        self._events(v.anchor(prefix))
            cursor = self.status.cursor
            if v.anchored and cursor is not None and v.downloaded < min(cursor, head.size):
                # One pass at most, and never past the tree (a saved cursor may be beyond it).
                end = min(cursor, head.size, v.downloaded + self._max_batch)
                hashes = await self._read_hashes(v.downloaded, end, head.size)
                if hashes is not None:
                    self._events(v.leaves(v.downloaded, hashes))
            again = v.recheck_range
            if again is not None:
                # The whole range, however long: the second read is compared as one.
                hashes = await self._read_hashes(*again, head.size)
                if hashes is not None:
                    self._events(v.recheck(hashes))
        except FetchError as e:
            self._report(e)
            log.warning(
                "verification read failed; tried again next poll",
                extra={"log": self.status.url, "error": str(e)},
            )

    async def _read_hashes(self, first: int, end: int, tree_size: int) -> list[bytes] | None:
        """The leaf hashes of [first, end) as the log serves them now, for the verifier only (the
        consumer has had these entries); None when the log gave up."""
        hashes: list[bytes] = []
        items = fetch_range(
            self.reader,
            first,
            end - 1,
            tree_size=tree_size,
            policy=self._policy,
            on_error=lambda e, _attempt: self._report(e),
        )
        async with contextlib.aclosing(items):
            async for item in items:
                if isinstance(item, GaveUp):
                    return None
                hashes.append(served_leaf_hash(settle(item, self.reader.source.url)))
        return hashes

    async def _older_head(self, head: TreeHead) -> None:
        v = self.verifier
        if v is None:
            return
        self._events(v.head(head))
        verified = v.verified_head
        if verified is None or head.size >= verified.size:
            return
        key = (head.size, head.root)
        if key in self._checked_old or v.state is Verification.INCONSISTENT:
            return
        try:
            proof = await self.reader.consistency(head.size, verified)
        except FetchError as e:
            self._report(e)
            return
        self._checked_old.add(key)
        self._events(v.consistent(head, verified, proof))

    def _events(self, events: list[Event]) -> None:
        for event in events:
            before = self._verified_before
            if isinstance(event, Verified):
                self._verified_before = event.head
            if self._on_verification is not None:
                self._on_verification(self.status.url, event, before)
            if isinstance(event, Verified):
                continue
            evidence = _evidence(event)
            self.status.verification_error = f"{_headline(event)}: " + ", ".join(
                f"{k}={v}" for k, v in evidence.items()
            )
            log.error(_headline(event), extra={"log": self.status.url, **evidence})


def _headline(event: Mismatch | SplitView | ServedDifferently) -> str:
    if isinstance(event, Mismatch):
        return "log inconsistent: a signed tree head does not match the entries"
    if isinstance(event, SplitView):
        return "log inconsistent: two signed tree heads that cannot both hold (split view)"
    return "log inconsistent: entries were first served otherwise than its tree holds"


def _evidence(event: Mismatch | SplitView | ServedDifferently) -> dict[str, object]:
    if isinstance(event, Mismatch):
        return {
            "range": f"[{event.first}, {event.head.size})",
            "tree_size": event.head.size,
            "signed_root": event.head.root.hex(),
            "computed_root": event.computed.hex(),
            "detail": event.detail,
        }
    if isinstance(event, SplitView):
        return {
            "earlier": f"{event.earlier.size}:{event.earlier.root.hex()}",
            "later": f"{event.later.size}:{event.later.root.hex()}",
            "proof_checked": event.proof_checked,
        }
    return {
        "range": f"[{event.first}, {event.end})",
        "tree_size": event.head.size,
        "indices": list(event.indices[:20]),
        "differing": len(event.indices),
    }

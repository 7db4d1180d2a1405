"""The per-log verifier: downloaded and verified positions, against honest and lying logs."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certlake.ct.merkle import MerkleTree, leaf_hash, root_hash
from certlake.ct.verify import (
    LogVerifier,
    Mismatch,
    SplitView,
    TreeHead,
    Verification,
    Verified,
)

HASHES = [leaf_hash(b"entry %d" % i) for i in range(200)]


def _head(size: int, hashes: list[bytes] = HASHES) -> TreeHead:
    return TreeHead(size, root_hash(hashes[:size]), timestamp_ms=size)


def _feed(v: LogVerifier, hashes: list[bytes], begin: int, end: int, step: int) -> list[object]:
    events: list[object] = []
    for lo in range(begin, end, step):
        events += v.leaves(lo, hashes[lo : min(end, lo + step)])
    return events


def test_an_honest_log_is_verified_head_by_head() -> None:
    v = LogVerifier()
    assert v.head(_head(10)) == [] and v.state is Verification.PENDING
    assert v.head(_head(25)) == []
    events = _feed(v, HASHES, 0, 40, 7)
    assert events == [Verified(_head(10)), Verified(_head(25))]
    assert (v.downloaded, v.verified_index, v.state) == (40, 25, Verification.OK)
    # A head at what is downloaded is checked at once; the same head again says nothing new.
    assert v.head(_head(40)) == [Verified(_head(40))]
    assert v.head(_head(40)) == []
    assert v.verified_head == _head(40)
    # Heads below the verified one are not kept: one at an old size is left to a proof.
    assert v.head(TreeHead(10, b"\x00" * 32)) == [] and v.state is Verification.OK


def test_a_tampered_entry_is_caught_at_the_next_head_and_refetched_once() -> None:
    tampered = list(HASHES)
    tampered[13] = leaf_hash(b"not what the log committed to")
    v = LogVerifier()
    for size in (10, 25, 40):
        v.head(_head(size))
    events = _feed(v, tampered, 0, 40, 8)
    assert events[0] == Verified(_head(10))
    # Each later head the entries reach disagrees too: each is evidence, reported as such.
    mismatch, again = events[1:]
    assert isinstance(mismatch, Mismatch) and isinstance(again, Mismatch)
    assert mismatch.head == _head(25) and mismatch.verified_before == 10
    assert again.head == _head(40) and again.verified_before == 10
    assert mismatch.computed == root_hash(tampered[:25]) != _head(25).root
    # Nothing past the contradiction is verified, not even a head the entries reach later.
    assert (v.verified_index, v.state) == (10, Verification.INCONSISTENT)
    # Fetched again from the verified position, honestly this time: verified up to the end.
    assert v.rewind() == 10
    assert v.state is Verification.PENDING
    assert _feed(v, HASHES, 10, 40, 8) == [Verified(_head(25)), Verified(_head(40))]
    assert (v.verified_index, v.state) == (40, Verification.OK)


def test_a_head_whose_root_does_not_match_its_entries() -> None:
    v = LogVerifier()
    lying = TreeHead(30, hashlib.sha256(b"a root of nothing").digest())
    v.head(lying)
    (event,) = _feed(v, HASHES, 0, 30, 30)
    assert isinstance(event, Mismatch) and event.head == lying
    assert v.verified_index == 0


def test_two_heads_of_one_size_are_a_split_view_for_good() -> None:
    v = LogVerifier()
    _feed(v, HASHES, 0, 20, 20)
    assert v.head(_head(20)) == [Verified(_head(20))]
    forked = TreeHead(20, hashlib.sha256(b"the other tree").digest())
    assert v.head(forked) == [SplitView(_head(20), forked)]
    assert v.state is Verification.INCONSISTENT
    v.rewind()
    assert v.state is Verification.INCONSISTENT


def test_consistency_between_heads_is_checked_with_the_logs_proof() -> None:
    tree = MerkleTree()
    for h in HASHES[:100]:
        tree.append(h)
    old, new = _head(37), _head(100)
    v = LogVerifier()
    assert v.consistent(old, new, tree.consistency_proof(37, 100)) == []
    assert v.state is Verification.OK
    forged = TreeHead(100, hashlib.sha256(b"rewritten history").digest())
    (event,) = v.consistent(old, forged, tree.consistency_proof(37, 100))
    assert event == SplitView(old, forged, proof_checked=True)
    assert v.state is Verification.INCONSISTENT


def test_entries_must_follow_on() -> None:
    v = LogVerifier()
    v.leaves(0, HASHES[:5])
    with pytest.raises(ValueError, match="do not follow on from 5"):
        v.leaves(6, HASHES[6:8])
    # A head below what is downloaded cannot be checked from entries (left to a proof).
    assert v.head(_head(3)) == [] and v.state is Verification.OK


@given(
    batches=st.lists(st.integers(1, 40), min_size=1, max_size=15),
    sizes=st.sets(st.integers(1, 200), max_size=10),
    early=st.booleans(),
)
@settings(max_examples=150, deadline=None)
def test_every_head_is_verified_once_whatever_the_batches(
    batches: list[int], sizes: set[int], early: bool
) -> None:
    """Heads announced before or after their entries, entries in batches of any size: each head
    within what was downloaded is verified exactly once, in size order."""
    v = LogVerifier()
    events: list[object] = []
    if early:
        for size in sizes:
            events += v.head(_head(size))
    begin = 0
    for n in batches:
        end = min(200, begin + n)
        events += v.leaves(begin, HASHES[begin:end])
        begin = end
    if not early:
        for size in sorted(sizes):
            events += v.head(_head(size))
    reached = sorted(s for s in sizes if s <= begin)
    if early:
        assert events == [Verified(_head(s)) for s in reached]
    else:
        # Announced late, only a head at exactly the downloaded size can be checked from entries.
        assert events == [Verified(_head(s)) for s in reached if s == begin]
    assert v.state is (Verification.PENDING if any(s > begin for s in sizes) else Verification.OK)

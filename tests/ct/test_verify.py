"""The per-log verifier: downloaded and verified positions, against honest and lying logs."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certlake.ct.checkpoint import parse_checkpoint
from certlake.ct.compact import CompactRange, prefix_from_inclusion
from certlake.ct.merkle import MerkleTree, leaf_hash, root_hash
from certlake.ct.verify import (
    LogVerifier,
    Mismatch,
    ServedDifferently,
    SplitView,
    TreeHead,
    Verification,
    Verified,
    range_in_head,
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


def test_a_tampered_entry_is_caught_at_the_next_head_and_read_once_more() -> None:
    tampered = list(HASHES)
    tampered[13] = leaf_hash(b"not what the log committed to")
    v = LogVerifier()
    for size in (10, 25, 40):
        v.head(_head(size))
    events = _feed(v, tampered, 0, 40, 8)
    assert events[0] == Verified(_head(10))
    # The first head the entries disagree with is the evidence; nothing is checked after it.
    (mismatch,) = events[1:]
    assert isinstance(mismatch, Mismatch)
    assert mismatch.head == _head(25) and mismatch.first == 10
    assert mismatch.computed == root_hash(tampered[:25]) != _head(25).root
    assert (v.verified_index, v.state, v.downloaded) == (10, Verification.INCONSISTENT, 40)
    assert v.recheck_range == (10, 25)
    # Read again, the log serves what it committed to: its tree is sound, but what was first
    # downloaded (and streamed, and archived) was not it. The log stays inconsistent.
    assert v.recheck(HASHES[10:25]) == [ServedDifferently(_head(25), 10, 25, (13,))]
    assert (v.verified_index, v.state) == (10, Verification.INCONSISTENT)
    assert v.recheck_range is None
    # Nothing past the contradiction is verified, not even a head the entries reach later.
    assert _feed(v, HASHES, 40, 60, 8) == [] and v.head(_head(60)) == []
    assert v.verified_index == 10 and v.downloaded == 60


def test_a_second_read_that_agrees_with_the_first_confirms_the_mismatch() -> None:
    tampered = list(HASHES)
    tampered[3] = leaf_hash(b"changed")
    v = LogVerifier()
    v.head(_head(20))
    (mismatch,) = _feed(v, tampered, 0, 30, 30)
    assert isinstance(mismatch, Mismatch) and v.recheck_range == (0, 20)
    assert v.recheck(tampered[:20]) == []
    assert v.state is Verification.INCONSISTENT
    with pytest.raises(ValueError, match="nothing to read again"):
        v.recheck(tampered[:20])


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
    # Reported once; later heads, honest or not, are not believed.
    assert v.head(TreeHead(20, hashlib.sha256(b"a third").digest())) == []
    assert _feed(v, HASHES, 20, 30, 10) == [] and v.head(_head(30)) == []
    assert v.verified_index == 20


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


def _tree(n: int, hashes: list[bytes] = HASHES) -> MerkleTree:
    tree = MerkleTree()
    for h in hashes[:n]:
        tree.append(h)
    return tree


def test_a_mid_log_start_is_anchored_by_the_logs_inclusion_proof() -> None:
    """A fresh start at the tree head (60): the first entry downloaded and the first head past
    it give the history before the start, proven by the log's proof, with no entry below 60
    downloaded."""
    v = LogVerifier.unanchored(60)
    assert (v.anchored, v.first_leaf, v.start) == (False, None, 60)
    assert v.head(_head(60)) == [] and v.head(_head(75)) == []
    assert _feed(v, HASHES, 60, 90, 7) == [] and v.downloaded == 90
    assert v.first_leaf == HASHES[60] and v.state is Verification.PENDING
    head = _head(75)
    prefix = prefix_from_inclusion(60, 75, HASHES[60], _tree(75).inclusion_proof(60, 75), head.root)
    assert prefix is not None
    # Both the head at the start and the one the buffered entries reach are checked at once.
    assert v.anchor(prefix) == [Verified(_head(60)), Verified(_head(75))]
    assert (v.verified_index, v.downloaded, v.state) == (75, 90, Verification.OK)
    assert _feed(v, HASHES, 90, 100, 10) == [] and v.head(_head(100)) == [Verified(_head(100))]


def test_a_mid_log_start_whose_entries_do_not_fit_the_proofs_tree() -> None:
    tampered = list(HASHES)
    tampered[70] = leaf_hash(b"tampered")
    v = LogVerifier.unanchored(60)
    v.head(_head(80))
    _feed(v, tampered, 60, 85, 25)
    prefix = prefix_from_inclusion(
        60, 80, HASHES[60], _tree(80).inclusion_proof(60, 80), _head(80).root
    )
    assert prefix is not None
    (mismatch,) = v.anchor(prefix)
    assert isinstance(mismatch, Mismatch) and (mismatch.first, mismatch.head) == (60, _head(80))
    assert v.recheck_range == (60, 80)


def test_a_proof_that_does_not_hold_makes_the_log_inconsistent() -> None:
    v = LogVerifier.unanchored(10)
    (event,) = v.anchor_failed(_head(20), b"\x01" * 32, "its inclusion proof does not hold")
    assert isinstance(event, Mismatch) and event.detail == "its inclusion proof does not hold"
    assert v.state is Verification.INCONSISTENT


def test_a_snapshot_resumes_verification_where_it_was() -> None:
    v = LogVerifier()
    v.head(_head(33))
    _feed(v, HASHES, 0, 40, 40)
    snap = v.snapshot()
    assert snap is not None and snap.head == _head(33) and not snap.inconsistent
    again = LogVerifier.resumed(snap)
    assert (again.downloaded, again.verified_index, again.state) == (33, 33, Verification.OK)
    again.head(_head(50))
    assert _feed(again, HASHES, 33, 50, 5) == [Verified(_head(50))]
    # The head it resumed from is remembered: the same size with another root is a split view.
    forked = TreeHead(33, hashlib.sha256(b"fork").digest())
    assert isinstance(LogVerifier.resumed(snap).head(forked)[0], SplitView)
    # Nothing verified yet, nothing to resume from.
    assert LogVerifier().snapshot() is None and LogVerifier.unanchored(5).snapshot() is None


def test_a_watcher_far_behind_keeps_a_bounded_number_of_pending_heads() -> None:
    v = LogVerifier()
    for size in range(1, 200):
        v.head(_head(size))
    assert 0 < len(v._heads_by_size) <= 64
    assert min(v._heads_by_size) == 1 and max(v._heads_by_size) == 199
    events = _feed(v, HASHES, 0, 200, 50)
    assert events[-1] == Verified(_head(199))
    assert all(isinstance(e, Verified) for e in events)


@given(size=st.integers(1, 200), data=st.data())
@settings(max_examples=150, deadline=None)
def test_a_range_in_the_middle_is_checked_against_a_later_head(
    size: int, data: st.DataObject
) -> None:
    first = data.draw(st.integers(0, size - 1))
    end = data.draw(st.integers(first + 1, size))
    tree = _tree(size)
    head = _head(size)
    prefix = prefix_from_inclusion(
        first, size, HASHES[first], tree.inclusion_proof(first, size), head.root
    )
    assert prefix is not None
    leaves = CompactRange(first)
    for h in HASHES[first:end]:
        leaves.append(h)
    proof = tree.consistency_proof(end, size)
    assert range_in_head(prefix, leaves, head, proof)
    # One entry other than the log's, anywhere in the range, and the proof does not hold.
    bad = data.draw(st.integers(first, end - 1))
    tampered = CompactRange(first)
    for i in range(first, end):
        tampered.append(leaf_hash(b"tampered") if i == bad else HASHES[i])
    assert not range_in_head(prefix, tampered, head, proof)


# --- real log data -------------------------------------------------------------------------------


def _json(shared_data: Path, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((shared_data / "rfc6962" / name).read_text())
    return doc


def test_the_real_argon2025h2_proof_gives_the_history_before_its_entry(shared_data: Path) -> None:
    """Argon2025h2's entry 912557348 and its proof in the tree of 1329315675: the history a
    watcher starting there is given, without one entry before it."""
    entry = _json(shared_data, "argon2025h2-get-entries-912557348.json")["entries"][0]
    proof = _json(shared_data, "argon2025h2-get-proof-by-hash-912557348-at-1329315675.json")
    sth = _json(shared_data, "argon2025h2-get-sth-1329315675.json")
    index, size = proof["leaf_index"], sth["tree_size"]
    leaf = leaf_hash(base64.b64decode(entry["leaf_input"]))
    path = [base64.b64decode(p) for p in proof["audit_path"]]
    root = base64.b64decode(sth["sha256_root_hash"])
    prefix = prefix_from_inclusion(index, size, leaf, path, root)
    assert prefix is not None and (prefix.begin, prefix.end) == (0, index)
    assert len(prefix.nodes) == bin(index).count("1")  # one subtree per set bit of 912557348
    v = LogVerifier.unanchored(index)
    v.head(TreeHead(size, root, sth["timestamp"]))
    v.leaves(index, [leaf])
    assert v.first_leaf == leaf and v.anchor(prefix) == [] and v.state is Verification.PENDING
    assert prefix_from_inclusion(index, size, leaf, path, bytes(32)) is None
    assert prefix_from_inclusion(index, size, leaf_hash(b"other"), path, root) is None


def test_the_real_argon2025h1_consistency_proof_between_its_two_heads(shared_data: Path) -> None:
    old = _json(shared_data, "argon2025h1-get-sth-1425614114.json")
    new = _json(shared_data, "argon2025h1-get-sth-1425633154.json")
    proof = [
        base64.b64decode(p)
        for p in _json(shared_data, "argon2025h1-get-sth-consistency-1425614114-1425633154.json")[
            "consistency"
        ]
    ]
    earlier = TreeHead(old["tree_size"], base64.b64decode(old["sha256_root_hash"]))
    later = TreeHead(new["tree_size"], base64.b64decode(new["sha256_root_hash"]))
    v = LogVerifier()
    assert v.consistent(earlier, later, proof) == [] and v.state is not Verification.INCONSISTENT
    forged = TreeHead(later.size, bytes(32))
    assert v.consistent(earlier, forged, proof) == [SplitView(earlier, forged, True)]
    assert v.state is Verification.INCONSISTENT


@pytest.mark.parametrize("file", ["sycamore2026h1.checkpoint", "arche2026h1.checkpoint"])
def test_a_real_checkpoint_and_another_root_at_its_size_are_a_split_view(
    shared_data: Path, file: str
) -> None:
    data = (shared_data / "checkpoints" / file).read_bytes()
    cp = parse_checkpoint(data)
    head = TreeHead(cp.tree_size, cp.root_hash, 0, data)
    v = LogVerifier.unanchored(cp.tree_size)
    assert v.head(head) == [] and v.head(head) == []
    other = TreeHead(cp.tree_size, hashlib.sha256(cp.root_hash).digest(), 0, data)
    assert v.head(other) == [SplitView(head, other)]

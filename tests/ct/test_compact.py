"""Compact ranges against an independent reference: RFC 6962's recursive Merkle tree hash."""

from __future__ import annotations

import hashlib
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certlake.ct.compact import CompactRange
from certlake.ct.merkle import MerkleError


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1, as written there: MTH of the leaf inputs, split at the largest power of
    two strictly less than n."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def _leaves(n: int) -> list[bytes]:
    return [b"leaf %d" % i for i in range(n)]


@given(n=st.integers(0, 300), data=st.data())
@settings(max_examples=200, deadline=None)
def test_any_split_merged_in_any_order_gives_the_whole_trees_root(
    n: int, data: st.DataObject
) -> None:
    leaves = _leaves(n)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, n - 1)), max_size=12)) if n > 1 else [])
    bounds = [0, *cuts, n]
    pieces = [CompactRange.of_leaves(lo, leaves[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
    # Adjacent pieces merged in a random order, as answers that arrive out of order are.
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    while len(pieces) > 1:
        i = rng.randrange(len(pieces) - 1)
        pieces[i].merge(pieces.pop(i + 1))
    (whole,) = pieces
    assert (whole.begin, whole.end) == (0, n)
    assert whole.root() == _mth(leaves)
    # Canonical: the same subtrees whatever the cut, at most two per level.
    assert whole.nodes == CompactRange.of_leaves(0, leaves).nodes
    assert len(whole.nodes) <= max(1, 2 * n.bit_length())


@given(begin=st.integers(0, 10_000), length=st.integers(0, 600))
@settings(max_examples=200, deadline=None)
def test_a_range_is_its_maximal_aligned_subtrees(begin: int, length: int) -> None:
    r = CompactRange.of_leaves(begin, _leaves(length))
    covered = begin
    for node in r.nodes:
        assert node.begin == covered  # contiguous, left to right
        covered = node.end
        # Maximal: its parent would reach outside the range.
        parent_begin = (node.index >> 1) << (node.level + 1)
        parent_end = parent_begin + (2 << node.level)
        assert parent_begin < begin or parent_end > begin + length
    assert covered == begin + length


def test_each_subtree_hash_is_that_subtrees_root() -> None:
    leaves = _leaves(100)
    r = CompactRange.of_leaves(37, leaves[37:])
    for node in r.nodes:
        assert node.hash == _mth(leaves[node.begin : node.end])


def test_misuse_is_refused() -> None:
    a = CompactRange.of_leaves(0, _leaves(5))
    with pytest.raises(MerkleError, match="not adjacent"):
        a.merge(CompactRange.of_leaves(6, [b"x"]))
    with pytest.raises(MerkleError, match="not a whole tree"):
        CompactRange.of_leaves(3, [b"x"]).root()
    with pytest.raises(MerkleError):
        CompactRange(-1)
    assert CompactRange().root() == hashlib.sha256(b"").digest()

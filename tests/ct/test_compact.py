"""Compact ranges against an independent reference: RFC 6962's recursive Merkle tree hash."""

from __future__ import annotations

import hashlib
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certlake.ct.compact import (
    CompactRange,
    from_hash_tiles,
    hash_tiles_for,
    prefix_from_inclusion,
    subtree_hash,
    subtrees,
)
from certlake.ct.merkle import TILE_WIDTH, MerkleError, MerkleTree, consistency_ranges, leaf_hash


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


@given(begin=st.integers(0, 5_000), length=st.integers(0, 700))
@settings(max_examples=200, deadline=None)
def test_subtrees_are_the_nodes_of_a_range_and_rebuild_it(begin: int, length: int) -> None:
    r = CompactRange.of_leaves(begin, _leaves(length))
    assert subtrees(begin, begin + length) == [(n.level, n.index) for n in r.nodes]
    again = CompactRange.of_nodes(begin, begin + length, [n.hash for n in r.nodes])
    assert again.nodes == r.nodes and (again.begin, again.end) == (r.begin, r.end)


def test_of_nodes_refuses_the_wrong_number_of_hashes() -> None:
    r = CompactRange.of_leaves(0, _leaves(7))
    with pytest.raises(MerkleError, match="3 subtrees; got 2"):
        CompactRange.of_nodes(0, 7, [n.hash for n in r.nodes][:2])


@given(size=st.integers(1, 600), data=st.data())
@settings(max_examples=300, deadline=None)
def test_an_inclusion_proof_gives_the_range_before_its_leaf(size: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, size - 1))
    leaves = _leaves(size)
    tree = _tree(leaves)
    proof = tree.inclusion_proof(index, size)
    prefix = prefix_from_inclusion(index, size, leaf_hash(leaves[index]), proof, _mth(leaves))
    assert prefix is not None
    assert prefix.nodes == CompactRange.of_leaves(0, leaves[:index]).nodes
    # The prefix and the rest of the leaves make the whole tree.
    prefix.merge(CompactRange.of_leaves(index, leaves[index:]))
    assert prefix.root() == _mth(leaves)


def test_an_inclusion_proof_that_does_not_hold_gives_no_prefix() -> None:
    leaves = _leaves(100)
    tree = _tree(leaves)
    proof = tree.inclusion_proof(40, 100)
    assert prefix_from_inclusion(40, 100, leaf_hash(b"other"), proof, _mth(leaves)) is None
    bent = [proof[0][::-1], *proof[1:]]
    assert prefix_from_inclusion(40, 100, leaf_hash(leaves[40]), bent, _mth(leaves)) is None


@given(size=st.integers(1, 70_000), data=st.data())
@settings(max_examples=60, deadline=None)
def test_hash_tiles_give_any_range_of_the_tree(size: int, data: st.DataObject) -> None:
    begin = data.draw(st.integers(0, size))
    end = data.draw(st.integers(begin, size))
    tree = _big_tree(size)
    tiles = {}
    for ref in hash_tiles_for(begin, end, size):
        assert 1 <= ref.width <= TILE_WIDTH
        tiles[(ref.level, ref.index)] = _hash_tile(tree, ref.level, ref.index, ref.width)
    got = from_hash_tiles(begin, end, tiles)
    want = CompactRange(begin)
    for i in range(begin, end):
        want.append(tree[0][i])
    assert got.nodes == want.nodes


def test_a_missing_or_short_hash_tile_is_named() -> None:
    tree = _big_tree(1000)
    (ref,) = hash_tiles_for(0, 1000, 1000)[:1]
    with pytest.raises(MerkleError, match="missing"):
        from_hash_tiles(0, 1000, {})
    short = {(r.level, r.index): _hash_tile(tree, r.level, r.index, 1) for r in [ref]}
    with pytest.raises(MerkleError, match="need"):
        from_hash_tiles(0, 1000, short)


_TREES: dict[int, list[list[bytes]]] = {}


def _big_tree(size: int) -> list[list[bytes]]:
    """Level by level, the hashes of the perfect subtrees of `size` leaves (level 0: leaves),
    built by plain pairing: a reference independent of CompactRange."""
    if size not in _TREES:
        levels = [[hashlib.sha256(b"\x00" + b"leaf %d" % i).digest() for i in range(size)]]
        while len(levels[-1]) > 1:
            below = levels[-1]
            levels.append(
                [
                    hashlib.sha256(b"\x01" + below[i] + below[i + 1]).digest()
                    for i in range(0, len(below) - 1, 2)
                ]
            )
        _TREES.clear()
        _TREES[size] = levels
    return _TREES[size]


def _hash_tile(levels: list[list[bytes]], tile_level: int, n: int, width: int) -> bytes:
    row = levels[tile_level * 8] if tile_level * 8 < len(levels) else []
    hashes = row[n * TILE_WIDTH : n * TILE_WIDTH + width]
    assert len(hashes) == width
    return b"".join(hashes)


def _tree(leaves: list[bytes]) -> MerkleTree:
    tree = MerkleTree()
    for x in leaves:
        tree.append(leaf_hash(x))
    return tree


@given(new=st.integers(1, 3_000), data=st.data())
@settings(max_examples=150, deadline=None)
def test_a_consistency_proof_put_together_from_hash_tiles_is_the_logs(
    new: int, data: st.DataObject
) -> None:
    old = data.draw(st.integers(0, new))
    tree = _big_tree(new)
    reference = MerkleTree()
    for h in tree[0]:
        reference.append(h)
    proof = []
    for lo, hi in consistency_ranges(old, new):
        tiles = {
            (r.level, r.index): _hash_tile(tree, r.level, r.index, r.width)
            for r in hash_tiles_for(lo, hi, new)
        }
        proof.append(subtree_hash(from_hash_tiles(lo, hi, tiles)))
    assert proof == reference.consistency_proof(old, new)

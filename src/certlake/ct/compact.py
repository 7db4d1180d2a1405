"""Compact Merkle ranges: the few subtree hashes that stand for any run of a log's leaves (pure).

A range [begin, end) of an RFC 6962 tree is covered by a unique list of perfect subtrees, each
as large as its alignment allows: at most two per level, so a range of any length is held in
~2·log2(length) hashes. Entries arrive in pieces (a get-entries answer, a data tile, a backfill
work item); each piece becomes a range, adjacent ranges merge into one, and a range that starts
at 0 and reaches a signed tree head's size yields that tree's root, to be compared with the
signed root. This is how a monitor verifies every entry it downloads without keeping the tree
(Cert Spotter keeps its "verified" position this way).

Written here rather than taken from a library: no maintained Python package offers compact
ranges, and the algorithm is short enough to check against a reference root in the tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from certlake.ct.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    TILE_HEIGHT,
    TILE_WIDTH,
    MerkleError,
    TileRef,
    fold_right,
    inclusion_walk,
    leaf_hash,
    node_hash,
    root_hash,
)


@dataclass(frozen=True, slots=True)
class Node:
    """A perfect subtree: leaves [index·2^level, (index+1)·2^level)."""

    level: int
    index: int
    hash: bytes

    @property
    def begin(self) -> int:
        return self.index << self.level

    @property
    def end(self) -> int:
        return (self.index + 1) << self.level


def subtrees(begin: int, end: int) -> list[tuple[int, int]]:
    """(level, index) of the maximal aligned perfect subtrees that cover [begin, end), left to
    right: the nodes a compact range of those leaves holds."""
    if not 0 <= begin <= end:
        raise MerkleError(f"no range [{begin}, {end})")
    out: list[tuple[int, int]] = []
    pos = begin
    while pos < end:
        # As large as `pos`'s alignment allows (any size at 0), and no further than `end`.
        level = (pos & -pos).bit_length() - 1 if pos else (end - pos).bit_length() - 1
        while pos + (1 << level) > end:
            level -= 1
        out.append((level, pos >> level))
        pos += 1 << level
    return out


class CompactRange:
    """The leaves [begin, end) of one log, as their maximal aligned perfect subtrees, left to
    right. Grow it by `append` (one leaf hash) or `merge` (the adjacent range that follows)."""

    def __init__(self, begin: int = 0) -> None:
        if begin < 0:
            raise MerkleError(f"a range cannot begin at {begin}")
        self.begin = begin
        self.end = begin
        self._nodes: list[Node] = []

    @classmethod
    def of_leaves(cls, begin: int, leaf_inputs: list[bytes]) -> CompactRange:
        """The range of consecutive leaves from `begin`, given their MerkleTreeLeaf bytes."""
        r = cls(begin)
        for leaf in leaf_inputs:
            r.append(leaf_hash(leaf))
        return r

    @classmethod
    def of_nodes(cls, begin: int, end: int, hashes: Sequence[bytes]) -> CompactRange:
        """The range [begin, end) from the hashes of its subtrees (`subtrees(begin, end)`, left to
        right), as a state file keeps them or a log's proof or hash tiles give them."""
        places = subtrees(begin, end)
        if len(hashes) != len(places) or any(len(h) != HASH_SIZE for h in hashes):
            raise MerkleError(
                f"[{begin}, {end}) has {len(places)} subtrees; got {len(hashes)} hashes"
            )
        r = cls(begin)
        r.end = end
        r._nodes = [Node(lv, i, h) for (lv, i), h in zip(places, hashes, strict=True)]
        return r

    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(self._nodes)

    def copy(self) -> CompactRange:
        r = CompactRange(self.begin)
        r.end = self.end
        r._nodes = list(self._nodes)
        return r

    def append(self, hash_: bytes) -> None:
        """Add the leaf at `end`, given its leaf hash."""
        self._push(Node(0, self.end, hash_))
        self.end += 1

    def merge(self, other: CompactRange) -> None:
        """Extend this range by `other`, which must begin where this one ends."""
        if other.begin != self.end:
            raise MerkleError(
                f"ranges [{self.begin}, {self.end}) and [{other.begin}, {other.end}) are not "
                "adjacent"
            )
        for node in other._nodes:
            self._push(node)
        self.end = other.end

    def root(self) -> bytes:
        """The root of the tree of size `end`; only a range from leaf 0 has one."""
        if self.begin != 0:
            raise MerkleError(f"a range from {self.begin} is not a whole tree")
        if not self._nodes:
            return EMPTY_ROOT
        return fold_right([n.hash for n in self._nodes])

    def _push(self, node: Node) -> None:
        # A subtree that is the right sibling of the last one merges with it, and their parent may
        # in turn be the right sibling of the one before. Both ranges being maximal, a sibling can
        # only ever be the last node on the left (a bigger aligned subtree holding it would
        # reach past the junction), so nothing further left needs looking at.
        nodes = self._nodes
        while nodes:
            last = nodes[-1]
            if last.level != node.level or last.index + 1 != node.index or last.index & 1:
                break
            nodes.pop()
            node = Node(node.level + 1, last.index >> 1, node_hash(last.hash, node.hash))
        nodes.append(node)


def prefix_from_inclusion(
    index: int, size: int, leaf_hash_: bytes, proof: Sequence[bytes], root: bytes
) -> CompactRange | None:
    """The range [0, index) of the tree (size, root), from the log's inclusion proof of the leaf
    at `index`; None if the proof does not place `leaf_hash_` there.

    An inclusion proof's left siblings are exactly the subtrees of [0, index): their hashes are
    proven by the proof itself. This is how a watcher that starts in the middle of a log (a fresh
    start at the tree head) gets the history it did not download, from one get-proof-by-hash of
    the first entry it did."""
    try:
        computed, lefts = inclusion_walk(index, size, leaf_hash_, proof)
    except MerkleError:
        return None
    if computed != root:
        return None
    return CompactRange.of_nodes(0, index, lefts[::-1])


def hash_tiles_for(begin: int, end: int, tree_size: int) -> list[TileRef]:
    """The hash tiles, as published at `tree_size`, that hold the subtrees of [begin, end).

    A subtree of level b is 2^(b mod 8) consecutive hashes of one level-(b // 8) tile, never
    straddling two tiles because it is aligned. Each tile is named at its width for `tree_size`:
    a partial tile of an older size may be gone, while the wider one holds the same hashes."""
    refs: dict[tuple[int, int], TileRef] = {}
    for level, index in subtrees(begin, end):
        tile_level, shift = divmod(level, TILE_HEIGHT)
        n = (index << shift) // TILE_WIDTH
        on_level = tree_size >> (tile_level * TILE_HEIGHT)
        refs.setdefault(
            (tile_level, n), TileRef(tile_level, n, min(TILE_WIDTH, on_level - n * TILE_WIDTH))
        )
    return list(refs.values())


def from_hash_tiles(begin: int, end: int, tiles: Mapping[tuple[int, int], bytes]) -> CompactRange:
    """The range [begin, end) from the hash tiles `hash_tiles_for` names, keyed by (level,
    index); raises MerkleError when one is missing or too short."""
    hashes: list[bytes] = []
    for level, index in subtrees(begin, end):
        tile_level, shift = divmod(level, TILE_HEIGHT)
        n, offset = divmod(index << shift, TILE_WIDTH)
        count = 1 << shift
        tile = tiles.get((tile_level, n))
        if tile is None:
            raise MerkleError(f"hash tile {tile_level}/{n} needed for [{begin}, {end}) is missing")
        if len(tile) % HASH_SIZE or len(tile) < (offset + count) * HASH_SIZE:
            raise MerkleError(
                f"hash tile {tile_level}/{n} has {len(tile)} bytes, "
                f"need {(offset + count) * HASH_SIZE}"
            )
        part = tile[offset * HASH_SIZE : (offset + count) * HASH_SIZE]
        hashes.append(root_hash([part[i : i + HASH_SIZE] for i in range(0, len(part), HASH_SIZE)]))
    return CompactRange.of_nodes(begin, end, hashes)


def subtree_hash(r: CompactRange) -> bytes:
    """MTH of the leaves of `r`, which begins at a multiple of a power of two at least as large
    as its length (as a proof's subtrees do): the fold of its nodes."""
    return fold_right([n.hash for n in r.nodes]) if r.nodes else EMPTY_ROOT

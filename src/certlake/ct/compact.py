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

from dataclasses import dataclass

from certlake.ct.merkle import EMPTY_ROOT, MerkleError, fold_right, leaf_hash, node_hash


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

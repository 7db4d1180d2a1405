"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification.

Layout and algorithms: RFC 6962 §2.1 (hashes, proofs), RFC 9162 §2.1 (verification). Pure: hashes
in, hashes out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

HASH_SIZE = 32
# static-ct-api tiles are 8 levels high: a tile holds up to 256 hashes of one level.
TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT

EMPTY_ROOT = hashlib.sha256(b"").digest()


class MerkleError(ValueError):
    """A request the tree cannot answer: index or size out of range, missing tile, bad hash."""


def leaf_hash(leaf_input: bytes) -> bytes:
    """SHA-256(0x00 ‖ leaf): the hash of a MerkleTreeLeaf."""
    return hashlib.sha256(b"\x00" + leaf_input).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 ‖ left ‖ right): an interior node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle tree hash of a list of leaf hashes.

    Pairs are combined level by level and an unpaired last node moves up unchanged; this builds
    exactly RFC 6962's left-heavy tree (the largest power of two strictly less than n goes left).
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _split(n: int) -> int:
    """The largest power of two strictly less than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def fold_right(hashes: Sequence[bytes]) -> bytes:
    """Combine perfect-subtree hashes listed left to right, largest first, into their root."""
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


class MerkleTree:
    """An append-only Merkle tree for the test log: O(log n) append, roots and proofs.

    `levels[h]` holds the hash of every *complete* subtree of 2^h leaves, left to right, so
    `levels[h]` has exactly size >> h entries and any perfect aligned subtree is one lookup.
    Each level is a single `bytearray` of 32-byte hashes rather than a list of `bytes` objects:
    a list costs ~73 bytes per hash (object header + pointer), a bytearray 32, so a million
    leaves take ~69 MB (measured, all levels) instead of ~150 MB, and a static-ct hash tile is
    one slice. Appending costs ~1 µs per leaf.
    """

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]

    @property
    def size(self) -> int:
        return len(self._levels[0]) // HASH_SIZE

    def append(self, leaf_hash: bytes) -> int:
        """Add a leaf by its hash; returns its index."""
        if len(leaf_hash) != HASH_SIZE:
            raise MerkleError(f"leaf hash must be {HASH_SIZE} bytes, got {len(leaf_hash)}")
        index = self.size
        self._levels[0] += leaf_hash
        # Each odd index completes a pair; the new parent may complete a pair one level up.
        i, h, node = index, 0, leaf_hash
        while i & 1:
            node = node_hash(self._hash(h, i - 1), node)
            h += 1
            i >>= 1
            if h == len(self._levels):
                self._levels.append(bytearray())
            self._levels[h] += node
        return index

    def leaf_hash_at(self, index: int) -> bytes:
        if not 0 <= index < self.size:
            raise MerkleError(f"leaf {index} outside tree of size {self.size}")
        return self._hash(0, index)

    def root(self, size: int | None = None) -> bytes:
        """The root of the first `size` leaves (default: all of them)."""
        n = self.size if size is None else size
        self._check_size(n)
        return self._range(0, n) if n else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """The audit path for leaf `index` in the tree of the first `size` leaves, bottom-up."""
        self._check_size(size)
        if not 0 <= index < size:
            raise MerkleError(f"leaf {index} outside tree of size {size}")
        path: list[bytes] = []
        lo, hi = 0, size
        # Walk down from the root; siblings are collected top-down and reversed at the end.
        while hi - lo > 1:
            k = _split(hi - lo)
            if index < lo + k:
                path.append(self._range(lo + k, hi))
                hi = lo + k
            else:
                path.append(self._range(lo, lo + k))
                lo += k
        path.reverse()
        return path

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        """RFC 6962 §2.1.2 proof that the first `old` leaves are a prefix of the first `new`."""
        self._check_size(new)
        return [self._range(lo, hi) for lo, hi in consistency_ranges(old, new)]

    def hash_tile(self, level: int, n: int, width: int) -> bytes:
        """Hash tile `level`/`n` of `width` entries: concatenated hashes of complete subtrees.

        Entry i is the root of the complete subtree of 256^level leaves number n*256 + i.
        """
        if level < 0 or n < 0 or not 1 <= width <= TILE_WIDTH:
            raise MerkleError(f"bad hash tile {level}/{n} width {width}")
        h = level * TILE_HEIGHT
        start = n * TILE_WIDTH
        available = len(self._levels[h]) // HASH_SIZE if h < len(self._levels) else 0
        if start + width > available:
            raise MerkleError(
                f"hash tile {level}/{n} width {width} not complete at tree size {self.size}"
            )
        return bytes(self._levels[h][start * HASH_SIZE : (start + width) * HASH_SIZE])

    def _hash(self, h: int, i: int) -> bytes:
        return bytes(self._levels[h][i * HASH_SIZE : (i + 1) * HASH_SIZE])

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise MerkleError(f"size {size} outside 0..{self.size}")

    def _range(self, lo: int, hi: int) -> bytes:
        """MTH of leaves lo..hi-1, for the ranges RFC 6962's recursion produces.

        Those ranges start at a multiple of the largest power of two not above their length, so
        the binary decomposition of hi - lo yields perfect subtrees that are aligned: lookups.
        """
        parts: list[bytes] = []
        pos = lo
        for h in range((hi - lo).bit_length() - 1, -1, -1):
            if (hi - lo) >> h & 1:
                parts.append(self._hash(h, pos >> h))
                pos += 1 << h
        return fold_right(parts)


def root_with_leaf(index: int, size: int, new_leaf_hash: bytes, proof: Sequence[bytes]) -> bytes:
    """The root `proof` (the audit path of leaf `index` in a tree of `size`) leads to from
    `new_leaf_hash`: RFC 9162 §2.1.3.2's walk. With the leaf's own hash that is the tree's root;
    with another, the root of the same tree with that one leaf replaced, in O(log size).

    Raises MerkleError when the proof cannot be an audit path for `index` in `size` (index out of
    range, a hash of the wrong length, too many or too few hashes).
    """
    return inclusion_walk(index, size, new_leaf_hash, proof)[0]


def inclusion_walk(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> tuple[bytes, list[bytes]]:
    """RFC 9162 §2.1.3.2's walk up an audit path: the root it leads to, and the hashes it took
    as left siblings, bottom-up (exactly the subtrees of [0, index), smallest first). Raises
    MerkleError as `root_with_leaf` does."""
    if not 0 <= index < size:
        raise MerkleError(f"leaf {index} outside tree of size {size}")
    if any(len(p) != HASH_SIZE for p in proof):
        raise MerkleError(f"audit path hashes must be {HASH_SIZE} bytes")
    fn, sn, r = index, size - 1, leaf_hash
    lefts: list[bytes] = []
    for p in proof:
        if sn == 0:
            raise MerkleError(f"audit path for leaf {index} of {size} is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            lefts.append(p)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise MerkleError(f"audit path for leaf {index} of {size} is too short")
    return r, lefts


def verify_inclusion(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: does `proof` place `leaf_hash` at `index` in the tree with `root`?"""
    try:
        return root_with_leaf(index, size, leaf_hash, proof) == root
    except MerkleError:
        return False


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2: is the tree (old_size, old_root) a prefix of (new_size, new_root)?"""
    if not 0 <= old_size <= new_size or any(len(p) != HASH_SIZE for p in proof):
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof and old_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


@dataclass(frozen=True, slots=True)
class TileRef:
    """A hash tile as published at some tree size: level, index and width (256 = full)."""

    level: int
    index: int
    width: int


def consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The leaf ranges [lo, hi) whose subtree hashes make up the consistency proof between trees
    of `old_size` and `new_size` (RFC 9162 §2.1.4.1 SUBPROOF), in proof order: a proof can then
    be put together from any source of subtree hashes (the test log's tree, a static-ct log's
    hash tiles)."""
    if not 0 <= old_size <= new_size:
        raise MerkleError(f"no consistency proof from size {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []
    ranges: list[tuple[int, int]] = []
    lo, hi, m, complete = 0, new_size, old_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
            m -= k
            complete = False
    if not complete:
        ranges.append((lo, hi))
    ranges.reverse()
    return ranges

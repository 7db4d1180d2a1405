"""Merkle hashing, the test log's tree, proofs and their verification.

The reference implementation below is written from RFC 6962 §2.1 directly (recursive MTH, PATH
and PROOF over plain lists, and proof checking by rebuilding the tree around the path); it shares
no code with certlake.ct.merkle, so agreement between the two means something.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certlake.ct.compact import from_hash_tiles, hash_tiles_for
from certlake.ct.merkle import (
    EMPTY_ROOT,
    MerkleError,
    MerkleTree,
    TileRef,
    leaf_hash,
    node_hash,
    root_hash,
    root_with_leaf,
    verify_consistency,
    verify_inclusion,
)

# --- independent RFC 6962 reference -------------------------------------------------------------


def root_tiles(size: int) -> list[TileRef]:
    return hash_tiles_for(0, size, size)


def root_from_tile_hashes(size: int, tiles: dict[tuple[int, int], bytes]) -> bytes:
    return from_hash_tiles(0, size, tiles).root()


def ref_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def ref_node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def ref_k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(hashes: list[bytes]) -> bytes:
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = ref_k(len(hashes))
    return ref_node(ref_mth(hashes[:k]), ref_mth(hashes[k:]))


def ref_path(m: int, hashes: list[bytes]) -> list[bytes]:
    if len(hashes) <= 1:
        return []
    k = ref_k(len(hashes))
    if m < k:
        return [*ref_path(m, hashes[:k]), ref_mth(hashes[k:])]
    return [*ref_path(m - k, hashes[k:]), ref_mth(hashes[:k])]


def ref_proof(m: int, hashes: list[bytes]) -> list[bytes]:
    def sub(m: int, d: list[bytes], complete: bool) -> list[bytes]:
        if m == len(d):
            return [] if complete else [ref_mth(d)]
        k = ref_k(len(d))
        if m <= k:
            return [*sub(m, d[:k], complete), ref_mth(d[k:])]
        return [*sub(m - k, d[k:], False), ref_mth(d[:k])]

    return sub(m, hashes, True)


def ref_root_from_path(index: int, size: int, leaf: bytes, path: list[bytes]) -> bytes | None:
    """Rebuild the root by walking the RFC 6962 tree shape; None if the path length is wrong."""
    if size == 1:
        return leaf if not path else None
    if not path:
        return None
    k = ref_k(size)
    sibling, rest = path[-1], path[:-1]
    if index < k:
        below = ref_root_from_path(index, k, leaf, rest)
        return None if below is None else ref_node(below, sibling)
    below = ref_root_from_path(index - k, size - k, leaf, rest)
    return None if below is None else ref_node(sibling, below)


def ref_roots_from_consistency(
    m: int, n: int, old_root: bytes, proof: list[bytes]
) -> tuple[bytes, bytes] | None:
    """Rebuild (old root, new root) from a consistency proof by mirroring SUBPROOF."""
    stack = list(proof)

    def sub(m: int, n: int, complete: bool) -> tuple[bytes, bytes]:
        if m == n:
            if complete:
                return old_root, old_root
            node = stack.pop(0)
            return node, node
        k = ref_k(n)
        if m <= k:
            old, new = sub(m, k, complete)
            return old, ref_node(new, stack.pop(0))
        old, new = sub(m - k, n - k, False)
        left = stack.pop(0)
        return ref_node(left, old), ref_node(left, new)

    try:
        roots = sub(m, n, True)
    except IndexError:
        return None
    return roots if not stack else None


# --- fixtures ----------------------------------------------------------------------------------

MAX = 600
LEAVES = [ref_leaf(i.to_bytes(4, "big") + b"certlake") for i in range(MAX)]


@pytest.fixture(scope="module")
def tree() -> MerkleTree:
    t = MerkleTree()
    for i, h in enumerate(LEAVES):
        assert t.append(h) == i
    return t


def b64(s: str) -> bytes:
    return base64.b64decode(s)


def flip(data: bytes, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[bit // 8 % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


# --- published RFC 6962 vectors ----------------------------------------------------------------

# transparency-dev/merkle testonly/constants.go (also in google/certificate-transparency).
RFC_LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
RFC_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_published_vectors() -> None:
    t = MerkleTree()
    hashes = [leaf_hash(leaf) for leaf in RFC_LEAVES]
    assert EMPTY_ROOT.hex() == RFC_ROOTS[0] == t.root().hex()
    for n, h in enumerate(hashes, start=1):
        t.append(h)
        assert t.root().hex() == RFC_ROOTS[n]
        assert root_hash(hashes[:n]).hex() == RFC_ROOTS[n]
    assert [p.hex() for p in t.inclusion_proof(0, 8)] == [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ]
    assert [p.hex() for p in t.inclusion_proof(5, 8)] == [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]
    assert [p.hex() for p in t.consistency_proof(2, 8)] == [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ]
    assert node_hash(hashes[0], hashes[1]).hex() == RFC_ROOTS[2]


# --- real log data -----------------------------------------------------------------------------


def _argon2025h2(shared_data: Path) -> tuple[int, int, bytes, list[bytes], bytes]:
    d = shared_data / "rfc6962"
    entry = json.loads((d / "argon2025h2-get-entries-912557348.json").read_text())["entries"][0]
    proof = json.loads(
        (d / "argon2025h2-get-proof-by-hash-912557348-at-1329315675.json").read_text()
    )
    sth = json.loads((d / "argon2025h2-get-sth-1329315675.json").read_text())
    return (
        proof["leaf_index"],
        sth["tree_size"],
        leaf_hash(b64(entry["leaf_input"])),
        [b64(p) for p in proof["audit_path"]],
        b64(sth["sha256_root_hash"]),
    )


def test_real_inclusion_proof(shared_data: Path) -> None:
    index, size, leaf, path, root = _argon2025h2(shared_data)
    assert (index, size, len(path)) == (912557348, 1329315675, 31)
    assert verify_inclusion(index, size, leaf, path, root)
    assert ref_root_from_path(index, size, leaf, path) == root  # the reference agrees


def test_real_inclusion_proof_tampered(shared_data: Path) -> None:
    index, size, leaf, path, root = _argon2025h2(shared_data)
    assert not verify_inclusion(index, size, leaf, path, flip(root))
    assert not verify_inclusion(index, size, flip(leaf, 77), path, root)
    for i in (0, 15, 30):
        bad = [*path[:i], flip(path[i], 200), *path[i + 1 :]]
        assert not verify_inclusion(index, size, leaf, bad, root)
    assert not verify_inclusion(index + 1, size, leaf, path, root)
    # A path fits every size whose tree has the same shape around the leaf (size + 1 here):
    # the signed tree head binds the size, so only a differently shaped size must fail.
    assert not verify_inclusion(index, 2 * size, leaf, path, root)
    assert not verify_inclusion(index, size, leaf, path[:-1], root)
    assert not verify_inclusion(index, size, leaf, [*path, path[0]], root)
    assert not verify_inclusion(size, size, leaf, path, root)


def _argon2025h1(shared_data: Path) -> tuple[int, int, bytes, bytes, list[bytes]]:
    d = shared_data / "rfc6962"
    old = json.loads((d / "argon2025h1-get-sth-1425614114.json").read_text())
    new = json.loads((d / "argon2025h1-get-sth-1425633154.json").read_text())
    proof = json.loads(
        (d / "argon2025h1-get-sth-consistency-1425614114-1425633154.json").read_text()
    )["consistency"]
    return (
        old["tree_size"],
        new["tree_size"],
        b64(old["sha256_root_hash"]),
        b64(new["sha256_root_hash"]),
        [b64(p) for p in proof],
    )


def test_real_consistency_proof(shared_data: Path) -> None:
    m, n, r1, r2, proof = _argon2025h1(shared_data)
    assert len(proof) == 24
    assert verify_consistency(m, n, r1, r2, proof)
    assert ref_roots_from_consistency(m, n, r1, proof) == (r1, r2)


def test_real_consistency_proof_tampered(shared_data: Path) -> None:
    m, n, r1, r2, proof = _argon2025h1(shared_data)
    assert not verify_consistency(m, n, flip(r1), r2, proof)
    assert not verify_consistency(m, n, r1, flip(r2, 255), proof)
    for i in (0, 11, 23):
        bad = [*proof[:i], flip(proof[i], 9), *proof[i + 1 :]]
        assert not verify_consistency(m, n, r1, r2, bad)
    assert not verify_consistency(m + 1, n, r1, r2, proof)
    assert not verify_consistency(m, 2 * n, r1, r2, proof)  # n - 1 has the same shape
    assert not verify_consistency(m, n, r1, r2, proof[:-1])
    assert not verify_consistency(n, m, r2, r1, proof)


# --- properties against the reference ---------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(size=st.integers(0, MAX))
def test_roots_equal_reference(tree: MerkleTree, size: int) -> None:
    expected = ref_mth(LEAVES[:size])
    assert tree.root(size) == expected
    assert root_hash(LEAVES[:size]) == expected


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_inclusion_proofs(tree: MerkleTree, data: st.DataObject) -> None:
    size = data.draw(st.integers(1, MAX), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = tree.inclusion_proof(index, size)
    root = ref_mth(LEAVES[:size])
    assert proof == ref_path(index, LEAVES[:size])
    assert ref_root_from_path(index, size, LEAVES[index], proof) == root
    assert verify_inclusion(index, size, LEAVES[index], proof, root)
    # Anything else must fail: another leaf, another index, a changed sibling.
    other = (index + 1) % size
    assert verify_inclusion(other, size, LEAVES[index], proof, root) == (other == index)
    assert not verify_inclusion(index, size, LEAVES[index], proof, flip(root))
    if proof:
        pos = data.draw(st.integers(0, len(proof) - 1), label="tampered")
        bad = [*proof[:pos], flip(proof[pos], 3), *proof[pos + 1 :]]
        assert not verify_inclusion(index, size, LEAVES[index], bad, root)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_root_with_a_leaf_replaced_is_the_root_of_the_rebuilt_tree(
    tree: MerkleTree, data: st.DataObject
) -> None:
    size = data.draw(st.integers(1, MAX), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    other = data.draw(st.binary(min_size=32, max_size=32), label="other")
    proof = tree.inclusion_proof(index, size)
    assert root_with_leaf(index, size, LEAVES[index], proof) == tree.root(size)
    replaced = [*LEAVES[:index], other, *LEAVES[index + 1 : size]]
    expected = root_hash(replaced)
    assert expected == ref_mth(replaced)
    assert root_with_leaf(index, size, other, proof) == expected
    # The audit path is the same for the new leaf in the new tree; the root moves with the leaf.
    assert verify_inclusion(index, size, other, proof, expected)
    assert (expected == tree.root(size)) == (other == LEAVES[index])


def test_root_with_leaf_rejects_what_cannot_be_an_audit_path(tree: MerkleTree) -> None:
    proof = tree.inclusion_proof(5, 100)
    for index, size, path in [
        (100, 100, proof),  # index beyond the tree
        (-1, 100, proof),
        (5, 100, proof[:-1]),  # too short
        (5, 100, [*proof, proof[0]]),  # too long
        (5, 100, [proof[0][:31], *proof[1:]]),  # a hash of the wrong length
        (0, 0, []),
    ]:
        with pytest.raises(MerkleError):
            root_with_leaf(index, size, LEAVES[5], path)
    assert root_with_leaf(0, 1, LEAVES[9], []) == LEAVES[9]  # a one-leaf tree is its leaf


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_consistency_proofs(tree: MerkleTree, data: st.DataObject) -> None:
    new = data.draw(st.integers(1, MAX), label="new")
    old = data.draw(st.integers(1, new), label="old")
    proof = tree.consistency_proof(old, new)
    r1, r2 = ref_mth(LEAVES[:old]), ref_mth(LEAVES[:new])
    assert proof == ref_proof(old, LEAVES[:new])
    if old < new:
        assert ref_roots_from_consistency(old, new, r1, proof) == (r1, r2)
    assert verify_consistency(old, new, r1, r2, proof)
    assert not verify_consistency(old, new, flip(r1), r2, proof)
    assert not verify_consistency(old, new, r1, flip(r2), proof)
    if proof:
        pos = data.draw(st.integers(0, len(proof) - 1), label="tampered")
        bad = [*proof[:pos], flip(proof[pos], 100), *proof[pos + 1 :]]
        assert not verify_consistency(old, new, r1, r2, bad)


def test_consistency_edge_cases(tree: MerkleTree) -> None:
    r5 = tree.root(5)
    assert tree.consistency_proof(5, 5) == []
    assert tree.consistency_proof(0, 5) == []
    assert verify_consistency(5, 5, r5, r5, [])
    assert not verify_consistency(5, 5, r5, tree.root(6), [])
    assert verify_consistency(0, 5, EMPTY_ROOT, r5, [])
    assert not verify_consistency(0, 5, r5, r5, [])
    assert not verify_consistency(3, 5, tree.root(3), r5, [])


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, MAX))
def test_hash_tiles_match_tree(size: int) -> None:
    t = MerkleTree()
    for h in LEAVES[:size]:
        t.append(h)
    full, rest = divmod(size, 256)
    for n in range(full + (rest > 0)):
        width = 256 if n < full else rest
        tile = t.hash_tile(0, n, width)
        assert tile == b"".join(LEAVES[n * 256 : n * 256 + width])
    for n in range(full):
        # level 1, entry n: the complete subtree of leaves n*256 .. n*256+255
        assert t.hash_tile(1, 0, full)[n * 32 : n * 32 + 32] == ref_mth(
            LEAVES[n * 256 : n * 256 + 256]
        )
    tiles = {(r.level, r.index): t.hash_tile(r.level, r.index, r.width) for r in root_tiles(size)}
    assert root_from_tile_hashes(size, tiles) == ref_mth(LEAVES[:size]) == t.root()


def test_tiles_across_levels() -> None:
    # C2SP tlog-tiles' example size: 273 full level-0 tiles + 0/273.p/112, 1/001.p/17, 2/000.p/1.
    size = 70_000
    hashes = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(size)]
    t = MerkleTree()
    for h in hashes:
        t.append(h)
    refs = root_tiles(size)
    assert TileRef(2, 0, 1) in refs
    assert {(r.level, r.index): r.width for r in refs if r.level < 2} == {(1, 1): 17, (0, 273): 112}
    assert t.hash_tile(2, 0, 1) == ref_mth(hashes[:65536])
    with pytest.raises(MerkleError):
        t.hash_tile(2, 0, 2)
    with pytest.raises(MerkleError):
        t.hash_tile(0, 273, 113)
    tiles = {(r.level, r.index): t.hash_tile(r.level, r.index, r.width) for r in refs}
    assert root_from_tile_hashes(size, tiles) == root_hash(hashes) == t.root()
    # A full tile in place of the partial one (fetched after the tile filled) works too.
    t2 = MerkleTree()
    for h in [*hashes, *hashes[: 256 * 274 - size]]:
        t2.append(h)
    tiles[(0, 273)] = t2.hash_tile(0, 273, 256)
    assert root_from_tile_hashes(size, tiles) == t.root()
    del tiles[(1, 1)]
    with pytest.raises(MerkleError, match="1/1"):
        root_from_tile_hashes(size, tiles)


def test_tree_rejects_bad_requests(tree: MerkleTree) -> None:
    with pytest.raises(MerkleError):
        MerkleTree().append(b"short")
    with pytest.raises(MerkleError):
        tree.root(MAX + 1)
    with pytest.raises(MerkleError):
        tree.inclusion_proof(10, 10)
    with pytest.raises(MerkleError):
        tree.inclusion_proof(0, MAX + 1)
    with pytest.raises(MerkleError):
        tree.consistency_proof(6, 5)
    with pytest.raises(MerkleError):
        tree.leaf_hash_at(MAX)
    with pytest.raises(MerkleError):
        tree.hash_tile(0, 3, 0)
    with pytest.raises(MerkleError):
        root_tiles(-1)
    assert root_tiles(0) == []
    assert root_from_tile_hashes(0, {}) == EMPTY_ROOT
    assert tree.leaf_hash_at(7) == LEAVES[7]
    assert tree.size == MAX

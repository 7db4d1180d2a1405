"""The in-memory log model without HTTP: ranges, tile widths, publication, proofs, corruption."""

from __future__ import annotations

import base64
import gzip

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from certlake.ct.checkpoint import verify_checkpoint
from certlake.ct.entry import EntryType, LogKind
from certlake.ct.leaf import decode_rfc6962_entry
from certlake.ct.merkle import leaf_hash, root_hash, verify_consistency, verify_inclusion
from certlake.ct.sth import verify_sth
from certlake.ct.tile import decode_data_tile
from certlake.ct.tls import DecodeError
from certlake.ct.verify import LogVerifier, Mismatch, TreeHead
from certlake.testlog.faults import CorruptMode
from certlake.testlog.log import (
    RequestError,
    TestLog,
    TileNotFound,
    get_entries_range,
    lied_leaf_hash,
    tile_width,
)
from certlake.testlog.pool import CertPool
from certlake.testlog.server import seeded_signer

ORIGIN = "testlog.invalid/static"


@pytest.fixture(scope="module")
def pool() -> CertPool:
    return CertPool(seed=1, size=64)


def _filled(kind: LogKind, pool: CertPool, n: int) -> TestLog:
    log = TestLog("t", kind, seeded_signer(1, "t"), ORIGIN)
    for i, cert in enumerate(pool.take(n)):
        log.append(cert, 1_700_000_000_000 + i)
    return log


def test_entries_range_examples() -> None:
    assert get_entries_range(0, 9, 100, 1000, False) == range(0, 10)
    assert get_entries_range(95, 200, 100, 1000, False) == range(95, 100)  # clamped
    assert get_entries_range(10, 5000, 10_000, 1000, False) == range(10, 1010)
    assert get_entries_range(10, 5000, 10_000, 1000, True) == range(10, 1000)  # aligned
    for bad in [(100, 100), (5, 4), (-1, 3)]:
        with pytest.raises(RequestError):
            get_entries_range(bad[0], bad[1], 100, 1000, False)


@pytest.mark.parametrize(
    ("start", "end", "served"),
    [
        (0, 255, range(0, 32)),
        (30, 255, range(30, 32)),
        (32, 255, range(32, 64)),
        (30, 61, range(30, 32)),  # exactly a cap's worth, but across a block boundary
        (30, 40, range(30, 32)),
        (40, 50, range(40, 51)),  # inside one block: as asked
        (64, 64, range(64, 65)),
        (290, 999, range(290, 300)),  # the end of the tree
    ],
)
def test_google_alignment(start: int, end: int, served: range) -> None:
    assert get_entries_range(start, end, 300, 32, True) == served


def test_without_alignment_only_the_cap_cuts() -> None:
    assert get_entries_range(30, 255, 300, 32, False) == range(30, 62)
    assert get_entries_range(30, 40, 300, 32, False) == range(30, 41)


@given(
    start=st.integers(0, 5000),
    length=st.integers(1, 5000),
    size=st.integers(1, 6000),
    cap=st.integers(1, 1100),
    align=st.booleans(),
)
def test_entries_range_is_contiguous_from_start_capped_and_inside_the_tree(
    start: int, length: int, size: int, cap: int, align: bool
) -> None:
    end = start + length - 1
    if start >= size:
        with pytest.raises(RequestError):
            get_entries_range(start, end, size, cap, align)
        return
    r = get_entries_range(start, end, size, cap, align)
    assert r.start == start and r.step == 1
    assert 1 <= len(r) <= cap
    assert r.stop <= min(end + 1, size)
    if len(r) < min(end + 1, size) - start:  # the response was cut by the cap
        assert len(r) == cap or (align and r.stop % cap == 0)
    if align:  # never across a block boundary
        assert r.start // cap == (r.stop - 1) // cap


def test_tile_widths_from_the_spec_example() -> None:
    # C2SP tlog-tiles' example: size 70 000.
    assert tile_width(70_000, 0, 272) == 256
    assert tile_width(70_000, 0, 273) == 112
    assert tile_width(70_000, 0, 274) == 0
    assert tile_width(70_000, 1, 0) == 256
    assert tile_width(70_000, 1, 1) == 17
    assert tile_width(70_000, 2, 0) == 1
    assert tile_width(256, 1, 0) == 1


def test_only_the_published_size_is_visible(pool: CertPool) -> None:
    log = _filled(LogKind.STATIC, pool, 300)
    with pytest.raises(TileNotFound):
        log.data_tile_gz(0, 256)
    log.publish(1_700_000_001_000)
    assert len(decode_data_tile(gzip.decompress(log.data_tile_gz(0, 256)), 0, 256)) == 256
    assert len(decode_data_tile(gzip.decompress(log.data_tile_gz(1, 44)), 1, 44)) == 44
    for n, width in [(1, 45), (1, 256), (2, 1)]:
        with pytest.raises(TileNotFound):
            log.data_tile_gz(n, width)
    log.append(pool.take(1)[0], 1_700_000_002_000)
    with pytest.raises(TileNotFound):
        log.data_tile_gz(1, 45)


def test_publish_signs_sth_and_checkpoint(pool: CertPool) -> None:
    log = _filled(LogKind.STATIC, pool, 10)
    head = log.publish(1_700_000_001_000)
    verify_sth(head.sth, log.signer.public_key_der)
    cp = verify_checkpoint(head.checkpoint, ORIGIN, log.signer.public_key_der)
    assert (cp.tree_size, cp.root_hash, cp.timestamp_ms) == (10, log.tree.root(), 1_700_000_001_000)
    assert log.publish(1_700_000_009_000) is head  # nothing new: the same head


@pytest.mark.parametrize("index", [0, 37, 299])
def test_a_lying_head_is_signed_over_the_tree_with_one_leaf_replaced(
    pool: CertPool, index: int
) -> None:
    log = _filled(LogKind.STATIC, pool, 300)
    honest = log.publish(1_700_000_001_000)
    lie = log.lying_head(index)
    hashes = [log.tree.leaf_hash_at(i) for i in range(300)]
    hashes[index] = lied_leaf_hash(hashes[index])
    verify_sth(lie.sth, log.signer.public_key_der)
    cp = verify_checkpoint(lie.checkpoint, ORIGIN, log.signer.public_key_der)
    assert (cp.tree_size, cp.timestamp_ms, cp.root_hash) == (
        300,
        1_700_000_001_000,
        root_hash(hashes),
    )
    assert (lie.sth.tree_size, lie.sth.timestamp_ms) == (
        honest.sth.tree_size,
        honest.sth.timestamp_ms,
    )
    assert lie.sth.root_hash == cp.root_hash != honest.sth.root_hash
    assert log.lying_head(index) is lie  # served the same each time, as the honest head is
    assert log.head is honest and log.tree.root() == honest.sth.root_hash


def test_get_entries_body_decodes_and_hashes_into_the_tree(pool: CertPool) -> None:
    log = _filled(LogKind.RFC6962, pool, 40)
    log.publish(1_700_000_001_000)
    body = orjson.loads(log.get_entries_body(range(3, 40)))
    kinds = set()
    for i, item in enumerate(body["entries"], start=3):
        leaf = base64.b64decode(item["leaf_input"])
        entry = decode_rfc6962_entry(i, leaf, base64.b64decode(item["extra_data"]))
        kinds.add(entry.entry_type)
        assert len(entry.chain) == 2
        proof = log.tree.inclusion_proof(i, 40)
        assert verify_inclusion(i, 40, leaf_hash(leaf), proof, log.tree.root())
    assert kinds == {EntryType.X509, EntryType.PRECERT}


def test_recycled_pool_certificates_still_give_distinct_leaves(pool: CertPool) -> None:
    log = _filled(LogKind.RFC6962, pool, 200)  # the pool holds 64
    hashes = {log.tree.leaf_hash_at(i) for i in range(200)}
    assert len(hashes) == 200


def test_proof_endpoints_verify(pool: CertPool) -> None:
    log = _filled(LogKind.RFC6962, pool, 100)
    log.publish(1_700_000_001_000)
    old_root = log.tree.root(37)
    hashes = log.consistency(37, 100)["consistency"]
    assert isinstance(hashes, list)
    proof = [base64.b64decode(h) for h in hashes]
    assert verify_consistency(37, 100, old_root, log.tree.root(), proof)
    answer = log.proof_by_hash(log.tree.leaf_hash_at(55), 80)
    assert answer["leaf_index"] == 55
    with pytest.raises(RequestError):
        log.consistency(10, 101)  # beyond the published size
    with pytest.raises(RequestError):
        log.proof_by_hash(log.tree.leaf_hash_at(90), 80)


def test_corruption_modes(pool: CertPool) -> None:
    log = _filled(LogKind.RFC6962, pool, 5)
    body = orjson.loads(
        log.get_entries_body(range(5), {1: CorruptMode.DER, 3: CorruptMode.FRAMING})
    )["entries"]
    raw = [(base64.b64decode(e["leaf_input"]), base64.b64decode(e["extra_data"])) for e in body]
    garbled = decode_rfc6962_entry(1, *raw[1])  # framing intact
    assert set(garbled.cert_der) == {0xFF}
    with pytest.raises(DecodeError):
        decode_rfc6962_entry(3, *raw[3])
    decode_rfc6962_entry(4, *raw[4])


@pytest.mark.parametrize("kind", [LogKind.RFC6962, LogKind.STATIC])
def test_a_tampered_entry_is_valid_and_only_its_leaf_hash_gives_it_away(
    pool: CertPool, kind: LogKind
) -> None:
    log = _filled(kind, pool, 256)
    log.publish(1_700_000_001_000)
    tamper = {7: CorruptMode.TAMPER}
    if kind is LogKind.RFC6962:
        body = orjson.loads(log.get_entries_body(range(256), tamper))["entries"]
        leaves = [base64.b64decode(e["leaf_input"]) for e in body]
        for i, e in enumerate(body):
            decode_rfc6962_entry(i, leaves[i], base64.b64decode(e["extra_data"]))
    else:
        tile = decode_data_tile(gzip.decompress(log.data_tile_gz(0, 256, tamper)), 0, 256)
        leaves = [t.leaf_input for t in tile]
    hashes = [leaf_hash(leaf) for leaf in leaves]
    assert [i for i in range(256) if hashes[i] != log.tree.leaf_hash_at(i)] == [7]
    # What a verifier makes of it: the head the entries reach does not match them.
    verifier = LogVerifier()
    verifier.head(TreeHead(256, log.tree.root(256)))
    (event,) = verifier.leaves(0, hashes)
    assert isinstance(event, Mismatch) and verifier.verified_index == 0


def test_corrupt_data_tile_fails_to_decode_and_is_not_cached(pool: CertPool) -> None:
    log = _filled(LogKind.STATIC, pool, 256)
    log.publish(1_700_000_001_000)
    with pytest.raises(DecodeError):
        decode_data_tile(
            gzip.decompress(log.data_tile_gz(0, 256, {7: CorruptMode.FRAMING})), 0, 256
        )
    leaves = decode_data_tile(gzip.decompress(log.data_tile_gz(0, 256)), 0, 256)
    assert [leaf_hash(t.leaf_input) for t in leaves] == [
        log.tree.leaf_hash_at(i) for i in range(256)
    ]

"""static-ct-api data tiles: tile paths, ranges, TileLeaf codec, `leaf_index` checks, fuzz."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certlake.ct.entry import EntryType, LogEntry
from certlake.ct.leaf import decode_rfc6962_entry, encode_leaf_input, encode_timestamped_entry
from certlake.ct.tile import (
    TILE_WIDTH,
    BadTileLeaf,
    TileLeaf,
    data_tile_path,
    decode_data_tile,
    decode_data_tile_prefix,
    encode_tile_leaf,
    hash_tile_path,
    leaf_index_extension,
    parse_leaf_index,
    parse_tile_path,
    tile_index_path,
    tile_path,
    tiles_for_range,
)
from certlake.ct.tls import DecodeError, u, vec

# --- tile paths -----------------------------------------------------------------------------

# Groups of three digits, every group but the last prefixed `x`.
INDEX_PATHS = [
    (0, "000"),
    (5, "005"),
    (999, "999"),
    (1000, "x001/000"),
    (52123, "x052/123"),
    (123456, "x123/456"),
    (1234067, "x001/x234/067"),
    (1999001, "x001/x999/001"),
]


@pytest.mark.parametrize(("n", "path"), INDEX_PATHS)
def test_tile_index_path_reference_examples(n: int, path: str) -> None:
    assert tile_index_path(n) == path
    assert tile_path(n) == path
    assert parse_tile_path(path) == (n, TILE_WIDTH)


def test_partial_tile_paths() -> None:
    assert tile_path(1234, 17) == "x001/234.p/17"
    assert parse_tile_path("x001/234.p/17") == (1234, 17)
    assert data_tile_path(1234, 17) == "tile/data/x001/234.p/17"
    assert data_tile_path(3) == "tile/data/003"
    # Tree size 70 000 (C2SP tlog-tiles' example): its partial tiles on levels 0, 1 and 2.
    assert hash_tile_path(0, 273, 112) == "tile/0/273.p/112"
    assert hash_tile_path(1, 1, 17) == "tile/1/001.p/17"
    assert hash_tile_path(2, 0, 1) == "tile/2/000.p/1"
    assert hash_tile_path(1, 0) == "tile/1/000"


@pytest.mark.parametrize("width", [0, -1, 257])
def test_tile_path_rejects_bad_width(width: int) -> None:
    with pytest.raises(ValueError):
        tile_path(0, width)


def test_tile_index_path_rejects_negative_index() -> None:
    with pytest.raises(ValueError):
        tile_index_path(-1)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 10**12), width=st.integers(1, TILE_WIDTH))
def test_parse_tile_path_inverts_tile_path(n: int, width: int) -> None:
    assert parse_tile_path(tile_path(n, width)) == (n, width)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "5",
        "05",
        "0005",
        "x001",
        "001/000",  # a non-final group without its `x`
        "y001/000",
        "x01/000",
        "x001/00",
        "x000/005",  # leading zero group: 5 has exactly one path
        "x000/x001/000",
        "/000",
        "000/",
        "x001//000",
        "x001/000/",
        "-01",
        "+01",
        " 01",
        "0x1",
        "000.p/",
        "000.p/0",
        "000.p/017",
        "000.p/256",
        "000.p/-1",
        "000.p/ab",
        "000.p/1.p/2",
        "000.p/1/",
        ".p/1",
        "x001.p/1/000",
        "٠٠٥",  # Arabic-Indic digits pass str.isdigit()
        "x١٢٣/456",
        "000.p/١٧",
        "00²",
    ],
)
def test_parse_tile_path_rejects_malformed(path: str) -> None:
    with pytest.raises(ValueError):
        parse_tile_path(path)


# --- tiles_for_range ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "size", "tiles"),
    [
        (0, 0, 0, []),
        (5, 5, 10, []),
        (0, 1, 1, [(0, 1)]),
        (0, 256, 256, [(0, 256)]),
        (255, 257, 300, [(0, 256), (1, 44)]),
        (256, 512, 1000, [(1, 256)]),
        (69_999, 70_000, 70_000, [(273, 112)]),
        (0, 513, 70_000, [(0, 256), (1, 256), (2, 256)]),
    ],
)
def test_tiles_for_range_examples(
    start: int, end: int, size: int, tiles: list[tuple[int, int]]
) -> None:
    assert tiles_for_range(start, end, size) == tiles


@pytest.mark.parametrize(("start", "end", "size"), [(-1, 0, 5), (3, 2, 5), (0, 6, 5), (6, 6, 5)])
def test_tiles_for_range_rejects_ranges_outside_the_tree(start: int, end: int, size: int) -> None:
    with pytest.raises(ValueError):
        tiles_for_range(start, end, size)


@st.composite
def ranges(draw: st.DrawFn) -> tuple[int, int, int]:
    size = draw(st.integers(0, 10**7))
    start = draw(st.integers(0, size))
    end = draw(st.one_of(st.integers(start, min(size, start + 2000)), st.integers(start, size)))
    return start, end, size


@settings(max_examples=300, deadline=None)
@given(ranges())
def test_tiles_for_range_covers_exactly_what_is_needed(r: tuple[int, int, int]) -> None:
    start, end, size = r
    tiles = tiles_for_range(start, end, size)
    if start == end:
        assert tiles == []
        return
    assert [t for t, _ in tiles] == list(range(tiles[0][0], tiles[-1][0] + 1))
    first, last = tiles[0][0] * TILE_WIDTH, tiles[-1][0] * TILE_WIDTH + tiles[-1][1]
    assert first <= start and end <= last  # consecutive tiles, so this is the whole union
    for t, width in tiles:
        lo = t * TILE_WIDTH
        # Never past the tree; partial only where the tree ends; and every tile is needed.
        assert width == min(TILE_WIDTH, size - lo)
        assert lo < end and lo + width > start


# --- TileLeaf encoding and decoding ---------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """What a test puts into one tile entry."""

    timestamp_ms: int
    entry_type: EntryType
    cert_der: bytes
    fingerprints: tuple[bytes, ...]
    tbs: bytes | None = None
    issuer_key_hash: bytes | None = None

    def encode(self, index: int) -> bytes:
        return encode_tile_leaf(
            index,
            self.timestamp_ms,
            self.entry_type,
            self.cert_der,
            self.fingerprints,
            self.tbs,
            self.issuer_key_hash,
        )


timestamps = st.integers(0, 2**64 - 1)
ders = st.binary(min_size=1, max_size=40)
fingerprint_lists = st.lists(st.binary(min_size=32, max_size=32), max_size=3).map(tuple)
x509_specs = st.builds(Spec, timestamps, st.just(EntryType.X509), ders, fingerprint_lists)
precert_specs = st.builds(
    Spec,
    timestamps,
    st.just(EntryType.PRECERT),
    ders,
    fingerprint_lists,
    tbs=ders,
    issuer_key_hash=st.binary(min_size=32, max_size=32),
)
specs = st.one_of(x509_specs, precert_specs)


def _tile(tile_index: int, entries: list[Spec]) -> bytes:
    return b"".join(s.encode(tile_index * TILE_WIDTH + i) for i, s in enumerate(entries))


def _fill(templates: list[Spec], width: int) -> list[Spec]:
    # A full tile of independently drawn entries overruns hypothesis' data budget, so the
    # drawn entries are repeated across the tile (positions still differ in their leaf_index).
    return [templates[i % len(templates)] for i in range(width)]


@settings(max_examples=60, deadline=None)
@given(
    templates=st.lists(specs, min_size=1, max_size=6),
    width=st.integers(1, TILE_WIDTH),
    # leaf_index is a uint40, which bounds the tile index.
    tile_index=st.integers(0, 2**40 // TILE_WIDTH - 1),
)
def test_data_tile_round_trip(templates: list[Spec], width: int, tile_index: int) -> None:
    entries = _fill(templates, width)
    leaves = decode_data_tile(_tile(tile_index, entries), tile_index, width)
    assert len(leaves) == width
    for i, (leaf, spec) in enumerate(zip(leaves, entries, strict=True)):
        index = tile_index * TILE_WIDTH + i
        assert leaf.index == index
        assert leaf.timestamp_ms == spec.timestamp_ms
        assert leaf.entry_type is spec.entry_type
        assert leaf.cert_der == spec.cert_der
        assert leaf.tbs == spec.tbs
        assert leaf.issuer_key_hash == spec.issuer_key_hash
        assert leaf.chain_fingerprints == spec.fingerprints
        logged = spec.tbs if spec.entry_type is EntryType.PRECERT else spec.cert_der
        assert logged is not None
        assert leaf.leaf_input == encode_leaf_input(
            spec.timestamp_ms,
            spec.entry_type,
            logged,
            spec.issuer_key_hash,
            leaf_index_extension(index),
        )
        chain = tuple(b"cert for " + fp for fp in spec.fingerprints)
        assert leaf.to_entry(chain) == LogEntry(
            index=index,
            timestamp_ms=spec.timestamp_ms,
            entry_type=spec.entry_type,
            cert_der=spec.cert_der,
            chain=chain,
            tbs=spec.tbs,
            issuer_key_hash=spec.issuer_key_hash,
            leaf_input=leaf.leaf_input,
        )


def test_tile_leaf_layout_matches_navigli_entry_0() -> None:
    # Sizes and header bytes of real navigli2025h2 tile/data/000 entry 0.
    key_hash = bytes.fromhex("b3e49ac8") + b"\x00" * 28
    fps = (b"\x54" * 32, b"\xe7" * 32)
    tbs, precert = b"t" * 1145, b"p" * 1446
    data = encode_tile_leaf(0, 1746292399101, EntryType.PRECERT, precert, fps, tbs, key_hash)
    assert len(data) == 2715
    assert data[0:8] == bytes.fromhex("0000019697235bfd")
    assert data[8:10] == bytes.fromhex("0001")
    assert data[10:42] == key_hash
    assert data[42:45] == bytes.fromhex("000479")
    assert data[45:1190] == tbs
    assert data[1190:1200] == bytes.fromhex("0008 00 0005 0000000000")
    assert data[1200:1203] == bytes.fromhex("0005a6")
    assert data[1203:2649] == precert
    assert data[2649:2651] == bytes.fromhex("0040")
    assert data[2651:] == fps[0] + fps[1]
    (leaf,) = decode_data_tile(data, 0, 1)
    assert leaf.leaf_input == b"\x00\x00" + data[:1200]


def test_real_argon_entry_through_a_tile_matches_rfc6962_decoding(shared_data: Path) -> None:
    doc = json.loads((shared_data / "rfc6962/argon2025h2-get-entries-912557348.json").read_text())
    (raw,) = doc["entries"]
    index = 912557348
    tile_index, position = divmod(index, TILE_WIDTH)
    rfc = decode_rfc6962_entry(
        index, base64.b64decode(raw["leaf_input"]), base64.b64decode(raw["extra_data"])
    )
    assert rfc.tbs is not None
    fps = [hashlib.sha256(c).digest() for c in rfc.chain]
    data = encode_tile_leaf(
        index, rfc.timestamp_ms, rfc.entry_type, rfc.cert_der, fps, rfc.tbs, rfc.issuer_key_hash
    )
    filler = Spec(1, EntryType.X509, b"other", ())
    before = b"".join(filler.encode(tile_index * TILE_WIDTH + i) for i in range(position))
    (leaf,) = decode_data_tile(before + data, tile_index, position + 1)[position:]
    assert leaf.chain_fingerprints == tuple(fps)
    # Same entry, except that the static log's leaf carries the leaf_index extension.
    assert leaf.leaf_input == rfc.leaf_input[:-2] + vec(leaf_index_extension(index), 2)
    assert leaf.to_entry(rfc.chain) == LogEntry(
        index=rfc.index,
        timestamp_ms=rfc.timestamp_ms,
        entry_type=rfc.entry_type,
        cert_der=rfc.cert_der,
        chain=rfc.chain,
        tbs=rfc.tbs,
        issuer_key_hash=rfc.issuer_key_hash,
        leaf_input=leaf.leaf_input,
    )


def test_encode_tile_leaf_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        encode_tile_leaf(0, 0, EntryType.X509, b"c", [b"short"])
    with pytest.raises(ValueError):
        encode_tile_leaf(0, 0, EntryType.PRECERT, b"c", [], tbs=None, issuer_key_hash=b"k" * 32)


# --- integrity checks -----------------------------------------------------------------------

X509 = Spec(1000, EntryType.X509, b"cert", (b"\x01" * 32,))
PRECERT = Spec(2000, EntryType.PRECERT, b"precert", (), tbs=b"tbs", issuer_key_hash=b"\x02" * 32)


def _raw_x509_entry(extensions: bytes, fingerprints: bytes = b"") -> bytes:
    """A tile entry with hand-made extensions, which encode_tile_leaf cannot produce."""
    return encode_timestamped_entry(1, EntryType.X509, b"cert", None, extensions) + vec(
        fingerprints, 2
    )


def test_leaf_index_disagreeing_with_position_is_rejected() -> None:
    good = _tile(3, [X509, PRECERT, X509])
    assert len(decode_data_tile(good, 3, 3)) == 3
    swapped = X509.encode(3 * 256) + PRECERT.encode(3 * 256 + 2) + X509.encode(3 * 256 + 1)
    with pytest.raises(DecodeError, match="leaf_index"):
        decode_data_tile(swapped, 3, 3)
    # A correct tile served under another tile's path is caught the same way.
    with pytest.raises(DecodeError, match="leaf_index"):
        decode_data_tile(good, 4, 3)


def test_content_errors_cost_one_entry_and_framing_errors_the_rest_of_the_tile() -> None:
    base = 3 * 256
    wrong = X509.encode(base) + PRECERT.encode(base + 7) + X509.encode(base + 2)
    leaves, error = decode_data_tile_prefix(wrong, 3, 3)
    assert error is None
    assert [type(leaf) for leaf in leaves] == [TileLeaf, BadTileLeaf, TileLeaf]
    assert leaves[1].index == base + 1 and "claims leaf_index 775" in leaves[1].error
    odd_chain = _raw_x509_entry(leaf_index_extension(base + 1), b"\x00" * 33)
    leaves, error = decode_data_tile_prefix(X509.encode(base) + odd_chain, 3, 2)
    assert error is None and isinstance(leaves[1], BadTileLeaf)
    # Truncated: where the next entry starts is unknown, so the tile ends there.
    cut = X509.encode(base) + PRECERT.encode(base + 1)[:-3] + X509.encode(base + 2)
    leaves, error = decode_data_tile_prefix(cut, 3, 3)
    assert error is not None and len(leaves) <= 2 and isinstance(leaves[0], TileLeaf)


def test_tile_with_one_entry_too_many_or_too_few_is_rejected() -> None:
    entries = [X509, PRECERT, X509, PRECERT]
    with pytest.raises(DecodeError):
        decode_data_tile(_tile(0, entries), 0, 3)
    with pytest.raises(DecodeError):
        decode_data_tile(_tile(0, entries[:2]), 0, 3)
    with pytest.raises(DecodeError):
        decode_data_tile(b"", 0, 1)


def test_tile_entry_without_leaf_index_is_rejected() -> None:
    with pytest.raises(DecodeError, match="no leaf_index"):
        decode_data_tile(_raw_x509_entry(b""), 0, 1)
    with pytest.raises(DecodeError, match="no leaf_index"):
        decode_data_tile(_raw_x509_entry(u(7, 1) + vec(b"\x00" * 5, 2)), 0, 1)


def test_tile_entry_with_duplicate_extension_is_rejected() -> None:
    with pytest.raises(DecodeError, match="duplicate"):
        decode_data_tile(_raw_x509_entry(leaf_index_extension(0) * 2), 0, 1)


def test_tile_entry_with_bad_chain_length_is_rejected() -> None:
    with pytest.raises(DecodeError, match="multiple of 32"):
        decode_data_tile(_raw_x509_entry(leaf_index_extension(0), b"\x00" * 33), 0, 1)


def test_tile_entry_with_unknown_entry_type_is_rejected() -> None:
    entry = bytearray(X509.encode(0))
    entry[8:10] = b"\x00\x02"
    with pytest.raises(DecodeError, match="entry_type"):
        decode_data_tile(bytes(entry), 0, 1)


def test_tile_entry_with_empty_pre_certificate_is_rejected() -> None:
    empty = Spec(1, EntryType.PRECERT, b"", (), tbs=b"tbs", issuer_key_hash=b"\x00" * 32)
    with pytest.raises(DecodeError, match="pre_certificate"):
        decode_data_tile(empty.encode(0), 0, 1)


def test_leaf_index_extension_bytes() -> None:
    assert leaf_index_extension(0) == bytes.fromhex("00 0005 0000000000")
    assert leaf_index_extension(0x0102030405) == bytes.fromhex("00 0005 0102030405")
    assert parse_leaf_index(leaf_index_extension(2**40 - 1)) == 2**40 - 1


@pytest.mark.parametrize(
    "extensions",
    [
        b"",
        u(1, 1) + vec(b"\x00" * 5, 2),  # some other extension, no leaf_index
        leaf_index_extension(1) + leaf_index_extension(1),
        leaf_index_extension(1) + u(9, 1) + vec(b"", 2) + u(9, 1) + vec(b"x", 2),
        u(0, 1) + vec(b"\x00" * 4, 2),  # leaf_index must be exactly 5 bytes
        u(0, 1) + vec(b"\x00" * 6, 2),
        u(0, 1) + vec(b"", 2),
        leaf_index_extension(1)[:-1],
        leaf_index_extension(1) + b"\x05",  # a lone extension_type with no data length
    ],
)
def test_parse_leaf_index_rejects(extensions: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_leaf_index(extensions)


@settings(max_examples=150, deadline=None)
@given(
    index=st.integers(0, 2**40 - 1),
    others=st.dictionaries(st.integers(1, 255), st.binary(max_size=10), max_size=4),
    data=st.data(),
)
def test_parse_leaf_index_among_other_extensions(
    index: int, others: dict[int, bytes], data: st.DataObject
) -> None:
    exts = [leaf_index_extension(index)] + [u(t, 1) + vec(v, 2) for t, v in others.items()]
    assert parse_leaf_index(b"".join(data.draw(st.permutations(exts)))) == index


# --- fuzz: only DecodeError, never a crash --------------------------------------------------

SMALL_TILE = _tile(2, [X509, PRECERT, X509])


def _tile_decodes_or_decode_error(data: bytes, tile_index: int, width: int) -> None:
    """Anything but success or DecodeError (IndexError, struct.error, ...) fails the test."""
    with contextlib.suppress(DecodeError):
        decode_data_tile(data, tile_index, width)


def _leaf_index_decodes_or_decode_error(extensions: bytes) -> None:
    with contextlib.suppress(DecodeError):
        parse_leaf_index(extensions)


def test_every_truncation_of_a_tile_is_a_decode_error() -> None:
    for n in range(len(SMALL_TILE)):
        with pytest.raises(DecodeError):
            decode_data_tile(SMALL_TILE[:n], 2, 3)


def test_every_truncation_of_leaf_index_is_a_decode_error() -> None:
    ext = u(3, 1) + vec(b"abc", 2) + leaf_index_extension(77)
    for n in range(len(ext)):
        with pytest.raises(DecodeError):
            parse_leaf_index(ext[:n])


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=300),
    tile_index=st.integers(0, 2**32),
    width=st.integers(1, TILE_WIDTH),
)
def test_random_tile_bytes_never_crash(data: bytes, tile_index: int, width: int) -> None:
    _tile_decodes_or_decode_error(data, tile_index, width)


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, len(SMALL_TILE) - 1), value=st.integers(0, 255))
def test_single_byte_mutations_of_a_tile_never_crash(pos: int, value: int) -> None:
    mutated = SMALL_TILE[:pos] + bytes([value]) + SMALL_TILE[pos + 1 :]
    _tile_decodes_or_decode_error(mutated, 2, 3)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=60))
def test_random_extensions_never_crash(data: bytes) -> None:
    _leaf_index_decodes_or_decode_error(data)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), value=st.integers(0, 255))
def test_single_byte_mutations_of_extensions_never_crash(data: st.DataObject, value: int) -> None:
    ext = u(3, 1) + vec(b"abc", 2) + leaf_index_extension(77)
    pos = data.draw(st.integers(0, len(ext) - 1))
    _leaf_index_decodes_or_decode_error(ext[:pos] + bytes([value]) + ext[pos + 1 :])

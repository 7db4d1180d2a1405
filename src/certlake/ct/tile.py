"""static-ct-api data tiles: tile paths, TileLeaf decode/encode and the `leaf_index` extension.

Layouts: C2SP static-ct-api (tile paths, the TileLeaf entry). Pure: bytes in, values out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from certlake.ct.entry import EntryType, LogEntry
from certlake.ct.leaf import encode_timestamped_entry, read_timestamped_entry
from certlake.ct.merkle import TILE_WIDTH as TILE_WIDTH  # re-exported: tiles are where readers look
from certlake.ct.tls import DecodeError, Reader, u, vec

_LEAF_INDEX_EXT = 0


def tile_index_path(n: int) -> str:
    """Encode a tile index: groups of three digits, every group but the last prefixed `x`."""
    if n < 0:
        raise ValueError(f"negative tile index {n}")
    groups = []
    while True:
        groups.append(f"{n % 1000:03d}")
        n //= 1000
        if n == 0:
            break
    groups.reverse()
    return "/".join(["x" + g for g in groups[:-1]] + [groups[-1]])


def tile_path(n: int, width: int = TILE_WIDTH) -> str:
    """`<N>` or `<N>.p/<W>` for a tile of the given width (256 = full)."""
    if not 1 <= width <= TILE_WIDTH:
        raise ValueError(f"tile width {width} outside 1..256")
    path = tile_index_path(n)
    return path if width == TILE_WIDTH else f"{path}.p/{width}"


def data_tile_path(n: int, width: int = TILE_WIDTH) -> str:
    return "tile/data/" + tile_path(n, width)


def hash_tile_path(level: int, n: int, width: int = TILE_WIDTH) -> str:
    return f"tile/{level}/" + tile_path(n, width)


def parse_tile_path(path: str) -> tuple[int, int]:
    """Inverse of `tile_path`: `x001/234.p/17` → (1234, 17). Raises ValueError when malformed."""
    if not path.isascii():
        # str.isdigit() and int() accept non-ASCII digits such as "٠٠٥"; a path has only ASCII.
        raise ValueError(f"non-ASCII tile path {path!r}")
    width = TILE_WIDTH
    if ".p/" in path:
        path, _, w = path.partition(".p/")
        if not w.isdigit() or w.startswith("0") or not 1 <= int(w) < TILE_WIDTH:
            raise ValueError(f"bad partial width {w!r}")
        width = int(w)
    parts = path.split("/")
    if not parts or any(len(p) != (4 if i < len(parts) - 1 else 3) for i, p in enumerate(parts)):
        raise ValueError(f"bad tile path {path!r}")
    n = 0
    for i, p in enumerate(parts):
        digits = p[1:] if i < len(parts) - 1 else p
        if (i < len(parts) - 1 and p[0] != "x") or not digits.isdigit():
            raise ValueError(f"bad tile path {path!r}")
        n = n * 1000 + int(digits)
    if len(parts) > 1 and parts[0] == "x000":
        raise ValueError(f"non-canonical tile path {path!r}")
    return n, width


def tiles_for_range(start: int, end_exclusive: int, tree_size: int) -> list[tuple[int, int]]:
    """The (tile index, width) pairs to read for indices [start, end_exclusive) of a tree.

    The last tile is partial when the tree ends inside it; widths never exceed the tree.
    """
    if not 0 <= start <= end_exclusive <= tree_size:
        raise ValueError(f"range [{start}, {end_exclusive}) outside tree of size {tree_size}")
    if start == end_exclusive:
        # Otherwise an empty range inside a tile would still name that tile.
        return []
    out = []
    t = start // TILE_WIDTH
    while t * TILE_WIDTH < end_exclusive:
        out.append((t, min(TILE_WIDTH, tree_size - t * TILE_WIDTH)))
        t += 1
    return out


def leaf_index_extension(index: int) -> bytes:
    """CtExtensions holding only `leaf_index` (type 0, 5-byte big-endian)."""
    return u(_LEAF_INDEX_EXT, 1) + vec(u(index, 5), 2)


def parse_leaf_index(extensions: bytes) -> int:
    """Find the `leaf_index` extension; its absence or a duplicate is a DecodeError."""
    r = Reader(extensions, "extensions")
    found: int | None = None
    seen: set[int] = set()
    while r.remaining():
        ext_type = r.uint(1, "extension_type")
        data = r.opaque(2, "extension_data")
        if ext_type in seen:
            raise DecodeError(f"duplicate extension type {ext_type}")
        seen.add(ext_type)
        if ext_type == _LEAF_INDEX_EXT:
            if len(data) != 5:
                raise DecodeError(f"leaf_index extension of {len(data)} bytes, expected 5")
            found = int.from_bytes(data, "big")
    if found is None:
        raise DecodeError("no leaf_index extension")
    return found


@dataclass(frozen=True, slots=True)
class TileLeaf:
    """One static-ct data tile entry before its chain fingerprints are resolved to certificates."""

    index: int
    timestamp_ms: int
    entry_type: EntryType
    cert_der: bytes  # the certificate, or the full pre_certificate for a precert
    tbs: bytes | None
    issuer_key_hash: bytes | None
    chain_fingerprints: tuple[bytes, ...]
    leaf_input: bytes  # 00 00 ‖ TimestampedEntry: the bytes the log's leaf hash covers

    def to_entry(self, chain: tuple[bytes, ...]) -> LogEntry:
        return LogEntry(
            index=self.index,
            timestamp_ms=self.timestamp_ms,
            entry_type=self.entry_type,
            cert_der=self.cert_der,
            chain=chain,
            tbs=self.tbs,
            issuer_key_hash=self.issuer_key_hash,
            leaf_input=self.leaf_input,
        )


@dataclass(frozen=True, slots=True)
class BadTileLeaf:
    """A data tile entry whose framing held but whose content does not decode (a wrong
    `leaf_index`, an empty pre_certificate, a chain that is not whole fingerprints). The next
    entry's position is still known, so it costs only itself."""

    index: int
    error: str


def encode_tile_leaf(
    index: int,
    timestamp_ms: int,
    entry_type: EntryType,
    cert_der: bytes,
    chain_fingerprints: Sequence[bytes],
    tbs: bytes | None = None,
    issuer_key_hash: bytes | None = None,
) -> bytes:
    """Encode a TileLeaf; for a precert, `cert_der` is the pre_certificate, `tbs` the logged TBS."""
    ext = leaf_index_extension(index)
    fps = b"".join(chain_fingerprints)
    if any(len(f) != 32 for f in chain_fingerprints):
        raise ValueError("chain fingerprints must be 32-byte SHA-256 digests")
    if entry_type is EntryType.PRECERT:
        if tbs is None:
            raise ValueError("a precert tile leaf needs its tbs")
        te = encode_timestamped_entry(timestamp_ms, entry_type, tbs, issuer_key_hash, ext)
        return te + vec(cert_der, 3) + vec(fps, 2)
    te = encode_timestamped_entry(timestamp_ms, entry_type, cert_der, None, ext)
    return te + vec(fps, 2)


def decode_data_tile(data: bytes, tile_index: int, width: int) -> list[TileLeaf]:
    """Decode a data tile holding exactly `width` entries, checking each `leaf_index`; any
    problem is a DecodeError for the tile as a whole."""
    leaves, error = decode_data_tile_prefix(data, tile_index, width)
    if error is not None:
        raise error
    bad = next((leaf for leaf in leaves if isinstance(leaf, BadTileLeaf)), None)
    if bad is not None:
        raise DecodeError(bad.error)
    return [leaf for leaf in leaves if isinstance(leaf, TileLeaf)]


def decode_data_tile_prefix(
    data: bytes, tile_index: int, width: int
) -> tuple[list[TileLeaf | BadTileLeaf], DecodeError | None]:
    """The entries up to the first framing problem — each decoded, or a `BadTileLeaf` when only
    its content is wrong — and that problem (None if the tile is whole).

    Entries have no framing of their own: after a truncated entry or an unknown entry type the
    positions of the next ones cannot be trusted. Readers use the prefix only when a tile stays
    broken after retries, so that one bad entry costs the entries after it in that tile, not
    the whole log's progress.
    """
    if not 1 <= width <= TILE_WIDTH:
        raise ValueError(f"tile width {width} outside 1..256")
    r = Reader(data, f"data tile {tile_index}")
    leaves: list[TileLeaf | BadTileLeaf] = []
    base = tile_index * TILE_WIDTH
    try:
        while r.remaining():
            if len(leaves) == width:
                raise DecodeError(f"data tile {tile_index}: more than {width} entries")
            leaves.append(_read_tile_leaf(r, base + len(leaves)))
        if len(leaves) != width:
            raise DecodeError(f"data tile {tile_index}: {len(leaves)} entries, expected {width}")
    except DecodeError as e:
        return leaves, e
    return leaves, None


def _read_tile_leaf(r: Reader, index: int) -> TileLeaf | BadTileLeaf:
    """The entry at `r`, `r` left after it. Framing problems raise; content problems, found
    once the entry's extent is known, give a BadTileLeaf."""
    start = r.pos
    ts = read_timestamped_entry(r)
    leaf_input = b"\x00\x00" + r.slice_since(start)
    if ts.entry_type is EntryType.PRECERT:
        cert_der = r.opaque(3, "pre_certificate")
        tbs: bytes | None = ts.cert_or_tbs
    else:
        cert_der, tbs = ts.cert_or_tbs, None
    fps = r.opaque(2, "certificate_chain")
    try:
        if not cert_der:
            raise DecodeError(f"tile entry {index}: empty pre_certificate")
        if len(fps) % 32:
            raise DecodeError(f"tile entry {index}: chain length {len(fps)} not a multiple of 32")
        claimed = parse_leaf_index(ts.extensions)
        if claimed != index:
            raise DecodeError(f"tile entry at position {index} claims leaf_index {claimed}")
    except DecodeError as e:
        return BadTileLeaf(index, str(e))
    return TileLeaf(
        index=index,
        timestamp_ms=ts.timestamp_ms,
        entry_type=ts.entry_type,
        cert_der=cert_der,
        tbs=tbs,
        issuer_key_hash=ts.issuer_key_hash,
        chain_fingerprints=tuple(fps[i : i + 32] for i in range(0, len(fps), 32)),
        leaf_input=leaf_input,
    )

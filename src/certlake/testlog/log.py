"""The in-memory model of one test CT log: entries, Merkle tree, published tree head, encodings.

Everything here is synchronous and does no I/O; the aiohttp server is a thin shell around it.

Entries are stored as a reference to a shared `LoggedCert` plus a timestamp, not as encoded bytes:
a 100k-entry log would otherwise hold ~0.5 GB of base64. Per certificate, the parts that do not
depend on the position in the log (`extra_data` in base64, the chain fingerprints) are encoded
once; per entry only the small MerkleTreeLeaf / TileLeaf is encoded on demand. Full data tiles,
which never change once complete, are kept gzip-compressed in a bounded LRU cache.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pybase64

from certlake.ct.entry import EntryType, LogKind
from certlake.ct.leaf import encode_extra_data_precert, encode_extra_data_x509, encode_leaf_input
from certlake.ct.merkle import TILE_HEIGHT, MerkleTree, leaf_hash, root_with_leaf
from certlake.ct.sth import SignedTreeHead
from certlake.ct.tile import TILE_WIDTH, encode_tile_leaf, leaf_index_extension
from certlake.testlog.faults import CorruptMode
from certlake.testlog.signer import LogSigner

# The fingerprint a `corrupt:mode=issuer` entry names: no issuer of the test log has it.
_UNKNOWN_ISSUER = b"\xee" * 32

# One server's data-tile cache, divided among its static logs: enough for the tiles a client
# reads while tailing the logs or backfilling a window, small enough not to matter on a laptop
# (a full tile is ~0.3-0.6 MB compressed).
DATA_TILE_CACHE_BYTES = 64 * 1024 * 1024
# Sunlight compresses fast rather than small; so do we, it keeps the server off the CPU.
GZIP_LEVEL = 1
# Hash tiles exist up to level 5 in static-ct-api.
MAX_TILE_LEVEL = 5


class RequestError(ValueError):
    """A read request that the log must refuse with 400 (bad parameters, beyond the tree)."""


class TileNotFound(LookupError):
    """A tile that does not exist at the published tree size (404)."""


@dataclass(frozen=True, slots=True)
class LoggedCert:
    """A certificate or precertificate as submitted, with its position-independent encodings.

    `cert_der` is the leaf certificate, or for a precert the full pre-certificate (poison and
    signature included); `tbs` is the precert's TBSCertificate with the poison removed, and
    `issuer_key_hash` the SHA-256 of its issuer's SubjectPublicKeyInfo. `chain` is issuer first.
    """

    entry_type: EntryType
    cert_der: bytes
    chain: tuple[bytes, ...]
    tbs: bytes | None = None
    issuer_key_hash: bytes | None = None
    extra_data_b64: bytes = field(default=b"", repr=False)
    chain_fingerprints: tuple[bytes, ...] = field(default=(), repr=False)

    @classmethod
    def create(
        cls,
        entry_type: EntryType,
        cert_der: bytes,
        chain: Sequence[bytes],
        tbs: bytes | None = None,
        issuer_key_hash: bytes | None = None,
    ) -> LoggedCert:
        if entry_type is EntryType.PRECERT:
            if tbs is None or issuer_key_hash is None:
                raise ValueError("a precert needs its logged TBS and issuer_key_hash")
            extra = encode_extra_data_precert(cert_der, chain)
        else:
            extra = encode_extra_data_x509(chain)
        return cls(
            entry_type=entry_type,
            cert_der=cert_der,
            chain=tuple(chain),
            tbs=tbs,
            issuer_key_hash=issuer_key_hash,
            extra_data_b64=base64.b64encode(extra),
            chain_fingerprints=tuple(hashlib.sha256(c).digest() for c in chain),
        )

    @property
    def signed_body(self) -> bytes:
        """What the TimestampedEntry carries: the certificate, or the precert's TBS."""
        return self.tbs if self.entry_type is EntryType.PRECERT and self.tbs else self.cert_der

    def garbled(self) -> LoggedCert:
        """The same entry with its certificate bytes replaced by same-length garbage.

        The framing stays valid, so the entry decodes but its certificate does not parse (0xFF is
        not a DER SEQUENCE tag).
        """
        junk_tbs = b"\xff" * len(self.tbs) if self.tbs is not None else None
        return LoggedCert.create(
            self.entry_type,
            b"\xff" * len(self.cert_der),
            self.chain,
            junk_tbs,
            self.issuer_key_hash,
        )


@dataclass(frozen=True, slots=True)
class TreeHead:
    """A published tree head: what get-sth and the checkpoint show."""

    sth: SignedTreeHead
    checkpoint: bytes  # empty for RFC 6962 logs


def get_entries_range(start: int, end: int, tree_size: int, cap: int, align: bool) -> range:
    """The indices a get-entries?start=&end= answers, as real RFC 6962 logs compute them.

    `end` is inclusive and clamped to the tree; at most `cap` entries. With `align` (Google's
    logs with a cap of 32, Sectigo's with 256) an answer that would cross a multiple of `cap`
    ends just before it, so answers are whole aligned blocks a cache can keep: asked for 0–255
    a log answers 0–31, asked for 30–255 it answers 30–31.
    """
    if start < 0 or end < 0:
        raise RequestError(f"negative range start={start} end={end}")
    if start > end:
        raise RequestError(f"start {start} > end {end}")
    if start >= tree_size:
        raise RequestError(f"need tree size > {start} to get leaves, have {tree_size}")
    end = min(end, tree_size - 1, start + cap - 1)
    if align:
        end = min(end, (start // cap + 1) * cap - 1)
    return range(start, end + 1)


def lied_leaf_hash(honest: bytes) -> bytes:
    """What a lying tree head puts in place of the leaf hash `honest` (`lie` fault)."""
    return hashlib.sha256(b"certlake lie" + honest).digest()


def tile_width(published_size: int, level: int, n: int) -> int:
    """Width of tile `level`/`n` at a tree size: 256 when full, 0 when it does not exist."""
    on_level = published_size >> (level * TILE_HEIGHT)
    return max(0, min(TILE_WIDTH, on_level - n * TILE_WIDTH))


class TestLog:
    """One log: RFC 6962 (`get-entries` JSON) or static-ct-api (tiles), never both.

    `append` grows the tree immediately; `publish` signs the current size, and only the published
    size is visible to readers, like the sequencing of a real log.
    """

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(
        self,
        name: str,
        kind: LogKind,
        signer: LogSigner,
        origin: str = "",
        tile_cache_bytes: int = DATA_TILE_CACHE_BYTES,
    ) -> None:
        if kind is LogKind.STATIC and not origin:
            raise ValueError(f"static log {name!r} needs a checkpoint origin")
        self.name = name
        self.kind = kind
        self.signer = signer
        self.origin = origin
        self.tree = MerkleTree()
        self._certs: list[LoggedCert] = []
        self._timestamps = array("Q")
        self._by_hash: dict[bytes, int] = {}
        self.issuers: dict[str, bytes] = {}  # lowercase hex SHA-256 → DER
        self.roots: dict[bytes, None] = {}  # ordered set of root DERs (get-roots)
        self.head: TreeHead | None = None
        # The last lying head, so that a lie is served byte for byte the same each time, as
        # the honest head is: (leaf index, head).
        self._lie: tuple[int, TreeHead] | None = None
        self._tile_cache: OrderedDict[int, bytes] = OrderedDict()
        self._tile_cache_bytes = 0
        self._tile_cache_limit = tile_cache_bytes

    @property
    def size(self) -> int:
        return self.tree.size

    @property
    def published_size(self) -> int:
        return self.head.sth.tree_size if self.head else 0

    @property
    def last_timestamp(self) -> int:
        return self._timestamps[-1] if self._timestamps else 0

    def cert_at(self, index: int) -> LoggedCert:
        """What was logged at `index` (for tests that check what readers made of it)."""
        return self._certs[index]

    def _extensions(self, index: int) -> bytes:
        # Static logs put their leaf_index in the (hashed) SCT extensions; RFC 6962 logs none.
        return leaf_index_extension(index) if self.kind is LogKind.STATIC else b""

    def append(self, cert: LoggedCert, timestamp_ms: int) -> int:
        index = self.size
        lh = leaf_hash(self._leaf_input(cert, index, timestamp_ms))
        self.tree.append(lh)
        self._by_hash.setdefault(lh, index)
        self._certs.append(cert)
        self._timestamps.append(timestamp_ms)
        for der, fp in zip(cert.chain, cert.chain_fingerprints, strict=True):
            self.issuers.setdefault(fp.hex(), der)
        if cert.chain:
            self.roots.setdefault(cert.chain[-1])
        return index

    def publish(self, timestamp_ms: int) -> TreeHead:
        """Sign the current size (a no-op when it is already published)."""
        if self.head is not None and self.head.sth.tree_size == self.size:
            return self.head
        self.head = self._signed(self.size, timestamp_ms, self.tree.root())
        return self.head

    def lying_head(self, index: int) -> TreeHead:
        """The published head with another root: that of its tree with leaf `index`'s hash
        replaced by `lied_leaf_hash` of it. Same size and timestamp, signed with the log's key
        as the honest head is; the entries, tiles and proofs the log serves stay honest."""
        if self.head is None:
            raise RequestError("no tree head published yet")
        size, timestamp_ms = self.head.sth.tree_size, self.head.sth.timestamp_ms
        if self._lie is not None:
            lied_index, lie = self._lie
            if lied_index == index and lie.sth.tree_size == size:
                return lie
        root = root_with_leaf(
            index,
            size,
            lied_leaf_hash(self.tree.leaf_hash_at(index)),
            self.tree.inclusion_proof(index, size),
        )
        lie = self._signed(size, timestamp_ms, root)
        self._lie = (index, lie)
        return lie

    def _signed(self, size: int, timestamp_ms: int, root: bytes) -> TreeHead:
        sth = self.signer.sign_sth(size, timestamp_ms, root)
        checkpoint = b""
        if self.kind is LogKind.STATIC:
            checkpoint = self.signer.checkpoint(self.origin, size, timestamp_ms, root)
        return TreeHead(sth, checkpoint)

    # --- RFC 6962 ---------------------------------------------------------------------------

    def _leaf_input(self, cert: LoggedCert, index: int, timestamp_ms: int) -> bytes:
        return encode_leaf_input(
            timestamp_ms,
            cert.entry_type,
            cert.signed_body,
            cert.issuer_key_hash,
            self._extensions(index),
        )

    def _served_timestamp(self, index: int, mode: CorruptMode | None) -> int:
        """The timestamp an entry is served with: a tampered one's differs from its tree's."""
        ts = self._timestamps[index]
        return ts + 1 if mode is CorruptMode.TAMPER else ts

    def _served(self, index: int, corrupt: Mapping[int, CorruptMode]) -> tuple[bytes, bytes]:
        """(leaf_input, extra_data in base64) of an entry as served, corruption applied."""
        cert = self._certs[index]
        mode = corrupt.get(index)
        if mode is CorruptMode.DER:
            cert = cert.garbled()
        leaf = self._leaf_input(cert, index, self._served_timestamp(index, mode))
        if mode is CorruptMode.FRAMING:
            leaf = leaf[: len(leaf) // 2]
        return leaf, cert.extra_data_b64

    def entry_fragments(
        self, indices: range, corrupt: Mapping[int, CorruptMode] = {}
    ) -> Iterable[bytes]:
        """One `{"leaf_input":…,"extra_data":…}` JSON object per index, as bytes."""
        for i in indices:
            leaf, extra = self._served(i, corrupt)
            mode = corrupt.get(i)
            if mode is CorruptMode.BASE64:
                yield b'{"leaf_input":"not base64!","extra_data":"%s"}' % extra
            elif mode is CorruptMode.NULL:
                yield b'{"leaf_input":null,"extra_data":"%s"}' % extra
            elif mode is CorruptMode.NO_EXTRA:
                yield b'{"leaf_input":"%s"}' % pybase64.b64encode(leaf)
            else:
                # pybase64: the test log shares the machine with the client it serves, so its
                # per-request encoding is kept as cheap as a real log's would be to that client.
                yield b'{"leaf_input":"%s","extra_data":"%s"}' % (pybase64.b64encode(leaf), extra)

    def get_entries_body(self, indices: range, corrupt: Mapping[int, CorruptMode] = {}) -> bytes:
        return b'{"entries":[' + b",".join(self.entry_fragments(indices, corrupt)) + b"]}"

    def entry_and_proof(
        self, index: int, tree_size: int, corrupt: Mapping[int, CorruptMode] = {}
    ) -> dict[str, object]:
        self._check_proof_size(tree_size)
        if not 0 <= index < tree_size:
            raise RequestError(f"leaf_index {index} outside tree of size {tree_size}")
        leaf, extra = self._served(index, corrupt)
        return {
            "leaf_input": base64.b64encode(leaf).decode(),
            "extra_data": extra.decode(),
            "audit_path": _b64_list(self.tree.inclusion_proof(index, tree_size)),
        }

    def proof_by_hash(self, hash_: bytes, tree_size: int) -> dict[str, object]:
        self._check_proof_size(tree_size)
        index = self._by_hash.get(hash_)
        if index is None or index >= tree_size:
            raise RequestError(f"no leaf with hash {hash_.hex()} in tree of size {tree_size}")
        return {
            "leaf_index": index,
            "audit_path": _b64_list(self.tree.inclusion_proof(index, tree_size)),
        }

    def consistency(self, first: int, second: int) -> dict[str, object]:
        self._check_proof_size(second)
        if not 0 < first <= second:
            raise RequestError(f"no consistency proof from {first} to {second}")
        return {"consistency": _b64_list(self.tree.consistency_proof(first, second))}

    def _check_proof_size(self, tree_size: int) -> None:
        if not 1 <= tree_size <= self.published_size:
            raise RequestError(
                f"tree_size {tree_size} outside 1..{self.published_size} (the published size)"
            )

    # --- static-ct-api ------------------------------------------------------------------------

    def _check_tile(self, level: int, n: int, width: int) -> None:
        available = tile_width(self.published_size, level, n)
        if not 0 <= level <= MAX_TILE_LEVEL or width > available:
            raise TileNotFound(f"tile {level}/{n} width {width}: not at size {self.published_size}")

    def hash_tile(self, level: int, n: int, width: int) -> bytes:
        self._check_tile(level, n, width)
        return self.tree.hash_tile(level, n, width)

    def _tile_leaf(self, index: int, corrupt: Mapping[int, CorruptMode]) -> bytes:
        cert = self._certs[index]
        mode = corrupt.get(index)
        if mode is CorruptMode.DER:
            cert = cert.garbled()
        data = encode_tile_leaf(
            index + 1 if mode is CorruptMode.LEAF_INDEX else index,
            self._served_timestamp(index, mode),
            cert.entry_type,
            cert.cert_der,
            (_UNKNOWN_ISSUER,) if mode is CorruptMode.ISSUER else cert.chain_fingerprints,
            cert.tbs,
            cert.issuer_key_hash,
        )
        return data[: len(data) // 2] if mode is CorruptMode.FRAMING else data

    def data_tile_gz(self, n: int, width: int, corrupt: Mapping[int, CorruptMode] = {}) -> bytes:
        """Data tile `n` of `width` entries, gzip-compressed (how Sunlight stores and serves it)."""
        self._check_tile(0, n, width)
        start = n * TILE_WIDTH
        indices = range(start, start + width)
        tainted = any(i in corrupt for i in indices)
        cacheable = width == TILE_WIDTH and not tainted
        if cacheable and (hit := self._tile_cache.get(n)) is not None:
            self._tile_cache.move_to_end(n)
            return hit
        body = gzip.compress(
            b"".join(self._tile_leaf(i, corrupt) for i in indices), GZIP_LEVEL, mtime=0
        )
        if cacheable:
            self._tile_cache[n] = body
            self._tile_cache_bytes += len(body)
            while self._tile_cache_bytes > self._tile_cache_limit:
                _, old = self._tile_cache.popitem(last=False)
                self._tile_cache_bytes -= len(old)
        return body


def _b64_list(hashes: Sequence[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]

"""RFC 6962 entries: MerkleTreeLeaf (`leaf_input`) and `extra_data`, decode and encode.

Layouts: RFC 6962's MerkleTreeLeaf and the `extra_data` of `get-entries` (`certificate_chain`
or PrecertChainEntry). The encoders exist for the built-in test log and for round-trip tests; the
decoders are what every reader uses.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence

import pybase64

from certlake.ct.entry import EntryType, LogEntry
from certlake.ct.merkle import leaf_hash
from certlake.ct.tls import DecodeError, Reader, u, vec


def encode_timestamped_entry(
    timestamp_ms: int,
    entry_type: EntryType,
    cert_or_tbs: bytes,
    issuer_key_hash: bytes | None = None,
    extensions: bytes = b"",
) -> bytes:
    """TimestampedEntry: the signed part shared by RFC 6962 leaves and static-ct TileLeafs.

    For a precert, `cert_or_tbs` is the TBSCertificate with the poison extension removed.
    """
    if entry_type is EntryType.PRECERT:
        if issuer_key_hash is None or len(issuer_key_hash) != 32:
            raise ValueError("a precert entry needs a 32-byte issuer_key_hash")
        signed = issuer_key_hash + vec(cert_or_tbs, 3)
    else:
        signed = vec(cert_or_tbs, 3)
    return u(timestamp_ms, 8) + u(entry_type, 2) + signed + vec(extensions, 2)


def encode_leaf_input(
    timestamp_ms: int,
    entry_type: EntryType,
    cert_or_tbs: bytes,
    issuer_key_hash: bytes | None = None,
    extensions: bytes = b"",
) -> bytes:
    """MerkleTreeLeaf: version v1, leaf_type timestamped_entry, then the TimestampedEntry."""
    return b"\x00\x00" + encode_timestamped_entry(
        timestamp_ms, entry_type, cert_or_tbs, issuer_key_hash, extensions
    )


def _cert_list(chain: Sequence[bytes]) -> bytes:
    return vec(b"".join(vec(c, 3) for c in chain), 3)


def encode_extra_data_x509(chain: Sequence[bytes]) -> bytes:
    return _cert_list(chain)


def encode_extra_data_precert(precert_der: bytes, chain: Sequence[bytes]) -> bytes:
    return vec(precert_der, 3) + _cert_list(chain)


class TimestampedEntry:
    """The decoded fields of a TimestampedEntry (shared with static-ct tiles)."""

    __slots__ = ("cert_or_tbs", "entry_type", "extensions", "issuer_key_hash", "timestamp_ms")

    def __init__(
        self,
        timestamp_ms: int,
        entry_type: EntryType,
        cert_or_tbs: bytes,
        issuer_key_hash: bytes | None,
        extensions: bytes,
    ) -> None:
        self.timestamp_ms = timestamp_ms
        self.entry_type = entry_type
        self.cert_or_tbs = cert_or_tbs
        self.issuer_key_hash = issuer_key_hash
        self.extensions = extensions


def read_timestamped_entry(r: Reader) -> TimestampedEntry:
    timestamp_ms = r.uint(8, "timestamp")
    raw_type = r.uint(2, "entry_type")
    try:
        entry_type = EntryType(raw_type)
    except ValueError:
        raise DecodeError(f"unknown entry_type {raw_type}") from None
    issuer_key_hash = None
    if entry_type is EntryType.PRECERT:
        issuer_key_hash = r.fixed(32, "issuer_key_hash")
    body = r.opaque(3, "tbs_certificate" if issuer_key_hash else "certificate")
    if not body:
        raise DecodeError("empty certificate in entry")
    extensions = r.opaque(2, "extensions")
    return TimestampedEntry(timestamp_ms, entry_type, body, issuer_key_hash, extensions)


def _read_cert_list(r: Reader, field: str) -> tuple[bytes, ...]:
    inner = Reader(r.opaque(3, field), field)
    certs = []
    while inner.remaining():
        cert = inner.opaque(3, f"{field} certificate")
        if not cert:
            raise DecodeError(f"empty certificate in {field}")
        certs.append(cert)
    return tuple(certs)


def decode_rfc6962_entry(index: int, leaf_input: bytes, extra_data: bytes) -> LogEntry:
    """Decode one `get-entries` element into a LogEntry (precert fields from the pre-certificate).

    Raises DecodeError for anything malformed: wrong version or leaf type, unknown entry type,
    truncation, trailing bytes.
    """
    r = Reader(leaf_input, f"leaf_input[{index}]")
    version = r.uint(1, "version")
    leaf_type = r.uint(1, "leaf_type")
    if version != 0 or leaf_type != 0:
        raise DecodeError(
            f"leaf_input[{index}]: unsupported version {version} / leaf_type {leaf_type}"
        )
    ts = read_timestamped_entry(r)
    r.expect_end()

    x = Reader(extra_data, f"extra_data[{index}]")
    if ts.entry_type is EntryType.PRECERT:
        precert = x.opaque(3, "pre_certificate")
        if not precert:
            raise DecodeError(f"extra_data[{index}]: empty pre_certificate")
        chain = _read_cert_list(x, "precertificate_chain")
        x.expect_end()
        return LogEntry(
            index=index,
            timestamp_ms=ts.timestamp_ms,
            entry_type=ts.entry_type,
            cert_der=precert,
            chain=chain,
            tbs=ts.cert_or_tbs,
            issuer_key_hash=ts.issuer_key_hash,
            leaf_input=leaf_input,
        )
    chain = _read_cert_list(x, "certificate_chain")
    x.expect_end()
    return LogEntry(
        index=index,
        timestamp_ms=ts.timestamp_ms,
        entry_type=ts.entry_type,
        cert_der=ts.cert_or_tbs,
        chain=chain,
        leaf_input=leaf_input,
    )


def _base64_field(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        what = "missing" if value is None else f"a JSON {type(value).__name__}, not a string"
        raise DecodeError(f"{name}: {what}")
    try:
        # pybase64 (SIMD) decodes a typical entry's 6 KB in ~1 µs where binascii takes ~19 µs:
        # a tenth of backfill's CPU per entry. It is as strict: no whitespace, nothing after the
        # padding (binascii's strict mode still lets excess padding through).
        return pybase64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DecodeError(f"{name}: not base64 ({e})") from None


def served_leaf_hash_of(leaf_input: object) -> bytes | None:
    """The leaf hash of a get-entries element's `leaf_input` member as served, when it is base64
    at all (what the log's tree covers, even when the bytes do not decode as a leaf)."""
    try:
        return leaf_hash(_base64_field(leaf_input, "leaf_input"))
    except DecodeError:
        return None


def decode_get_entries_element(index: int, leaf_input: object, extra_data: object) -> LogEntry:
    """Decode one element of a `get-entries` answer as served: its `leaf_input` and `extra_data`
    members (base64 text, or whatever a broken log put there; None when missing).

    Raises DecodeError naming the member, so that one bad element is reported as itself while
    the rest of its answer flows on.
    """
    return decode_rfc6962_entry(
        index,
        _base64_field(leaf_input, f"leaf_input[{index}]"),
        _base64_field(extra_data, f"extra_data[{index}]"),
    )

"""A minimal DER reader: just enough ASN.1 to split an X.509 certificate into its raw parts.

Why this exists instead of `cryptography`'s object API: that API builds a Python object for every
extension, name attribute and general name, and a message builder on top of it costs ~150 µs per
certificate (measured per call on one core), which caps a core at ~6 k entries/s.
Reading the TLVs directly lets the caller format only what the certstream message needs and cache
the formatted text by the raw bytes of the parts that repeat across one CA's certificates (issuer
name, AIA, policies, key usage, ...). It reads structure only: no signature or semantic checks.

Every function takes the buffer plus explicit bounds and raises `CertificateParseError` (with the
byte offset) for anything malformed, so bad input can never escape as IndexError or the like.
"""

from __future__ import annotations

import re
from datetime import date

from certlake.certs.errors import CertificateParseError

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
BOOLEAN = 0x01
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_ZONE = rb"(Z|[+-]\d{4})"
_UTC_TIME = re.compile(rb"(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)?" + _ZONE)
_GENERALIZED_TIME = re.compile(rb"(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(?:\.\d+)?" + _ZONE)


def header(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Read the TLV header at `pos`: (tag, content start, content end), all within `end`."""
    if pos + 2 > end:
        raise CertificateParseError("truncated element", pos)
    tag = buf[pos]
    length = buf[pos + 1]
    start = pos + 2
    if tag & 0x1F == 0x1F:
        raise CertificateParseError("high-tag-number form is not used in certificates", pos)
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4:
            raise CertificateParseError("unsupported length encoding", pos)
        if start + count > end:
            raise CertificateParseError("truncated length", pos)
        length = int.from_bytes(buf[start : start + count], "big")
        start += count
    stop = start + length
    if stop > end:
        raise CertificateParseError("element overruns its container", pos)
    return tag, start, stop


def expect(buf: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    """Read the element at `pos`, which must carry `tag`: (content start, content end)."""
    if pos + 2 <= end and buf[pos] == tag:  # fast path: a short-form length
        length = buf[pos + 1]
        stop = pos + 2 + length
        if length < 0x80 and stop <= end:
            return pos + 2, stop
    got, start, stop = header(buf, pos, end)
    if got != tag:
        raise CertificateParseError(f"{what}: expected tag 0x{tag:02x}, got 0x{got:02x}", pos)
    return start, stop


def encode_oid(dotted: str) -> bytes:
    """Content bytes of an OBJECT IDENTIFIER (for building lookup constants)."""
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for value in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [value & 0x7F]
        value >>= 7
        while value:
            chunk.append(0x80 | (value & 0x7F))
            value >>= 7
        out.extend(reversed(chunk))
    return bytes(out)


def oid_text(content: bytes, pos: int = 0) -> str:
    """Dotted form of OBJECT IDENTIFIER content bytes (the first arc split like Go's asn1)."""
    if not content or content[-1] & 0x80:
        raise CertificateParseError("malformed object identifier", pos)
    arcs: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [first // 40, first % 40] if first < 80 else [2, first - 80]
    return ".".join(map(str, head + arcs[1:]))


def time_seconds(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Read a UTCTime or GeneralizedTime at `pos`: (Unix seconds, position after it).

    Accepts what Go's asn1 accepts (UTCTime with or without seconds, a `Z` or `±hhmm` zone,
    fractional GeneralizedTime seconds) so certificates Go reads are read here too; seconds are
    truncated like Go's `Time.Unix()`.
    """
    tag, start, stop = header(buf, pos, end)
    text = buf[start:stop]
    if tag == UTC_TIME:
        match = _UTC_TIME.fullmatch(text)
    elif tag == GENERALIZED_TIME:
        match = _GENERALIZED_TIME.fullmatch(text)
    else:
        raise CertificateParseError(f"expected a time, got tag 0x{tag:02x}", pos)
    if match is None:
        raise CertificateParseError(f"malformed time {text!r}", pos)
    year, month, day, hour, minute, second, zone = match.groups()
    full_year = int(year)
    if tag == UTC_TIME:
        full_year += 1900 if full_year >= 50 else 2000
    hours, minutes, seconds = int(hour), int(minute), int(second or 0)
    try:
        if hours > 23 or minutes > 59 or seconds > 59:
            raise ValueError
        days = date(full_year, int(month), int(day)).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        raise CertificateParseError(f"impossible date {text!r}", pos) from None
    offset = 0
    if zone != b"Z":
        offset = int(zone[1:3]) * 3600 + int(zone[3:5]) * 60
        offset = -offset if zone[:1] == b"-" else offset
    return days * 86400 + hours * 3600 + minutes * 60 + seconds - offset, stop

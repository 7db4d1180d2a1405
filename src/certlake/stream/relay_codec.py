"""One streamed entry as certlake processes hand it to each other over NATS JetStream (pure).

The ingest node builds each entry's three payloads once; an edge must serve them byte for byte
and filter on the same facts, without parsing a certificate or a payload again. So a relayed
entry is the `Streamed` tuple itself, framed as

    u32 big-endian length of H | H | full | lite | domains

where H is the JSON array `[len(full), len(lite), cert_index, update_type, source_name,
source_url, sha256, sha1, serial_number, issuer_aggregated, all_domains]` and `domains` runs to
the end. The payloads are copied as they are (embedding them in JSON would escape every quote
of them, on both ends, per entry).
"""

from __future__ import annotations

import struct
from typing import Final

import orjson

from certlake.certs.message import Streamed

_LENGTH: Final = struct.Struct(">I")
_FIELDS: Final = 11


class RelayDecodeError(ValueError):
    """Bytes that are not a relayed entry (another producer on the subject, or damage)."""


def encode_streamed(s: Streamed) -> bytes:
    header = orjson.dumps(
        [
            len(s.full),
            len(s.lite),
            s.cert_index,
            s.update_type,
            s.source_name,
            s.source_url,
            s.sha256,
            s.sha1,
            s.serial_number,
            s.issuer_aggregated,
            s.all_domains,
        ]
    )
    return b"".join((_LENGTH.pack(len(header)), header, s.full, s.lite, s.domains))


def decode_streamed(data: bytes) -> Streamed:
    if len(data) < _LENGTH.size:
        raise RelayDecodeError(f"{len(data)} bytes: shorter than a relayed entry's header")
    (size,) = _LENGTH.unpack_from(data)
    start = _LENGTH.size + size
    if start > len(data):
        raise RelayDecodeError(f"header of {size} bytes past the end ({len(data)} bytes)")
    try:
        header = orjson.loads(data[_LENGTH.size : start])
    except orjson.JSONDecodeError as exc:
        raise RelayDecodeError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, list) or len(header) != _FIELDS:
        raise RelayDecodeError(f"header is not an array of {_FIELDS} fields")
    full_len, lite_len, index, update_type, name, url, sha256, sha1, serial, issuer, names = header
    ints = (full_len, lite_len, index)
    texts = (update_type, name, url, sha256, sha1, serial, issuer)
    if not all(isinstance(v, int) and v >= 0 for v in ints):
        raise RelayDecodeError("lengths and the index must be non-negative integers")
    if not all(isinstance(v, str) for v in texts):
        raise RelayDecodeError("the header's text fields must be strings")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise RelayDecodeError("all_domains must be an array of strings")
    lite_at = start + full_len
    domains_at = lite_at + lite_len
    if domains_at > len(data):
        raise RelayDecodeError(f"payload lengths run past the end ({len(data)} bytes)")
    return Streamed(
        data[start:lite_at],
        data[lite_at:domains_at],
        data[domains_at:],
        index,
        update_type,
        name,
        url,
        sha256,
        sha1,
        serial,
        issuer,
        names,
    )

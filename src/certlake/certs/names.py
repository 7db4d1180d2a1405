"""X.509 Name → the certstream `subject` / `issuer` object (Go key order and rules).

Go's rules with two deliberate fixes (below): keys `C, CN, L, O, OU, ST, aggregated,
email_address`; a missing attribute is null; repeated values are joined with `,`; `CN` is the last
CN value or `""`, never null; `aggregated` is `/C=…/CN=…/L=…/O=…/OU=…/ST=…` skipping nulls but
always carrying `/CN=`. Fixed: `ST` is stateOrProvinceName (Go reads streetAddress) and
`email_address` is the emailAddress attribute (Go always writes null).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TypedDict

from certlake.certs.der import OID, SEQUENCE, SET, encode_oid, expect, header
from certlake.certs.errors import CertificateParseError
from certlake.certs.gojson import go_text


class Subject(TypedDict):
    """The wire keys are the X.520 short names, hence the capitals."""

    C: str | None
    CN: str
    L: str | None
    O: str | None  # noqa: E741
    OU: str | None
    ST: str | None
    aggregated: str
    email_address: str | None


_ATTRIBUTES = {
    encode_oid("2.5.4.6"): "C",
    encode_oid("2.5.4.3"): "CN",
    encode_oid("2.5.4.7"): "L",
    encode_oid("2.5.4.10"): "O",
    encode_oid("2.5.4.11"): "OU",
    encode_oid("2.5.4.8"): "ST",
    encode_oid("1.2.840.113549.1.9.1"): "email_address",
}

# The string types Go's asn1 turns into a Go string; any other value type is skipped, as in Go.
_UTF8_LIKE = frozenset({0x0C, 0x12, 0x13, 0x14, 0x16})  # UTF8, Numeric, Printable, T61, IA5
_BMP_STRING = 0x1E


def parse_name(buf: bytes, start: int, stop: int) -> Subject:
    """The Name whose SEQUENCE content is `buf[start:stop]`."""
    values: dict[str, list[str]] = {}
    pos = start
    while pos < stop:
        rdn_start, rdn_stop = expect(buf, pos, stop, SET, "relative distinguished name")
        pos = rdn_stop
        atv = rdn_start
        while atv < rdn_stop:
            atv_start, atv_stop = expect(buf, atv, rdn_stop, SEQUENCE, "name attribute")
            atv = atv_stop
            oid_start, oid_stop = expect(buf, atv_start, atv_stop, OID, "attribute type")
            key = _ATTRIBUTES.get(buf[oid_start:oid_stop])
            tag, value_start, value_stop = header(buf, oid_stop, atv_stop)
            if key is None:
                continue
            raw = buf[value_start:value_stop]
            if tag in _UTF8_LIKE:
                text = go_text(raw)
            elif tag == _BMP_STRING:
                text = raw.decode("utf-16-be", "replace")
            else:
                continue
            values.setdefault(key, []).append(text)
    return _subject(values)


def _subject(values: dict[str, list[str]]) -> Subject:
    def joined(key: str) -> str | None:
        found = values.get(key)
        return None if found is None else ",".join(found)

    cns = values.get("CN")
    c, cn, locality = joined("C"), cns[-1] if cns else "", joined("L")
    o, ou, st = joined("O"), joined("OU"), joined("ST")
    pairs = (("C", c), ("CN", cn), ("L", locality), ("O", o), ("OU", ou), ("ST", st))
    aggregated = "".join(f"/{label}={value}" for label, value in pairs if value is not None)
    return {
        "C": c,
        "CN": cn,
        "L": locality,
        "O": o,
        "OU": ou,
        "ST": st,
        "aggregated": aggregated,
        "email_address": joined("email_address"),
    }


# Issuer names repeat across every certificate of a CA, so their formatted object is kept by the
# Name's DER. The bound covers the few thousand issuing CAs seen across all public logs while
# keeping a log that serves junk issuers from growing memory without limit; at most a few hundred
# bytes each. Callers must treat the returned dict as read-only: it is shared between messages.
@lru_cache(maxsize=8192)
def cached_name(der: bytes) -> Subject:
    """The Name whose complete DER (SEQUENCE header included) is `der`; error offsets are
    relative to `der`."""
    start, stop = expect(der, 0, len(der), SEQUENCE, "name")
    if stop != len(der):
        raise CertificateParseError("trailing bytes after name", stop)
    return parse_name(der, start, stop)

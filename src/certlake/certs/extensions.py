"""Certificate extensions → the certstream `extensions` strings, certstream-server-go's format.

The formatting functions take the extnValue content (the bytes inside the OCTET STRING).
Extensions that repeat byte for byte across one CA's certificates (AIA, AKI, policies, key usage,
basic constraints, EKU, CRL points, poison) go through `shared_extensions`, memoized by their
bytes, so the common case is one dict lookup per certificate instead of a parse. SAN and SKI are
unique per certificate: the caller recognises them by their leading bytes (`SAN_HEAD`,
`SKI_HEAD`) and parses them directly, and skips the per-certificate SCT list (`SCT_HEAD`), which
Go never shows, so that neither pollutes the memo. Error offsets are relative to the bytes passed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple, TypedDict

from certlake.certs.der import (
    BIT_STRING,
    BOOLEAN,
    OCTET_STRING,
    OID,
    SEQUENCE,
    encode_oid,
    expect,
    header,
    oid_text,
)
from certlake.certs.errors import CertificateParseError
from certlake.certs.gojson import GO_REPLACE, go_text

OID_AUTHORITY_INFO_ACCESS = encode_oid("1.3.6.1.5.5.7.1.1")
OID_AUTHORITY_KEY_ID = encode_oid("2.5.29.35")
OID_BASIC_CONSTRAINTS = encode_oid("2.5.29.19")
OID_CERTIFICATE_POLICIES = encode_oid("2.5.29.32")
OID_KEY_USAGE = encode_oid("2.5.29.15")
OID_SUBJECT_ALT_NAME = encode_oid("2.5.29.17")
OID_SUBJECT_KEY_ID = encode_oid("2.5.29.14")
OID_CT_POISON = encode_oid("1.3.6.1.4.1.11129.2.4.3")
_OID_SCT_LIST = encode_oid("1.3.6.1.4.1.11129.2.4.2")

# An Extension's content starts with its OID element; these are those first bytes.
SAN_HEAD = bytes((OID, len(OID_SUBJECT_ALT_NAME))) + OID_SUBJECT_ALT_NAME
SKI_HEAD = bytes((OID, len(OID_SUBJECT_KEY_ID))) + OID_SUBJECT_KEY_ID
SCT_HEAD = bytes((OID, len(_OID_SCT_LIST))) + _OID_SCT_LIST

_OCSP = encode_oid("1.3.6.1.5.5.7.48.1")
_CA_ISSUERS = encode_oid("1.3.6.1.5.5.7.48.2")

_URI = 0x86
_DNS_NAME = 0x82
_RFC822_NAME = 0x81
_IP_ADDRESS = 0x87
_KEY_ID = 0x80

_KEY_USAGE_NAMES = (
    "Digital Signature",
    "Content Commitment",
    "Key Encipherment",
    "Data Encipherment",
    "Key Agreement",
    "Certificate Signing",
    "CRL Signing",
    "Encipher Only",
    "Decipher Only",
)


def read_extension(content: bytes) -> tuple[bytes, bytes]:
    """(OID, extnValue content) of an Extension, given its SEQUENCE content."""
    end = len(content)
    oid_start, oid_stop = expect(content, 0, end, OID, "extension id")
    tag, value_start, value_stop = header(content, oid_stop, end)
    if tag == BOOLEAN:  # critical
        tag, value_start, value_stop = header(content, value_stop, end)
    if tag != OCTET_STRING or value_stop != end:
        raise CertificateParseError("malformed extension", oid_stop)
    return content[oid_start:oid_stop], content[value_start:value_stop]


class Extensions(TypedDict, total=False):
    """The certstream `extensions` object: present keys only, in Go's struct order."""

    authorityInfoAccess: str
    authorityKeyIdentifier: str
    basicConstraints: str
    certificatePolicies: str
    keyUsage: str
    subjectAltName: str
    subjectKeyIdentifier: str
    ctlPoisonByte: bool


class SharedExtensions(NamedTuple):
    """What a certificate's shared extensions contribute to its message."""

    # The keys Go orders before subjectAltName (AIA, AKI, basic constraints, policies, key usage)
    # in that order; the caller copies it and appends SAN, SKI and the poison flag.
    head: Extensions
    is_ca: bool
    poison: bool


# Keyed by the tuple of a certificate's extensions other than SAN, SKI and the SCT list (their
# SEQUENCE contents): certificates from one CA profile repeat that tuple byte for byte, so one
# lookup replaces parsing and formatting them all. Distinct keys scale with the number of CA
# profiles (a few thousand across all public logs), each entry is a few hundred bytes; the bound
# stops a log serving junk from growing memory without limit.
@lru_cache(maxsize=16384)
def shared_extensions(contents: tuple[bytes, ...]) -> SharedExtensions:
    found: dict[str, str] = {}
    poison = False
    for position, content in enumerate(contents):
        try:
            oid, value = read_extension(content)
            if oid == OID_CT_POISON:
                poison = True
            elif oid in (OID_SUBJECT_ALT_NAME, OID_SUBJECT_KEY_ID):
                # Only reachable when the OID's length is not in DER's short form, so that
                # SAN_HEAD/SKI_HEAD did not match.
                raise CertificateParseError("non-DER extension id encoding", 0)
            elif oid in _SHARED_FORMATTERS:
                key, formatter = _SHARED_FORMATTERS[oid]
                found[key] = formatter(value)
        except CertificateParseError as exc:
            raise CertificateParseError(f"extension {position}: {exc.reason}", exc.offset) from None
    head: Extensions = {}
    for key in _HEAD_ORDER:
        if key in found:
            head[key] = found[key]  # type: ignore[literal-required]
    return SharedExtensions(head, found.get("basicConstraints") == "CA:TRUE", poison)


def authority_info_access(value: bytes) -> str:
    """`URI:<caIssuers>…, URI:<ocsp>…`: CA-issuers URIs first, then OCSP, `""` if none."""
    issuers: list[str] = []
    ocsp: list[str] = []
    start, stop = expect(value, 0, len(value), SEQUENCE, "authorityInfoAccess")
    pos = start
    while pos < stop:
        ad_start, ad_stop = expect(value, pos, stop, SEQUENCE, "access description")
        pos = ad_stop
        oid_start, oid_stop = expect(value, ad_start, ad_stop, OID, "access method")
        tag, loc_start, loc_stop = header(value, oid_stop, ad_stop)
        if tag != _URI:
            continue
        method = value[oid_start:oid_stop]
        if method == _OCSP:
            ocsp.append("URI:" + go_text(value[loc_start:loc_stop]))
        elif method == _CA_ISSUERS:
            issuers.append("URI:" + go_text(value[loc_start:loc_stop]))
    return ", ".join(issuers + ocsp)


def key_id_text(key_id: bytes) -> str:
    """Go's `formatKeyID`: `keyid:` + lowercase hex pairs joined by `:`."""
    return "keyid:" + key_id.hex(":")


def authority_key_id(value: bytes) -> str:
    """The keyIdentifier of an AuthorityKeyIdentifier (`keyid:` alone when it has none)."""
    start, stop = expect(value, 0, len(value), SEQUENCE, "authorityKeyIdentifier")
    if start < stop:
        tag, id_start, id_stop = header(value, start, stop)
        if tag == _KEY_ID:
            return key_id_text(value[id_start:id_stop])
    return "keyid:"


def subject_key_id(value: bytes) -> str:
    start, stop = expect(value, 0, len(value), OCTET_STRING, "subjectKeyIdentifier")
    return key_id_text(value[start:stop])


def basic_constraints(value: bytes) -> str:
    """`CA:TRUE` / `CA:FALSE` from the cA flag (DEFAULT FALSE)."""
    start, stop = expect(value, 0, len(value), SEQUENCE, "basicConstraints")
    if start < stop:
        tag, flag_start, flag_stop = header(value, start, stop)
        if tag == BOOLEAN:
            if flag_stop - flag_start != 1:
                raise CertificateParseError("malformed cA boolean", start)
            return "CA:TRUE" if value[flag_start] else "CA:FALSE"
    return "CA:FALSE"


def key_usage(value: bytes) -> str:
    """Set bits 0..8 by Go's names, in bit order, joined by `, `."""
    start, stop = expect(value, 0, len(value), BIT_STRING, "keyUsage")
    if start == stop or value[start] > 7 or (stop - start == 1 and value[start]):
        raise CertificateParseError("malformed keyUsage bit string", 0)
    bits = value[start + 1 : stop]
    bit_length = len(bits) * 8 - value[start]
    return ", ".join(
        name
        for i, name in enumerate(_KEY_USAGE_NAMES)
        if i < bit_length and bits[i >> 3] >> (7 - (i & 7)) & 1
    )


def certificate_policies(value: bytes) -> str:
    """`Policy: <oid>\\n` per policy in certificate order; qualifiers ignored."""
    start, stop = expect(value, 0, len(value), SEQUENCE, "certificatePolicies")
    out: list[str] = []
    pos = start
    while pos < stop:
        pi_start, pi_stop = expect(value, pos, stop, SEQUENCE, "policy information")
        pos = pi_stop
        oid_start, oid_stop = expect(value, pi_start, pi_stop, OID, "policy identifier")
        out.append(f"Policy: {oid_text(value[oid_start:oid_stop], oid_start)}\n")
    return "".join(out)


def subject_alt_name(value: bytes) -> tuple[list[str], str]:
    """(dNSNames in certificate order, Go's text: all `DNS:`, then `email:`, then `IP Address:`)."""
    start, stop = expect(value, 0, len(value), SEQUENCE, "subjectAltName")
    dns: list[str] = []
    emails: list[str] = []
    ips: list[str] = []
    pos = start
    while pos < stop:
        # Inlined short-form header: this loop runs once per name, up to hundreds per certificate.
        length = value[pos + 1] if pos + 1 < stop else 0x80
        if length < 0x80 and pos + 2 + length <= stop:
            tag, name_start, pos = value[pos], pos + 2, pos + 2 + length
        else:
            tag, name_start, pos = header(value, pos, stop)
        if tag == _DNS_NAME:
            dns.append(value[name_start:pos].decode("utf-8", GO_REPLACE))
        elif tag == _RFC822_NAME:
            emails.append("email:" + go_text(value[name_start:pos]))
        elif tag == _IP_ADDRESS:
            address = _ip_text(value[name_start:pos])
            if address is not None:
                ips.append("IP Address:" + address)
    text = "DNS:" + ", DNS:".join(dns) if dns else ""
    if emails or ips:
        text = ", ".join(([text] if text else []) + emails + ips)
    return dns, text


_V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def _ip_text(raw: bytes) -> str | None:
    """Go's `net.IP.String()`; None for a length Go rejects (Go drops the whole entry for it;
    certlake keeps the certificate and leaves the bad address out)."""
    if len(raw) == 4 or (len(raw) == 16 and raw.startswith(_V4_MAPPED_PREFIX)):
        return ".".join(map(str, raw[-4:]))
    if len(raw) == 16:
        return ipaddress.IPv6Address(raw).compressed
    return None


_SHARED_FORMATTERS: dict[bytes, tuple[str, Callable[[bytes], str]]] = {
    OID_AUTHORITY_INFO_ACCESS: ("authorityInfoAccess", authority_info_access),
    OID_AUTHORITY_KEY_ID: ("authorityKeyIdentifier", authority_key_id),
    OID_BASIC_CONSTRAINTS: ("basicConstraints", basic_constraints),
    OID_CERTIFICATE_POLICIES: ("certificatePolicies", certificate_policies),
    OID_KEY_USAGE: ("keyUsage", key_usage),
}
_HEAD_ORDER = (
    "authorityInfoAccess",
    "authorityKeyIdentifier",
    "basicConstraints",
    "certificatePolicies",
    "keyUsage",
)

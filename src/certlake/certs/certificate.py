"""One X.509 certificate DER → the certstream certificate object (Go's `LeafCert`, Go key order).

The same object is `data.leaf_cert` and each element of `data.chain` (Go gives chain elements
the leaf's keys, `all_domains` and `as_der` included). Field rules are Go's; see `names` and
`extensions` for those parts.
"""

from __future__ import annotations

import hashlib
from binascii import b2a_base64
from typing import TypedDict

from certlake.certs import extensions as ext
from certlake.certs.algorithms import signature_algorithm
from certlake.certs.der import (
    BIT_STRING,
    INTEGER,
    SEQUENCE,
    expect,
    header,
    time_seconds,
)
from certlake.certs.errors import CertificateParseError
from certlake.certs.extensions import Extensions
from certlake.certs.names import Subject, cached_name, parse_name

_VERSION = 0xA0
_ISSUER_UID = 0x81
_SUBJECT_UID = 0x82
_EXTENSIONS = 0xA3


class CertObject(TypedDict):
    """Go's `LeafCert`, keys in wire order. Nested `issuer` dicts are shared between messages
    (cached by the issuer's DER): treat the whole object as read-only."""

    all_domains: list[str]
    as_der: str
    extensions: Extensions
    fingerprint: str
    sha1: str
    sha256: str
    not_after: int
    not_before: int
    serial_number: str
    signature_algorithm: str
    subject: Subject
    issuer: Subject
    is_ca: bool


def colon_hex(digest: bytes) -> str:
    """Uppercase hex pairs joined by `:` (certstream fingerprints)."""
    return digest.hex(":").upper()


def serial_text(content: bytes) -> str:
    """Go's `%X` of the serial integer, left-padded with one `0` to an even length."""
    if content[0] < 0x80:  # non-negative: the magnitude's hex, which is already even-length
        return content.lstrip(b"\x00").hex().upper() or "00"
    text = f"{int.from_bytes(content, 'big', signed=True):X}"
    return "0" + text if len(text) % 2 else text


def certificate_object(der: bytes, *, precert: bool = False) -> CertObject:
    """Parse `der`; `precert` forces `ctlPoisonByte` (Go sets it for every precert entry).

    Raises `CertificateParseError` for anything that is not a well-formed certificate.
    """
    end = len(der)
    cert_start, cert_stop = expect(der, 0, end, SEQUENCE, "certificate")
    if cert_stop != end:
        raise CertificateParseError("trailing bytes after certificate", cert_stop)
    tbs_start, tbs_stop = expect(der, cert_start, cert_stop, SEQUENCE, "tbsCertificate")
    _, outer_alg_stop = expect(der, tbs_stop, cert_stop, SEQUENCE, "signatureAlgorithm")
    _, signature_stop = expect(der, outer_alg_stop, cert_stop, BIT_STRING, "signatureValue")
    if signature_stop != cert_stop:
        raise CertificateParseError("trailing bytes inside certificate", signature_stop)

    tag, start, pos = header(der, tbs_start, tbs_stop)
    if tag == _VERSION:
        tag, start, pos = header(der, pos, tbs_stop)
    if tag != INTEGER or start == pos:
        raise CertificateParseError("missing serial number", start)
    serial = serial_text(der[start:pos])

    # The signature algorithm and issuer repeat across a CA's certificates: both are memoized by
    # their DER, and report error offsets relative to it.
    part_pos = pos
    try:
        _, pos = expect(der, part_pos, tbs_stop, SEQUENCE, "signature")
        algorithm = signature_algorithm(der[part_pos:pos])
        part_pos = pos
        _, pos = expect(der, part_pos, tbs_stop, SEQUENCE, "issuer")
        issuer = cached_name(der[part_pos:pos])
    except CertificateParseError as exc:
        raise CertificateParseError(exc.reason, part_pos + (exc.offset or 0)) from None

    validity_start, validity_stop = expect(der, pos, tbs_stop, SEQUENCE, "validity")
    not_before, after_pos = time_seconds(der, validity_start, validity_stop)
    not_after, after_pos = time_seconds(der, after_pos, validity_stop)
    if after_pos != validity_stop:
        raise CertificateParseError("trailing bytes in validity", after_pos)

    subject_start, pos = expect(der, validity_stop, tbs_stop, SEQUENCE, "subject")
    subject = parse_name(der, subject_start, pos)
    _, pos = expect(der, pos, tbs_stop, SEQUENCE, "subjectPublicKeyInfo")

    extensions: Extensions = {}
    is_ca = False
    dns_names: list[str] = []
    while pos < tbs_stop:
        tag, start, stop = header(der, pos, tbs_stop)
        if tag == _EXTENSIONS:
            extensions, is_ca, dns_names = _extensions(der, start, stop)
        elif tag not in (_ISSUER_UID, _SUBJECT_UID):
            raise CertificateParseError(f"unexpected tag 0x{tag:02x} in tbsCertificate", pos)
        pos = stop
    if precert:  # the last key, so setting it here keeps Go's order
        extensions["ctlPoisonByte"] = True

    common_name = subject["CN"]
    if common_name and not is_ca and common_name not in dns_names:
        dns_names.append(common_name)
    sha1 = colon_hex(hashlib.sha1(der).digest())
    return {
        "all_domains": dns_names,
        "as_der": b2a_base64(der, newline=False).decode("ascii"),
        "extensions": extensions,
        "fingerprint": sha1,
        "sha1": sha1,
        "sha256": colon_hex(hashlib.sha256(der).digest()),
        "not_after": not_after,
        "not_before": not_before,
        "serial_number": serial,
        "signature_algorithm": algorithm,
        "subject": subject,
        "issuer": issuer,
        "is_ca": is_ca,
    }


def _extensions(der: bytes, start: int, stop: int) -> tuple[Extensions, bool, list[str]]:
    """(extensions object, is_ca, SAN dNSNames) from the [3] extensions field."""
    shared: list[bytes] = []
    san = ski = None
    dns_names: list[str] = []
    list_start, list_stop = expect(der, start, stop, SEQUENCE, "extensions")
    pos = list_start
    try:
        while pos < list_stop:
            ext_start, ext_stop = expect(der, pos, list_stop, SEQUENCE, "extension")
            if der.startswith(ext.SAN_HEAD, ext_start):
                _, value = ext.read_extension(der[ext_start:ext_stop])
                dns_names, san = ext.subject_alt_name(value)
            elif der.startswith(ext.SKI_HEAD, ext_start):
                _, value = ext.read_extension(der[ext_start:ext_stop])
                ski = ext.subject_key_id(value)
            elif not der.startswith(ext.SCT_HEAD, ext_start):
                shared.append(der[ext_start:ext_stop])
            pos = ext_stop
        found = ext.shared_extensions(tuple(shared))
    except CertificateParseError as exc:
        raise CertificateParseError(f"extensions: {exc.reason}", pos) from None
    out = found.head.copy()
    if san is not None:
        out["subjectAltName"] = san
    if ski is not None:
        out["subjectKeyIdentifier"] = ski
    if found.poison:
        out["ctlPoisonByte"] = True
    return out, found.is_ca, dns_names

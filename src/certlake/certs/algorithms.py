"""Signature AlgorithmIdentifier → Go's `signature_algorithm` text.

Go maps the algorithm to its `x509.SignatureAlgorithm` enum (`getSignatureAlgorithmFromAI`) and
then to certstream's text; anything it does not recognise is `unknown`. RSASSA-PSS is named by
its parameters, and only the three shapes Go accepts have a name.
"""

from __future__ import annotations

from functools import lru_cache

from certlake.certs.der import INTEGER, NULL, OID, SEQUENCE, encode_oid, expect, header
from certlake.certs.errors import CertificateParseError

UNKNOWN = "unknown"

_NAMES = {
    encode_oid(dotted): name
    for dotted, name in (
        ("1.2.840.113549.1.1.2", "md2, rsa"),
        ("1.2.840.113549.1.1.4", "md5, rsa"),
        ("1.2.840.113549.1.1.5", "sha1, rsa"),
        ("1.3.14.3.2.29", "sha1, rsa"),
        ("1.2.840.113549.1.1.11", "sha256, rsa"),
        ("1.2.840.113549.1.1.12", "sha384, rsa"),
        ("1.2.840.113549.1.1.13", "sha512, rsa"),
        ("1.2.840.10040.4.3", "dsa, sha1"),
        ("2.16.840.1.101.3.4.3.2", "dsa, sha256"),
        ("1.2.840.10045.4.1", "ecdsa, sha1"),
        ("1.2.840.10045.4.3.2", "ecdsa, sha256"),
        ("1.2.840.10045.4.3.3", "ecdsa, sha384"),
        ("1.2.840.10045.4.3.4", "ecdsa, sha512"),
        ("1.3.101.112", "ed25519"),
    )
}
_ED25519 = encode_oid("1.3.101.112")
_RSA_PSS = encode_oid("1.2.840.113549.1.1.10")
_MGF1 = encode_oid("1.2.840.113549.1.1.8")
_PSS_BY_HASH = {
    (encode_oid("2.16.840.1.101.3.4.2.1"), 32): "sha256, rsa-pss",
    (encode_oid("2.16.840.1.101.3.4.2.2"), 48): "sha384, rsa-pss",
    (encode_oid("2.16.840.1.101.3.4.2.3"), 64): "sha512, rsa-pss",
}


# A handful of distinct AlgorithmIdentifiers exist in practice; the bound is only a safety net.
@lru_cache(maxsize=256)
def signature_algorithm(identifier: bytes) -> str:
    """Text for a complete AlgorithmIdentifier DER (its SEQUENCE header included)."""
    start, stop = expect(identifier, 0, len(identifier), SEQUENCE, "signature algorithm")
    oid_start, oid_stop = expect(identifier, start, stop, OID, "algorithm")
    oid = identifier[oid_start:oid_stop]
    has_parameters = oid_stop < stop
    if oid == _RSA_PSS:
        return _pss_name(identifier, oid_stop, stop) if has_parameters else UNKNOWN
    if oid == _ED25519 and has_parameters:  # RFC 8410: parameters MUST be absent
        return UNKNOWN
    return _NAMES.get(oid, UNKNOWN)


def _pss_name(buf: bytes, pos: int, end: int) -> str:
    try:
        start, stop = expect(buf, pos, end, SEQUENCE, "RSASSA-PSS parameters")
        fields: dict[int, tuple[int, int]] = {}
        while start < stop:
            tag, field_start, start = header(buf, start, stop)
            fields[tag] = (field_start, start)
        if not {0xA0, 0xA1, 0xA2} <= fields.keys():  # Go requires all three explicitly
            return UNKNOWN
        hash_oid, hash_params_ok = _algorithm(buf, *fields[0xA0])
        mgf_start, mgf_stop = expect(buf, *fields[0xA1], SEQUENCE, "mask generation")
        mgf_oid_start, mgf_oid_stop = expect(buf, mgf_start, mgf_stop, OID, "mgf")
        mgf_hash, mgf_params_ok = _algorithm(buf, mgf_oid_stop, mgf_stop)
        salt = _integer(buf, *fields[0xA2])
        trailer = _integer(buf, *fields[0xA3]) if 0xA3 in fields else 1
    except CertificateParseError:
        return UNKNOWN  # Go: parameters it cannot unmarshal make the algorithm unknown
    if (
        not hash_params_ok
        or buf[mgf_oid_start:mgf_oid_stop] != _MGF1
        or mgf_hash != hash_oid
        or not mgf_params_ok
        or trailer != 1
    ):
        return UNKNOWN
    return _PSS_BY_HASH.get((hash_oid, salt), UNKNOWN)


def _algorithm(buf: bytes, pos: int, end: int) -> tuple[bytes, bool]:
    """(OID, parameters absent or NULL) of the AlgorithmIdentifier at `pos`."""
    start, stop = expect(buf, pos, end, SEQUENCE, "algorithm identifier")
    oid_start, oid_stop = expect(buf, start, stop, OID, "algorithm")
    params = buf[oid_stop:stop]
    return buf[oid_start:oid_stop], params in (b"", bytes((NULL, 0)))


def _integer(buf: bytes, pos: int, end: int) -> int:
    start, stop = expect(buf, pos, end, INTEGER, "integer")
    if start == stop:
        raise CertificateParseError("empty integer", pos)
    return int.from_bytes(buf[start:stop], "big", signed=True)

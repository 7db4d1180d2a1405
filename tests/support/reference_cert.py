"""An independent model of certstream-server-go's certificate object (certlake's fixes included),
written plainly against `cryptography`'s object API.

The certificate tests compare certlake's hand-written DER path with it field by field, and the
parse benchmark uses it as the straightforward baseline certlake is measured against.
"""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID, SignatureAlgorithmOID

SIGNATURE_NAMES = {
    SignatureAlgorithmOID.ECDSA_WITH_SHA256: "ecdsa, sha256",
    SignatureAlgorithmOID.ECDSA_WITH_SHA384: "ecdsa, sha384",
    SignatureAlgorithmOID.RSA_WITH_SHA256: "sha256, rsa",
}
KEY_USAGE_BITS = (
    ("digital_signature", "Digital Signature"),
    ("content_commitment", "Content Commitment"),
    ("key_encipherment", "Key Encipherment"),
    ("data_encipherment", "Data Encipherment"),
    ("key_agreement", "Key Agreement"),
    ("key_cert_sign", "Certificate Signing"),
    ("crl_sign", "CRL Signing"),
)


def colon_hex(data: bytes, upper: bool) -> str:
    return ":".join(f"{b:02X}" if upper else f"{b:02x}" for b in data)


def go_ip(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Go's net.IP.String(): IPv4-mapped IPv6 addresses print as dotted quads."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return address.compressed


def expected_name(name: x509.Name) -> dict[str, Any]:
    def joined(oid: x509.ObjectIdentifier) -> str | None:
        values = [str(a.value) for a in name.get_attributes_for_oid(oid)]
        return ",".join(values) if values else None

    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    fields = {
        "C": joined(NameOID.COUNTRY_NAME),
        "CN": str(cns[-1].value) if cns else "",
        "L": joined(NameOID.LOCALITY_NAME),
        "O": joined(NameOID.ORGANIZATION_NAME),
        "OU": joined(NameOID.ORGANIZATIONAL_UNIT_NAME),
        "ST": joined(NameOID.STATE_OR_PROVINCE_NAME),
    }
    aggregated = "".join(f"/{k}={v}" for k, v in fields.items() if v is not None)
    return {**fields, "aggregated": aggregated, "email_address": joined(NameOID.EMAIL_ADDRESS)}


def expected_extensions(cert: x509.Certificate, precert: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    exts = {e.oid: e.value for e in cert.extensions}
    aia = exts.get(x509.oid.ExtensionOID.AUTHORITY_INFORMATION_ACCESS)
    if isinstance(aia, x509.AuthorityInformationAccess):
        issuers = [
            d.access_location.value
            for d in aia
            if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS
        ]
        ocsp = [
            d.access_location.value
            for d in aia
            if d.access_method == AuthorityInformationAccessOID.OCSP
        ]
        out["authorityInfoAccess"] = ", ".join(f"URI:{u}" for u in issuers + ocsp)
    aki = exts.get(x509.oid.ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
    if isinstance(aki, x509.AuthorityKeyIdentifier):
        out["authorityKeyIdentifier"] = "keyid:" + colon_hex(aki.key_identifier or b"", False)
    bc = exts.get(x509.oid.ExtensionOID.BASIC_CONSTRAINTS)
    if isinstance(bc, x509.BasicConstraints):
        out["basicConstraints"] = "CA:TRUE" if bc.ca else "CA:FALSE"
    policies = exts.get(x509.oid.ExtensionOID.CERTIFICATE_POLICIES)
    if isinstance(policies, x509.CertificatePolicies):
        out["certificatePolicies"] = "".join(
            f"Policy: {p.policy_identifier.dotted_string}\n" for p in policies
        )
    ku = exts.get(x509.oid.ExtensionOID.KEY_USAGE)
    if isinstance(ku, x509.KeyUsage):
        out["keyUsage"] = ", ".join(label for attr, label in KEY_USAGE_BITS if getattr(ku, attr))
    san = exts.get(x509.oid.ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    if isinstance(san, x509.SubjectAlternativeName):
        parts = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
        parts += [f"email:{n}" for n in san.get_values_for_type(x509.RFC822Name)]
        parts += [f"IP Address:{go_ip(a)}" for a in san.get_values_for_type(x509.IPAddress)]
        out["subjectAltName"] = ", ".join(parts)
    ski = exts.get(x509.oid.ExtensionOID.SUBJECT_KEY_IDENTIFIER)
    if isinstance(ski, x509.SubjectKeyIdentifier):
        out["subjectKeyIdentifier"] = "keyid:" + colon_hex(ski.digest, False)
    if precert:
        assert isinstance(exts[x509.oid.ExtensionOID.PRECERT_POISON], x509.PrecertPoison)
        out["ctlPoisonByte"] = True
    return out


def expected_object(der: bytes, precert: bool = False) -> dict[str, Any]:
    """The Go `LeafCert` object for `der`, computed with the object API."""
    cert = x509.load_der_x509_certificate(der)
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = bc.ca
    except x509.ExtensionNotFound:
        is_ca = False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        domains = list(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        domains = []
    subject = expected_name(cert.subject)
    if subject["CN"] and not is_ca and subject["CN"] not in domains:
        domains.append(subject["CN"])
    serial = f"{cert.serial_number:X}"
    sha1 = colon_hex(cert.fingerprint(hashes.SHA1()), True)
    return {
        "all_domains": domains,
        "as_der": base64.b64encode(der).decode(),
        "extensions": expected_extensions(cert, precert),
        "fingerprint": sha1,
        "sha1": sha1,
        "sha256": colon_hex(cert.fingerprint(hashes.SHA256()), True),
        "not_after": int(cert.not_valid_after_utc.timestamp()),
        "not_before": int(cert.not_valid_before_utc.timestamp()),
        "serial_number": serial if len(serial) % 2 == 0 else "0" + serial,
        "signature_algorithm": SIGNATURE_NAMES[cert.signature_algorithm_oid],
        "subject": subject,
        "issuer": expected_name(cert.issuer),
        "is_ca": is_ca,
    }

"""Entry → message throughput on one core: RFC 6962 decode + certificate parse + full, lite and
domains-only serialization, against a naive builder over `cryptography`'s object API.

    .venv/bin/python benchmarks/parse.py [--entries N] [--seconds S]

The mix: half precerts, half final certificates; 80 % issued by the ECDSA intermediate, 20 % by
the RSA one (so two distinct 2-certificate chains, as the few big CAs dominate real logs);
1–50 SANs (60 % 1–3, 30 % 4–12, 10 % 13–50); a quarter RSA leaf keys; some OV subjects and
email/IP SANs. Every leaf is distinct; chain certificates repeat, as they do in real logs.
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtensionOID,
    NameOID,
    SignatureAlgorithmOID,
)

from certlake.certs.message import build_message
from certlake.ct.entry import EntryType, LogEntry, LogKind, LogSource
from certlake.ct.leaf import (
    decode_rfc6962_entry,
    encode_extra_data_precert,
    encode_extra_data_x509,
    encode_leaf_input,
)
from certlake.testlog.certs import CertFactory

SOURCE = LogSource("https://ct.certlake.test/bench", "certlake bench log", LogKind.RFC6962)
RawEntry = tuple[int, bytes, bytes]


def make_entries(count: int, seed: int = 1) -> list[RawEntry]:
    factory = CertFactory(seed)
    entries: list[RawEntry] = []
    timestamp = 1_750_000_000_000
    for index in range(count):
        signer = "rsa" if index % 5 == 4 else "ec"
        if index % 2:
            pre = factory.issue_precert(signer=signer)
            leaf_input = encode_leaf_input(
                timestamp + index, EntryType.PRECERT, pre.tbs, pre.issuer_key_hash
            )
            extra = encode_extra_data_precert(pre.precert_der, pre.chain)
        else:
            cert = factory.issue(signer=signer)
            leaf_input = encode_leaf_input(timestamp + index, EntryType.X509, cert.der)
            extra = encode_extra_data_x509(cert.chain)
        entries.append((index, leaf_input, extra))
    return entries


def certlake_message(index: int, leaf_input: bytes, extra: bytes) -> bytes:
    entry = decode_rfc6962_entry(index, leaf_input, extra)
    message = build_message(entry, SOURCE, time.time(), _link(index))
    return message.full


def _link(index: int) -> str:
    return f"{SOURCE.url}/ct/v1/get-entries?start={index}&end={index}"


# --- the naive baseline: what a straightforward implementation over the object API does ------

_KU = (
    ("digital_signature", "Digital Signature"),
    ("content_commitment", "Content Commitment"),
    ("key_encipherment", "Key Encipherment"),
    ("data_encipherment", "Data Encipherment"),
    ("key_agreement", "Key Agreement"),
    ("key_cert_sign", "Certificate Signing"),
    ("crl_sign", "CRL Signing"),
)


_SIGNATURES = {
    SignatureAlgorithmOID.ECDSA_WITH_SHA256: "ecdsa, sha256",
    SignatureAlgorithmOID.ECDSA_WITH_SHA384: "ecdsa, sha384",
    SignatureAlgorithmOID.RSA_WITH_SHA256: "sha256, rsa",
}


def _naive_name(name: x509.Name) -> dict[str, Any]:
    def joined(oid: x509.ObjectIdentifier) -> str | None:
        values = [str(a.value) for a in name.get_attributes_for_oid(oid)]
        return ",".join(values) if values else None

    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    out: dict[str, Any] = {
        "C": joined(NameOID.COUNTRY_NAME),
        "CN": str(cns[-1].value) if cns else "",
        "L": joined(NameOID.LOCALITY_NAME),
        "O": joined(NameOID.ORGANIZATION_NAME),
        "OU": joined(NameOID.ORGANIZATIONAL_UNIT_NAME),
        "ST": joined(NameOID.STATE_OR_PROVINCE_NAME),
    }
    out["aggregated"] = "".join(f"/{k}={v}" for k, v in out.items() if v is not None)
    out["email_address"] = joined(NameOID.EMAIL_ADDRESS)
    return out


def _naive_cert(der: bytes, precert: bool = False) -> dict[str, Any]:
    cert = x509.load_der_x509_certificate(der)
    ext: dict[str, Any] = {}
    dns: list[str] = []
    is_ca = False
    for e in cert.extensions:
        v = e.value
        if isinstance(v, x509.AuthorityInformationAccess):
            ca = [
                d.access_location.value
                for d in v
                if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS
            ]
            ocsp = [
                d.access_location.value
                for d in v
                if d.access_method == AuthorityInformationAccessOID.OCSP
            ]
            ext["authorityInfoAccess"] = ", ".join(f"URI:{u}" for u in ca + ocsp)
        elif isinstance(v, x509.AuthorityKeyIdentifier):
            kid = v.key_identifier or b""
            ext["authorityKeyIdentifier"] = "keyid:" + ":".join(f"{b:02x}" for b in kid)
        elif isinstance(v, x509.BasicConstraints):
            is_ca = v.ca
            ext["basicConstraints"] = "CA:TRUE" if v.ca else "CA:FALSE"
        elif isinstance(v, x509.CertificatePolicies):
            ext["certificatePolicies"] = "".join(
                f"Policy: {p.policy_identifier.dotted_string}\n" for p in v
            )
        elif isinstance(v, x509.KeyUsage):
            ext["keyUsage"] = ", ".join(label for attr, label in _KU if getattr(v, attr))
        elif isinstance(v, x509.SubjectAlternativeName):
            dns = v.get_values_for_type(x509.DNSName)
            parts = [f"DNS:{d}" for d in dns]
            parts += [f"email:{m}" for m in v.get_values_for_type(x509.RFC822Name)]
            parts += [f"IP Address:{a}" for a in v.get_values_for_type(x509.IPAddress)]
            ext["subjectAltName"] = ", ".join(parts)
        elif isinstance(v, x509.SubjectKeyIdentifier):
            ext["subjectKeyIdentifier"] = "keyid:" + ":".join(f"{b:02x}" for b in v.digest)
        elif e.oid == ExtensionOID.PRECERT_POISON:
            precert = True
    if precert:
        ext["ctlPoisonByte"] = True
    subject = _naive_name(cert.subject)
    if subject["CN"] and not is_ca and subject["CN"] not in dns:
        dns.append(subject["CN"])
    sha1 = ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA1()))
    serial = f"{cert.serial_number:X}"
    return {
        "all_domains": dns,
        "as_der": base64.b64encode(der).decode(),
        "extensions": ext,
        "fingerprint": sha1,
        "sha1": sha1,
        "sha256": ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256())),
        "not_after": int(cert.not_valid_after_utc.timestamp()),
        "not_before": int(cert.not_valid_before_utc.timestamp()),
        "serial_number": serial if len(serial) % 2 == 0 else "0" + serial,
        "signature_algorithm": _SIGNATURES.get(cert.signature_algorithm_oid, "unknown"),
        "subject": subject,
        "issuer": _naive_name(cert.issuer),
        "is_ca": is_ca,
    }


def naive_data(index: int, leaf_input: bytes, extra: bytes) -> dict[str, Any]:
    entry: LogEntry = decode_rfc6962_entry(index, leaf_input, extra)
    return {
        "cert_index": entry.index,
        "cert_link": _link(index),
        "chain": [_naive_cert(der) for der in entry.chain],
        "leaf_cert": _naive_cert(entry.cert_der, entry.entry_type is EntryType.PRECERT),
        "seen": time.time(),
        "source": {
            "name": SOURCE.name,
            "url": SOURCE.url,
            "timestamp": entry.timestamp_ms / 1000,
            "type": "rfc6962",
        },
        "update_type": entry.entry_type.update_type,
    }


def naive_message(index: int, leaf_input: bytes, extra: bytes) -> bytes:
    data = naive_data(index, leaf_input, extra)
    leaf = data["leaf_cert"]
    full = json.dumps(
        {"data": data, "message_type": "certificate_update"},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    del data["chain"], leaf["as_der"]
    lite = json.dumps(
        {"data": data, "message_type": "certificate_update"},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    domains = json.dumps(
        {"data": leaf["all_domains"], "message_type": "dns_entries"}, separators=(",", ":")
    )
    return (full + lite + domains).encode()


def rate(
    fn: Callable[[int, bytes, bytes], bytes], entries: list[RawEntry], seconds: float
) -> float:
    """Entries per second: best of repeated passes over `entries` for about `seconds`."""
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        start = time.process_time()
        for index, leaf_input, extra in entries:
            fn(index, leaf_input, extra)
        best = min(best, time.process_time() - start)
        if time.perf_counter() > deadline:
            return len(entries) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=2000, help="distinct entries in the mix")
    parser.add_argument("--seconds", type=float, default=10.0, help="time per measurement")
    args = parser.parse_args()

    built = time.perf_counter()
    entries = make_entries(args.entries)
    print(
        f"mix: {len(entries)} entries built in {time.perf_counter() - built:.1f} s "
        f"(python {platform.python_version()})"
    )
    sizes = sorted(len(extra) + len(leaf) for _, leaf, extra in entries)
    print(f"entry bytes (leaf_input+extra_data): median {sizes[len(sizes) // 2]}")
    # Both builders must produce the same certificate objects, or the ratio means nothing.
    for raw in entries[:100]:
        ours_data, naive = json.loads(certlake_message(*raw))["data"], naive_data(*raw)
        assert ours_data["leaf_cert"] == naive["leaf_cert"], raw[0]
        assert ours_data["chain"] == naive["chain"], raw[0]
    print("certlake and the naive builder agree on the first 100 entries")
    full_sizes = sorted(len(certlake_message(*e)) for e in entries[:200])
    print(f"full message bytes: median {full_sizes[len(full_sizes) // 2]}")

    decode_only = rate(
        lambda i, li, ed: decode_rfc6962_entry(i, li, ed).cert_der, entries, args.seconds / 4
    )
    ours = rate(certlake_message, entries, args.seconds)
    naive = rate(naive_message, entries, args.seconds / 2)
    print(f"decode only                         : {decode_only:10,.0f} entries/s")
    print(
        f"certlake decode+parse+3 payloads    : {ours:10,.0f} entries/s ({1e6 / ours:.1f} µs/entry)"
    )
    print(
        f"naive cryptography object API       : {naive:10,.0f} entries/s "
        f"({1e6 / naive:.1f} µs/entry)"
    )
    print(f"ratio                               : {ours / naive:10.1f} x")


if __name__ == "__main__":
    main()

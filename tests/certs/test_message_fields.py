"""Every field of the message, checked against values computed here with `cryptography`'s object
API (an implementation independent of certlake's DER walker), for a spread of factory
certificates: DV/OV subjects, 0–50 SANs, email/IP SANs, ECDSA/RSA leaves and issuers,
certificates and precertificates."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.x509.oid import NameOID

from certlake.certs.certificate import certificate_object
from certlake.certs.message import build_message
from certlake.ct.entry import LogSource
from certlake.testlog.certs import CertFactory, IssuedCert, IssuedPrecert, LeafSpec
from support.leaf_cert import leaf_cert
from support.reference_cert import expected_object

SEEN = 1_750_000_123.456


def spec_cases(factory: CertFactory) -> list[tuple[str, LeafSpec]]:
    start = datetime(2025, 7, 1, 12, 30, 15, tzinfo=UTC)
    base = factory.random_spec(sans=3, key_type="ec", not_before=start)
    return [
        ("dv-ec", base),
        ("dv-rsa-key", factory.random_spec(sans=2, key_type="rsa")),
        ("fifty-sans", factory.random_spec(sans=50)),
        ("cn-only", factory.random_spec(sans=0)),
        (
            "ov-full-subject",
            LeafSpec(
                dns_names=("shop.example.de", "*.shop.example.de"),
                serial=0x0ABC,  # odd hex length: Go pads it to 0ABC
                not_before=start,
                not_after=start + timedelta(days=397),
                common_name="cn-not-in-sans.example.de",
                organization="Beispiel & Söhne GmbH",
                organizational_unit="IT",
                country="DE",
                state="Bayern",
                locality="München",
                email_address="hostmaster@example.de",
                emails=("admin@example.de",),
                ip_addresses=("192.0.2.1", "2001:db8::1", "::ffff:198.51.100.7"),
                key_type="ec",
                policies=("2.23.140.1.2.2", "1.3.6.1.4.1.44947.1.1.1"),
                cps_qualifier=True,
                extra_subject=(
                    (NameOID.ORGANIZATIONAL_UNIT_NAME, "Web"),  # repeated OU: joined with ","
                    (NameOID.STREET_ADDRESS, "Marienplatz 1"),  # ignored: ST is the state
                ),
            ),
        ),
        (
            "no-cn",
            LeafSpec(
                dns_names=("nocn.example.org",),
                serial=(1 << 126) + 5,
                not_before=start,
                not_after=start + timedelta(days=90),
            ),
        ),
    ]


@pytest.fixture(scope="module")
def issued(factory: CertFactory) -> list[tuple[str, IssuedCert | IssuedPrecert]]:
    out: list[tuple[str, IssuedCert | IssuedPrecert]] = []
    for name, spec in spec_cases(factory):
        out.append((f"{name}/cert/ec", factory.issue(spec)))
        out.append((f"{name}/precert/ec", factory.issue_precert(spec)))
    out.append(("rsa-issuer/cert", factory.issue(factory.random_spec(), signer="rsa")))
    out.append(("rsa-issuer/precert", factory.issue_precert(factory.random_spec(), signer="rsa")))
    return out


def test_every_field_matches_the_object_api(
    issued: list[tuple[str, IssuedCert | IssuedPrecert]], entry_of: Any, source: LogSource
) -> None:
    for label, item in issued:
        entry = entry_of(item, index=7)
        message = build_message(entry, source, SEEN, "https://link.test/x")
        precert = isinstance(item, IssuedPrecert)
        leaf_der = item.precert_der if isinstance(item, IssuedPrecert) else item.der
        full = json.loads(message.full)
        data = full["data"]
        expected_leaf = expected_object(leaf_der, precert)
        assert data["leaf_cert"] == expected_leaf, label
        assert data["chain"] == [expected_object(der) for der in item.chain], label
        assert data["update_type"] == ("PrecertLogEntry" if precert else "X509LogEntry")
        assert data["cert_index"] == 7
        assert data["seen"] == SEEN
        assert data["source"] == {
            "name": source.name,
            "url": source.url,
            "timestamp": entry.timestamp_ms / 1000,
            "type": "rfc6962",
        }
        assert leaf_cert(message) == expected_leaf, label


def test_archive_fields_agree_with_the_message(
    issued: list[tuple[str, IssuedCert | IssuedPrecert]], entry_of: Any, source: LogSource
) -> None:
    for label, item in issued:
        message = build_message(entry_of(item, index=9), source, SEEN, "https://link.test/9")
        data = json.loads(message.full)["data"]
        leaf = data["leaf_cert"]
        assert (message.cert_index, message.update_type, message.seen) == (
            9,
            data["update_type"],
            SEEN,
        )
        assert (message.source_name, message.source_url, message.cert_link) == (
            source.name,
            source.url,
            "https://link.test/9",
        )
        for name in (
            "serial_number",
            "fingerprint",
            "sha256",
            "sha1",
            "not_before",
            "not_after",
            "is_ca",
            "signature_algorithm",
            "all_domains",
            "as_der",
        ):
            assert getattr(message, name) == leaf[name], (label, name)
        assert message.subject_aggregated == leaf["subject"]["aggregated"]
        assert message.issuer_aggregated == leaf["issuer"]["aggregated"]
        assert [json.loads(doc) for doc in message.chain] == data["chain"], label
        assert base64.b64decode(message.as_der) == (
            item.precert_der if isinstance(item, IssuedPrecert) else item.der
        )


def test_specific_go_rules(factory: CertFactory, entry_of: Any, source: LogSource) -> None:
    """Spot checks of rules the oracle above encodes, stated as literal expectations."""
    cases = dict(spec_cases(factory))
    leaf = leaf_cert(
        build_message(entry_of(factory.issue(cases["ov-full-subject"])), source, SEEN, "")
    )
    assert leaf["serial_number"] == "0ABC"
    assert leaf["subject"]["OU"] == "IT,Web"
    assert leaf["subject"]["ST"] == "Bayern"
    assert leaf["subject"]["email_address"] == "hostmaster@example.de"
    assert leaf["subject"]["aggregated"] == (
        "/C=DE/CN=cn-not-in-sans.example.de/L=München/O=Beispiel & Söhne GmbH/OU=IT,Web/ST=Bayern"
    )
    assert leaf["all_domains"] == [
        "shop.example.de",
        "*.shop.example.de",
        "cn-not-in-sans.example.de",
    ]
    assert leaf["extensions"]["subjectAltName"] == (
        "DNS:shop.example.de, DNS:*.shop.example.de, email:admin@example.de, "
        "IP Address:192.0.2.1, IP Address:2001:db8::1, IP Address:198.51.100.7"
    )
    assert leaf["extensions"]["certificatePolicies"] == (
        "Policy: 2.23.140.1.2.2\nPolicy: 1.3.6.1.4.1.44947.1.1.1\n"
    )
    assert leaf["issuer"]["CN"] == "certlake Test CA E1"

    no_cn = leaf_cert(build_message(entry_of(factory.issue(cases["no-cn"])), source, SEEN, ""))
    assert no_cn["subject"]["CN"] == ""
    assert no_cn["subject"]["aggregated"] == "/CN="
    assert no_cn["all_domains"] == ["nocn.example.org"]

    # A CA certificate logged as a leaf: its CN is not a domain, and it has no SAN.
    root = leaf_cert(build_message(entry_of(IssuedCert(factory.root_der, ())), source, SEEN, ""))
    assert root["is_ca"] is True
    assert root["all_domains"] == []
    assert root["signature_algorithm"] == "ecdsa, sha384"
    assert root["extensions"]["basicConstraints"] == "CA:TRUE"
    assert "authorityKeyIdentifier" not in root["extensions"]


def test_ipv6_and_mapped_addresses_print_like_go() -> None:
    # Go's net.IP.String(): v4-mapped addresses as dotted quads, IPv6 compressed (RFC 5952).
    addresses = {
        "2001:db8:0:0:1:0:0:1": "2001:db8::1:0:0:1",
        "::ffff:10.0.0.1": "10.0.0.1",
        "fe80::": "fe80::",
        "::": "::",
    }
    factory = CertFactory(seed=5)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    spec = LeafSpec(
        dns_names=("ip.example",),
        serial=77,
        not_before=start,
        not_after=start + timedelta(days=1),
        ip_addresses=tuple(addresses),
    )
    text = certificate_object(factory.issue(spec).der)["extensions"]["subjectAltName"]
    assert text == "DNS:ip.example, " + ", ".join(f"IP Address:{v}" for v in addresses.values())

"""The real Argon2025h2 precert entry (index 912557348) through decode and the message builder."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from certlake.certs.message import CertMessage, build_message
from certlake.ct.entry import LogEntry, LogKind, LogSource
from certlake.ct.leaf import decode_rfc6962_entry
from support.leaf_cert import leaf_cert

INDEX = 912557348
URL = "https://ct.googleapis.com/logs/us1/argon2025h2"
SOURCE = LogSource(URL, "Google 'Argon2025h2' log", LogKind.RFC6962)
WR2_KEY_ID = "de:1b:1e:ed:79:15:d4:3e:37:24:c3:21:bb:ec:34:39:6d:42:b2:30"
LEAF_KEY_ID = "9f:fd:32:ee:a0:4e:ce:52:48:b4:29:a6:57:7a:7b:1a:07:bc:cf:81"
LINK = f"{URL}/ct/v1/get-entries?start={INDEX}&end={INDEX}"


@pytest.fixture(scope="module")
def entry(shared_data: Path) -> LogEntry:
    doc = json.loads((shared_data / "rfc6962/argon2025h2-get-entries-912557348.json").read_text())
    (raw,) = doc["entries"]
    return decode_rfc6962_entry(
        INDEX, base64.b64decode(raw["leaf_input"]), base64.b64decode(raw["extra_data"])
    )


@pytest.fixture(scope="module")
def message(entry: LogEntry) -> CertMessage:
    return build_message(entry, SOURCE, 1_748_857_000.5, LINK)


def colon(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


def test_leaf_comes_from_the_precertificate(entry: LogEntry, message: CertMessage) -> None:
    data = json.loads(message.full)["data"]
    leaf = data["leaf_cert"]
    precert = entry.cert_der
    assert leaf["sha256"] == colon(hashlib.sha256(precert).digest()) == message.sha256
    assert leaf["sha1"] == leaf["fingerprint"] == colon(hashlib.sha1(precert).digest())
    assert base64.b64decode(leaf["as_der"]) == precert
    assert leaf["extensions"]["ctlPoisonByte"] is True
    assert data["update_type"] == "PrecertLogEntry"
    assert data["cert_index"] == INDEX
    assert data["cert_link"] == LINK
    assert data["source"] == {
        "name": SOURCE.name,
        "url": URL,
        "timestamp": entry.timestamp_ms / 1000,
        "type": "rfc6962",
    }


def test_leaf_fields(entry: LogEntry, message: CertMessage) -> None:
    cert = x509.load_der_x509_certificate(entry.cert_der)
    leaf = leaf_cert(message)
    assert leaf["serial_number"] == "133392502140A8CF12801DA61896855E"
    assert int(leaf["serial_number"], 16) == cert.serial_number
    assert leaf["subject"]["CN"] == "*.google.com"
    assert leaf["subject"]["aggregated"] == "/CN=*.google.com"
    assert leaf["issuer"] == {
        "C": "US",
        "CN": "WR2",
        "L": None,
        "O": "Google Trust Services",
        "OU": None,
        "ST": None,
        "aggregated": "/C=US/CN=WR2/O=Google Trust Services",
        "email_address": None,
    }
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert leaf["all_domains"] == san.get_values_for_type(x509.DNSName)
    assert leaf["all_domains"][0] == "*.google.com"
    assert "google.com" in leaf["all_domains"] and "youtube.com" in leaf["all_domains"]
    assert leaf["not_before"] == int(cert.not_valid_before_utc.timestamp()) == 1748853330
    assert leaf["not_after"] == int(cert.not_valid_after_utc.timestamp()) == 1756110929
    assert leaf["signature_algorithm"] == "sha256, rsa"
    assert leaf["is_ca"] is False
    assert leaf["extensions"] == {
        "authorityInfoAccess": "URI:http://i.pki.goog/wr2.crt, URI:http://o.pki.goog/wr2",
        "authorityKeyIdentifier": "keyid:" + WR2_KEY_ID,
        "basicConstraints": "CA:FALSE",
        "certificatePolicies": "Policy: 2.23.140.1.2.1\n",
        "keyUsage": "Digital Signature",
        "subjectAltName": ", ".join(f"DNS:{d}" for d in leaf["all_domains"]),
        "subjectKeyIdentifier": "keyid:" + LEAF_KEY_ID,
        "ctlPoisonByte": True,
    }


def test_chain(entry: LogEntry, message: CertMessage) -> None:
    chain = json.loads(message.full)["data"]["chain"]
    assert len(chain) == len(message.chain) == 3
    names = [c["subject"]["CN"] for c in chain]
    assert names == ["WR2", "GTS Root R1", "GlobalSign Root CA"]
    for element, der in zip(chain, entry.chain, strict=True):
        cert = x509.load_der_x509_certificate(der)
        assert element["sha256"] == colon(hashlib.sha256(der).digest())
        assert element["is_ca"] is True
        assert element["all_domains"] == []
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert element["subject"]["CN"] == cn
    assert chain[2]["signature_algorithm"] == "md5, rsa"  # the 1998 GlobalSign root
    assert chain[2]["serial_number"] == "020000000000D678B79405"  # Go's even-length padding
    assert chain[0]["extensions"]["keyUsage"] == (
        "Digital Signature, Certificate Signing, CRL Signing"
    )


def test_domains_payload(message: CertMessage) -> None:
    assert message.domains.startswith(b'{"data":["*.google.com","*.appengine.google.com",')
    assert json.loads(message.domains) == {
        "data": message.all_domains,
        "message_type": "dns_entries",
    }

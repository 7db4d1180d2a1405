"""Signature algorithm names and validity times for certificates the factory does not make:
RSASSA-PSS, Ed25519, ECDSA-SHA512, GeneralizedTime dates (2050 and later)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from certlake.certs.certificate import certificate_object

NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "algo.example")])


def self_signed(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
    algorithm: hashes.HashAlgorithm | None,
    *,
    not_before: datetime = datetime(2025, 1, 1, tzinfo=UTC),
    not_after: datetime = datetime(2026, 1, 1, tzinfo=UTC),
    rsa_padding: padding.PSS | None = None,
) -> bytes:
    builder = (
        x509.CertificateBuilder()
        .subject_name(NAME)
        .issuer_name(NAME)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    return builder.sign(key, algorithm, rsa_padding=rsa_padding).public_bytes(Encoding.DER)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.mark.parametrize(
    ("digest", "salt", "name"),
    [
        (hashes.SHA256(), 32, "sha256, rsa-pss"),
        (hashes.SHA384(), 48, "sha384, rsa-pss"),
        (hashes.SHA512(), 64, "sha512, rsa-pss"),
        (hashes.SHA256(), 20, "unknown"),  # Go only names PSS whose salt equals the hash size
    ],
)
def test_rsa_pss(
    rsa_key: rsa.RSAPrivateKey, digest: hashes.HashAlgorithm, salt: int, name: str
) -> None:
    pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=salt)
    der = self_signed(rsa_key, digest, rsa_padding=pss)
    assert certificate_object(der)["signature_algorithm"] == name


def test_other_algorithms(rsa_key: rsa.RSAPrivateKey) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    cases = {
        "ed25519": self_signed(ed25519.Ed25519PrivateKey.generate(), None),
        "ecdsa, sha512": self_signed(p384, hashes.SHA512()),
        "sha384, rsa": self_signed(rsa_key, hashes.SHA384()),
        "sha512, rsa": self_signed(rsa_key, hashes.SHA512()),
        "unknown": self_signed(rsa_key, hashes.SHA224()),
    }
    for name, der in cases.items():
        assert certificate_object(der)["signature_algorithm"] == name


def test_generalized_times() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    before = datetime(1950, 1, 1, 0, 0, 1, tzinfo=UTC)  # UTCTime "50…": 1950, not 2050
    after = datetime(2051, 6, 30, 12, 0, 1, tzinfo=UTC)  # GeneralizedTime
    der = self_signed(key, hashes.SHA256(), not_before=before, not_after=after)
    cert = certificate_object(der)
    assert cert["not_before"] == int(before.timestamp()) < 0
    assert cert["not_after"] == int(after.timestamp())
    loaded = x509.load_der_x509_certificate(der)
    assert cert["not_after"] == int(loaded.not_valid_after_utc.timestamp())

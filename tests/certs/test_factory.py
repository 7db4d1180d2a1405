"""The certificate factory issues real, verifiable certificates and RFC 6962 precert data."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from certlake.testlog.certs import CertFactory

POISON = x509.oid.ExtensionOID.PRECERT_POISON


def test_chains_verify(factory: CertFactory) -> None:
    for signer in ("ec", "rsa"):
        leaf_der, (intermediate_der, root_der) = (
            (issued := factory.issue(signer=signer)).der,
            issued.chain,
        )
        leaf, intermediate, root = (
            x509.load_der_x509_certificate(d) for d in (leaf_der, intermediate_der, root_der)
        )
        leaf.verify_directly_issued_by(intermediate)
        intermediate.verify_directly_issued_by(root)
        root.verify_directly_issued_by(root)
        assert root_der == factory.root_der
        assert intermediate_der == factory.intermediate(signer)


def test_precert_is_poisoned_and_its_tbs_is_the_final_certificates(factory: CertFactory) -> None:
    for signer in ("ec", "rsa"):
        spec = factory.random_spec(sans=4)
        pre = factory.issue_precert(spec, signer=signer)
        precert = x509.load_der_x509_certificate(pre.precert_der)
        poison = precert.extensions.get_extension_for_oid(POISON)
        assert poison.critical and isinstance(poison.value, x509.PrecertPoison)
        precert.verify_directly_issued_by(x509.load_der_x509_certificate(pre.chain[0]))
        # RFC 6962 §3.2: the logged TBS is what the final certificate for the same fields signs.
        final = x509.load_der_x509_certificate(factory.issue(spec, signer=signer).der)
        assert pre.tbs == final.tbs_certificate_bytes
        assert pre.tbs != precert.tbs_certificate_bytes
        issuer = x509.load_der_x509_certificate(pre.chain[0])
        spki = issuer.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        assert pre.issuer_key_hash == hashlib.sha256(spki).digest()
        assert pre.issuer_key_hash == factory.issuer_key_hash(signer)


def test_seeded_and_deterministic() -> None:
    a, b, c = CertFactory(seed=3), CertFactory(seed=3), CertFactory(seed=4)
    assert [a.issue().der for _ in range(5)] == [b.issue().der for _ in range(5)]
    assert a.issue_precert() == b.issue_precert()
    assert a.root_der == b.root_der != c.root_der


def test_spec_shapes(factory: CertFactory) -> None:
    fifty = x509.load_der_x509_certificate(factory.issue(factory.random_spec(sans=50)).der)
    san = fifty.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert len(san.get_values_for_type(x509.DNSName)) == 50

    bare = x509.load_der_x509_certificate(factory.issue(factory.random_spec(sans=0)).der)
    assert not any(isinstance(e.value, x509.SubjectAlternativeName) for e in bare.extensions)

    rsa_leaf = x509.load_der_x509_certificate(
        factory.issue(factory.random_spec(key_type="rsa")).der
    )
    assert rsa_leaf.public_key().key_size == 2048  # type: ignore[union-attr]

    kinds = {type(e.value) for e in fifty.extensions}
    assert {
        x509.AuthorityInformationAccess,
        x509.AuthorityKeyIdentifier,
        x509.SubjectKeyIdentifier,
        x509.BasicConstraints,
        x509.KeyUsage,
        x509.ExtendedKeyUsage,
        x509.CertificatePolicies,
    } <= kinds


def test_random_mix_varies(factory: CertFactory) -> None:
    specs = [factory.random_spec() for _ in range(300)]
    counts = [len(s.dns_names) for s in specs]
    assert min(counts) >= 1 and max(counts) <= 50 and max(counts) > 12
    assert any(s.organization for s in specs) and any(not s.organization for s in specs)
    assert {s.key_type for s in specs} == {"ec", "rsa"}
    assert any(s.emails and s.ip_addresses for s in specs)
    assert len({s.serial for s in specs}) == 300

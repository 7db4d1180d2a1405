"""Real X.509 certificates and precertificates for the test log, tests and benchmarks.

A `CertFactory` owns a root CA (ECDSA P-384) and two intermediates it signed (ECDSA P-256 and
RSA-2048); leaves and precertificates are signed by an intermediate and carry what public
WebPKI leaves carry: SANs, subject attributes, AIA, AKI/SKI, basic constraints, key usage, EKU
and certificate policies.

Determinism: names, serials and dates come from `random.Random(seed)` and the ECDSA keys are
derived from it too; ECDSA signatures are deterministic (RFC 6979), so everything issued under
the ECDSA intermediate with ECDSA leaf keys is byte-identical for a given seed. RSA keys cannot
be derived from a seed with `cryptography` and take ~60 ms each to generate, so one small pool
is generated on first use and shared by every factory in the process.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

KeyType = Literal["ec", "rsa"]

DV_POLICY = "2.23.140.1.2.1"
OV_POLICY = "2.23.140.1.2.2"
CPS_URI = "https://cps.certlake.test/"

_LEAF_POOL_SIZE = 4
_RSA_POOL_SIZE = 2
_DEFAULT_EPOCH = datetime(2025, 6, 1, tzinfo=UTC)
_WORDS = (
    "alpha",
    "bravo",
    "cloud",
    "delta",
    "echo",
    "forge",
    "grid",
    "harbor",
    "index",
    "jade",
    "kite",
    "lumen",
    "metro",
    "nova",
    "orbit",
    "pixel",
    "quartz",
    "relay",
    "summit",
    "tango",
)
_TLDS = ("com", "net", "org", "io", "dev", "de", "co.uk", "fr", "nl", "com.br")
_CITIES = (
    ("US", "California", "San Francisco"),
    ("DE", "Bayern", "München"),
    ("GB", "Oxfordshire", "Oxford"),
    ("JP", "Tokyo", "Chiyoda"),
)


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """A final certificate and its chain (intermediate, then root)."""

    der: bytes
    chain: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class IssuedPrecert:
    """A precertificate as submitted to a log and the RFC 6962 fields derived from it.

    `precert_der` carries the poison extension and the CA's signature; `tbs` is the logged
    TBSCertificate (the same certificate without the poison); `issuer_key_hash` is SHA-256 of the
    issuer's SubjectPublicKeyInfo.
    """

    precert_der: bytes
    tbs: bytes
    issuer_key_hash: bytes
    chain: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class LeafSpec:
    """What goes into one leaf. `None` attributes are left out of the subject."""

    dns_names: tuple[str, ...]
    serial: int
    not_before: datetime
    not_after: datetime
    common_name: str | None = None
    organization: str | None = None
    organizational_unit: str | None = None
    country: str | None = None
    state: str | None = None
    locality: str | None = None
    email_address: str | None = None
    emails: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    key_type: KeyType = "ec"
    policies: tuple[str, ...] = (DV_POLICY,)
    cps_qualifier: bool = False
    extra_subject: tuple[tuple[x509.ObjectIdentifier, str], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class _Issuer:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    cert: x509.Certificate
    der: bytes
    key_hash: bytes
    ski: x509.SubjectKeyIdentifier
    hash_algorithm: hashes.SHA256 | hashes.SHA384
    # What every certificate it signs carries about it, built once.
    aki: x509.AuthorityKeyIdentifier
    aia: x509.AuthorityInformationAccess


@cache
def _rsa_keys() -> tuple[rsa.RSAPrivateKey, ...]:
    return tuple(rsa.generate_private_key(65537, 2048) for _ in range(_RSA_POOL_SIZE))


def _derived_ec_key(rng: random.Random, curve: ec.EllipticCurve) -> ec.EllipticCurvePrivateKey:
    # Any integer in [1, n-1] is a valid private scalar; 200 bits is below every curve's order.
    return ec.derive_private_key(rng.getrandbits(200) | 1, curve)


class CertFactory:
    """Issues certificates under its own root → intermediate hierarchy; see the module doc."""

    def __init__(self, seed: int, epoch: datetime = _DEFAULT_EPOCH) -> None:
        self._rng = random.Random(seed)
        self._epoch = epoch
        root_key = _derived_ec_key(self._rng, ec.SECP384R1())
        root_name = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certlake Test Trust"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"certlake Test Root {seed}"),
            ]
        )
        root_ski = x509.SubjectKeyIdentifier.from_public_key(root_key.public_key())
        root_cert = self._sign(
            x509.CertificateBuilder()
            .subject_name(root_name)
            .issuer_name(root_name)
            .public_key(root_key.public_key())
            .serial_number(self._serial())
            .not_valid_before(epoch - timedelta(days=3650))
            .not_valid_after(epoch + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(root_ski, critical=False),
            root_key,
            hashes.SHA384(),
        )
        self._root = _issuer(root_key, root_cert, hashes.SHA384())
        self.root_der = self._root.der
        self._intermediates: dict[KeyType, _Issuer | None] = {
            "ec": self._intermediate("E1", _derived_ec_key(self._rng, ec.SECP256R1())),
            "rsa": None,
        }
        self._ec_leaf_keys = [
            _derived_ec_key(self._rng, ec.SECP256R1()) for _ in range(_LEAF_POOL_SIZE)
        ]

    # --- public API -----------------------------------------------------------------------

    def intermediate(self, signer: KeyType = "ec") -> bytes:
        """DER of the intermediate that signs leaves for `signer`."""
        return self._signer(signer).der

    def issuer_key_hash(self, signer: KeyType = "ec") -> bytes:
        return self._signer(signer).key_hash

    def chain(self, signer: KeyType = "ec") -> tuple[bytes, ...]:
        """What a log's extra_data carries after the leaf: intermediate, then root."""
        return (self._signer(signer).der, self._root.der)

    def random_spec(
        self,
        *,
        sans: int | None = None,
        key_type: KeyType | None = None,
        not_before: datetime | None = None,
    ) -> LeafSpec:
        """A plausible leaf: mostly DV with 1–3 names, some OV with more, a few up to 50 SANs,
        occasionally email/IP SANs and an emailAddress attribute."""
        rng = self._rng
        if sans is None:
            roll = rng.random()
            low, high = (1, 3) if roll < 0.6 else (4, 12) if roll < 0.9 else (13, 50)
            sans = rng.randint(low, high)
        base = f"{rng.choice(_WORDS)}-{rng.randrange(10**6)}.{rng.choice(_TLDS)}"
        # sans=0 gives a certificate without SAN whose only name is its CN.
        names = [base, f"*.{base}", f"www.{base}"][: min(sans, 3)]
        names += [f"{rng.choice(_WORDS)}{i}.{base}" for i in range(sans - len(names))]
        start = not_before or self._epoch + timedelta(seconds=rng.randrange(86400 * 30))
        ov = rng.random() < 0.3
        country, state, city = rng.choice(_CITIES)
        rare = rng.random() < 0.08
        return LeafSpec(
            dns_names=tuple(names),
            serial=self._serial(),
            not_before=start,
            not_after=start + timedelta(days=rng.choice((90, 90, 47, 198, 397))),
            common_name=base,
            organization=f"{rng.choice(_WORDS).title()} Holdings" if ov else None,
            organizational_unit="Web Services" if ov and rare else None,
            country=country if ov else None,
            state=state if ov else None,
            locality=city if ov else None,
            email_address=f"hostmaster@{base}" if ov and rare else None,
            emails=(f"admin@{base}",) if rare else (),
            ip_addresses=("192.0.2.10", "2001:db8::10") if rare else (),
            key_type=key_type or ("rsa" if rng.random() < 0.25 else "ec"),
            policies=(OV_POLICY,) if ov else (DV_POLICY,),
            cps_qualifier=ov,
        )

    def issue(self, spec: LeafSpec | None = None, *, signer: KeyType = "ec") -> IssuedCert:
        """A final certificate signed by the `signer` intermediate."""
        issuer = self._signer(signer)
        cert = self._sign(
            self._leaf_builder(spec or self.random_spec(), issuer),
            issuer.key,
            issuer.hash_algorithm,
        )
        return IssuedCert(cert.public_bytes(Encoding.DER), self.chain(signer))

    def issue_precert(
        self, spec: LeafSpec | None = None, *, signer: KeyType = "ec"
    ) -> IssuedPrecert:
        """A precertificate signed by the `signer` intermediate (RFC 6962 §3.1, no separate
        precertificate-signing CA), with its logged TBS and issuer key hash."""
        issuer = self._signer(signer)
        builder = self._leaf_builder(spec or self.random_spec(), issuer)
        poisoned = builder.add_extension(x509.PrecertPoison(), critical=True)
        precert = self._sign(poisoned, issuer.key, issuer.hash_algorithm)
        # RFC 6962's logged TBS is the precert's TBSCertificate without the poison: the same
        # builder (same fields, same extension order) signed without it. (`cryptography`'s
        # `tbs_precertificate_bytes` only works on final certificates carrying SCTs.)
        logged = self._sign(builder, issuer.key, issuer.hash_algorithm)
        return IssuedPrecert(
            precert_der=precert.public_bytes(Encoding.DER),
            tbs=logged.tbs_certificate_bytes,
            issuer_key_hash=issuer.key_hash,
            chain=self.chain(signer),
        )

    # --- internals ------------------------------------------------------------------------

    def _serial(self) -> int:
        # 16 random bytes, positive; about 1 in 16 has a leading nibble of 0, exercising Go's
        # even-length padding of the serial's hex.
        return self._rng.getrandbits(127) or 1

    def _signer(self, signer: KeyType) -> _Issuer:
        found = self._intermediates[signer]
        if found is None:
            found = self._intermediates[signer] = self._intermediate("R1", _rsa_keys()[0])
        return found

    def _intermediate(
        self, label: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    ) -> _Issuer:
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certlake Test Trust"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"certlake Test CA {label}"),
            ]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(self._root.cert.subject)
            .public_key(key.public_key())
            .serial_number(self._serial())
            .not_valid_before(self._epoch - timedelta(days=365))
            .not_valid_after(self._epoch + timedelta(days=3 * 365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(self._root.aki, critical=False)
            .add_extension(self._root.aia, critical=False)
            .add_extension(_policies((DV_POLICY, OV_POLICY), cps=False), critical=False)
        )
        cert = self._sign(builder, self._root.key, self._root.hash_algorithm)
        return _issuer(key, cert, hashes.SHA256())

    def _leaf_builder(self, spec: LeafSpec, issuer: _Issuer) -> x509.CertificateBuilder:
        if spec.key_type == "ec":
            key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = self._ec_leaf_keys[
                spec.serial % _LEAF_POOL_SIZE
            ]
        else:
            key = _rsa_keys()[spec.serial % _RSA_POOL_SIZE]
        general_names: list[x509.GeneralName] = [x509.DNSName(n) for n in spec.dns_names]
        general_names += [x509.RFC822Name(e) for e in spec.emails]
        general_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in spec.ip_addresses]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_subject(spec))
            .issuer_name(issuer.cert.subject)
            .public_key(key.public_key())
            .serial_number(spec.serial)
            .not_valid_before(spec.not_before)
            .not_valid_after(spec.not_after)
            .add_extension(_key_usage(ca=False, rsa=spec.key_type == "rsa"), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(issuer.aki, critical=False)
            .add_extension(issuer.aia, critical=False)
            .add_extension(_policies(spec.policies, cps=spec.cps_qualifier), critical=False)
        )
        if general_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(general_names), critical=not spec.common_name
            )
        return builder

    @staticmethod
    def _sign(
        builder: x509.CertificateBuilder,
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
        algorithm: hashes.SHA256 | hashes.SHA384,
    ) -> x509.Certificate:
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return builder.sign(key, algorithm, ecdsa_deterministic=True)
        return builder.sign(key, algorithm)


def _issuer(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    cert: x509.Certificate,
    hash_algorithm: hashes.SHA256 | hashes.SHA384,
) -> _Issuer:
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ski = x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    slug = hashlib.sha256(spki).hexdigest()[:8]
    return _Issuer(
        key=key,
        cert=cert,
        der=cert.public_bytes(Encoding.DER),
        key_hash=hashlib.sha256(spki).digest(),
        ski=ski,
        hash_algorithm=hash_algorithm,
        aki=x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
        aia=x509.AuthorityInformationAccess(
            [
                x509.AccessDescription(
                    AuthorityInformationAccessOID.OCSP,
                    x509.UniformResourceIdentifier(f"http://ocsp.certlake.test/{slug}"),
                ),
                x509.AccessDescription(
                    AuthorityInformationAccessOID.CA_ISSUERS,
                    x509.UniformResourceIdentifier(f"http://ca.certlake.test/{slug}.der"),
                ),
            ]
        ),
    )


def _subject(spec: LeafSpec) -> x509.Name:
    attributes = [
        (NameOID.COUNTRY_NAME, spec.country),
        (NameOID.STATE_OR_PROVINCE_NAME, spec.state),
        (NameOID.LOCALITY_NAME, spec.locality),
        (NameOID.ORGANIZATION_NAME, spec.organization),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, spec.organizational_unit),
        (NameOID.COMMON_NAME, spec.common_name),
        (NameOID.EMAIL_ADDRESS, spec.email_address),
        *spec.extra_subject,
    ]
    return x509.Name([x509.NameAttribute(oid, v) for oid, v in attributes if v is not None])


def _key_usage(*, ca: bool, rsa: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=rsa and not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _policies(oids: tuple[str, ...], *, cps: bool) -> x509.CertificatePolicies:
    return x509.CertificatePolicies(
        [
            x509.PolicyInformation(x509.ObjectIdentifier(oid), [CPS_URI] if cps else None)
            for oid in oids
        ]
    )

"""Log keys and TLS `DigitallySigned` signatures (RFC 5246 §4.7, as RFC 6962 uses them).

Logs in the list sign with ECDSA P-256 or, for a few old logs, RSA; both are verified here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from certlake.ct.tls import DecodeError, Reader, u, vec

HASH_SHA256 = 4
SIG_RSA = 1
SIG_ECDSA = 3


class SignatureError(ValueError):
    """A signature that does not verify, or cannot be checked (malformed, unsupported key)."""


def log_id(public_key_der: bytes) -> bytes:
    """The RFC 6962 log ID: SHA-256 of the DER SubjectPublicKeyInfo."""
    return hashlib.sha256(public_key_der).digest()


@dataclass(frozen=True, slots=True)
class DigitallySigned:
    hash_algorithm: int
    signature_algorithm: int
    signature: bytes

    @classmethod
    def decode(cls, data: bytes) -> DigitallySigned:
        r = Reader(data, "DigitallySigned")
        try:
            hash_alg = r.uint(1, "hash algorithm")
            sig_alg = r.uint(1, "signature algorithm")
            sig = r.opaque(2, "signature")
            r.expect_end()
        except DecodeError as e:
            raise SignatureError(str(e)) from e
        return cls(hash_alg, sig_alg, sig)

    def encode(self) -> bytes:
        return u(self.hash_algorithm, 1) + u(self.signature_algorithm, 1) + vec(self.signature, 2)


def verify_digitally_signed(public_key_der: bytes, message: bytes, signed: bytes) -> None:
    """Check an encoded `DigitallySigned` over `message` with a DER SPKI key (SHA-256 only)."""
    ds = DigitallySigned.decode(signed)
    if ds.hash_algorithm != HASH_SHA256:
        raise SignatureError(f"unsupported hash algorithm {ds.hash_algorithm} (want SHA-256)")
    try:
        key = load_der_public_key(public_key_der)
    except (ValueError, TypeError) as e:
        raise SignatureError(f"log key is not a usable DER SubjectPublicKeyInfo: {e}") from e
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and ds.signature_algorithm == SIG_ECDSA:
            key.verify(ds.signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey) and ds.signature_algorithm == SIG_RSA:
            key.verify(ds.signature, message, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise SignatureError(
                f"signature algorithm {ds.signature_algorithm} does not match "
                f"the log's {type(key).__name__}"
            )
    except InvalidSignature as e:
        raise SignatureError("signature does not verify with the log's key") from e

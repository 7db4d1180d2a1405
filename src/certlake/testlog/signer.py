"""The signing key of a log we run (the test log): signed tree heads and checkpoints.

Verification of real logs' tree heads is in `ct/sth.py`, `ct/checkpoint.py` and `ct/keys.py`; this
module only signs, so it lives with the test log that is its one user.
"""

from __future__ import annotations

import os
import random

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from certlake.ct.checkpoint import checkpoint_text, note_key_id, signature_line
from certlake.ct.keys import HASH_SHA256, SIG_ECDSA, DigitallySigned, SignatureError, log_id
from certlake.ct.sth import SignedTreeHead, tree_head_message
from certlake.ct.tls import u

GREASE_NAME = "grease.invalid"


class LogSigner:
    """The signing key of a log we run (the test log): ECDSA P-256, as real RFC 6962 logs use."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey | None = None) -> None:
        self._key = private_key or ec.generate_private_key(ec.SECP256R1())
        if not isinstance(self._key.curve, ec.SECP256R1):
            raise SignatureError(f"log keys are P-256, not {self._key.curve.name}")
        self.public_key_der = self._key.public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo
        )
        self.log_id = log_id(self.public_key_der)

    def sign_tree_head(self, tree_size: int, timestamp_ms: int, root: bytes) -> bytes:
        """The encoded DigitallySigned over the TreeHeadSignature."""
        message = tree_head_message(timestamp_ms, tree_size, root)
        der = self._key.sign(message, ec.ECDSA(hashes.SHA256()))
        return DigitallySigned(HASH_SHA256, SIG_ECDSA, der).encode()

    def sign_sth(self, tree_size: int, timestamp_ms: int, root: bytes) -> SignedTreeHead:
        return SignedTreeHead(
            tree_size, timestamp_ms, root, self.sign_tree_head(tree_size, timestamp_ms, root)
        )

    def checkpoint(
        self, origin: str, tree_size: int, timestamp_ms: int, root: bytes, *, grease: bool = True
    ) -> bytes:
        """A signed checkpoint note carrying the RFC 6962 note signature.

        With `grease`, like Sunlight it adds two random signatures a verifier must skip (one
        under `grease.invalid`, one under the log's own name with another key ID, Ed25519-sized)
        and shuffles the lines, so that clients which pick the first line or match by name
        alone fail against us as they would against a real log.
        """
        key_id = note_key_id(origin, self.log_id)
        body = u(timestamp_ms, 8) + self.sign_tree_head(tree_size, timestamp_ms, root)
        lines = [signature_line(origin, key_id, body)]
        if grease:
            other_id = key_id
            while other_id == key_id:
                other_id = os.urandom(4)
            lines.append(signature_line(origin, other_id, os.urandom(64)))
            lines.append(
                signature_line(GREASE_NAME, os.urandom(4), os.urandom(random.randint(5, 104)))
            )
            random.shuffle(lines)
        return (checkpoint_text(origin, tree_size, root) + "\n" + "".join(lines)).encode()

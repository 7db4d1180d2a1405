"""RFC 6962 signed tree heads (`get-sth`): size, timestamp, root and the log's signature."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from certlake.ct.keys import verify_digitally_signed
from certlake.ct.merkle import HASH_SIZE
from certlake.ct.tls import u

_UINT64_MAX = (1 << 64) - 1


class SignedTreeHeadError(ValueError):
    """A `get-sth` response that is not shaped like one."""


def tree_head_message(timestamp_ms: int, tree_size: int, root_hash: bytes) -> bytes:
    """The 50-byte TreeHeadSignature that both get-sth and RFC 6962 note signatures sign."""
    # version v1 (0), signature_type tree_hash (1)
    return b"\x00\x01" + u(timestamp_ms, 8) + u(tree_size, 8) + root_hash


@dataclass(frozen=True, slots=True)
class SignedTreeHead:
    tree_size: int
    timestamp_ms: int
    root_hash: bytes
    signature: bytes  # the encoded TLS DigitallySigned, as in `tree_head_signature`

    @classmethod
    def from_json(cls, obj: Any) -> SignedTreeHead:
        """From a decoded `get-sth` response body."""
        if not isinstance(obj, dict):
            raise SignedTreeHeadError(f"get-sth response is {type(obj).__name__}, not an object")
        root = _b64_field(obj, "sha256_root_hash")
        if len(root) != HASH_SIZE:
            raise SignedTreeHeadError(f"sha256_root_hash is {len(root)} bytes, not {HASH_SIZE}")
        signature = _b64_field(obj, "tree_head_signature")
        if not signature:
            raise SignedTreeHeadError("tree_head_signature is empty")
        return cls(
            tree_size=_uint64_field(obj, "tree_size"),
            timestamp_ms=_uint64_field(obj, "timestamp"),
            root_hash=root,
            signature=signature,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "tree_size": self.tree_size,
            "timestamp": self.timestamp_ms,
            "sha256_root_hash": base64.b64encode(self.root_hash).decode(),
            "tree_head_signature": base64.b64encode(self.signature).decode(),
        }


def verify_sth(sth: SignedTreeHead, public_key_der: bytes) -> None:
    """Raise `SignatureError` unless the log's key signed this tree head."""
    message = tree_head_message(sth.timestamp_ms, sth.tree_size, sth.root_hash)
    verify_digitally_signed(public_key_der, message, sth.signature)


def _uint64_field(obj: dict[str, Any], name: str) -> int:
    value = obj.get(name)
    # bool is an int subclass; `true` is not a tree size.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _UINT64_MAX:
        raise SignedTreeHeadError(f"{name} must be an unsigned 64-bit integer, got {value!r:.60}")
    return value


def _b64_field(obj: dict[str, Any], name: str) -> bytes:
    value = obj.get(name)
    if not isinstance(value, str):
        raise SignedTreeHeadError(f"{name} must be a base64 string, got {value!r:.60}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise SignedTreeHeadError(f"{name} is not valid base64: {e}") from e

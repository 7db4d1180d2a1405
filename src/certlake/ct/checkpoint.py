"""static-ct-api checkpoints: signed notes carrying an RFC 6962 note signature.

Formats: C2SP signed-note, tlog-checkpoint and static-ct-api (the RFC 6962 note signature).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
from dataclasses import dataclass

from certlake.ct.keys import SignatureError, log_id, verify_digitally_signed
from certlake.ct.merkle import HASH_SIZE
from certlake.ct.sth import tree_head_message
from certlake.ct.tls import DecodeError, Reader

SIGNATURE_PREFIX = "\u2014 "  # EM DASH, space
# signed-note signature type byte of an RFC 6962 note signature (key ID preimage).
RFC6962_NOTE_TYPE = 0x05
_KEY_ID_SIZE = 4
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
_UINT64_MAX = (1 << 64) - 1


class CheckpointError(ValueError):
    """Bytes that are not a well-formed checkpoint (signed note)."""


@dataclass(frozen=True, slots=True)
class NoteSignature:
    name: str
    key_id: bytes
    signature: bytes  # the body after the key ID


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    tree_size: int
    root_hash: bytes
    # From the log's RFC 6962 note signature, so known only once `verify_checkpoint` found it.
    timestamp_ms: int | None = None
    extensions: tuple[str, ...] = ()
    signatures: tuple[NoteSignature, ...] = ()


def note_key_id(origin: str, log_id: bytes) -> bytes:
    """Key ID of a log's RFC 6962 note signature: SHA-256(origin ‖ LF ‖ 0x05 ‖ log_id)[:4]."""
    preimage = origin.encode() + b"\n" + bytes([RFC6962_NOTE_TYPE]) + log_id
    return hashlib.sha256(preimage).digest()[:_KEY_ID_SIZE]


def parse_checkpoint(data: bytes) -> Checkpoint:
    """Parse a checkpoint without verifying anything; every defect raises `CheckpointError`.

    Signature lines are kept whatever their name or key ID (grease, witnesses, other algorithms);
    choosing the one to trust is `verify_checkpoint`'s job.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"checkpoint is not UTF-8: {e}") from e
    # Signatures follow the *last* blank line, as in Go's golang.org/x/mod/sumdb/note.
    split = text.rfind("\n\n")
    if split < 0:
        raise CheckpointError("checkpoint has no blank line before its signatures")
    body, block = text[: split + 1], text[split + 2 :]
    lines = body[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError(f"checkpoint text has {len(lines)} lines, need origin, size, root")
    origin, size_text, root_text, *extensions = lines
    if not origin:
        raise CheckpointError("checkpoint origin (line 1) is empty")
    if any(not line for line in extensions):
        raise CheckpointError("checkpoint text contains an empty line")
    if not _DECIMAL.fullmatch(size_text) or int(size_text) > _UINT64_MAX:
        raise CheckpointError(f"checkpoint tree size (line 2) is not a decimal: {size_text:.40}")
    root = _b64(root_text, "root hash (line 3)")
    if len(root) != HASH_SIZE:
        raise CheckpointError(f"checkpoint root hash is {len(root)} bytes, not {HASH_SIZE}")
    if not block.endswith("\n"):
        raise CheckpointError("checkpoint signature block does not end with a newline")
    signatures = tuple(_signature_line(line) for line in block[:-1].split("\n"))
    return Checkpoint(
        origin=origin,
        tree_size=int(size_text),
        root_hash=root,
        extensions=tuple(extensions),
        signatures=signatures,
    )


def verify_checkpoint(
    data: bytes | Checkpoint, expected_origin: str, public_key_der: bytes
) -> Checkpoint:
    """Verify the log's RFC 6962 note signature; returns the checkpoint with its timestamp.

    The signature covers only size, root and timestamp, so the origin is bound here by comparing
    it with the one the log list names (and through the key ID, which hashes the origin).
    Raises `CheckpointError` when malformed, `SignatureError` when not signed by this log.
    """
    cp = parse_checkpoint(data) if isinstance(data, bytes) else data
    if cp.origin != expected_origin:
        raise SignatureError(f"checkpoint origin {cp.origin!r:.80} is not {expected_origin!r}")
    key_id = note_key_id(cp.origin, log_id(public_key_der))
    candidates = [s for s in cp.signatures if s.name == cp.origin and s.key_id == key_id]
    if not candidates:
        raise SignatureError(f"checkpoint has no signature by key {key_id.hex()} of {cp.origin}")
    # Normally one line; trying each keeps a grease line that collides on the 4-byte key ID
    # (1 in 2^32, but Sunlight greases under the log's own name) from hiding the real one.
    failures = []
    for sig in candidates:
        try:
            timestamp_ms, signed = _decode_note_signature(sig.signature)
            message = tree_head_message(timestamp_ms, cp.tree_size, cp.root_hash)
            verify_digitally_signed(public_key_der, message, signed)
        except SignatureError as e:
            failures.append(str(e))
            continue
        return dataclasses.replace(cp, timestamp_ms=timestamp_ms)
    raise SignatureError(f"checkpoint signature by {key_id.hex()}: {'; '.join(failures)}")


def checkpoint_text(origin: str, tree_size: int, root_hash: bytes) -> str:
    """The signed-note text of a checkpoint (no extension lines, as static-ct-api requires)."""
    return f"{origin}\n{tree_size}\n{base64.b64encode(root_hash).decode()}\n"


def signature_line(name: str, key_id: bytes, body: bytes) -> str:
    return f"{SIGNATURE_PREFIX}{name} {base64.b64encode(key_id + body).decode()}\n"


def _decode_note_signature(body: bytes) -> tuple[int, bytes]:
    """RFC 6962 note signature body: uint64 timestamp ‖ DigitallySigned."""
    r = Reader(body, "RFC 6962 note signature")
    try:
        timestamp_ms = r.uint(8, "timestamp")
    except DecodeError as e:
        raise SignatureError(str(e)) from e
    return timestamp_ms, body[r.pos :]


def _signature_line(line: str) -> NoteSignature:
    if not line.startswith(SIGNATURE_PREFIX):
        raise CheckpointError(
            f"checkpoint signature line does not start with an em dash: {line:.40}"
        )
    name, sep, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
    if not sep or not name or "+" in name or any(c.isspace() for c in name):
        raise CheckpointError(f"checkpoint signature line has a bad key name: {line:.60}")
    raw = _b64(encoded, f"signature of {name:.60}")
    if len(raw) <= _KEY_ID_SIZE:
        raise CheckpointError(f"checkpoint signature of {name:.60} is only {len(raw)} bytes")
    return NoteSignature(name, raw[:_KEY_ID_SIZE], raw[_KEY_ID_SIZE:])


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise CheckpointError(f"checkpoint {what} is not base64: {e}") from e

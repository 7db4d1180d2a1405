"""Tree head signatures: real STHs and checkpoints against the log list's keys, our signer, fuzz.

Keys and origins are looked up in the real log list with plain `json`, not through certlake's
log list parser, and the signed messages in the RSA test are built here by hand.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from certlake.ct.checkpoint import (
    Checkpoint,
    CheckpointError,
    note_key_id,
    parse_checkpoint,
    verify_checkpoint,
)
from certlake.ct.keys import DigitallySigned, SignatureError, log_id, verify_digitally_signed
from certlake.ct.sth import SignedTreeHead, SignedTreeHeadError, verify_sth
from certlake.testlog.signer import LogSigner

EM_DASH = "\u2014"


def _log_list(shared_data: Path) -> list[dict[str, Any]]:
    doc = json.loads((shared_data / "loglist" / "all_logs_list.v78.2.json").read_text())
    return [log for op in doc["operators"] for kind in ("logs", "tiled_logs") for log in op[kind]]


def _log(shared_data: Path, name: str) -> dict[str, Any]:
    (match,) = [log for log in _log_list(shared_data) if name in log["description"]]
    return match


def _key(shared_data: Path, name: str) -> bytes:
    return base64.b64decode(_log(shared_data, name)["key"])


def _sth_json(shared_data: Path, file: str) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads((shared_data / "rfc6962" / file).read_text())
    return obj


REAL_STHS = [
    ("argon2025h1-get-sth-1425614114.json", "'Argon2025h1'"),
    ("argon2025h1-get-sth-1425633154.json", "'Argon2025h1'"),
    ("argon2025h2-get-sth-1329315675.json", "'Argon2025h2'"),
    ("yeti2018-get-sth-90785920.json", "Yeti2018"),
]


# --- get-sth -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("file", "log"), REAL_STHS)
def test_real_sth_verifies(shared_data: Path, file: str, log: str) -> None:
    obj = _sth_json(shared_data, file)
    sth = SignedTreeHead.from_json(obj)
    assert sth.to_json() == obj
    assert sth.signature[:2] == b"\x04\x03"  # SHA-256, ECDSA: what real logs send
    verify_sth(sth, _key(shared_data, log))


@pytest.mark.parametrize(("file", "log"), REAL_STHS)
def test_real_sth_tampered(shared_data: Path, file: str, log: str) -> None:
    sth = SignedTreeHead.from_json(_sth_json(shared_data, file))
    key = _key(shared_data, log)
    root = bytearray(sth.root_hash)
    root[5] ^= 0x10
    sig = bytearray(sth.signature)
    sig[20] ^= 0x01  # inside the ECDSA r value
    for bad in [
        SignedTreeHead(sth.tree_size, sth.timestamp_ms, bytes(root), sth.signature),
        SignedTreeHead(sth.tree_size + 1, sth.timestamp_ms, sth.root_hash, sth.signature),
        SignedTreeHead(sth.tree_size, sth.timestamp_ms - 1, sth.root_hash, sth.signature),
        SignedTreeHead(sth.tree_size, sth.timestamp_ms, sth.root_hash, bytes(sig)),
        SignedTreeHead(sth.tree_size, sth.timestamp_ms, sth.root_hash, sth.signature[:-1]),
    ]:
        with pytest.raises(SignatureError):
            verify_sth(bad, key)
    other = "'Argon2025h2'" if log != "'Argon2025h2'" else "'Argon2025h1'"
    with pytest.raises(SignatureError):
        verify_sth(sth, _key(shared_data, other))


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        "sth",
        {},
        {"tree_size": 1, "timestamp": 2, "sha256_root_hash": "AA==", "tree_head_signature": "BA=="},
        {"tree_size": "1", "timestamp": 2, "sha256_root_hash": "", "tree_head_signature": ""},
        {"tree_size": True, "timestamp": 2},
        {"tree_size": -1, "timestamp": 2},
        {"tree_size": 1 << 64, "timestamp": 2},
        {"tree_size": 1.5, "timestamp": 2},
    ],
)
def test_malformed_sth_json(obj: Any) -> None:
    with pytest.raises(SignedTreeHeadError):
        SignedTreeHead.from_json(obj)


def test_malformed_sth_fields(shared_data: Path) -> None:
    good = _sth_json(shared_data, REAL_STHS[0][0])
    for field, value in [
        ("sha256_root_hash", base64.b64encode(bytes(31)).decode()),
        ("sha256_root_hash", "not base64!"),
        ("sha256_root_hash", "é"),
        ("tree_head_signature", ""),
        ("tree_head_signature", None),
        ("timestamp", None),
    ]:
        with pytest.raises(SignedTreeHeadError, match=field):
            SignedTreeHead.from_json({**good, field: value})


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=60),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
_field_values = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.text(alphabet="ABCDEFGHabcdefgh0123456789+/=é ", max_size=100)
    | st.binary(max_size=80).map(lambda b: base64.b64encode(b).decode())
    | _json
)


@settings(max_examples=300, deadline=None)
@given(
    obj=_json
    | st.fixed_dictionaries(
        {},
        optional=dict.fromkeys(
            ["tree_size", "timestamp", "sha256_root_hash", "tree_head_signature"], _field_values
        ),
    )
)
def test_fuzz_sth(shared_data: Path, obj: Any) -> None:
    key = _key(shared_data, "'Argon2025h2'")
    try:
        sth = SignedTreeHead.from_json(obj)
    except SignedTreeHeadError:
        return
    with pytest.raises(SignatureError):
        verify_sth(sth, key)


@settings(max_examples=200, deadline=None)
@given(signature=st.binary(max_size=120), key=st.binary(max_size=100))
def test_fuzz_signature_and_key_bytes(shared_data: Path, signature: bytes, key: bytes) -> None:
    real = SignedTreeHead.from_json(_sth_json(shared_data, REAL_STHS[2][0]))
    forged = SignedTreeHead(real.tree_size, real.timestamp_ms, real.root_hash, signature)
    with pytest.raises(SignatureError):
        verify_sth(forged, _key(shared_data, "'Argon2025h2'"))
    with pytest.raises(SignatureError):
        verify_sth(real, key)


def test_rsa_log_key() -> None:
    # A few logs in the list have RSA keys; RFC 6962 allows RSA PKCS#1 v1.5 with SHA-256.
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    size, ts, root = 12345, 1_700_000_000_000, hashlib.sha256(b"root").digest()
    message = struct.pack(">BBQQ", 0, 1, ts, size) + root
    raw = private.sign(message, padding.PKCS1v15(), hashes.SHA256())
    good = SignedTreeHead(size, ts, root, struct.pack(">BBH", 4, 1, len(raw)) + raw)
    verify_sth(good, der)
    as_ecdsa = SignedTreeHead(size, ts, root, struct.pack(">BBH", 4, 3, len(raw)) + raw)
    with pytest.raises(SignatureError, match="does not match"):
        verify_sth(as_ecdsa, der)
    with pytest.raises(SignatureError):
        verify_sth(SignedTreeHead(size + 1, ts, root, good.signature), der)


def test_digitally_signed_codec() -> None:
    ds = DigitallySigned(4, 3, b"sig")
    assert ds.encode() == b"\x04\x03\x00\x03sig"
    assert DigitallySigned.decode(ds.encode()) == ds
    for bad in [b"", b"\x04", b"\x04\x03\x00\x04sig", b"\x04\x03\x00\x03sigX"]:
        with pytest.raises(SignatureError):
            DigitallySigned.decode(bad)
    signer = LogSigner()
    with pytest.raises(SignatureError, match="hash algorithm"):
        verify_digitally_signed(signer.public_key_der, b"m", DigitallySigned(2, 3, b"x").encode())


# --- checkpoints -------------------------------------------------------------------------------

REAL_CHECKPOINTS = [
    ("sycamore2026h1.checkpoint", "'Sycamore2026h1'", "104b9ebf", 4),
    ("arche2026h1.checkpoint", "'Arche2026h1'", "479f1d36", 7),
]


def _origin(shared_data: Path, name: str) -> str:
    url: str = _log(shared_data, name)["submission_url"]
    return url.removeprefix("https://").rstrip("/")


def _checkpoint(shared_data: Path, file: str) -> bytes:
    return (shared_data / "checkpoints" / file).read_bytes()


@pytest.mark.parametrize(("file", "log", "key_id", "lines"), REAL_CHECKPOINTS)
def test_real_checkpoint_verifies(
    shared_data: Path, file: str, log: str, key_id: str, lines: int
) -> None:
    data = _checkpoint(shared_data, file)
    origin, key = _origin(shared_data, log), _key(shared_data, log)
    text = data.decode().split("\n")
    assert text[0] == origin
    assert note_key_id(origin, hashlib.sha256(key).digest()).hex() == key_id
    cp = verify_checkpoint(data, origin, key)
    assert (cp.origin, cp.tree_size, cp.root_hash) == (
        origin,
        int(text[1]),
        base64.b64decode(text[2]),
    )
    assert len(cp.signatures) == lines
    # The timestamp is the first 8 bytes after the key ID of the log's own line.
    (line,) = [
        t
        for t in text
        if t.startswith(f"{EM_DASH} {origin} ")
        and base64.b64decode(t.split(" ")[2])[:4].hex() == key_id
    ]
    assert cp.timestamp_ms == int.from_bytes(base64.b64decode(line.split(" ")[2])[4:12], "big")
    assert parse_checkpoint(data).timestamp_ms is None
    assert verify_checkpoint(parse_checkpoint(data), origin, key) == cp


@pytest.mark.parametrize(("file", "log", "key_id", "lines"), REAL_CHECKPOINTS)
def test_real_checkpoint_tolerates_reordering_and_unknown_lines(
    shared_data: Path, file: str, log: str, key_id: str, lines: int
) -> None:
    text, sigs = _checkpoint(shared_data, file).decode().split("\n\n")
    sig_lines = sigs.splitlines(keepends=True)
    mldsa = base64.b64encode(random.randbytes(4 + 8 + 2420)).decode()
    sig_lines.append(f"{EM_DASH} {_origin(shared_data, log)} {mldsa}\n")  # ~3.2 KB line
    sig_lines.append(f"{EM_DASH} witness.example/w1 {base64.b64encode(bytes(72)).decode()}\n")
    for seed in range(5):
        random.Random(seed).shuffle(sig_lines)
        data = f"{text}\n\n{''.join(sig_lines)}".encode()
        cp = verify_checkpoint(data, _origin(shared_data, log), _key(shared_data, log))
        assert len(cp.signatures) == lines + 2


@pytest.mark.parametrize(("file", "log", "key_id", "lines"), REAL_CHECKPOINTS)
def test_real_checkpoint_tampered(
    shared_data: Path, file: str, log: str, key_id: str, lines: int
) -> None:
    data = _checkpoint(shared_data, file)
    origin, key = _origin(shared_data, log), _key(shared_data, log)
    text, sigs = data.decode().split("\n\n")
    o, size, root = text.split("\n")
    raw_root = bytearray(base64.b64decode(root))
    raw_root[0] ^= 0x80
    own = [s for s in sigs.splitlines() if base64.b64decode(s.split(" ")[2])[:4].hex() == key_id]
    (own_line,) = own
    body = bytearray(base64.b64decode(own_line.split(" ")[2]))
    body[30] ^= 0x04
    forged_line = f"{EM_DASH} {origin} {base64.b64encode(bytes(body)).decode()}"
    for bad in [
        f"{o}\n{int(size) + 1}\n{root}\n\n{sigs}",
        f"{o}\n{size}\n{base64.b64encode(bytes(raw_root)).decode()}\n\n{sigs}",
        f"{text}\n\n{sigs.replace(own_line, forged_line)}",
        f"{text}\n\n" + "".join(s + "\n" for s in sigs.splitlines() if s != own_line),
    ]:
        with pytest.raises(SignatureError):
            verify_checkpoint(bad.encode(), origin, key)
    with pytest.raises(SignatureError, match="origin"):
        verify_checkpoint(data, origin + "x", key)
    other = "'Sycamore2026h2'" if "Sycamore" in log else "'Arche2025h2'"
    with pytest.raises(SignatureError):
        verify_checkpoint(data, origin, _key(shared_data, other))
    # Same signature, other origin: the key ID no longer matches (origin binding).
    renamed = data.decode().replace(origin, "evil.example/log").encode()
    with pytest.raises(SignatureError):
        verify_checkpoint(renamed, "evil.example/log", key)


ROOT_B64 = base64.b64encode(bytes(32)).decode()
SIG = f"{EM_DASH} log.example/1 {base64.b64encode(bytes(40)).decode()}\n"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        f"log.example/1\n5\n{ROOT_B64}\n".encode(),  # no signatures
        f"log.example/1\n5\n{ROOT_B64}\n\n".encode(),  # empty signature block
        f"log.example/1\n5\n\n{SIG}".encode(),  # two text lines
        f"\n5\n{ROOT_B64}\n\n{SIG}".encode(),  # empty origin
        f"log.example/1\n05\n{ROOT_B64}\n\n{SIG}".encode(),
        f"log.example/1\n-5\n{ROOT_B64}\n\n{SIG}".encode(),
        f"log.example/1\n{1 << 64}\n{ROOT_B64}\n\n{SIG}".encode(),
        f"log.example/1\n{'9' * 5000}\n{ROOT_B64}\n\n{SIG}".encode(),
        f"log.example/1\n٣\n{ROOT_B64}\n\n{SIG}".encode(),  # a non-ASCII digit
        f"log.example/1\n5\nAAAA\n\n{SIG}".encode(),
        f"log.example/1\n5\n{ROOT_B64[:-1]}\n\n{SIG}".encode(),
        f"log.example/1\n5\n{ROOT_B64}\n\n{SIG[:-1]}".encode(),  # no final newline
        f"log.example/1\n5\n{ROOT_B64}\n\n- log.example/1 AAAAAAAA\n".encode(),
        f"log.example/1\n5\n{ROOT_B64}\n\n{EM_DASH} log.example/1\n".encode(),
        f"log.example/1\n5\n{ROOT_B64}\n\n{EM_DASH}  AAAAAAAA\n".encode(),
        f"log.example/1\n5\n{ROOT_B64}\n\n{EM_DASH} a+b AAAAAAAA\n".encode(),
        f"log.example/1\n5\n{ROOT_B64}\n\n{EM_DASH} log.example/1 AAAA\n".encode(),  # 3 bytes
        f"log.example/1\n5\n{ROOT_B64}\n\n{EM_DASH} log.example/1 !!!!\n".encode(),
        f"log.example/1\n5\n{ROOT_B64}\n\n{EM_DASH} log.example/1 AAAAAAAA x\n".encode(),
        f"log.example/1\n5\n{ROOT_B64}\n\next\n\n{SIG}".encode(),  # empty line in the text
    ],
)
def test_malformed_checkpoints(data: bytes) -> None:
    with pytest.raises(CheckpointError):
        parse_checkpoint(data)


def test_checkpoint_extension_lines_are_kept() -> None:
    cp = parse_checkpoint(f"log.example/1\n0\n{ROOT_B64}\nextra line\n\n{SIG}".encode())
    assert cp == Checkpoint(
        "log.example/1", 0, bytes(32), extensions=("extra line",), signatures=cp.signatures
    )
    assert cp.signatures[0].name == "log.example/1"
    assert cp.signatures[0].key_id == bytes(4)


_note_alphabet = st.sampled_from(
    ["\n", "\n\n", EM_DASH, " ", "log.example/1", "5", "0", "A", "=", "+", "/", "é", "\x00"]
    + [base64.b64encode(bytes(n)).decode() for n in (4, 5, 32, 40)]
)


@settings(max_examples=400, deadline=None)
@given(
    data=st.binary(max_size=300)
    | st.lists(_note_alphabet, max_size=40).map(lambda parts: "".join(parts).encode())
)
def test_fuzz_checkpoint_parser(data: bytes) -> None:
    try:
        cp = parse_checkpoint(data)
    except CheckpointError:
        return
    with pytest.raises(SignatureError):
        verify_checkpoint(cp, cp.origin, LogSigner().public_key_der)


@settings(max_examples=300, deadline=None)
@given(
    which=st.sampled_from(REAL_CHECKPOINTS),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["flip", "delete", "insert"]),
            st.integers(0, 10_000),
            st.integers(0, 255),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_fuzz_mutated_real_checkpoints(
    shared_data: Path, which: tuple[str, str, str, int], edits: list[tuple[str, int, int]]
) -> None:
    file, log, _, _ = which
    original = _checkpoint(shared_data, file)
    data = bytearray(original)
    for op, pos, byte in edits:
        pos %= len(data) + 1
        if op == "insert":
            data[pos:pos] = bytes([byte])
        elif pos < len(data):
            if op == "flip":
                data[pos] ^= byte or 1
            else:
                del data[pos]
    origin, key = _origin(shared_data, log), _key(shared_data, log)
    try:
        cp = verify_checkpoint(bytes(data), origin, key)
    except (CheckpointError, SignatureError):
        return
    # Accepted only if the edits missed everything the signature covers.
    good = verify_checkpoint(original, origin, key)
    assert (cp.tree_size, cp.root_hash, cp.timestamp_ms) == (
        good.tree_size,
        good.root_hash,
        good.timestamp_ms,
    )


# --- our signer --------------------------------------------------------------------------------


def test_signer_sth_round_trip() -> None:
    signer = LogSigner()
    key = load_der_public_key(signer.public_key_der)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert (
        signer.log_id
        == hashlib.sha256(signer.public_key_der).digest()
        == log_id(signer.public_key_der)
    )
    root = hashlib.sha256(b"x").digest()
    sth = signer.sign_sth(1000, 1_750_000_000_123, root)
    assert sth.signature[:2] == b"\x04\x03"
    verify_sth(
        SignedTreeHead.from_json(json.loads(json.dumps(sth.to_json()))), signer.public_key_der
    )
    with pytest.raises(SignatureError):
        verify_sth(sth, LogSigner().public_key_der)


def test_signer_checkpoint() -> None:
    signer = LogSigner()
    origin = "testlog.example/2026"
    root = hashlib.sha256(b"y").digest()
    for grease in (True, False):
        data = signer.checkpoint(origin, 77, 1_760_000_000_000, root, grease=grease)
        text = data.decode().split("\n\n")[0]
        assert text == f"{origin}\n77\n{base64.b64encode(root).decode()}"
        cp = verify_checkpoint(data, origin, signer.public_key_der)
        assert (cp.tree_size, cp.root_hash, cp.timestamp_ms) == (77, root, 1_760_000_000_000)
        assert len(cp.signatures) == (3 if grease else 1)
        own = note_key_id(origin, signer.log_id)
        mine = [s for s in cp.signatures if s.key_id == own]
        assert len(mine) == 1
        # A checkpoint and a get-sth response carry the same signature (convertible given origin).
        sth = SignedTreeHead(77, 1_760_000_000_000, root, mine[0].signature[8:])
        verify_sth(sth, signer.public_key_der)
        if grease:
            names = sorted(s.name for s in cp.signatures)
            assert names == sorted([origin, origin, "grease.invalid"])


def test_signer_rejects_other_curves() -> None:
    with pytest.raises(SignatureError):
        LogSigner(ec.generate_private_key(ec.SECP384R1()))

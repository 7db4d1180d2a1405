"""RFC 6962 `leaf_input` / `extra_data` codec: the real Argon2025h2 entry, round-trips, fuzz."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from certlake.ct.entry import EntryType, LogEntry
from certlake.ct.leaf import (
    decode_rfc6962_entry,
    encode_extra_data_precert,
    encode_extra_data_x509,
    encode_leaf_input,
)
from certlake.ct.tls import DecodeError, Reader, vec

ARGON_INDEX = 912557348
# The CT poison extension as DER: SEQUENCE { OID 1.3.6.1.4.1.11129.2.4.3, critical TRUE, NULL }.
POISON_EXTENSION_DER = bytes.fromhex("3013060a2b06010401d679020403 0101ff 04020500")


@pytest.fixture(scope="module")
def argon(shared_data: Path) -> tuple[bytes, bytes]:
    """(leaf_input, extra_data) of the real Argon2025h2 precert entry."""
    doc = json.loads((shared_data / "rfc6962/argon2025h2-get-entries-912557348.json").read_text())
    (raw,) = doc["entries"]
    return base64.b64decode(raw["leaf_input"]), base64.b64decode(raw["extra_data"])


@pytest.fixture(scope="module")
def argon_entry(argon: tuple[bytes, bytes]) -> LogEntry:
    return decode_rfc6962_entry(ARGON_INDEX, *argon)


def _common_name(cert: x509.Certificate) -> str:
    (attr,) = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attr.value)


def _decodes_or_decode_error(leaf_input: bytes, extra_data: bytes) -> None:
    """Anything but success or DecodeError (IndexError, struct.error, ...) fails the test."""
    with contextlib.suppress(DecodeError):
        decode_rfc6962_entry(7, leaf_input, extra_data)


# --- the real Argon2025h2 entry -------------------------------------------------------------


def test_argon_entry_is_a_precert_with_its_own_leaf_input(
    argon: tuple[bytes, bytes], argon_entry: LogEntry
) -> None:
    assert argon_entry.index == ARGON_INDEX
    assert argon_entry.entry_type is EntryType.PRECERT
    assert argon_entry.leaf_input == argon[0]
    assert argon_entry.tbs is not None
    assert len(argon_entry.tbs) == 3089
    assert len(argon_entry.chain) == 3


def test_argon_issuer_key_hash_is_sha256_of_issuer_spki(argon_entry: LogEntry) -> None:
    issuer = x509.load_der_x509_certificate(argon_entry.chain[0])
    spki = issuer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert argon_entry.issuer_key_hash is not None
    assert len(argon_entry.issuer_key_hash) == 32
    assert argon_entry.issuer_key_hash == hashlib.sha256(spki).digest()


def test_argon_chain_is_wr2_gts_globalsign_issuer_first(argon_entry: LogEntry) -> None:
    chain = [x509.load_der_x509_certificate(der) for der in argon_entry.chain]
    assert [_common_name(c) for c in chain] == ["WR2", "GTS Root R1", "GlobalSign Root CA"]
    precert = x509.load_der_x509_certificate(argon_entry.cert_der)
    # Each certificate is issued by the next one: the decoder kept the log's order.
    for child, parent in zip([precert, *chain], chain, strict=False):
        assert child.issuer == parent.subject


def test_argon_precert_is_poisoned_and_logged_tbs_is_not(argon_entry: LogEntry) -> None:
    precert = x509.load_der_x509_certificate(argon_entry.cert_der)
    poison = precert.extensions.get_extension_for_class(x509.PrecertPoison)
    assert poison.critical
    assert _common_name(precert) == "*.google.com"
    assert argon_entry.tbs is not None
    # The logged TBS is the pre-certificate's TBS minus exactly the poison extension.
    assert POISON_EXTENSION_DER in precert.tbs_certificate_bytes
    assert POISON_EXTENSION_DER not in argon_entry.tbs
    assert len(precert.tbs_certificate_bytes) - len(argon_entry.tbs) == len(POISON_EXTENSION_DER)
    # The leaf timestamp is the SCT time: after the (backdated) notBefore, on the same day.
    issued = datetime.fromtimestamp(argon_entry.timestamp_ms / 1000, UTC)
    assert timedelta(0) <= issued - precert.not_valid_before_utc < timedelta(days=1)


def test_argon_reencodes_to_the_original_bytes(
    argon: tuple[bytes, bytes], argon_entry: LogEntry
) -> None:
    leaf_input, extra_data = argon
    assert argon_entry.tbs is not None
    assert (
        encode_leaf_input(
            argon_entry.timestamp_ms,
            EntryType.PRECERT,
            argon_entry.tbs,
            argon_entry.issuer_key_hash,
        )
        == leaf_input
    )
    assert encode_extra_data_precert(argon_entry.cert_der, argon_entry.chain) == extra_data


# --- round-trip properties ------------------------------------------------------------------

timestamps = st.integers(min_value=0, max_value=2**64 - 1)
indices = st.integers(min_value=0, max_value=2**63 - 1)
ders = st.binary(min_size=1, max_size=200)
chains = st.lists(ders, min_size=0, max_size=4).map(tuple)
extensions = st.binary(max_size=40)
key_hashes = st.binary(min_size=32, max_size=32)


@settings(max_examples=150, deadline=None)
@given(index=indices, ts=timestamps, cert=ders, chain=chains, ext=extensions)
def test_x509_round_trip(
    index: int, ts: int, cert: bytes, chain: tuple[bytes, ...], ext: bytes
) -> None:
    leaf_input = encode_leaf_input(ts, EntryType.X509, cert, extensions=ext)
    entry = decode_rfc6962_entry(index, leaf_input, encode_extra_data_x509(chain))
    assert entry == LogEntry(
        index=index,
        timestamp_ms=ts,
        entry_type=EntryType.X509,
        cert_der=cert,
        chain=chain,
        leaf_input=leaf_input,
    )


@settings(max_examples=150, deadline=None)
@given(
    index=indices,
    ts=timestamps,
    tbs=ders,
    key_hash=key_hashes,
    precert=ders,
    chain=chains,
    ext=extensions,
)
def test_precert_round_trip(
    index: int,
    ts: int,
    tbs: bytes,
    key_hash: bytes,
    precert: bytes,
    chain: tuple[bytes, ...],
    ext: bytes,
) -> None:
    leaf_input = encode_leaf_input(ts, EntryType.PRECERT, tbs, key_hash, ext)
    entry = decode_rfc6962_entry(index, leaf_input, encode_extra_data_precert(precert, chain))
    assert entry == LogEntry(
        index=index,
        timestamp_ms=ts,
        entry_type=EntryType.PRECERT,
        cert_der=precert,
        chain=chain,
        tbs=tbs,
        issuer_key_hash=key_hash,
        leaf_input=leaf_input,
    )


def test_leaf_input_layout_matches_rfc6962() -> None:
    # Spelled out byte by byte so that a symmetric encoder/decoder mistake cannot hide.
    leaf = encode_leaf_input(0x0102030405060708, EntryType.X509, b"\xaa\xbb", extensions=b"\xcc")
    assert leaf == bytes.fromhex("0000 0102030405060708 0000 000002aabb 0001cc")
    pre = encode_leaf_input(1, EntryType.PRECERT, b"\xdd", b"\x11" * 32)
    assert pre == bytes.fromhex("0000 0000000000000001 0001") + b"\x11" * 32 + bytes.fromhex(
        "000001dd 0000"
    )
    assert encode_extra_data_x509([b"\x01", b"\x02\x03"]) == bytes.fromhex(
        "000009 00000101 0000020203"
    )


def test_encoder_rejects_precert_without_32_byte_key_hash() -> None:
    with pytest.raises(ValueError):
        encode_leaf_input(0, EntryType.PRECERT, b"tbs")
    with pytest.raises(ValueError):
        encode_leaf_input(0, EntryType.PRECERT, b"tbs", b"\x00" * 31)


def test_reader_checks_every_read_against_the_buffer() -> None:
    r = Reader(bytes.fromhex("0003 616263 0004 6465"), "thing")
    assert r.opaque(2, "first") == b"abc"
    with pytest.raises(DecodeError, match=r"thing: truncated second at byte 7 \(need 4, have 2\)"):
        r.opaque(2, "second")
    with pytest.raises(DecodeError, match="truncated wide"):
        Reader(b"\x01\x02", "thing").uint(3, "wide")
    short = Reader(b"\x01\x02", "thing")
    assert short.fixed(1, "x") == b"\x01"
    with pytest.raises(DecodeError, match="1 trailing bytes"):
        short.expect_end()


# --- malformed input ------------------------------------------------------------------------

X509_LEAF = encode_leaf_input(1, EntryType.X509, b"cert")
X509_EXTRA = encode_extra_data_x509([b"issuer", b"root"])
PRECERT_LEAF = encode_leaf_input(1, EntryType.PRECERT, b"tbs", b"\x07" * 32, b"ext")
PRECERT_EXTRA = encode_extra_data_precert(b"precert", [b"issuer"])


@pytest.mark.parametrize(("version", "leaf_type"), [(1, 0), (0, 1), (255, 255)])
def test_unsupported_version_or_leaf_type(version: int, leaf_type: int) -> None:
    leaf = bytes([version, leaf_type]) + X509_LEAF[2:]
    with pytest.raises(DecodeError, match="version"):
        decode_rfc6962_entry(0, leaf, X509_EXTRA)


@pytest.mark.parametrize("entry_type", [2, 3, 0x0100, 0xFFFF])
def test_unknown_entry_type(entry_type: int) -> None:
    leaf = X509_LEAF[:10] + entry_type.to_bytes(2, "big") + X509_LEAF[12:]
    with pytest.raises(DecodeError, match="entry_type"):
        decode_rfc6962_entry(0, leaf, X509_EXTRA)


@pytest.mark.parametrize(
    ("leaf_input", "extra_data"),
    [
        (X509_LEAF + b"\x00", X509_EXTRA),
        (X509_LEAF, X509_EXTRA + b"\x00"),
        (PRECERT_LEAF + b"\x00", PRECERT_EXTRA),
        (PRECERT_LEAF, PRECERT_EXTRA + b"\x00"),
    ],
    ids=["x509-leaf", "x509-extra", "precert-leaf", "precert-extra"],
)
def test_trailing_bytes(leaf_input: bytes, extra_data: bytes) -> None:
    with pytest.raises(DecodeError, match="trailing"):
        decode_rfc6962_entry(0, leaf_input, extra_data)


def test_empty_certificates_are_rejected() -> None:
    with pytest.raises(DecodeError):
        decode_rfc6962_entry(0, encode_leaf_input(1, EntryType.X509, b""), X509_EXTRA)
    with pytest.raises(DecodeError):
        decode_rfc6962_entry(0, X509_LEAF, encode_extra_data_x509([b"issuer", b""]))
    with pytest.raises(DecodeError):
        decode_rfc6962_entry(0, PRECERT_LEAF, encode_extra_data_precert(b"", [b"issuer"]))


def test_chain_certificate_overrunning_the_chain_is_rejected() -> None:
    # The inner certificate claims 5 bytes but the chain's total length only covers 4 of them.
    extra = vec(vec(b"abcde", 3)[:-1], 3) + b"e"
    with pytest.raises(DecodeError):
        decode_rfc6962_entry(0, X509_LEAF, extra)


def test_precert_leaf_with_x509_extra_data_is_rejected() -> None:
    with pytest.raises(DecodeError):
        decode_rfc6962_entry(0, PRECERT_LEAF, X509_EXTRA)


# --- fuzz: only DecodeError, never a crash --------------------------------------------------


def test_every_truncation_of_the_real_entry_is_a_decode_error(argon: tuple[bytes, bytes]) -> None:
    leaf_input, extra_data = argon
    for n in range(len(leaf_input)):
        with pytest.raises(DecodeError):
            decode_rfc6962_entry(0, leaf_input[:n], extra_data)
    for n in range(len(extra_data)):
        with pytest.raises(DecodeError):
            decode_rfc6962_entry(0, leaf_input, extra_data[:n])


@pytest.mark.parametrize(
    ("leaf_input", "extra_data"),
    [(X509_LEAF, X509_EXTRA), (PRECERT_LEAF, PRECERT_EXTRA)],
    ids=["x509", "precert"],
)
def test_every_truncation_of_small_entries_is_a_decode_error(
    leaf_input: bytes, extra_data: bytes
) -> None:
    for n in range(len(leaf_input)):
        with pytest.raises(DecodeError):
            decode_rfc6962_entry(0, leaf_input[:n], extra_data)
    for n in range(len(extra_data)):
        with pytest.raises(DecodeError):
            decode_rfc6962_entry(0, leaf_input, extra_data[:n])


@settings(max_examples=300, deadline=None)
@given(leaf_input=st.binary(max_size=120), extra_data=st.binary(max_size=120))
def test_random_bytes_never_crash(leaf_input: bytes, extra_data: bytes) -> None:
    _decodes_or_decode_error(leaf_input, extra_data)


@settings(max_examples=300, deadline=None)
@given(
    version_and_type=st.sampled_from([b"\x00\x00", b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"]),
    tail=st.binary(max_size=120),
    extra_data=st.binary(max_size=60),
)
def test_random_bytes_after_a_valid_header_never_crash(
    version_and_type: bytes, tail: bytes, extra_data: bytes
) -> None:
    # Random leaves almost never get past the version check; these reach the deeper fields.
    _decodes_or_decode_error(version_and_type + tail, extra_data)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), in_leaf=st.booleans(), value=st.integers(0, 255))
def test_single_byte_mutations_of_the_real_entry_never_crash(
    argon: tuple[bytes, bytes], data: st.DataObject, in_leaf: bool, value: int
) -> None:
    leaf_input, extra_data = argon
    target = leaf_input if in_leaf else extra_data
    # Bias towards the headers and length fields, where a flipped byte changes the parse.
    pos = data.draw(st.one_of(st.integers(0, 60), st.integers(0, len(target) - 1)))
    mutated = target[:pos] + bytes([value]) + target[pos + 1 :]
    if in_leaf:
        _decodes_or_decode_error(mutated, extra_data)
    else:
        _decodes_or_decode_error(leaf_input, mutated)


@settings(max_examples=200, deadline=None)
@given(
    which=st.sampled_from([(X509_LEAF, X509_EXTRA), (PRECERT_LEAF, PRECERT_EXTRA)]),
    data=st.data(),
    value=st.integers(0, 255),
)
def test_single_byte_mutations_of_small_entries_never_crash(
    which: tuple[bytes, bytes], data: st.DataObject, value: int
) -> None:
    leaf_input, extra_data = which
    whole = leaf_input + extra_data
    pos = data.draw(st.integers(0, len(whole) - 1))
    mutated = whole[:pos] + bytes([value]) + whole[pos + 1 :]
    _decodes_or_decode_error(mutated[: len(leaf_input)], mutated[len(leaf_input) :])

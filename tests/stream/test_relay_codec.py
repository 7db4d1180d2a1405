"""The relayed-entry codec (pure): what the ingest node sends over NATS is what an edge gets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certlake.certs.message import Streamed
from certlake.stream.relay_codec import RelayDecodeError, decode_streamed, encode_streamed

text = st.text(max_size=40)
streamed = st.builds(
    Streamed,
    st.binary(max_size=300),
    st.binary(max_size=100),
    st.binary(max_size=100),
    st.integers(min_value=0, max_value=2**62),
    text, text, text, text, text, text, text,
    st.lists(text, max_size=5),
)  # fmt: skip


@given(streamed)
def test_an_entry_comes_back_field_for_field(s: Streamed) -> None:
    assert decode_streamed(encode_streamed(s)) == s


def test_payloads_are_carried_as_they_are() -> None:
    s = Streamed(b'{"a":"\\"x\\""}', b"lite", b"", 7, "X", "n", "u", "h", "h1", "1", "i", ["a.b"])
    data = encode_streamed(s)
    assert s.full + s.lite in data  # not escaped into the header


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x00",
        b"\x00\x00\x00\xffabc",  # a header longer than the message
        b"\x00\x00\x00\x02{}",  # not an array
        b"\x00\x00\x00\x05[1,2]",  # too few fields
    ],
)
def test_what_is_not_a_relayed_entry_is_refused(data: bytes) -> None:
    with pytest.raises(RelayDecodeError):
        decode_streamed(data)


def test_payload_lengths_past_the_end_are_refused() -> None:
    s = Streamed(b"full", b"lite", b"d", 1, "X", "n", "u", "h", "h1", "1", "i", [])
    with pytest.raises(RelayDecodeError, match="past the end"):
        decode_streamed(encode_streamed(s)[:-8])

"""The bounds on one answer (`ct/limits.py`) on their own: decoding as the body arrives, and
stopping at each bound without ever producing more."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from certlake.ct.errors import AnswerTooLarge, FetchError, Limit
from certlake.ct.limits import (
    SMALL_ANSWER,
    Bound,
    BoundedBody,
    MiB,
    ReadLimits,
    check_entries_answer,
    error_start,
    json_values_at_most,
)
from certlake.testlog.faults import gzip_padded

URL = "http://log.example/ct/v1/get-entries?start=0&end=0"


def _limits(response: int = 16 * MiB, decompressed: int = 64 * MiB) -> ReadLimits:
    return ReadLimits.configured(response, decompressed)


def _read(
    wire: bytes, limits: ReadLimits, encoding: str | None = None, cuts: Sequence[int] = ()
) -> bytes:
    body = BoundedBody(URL, limits, encoding)
    start = 0
    for cut in sorted(c % (len(wire) + 1) for c in cuts):
        body.feed(wire[start:cut])
        start = cut
    body.feed(wire[start:])
    return body.body()


@given(
    plain=st.binary(max_size=3000),
    encoded=st.booleans(),
    gzipped=st.booleans(),
    cuts=st.lists(st.integers(min_value=0), max_size=6),
)
def test_any_body_in_any_chunks_decodes_to_what_was_sent(
    plain: bytes, encoded: bool, gzipped: bool, cuts: list[int]
) -> None:
    # A body gzipped "by itself" (a static-ct tile sent without saying so) is gunzipped too;
    # under Content-Encoding that is a second layer.
    # The magic number alone says gzip: a plain body starting with it is not an answer.
    assume(gzipped or not plain.startswith(b"\x1f\x8b"))
    inner = gzip.compress(plain) if gzipped else plain
    wire = gzip.compress(inner) if encoded else inner
    got = _read(wire, _limits(), "gzip" if encoded else None, cuts)
    assert got == plain


def test_a_deflate_encoding_and_several_gzip_members_decode() -> None:
    assert _read(zlib.compress(b"tile"), _limits(), "deflate") == b"tile"
    members = gzip.compress(b"one ") + b"\0\0" + gzip.compress(b"two")
    assert _read(members, _limits(), None, [3, 25, 27]) == b"one two"


def test_the_wire_bound_is_exact_and_named() -> None:
    limits = _limits(response=MiB)
    assert len(_read(b"x" * MiB, limits)) == MiB
    with pytest.raises(AnswerTooLarge) as e:
        _read(b"x" * (MiB + 1), limits)
    assert e.value.limit is Limit.BODY and e.value.bound == MiB and e.value.status == 200
    assert "over 1 MiB on the wire (ct_log.max_response_bytes)" in str(e.value)
    assert URL in str(e.value)


def test_an_announced_length_over_the_bound_is_refused_before_reading() -> None:
    body = BoundedBody(URL, _limits(response=MiB))
    body.announced(None)
    body.announced(MiB)
    with pytest.raises(AnswerTooLarge) as e:
        body.announced(300 * MiB)
    assert e.value.limit is Limit.BODY
    assert "announces 300 MiB, over 1 MiB on the wire" in str(e.value)


@pytest.mark.parametrize("encoding", ["gzip", None])
def test_the_decompressed_bound_is_exact_and_named(encoding: str | None) -> None:
    limits = _limits(decompressed=2 * MiB)
    assert len(_read(gzip.compress(b"\0" * 2 * MiB), limits, encoding)) == 2 * MiB
    with pytest.raises(AnswerTooLarge) as e:
        _read(gzip.compress(b"\0" * (2 * MiB + 1)), limits, encoding)
    assert e.value.limit is Limit.DECOMPRESSED and e.value.bound == 2 * MiB
    assert "over 2 MiB once decompressed (ct_log.max_decompressed_bytes)" in str(e.value)


def test_a_plain_body_counts_against_the_decompressed_bound_too() -> None:
    with pytest.raises(AnswerTooLarge) as e:
        _read(b"x" * (MiB + 1), _limits(response=4 * MiB, decompressed=MiB))
    assert e.value.limit is Limit.DECOMPRESSED


@pytest.mark.parametrize("encoding", ["gzip", None])
def test_a_bomb_is_stopped_without_producing_more_than_the_bound(encoding: str | None) -> None:
    wire = b"".join(gzip_padded(b"", 256 * MiB))  # 256 MiB of spaces in about 256 KiB
    assert len(wire) < MiB // 2
    body = BoundedBody(URL, _limits(decompressed=MiB), encoding)
    tracemalloc.start()
    try:
        with pytest.raises(AnswerTooLarge) as e:
            # Large chunks: each would expand to 64 MiB if decompression were not capped.
            for i in range(0, len(wire), 64 * 1024):
                body.feed(wire[i : i + 64 * 1024])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert e.value.limit is Limit.DECOMPRESSED
    assert peak < 4 * MiB


def test_output_zlib_holds_back_is_taken_with_the_input_that_made_it() -> None:
    # For some of these sizes zlib, having taken every deflate byte, still holds the end of the
    # output behind a full piece; the bound must see it then, not when the trailer comes.
    for n in range(256 * 1024, 256 * 1024 + 64):
        wire = gzip.compress(b"\0" * n)
        body = BoundedBody(URL, _limits(decompressed=n - 1), "gzip")
        with pytest.raises(AnswerTooLarge):
            body.feed(wire[:-8])


@pytest.mark.parametrize(
    ("wire", "encoding"),
    [
        (gzip.compress(b"x" * 1000)[:-9], None),  # truncated
        (gzip.compress(b"x" * 1000)[:-9], "gzip"),
        (b"\x1f\x8b" + b"not gzip at all", None),
        (gzip.compress(b"x") + b"trailing garbage", "gzip"),
    ],
)
def test_corrupt_gzip_is_a_fetch_error(wire: bytes, encoding: str | None) -> None:
    with pytest.raises(FetchError, match=r"corrupt gzip body from http://log\.example") as e:
        _read(wire, _limits(), encoding)
    assert not isinstance(e.value, AnswerTooLarge)


def test_an_encoding_not_asked_for_is_refused() -> None:
    with pytest.raises(FetchError, match="unsupported Content-Encoding 'br'"):
        BoundedBody(URL, _limits(), "br")


def test_within_keeps_the_tighter_bound_and_its_name() -> None:
    mixed = _limits(response=16 * MiB, decompressed=64 * MiB).within(
        ReadLimits(Bound(32 * MiB, "a"), Bound(MiB, "b"))
    )
    assert mixed.response == Bound(16 * MiB, "ct_log.max_response_bytes")
    assert mixed.decompressed == Bound(MiB, "b")
    assert _limits().within(SMALL_ANSWER) == SMALL_ANSWER


def test_error_start_quotes_the_beginning_of_plain_or_gzip_answers() -> None:
    assert error_start(b"rate limited\n" * 100, None, 12) == b"rate limited"
    assert error_start(gzip.compress(b"<html>blocked</html>"), "gzip", 6) == b"<html>"
    assert error_start(b"\x1f\x8bgarbage", "gzip", 50) == b""


_json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=30,
)


def _count(value: Any) -> int:
    if isinstance(value, list):
        return 1 + sum(map(_count, value))
    if isinstance(value, dict):
        return 1 + sum(map(_count, value.values()))
    return 1


@given(_json_values)
def test_json_values_at_most_bounds_what_a_parser_builds(value: Any) -> None:
    assert json_values_at_most(orjson.dumps(value)) >= _count(value)


def _answer(entries: list[object]) -> bytes:
    return orjson.dumps({"entries": entries})


def test_a_real_sized_answer_passes_and_one_that_holds_more_values_is_not_parsed() -> None:
    entry = {"leaf_input": "AAAA" * 500, "extra_data": "AAAA" * 1500}
    check_entries_answer(_answer([entry] * 256), 256, "get-entries [0, 255]")
    # Twice as many real entries as asked still fit the value count: the parsed count refuses
    # those (`Rfc6962Log.get_entries`). Millions of tiny values never get parsed.
    check_entries_answer(_answer([entry] * 2), 1, "get-entries [0, 0]")
    with pytest.raises(AnswerTooLarge) as e:
        check_entries_answer(b'{"entries":[' + b"{}," * 100_000 + b"{}]}", 256, "where")
    assert e.value.limit is Limit.ENTRIES and e.value.bound == 256
    assert "more than the 256 entries asked can hold" in str(e.value)


def test_a_small_answer_is_left_to_the_parser_whatever_it_holds() -> None:
    """Under 256 KiB the values are not counted: parsing builds a few MB at most, and the parsed
    answer's own count of entries refuses it (`Rfc6962Log.get_entries`)."""
    small = b'{"entries":[' + b"{}," * 80_000 + b"{}]}"
    assert len(small) < 256 * 1024
    check_entries_answer(small, 256, "where")
    over = b'{"entries":[' + b"{}," * 90_000 + b"{}]}"
    assert len(over) > 256 * 1024
    with pytest.raises(AnswerTooLarge):
        check_entries_answer(over, 256, "where")

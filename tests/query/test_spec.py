"""The query's meaning and its cursor, on plain values."""

from __future__ import annotations

import base64
import json

import pytest

from certlake.query.spec import (
    Cursor,
    DomainFilter,
    DomainMode,
    Query,
    QueryError,
    domain_key,
    parse_request,
)


def test_domain_keys_reverse_labels_and_ignore_case() -> None:
    assert domain_key("www.Example.COM") == "com.example.www"
    assert domain_key("*.example.com") == "com.example.*"


@pytest.mark.parametrize(
    ("text", "mode", "stored"),
    [
        ("*.Example.com", DomainMode.SUFFIX, ".example.com"),
        ("example.com", DomainMode.EXACT, "example.com"),
        ("PayPal", DomainMode.CONTAINS, "paypal"),
    ],
)
def test_the_forks_three_modes(text: str, mode: DomainMode, stored: str) -> None:
    parsed = DomainFilter.parse(text)
    assert (parsed.mode, parsed.text) == (mode, stored)


def test_a_suffix_finds_names_under_it_and_not_itself() -> None:
    suffix = DomainFilter.parse("*.example.com")
    assert suffix.matches("a.b.Example.com")
    assert suffix.matches("*.example.com")
    assert not suffix.matches("example.com")
    assert not suffix.matches("badexample.com")


def test_exact_names_match_whatever_their_case() -> None:
    # The fork lower-cases the query but not the certificate's name: `Example.com` is never found.
    assert DomainFilter.parse("example.com").matches("Example.COM")
    assert not DomainFilter.parse("example.com").matches("www.example.com")


@pytest.mark.parametrize(
    "name",
    [
        "example.com",
        "a.example.com",
        "x.y.example.com",
        "badexample.com",
        "example.co",
        "example.com.evil",
        "*.example.com",
        "example.comx",
        "com",
        "a.exampld.com",
    ],
)
@pytest.mark.parametrize("query", ["*.example.com", "example.com", "*.com"])
def test_key_ranges_hold_exactly_the_matching_names(name: str, query: str) -> None:
    parsed = DomainFilter.parse(query)
    key_range = parsed.key_range()
    assert key_range is not None
    low, high = key_range
    assert (low <= domain_key(name) < high) == parsed.matches(name)


@pytest.mark.parametrize("name", ["paypal.com", "www.pay-pal.com", "a.paypalx.net", "pay.pal"])
def test_a_substring_without_a_dot_survives_the_reversal(name: str) -> None:
    parsed = DomainFilter.parse("paypal")
    assert parsed.key_range() is None
    assert (parsed.key_substring() in domain_key(name)) == parsed.matches(name)


def test_query_matches_every_filter_at_once() -> None:
    query = Query(DomainFilter.parse("*.ex.com"), "encrypt", "2026-12-01", "2026-12-02")
    issuer = "C=US, O=Let's Encrypt, CN=R11"
    assert query.matches(["a.ex.com"], issuer, "2026-12-01")
    assert query.matches([None, "a.ex.com"], issuer, "2026-12-02")
    assert not query.matches(["a.ex.com"], issuer, "2026-11-30")
    assert not query.matches(["a.ex.com"], issuer, "2026-12-03")
    assert not query.matches(["a.ex.com"], "CN=Sectigo", "2026-12-01")
    assert not query.matches(["ex.com"], issuer, "2026-12-01")
    assert not query.matches([], issuer, "2026-12-01")


def test_cursors_round_trip_and_carry_the_log() -> None:
    cursor = Cursor(7, (41, "https://ct.example/log/"))
    assert Cursor.decode(cursor.encode()) == cursor


def test_the_forks_cursor_is_accepted() -> None:
    text = base64.b64encode(json.dumps({"v": 3, "k": 99}).encode()).decode()
    assert Cursor.decode(text) == Cursor(3, (99, None))


@pytest.mark.parametrize(
    "body",
    [
        b"not base64!",
        base64.b64encode(b"[1,2]"),
        base64.b64encode(b'{"v": -1, "k": 2}'),
        base64.b64encode(b'{"v": 1, "k": true}'),
        base64.b64encode(b'{"v": 1}'),
        base64.b64encode(b'{"v": 1, "k": 2, "u": 5}'),
        base64.b64encode(b"\xff\xfe"),
    ],
)
def test_bad_cursors_are_400s(body: bytes) -> None:
    with pytest.raises(QueryError, match="invalid cursor"):
        Cursor.decode(body.decode("latin-1"))


def test_parse_request_defaults_and_caps() -> None:
    request = parse_request({"domain": "*.Ex.com"}, default_limit=100, max_limit=500)
    assert request.limit == 100 and request.cursor is None
    assert request.query.domain == DomainFilter(DomainMode.SUFFIX, ".ex.com")
    capped = parse_request({"issuer": "R11", "limit": "9000"}, default_limit=100, max_limit=500)
    assert capped.limit == 500 and capped.query.issuer == "r11"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "at least one filter"),
        ({"domain": ""}, "at least one filter"),
        ({"from": "2026-13-01"}, "invalid 'from' date"),
        ({"to": "2026-1-1"}, "invalid 'to' date"),
        ({"domain": "x.com", "limit": "ten"}, "invalid limit"),
        ({"domain": "x.com", "limit": "0"}, "invalid limit"),
        ({"domain": "x.com", "cursor": "%%%"}, "invalid cursor"),
    ],
)
def test_parse_request_refuses_what_the_fork_refuses(params: dict[str, str], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_request(params, default_limit=100, max_limit=500)

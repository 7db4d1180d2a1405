"""The guard's pure cores: token matching, client address, token buckets, connection slots."""

from __future__ import annotations

import hmac
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certlake.config import AuthConfig, RateLimitConfig
from certlake.server.guard import (
    ConnectionLimiter,
    RateLimiter,
    Refusal,
    Tier,
    TierLimit,
    TokenBucket,
    TokenTable,
    client_ip,
    parse_networks,
    presented_token,
    retry_after_header,
    tier_limits,
)

# --- tokens ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "query", "expected"),
    [
        ("Bearer abc", None, "abc"),
        ("bearer   abc ", None, "abc"),
        ("BEARER abc", "other", "abc"),
        ("abc", None, "abc"),  # the bare token, as the Rust tool's clients send it
        (None, "abc", "abc"),
        ("", "abc", "abc"),  # an empty header does not hide the query token
        ("   ", None, None),
        (None, "", None),
        (None, None, None),
    ],
)
def test_presented_token(header: str | None, query: str | None, expected: str | None) -> None:
    assert presented_token(header, query) == expected


def _table() -> TokenTable:
    return TokenTable(
        AuthConfig(
            enabled=True,
            tokens=("plain-1", "plain-2"),
            standard_tokens=("silver", "both"),
            premium_tokens=("gold", "both"),
        )
    )


def test_tiers_of_tokens() -> None:
    table = _table()
    assert table.tier_of("plain-2") is Tier.FREE
    assert table.tier_of("silver") is Tier.STANDARD
    assert table.tier_of("gold") is Tier.PREMIUM
    assert table.tier_of("both") is Tier.PREMIUM  # listed in two tiers: the higher one
    for wrong in ("gol", "gold!", "GOLD", "", "plain-"):
        assert table.tier_of(wrong) is None
    assert table.tier_of(None) is None
    assert TokenTable(AuthConfig(tokens=("naïve-tøken",))).tier_of("naïve-tøken") is Tier.FREE
    # header bytes that were not UTF-8, as aiohttp hands them over (surrogateescape)
    for undecodable in (b"\xff\xfe", b"gold\xff", b"\xc3("):
        assert table.tier_of(undecodable.decode("utf-8", "surrogateescape")) is None


@pytest.mark.parametrize("candidate", ["plain-1", "both", "gold", "nope"])
def test_every_token_is_compared_in_constant_time(
    monkeypatch: pytest.MonkeyPatch, candidate: str
) -> None:
    """Where the match is (first, last, none) must not change the work done."""
    real = hmac.compare_digest
    calls: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    table = _table()
    monkeypatch.setattr(hmac, "compare_digest", spy)
    table.tier_of(candidate)
    assert len(calls) == 6
    assert all(a == candidate.encode() for a, _ in calls)


# --- client address -------------------------------------------------------------------------

PROXIES = parse_networks(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "xff", "real", "expected"),
    [
        # An untrusted peer's headers are ignored: anyone can write them.
        ("203.0.113.9", "198.51.100.1", "198.51.100.2", "203.0.113.9"),
        # Behind one trusted proxy.
        ("10.0.0.2", "198.51.100.1", None, "198.51.100.1"),
        # Two trusted proxies; the leftmost entries were written by the client.
        ("10.0.0.2", "6.6.6.6, 198.51.100.1, 10.0.0.3", None, "198.51.100.1"),
        # Only proxies in the chain: the farthest one is all we know.
        ("10.0.0.2", "10.1.1.1, 10.0.0.3", None, "10.1.1.1"),
        # Garbage stops the walk at the last hop that is known.
        ("10.0.0.2", "198.51.100.1, garbage, 10.0.0.3", None, "10.0.0.3"),
        ("10.0.0.2", "garbage", None, "10.0.0.2"),
        # X-Real-IP only without X-Forwarded-For.
        ("10.0.0.2", None, "198.51.100.7", "198.51.100.7"),
        ("10.0.0.2", None, "not-an-ip", "10.0.0.2"),
        # IPv6, IPv4-mapped peers and normalization.
        ("fd00::1", "2001:DB8::0001", None, "2001:db8::1"),
        ("::ffff:10.0.0.2", "198.51.100.1", None, "198.51.100.1"),
        ("::ffff:203.0.113.9", None, None, "203.0.113.9"),
        (None, "198.51.100.1", None, "unknown"),
    ],
)
def test_client_ip(peer: str | None, xff: str | None, real: str | None, expected: str) -> None:
    assert client_ip(peer, xff, real, PROXIES) == expected


def test_client_ip_without_trusted_proxies_is_the_peer() -> None:
    assert client_ip("10.0.0.2", "198.51.100.1", "198.51.100.2", ()) == "10.0.0.2"


# --- rate limits ----------------------------------------------------------------------------


@settings(deadline=None)  # the machine is shared: wall-clock deadlines flake
@given(
    capacity=st.integers(1, 50),
    rate=st.floats(0.1, 100),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=200),
)
def test_bucket_never_allows_more_than_capacity_plus_refill(
    capacity: int, rate: float, gaps: list[float]
) -> None:
    bucket = TokenBucket(capacity, rate, capacity, 0.0)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        if bucket.take(now) == 0.0:
            allowed += 1
    assert allowed <= capacity + rate * now + 1e-9


@settings(deadline=None)  # the machine is shared: wall-clock deadlines flake
@given(
    capacity=st.integers(1, 20),
    rate=st.floats(0.1, 50),
    gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=100),
)
def test_bucket_wait_is_exact(capacity: int, rate: float, gaps: list[float]) -> None:
    """A refused client that waits what it was told is let in, and not a moment earlier."""
    bucket = TokenBucket(capacity, rate, capacity, 0.0)
    now = 0.0
    for gap in gaps:
        now += gap
        wait = bucket.take(now)
        if wait > 0:
            if wait > 1e-6:  # below that, 0.99 * wait is lost in float rounding
                early = TokenBucket(capacity, rate, bucket.tokens, bucket.updated)
                assert early.take(now + wait * 0.99) > 0
            assert bucket.take(now + wait + 1e-9) == 0.0
            now += wait + 1e-9


def test_rate_limiter_keys_by_client_and_tier() -> None:
    limiter = RateLimiter({t: TierLimit(2, 1.0) for t in Tier})
    assert [limiter.check("a", Tier.FREE, 0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    assert limiter.check("b", Tier.FREE, 0.0) == 0.0  # another client has its own bucket
    assert limiter.check("a", Tier.PREMIUM, 0.0) == 0.0  # so has another tier
    assert limiter.check("a", Tier.FREE, 1.0) == 0.0  # one token back after a second


def test_tier_limits_from_config() -> None:
    cfg = RateLimitConfig(
        standard_max_tokens=7,
        standard_refill_rate=3.5,
        standard_burst=4,
        burst_window_seconds=2,
        window_max_requests=30,
        window_seconds=60,
    )
    limits = tier_limits(cfg)
    assert limits[Tier.STANDARD] == TierLimit(7, 3.5, ((4, 2.0), (30, 0.5)))
    assert limits[Tier.FREE] == TierLimit(100, 10, ((20, 10.0), (30, 0.5)))


def test_every_rate_limit_key_bites() -> None:
    """max_tokens, burst and the window each refuse on their own; a refusal spends nothing."""
    base = {
        "free_max_tokens": 100.0,
        "free_refill_rate": 100.0,
        "free_burst": 100.0,
        "burst_window_seconds": 1,
        "window_max_requests": 1000,
        "window_seconds": 1,
    }
    for key, value, allowed in [
        ("free_max_tokens", 3.0, 3),
        ("free_burst", 4.0, 4),
        ("window_max_requests", 5, 5),
    ]:
        limiter = RateLimiter(tier_limits(RateLimitConfig(**{**base, key: value})))
        results = [limiter.check("c", Tier.FREE, 0.0) for _ in range(10)]
        assert results.count(0.0) == allowed, key
        assert all(r > 0 for r in results[allowed:]), key


def test_rate_limiter_forgets_only_full_buckets() -> None:
    limiter = RateLimiter({t: TierLimit(10, 1.0) for t in Tier})
    for i in range(100):
        limiter.check(f"client-{i}", Tier.FREE, 0.0)
    t = RateLimiter.SWEEP_INTERVAL
    for _ in range(10):
        limiter.check("busy", Tier.FREE, t - 5)
    assert len(limiter) == 101  # no sweep before its interval
    limiter.check("other", Tier.FREE, t)
    # The one-request clients refilled long ago; "busy" has 5 of its 10 tokens back.
    assert len(limiter) == 2
    assert [limiter.check("busy", Tier.FREE, t) for _ in range(6)].count(0.0) == 5
    # A forgotten bucket starts full — exactly what the kept one would have been by then.
    assert [limiter.check("client-7", Tier.FREE, t) for _ in range(11)].count(0.0) == 10


@pytest.mark.parametrize(("wait", "header"), [(0.01, "1"), (1.0, "1"), (1.01, "2"), (59.5, "60")])
def test_retry_after_rounds_up(wait: float, header: str) -> None:
    assert retry_after_header(wait) == header


# --- connection limits ----------------------------------------------------------------------


def test_connection_limits() -> None:
    limiter = ConnectionLimiter(max_total=3, per_ip=2)
    assert limiter.acquire("a") is None
    assert limiter.acquire("a") is None
    assert limiter.acquire("a") is Refusal.CLIENT_FULL
    assert limiter.acquire("b") is None
    assert limiter.acquire("c") is Refusal.SERVER_FULL
    assert (limiter.total, limiter.open_for("a"), limiter.open_for("c")) == (3, 2, 0)
    limiter.release("a")
    assert limiter.acquire("c") is None
    assert limiter.acquire("a") is Refusal.SERVER_FULL  # the server check comes first


@settings(deadline=None)  # the machine is shared: wall-clock deadlines flake
@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abcd")), max_size=200))
def test_connection_limiter_matches_a_model(ops: list[tuple[bool, str]]) -> None:
    limiter = ConnectionLimiter(max_total=5, per_ip=2)
    held: Counter[str] = Counter()
    for acquire, ip in ops:
        if acquire:
            refusal = limiter.acquire(ip)
            if sum(held.values()) >= 5:
                assert refusal is Refusal.SERVER_FULL
            elif held[ip] >= 2:
                assert refusal is Refusal.CLIENT_FULL
            else:
                assert refusal is None
                held[ip] += 1
        elif held[ip]:
            limiter.release(ip)
            held[ip] -= 1
        assert limiter.total == sum(held.values())
        assert all(limiter.open_for(k) == n for k, n in held.items())

"""Optional protection of the live server: bearer-token auth, connection limits on the
streams, request rate limits — all off by default.

The decisions are pure: `TokenTable`, `client_ip`, `TokenBucket`, `RateLimiter` and
`ConnectionLimiter` take plain values (time is passed in) and keep no I/O. `Guard` holds them
for one server, and `guard_middleware` is the thin aiohttp shell that applies them in this order:

1. the client's IP (proxy-aware only for peers in `trusted_proxies`) and its token's tier;
2. the rate limit — before auth, so guessing tokens costs requests too;
3. auth: 401 unless a known token was presented (`/health` stays open);
4. for streaming connections, the connection limits — checked before the handler upgrades the
   connection, and released when the handler returns, i.e. when the client has gone.

Rate-limit model: one token bucket per (client IP, tier). A bucket holds `<tier>_max_tokens`,
refills at `<tier>_refill_rate` per second, and every request costs one token. The tier is the
token's (`auth.premium_tokens`, `auth.standard_tokens`), else free.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from certlake.config import AuthConfig, Config, ConnectionLimitConfig, RateLimitConfig

# A full server frees slots only as clients leave; a short pause spreads the reconnect storm.
SERVER_FULL_RETRY_AFTER = "5"
# Open even with auth on, so load balancers and orchestrators can probe without a token.
OPEN_PATHS = frozenset({"/health"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Tier(enum.Enum):
    FREE = "free"
    STANDARD = "standard"
    PREMIUM = "premium"


# --- auth -----------------------------------------------------------------------------------


def presented_token(header_value: str | None, query_value: str | None) -> str | None:
    """The token a client presented: `Bearer <t>` or a bare token in the header, else `?token=`
    (browsers cannot set headers on a WebSocket)."""
    if header_value:
        scheme, _, rest = header_value.strip().partition(" ")
        token = rest.strip() if scheme.lower() == "bearer" and rest.strip() else header_value
        return token.strip() or None
    return query_value or None


class TokenTable:
    """The known tokens and their tiers."""

    def __init__(self, auth: AuthConfig) -> None:
        entries: list[tuple[bytes, Tier]] = []
        for tokens, tier in (
            (auth.tokens, Tier.FREE),
            (auth.standard_tokens, Tier.STANDARD),
            (auth.premium_tokens, Tier.PREMIUM),
        ):
            entries.extend((t.encode(), tier) for t in tokens)
        self._entries = tuple(entries)

    def tier_of(self, token: str | None) -> Tier | None:
        """The tier of `token`, or None when it is not a known token.

        Every known token is compared, each with `hmac.compare_digest`, whatever matched
        earlier: the time taken tells an attacker neither how much of a token was right nor
        which token it was.
        """
        if token is None:
            return None
        try:
            candidate = token.encode()
        except UnicodeEncodeError:
            # aiohttp keeps header bytes that are not UTF-8 as lone surrogates; no configured
            # token (UTF-8 text, checked by the schema) can equal them. Returning early tells an
            # attacker nothing about the known tokens.
            return None
        found: Tier | None = None
        # Entries go from the lowest tier up, so a token listed twice gets its highest tier.
        for known, tier in self._entries:
            if hmac.compare_digest(candidate, known):
                found = tier
        return found


# --- client address -------------------------------------------------------------------------


def parse_networks(specs: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(s, strict=False) for s in specs)


def _ip(text: str) -> IPAddress | None:
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _trusted(addr: IPAddress, nets: Sequence[IPNetwork]) -> bool:
    return any(addr.version == n.version and addr in n for n in nets)


def client_ip(
    peer: str | None,
    forwarded_for: str | None,
    real_ip: str | None,
    trusted: Sequence[IPNetwork],
) -> str:
    """The address limits are keyed by.

    Forwarding headers count only when the peer itself is a trusted proxy: anyone else could
    write any address there. `X-Forwarded-For` is read from the right — each trusted proxy
    appended the address it saw — and the first hop that is not a trusted proxy is the client;
    what lies left of it was written by the client and proves nothing.
    """
    addr = _ip(peer) if peer else None
    if addr is None:
        return peer or "unknown"
    if not _trusted(addr, trusted):
        return str(addr)
    if forwarded_for:
        for hop_text in reversed(forwarded_for.split(",")):
            hop = _ip(hop_text)
            if hop is None:
                break  # unparseable: nothing from here leftwards can be trusted
            addr = hop
            if not _trusted(hop, trusted):
                break
        return str(addr)
    if real_ip:
        real = _ip(real_ip)
        if real is not None:
            return str(real)
    return str(addr)


# --- rate limits ----------------------------------------------------------------------------


@dataclass(slots=True)
class TokenBucket:
    capacity: float
    refill_rate: float  # tokens per second
    tokens: float
    updated: float

    def wait(self, now: float) -> float:
        """0.0 if a token is there now, else the seconds until there will be one."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.refill_rate)
        self.updated = now
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.refill_rate

    def take(self, now: float) -> float:
        """Spend one token: 0.0 if there was one, else the seconds until there will be."""
        wait = self.wait(now)
        if wait == 0.0:
            self.tokens -= 1.0
        return wait

    def full_at(self) -> float:
        """When this bucket will be full again; from then on it equals a fresh one."""
        return self.updated + (self.capacity - self.tokens) / self.refill_rate


@dataclass(frozen=True, slots=True)
class TierLimit:
    """The tier's bucket (`capacity`, `refill_rate` per second) and any further buckets
    (capacity, refill per second) a request must also find a token in."""

    capacity: float
    refill_rate: float
    extra: tuple[tuple[float, float], ...] = ()

    def buckets(self, now: float) -> tuple[TokenBucket, ...]:
        limits = ((self.capacity, self.refill_rate), *self.extra)
        return tuple(TokenBucket(c, r, c, now) for c, r in limits)


def tier_limits(config: RateLimitConfig) -> dict[Tier, TierLimit]:
    """Every key of certstream-server-rust's `rate_limit` section has a meaning here, all as
    token buckets: the tier's `max_tokens`/`refill_rate`; at most `<tier>_burst` requests per
    `burst_window_seconds`; and, for every tier, at most `window_max_requests` per
    `window_seconds`."""
    window = (
        float(config.window_max_requests),
        config.window_max_requests / config.window_seconds,
    )

    def tier(max_tokens: float, refill: float, burst: float) -> TierLimit:
        return TierLimit(max_tokens, refill, ((burst, burst / config.burst_window_seconds), window))

    return {
        Tier.FREE: tier(config.free_max_tokens, config.free_refill_rate, config.free_burst),
        Tier.STANDARD: tier(
            config.standard_max_tokens, config.standard_refill_rate, config.standard_burst
        ),
        Tier.PREMIUM: tier(
            config.premium_max_tokens, config.premium_refill_rate, config.premium_burst
        ),
    }


class RateLimiter:
    """Token buckets per (client, tier). Buckets that have refilled completely are forgotten —
    a forgotten bucket and a full one behave the same — so memory follows the clients that were
    active lately, not every address ever seen."""

    SWEEP_INTERVAL = 60.0

    def __init__(self, limits: dict[Tier, TierLimit]) -> None:
        self._limits = limits
        self._buckets: dict[tuple[str, Tier], tuple[TokenBucket, ...]] = {}
        self._next_sweep = -math.inf

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, client: str, tier: Tier, now: float) -> float:
        """0.0 if the request may go ahead, else the seconds the client should wait."""
        if now >= self._next_sweep:
            self._sweep(now)
        buckets = self._buckets.get((client, tier))
        if buckets is None:
            buckets = self._buckets[(client, tier)] = self._limits[tier].buckets(now)
        # A refused request spends nothing: it takes a token from every bucket or from none.
        wait = max(b.wait(now) for b in buckets)
        if wait == 0.0:
            for b in buckets:
                b.tokens -= 1.0
        return wait

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self.SWEEP_INTERVAL
        full = [k for k, bs in self._buckets.items() if max(b.full_at() for b in bs) <= now]
        for key in full:
            del self._buckets[key]


def retry_after_header(wait: float) -> str:
    """`Retry-After` is whole seconds; round up so a client that obeys it is let in."""
    return str(max(1, math.ceil(wait)))


# --- connection limits ----------------------------------------------------------------------


class Refusal(enum.Enum):
    """Why a connection was refused; the value is the HTTP status that says so."""

    SERVER_FULL = 503
    CLIENT_FULL = 429


class ConnectionLimiter:
    """Open streaming connections, in total and per client IP."""

    def __init__(self, max_total: int, per_ip: int | None) -> None:
        self.max_total = max_total
        self.per_ip = per_ip
        self.total = 0
        self._by_ip: dict[str, int] = {}

    def open_for(self, ip: str) -> int:
        return self._by_ip.get(ip, 0)

    def acquire(self, ip: str) -> Refusal | None:
        """Take a slot for `ip`, or say why not (and take nothing)."""
        if self.total >= self.max_total:
            return Refusal.SERVER_FULL
        held = self._by_ip.get(ip, 0)
        if self.per_ip is not None and held >= self.per_ip:
            return Refusal.CLIENT_FULL
        self.total += 1
        self._by_ip[ip] = held + 1
        return None

    def release(self, ip: str) -> None:
        held = self._by_ip[ip] - 1
        if held:
            self._by_ip[ip] = held
        else:
            del self._by_ip[ip]
        self.total -= 1


# --- the guard of one server ----------------------------------------------------------------


@dataclass(slots=True)
class GuardStats:
    """Refusals since start, for /api/stats and /metrics."""

    unauthorized: int = 0
    rate_limited: int = 0
    server_full: int = 0
    client_full: int = 0


class Guard:
    """Auth, rate and connection limits for one server, built from its configuration."""

    def __init__(
        self,
        auth: AuthConfig,
        connection_limit: ConnectionLimitConfig,
        rate_limit: RateLimitConfig,
        trusted_proxies: Sequence[str] = (),
    ) -> None:
        self.auth_required = auth.enabled
        self.header_name = auth.header_name
        self.tokens = TokenTable(auth)
        self.trusted = parse_networks(trusted_proxies)
        self.rates = RateLimiter(tier_limits(rate_limit)) if rate_limit.enabled else None
        self.connections = (
            ConnectionLimiter(connection_limit.max_connections, connection_limit.per_ip_limit)
            if connection_limit.enabled
            else None
        )
        self.stats = GuardStats()

    @classmethod
    def from_config(cls, config: Config) -> Guard:
        return cls(config.auth, config.connection_limit, config.rate_limit, config.trusted_proxies)

    def client_of(self, request: web.Request) -> str:
        return client_ip(
            request.remote,
            request.headers.get("X-Forwarded-For"),
            request.headers.get("X-Real-IP"),
            self.trusted,
        )

    def tier_of(self, request: web.Request) -> Tier | None:
        token = presented_token(request.headers.get(self.header_name), request.query.get("token"))
        return self.tokens.tier_of(token)

    def rate_wait(self, ip: str, tier: Tier) -> float:
        """0.0 if the request may go ahead (or rate limits are off), else seconds to wait."""
        if self.rates is None:
            return 0.0
        return self.rates.check(ip, tier, time.monotonic())


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def guard_middleware(guard: Guard, is_stream: Callable[[web.Request], bool]) -> Middleware:
    """The aiohttp middleware applying `guard`; `is_stream` tells streaming connections apart."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        ip = guard.client_of(request)
        tier = guard.tier_of(request)
        wait = guard.rate_wait(ip, tier or Tier.FREE)
        if wait > 0:
            guard.stats.rate_limited += 1
            return _error(429, "rate limit exceeded", {"Retry-After": retry_after_header(wait)})
        if guard.auth_required and tier is None:
            guard.stats.unauthorized += 1
            return _error(
                401,
                "a valid token is required: send it as 'Authorization: Bearer <token>' "
                "(or in the configured header), or as ?token=<token>",
                {"WWW-Authenticate": 'Bearer realm="certlake"'},
            )
        limiter = guard.connections
        if limiter is None or not is_stream(request):
            return await handler(request)
        refusal = limiter.acquire(ip)
        if refusal is Refusal.SERVER_FULL:
            guard.stats.server_full += 1
            return _error(
                refusal.value,
                "the server is at its connection limit",
                {"Retry-After": SERVER_FULL_RETRY_AFTER},
            )
        if refusal is Refusal.CLIENT_FULL:
            guard.stats.client_full += 1
            return _error(
                refusal.value, f"at most {limiter.per_ip} streaming connections per client"
            )
        try:
            return await handler(request)
        finally:
            limiter.release(ip)

    return middleware

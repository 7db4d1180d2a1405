"""The test log's HTTP server: a thin aiohttp shell over `TestLog`, `FaultPlan` and the log list.

URL layout, for a server at BASE hosting an RFC 6962 log `rfc6962` and a static log `static`:

    BASE/log_list.json                       v3 log list describing every hosted log
    BASE/rfc6962/ct/v1/get-sth               … get-entries, get-sth-consistency,
                                             get-proof-by-hash, get-entry-and-proof, get-roots
    BASE/static/                             submission prefix (checkpoint origin), get-roots
    BASE/static/mon/checkpoint               monitoring prefix: checkpoint, tile/…, issuer/…
    BASE/admin/faults                        GET the plan, POST {"faults": [...], "seed", "append"},
                                             DELETE to clear
    BASE/admin/grow?n=N[&log=NAME…]          add N entries now (to every log unless named)
    BASE/admin/stats                         requests per endpoint, log and operator, 429s
                                             per operator, faults injected, sizes per log

Logs and operators: two logs of one operator by default; `ecosystem_logs(n, operators=k)` builds
a set shaped like the real ecosystem (see `certlake.testlog.ecosystem`), each operator its own
object in the log list.

Limits real logs put on readers: `batch_cap` entries per get-entries answer, with `align` ending
answers on multiples of the cap; and a request rate per operator (`rate_limit`, or per operator
with `OperatorConfig`): each client address gets max(1, Q) requests at once and Q per second
over all the operator's logs and endpoints, then 429 with `Retry-After` (see
`certlake.testlog.ratelimit`).

Growth: `rate` adds each new certificate to every log; `total_rate` adds that many entries per
second over all the logs, round-robin, each log getting total_rate / N. Entries added by growth
become visible at the next sequencing tick (`sequence_interval`, 1 s by default, like Sunlight;
0 publishes at once), so tree heads advance in steps; entries added with `grow()` or
`/admin/grow` are published immediately, so tests need not wait.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import gzip
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType

import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from certlake.ct.entry import LogKind
from certlake.ct.tile import TILE_WIDTH, parse_tile_path
from certlake.server.guard import retry_after_header
from certlake.testlog.ecosystem import (
    DEFAULT_LOGS,
    LogConfig,
    OperatorConfig,
    Pace,
    resolve_operators,
    spread,
)
from certlake.testlog.faults import (
    Action,
    CorruptMode,
    DropMode,
    Endpoint,
    Fault,
    FaultKind,
    FaultPlan,
    FaultSpecError,
    Oversize,
    gzip_padded,
    padded,
)
from certlake.testlog.log import (
    DATA_TILE_CACHE_BYTES,
    LoggedCert,
    RequestError,
    TestLog,
    TileNotFound,
    TreeHead,
    get_entries_range,
)
from certlake.testlog.loglist import ListedLog, log_list
from certlake.testlog.pool import DEFAULT_POOL_SIZE, CertPool
from certlake.testlog.ratelimit import OperatorLimiter
from certlake.testlog.signer import LogSigner

MONITORING = "mon"
# Trillian's default cap.
DEFAULT_BATCH_CAP = 1000
GROWTH_TICK = 0.05
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_IMMUTABLE = "public, max-age=604800, immutable"


@dataclass(slots=True)
class OperatorStats:
    requests: int = 0
    rate_limited: int = 0  # answered 429 by the operator's rate limit, not by a fault


@dataclass(slots=True)
class Stats:
    """What the server did, so tests can assert that a fault really happened."""

    requests: Counter[Endpoint] = field(default_factory=Counter)
    requests_by_log: dict[str, Counter[Endpoint]] = field(default_factory=dict)
    faults: Counter[FaultKind] = field(default_factory=Counter)
    entries_served: int = 0
    operators: dict[str, OperatorStats] = field(default_factory=dict)
    # Requests by User-Agent header ("" when absent): operators identify clients by it.
    user_agents: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, object]:
        return {
            "requests": {e.value: n for e, n in self.requests.items()},
            "requests_by_log": {
                log: {e.value: n for e, n in c.items()} for log, c in self.requests_by_log.items()
            },
            "faults": {k.value: n for k, n in self.faults.items()},
            "entries_served": self.entries_served,
            "user_agents": dict(self.user_agents),
            "operators": {
                op: {"requests": c.requests, "rate_limited": c.rate_limited}
                for op, c in self.operators.items()
            },
        }


@dataclass(frozen=True, slots=True)
class Reply:
    body: bytes
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json(obj: object) -> Reply:
    return Reply(orjson.dumps(obj))


def _text(text: str, status: int) -> Reply:
    return Reply(text.encode(), status, "text/plain; charset=utf-8")


def _response(reply: Reply) -> web.Response:
    return web.Response(
        body=reply.body,
        status=reply.status,
        headers={"Content-Type": reply.content_type, **reply.headers},
    )


def seeded_signer(seed: int, name: str) -> LogSigner:
    """The log's P-256 key, derived from the seed so that a seed names a stable log list."""
    digest = hashlib.sha256(f"certlake-testlog/{seed}/{name}".encode()).digest()
    scalar = int.from_bytes(digest, "big") % (_P256_ORDER - 1) + 1
    return LogSigner(ec.derive_private_key(scalar, ec.SECP256R1()))


def _uint_param(request: web.Request, name: str) -> int:
    text = request.query.get(name)
    if text is None or not (text.isascii() and text.isdigit()):
        raise RequestError(f"parameter {name} must be a non-negative integer, got {text!r}")
    return int(text)


def hosted_log_url(base_url: str, log: LogConfig) -> str:
    """A hosted log's identity URL: RFC 6962 API base, or static monitoring prefix (no '/')."""
    suffix = f"/{MONITORING}" if log.kind is LogKind.STATIC else ""
    return f"{base_url}/{log.name}{suffix}"


class TestLogServer:
    """A real CT log server on a loopback port, hosting one or more logs; see the module doc.

    Use as `async with TestLogServer(initial_size=1000) as srv:` and read `srv.rfc6962_url`,
    `srv.static_url`, `srv.log_list_url`; `srv.grow(n)` adds entries, `srv.faults` is the live
    fault plan and `srv.stats` what happened. `clock` (monotonic seconds) drives the rate
    limits only, so tests can step it.

    `public_url` names the server in its log list, its logs' URLs and checkpoint origins instead
    of the address it is bound to (`srv.address`): a name that stays when the port changes,
    which the reader's client must resolve to that address (`testlog/resolver.py`).
    """

    __test__ = False

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        initial_size: int = 0,
        rate: float = 0.0,
        batch_cap: int = DEFAULT_BATCH_CAP,
        align: bool = False,
        faults: Sequence[Fault] = (),
        logs: Sequence[LogConfig] = DEFAULT_LOGS,
        sequence_interval: float = 1.0,
        pool_size: int = DEFAULT_POOL_SIZE,
        operators: Sequence[OperatorConfig] = (),
        rate_limit: float | None = None,
        total_rate: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        public_url: str | None = None,
    ) -> None:
        if batch_cap < 1:
            raise ValueError(f"batch_cap must be >= 1, got {batch_cap}")
        if min(rate, total_rate, initial_size, sequence_interval) < 0:
            raise ValueError("rate, total_rate, initial_size and sequence_interval must be >= 0")
        names = [c.name for c in logs]
        if not logs or len(set(names)) != len(names) or "admin" in names:
            raise ValueError(f"log names must be unique, non-empty and not 'admin': {names}")
        self.host = host
        self.port = port
        self.seed = seed
        self.initial_size = initial_size
        self.rate = rate
        self.batch_cap = batch_cap
        self.align = align
        self.sequence_interval = sequence_interval
        self.total_rate = total_rate
        self.clock = clock
        self.faults = FaultPlan(faults, seed)
        self.stats = Stats()
        self.pool = CertPool(seed, pool_size)
        self._configs = tuple(logs)
        self.operators = resolve_operators(self._configs, operators, rate_limit)
        self._operator_of = {c.name: c.operator for c in self._configs}
        self._limiter = OperatorLimiter({op.name: op.rate_limit for op in self.operators.values()})
        self.logs: dict[str, TestLog] = {}
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._log_list = b""
        self.public_url = public_url
        self.address = ""  # where it listens, once started
        self.base_url = ""  # what it is called: `public_url`, else `address`

    # --- URLs ---------------------------------------------------------------------------------

    def log_url(self, name: str) -> str:
        """The log's identity URL: RFC 6962 API base, or static monitoring prefix (no '/')."""
        return hosted_log_url(self.base_url, LogConfig(name, self.logs[name].kind))

    def _first(self, kind: LogKind) -> str:
        for name, log in self.logs.items():
            if log.kind is kind:
                return self.log_url(name)
        raise LookupError(f"no {kind.value} log on this server")

    @property
    def rfc6962_url(self) -> str:
        return self._first(LogKind.RFC6962)

    @property
    def static_url(self) -> str:
        return self._first(LogKind.STATIC)

    @property
    def log_list_url(self) -> str:
        return f"{self.base_url}/log_list.json"

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> TestLogServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application()
        self._routes(app)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        # The origin names the real port, so the logs are created once the socket is bound.
        self.port = int(runner.addresses[0][1])
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.address = f"http://{host}:{self.port}"
        self.base_url = self.public_url or self.address
        listed = []
        static = sum(1 for cfg in self._configs if cfg.kind is LogKind.STATIC)
        for cfg in self._configs:
            signer = seeded_signer(self.seed, cfg.name)
            submission = f"{self.base_url}/{cfg.name}/"
            origin = submission.removeprefix("http://").rstrip("/")
            self.logs[cfg.name] = TestLog(
                cfg.name, cfg.kind, signer, origin, DATA_TILE_CACHE_BYTES // max(1, static)
            )
            listed.append(
                ListedLog(
                    description=f"certlake test log {cfg.name} ({cfg.kind.value})",
                    kind=cfg.kind,
                    public_key_der=signer.public_key_der,
                    url=submission,
                    monitoring_url=f"{submission}{MONITORING}/",
                    operator=cfg.operator,
                    operator_email=self.operators[cfg.operator].email,
                )
            )
        self._log_list = orjson.dumps(log_list(listed, datetime.now(UTC)))
        self.grow(self.initial_size)
        if self.rate > 0 or self.total_rate > 0:
            self._tasks.append(asyncio.create_task(self._grow_forever()))
        if self.sequence_interval > 0:
            self._tasks.append(asyncio.create_task(self._sequence_forever()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- growth -------------------------------------------------------------------------------

    def add(self, certs: Iterable[LoggedCert], logs: Sequence[str] | None = None) -> None:
        """Log each certificate in every named log (all by default) and publish at once.

        The same certificate in several logs is what real CAs do (two or more SCTs); the
        entries get the same timestamp in each.
        """
        self._append(list(certs), logs)
        self.publish()

    def grow(self, n: int, logs: Sequence[str] | None = None) -> None:
        """Add `n` new certificates from the pool to every named log, published at once."""
        self.add(self.pool.take(n), logs)

    def _append(self, certs: list[LoggedCert], logs: Sequence[str] | None) -> None:
        targets = [self.logs[name] for name in (self.logs if logs is None else logs)]
        if not certs or not targets:
            return
        # Timestamps strictly increase within a log and stay in the past when many entries are
        # added at once, so a recycled pool certificate never repeats a leaf hash.
        now_ms = int(time.time() * 1000)
        first = max(now_ms - len(certs) + 1, max(t.last_timestamp for t in targets) + 1)
        for i, cert in enumerate(certs):
            for log in targets:
                log.append(cert, first + i)

    def publish(self) -> None:
        now_ms = int(time.time() * 1000)
        for log in self.logs.values():
            log.publish(now_ms)

    def _spread(self, certs: list[LoggedCert], offset: int) -> None:
        """Add each certificate to one log, round-robin from log `offset` (mod the count)."""
        shares = spread(len(certs), offset, len(self.logs))
        for name, positions in zip(self.logs, shares, strict=True):
            self._append([certs[p] for p in positions], [name])

    async def _grow_forever(self) -> None:
        started = time.monotonic()
        every, total = Pace(self.rate), Pace(self.total_rate)
        while True:
            await asyncio.sleep(GROWTH_TICK)
            elapsed = time.monotonic() - started
            if n := every.due(elapsed):
                self._append(self.pool.take(n), None)
            if n := total.due(elapsed):
                self._spread(self.pool.take(n), total.given - n)
            if self.sequence_interval == 0:
                self.publish()

    async def _sequence_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sequence_interval)
            self.publish()

    # --- HTTP ---------------------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        # Registration order matters: the fixed paths must win over the `{log}` patterns.
        app.router.add_get("/log_list.json", self._log_list_handler)
        app.router.add_get("/admin/faults", self._faults_get)
        app.router.add_post("/admin/faults", self._faults_post)
        app.router.add_delete("/admin/faults", self._faults_delete)
        app.router.add_post("/admin/grow", self._grow_handler)
        app.router.add_get("/admin/stats", self._stats_handler)
        app.router.add_get("/{log}/ct/v1/{method}", self._rfc6962_handler)
        app.router.add_get(f"/{{log}}/{MONITORING}/checkpoint", self._checkpoint_handler)
        app.router.add_get(f"/{{log}}/{MONITORING}/tile/{{path:.+}}", self._tile_handler)
        app.router.add_get(f"/{{log}}/{MONITORING}/issuer/{{fp}}", self._issuer_handler)

    async def _respond(
        self,
        request: web.Request,
        endpoint: Endpoint,
        log: str | None,
        make: Callable[[Action], Reply],
        batch: int | None = None,
        head_size: int | None = None,
    ) -> web.StreamResponse:
        """Count the request, apply the operator's rate limit, roll the faults, then answer (or
        fail, or hang up)."""
        self.stats.requests[endpoint] += 1
        self.stats.user_agents[request.headers.get("User-Agent", "")] += 1
        if log is not None:
            self.stats.requests_by_log.setdefault(log, Counter())[endpoint] += 1
            limited = self._rate_limit(request, log)
            if limited is not None:
                return _response(limited)
        action = self.faults.decide(endpoint, log, time.time(), batch, head_size)
        self.stats.faults.update(action.fired)
        if action.delay:
            await asyncio.sleep(action.delay)
        if action.drop is DropMode.BEFORE:
            _hang_up(request)
            return web.Response()
        if action.status is not None:
            reply = _text(f"injected fault: {action.status}\n", action.status)
            reply.headers.update(action.headers)
        else:
            try:
                reply = make(action)
            except RequestError as e:
                reply = _text(f"{e}\n", 400)
            except TileNotFound as e:
                reply = _text(f"{e}\n", 404)
        if action.oversize is not None and reply.status == 200:
            return await _oversized(request, reply, action.oversize)
        if action.drop is DropMode.MID:
            resp = web.StreamResponse(status=reply.status, headers=reply.headers)
            resp.content_type = reply.content_type
            resp.content_length = len(reply.body)
            await resp.prepare(request)
            await resp.write(reply.body[: len(reply.body) // 2])
            _hang_up(request)
            return resp
        return _response(reply)

    def _rate_limit(self, request: web.Request, log: str) -> Reply | None:
        """The 429 for a request over its operator's limit, else None (and a token is spent)."""
        operator = self._operator_of[log]
        counts = self.stats.operators.setdefault(operator, OperatorStats())
        counts.requests += 1
        wait = self._limiter.check(operator, request.remote or "", self.clock())
        if not wait:
            return None
        counts.rate_limited += 1
        reply = _text(f"rate limit of {operator} exceeded\n", 429)
        reply.headers["Retry-After"] = retry_after_header(wait)
        return reply

    def _log(self, request: web.Request, kind: LogKind | None = None) -> TestLog:
        log = self.logs.get(request.match_info["log"])
        if log is None or (kind is not None and log.kind is not kind):
            raise web.HTTPNotFound(text="no such log\n")
        return log

    async def _log_list_handler(self, request: web.Request) -> web.StreamResponse:
        return await self._respond(
            request, Endpoint.LOG_LIST, None, lambda _: Reply(self._log_list)
        )

    async def _rfc6962_handler(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        log = self._log(request)
        if method == "get-roots":
            roots = [base64.b64encode(r).decode() for r in log.roots]
            return await self._respond(
                request, Endpoint.GET_ROOTS, log.name, lambda _: _json({"certificates": roots})
            )
        if log.kind is not LogKind.RFC6962:
            # Static logs answer only submission endpoints under their submission prefix.
            raise web.HTTPNotFound(text="static-ct-api log: read the monitoring prefix\n")
        if method == "get-entries":
            return await self._get_entries(request, log)
        if method == "get-sth":
            return await self._get_sth(request, log)
        handlers: dict[str, tuple[Endpoint, Callable[[], object]]] = {
            "get-sth-consistency": (
                Endpoint.GET_STH_CONSISTENCY,
                lambda: log.consistency(
                    _uint_param(request, "first"), _uint_param(request, "second")
                ),
            ),
            "get-proof-by-hash": (
                Endpoint.GET_PROOF_BY_HASH,
                lambda: log.proof_by_hash(_hash_param(request), _uint_param(request, "tree_size")),
            ),
            "get-entry-and-proof": (
                Endpoint.GET_ENTRY_AND_PROOF,
                lambda: self._entry_and_proof(request, log),
            ),
        }
        if method not in handlers:
            raise web.HTTPNotFound(text=f"unknown method {method}\n")
        endpoint, produce = handlers[method]
        return await self._respond(request, endpoint, log.name, lambda _: _json(produce()))

    async def _get_sth(self, request: web.Request, log: TestLog) -> web.StreamResponse:
        def make(action: Action) -> Reply:
            head = _served_head(log, action)
            if head is None:
                raise RequestError("no tree head published yet")
            return _json(head.sth.to_json())

        return await self._respond(
            request, Endpoint.GET_STH, log.name, make, head_size=log.published_size
        )

    def _entry_and_proof(self, request: web.Request, log: TestLog) -> dict[str, object]:
        index = _uint_param(request, "leaf_index")
        corrupt = self.faults.corruption(log.name)
        answer = log.entry_and_proof(index, _uint_param(request, "tree_size"), corrupt)
        self._count_served(range(index, index + 1), corrupt)
        return answer

    async def _get_entries(self, request: web.Request, log: TestLog) -> web.StreamResponse:
        try:
            indices: range | RequestError = get_entries_range(
                _uint_param(request, "start"),
                _uint_param(request, "end"),
                log.published_size,
                self.batch_cap,
                self.align,
            )
        except RequestError as e:
            indices = e

        def make(action: Action) -> Reply:
            if isinstance(indices, RequestError):
                raise indices
            served = indices if action.entries is None else indices[: action.entries]
            corrupt = self.faults.corruption(log.name)
            self._count_served(served, corrupt)
            return Reply(log.get_entries_body(served, corrupt))

        batch = None if isinstance(indices, RequestError) else len(indices)
        return await self._respond(request, Endpoint.GET_ENTRIES, log.name, make, batch)

    def _count_served(self, indices: range, corrupt: Mapping[int, CorruptMode]) -> None:
        self.stats.entries_served += len(indices)
        hit = sum(1 for i in corrupt if i in indices)
        if hit:
            self.stats.faults[FaultKind.CORRUPT] += hit

    async def _checkpoint_handler(self, request: web.Request) -> web.StreamResponse:
        log = self._log(request, LogKind.STATIC)

        def make(action: Action) -> Reply:
            head = _served_head(log, action)
            if head is None:
                raise TileNotFound("no checkpoint published yet")
            return Reply(
                head.checkpoint,
                content_type="text/plain; charset=utf-8",
                headers={"Cache-Control": "no-store"},
            )

        return await self._respond(
            request, Endpoint.CHECKPOINT, log.name, make, head_size=log.published_size
        )

    async def _tile_handler(self, request: web.Request) -> web.StreamResponse:
        log = self._log(request, LogKind.STATIC)
        level_text, _, rest = request.match_info["path"].partition("/")
        endpoint = Endpoint.DATA_TILE if level_text == "data" else Endpoint.HASH_TILE

        def make(_: Action) -> Reply:
            try:
                n, width = parse_tile_path(rest)
            except ValueError as e:
                raise TileNotFound(f"bad tile path: {e}") from e
            if endpoint is Endpoint.DATA_TILE:
                corrupt = self.faults.corruption(log.name)
                body = log.data_tile_gz(n, width, corrupt)
                self._count_served(range(n * TILE_WIDTH, n * TILE_WIDTH + width), corrupt)
                return Reply(
                    body,
                    content_type="application/octet-stream",
                    headers={"Content-Encoding": "gzip", "Cache-Control": _IMMUTABLE},
                )
            if not level_text.isdigit():
                raise TileNotFound(f"bad tile level {level_text!r}")
            return Reply(
                log.hash_tile(int(level_text), n, width),
                content_type="application/octet-stream",
                headers={"Cache-Control": _IMMUTABLE},
            )

        return await self._respond(request, endpoint, log.name, make)

    async def _issuer_handler(self, request: web.Request) -> web.StreamResponse:
        log = self._log(request, LogKind.STATIC)
        fp = request.match_info["fp"]

        def make(_: Action) -> Reply:
            der = log.issuers.get(fp)
            if der is None:
                raise TileNotFound(f"no issuer {fp}")
            return Reply(
                der, content_type="application/pkix-cert", headers={"Cache-Control": _IMMUTABLE}
            )

        return await self._respond(request, Endpoint.ISSUER, log.name, make)

    # --- admin --------------------------------------------------------------------------------

    async def _faults_get(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.faults.to_json(), dumps=_dumps)

    async def _faults_post(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json(loads=orjson.loads)
            if not isinstance(body, dict) or not isinstance(body.get("faults", []), list):
                raise FaultSpecError('expected {"faults": [...], "seed": N, "append": false}')
            faults = [
                Fault.from_spec(f) if isinstance(f, str) else Fault.from_json(_object(f))
                for f in body.get("faults", [])
            ]
            seed = body.get("seed")
            if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
                raise FaultSpecError(f"seed must be an integer, got {seed!r}")
        except (FaultSpecError, orjson.JSONDecodeError) as e:
            return web.json_response({"error": str(e)}, status=400, dumps=_dumps)
        if body.get("append"):
            self.faults.add(faults)
        else:
            self.faults.replace(faults, seed)
        return web.json_response(self.faults.to_json(), dumps=_dumps)

    async def _faults_delete(self, request: web.Request) -> web.StreamResponse:
        self.faults.replace([])
        return web.json_response(self.faults.to_json(), dumps=_dumps)

    async def _grow_handler(self, request: web.Request) -> web.StreamResponse:
        try:
            n = _uint_param(request, "n")
        except RequestError as e:
            return web.json_response({"error": str(e)}, status=400, dumps=_dumps)
        names = request.query.getall("log", [])
        unknown = [name for name in names if name not in self.logs]
        if unknown:
            return web.json_response({"error": f"unknown logs {unknown}"}, status=404)
        self.grow(n, names or None)
        return web.json_response(self._sizes(), dumps=_dumps)

    async def _stats_handler(self, request: web.Request) -> web.StreamResponse:
        limits = {op.name: op.rate_limit for op in self.operators.values()}
        return web.json_response(
            {**self.stats.to_json(), "logs": self._sizes(), "rate_limits": limits}, dumps=_dumps
        )

    def _sizes(self) -> dict[str, object]:
        return {
            name: {
                "kind": log.kind.value,
                "operator": self._operator_of[name],
                "url": self.log_url(name),
                "tree_size": log.size,
                "published_size": log.published_size,
            }
            for name, log in self.logs.items()
        }


async def _oversized(request: web.Request, reply: Reply, oversize: Oversize) -> web.StreamResponse:
    """`reply` blown up as `oversize` says, sent for as long as the reader takes it (a reader
    that hangs up at its bound is what this fault is for)."""
    plain = reply.body
    if reply.headers.get("Content-Encoding") == "gzip":
        plain = gzip.decompress(plain)  # a data tile: it is padded before it is compressed
    resp = web.StreamResponse(headers={"Content-Type": reply.content_type})
    if oversize.gzip:
        resp.headers["Content-Encoding"] = "gzip"
        parts = gzip_padded(plain, oversize.size)
    elif oversize.rate is None:
        parts = padded(plain, oversize.size)
    else:
        # A paced body goes out a tenth of its second's worth at a time.
        parts = padded(plain, oversize.size, max(1, oversize.rate // 10))
    if oversize.declared:
        resp.content_length = max(oversize.size, len(plain))
    await resp.prepare(request)
    with contextlib.suppress(ConnectionError):
        for part in parts:
            await resp.write(part)
            if oversize.rate is not None:
                await asyncio.sleep(len(part) / oversize.rate)
        await resp.write_eof()
    return resp


def _served_head(log: TestLog, action: Action) -> TreeHead | None:
    """The head a get-sth or checkpoint answer carries: the published one, unless it lies."""
    if log.head is None or action.lie is None:
        return log.head
    return log.lying_head(action.lie)


def _hang_up(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


def _hash_param(request: web.Request) -> bytes:
    text = request.query.get("hash", "")
    try:
        value = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"hash is not base64: {text!r:.60}") from None
    if len(value) != 32:
        raise RequestError(f"hash must be 32 bytes, got {len(value)}")
    return value


def _object(value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise FaultSpecError(f"a fault is a spec string or an object, got {value!r:.60}")
    return value


def _dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()

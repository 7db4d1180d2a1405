"""The HTTP client, log readers and retry policy built from the configuration — shared by serve,
backfill, gaps and fetch so that every mode reads logs the same way."""

from __future__ import annotations

import base64

from aiohttp.abc import AbstractResolver

from certlake.config import Config, CtLogConfig, LogSpec
from certlake.ct.backoff import RetryPolicy
from certlake.ct.client.http import USER_AGENT, CTHttp
from certlake.ct.client.reader import LogReader
from certlake.ct.client.rfc6962 import Rfc6962Log
from certlake.ct.client.static import IssuerCache, StaticLog
from certlake.ct.entry import LogKind
from certlake.ct.limits import ReadLimits
from certlake.ct.loglist import ConfiguredLog, LogInfo
from certlake.ct.pacing import PacingLimits

# The starting rate when `default_operator_rate_limit_ms` is 0 ("unpaced"): the adaptive rate
# climbs from there within a second when the operator keeps up.
_UNPACED_START = 50.0


def configured(spec: LogSpec) -> ConfiguredLog:
    key = None if spec.key is None else base64.b64decode(spec.key)
    return ConfiguredLog(spec.name, spec.url, key, spec.log_origin)


def config_logs(config: Config) -> tuple[list[ConfiguredLog], list[ConfiguredLog]]:
    """`custom_logs` (RFC 6962) and `static_logs` (static-ct monitoring prefixes)."""
    return [configured(s) for s in config.custom_logs], [configured(s) for s in config.static_logs]


def http_client(ct: CtLogConfig, resolver: AbstractResolver | None = None) -> CTHttp:
    """The HTTP client every command reads logs with: the configured timeout and bounds on an
    answer, and the configured User-Agent (an operator's contact, which log operators ask for)
    or certlake's own. `resolver`: see `CTHttp`."""
    return CTHttp(
        timeout=ct.request_timeout_secs,
        user_agent=ct.user_agent or USER_AGENT,
        limits=ReadLimits.configured(ct.max_response_bytes, ct.max_decompressed_bytes),
        resolver=resolver,
        source_address=ct.source_address,
    )


def ct_log_retry_policy(ct: CtLogConfig) -> RetryPolicy:
    """`ct_log.retry_*`: how the live watchers and `certlake fetch` retry a failed read."""
    return RetryPolicy(
        max_attempts=ct.retry_max_attempts,
        initial_delay=ct.retry_initial_delay_ms / 1000,
        max_delay=ct.retry_max_delay_ms / 1000,
    )


def make_reader(
    http: CTHttp, log: LogInfo, ct: CtLogConfig, issuers: IssuerCache | None = None
) -> LogReader:
    """A reader for `log`, verifying tree heads when the log's key is known."""
    budget = http.budget(log.operator, operator_limits(ct, log.operator))
    if log.kind is LogKind.RFC6962:
        return Rfc6962Log(http, log.source, log.key_der, budget, batch_size=ct.batch_size)
    return StaticLog(http, log.source, log.origin, log.key_der, budget, issuers)


def operator_limits(ct: CtLogConfig, operator: str) -> PacingLimits:
    """The pacing of `operator`'s logs: the defaults, overridden by `ct_log.operators` (whose
    names match the log list's in any case)."""
    wanted = operator.casefold()
    override = next((o for name, o in ct.operators.items() if name.casefold() == wanted), None)
    spacing = ct.default_operator_rate_limit_ms / 1000
    initial = 1 / spacing if spacing > 0 else _UNPACED_START
    ceiling = None if override is None else override.max_requests_per_second
    in_flight = ct.default_operator_max_in_flight
    if override is not None and override.max_in_flight is not None:
        in_flight = override.max_in_flight
    if ceiling is not None:
        initial = min(initial, ceiling)
    return PacingLimits(
        initial_rate=initial,
        max_rate=ceiling,
        max_in_flight=in_flight,
        min_rate=min(0.1, initial),
    )

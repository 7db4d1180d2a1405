"""Log readers and retry policy built from the configuration — shared by serve, backfill and
fetch so that every mode reads logs the same way."""

from __future__ import annotations

import base64

from certlake.config import Config, CtLogConfig, LogSpec
from certlake.ct.backoff import RetryPolicy
from certlake.ct.client.http import CTHttp
from certlake.ct.client.reader import LogReader
from certlake.ct.client.rfc6962 import Rfc6962Log
from certlake.ct.client.static import IssuerCache, StaticLog
from certlake.ct.entry import LogKind
from certlake.ct.loglist import ConfiguredLog, LogInfo

# Several workers of one job may read the same operator's logs at once; the operator's limit
# on concurrent requests is shared by all of them.
OPERATOR_CONCURRENCY = 4


def configured(spec: LogSpec) -> ConfiguredLog:
    key = None if spec.key is None else base64.b64decode(spec.key)
    return ConfiguredLog(spec.name, spec.url, key, spec.log_origin)


def config_logs(config: Config) -> tuple[list[ConfiguredLog], list[ConfiguredLog]]:
    """`custom_logs` (RFC 6962) and `static_logs` (static-ct monitoring prefixes)."""
    return [configured(s) for s in config.custom_logs], [configured(s) for s in config.static_logs]


def retry_policy(ct: CtLogConfig) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=ct.retry_max_attempts,
        initial_delay=ct.retry_initial_delay_ms / 1000,
        max_delay=ct.retry_max_delay_ms / 1000,
    )


def make_reader(
    http: CTHttp, log: LogInfo, ct: CtLogConfig, issuers: IssuerCache | None = None
) -> LogReader:
    """A reader for `log`, verifying tree heads when the log's key is known."""
    budget = http.budget(
        log.operator,
        concurrency=OPERATOR_CONCURRENCY,
        min_interval=ct.default_operator_rate_limit_ms / 1000,
    )
    if log.kind is LogKind.RFC6962:
        return Rfc6962Log(http, log.source, log.key_der, budget, batch_size=ct.batch_size)
    return StaticLog(http, log.source, log.origin, log.key_der, budget, issuers)

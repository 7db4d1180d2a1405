"""Which logs exist: the log list (`ct_logs_url`) plus the configured logs — shared by `serve`,
which watches them, and `backfill` / `gaps`, which refill their archive, so that every mode
sees the same logs under the same names."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

from certlake.config import Config
from certlake.ct.client.http import CTHttp
from certlake.ct.errors import FetchError
from certlake.ct.loglist import (
    LogInfo,
    LogListError,
    merge_config_logs,
    parse_log_list,
    select_watchable,
)
from certlake.ingest.readers import config_logs

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Discovery:
    """`watchable`: the list's watchable logs plus the configured ones (what serve watches).
    `listed`: every log of the list whatever its state (a `readonly` or `retired` log can still
    be read, and its archive may still have holes). `list_error`: why the list could not be had
    (then both come from the configuration alone)."""

    watchable: tuple[LogInfo, ...]
    listed: tuple[LogInfo, ...]
    list_error: str | None

    def resolve(self, url: str) -> LogInfo | None:
        """The log at normalized `url` as the list or the configuration describes it."""
        for info in (*self.watchable, *self.listed):
            if info.url == url:
                return info
        return None


async def read_log_list(url: str, http: CTHttp) -> bytes:
    if url.startswith("file://"):
        return await asyncio.to_thread(Path(urlparse(url).path).read_bytes)
    return await http.get(url)


async def discover_logs(config: Config, http: CTHttp) -> Discovery:
    """The logs of the list and the configuration; configured logs alone (and a loud warning)
    when the list cannot be had — no mode stops for that."""
    custom, static = config_logs(config)
    try:
        parsed = parse_log_list(await read_log_list(config.ct_logs_url, http))
    except (FetchError, LogListError, OSError) as e:
        log.warning("log list unavailable", extra={"url": config.ct_logs_url, "error": str(e)})
        return Discovery(tuple(merge_config_logs([], custom, static)), (), str(e))
    selected = select_watchable(parsed.logs, now=datetime.now(UTC))
    watchable = merge_config_logs(selected, custom, static, known=parsed.logs)
    return Discovery(tuple(watchable), parsed.logs, None)

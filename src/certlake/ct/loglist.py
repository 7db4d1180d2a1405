"""Chrome's CT log list v3 (`log_list.json` / `all_logs_list.json`), and which logs to watch.

Shape and states: Chrome's v3 schema (`log_list_schema.json`). Pure: bytes or decoded JSON in,
values out.

Selection policy (decided here):

* Watch `usable`, `qualified`, `pending` and state-less logs; skip `readonly`, `retired`,
  `rejected` and any state name this code does not know (a new state is more likely a way out
  of the list than into it).
* `log_type: test` logs are watched by default: in `all_logs_list.json` every state-less log
  that is still alive is a test or monitoring-only log, so "watch state-less logs" means them,
  and the Rust tool users migrate from showed them too. `include_test=False` drops them.
* Shards whose `temporal_interval` ended more than `expiry_grace` (30 days) before `now` are
  skipped: a log refuses certificates that expired before the submission, so once the
  interval is over and the merge delay (at most a week in the list) has passed the log cannot
  grow; the extra margin lets a restarted stream drain what it had not read yet. Most such
  logs are also shut down, and polling them would only produce errors forever. Without `now`
  no time filter applies, so the function stays pure; the caller passes the clock.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from certlake.ct.entry import LogKind, LogSource
from certlake.ct.keys import log_id as compute_log_id
from certlake.ct.urls import URLError, checkpoint_origin, normalize_url

WATCHED_STATES = frozenset({"usable", "qualified", "pending"})
DEFAULT_EXPIRY_GRACE = timedelta(days=30)
# Operator of logs that come from the configuration, as the Rust tool names them.
CONFIG_OPERATOR = "Custom"


class LogListError(ValueError):
    """A log list that is not valid JSON or not shaped like schema v3."""


@dataclass(frozen=True, slots=True)
class TemporalInterval:
    """The certificate NotAfter window a sharded log accepts: [start, end)."""

    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class LogInfo:
    description: str
    url: str  # normalized identity: `url` for RFC 6962 logs, `monitoring_url` for tiled logs
    kind: LogKind
    operator: str
    key_der: bytes | None = None  # None for logs from the configuration: read unverified
    log_id: bytes | None = None
    state: str | None = None
    log_type: str | None = None  # None = production; "test"; "monitoring_only"
    mmd: int | None = None
    temporal_interval: TemporalInterval | None = None
    submission_url: str | None = None  # tiled logs only, normalized
    origin: str | None = None  # tiled logs only: the checkpoint origin

    @property
    def source(self) -> LogSource:
        return LogSource(url=self.url, name=self.description, kind=self.kind)


@dataclass(frozen=True, slots=True)
class LogList:
    version: str | None
    timestamp: datetime | None
    logs: tuple[LogInfo, ...]


def parse_log_list(data: bytes | str | Mapping[str, Any]) -> LogList:
    """Parse a v3 log list (raw JSON or already decoded). Both `logs` and `tiled_logs`."""
    if isinstance(data, bytes | str):
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as e:
            raise LogListError(f"log list is not valid JSON: {e}") from e
    else:
        doc = data
    top = _object(doc, "log list")
    logs: list[LogInfo] = []
    for i, op in enumerate(_list(top, "operators", "log list", required=True)):
        where = f"operators[{i}]"
        op = _object(op, where)
        operator = _str(op, "name", where)
        for j, entry in enumerate(_list(op, "logs", where)):
            logs.append(_log(entry, f"{where}.logs[{j}]", operator, LogKind.RFC6962))
        for j, entry in enumerate(_list(op, "tiled_logs", where)):
            logs.append(_log(entry, f"{where}.tiled_logs[{j}]", operator, LogKind.STATIC))
    version = _opt_str(top, "version", "log list")
    stamp = _opt_str(top, "log_list_timestamp", "log list")
    return LogList(
        version=version,
        timestamp=None if stamp is None else _time(stamp, "log_list_timestamp"),
        logs=tuple(logs),
    )


def select_watchable(
    logs: Iterable[LogInfo],
    *,
    now: datetime | None = None,
    include_test: bool = True,
    expiry_grace: timedelta = DEFAULT_EXPIRY_GRACE,
) -> list[LogInfo]:
    """The logs a live stream should follow (policy in the module docstring), unique by URL."""
    if now is not None and now.tzinfo is None:
        raise ValueError("now must be timezone-aware")

    def watched(log: LogInfo) -> bool:
        if log.state is not None and log.state not in WATCHED_STATES:
            return False
        if log.log_type == "test" and not include_test:
            return False
        interval = log.temporal_interval
        return now is None or interval is None or interval.end + expiry_grace >= now

    return _unique(log for log in logs if watched(log))


class ConfiguredLog(NamedTuple):
    """A log named in the configuration; `key_der` and `origin` are optional (read unverified
    without a key; a static log's checkpoint can only be verified with its origin)."""

    name: str
    url: str
    key_der: bytes | None = None
    origin: str | None = None


def merge_config_logs(
    selected: Iterable[LogInfo],
    custom_logs: Iterable[ConfiguredLog | tuple[str, str]],
    static_logs: Iterable[ConfiguredLog | tuple[str, str]],
    *,
    known: Iterable[LogInfo] = (),
) -> list[LogInfo]:
    """Selected list logs plus `custom_logs` (RFC 6962) and `static_logs` (monitoring prefix).

    A configured log is watched even when the list would skip it (the operator asked for it);
    if `known` (the whole parsed list) has its URL, that entry is used instead, so its key is
    verified and, for a tiled log, its origin is known. The first occurrence of a URL wins, list
    entries before config ones.
    """
    by_url = {log.url: log for log in known}
    configured = [
        *(_config_log(ConfiguredLog(*c), LogKind.RFC6962, by_url) for c in custom_logs),
        *(_config_log(ConfiguredLog(*c), LogKind.STATIC, by_url) for c in static_logs),
    ]
    return _unique([*selected, *configured])


def _config_log(c: ConfiguredLog, kind: LogKind, known: Mapping[str, LogInfo]) -> LogInfo:
    try:
        normalized = normalize_url(c.url)
    except URLError as e:
        raise LogListError(f"configured log {c.name!r}: {e}") from e
    return known.get(normalized) or LogInfo(
        description=c.name,
        url=normalized,
        kind=kind,
        operator=CONFIG_OPERATOR,
        key_der=c.key_der,
        log_id=None if c.key_der is None else compute_log_id(c.key_der),
        origin=c.origin,
    )


def _unique(logs: Iterable[LogInfo]) -> list[LogInfo]:
    seen: set[str] = set()
    out = []
    for log in logs:
        if log.url not in seen:
            seen.add(log.url)
            out.append(log)
    return out


def _log(entry: Any, where: str, operator: str, kind: LogKind) -> LogInfo:
    obj = _object(entry, where)
    key = _b64(obj, "key", where)
    claimed_id = _b64(obj, "log_id", where)
    if claimed_id != compute_log_id(key):
        raise LogListError(f"{where}.log_id is not the SHA-256 of its key")
    if kind is LogKind.RFC6962:
        url = _url(obj, "url", where)
        submission_url = origin = None
    else:
        url = _url(obj, "monitoring_url", where)
        submission_url = _url(obj, "submission_url", where)
        origin = checkpoint_origin(submission_url)
    return LogInfo(
        description=_str(obj, "description", where),
        url=url,
        kind=kind,
        operator=operator,
        key_der=key,
        log_id=claimed_id,
        state=_state(obj, where),
        log_type=_opt_str(obj, "log_type", where),
        mmd=_mmd(obj, where),
        temporal_interval=_interval(obj, where),
        submission_url=submission_url,
        origin=origin,
    )


def _state(obj: Mapping[str, Any], where: str) -> str | None:
    if "state" not in obj:
        return None
    state = _object(obj["state"], f"{where}.state")
    if len(state) != 1:
        raise LogListError(f"{where}.state must have exactly one key, has {sorted(state)}")
    name = next(iter(state))
    _object(state[name], f"{where}.state.{name}")
    return str(name)


def _interval(obj: Mapping[str, Any], where: str) -> TemporalInterval | None:
    if "temporal_interval" not in obj:
        return None
    here = f"{where}.temporal_interval"
    ti = _object(obj["temporal_interval"], here)
    start = _time(_str(ti, "start_inclusive", here), f"{here}.start_inclusive")
    end = _time(_str(ti, "end_exclusive", here), f"{here}.end_exclusive")
    if end <= start:
        raise LogListError(f"{here} ends before it starts")
    return TemporalInterval(start, end)


def _mmd(obj: Mapping[str, Any], where: str) -> int:
    value = obj.get("mmd")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise LogListError(f"{where}.mmd must be a non-negative integer, got {value!r:.40}")
    return value


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise LogListError(f"{where} must be an object, got {type(value).__name__}")
    return value


def _list(obj: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> list[Any]:
    if key not in obj and not required:
        return []
    value = obj.get(key)
    if not isinstance(value, list):
        raise LogListError(f"{where}.{key} must be a list, got {type(value).__name__}")
    return value


def _str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise LogListError(f"{where}.{key} must be a string, got {type(value).__name__}")
    return value


def _opt_str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    return None if obj.get(key) is None else _str(obj, key, where)


def _b64(obj: Mapping[str, Any], key: str, where: str) -> bytes:
    text = _str(obj, key, where)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise LogListError(f"{where}.{key} is not base64: {e}") from e
    if not raw:
        raise LogListError(f"{where}.{key} is empty")
    return raw


def _url(obj: Mapping[str, Any], key: str, where: str) -> str:
    try:
        return normalize_url(_str(obj, key, where))
    except URLError as e:
        raise LogListError(f"{where}.{key}: {e}") from e


def _time(text: str, where: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as e:
        raise LogListError(f"{where} is not an RFC 3339 time: {text!r:.40}") from e
    if value.tzinfo is None:
        raise LogListError(f"{where} has no time zone: {text!r:.40}")
    return value

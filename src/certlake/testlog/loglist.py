"""The log-list JSON (Chrome's v3 schema) describing the logs a test log server hosts. Pure.

certlake reads it as `ct_logs_url`, so it has the same shape as `all_logs_list.json`: operators,
each with `logs` (RFC 6962, `url`) and `tiled_logs` (static-ct-api, `submission_url` and
`monitoring_url`), each log with its key, log ID and state `usable`.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from certlake.ct.entry import LogKind
from certlake.ct.keys import log_id

OPERATOR = "certlake test log"
OPERATOR_EMAIL = "testlog@certlake.invalid"
# The same values real logs carry: one day for RFC 6962 logs, one minute for Sunlight-era logs.
MMD_RFC6962 = 86400
MMD_STATIC = 60


@dataclass(frozen=True, slots=True)
class ListedLog:
    description: str
    kind: LogKind
    public_key_der: bytes
    url: str  # RFC 6962: the API base; static: the submission prefix (ends with "/")
    monitoring_url: str = ""  # static only (ends with "/")
    operator: str = OPERATOR
    operator_email: str = OPERATOR_EMAIL


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _item(log: ListedLog, stamp: str) -> dict[str, object]:
    item: dict[str, object] = {
        "description": log.description,
        "log_id": base64.b64encode(log_id(log.public_key_der)).decode(),
        "key": base64.b64encode(log.public_key_der).decode(),
    }
    if log.kind is LogKind.RFC6962:
        item |= {"url": log.url, "mmd": MMD_RFC6962}
    else:
        item |= {
            "submission_url": log.url,
            "monitoring_url": log.monitoring_url,
            "mmd": MMD_STATIC,
        }
    item["state"] = {"usable": {"timestamp": stamp}}
    return item


def log_list(logs: Sequence[ListedLog], created: datetime) -> dict[str, object]:
    """The v3 log list; `created` is both the list timestamp and when each log became usable.

    One operator object per distinct `operator`, in order of first appearance; an operator's
    email is that of its first log.
    """
    stamp = _rfc3339(created)
    operators: dict[str, dict[str, Any]] = {}
    for log in logs:
        op = operators.setdefault(
            log.operator,
            {"name": log.operator, "email": [log.operator_email], "logs": [], "tiled_logs": []},
        )
        op["logs" if log.kind is LogKind.RFC6962 else "tiled_logs"].append(_item(log, stamp))
    return {
        "is_all_logs": True,
        "version": "1.0",
        "log_list_timestamp": stamp,
        "operators": list(operators.values()),
    }

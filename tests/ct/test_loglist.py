"""The Chrome log list v3 parser and the watch selection, on the real v78.2 list.

Expected sets are computed from the raw JSON with plain `json` and compared with the parser's.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key
from hypothesis import given, settings
from hypothesis import strategies as st

from certlake.ct.entry import LogKind, LogSource
from certlake.ct.loglist import (
    CONFIG_OPERATOR,
    LogInfo,
    LogListError,
    merge_config_logs,
    parse_log_list,
    select_watchable,
)
from certlake.ct.urls import URLError, checkpoint_origin, normalize_url

LIST_TIME = datetime(2025, 12, 13, 12, 54, 29, tzinfo=UTC)


@pytest.fixture(scope="module")
def raw_bytes(shared_data: Path) -> bytes:
    return (shared_data / "loglist" / "all_logs_list.v78.2.json").read_bytes()


@pytest.fixture(scope="module")
def raw(raw_bytes: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(raw_bytes)
    return doc


@pytest.fixture(scope="module")
def logs(raw_bytes: bytes) -> tuple[LogInfo, ...]:
    return parse_log_list(raw_bytes).logs


def raw_entries(raw: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (kind, log)
        for op in raw["operators"]
        for kind in ("logs", "tiled_logs")
        for log in op[kind]
    ]


def raw_state(log: dict[str, Any]) -> str | None:
    return next(iter(log["state"])) if "state" in log else None


def raw_url(kind: str, log: dict[str, Any]) -> str:
    url: str = log["url" if kind == "logs" else "monitoring_url"]
    return url.rstrip("/")


def test_state_counts_match_the_reference(raw: dict[str, Any], logs: tuple[LogInfo, ...]) -> None:
    expected = {
        ("logs", "rejected"): 108,
        ("logs", None): 30,
        ("logs", "usable"): 29,
        ("logs", "readonly"): 9,
        ("logs", "qualified"): 7,
        ("logs", "retired"): 4,
        ("tiled_logs", None): 28,
        ("tiled_logs", "usable"): 20,
        ("tiled_logs", "qualified"): 6,
        ("tiled_logs", "pending"): 5,
        ("tiled_logs", "rejected"): 1,
    }
    assert Counter((kind, raw_state(log)) for kind, log in raw_entries(raw)) == expected
    kinds = {LogKind.RFC6962: "logs", LogKind.STATIC: "tiled_logs"}
    assert Counter((kinds[log.kind], log.state) for log in logs) == expected
    assert len(logs) == 247


def test_fields_of_real_entries(raw: dict[str, Any], logs: tuple[LogInfo, ...]) -> None:
    by_name = {log.description: log for log in logs}
    assert len(by_name) == len(logs)
    for kind, entry in raw_entries(raw):
        log = by_name[entry["description"]]
        assert log.url == raw_url(kind, entry)
        assert log.key_der == base64.b64decode(entry["key"])
        assert (
            log.log_id == base64.b64decode(entry["log_id"]) == hashlib.sha256(log.key_der).digest()
        )
        assert log.mmd == entry["mmd"]
        assert log.log_type == entry.get("log_type")
        if "temporal_interval" in entry:
            assert log.temporal_interval is not None
            assert (
                log.temporal_interval.end.isoformat().replace("+00:00", "Z")
                == (entry["temporal_interval"]["end_exclusive"])
            )
        else:
            assert log.temporal_interval is None
        if kind == "tiled_logs":
            assert log.kind is LogKind.STATIC
            assert log.submission_url == entry["submission_url"].rstrip("/")
            assert log.origin == entry["submission_url"].removeprefix("https://").rstrip("/")
        else:
            assert log.kind is LogKind.RFC6962
            assert log.submission_url is None and log.origin is None

    sycamore = by_name["Let's Encrypt 'Sycamore2026h1'"]
    assert sycamore.url == "https://mon.sycamore.ct.letsencrypt.org/2026h1"
    assert sycamore.origin == "log.sycamore.ct.letsencrypt.org/2026h1"
    assert sycamore.operator == "Let's Encrypt"
    assert sycamore.source == LogSource(
        "https://mon.sycamore.ct.letsencrypt.org/2026h1",
        "Let's Encrypt 'Sycamore2026h1'",
        LogKind.STATIC,
    )
    argon = by_name["Google 'Argon2025h2' log"]
    assert argon.url == "https://ct.googleapis.com/logs/us1/argon2025h2"
    assert argon.state == "usable"
    rsa_keys = [
        log for log in logs if isinstance(load_der_public_key(log.key_der or b""), rsa.RSAPublicKey)
    ]
    assert len(rsa_keys) == 3


def raw_watchable(raw: dict[str, Any], now: datetime | None, include_test: bool = True) -> set[str]:
    out = set()
    for kind, log in raw_entries(raw):
        if raw_state(log) not in (None, "usable", "qualified", "pending"):
            continue
        if log.get("log_type") == "test" and not include_test:
            continue
        end = log.get("temporal_interval", {}).get("end_exclusive")
        if now and end and datetime.fromisoformat(end) < now - timedelta(days=30):
            continue
        out.add(raw_url(kind, log))
    return out


def test_select_by_state(raw: dict[str, Any], logs: tuple[LogInfo, ...]) -> None:
    selected = select_watchable(logs)
    # 29 + 7 + 30 RFC 6962 and 20 + 6 + 5 + 28 tiled.
    assert len(selected) == 125
    assert {log.url for log in selected} == raw_watchable(raw, None)
    assert not {log.state for log in selected} & {"readonly", "retired", "rejected"}
    assert sorted(log.url for log in selected) == sorted({log.url for log in selected})


def test_select_skips_long_ended_shards(raw: dict[str, Any], logs: tuple[LogInfo, ...]) -> None:
    selected = select_watchable(logs, now=LIST_TIME)
    urls = {log.url for log in selected}
    assert urls == raw_watchable(raw, LIST_TIME)
    # Gone: 8 Solera, 5 Testflume, 2 Sapling (RFC 6962); Twig2025h1b, Sycamore/Willow2025h1b.
    assert len(selected) == 125 - 18
    names = {log.description for log in selected}
    assert "Google 'Solera2025h1' log" not in names
    assert "Let's Encrypt Twig2025h1b" not in names
    # Ended three days after the list was published: still drained.
    assert "Let's Encrypt 'Twig2025h2d'" in names
    assert "Google 'Submariner' log" in names  # no interval: never expires
    assert "Google 'Argon2027h1'" in names  # qualified, in the future
    later = select_watchable(logs, now=datetime(2026, 3, 1, tzinfo=UTC))
    assert "Google 'Argon2025h2' log" not in {log.description for log in later}


def test_select_without_test_logs(raw: dict[str, Any], logs: tuple[LogInfo, ...]) -> None:
    selected = select_watchable(logs, now=LIST_TIME, include_test=False)
    assert {log.url for log in selected} == raw_watchable(raw, LIST_TIME, include_test=False)
    assert all(log.log_type != "test" for log in selected)
    assert any(log.log_type == "monitoring_only" for log in selected)  # Arche, Rennet, Lipase


def test_select_rejects_naive_time(logs: tuple[LogInfo, ...]) -> None:
    with pytest.raises(ValueError, match="timezone"):
        select_watchable(logs, now=datetime(2026, 1, 1))


def _mini(state: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    key = b"test key bytes"
    log: dict[str, Any] = {
        "description": "Mini",
        "log_id": base64.b64encode(hashlib.sha256(key).digest()).decode(),
        "key": base64.b64encode(key).decode(),
        "url": "https://mini.example/log/",
        "mmd": 86400,
        **extra,
    }
    if state is not None:
        log["state"] = state
    return {"operators": [{"name": "Op", "logs": [log]}]}


def test_unknown_state_is_skipped_and_operators_may_omit_lists() -> None:
    parsed = parse_log_list(_mini({"frozen": {"timestamp": "2026-01-01T00:00:00Z"}}))
    assert parsed.logs[0].state == "frozen"
    assert select_watchable(parsed.logs) == []
    assert parsed.version is None and parsed.timestamp is None
    assert parse_log_list({"operators": [{"name": "Empty"}]}).logs == ()


def test_merge_config_logs(logs: tuple[LogInfo, ...]) -> None:
    selected = select_watchable(logs, now=LIST_TIME)
    by_name = {log.description: log for log in logs}
    retired = next(log for log in logs if log.state == "retired")
    merged = merge_config_logs(
        selected,
        custom_logs=[
            ("My log", "ct.example.net/log/"),
            ("Argon again", "ct.googleapis.com/logs/us1/argon2025h2"),  # already selected
            ("Retired but wanted", retired.url + "/"),
            ("My log twice", "https://ct.example.net/log"),
        ],
        static_logs=[
            ("Sycamore", "mon.sycamore.ct.letsencrypt.org/2026h1/"),
            ("Private static", "https://static.example.org/mon/"),
        ],
        known=logs,
    )
    assert len(merged) == len(selected) + 3
    assert merged[: len(selected)] == selected
    added = {log.url: log for log in merged[len(selected) :]}
    mine = added["https://ct.example.net/log"]
    assert (mine.description, mine.kind, mine.operator) == (
        "My log",
        LogKind.RFC6962,
        CONFIG_OPERATOR,
    )
    assert mine.key_der is None and mine.log_id is None and mine.state is None
    assert added[retired.url] == retired  # watched because configured, verified with the list key
    static = added["https://static.example.org/mon"]
    assert static.kind is LogKind.STATIC and static.origin is None and static.key_der is None
    sycamore = [
        log for log in merged if log.url == "https://mon.sycamore.ct.letsencrypt.org/2026h1"
    ]
    assert sycamore == [by_name["Let's Encrypt 'Sycamore2026h1'"]]

    # Without the list (it could not be fetched), config logs stand alone and unverified.
    alone = merge_config_logs([], [("A", "a.example")], [("B", "b.example/")])
    assert [(log.url, log.kind) for log in alone] == [
        ("https://a.example", LogKind.RFC6962),
        ("https://b.example", LogKind.STATIC),
    ]
    with pytest.raises(LogListError, match="'Bad'"):
        merge_config_logs([], [("Bad", " / ")], [])


def _mutate(raw: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(raw)
    target = doc
    for step in path[:-1]:
        target = target[step]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (["operators"], _DELETE, "log list.operators"),
        (["operators"], {}, "log list.operators"),
        (["operators", 2], "Cloudflare", "operators[2]"),
        (["operators", 1, "name"], None, "operators[1].name"),
        (["operators", 0, "logs"], {}, "operators[0].logs"),
        (["operators", 0, "logs", 3], [], "operators[0].logs[3]"),
        (["operators", 0, "logs", 3, "key"], _DELETE, "operators[0].logs[3].key"),
        (["operators", 0, "logs", 3, "key"], "not base64!", "operators[0].logs[3].key"),
        (["operators", 0, "logs", 3, "log_id"], "AAAA", "operators[0].logs[3].log_id"),
        (["operators", 0, "logs", 3, "url"], 7, "operators[0].logs[3].url"),
        (["operators", 0, "logs", 3, "url"], "https:///", "operators[0].logs[3].url"),
        (["operators", 0, "logs", 3, "mmd"], "86400", "operators[0].logs[3].mmd"),
        (["operators", 0, "logs", 3, "mmd"], True, "operators[0].logs[3].mmd"),
        (["operators", 0, "logs", 3, "state"], {}, "operators[0].logs[3].state"),
        (["operators", 0, "logs", 3, "state"], {"usable": {}, "retired": {}}, "logs[3].state"),
        (["operators", 0, "logs", 3, "state"], {"usable": 1}, "logs[3].state.usable"),
        (["operators", 0, "logs", 3, "description"], None, "logs[3].description"),
        (["operators", 0, "logs", 3, "log_type"], 5, "logs[3].log_type"),
        (
            ["operators", 0, "logs", 3, "temporal_interval", "end_exclusive"],
            "yesterday",
            "logs[3].temporal_interval.end_exclusive",
        ),
        (
            ["operators", 0, "logs", 3, "temporal_interval", "end_exclusive"],
            "2023-01-01T00:00:00",
            "logs[3].temporal_interval.end_exclusive",
        ),
        (
            ["operators", 0, "logs", 3, "temporal_interval", "end_exclusive"],
            "2022-01-01T00:00:00Z",
            "logs[3].temporal_interval",
        ),
        (
            ["operators", 0, "tiled_logs", 0, "monitoring_url"],
            _DELETE,
            "tiled_logs[0].monitoring_url",
        ),
        (["operators", 0, "tiled_logs", 0, "submission_url"], "", "tiled_logs[0].submission_url"),
        (["log_list_timestamp"], "noon", "log_list_timestamp"),
        (["version"], 78.2, "log list.version"),
    ],
)
def test_malformed_lists_name_the_place(
    raw: dict[str, Any], path: list[Any], value: Any, where: str
) -> None:
    with pytest.raises(LogListError) as info:
        parse_log_list(_mutate(raw, path, value))
    assert where in str(info.value)


@pytest.mark.parametrize(
    "data", [b"", b"{", b"\xff", b"[]", b"null", '{"operators": 1}', b"[" * 100_000]
)
def test_not_a_log_list(data: bytes | str) -> None:
    with pytest.raises(LogListError):
        parse_log_list(data)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3)
    ),
    max_leaves=8,
)
_fields = ["description", "log_id", "key", "url", "mmd", "state", "temporal_interval", "log_type"]


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(_fields), value=_json, op=st.integers(0, 23), entry=st.integers(0, 4))
def test_fuzz_entry_fields(
    raw: dict[str, Any], field: str, value: Any, op: int, entry: int
) -> None:
    logs = raw["operators"][op]["logs"]
    if not logs:
        return
    doc = _mutate(raw, ["operators", op, "logs", entry % len(logs), field], value)
    with contextlib.suppress(LogListError):
        parse_log_list(doc)


# --- URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://ct.googleapis.com/logs/us1/argon2025h2/",
            "https://ct.googleapis.com/logs/us1/argon2025h2",
        ),
        (
            "ct.googleapis.com/logs/us1/argon2025h2",
            "https://ct.googleapis.com/logs/us1/argon2025h2",
        ),
        ("http://localhost:8080/", "http://localhost:8080"),
        ("  oak.ct.letsencrypt.org/2025h2//  ", "https://oak.ct.letsencrypt.org/2025h2"),
        ("HTTPS://Example.org/Log/", "HTTPS://Example.org/Log"),
    ],
)
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected
    assert normalize_url(expected) == expected


@pytest.mark.parametrize("url", ["", "   ", "/", "https://", "https:///"])
def test_normalize_url_rejects_empty(url: str) -> None:
    with pytest.raises(URLError):
        normalize_url(url)


def test_checkpoint_origin() -> None:
    assert checkpoint_origin("https://log.sycamore.ct.letsencrypt.org/2026h1/") == (
        "log.sycamore.ct.letsencrypt.org/2026h1"
    )
    assert checkpoint_origin("arche2026h1.staging.ct.transparency.dev") == (
        "arche2026h1.staging.ct.transparency.dev"
    )

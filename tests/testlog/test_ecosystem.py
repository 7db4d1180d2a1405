"""Many logs over several operators: the log set, its log list, and growth at a total rate."""

from __future__ import annotations

import asyncio
import base64
import math
import time
from collections import Counter
from fractions import Fraction
from itertools import pairwise

import aiohttp
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from certlake.ct.entry import LogKind
from certlake.ct.loglist import parse_log_list
from certlake.ct.sth import SignedTreeHead, verify_sth
from certlake.testlog.ecosystem import (
    DEFAULT_LOGS,
    LogConfig,
    OperatorConfig,
    Pace,
    ecosystem_logs,
    ecosystem_operators,
    operator_name,
    resolve_operators,
    spread,
)
from certlake.testlog.loglist import OPERATOR
from certlake.testlog.server import TestLogServer

pytestmark = pytest.mark.timeout(60)


# --- the log set (pure) ----------------------------------------------------------------------


def test_forty_logs_over_eight_operators() -> None:
    logs = ecosystem_logs(40, operators=8)
    assert logs == ecosystem_logs(40, operators=8)  # stable
    assert len({log.name for log in logs}) == 40
    assert [log.operator for log in logs[:9]] == [operator_name(i % 8) for i in range(9)]
    assert Counter(log.operator for log in logs) == {operator_name(i): 5 for i in range(8)}
    static = [i for i, log in enumerate(logs) if log.kind is LogKind.STATIC]
    assert static == list(range(0, 40, 4))
    assert logs[0] == LogConfig("static-00", LogKind.STATIC, operator_name(0))
    assert logs[13] == LogConfig("rfc6962-13", LogKind.RFC6962, operator_name(5))


def test_small_sets_have_both_kinds_and_wide_ones_wider_names() -> None:
    assert [log.kind for log in ecosystem_logs(2)] == [LogKind.STATIC, LogKind.RFC6962]
    assert ecosystem_logs(101, static_share=0)[100].name == "rfc6962-100"
    assert {log.kind for log in ecosystem_logs(3, static_share=1)} == {LogKind.STATIC}


@given(n=st.integers(1, 200), percent=st.integers(0, 100))
def test_static_share_is_exact(n: int, percent: int) -> None:
    share = percent / 100
    logs = ecosystem_logs(n, static_share=share)
    static = sum(1 for log in logs if log.kind is LogKind.STATIC)
    assert static == math.ceil(n * Fraction(percent, 100))


@pytest.mark.parametrize(("n", "k", "share"), [(0, 1, 0.25), (3, 4, 0.25), (3, 0, 0.25), (3, 1, 2)])
def test_impossible_sets_are_refused(n: int, k: int, share: float) -> None:
    with pytest.raises(ValueError):
        ecosystem_logs(n, operators=k, static_share=share)


def test_operators_get_the_server_limit_unless_they_have_their_own() -> None:
    logs = ecosystem_logs(6, operators=3)
    strict = OperatorConfig(operator_name(1), rate_limit=0.5, email="strict@certlake.invalid")
    ops = resolve_operators(logs, [strict], 30.0)
    assert list(ops) == [operator_name(i) for i in range(3)]
    assert [op.rate_limit for op in ops.values()] == [30.0, 0.5, 30.0]
    assert ops[operator_name(1)].email == "strict@certlake.invalid"
    assert resolve_operators(DEFAULT_LOGS, [], None) == {OPERATOR: OperatorConfig(OPERATOR)}
    for bad in ([OperatorConfig("nobody")], [strict, strict]):
        with pytest.raises(ValueError):
            resolve_operators(logs, bad, None)
    with pytest.raises(ValueError):
        resolve_operators(logs, [], 0.0)


def test_pace_hands_out_whole_entries_at_the_rate() -> None:
    pace = Pace(2000 / 3)
    handed = [pace.due(t / 20) for t in range(1, 61)]  # 3 s in 50 ms ticks
    assert sum(handed) == 2000
    assert max(handed) - min(handed) <= 1
    assert pace.due(3.0) == 0  # nothing twice


@given(batches=st.lists(st.integers(0, 50), max_size=30), logs=st.integers(1, 9))
def test_spread_is_round_robin_over_batches(batches: list[int], logs: int) -> None:
    got: Counter[int] = Counter()
    offset = 0
    for count in batches:
        shares = spread(count, offset, logs)
        assert sorted(p for r in shares for p in r) == list(range(count))
        for k, positions in enumerate(shares):
            assert all((offset + p) % logs == k for p in positions)
            got[k] += len(positions)
        offset += count
    assert max(got.values(), default=0) - min(got.values(), default=0) <= 1


# --- the log list over loopback -------------------------------------------------------------


async def _get(http: aiohttp.ClientSession, url: str) -> bytes:
    async with http.get(url) as resp:
        assert resp.status == 200, url
        return await resp.read()


async def test_log_list_names_every_operator_and_every_log_answers() -> None:
    logs = ecosystem_logs(12, operators=5)
    operators = ecosystem_operators(5)
    async with (
        TestLogServer(logs=logs, operators=operators, initial_size=3, pool_size=3) as srv,
        aiohttp.ClientSession() as http,
    ):
        raw = await _get(http, srv.log_list_url)
        parsed = parse_log_list(raw).logs
        assert len(parsed) == 12
        assert {info.operator for info in parsed} == {op.name for op in operators}
        by_url = {info.url: info for info in parsed}
        for cfg in logs:
            info = by_url[srv.log_url(cfg.name)]
            assert (info.operator, info.kind) == (cfg.operator, cfg.kind)
        doc = orjson.loads(raw)
        assert [op["name"] for op in doc["operators"]] == [op.name for op in operators]
        assert len({op["email"][0] for op in doc["operators"]}) == 5
        for info in parsed:
            assert info.key_der is not None
            if info.kind is LogKind.RFC6962:
                sth = SignedTreeHead.from_json(
                    orjson.loads(await _get(http, info.url + "/ct/v1/get-sth"))
                )
                verify_sth(sth, info.key_der)
                assert sth.tree_size == 3
            else:
                assert (await _get(http, info.url + "/checkpoint")).split(b"\n")[1] == b"3"
        stats = orjson.loads(await _get(http, srv.base_url + "/admin/stats"))
        assert stats["logs"]["rfc6962-01"]["operator"] == operator_name(1)
        # One head read per log, counted against each log's operator.
        assert stats["operators"] == {
            op.name: {"requests": sum(1 for c in logs if c.operator == op.name), "rate_limited": 0}
            for op in operators
        }


# --- growth at a total rate, in steps -------------------------------------------------------


async def test_total_rate_is_shared_by_the_logs_and_heads_advance_in_steps() -> None:
    rate, interval, logs = 400.0, 0.5, ecosystem_logs(4, operators=2)
    async with (
        TestLogServer(logs=logs, total_rate=rate, sequence_interval=interval, pool_size=64) as srv,
        aiohttp.ClientSession() as http,
    ):
        started = time.monotonic()
        url = srv.log_url("rfc6962-01") + "/ct/v1/get-sth"
        heads: dict[int, int] = {}  # timestamp -> size, as the log published them
        while time.monotonic() - started < 3.2:
            head = orjson.loads(await _get(http, url))
            heads[head["timestamp"]] = head["tree_size"]
            await asyncio.sleep(0.04)
        elapsed = time.monotonic() - started
        sizes = {name: log.size for name, log in srv.logs.items()}
    total = sum(sizes.values())
    assert 0.8 * rate * elapsed <= total <= rate * elapsed + 1
    assert max(sizes.values()) - min(sizes.values()) <= 1  # round-robin: an even share each
    stamps = sorted(heads)
    steps = [(b - a) / 1000 for a, b in pairwise(stamps)]
    growth = [heads[b] - heads[a] for a, b in pairwise(stamps)]
    assert len(steps) >= 4
    # One head per sequencing tick (a late tick may skip one), each adding a tick's worth.
    assert all(0.8 * interval <= s <= 2.5 * interval for s in steps), steps
    assert all(g >= 0.6 * rate / 4 * interval for g in growth), growth


async def test_default_log_list_is_the_single_operator_pair() -> None:
    async with TestLogServer(pool_size=1) as srv, aiohttp.ClientSession() as http:
        doc = orjson.loads(await _get(http, srv.log_list_url))
    (op,) = doc["operators"]
    assert (op["name"], op["email"]) == (OPERATOR, ["testlog@certlake.invalid"])
    assert [len(op["logs"]), len(op["tiled_logs"])] == [1, 1]
    assert base64.b64decode(op["logs"][0]["key"])

"""A real `certlake serve` process, read the way operators read it: /metrics scraped by the names
their certstream-server-rust dashboards use, /health/deep for the archive, and its log after
malformed requests sent over a raw socket."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.procs import Procs, server_config
from support.waiting import until

pytestmark = pytest.mark.timeout(90)

RFC6962_NAME = "certlake test log rfc6962 (rfc6962)"
STATIC_NAME = "certlake test log static (tiled)"
# Each family as certstream-server-rust's exporter declares it: its type, no `_total` added.
RUST_FAMILIES = {
    "certstream_messages_sent": "counter",
    "certstream_parse_failures": "counter",
    "certstream_ct_logs_count": "gauge",
    "certstream_static_ct_logs_count": "gauge",
    "certstream_ws_connections_total": "gauge",
    "certstream_ws_connections_full": "gauge",
    "certstream_ws_connections_lite": "gauge",
    "certstream_ws_connections_domains": "gauge",
    "certstream_sse_connections": "gauge",
    "certstream_ws_messages_lagged": "counter",
    "certstream_sse_messages_lagged": "counter",
    "certstream_auth_rejected": "counter",
    "certstream_rate_limit_rejected": "counter",
    "certstream_connection_limit_rejected": "counter",
    "certstream_per_ip_limit_rejected": "counter",
    "certstream_delta_records_written": "counter",
    "certstream_delta_flushes": "counter",
    "certstream_delta_write_errors": "counter",
    "certstream_delta_buffer_size": "gauge",
    "certstream_delta_messages_lagged": "counter",
    "certstream_delta_flush_duration_seconds": "histogram",
}
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Scrape:
    """One /metrics answer: its TYPE lines and its samples, by name and labels exactly as sent."""

    def __init__(self, text: str) -> None:
        # prometheus' own parser must accept the whole answer (it renames counters, so the
        # names are checked on the raw lines below).
        list(text_string_to_metric_families(text))
        self.text = text
        self.types: dict[str, str] = {}
        self.samples: Samples = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ")
                self.types[name] = kind
            elif not line.startswith("#"):
                m = _SAMPLE.fullmatch(line)
                assert m, line
                labels = frozenset(_LABEL.findall(m.group(2) or ""))
                self.samples[(m.group(1), labels)] = float(m.group(3))

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def total(self, name: str) -> float:
        return sum(v for (n, _), v in self.samples.items() if n == name)


async def scrape(session: aiohttp.ClientSession, url: str) -> Scrape:
    async with session.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        return Scrape(await resp.text())


async def eventually(
    session: aiohttp.ClientSession, url: str, check: Callable[[Scrape], bool], what: str
) -> Scrape:
    found: list[Scrape] = []

    async def probe() -> bool:
        found[:] = [await scrape(session, url)]
        return check(found[0])

    await until(probe, 30, what)
    return found[0]


async def test_metrics_offer_certstream_server_rust_names_beside_certlakes_and_they_move(
    procs: Procs, tmp_path: Path
) -> None:
    testlog = procs.testlog("--rate", "20", "--seed", "52")
    config = server_config(
        tmp_path,
        f"{testlog.url}/log_list.json",
        delta_sink={
            "enabled": True,
            "table_path": str(tmp_path / "archive"),
            "flush_interval_secs": 1,
            "compaction_interval_secs": 0,
        },
    )
    server = procs.serve(config)
    ws_url = server.url.replace("http", "ws", 1)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{ws_url}/full-stream"),
        session.ws_connect(f"{ws_url}/domains-only"),
        session.get(f"{server.url}/sse?stream=lite"),
    ):
        first = await eventually(
            session,
            server.url,
            lambda s: (
                s.total("certstream_delta_records_written") > 0
                and s.value("certstream_sse_connections") == 1
            ),
            "a commit to the archive, and the clients counted",
        )
        assert {n: first.types.get(n) for n in RUST_FAMILIES} == RUST_FAMILIES
        for name in ("certstream_ct_logs_count", "certstream_static_ct_logs_count"):
            assert first.value(name) == 1
        assert first.value("certstream_ws_connections_total") == 2
        assert first.value("certstream_ws_connections_full") == 1
        assert first.value("certstream_ws_connections_domains") == 1
        assert first.value("certstream_ws_connections_lite") == 0
        # Labelled by the log's description, as the Rust server labels them.
        logs = {
            dict(labels)["log"] for n, labels in first.samples if n == "certstream_messages_sent"
        }
        assert logs == {RFC6962_NAME, STATIC_NAME}
        assert first.value("certstream_delta_flush_duration_seconds_count") >= 1
        assert first.value("certstream_delta_flush_duration_seconds_bucket", le="+Inf") >= 1

        # They move, and agree with certlake's own series in the same answer.
        later = await eventually(
            session,
            server.url,
            lambda s: (
                all(
                    s.value("certstream_messages_sent", log=name)
                    > first.value("certstream_messages_sent", log=name)
                    for name in (RFC6962_NAME, STATIC_NAME)
                )
                and s.total("certstream_delta_records_written")
                > first.total("certstream_delta_records_written")
            ),
            "more messages sent and archived",
        )
        for scraped in (first, later):
            assert scraped.total("certstream_messages_sent") == scraped.value(
                "certlake_messages_published_total"
            )
            assert scraped.value("certstream_delta_records_written") == scraped.value(
                "certlake_sink_records_written_total"
            )
        # No `_created` series: they double the output and nothing reads them.
        assert "_created" not in later.text

        async with session.get(f"{server.url}/health/deep") as resp:
            assert resp.status == 200
            deep: dict[str, Any] = await resp.json()
    archive = deep["archive"]
    assert archive["enabled"] is True
    assert archive["failing"] is False
    assert archive["last_error"] is None
    assert time.time() - 30 < archive["last_commit"] <= time.time()
    assert archive["records_written"] > 0
    assert isinstance(archive["buffered_records"], int)
    assert archive["table"].endswith("/archive")


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return sock.recv(200)


def test_a_malformed_request_is_one_warning_line_not_a_traceback(
    procs: Procs, tmp_path: Path
) -> None:
    # No log needs to be reachable for this: the list's address is closed.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    server = procs.serve(server_config(tmp_path, f"http://127.0.0.1:{closed}/log_list.json"))
    port = int(server.url.rsplit(":", 1)[1])
    malformed = [
        b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n",  # a raw byte in the request line
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 10_000 + b"\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    ]
    for request in malformed:
        assert _raw(port, request).startswith(b"HTTP/1.0 400 "), request[:40]
    # The server is none the worse: a proper request still works.
    assert b"200 OK" in _raw(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert server.stop() == 0
    log = server.log.read_text()
    assert "Traceback" not in log
    assert not [line for line in log.splitlines() if " ERROR " in line]
    refused = [line for line in log.splitlines() if "malformed request refused" in line]
    assert len(refused) == len(malformed), log[-3000:]
    for line in refused:
        assert " WARNING certlake.http malformed request refused peer=127.0.0.1 status=400 " in line
    assert 'reason="Invalid char in url path"' in refused[0]

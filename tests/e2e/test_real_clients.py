"""Real clients against a real `certlake serve`: the PyPI `certstream` package, and a client that
never pings on an idle stream."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
from asyncio.subprocess import PIPE
from pathlib import Path

import aiohttp
import orjson
import pytest

from support.procs import Procs, server_config

LISTENER = textwrap.dedent(
    """
    import json, os, sys
    import certstream

    want = int(sys.argv[2])
    got = []

    def on_message(message, context):
        print(json.dumps(message), flush=True)
        got.append(message)
        if len(got) >= want:
            os._exit(0)

    certstream.listen_for_events(on_message, url=sys.argv[1], setup_logger=False)
    """
)


@pytest.mark.parametrize("path", ["/", "/full-stream"])
async def test_certstream_package_receives_certificates(
    procs: Procs, tmp_path: Path, path: str
) -> None:
    testlog = procs.testlog("--initial-size", "5", "--seed", "21")
    server = procs.serve(server_config(tmp_path, f"{testlog.url}/log_list.json"))
    script = tmp_path / "listen.py"
    script.write_text(LISTENER)
    ws_url = server.url.replace("http", "ws", 1) + path
    listener = await asyncio.create_subprocess_exec(
        sys.executable, str(script), ws_url, "20", stdout=PIPE, stderr=PIPE
    )
    try:
        await asyncio.sleep(1.5)  # connected and idle before anything is logged
        async with aiohttp.ClientSession() as s, s.post(f"{testlog.url}/admin/grow?n=15") as r:
            assert r.status == 200
        out, err = await asyncio.wait_for(listener.communicate(), 60)
    finally:
        if listener.returncode is None:
            listener.kill()
            await listener.wait()
    assert listener.returncode == 0, err.decode()[-2000:]
    messages = [orjson.loads(line) for line in out.splitlines()]
    assert len(messages) == 20
    for m in messages:
        assert m["message_type"] == "certificate_update"
        data = m["data"]
        assert data["leaf_cert"]["all_domains"]
        assert "CN" in data["leaf_cert"]["subject"]  # the certstream CLI reads subject.CN
        assert data["source"]["url"].startswith(testlog.url)
        assert ("chain" in data) == (path == "/full-stream")
        assert ("as_der" in data["leaf_cert"]) == (path == "/full-stream")
    indices = sorted((m["data"]["source"]["url"], m["data"]["cert_index"]) for m in messages)
    assert len(set(indices)) == 20


async def test_client_that_never_pings_survives_an_idle_stream(
    procs: Procs, tmp_path: Path
) -> None:
    testlog = procs.testlog("--initial-size", "3", "--seed", "22")
    server = procs.serve(server_config(tmp_path, f"{testlog.url}/log_list.json"))
    heartbeats: list[dict[str, object]] = []
    async with (
        aiohttp.ClientSession() as s,
        # heartbeat=None: this client never sends a ping (like websocat or filebeat).
        s.ws_connect(server.url.replace("http", "ws", 1) + "/", heartbeat=None) as ws,
    ):
        started = time.monotonic()
        while time.monotonic() - started < 10:  # ten heartbeat intervals of 1 s
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            doc = orjson.loads(msg.data)
            assert doc["message_type"] == "heartbeat"
            heartbeats.append(doc)
        assert not ws.closed
        assert len(heartbeats) >= 7
        assert all(isinstance(h["timestamp"], float | int) for h in heartbeats)
        # Still a working connection: a new certificate arrives on it.
        async with s.post(f"{testlog.url}/admin/grow?n=1") as r:
            assert r.status == 200
        while True:
            doc = orjson.loads((await ws.receive(timeout=10)).data)
            if doc["message_type"] == "certificate_update":
                break

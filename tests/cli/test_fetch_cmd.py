"""`certlake fetch` as a real subprocess against the built-in test log."""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from certlake.ct.entry import EntryType
from certlake.ct.loglist import parse_log_list
from certlake.testlog.background import BackgroundTestLog
from certlake.testlog.server import TestLogServer
from support.procs import Procs, server_config
from support.waiting import until

CERTLAKE = str(Path(sys.executable).with_name("certlake"))
# The members that differ between two builds of one entry's message: when it was fetched, and
# its place in the stream of the process that printed or sent it.
_RUN_DEPENDENT = re.compile(rb'"(seen|cursor)":[0-9.e+-]+')


@pytest.fixture(scope="module")
def bg() -> Iterator[BackgroundTestLog]:
    with BackgroundTestLog(initial_size=600, pool_size=32, seed=3) as bg:
        yield bg


def _fetch(
    tmp_path: Path, *args: str, config: dict[str, object] | None = None
) -> subprocess.CompletedProcess[bytes]:
    # A config file of our own keeps the developer's config.yaml out of it; unless told otherwise
    # its log list names no log (and is not fetched from the internet).
    cfg = tmp_path / "config.yaml"
    cfg.write_bytes(orjson.dumps({**_unlisted(tmp_path), **(config or {})}))  # JSON is YAML
    return subprocess.run(
        [CERTLAKE, "fetch", "--config", str(cfg), *args],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )


def _listed(list_url: str) -> dict[str, object]:
    """A config whose log list is the test log's own."""
    return {"ct_logs_url": list_url}


def _unlisted(tmp_path: Path) -> dict[str, object]:
    """A config whose log list names no log at all."""
    empty = tmp_path / "no_logs.json"
    empty.write_bytes(b'{"operators": []}')
    return {"ct_logs_url": empty.as_uri()}


def _descriptions(list_url: str) -> dict[str, str]:
    with urllib.request.urlopen(list_url, timeout=10) as r:
        return {log.url: log.description for log in parse_log_list(r.read()).logs}


def _colon_hex(digest: bytes) -> str:
    return digest.hex(":").upper()


# A log the list describes is read as it describes it, with or without --tiled.
@pytest.mark.parametrize(
    ("name", "flags"), [("rfc6962", []), ("static", []), ("static", ["--tiled"])]
)
def test_fetch_prints_the_stream_message_of_each_index(
    bg: BackgroundTestLog, tmp_path: Path, name: str, flags: list[str]
) -> None:
    tiled = name == "static"
    url = bg.server.log_url(name)
    indices = [0, 1, 2, 257, 599]
    proc = _fetch(tmp_path, *flags, url, *map(str, indices), config=_listed(bg.server.log_list_url))
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.splitlines(keepends=True)
    assert len(lines) == len(indices)
    cursors = []
    for index, line in zip(indices, lines, strict=True):
        assert line.endswith(b"}\n")  # the Go full stream's trailing newline, nothing added
        assert line.startswith(b'{"data":{"cursor":')  # where the hub splices it in
        msg = orjson.loads(line)
        assert msg["message_type"] == "certificate_update"
        data = msg["data"]
        cursors.append(data["cursor"])
        logged = bg.call(lambda s, i=index: s.logs[name].cert_at(i))
        assert data["cert_index"] == index
        assert data["source"]["url"] == url
        assert data["source"]["name"] == _descriptions(bg.server.log_list_url)[url]
        assert data["source"]["type"] == ("tiled" if tiled else "rfc6962")
        want_type = "PrecertLogEntry" if logged.entry_type is EntryType.PRECERT else "X509LogEntry"
        assert data["update_type"] == want_type
        assert data["leaf_cert"]["sha256"] == _colon_hex(hashlib.sha256(logged.cert_der).digest())
        assert len(data["chain"]) == len(logged.chain)
        if tiled:
            tile = f"{index // 256:03d}"
            assert data["cert_link"] == f"{url}/tile/data/{tile}"
        else:
            assert data["cert_link"] == f"{url}/ct/v1/get-entries?start={index}&end={index}"
    assert cursors == list(range(cursors[0], cursors[0] + len(indices)))


def test_fetch_of_a_log_no_list_describes(bg: BackgroundTestLog, tmp_path: Path) -> None:
    url = bg.server.static_url
    # Read as RFC 6962, a static log has no get-sth: the 404 comes with the hint.
    proc = _fetch(tmp_path, url, "5")
    assert proc.returncode == 1
    assert proc.stdout == b""
    stderr = proc.stderr.decode()
    assert f"cannot read the tree head of {url}" in stderr
    assert "404" in stderr
    assert "this looks like a static-ct-api (tiled) log: try --tiled" in stderr
    # With --tiled it reads, unverified, named by its URL (nothing else names it).
    proc = _fetch(tmp_path, "--tiled", url, "5")
    assert proc.returncode == 0, proc.stderr.decode()
    data = orjson.loads(proc.stdout)["data"]
    assert (data["cert_index"], data["source"]["name"], data["source"]["url"]) == (5, url, url)
    # And an RFC 6962 log read as tiled has no checkpoint: the hint the other way round.
    proc = _fetch(tmp_path, "--tiled", bg.server.rfc6962_url, "5")
    assert proc.returncode == 1
    assert "if this is an RFC 6962 log, drop --tiled" in proc.stderr.decode()


async def test_fetch_prints_what_a_full_stream_client_receives(
    procs: Procs, tmp_path: Path
) -> None:
    testlog = procs.testlog("--initial-size", "30", "--seed", "8")
    list_url = f"{testlog.url}/log_list.json"
    server = procs.serve(server_config(tmp_path, list_url))

    async def watching(session: aiohttp.ClientSession) -> bool:
        async with session.get(f"{server.url}/api/logs") as r:
            logs = (await r.json())["logs"]
        return len(logs) == 2 and all(log["cursor"] is not None for log in logs)

    streamed: dict[tuple[str, int], bytes] = {}
    async with aiohttp.ClientSession() as session:
        await until(lambda: watching(session), 30, "both watchers at the tree head")
        ws_url = server.url.replace("http", "ws", 1) + "/full-stream"
        async with session.ws_connect(ws_url, heartbeat=None) as ws:
            async with session.post(f"{testlog.url}/admin/grow?n=3") as r:
                assert r.status == 200, await r.text()
            while len(streamed) < 6:
                frame = await ws.receive_str(timeout=30)
                msg = orjson.loads(frame)
                if msg["message_type"] == "certificate_update":  # not a heartbeat
                    data = msg["data"]
                    streamed[data["source"]["url"], data["cert_index"]] = frame.encode()
    assert {i for _, i in streamed} == {30, 31, 32}
    for url in {u for u, _ in streamed}:
        # No --tiled: the log list says which protocol each log speaks.
        proc = await asyncio.to_thread(
            _fetch, tmp_path, url, "30", "31", "32", config=_listed(list_url)
        )
        assert proc.returncode == 0, proc.stderr.decode()
        printed = proc.stdout.splitlines(keepends=True)
        assert len(printed) == 3
        for index, line in zip((30, 31, 32), printed, strict=True):
            want = streamed[url, index]
            assert _RUN_DEPENDENT.sub(b"", line) == _RUN_DEPENDENT.sub(b"", want)
            assert len(_RUN_DEPENDENT.findall(line)) == 2  # seen and cursor, nothing else masked


def test_fetch_domains_stream(bg: BackgroundTestLog, tmp_path: Path) -> None:
    proc = _fetch(tmp_path, bg.server.rfc6962_url, "7", "--stream", "domains")
    assert proc.returncode == 0, proc.stderr.decode()
    msg = orjson.loads(proc.stdout)
    assert msg["message_type"] == "dns_entries"
    assert isinstance(msg["data"], list) and msg["data"]
    assert proc.stdout.rstrip(b"\n").endswith(b',"cursor":%d}' % msg["cursor"])


def test_fetch_sends_the_configured_user_agent(bg: BackgroundTestLog, tmp_path: Path) -> None:
    contact = "certlake-test/1 (+mailto:ct-ops@example.org)"

    def counts(s: TestLogServer) -> tuple[int, int]:
        return s.stats.requests.total(), s.stats.user_agents[contact]

    before = bg.call(counts)
    proc = _fetch(
        tmp_path, bg.server.rfc6962_url, "4", "5", config={"ct_log": {"user_agent": contact}}
    )
    assert proc.returncode == 0, proc.stderr.decode()
    after = bg.call(counts)
    requests, ours = after[0] - before[0], after[1] - before[1]
    assert requests > 0
    assert ours == requests  # every request of the run, tree head and entries alike


def test_fetch_beyond_the_tree_fails_loudly(bg: BackgroundTestLog, tmp_path: Path) -> None:
    proc = _fetch(tmp_path, bg.server.rfc6962_url, "3", "600")
    assert proc.returncode == 1
    assert len(proc.stdout.splitlines()) == 1  # index 3 still printed
    assert b"index 600 is beyond the tree size 600" in proc.stderr


def test_fetch_reports_an_unparseable_certificate_with_its_index(
    bg: BackgroundTestLog, tmp_path: Path
) -> None:
    from certlake.testlog.faults import Fault

    bg.call(lambda s: s.faults.replace([Fault.from_spec("corrupt:at=11,mode=der")]))
    try:
        proc = _fetch(tmp_path, bg.server.rfc6962_url, "10", "11", "12")
    finally:
        bg.call(lambda s: s.faults.replace([]))
    assert proc.returncode == 1
    assert len(proc.stdout.splitlines()) == 2
    assert b"entry 11" in proc.stderr
    assert b"Traceback" not in proc.stderr


def test_fetch_from_an_unreachable_log_exits_1(tmp_path: Path) -> None:
    proc = _fetch(tmp_path, "http://127.0.0.1:9/nolog", "0")
    assert proc.returncode == 1
    assert b"cannot read the tree head" in proc.stderr

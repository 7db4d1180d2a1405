"""`certlake fetch` as a real subprocess against the built-in test log."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from certlake.ct.entry import EntryType
from certlake.testlog.background import BackgroundTestLog
from certlake.testlog.server import TestLogServer

CERTLAKE = str(Path(sys.executable).with_name("certlake"))


@pytest.fixture(scope="module")
def bg() -> Iterator[BackgroundTestLog]:
    with BackgroundTestLog(initial_size=600, pool_size=32, seed=3) as bg:
        yield bg


def _fetch(
    tmp_path: Path, *args: str, config: dict[str, object] | None = None
) -> subprocess.CompletedProcess[bytes]:
    # A config file of our own (empty by default) keeps the developer's config.yaml out of it.
    cfg = tmp_path / "config.yaml"
    cfg.write_bytes(orjson.dumps(config or {}))  # JSON is YAML
    return subprocess.run(
        [CERTLAKE, "fetch", "--config", str(cfg), *args],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )


def _colon_hex(digest: bytes) -> str:
    return digest.hex(":").upper()


@pytest.mark.parametrize("tiled", [False, True])
def test_fetch_prints_the_stream_message_of_each_index(
    bg: BackgroundTestLog, tmp_path: Path, tiled: bool
) -> None:
    name = "static" if tiled else "rfc6962"
    url = bg.server.log_url(name)
    indices = [0, 1, 2, 257, 599]
    args = (["--tiled"] if tiled else []) + [url, *map(str, indices)]
    proc = _fetch(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.splitlines(keepends=True)
    assert len(lines) == len(indices)
    for index, line in zip(indices, lines, strict=True):
        assert line.endswith(b"}\n")  # the Go full stream's trailing newline, nothing added
        msg = orjson.loads(line)
        assert msg["message_type"] == "certificate_update"
        data = msg["data"]
        logged = bg.call(lambda s, i=index: s.logs[name].cert_at(i))
        assert data["cert_index"] == index
        assert data["source"]["url"] == url
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


def test_fetch_domains_stream(bg: BackgroundTestLog, tmp_path: Path) -> None:
    proc = _fetch(tmp_path, bg.server.rfc6962_url, "7", "--stream", "domains")
    assert proc.returncode == 0, proc.stderr.decode()
    msg = orjson.loads(proc.stdout)
    assert msg["message_type"] == "dns_entries"
    assert isinstance(msg["data"], list) and msg["data"]


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

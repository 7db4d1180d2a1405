"""`stream.nats_url`: `certlake serve` relays every entry to NATS JetStream, against a real
`nats-server -js` on loopback and the test log: every entry once and in order per log, its
payloads byte for byte; NATS absent at the start or restarted mid-run never holds ingest up and
loses nothing."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from certlake.certs.message import Streamed
from certlake.stream.relay_codec import decode_streamed
from support.nats import NatsServer
from support.procs import Proc, Procs, read_state, server_config

pytestmark = pytest.mark.cluster

STREAM = "CERTLAKE"


def _serve(procs: Procs, tmp_path: Path, nats_url: str) -> Proc:
    log = procs.testlog("--rate", "40", "--initial-size", "50", "--seed", "3")
    config = server_config(
        tmp_path, f"{log.url}/log_list.json", stream={"nats_url": nats_url, "build_workers": 0}
    )
    return procs.serve(config)


def _metric(server: Proc, name: str) -> float:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _relayed(url: str) -> list[Streamed]:
    async def read() -> list[Streamed]:
        import nats

        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(STREAM)
            first, last = info.state.first_seq, info.state.last_seq
            return [decode_streamed((await js.get_msg(STREAM, seq)).data or b"")
                    for seq in range(first, last + 1)]  # fmt: skip
        finally:
            await nc.close()

    return asyncio.run(read())


def _check(relayed: list[Streamed], tmp_path: Path) -> dict[str, list[int]]:
    """Per log: indices consecutive, none twice, up to what the watchers passed; payloads whole."""
    by_log: dict[str, list[int]] = defaultdict(list)
    for s in relayed:
        by_log[s.source_url].append(s.cert_index)
        full: dict[str, Any] = orjson.loads(s.full)
        assert full["data"]["cert_index"] == s.cert_index
        assert orjson.loads(s.lite)["data"]["cert_index"] == s.cert_index
        assert orjson.loads(s.domains)["data"] == s.all_domains
    state = read_state(tmp_path)["logs"]
    assert by_log.keys() == state.keys()
    for url, indices in by_log.items():
        assert indices == list(range(indices[0], indices[0] + len(indices))), f"{url}: {indices}"
        assert indices[-1] == state[url]["current_index"] - 1
    return by_log


def _wait(pred: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_every_entry_is_relayed_once_in_order_with_its_payloads(
    procs: Procs, nats: NatsServer, tmp_path: Path
) -> None:
    nats.start()
    server = _serve(procs, tmp_path, nats.url)
    _wait(lambda: _metric(server, "certlake_nats_published_total") >= 150, "150 entries relayed")
    assert server.stop() == 0, server.log.read_text()[-3000:]
    relayed = _relayed(nats.url)
    by_log = _check(relayed, tmp_path)
    assert len(by_log) == 2 and len(relayed) >= 150


def test_nats_absent_at_start_holds_nothing_up_and_loses_nothing(
    procs: Procs, nats: NatsServer, tmp_path: Path
) -> None:
    server = _serve(procs, tmp_path, nats.url)  # nothing listens there yet
    _wait(lambda: _metric(server, "certlake_nats_buffered") >= 80, "entries buffered for NATS")
    # The live stream went on meanwhile.
    with urllib.request.urlopen(f"{server.url}/latest.json", timeout=10) as response:
        assert orjson.loads(response.read())["messages"]
    nats.start()
    _wait(lambda: _metric(server, "certlake_nats_buffered") < 5, "the buffer published")
    assert server.stop() == 0, server.log.read_text()[-3000:]
    _check(_relayed(nats.url), tmp_path)


def test_a_nats_restart_mid_run_loses_and_repeats_nothing(
    procs: Procs, nats: NatsServer, tmp_path: Path
) -> None:
    nats.start()
    server = _serve(procs, tmp_path, nats.url)
    _wait(lambda: _metric(server, "certlake_nats_published_total") >= 60, "60 entries relayed")
    nats.stop()
    # Entries keep arriving meanwhile and wait in the relay's buffer.
    time.sleep(3)
    nats.start()
    published = _metric(server, "certlake_nats_published_total")
    _wait(lambda: _metric(server, "certlake_nats_published_total") > published + 60, "more")
    assert _metric(server, "certlake_nats_dropped_total") == 0
    assert server.stop() == 0, server.log.read_text()[-3000:]
    said = server.log.read_text()
    assert "NATS publish failed; resending" in said and said.count("publishing to NATS") == 2
    assert "Traceback" not in said
    _check(_relayed(nats.url), tmp_path)


def test_without_the_nats_client_serve_says_what_to_install(procs: Procs, tmp_path: Path) -> None:
    log = procs.testlog("--initial-size", "5")
    config = server_config(tmp_path, f"{log.url}/log_list.json", stream={"nats_url": "nats://x:1"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code = (
        "import sys; sys.modules['nats'] = None; from certlake.cli.main import main; "
        f"sys.argv = ['certlake', 'serve', '--config', {str(path)!r}]; main()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "pip install 'certlake[cluster]'" in done.stdout + done.stderr

"""`certlake serve --demo`, run twice in a row in one directory as a newcomer would: the second
run continues the same two logs (names that do not depend on the test log's port) where the first
left them, so the state file and the archive hold one set of logs and no entry twice."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import aiohttp
import orjson
import pytest
from deltalake import DeltaTable

from certlake.cli.serve import demo_log_size
from certlake.ingest.state import LogState
from support.procs import Procs
from support.waiting import until

pytestmark = pytest.mark.timeout(120)

DEMO_LOGS = {"http://demo.certlake.invalid/rfc6962", "http://demo.certlake.invalid/static/mon"}


async def _committed(url: str) -> bool:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/health/deep") as r:
        return (await r.json())["archive"]["last_commit"] is not None


async def test_two_demo_runs_archive_one_set_of_logs_without_a_hole_or_a_repeat(
    procs: Procs, tmp_path: Path
) -> None:
    data = tmp_path / "data"  # the demo keeps everything under ./data of where it runs
    starts, states = [], []
    for _ in range(2):
        server = procs.serve({"host": "127.0.0.1", "port": 0}, "--demo")
        # The demo commits every 5 s: wait for this run's first commit, then stop it.
        await until(lambda url=server.url: _committed(url), 30, "a commit to the demo's archive")
        # The log rebuilt for the second run is another tree than the first's: not a lie.
        async with aiohttp.ClientSession() as s, s.get(f"{server.url}/api/logs") as r:
            shown = {log["url"]: log["verification"] for log in (await r.json())["logs"]}
        assert "inconsistent" not in shown.values(), shown
        assert server.stop() == 0, server.log.read_text()[-3000:]
        said = re.search(r"test log at \S+, starting with (\d+) entries", server.log.read_text())
        assert said, server.log.read_text()[-3000:]
        starts.append(int(said.group(1)))
        states.append(orjson.loads((data / "demo_state.json").read_bytes())["logs"])

    assert set(states[0]) == set(states[1]) == DEMO_LOGS
    # The second run's log started as big as the first had seen it grow.
    assert starts == [0, max(log["tree_size"] for log in states[0].values())]
    assert starts[1] > 0
    keys = DeltaTable(str(data / "certstream")).to_pyarrow_table(
        columns=["source_url", "cert_index"]
    )
    indices: dict[str, list[int]] = defaultdict(list)
    for url, index in zip(
        keys.column("source_url").to_pylist(), keys.column("cert_index").to_pylist(), strict=True
    ):
        indices[url].append(index)
    assert set(indices) == DEMO_LOGS
    for url, got in indices.items():
        got.sort()
        # Both runs' entries, each once, none missing up to where the state file says.
        assert got == list(range(got[0], states[1][url]["current_index"])), url
        assert states[1][url]["current_index"] > states[0][url]["current_index"]


def test_the_demo_log_starts_as_big_as_any_position_an_earlier_run_recorded() -> None:
    assert demo_log_size([None, None], [None, None]) == 0
    state = LogState(current_index=90, tree_size=120, last_success=0)
    assert demo_log_size([state, None], [None, None]) == 120
    # The archive may be ahead of a state file saved a moment before a crash, or have none.
    assert demo_log_size([state, None], [None, 150]) == 150
    assert demo_log_size([None, None], [40, None]) == 40

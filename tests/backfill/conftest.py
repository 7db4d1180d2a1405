"""Fixtures for the end-to-end backfill tests: the built-in test log (both protocols) on loopback,
an archive of it written by the live path (watcher fetch loop → `Pipeline` → exactly-once
`DeltaSink`), copied per test and punched with holes, a state file, and the real `certlake`
command."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
import yaml
from deltalake import DeltaTable
from prometheus_client import CollectorRegistry

from certlake.config import CtLogConfig
from certlake.ct.client.fetch import GaveUp, fetch_range
from certlake.ct.client.http import CTHttp
from certlake.ct.client.reader import settle
from certlake.ct.loglist import LogInfo, parse_log_list
from certlake.ingest.metrics import IngestMetrics
from certlake.ingest.pipeline import Pipeline
from certlake.ingest.readers import make_reader
from certlake.lake.sink import DeltaSink
from certlake.testlog.background import BackgroundTestLog
from certlake.testlog.faults import Endpoint, Fault, FaultKind
from certlake.testlog.server import Stats
from support.procs import CERTLAKE

SIZE = 1100  # entries per log: 4 full tiles and a partial one of 76 in the static log


@dataclass
class TestLog:
    """The module's test log server and its two logs as the log list describes them."""

    __test__ = False

    bg: BackgroundTestLog
    rfc6962: LogInfo
    static: LogInfo

    @property
    def list_url(self) -> str:
        return self.bg.server.log_list_url

    def faults(self, *specs: str) -> None:
        plan = [Fault.from_spec(s) for s in specs]
        self.bg.call(lambda s: s.faults.replace(plan))

    def requests(self, *endpoints: Endpoint) -> int:
        return self.bg.call(lambda s: sum(s.stats.requests[e] for e in endpoints))

    def fired(self, kind: FaultKind) -> int:
        return self.bg.call(lambda s: s.stats.faults[kind])


async def _archive_live(table: str, logs: Sequence[LogInfo]) -> None:
    """Every entry of `logs` below SIZE, through the live server's path into `table`."""
    sink = DeltaSink(table, registry=CollectorRegistry(), batch_size=5000, compaction_interval=0)
    await sink.start([info.url for info in logs])
    pipeline = Pipeline(IngestMetrics(CollectorRegistry()), lambda _: None, sink)
    async with CTHttp(timeout=10) as http:
        for info in logs:
            reader = make_reader(http, info, CtLogConfig(default_operator_rate_limit_ms=0))
            async for item in fetch_range(reader, 0, SIZE - 1, tree_size=SIZE):
                assert not isinstance(item, GaveUp), item
                pipeline.handle(info.source, settle(item, reader.source.url))
    await sink.close()


@pytest.fixture(scope="module")
def testlog() -> Iterator[TestLog]:
    with BackgroundTestLog(initial_size=SIZE, seed=5, sequence_interval=0) as bg:
        with urllib.request.urlopen(bg.server.log_list_url) as response:
            logs = parse_log_list(response.read()).logs
        by_kind = {info.kind.value: info for info in logs}
        yield TestLog(bg, by_kind["rfc6962"], by_kind["tiled"])


@pytest.fixture
def log_server(testlog: TestLog) -> Iterator[TestLog]:
    """The module's test log, without faults, its statistics reset, for one test."""
    testlog.faults()
    testlog.bg.call(lambda s: setattr(s, "stats", Stats()))
    yield testlog
    testlog.faults()


@pytest.fixture(scope="module")
def pristine(testlog: TestLog, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete archive of both logs, indices 0..SIZE-1, as `serve` would have written it."""
    path = tmp_path_factory.mktemp("pristine") / "table"
    asyncio.run(_archive_live(str(path), [testlog.rfc6962, testlog.static]))
    return path


Key = tuple[str, int]


@dataclass
class Lake:
    """One test's archive (a copy of the pristine one), state file and config."""

    tmp: Path
    log: TestLog
    main: Path
    state: Path
    config_overrides: dict[str, Any] = field(default_factory=dict)

    def punch(self, url: str, indices: Sequence[int]) -> None:
        """Delete the rows of `indices` (data loss: holes for backfill to find)."""
        if indices:
            listed = ", ".join(str(i) for i in indices)
            DeltaTable(str(self.main)).delete(f"source_url = '{url}' AND cert_index IN ({listed})")

    def drop_log(self, url: str) -> None:
        DeltaTable(str(self.main)).delete(f"source_url = '{url}'")

    def ceilings(self, **by_kind: int) -> None:
        """The state file: `rfc6962=C`, `static=C` (current_index = the ceiling)."""
        urls = {"rfc6962": self.log.rfc6962.url, "static": self.log.static.url}
        doc = {
            "version": 1,
            "logs": {
                urls[k]: {"current_index": c, "tree_size": SIZE, "last_success": 1_760_000_000}
                for k, c in by_kind.items()
            },
        }
        self.state.write_bytes(orjson.dumps(doc))

    def config(self, **sections: dict[str, Any]) -> Path:
        cfg: dict[str, Any] = {
            "ct_logs_url": self.log.list_url,
            "log_level": "info",
            "ct_log": {
                "state_file": str(self.state),
                "retry_initial_delay_ms": 10,
                "default_operator_rate_limit_ms": 0,
                "request_timeout_secs": 5,
                "batch_size": 100,
            },
            "delta_sink": {"table_path": str(self.main), "batch_size": 400},
            "backfill": {
                "workers": 4,
                "per_log_workers": 2,
                "range_split_size": 150,
                "retry_max_delay_ms": 40,
            },
        }
        for name, values in sections.items():
            cfg.setdefault(name, {}).update(values)
        path = self.tmp / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    @staticmethod
    def keys(table: Path | str, storage_options: dict[str, str] | None = None) -> Counter[Key]:
        """How often each (source_url, cert_index) is in the table."""
        t = DeltaTable(str(table), storage_options=storage_options).to_pyarrow_table(
            columns=["source_url", "cert_index"]
        )
        return Counter(zip(t["source_url"].to_pylist(), t["cert_index"].to_pylist(), strict=True))

    @staticmethod
    def rows(table: Path | str, url: str) -> dict[int, dict[str, Any]]:
        """Every row of log `url`, by index."""
        t: pa.Table = DeltaTable(str(table)).to_pyarrow_table()
        return {r["cert_index"]: r for r in t.to_pylist() if r["source_url"] == url}

    def run(
        self, command: str, *args: str, config: Path | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        cfg = config or self.config()
        return subprocess.run(
            [CERTLAKE, command, "--config", str(cfg), *args],
            capture_output=True,
            text=True,
            cwd=self.tmp,
            timeout=timeout,
        )


@pytest.fixture
def lake(tmp_path: Path, log_server: TestLog, pristine: Path) -> Lake:
    main = tmp_path / "main"
    shutil.copytree(pristine, main)
    return Lake(tmp_path, log_server, main, tmp_path / "state.json")

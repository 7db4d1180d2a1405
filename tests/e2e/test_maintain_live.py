"""`certlake maintain` while `certlake serve` archives a fast test log: the archive's files are
compacted, no commit of the live sink waits on it for more than a second, searches keep
answering, and afterwards no row is lost or written twice and every row is indexed once."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

from deltalake import DeltaTable
from prometheus_client.parser import text_string_to_metric_families

from certlake.lake import domains
from certlake.query.spec import domain_key
from support.archive import check_archive
from support.procs import CERTLAKE, Procs, server_config

REPORT = re.compile(r"archive files (\d+) -> (\d+)")


def _flush_seconds(base: str) -> tuple[float, float]:
    """(commits, commits that took at most a second) from the server's histogram."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "certlake_sink_flush_seconds":
            samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
            return samples[("certlake_sink_flush_seconds_count", None)], samples[
                ("certlake_sink_flush_seconds_bucket", "1.0")
            ]
    raise AssertionError("no certlake_sink_flush_seconds in /metrics")


def test_maintain_beside_a_live_serve(procs: Procs, tmp_path: Path) -> None:
    testlog = procs.testlog("--rate", "100", "--initial-size", "50", "--seed", "3")
    table = tmp_path / "archive"
    config = server_config(
        tmp_path,
        f"{testlog.url}/log_list.json",
        delta_sink={
            "enabled": True,
            "table_path": str(table),
            "batch_size": 100,
            "flush_interval_secs": 1,
            "compaction_interval_secs": 0,
        },
        query_api={"enabled": True},
    )
    server = procs.serve(config)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if DeltaTable.is_deltatable(str(table)) and len(DeltaTable(str(table)).file_uris()) >= 12:
            break
        time.sleep(0.2)
    some_name = (
        DeltaTable(str(table))
        .to_pyarrow_table(columns=["all_domains"])["all_domains"][0]
        .as_py()[0]
    )
    statuses: Counter[int] = Counter()
    slowest = 0.0
    stop = threading.Event()

    def search() -> None:
        nonlocal slowest
        url = f"{server.url}/api/query/certs?" + urllib.parse.urlencode({"domain": some_name})
        while not stop.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(url, timeout=30) as r:
                    status, body = r.status, json.loads(r.read())
            except urllib.error.HTTPError as exc:
                status, body = exc.code, {}
            slowest = max(slowest, time.monotonic() - started)
            statuses[status] += 1
            if status == 200 and not body["results"]:
                statuses[0] += 1  # the name searched for is archived: an empty answer is wrong
            time.sleep(0.05)

    searcher = threading.Thread(target=search)
    searcher.start()
    reports = []
    try:
        for _ in range(3):
            done = subprocess.run(
                [
                    CERTLAKE,
                    "maintain",
                    "--table",
                    str(table),
                    "--config",
                    str(tmp_path / "config.yaml"),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            match = REPORT.search(done.stderr)
            assert match is not None, done.stderr
            reports.append((int(match[1]), int(match[2])))
            time.sleep(2)
    finally:
        stop.set()
        searcher.join()
    commits, quick = _flush_seconds(server.url)
    assert server.stop() == 0, server.log.read_text()[-3000:]

    assert all(after < before for before, after in reports), reports
    assert commits >= 10 and quick == commits, (commits, quick)  # no commit waited > 1 s
    assert set(statuses) == {200} and statuses[200] >= 10, statuses
    print(f"maintain reports {reports}, {statuses[200]} searches, slowest {slowest:.2f} s")
    assert slowest < 5, slowest
    rows = check_archive(tmp_path, table)  # nothing lost, nothing twice
    archive = DeltaTable(str(table))
    index = domains.open_index(str(table), None)
    assert index is not None
    entries = Counter(
        (e["key"], e["cert_index"], e["source_url"]) for e in index.to_pyarrow_table().to_pylist()
    )
    assert max(entries.values()) == 1
    want = {
        (domain_key(name), r["cert_index"], r["source_url"])
        for r in archive.to_pyarrow_table(
            columns=["cert_index", "source_url", "all_domains"]
        ).to_pylist()
        for name in r["all_domains"]
    }
    assert set(entries) == want and rows > 500

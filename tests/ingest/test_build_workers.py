"""Messages built in worker processes (real spawned processes): every entry delivered once, in
index order per log, the same messages as built inline; a worker killed mid-stream costs nothing
(the pipeline builds the batch itself and says so)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest
from prometheus_client import CollectorRegistry

from certlake.certs.message import Streamed
from certlake.ct.client.reader import FetchedEntry, Unparseable
from certlake.ct.entry import EntryType, LogEntry, LogKind, LogSource
from certlake.ingest.build import build_messages
from certlake.ingest.metrics import IngestMetrics
from certlake.ingest.pipeline import Pipeline
from certlake.ingest.workers import WorkerLost, WorkerPool
from certlake.testlog.certs import CertFactory

LOGS = [LogSource(f"https://ct.certlake.test/logs/{n}", f"log {n}", LogKind.RFC6962) for n in "ab"]
PER_LOG = 300


@pytest.fixture(scope="module")
def entries() -> list[FetchedEntry | Unparseable]:
    factory = CertFactory(seed=7)
    out: list[FetchedEntry | Unparseable] = []
    for i in range(PER_LOG):
        if i % 97 == 13:
            out.append(Unparseable(i, "truncated leaf"))
            continue
        issued = factory.issue()
        entry = LogEntry(i, 1_750_000_000_000 + i, EntryType.X509, issued.der, issued.chain)
        out.append(FetchedEntry(entry, f"https://ct.certlake.test/get-entries?start={i}"))
    return out


async def _run(
    entries: list[FetchedEntry | Unparseable], workers: WorkerPool | None, kill: bool = False
) -> tuple[list[Streamed], list[tuple[str, int]]]:
    published: list[Streamed] = []
    passed: list[tuple[str, int]] = []

    class Archive:
        def offer(self, msg: object) -> None:
            pass

        def offer_unparseable(self, url: str, index: int, reason: str) -> None:
            passed.append((url, index))

    def publish(msg: Streamed) -> int:
        published.append(msg)
        return len(published)

    pipeline = Pipeline(IngestMetrics(CollectorRegistry()), publish, Archive(), 100, workers)
    consumers = [pipeline.consumer(s) for s in LOGS]

    async def feed(n: int) -> None:
        for i, item in enumerate(entries):
            if kill and n == 0 and i == PER_LOG // 2 and workers is not None:
                for w in workers._workers:
                    assert w.process is not None and w.process.pid is not None
                    os.kill(w.process.pid, signal.SIGKILL)
            await consumers[n](item)
            if i % 32 == 31:
                await asyncio.sleep(0)  # as a watcher does between answers

    await asyncio.gather(feed(0), feed(1))
    await pipeline.drain()
    return published, passed


def _by_log(published: list[Streamed]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for m in published:
        out.setdefault(m.source_url, []).append(m.cert_index)
    return out


async def test_workers_deliver_every_entry_in_order_as_inline(
    entries: list[FetchedEntry | Unparseable],
) -> None:
    inline, inline_passed = await _run(entries, None)
    pool = WorkerPool(build_messages, 2)
    await pool.start()
    try:
        built, built_passed = await _run(entries, pool)
    finally:
        await pool.close()
    wanted = [e.index for e in entries if isinstance(e, FetchedEntry)]
    assert _by_log(built) == {s.url: wanted for s in LOGS}
    assert sorted(built_passed) == sorted(inline_passed)
    assert len(inline_passed) == 2 * sum(isinstance(e, Unparseable) for e in entries)

    # the same payloads, but for the moment each was seen
    def key(m: Streamed) -> tuple[str, int, bytes]:
        return m.source_url, m.cert_index, m.domains

    assert sorted(map(key, built)) == sorted(map(key, inline))


async def test_a_killed_worker_costs_no_entry(
    entries: list[FetchedEntry | Unparseable], caplog: pytest.LogCaptureFixture
) -> None:
    pool = WorkerPool(build_messages, 1)
    await pool.start()
    try:
        with caplog.at_level(logging.ERROR):
            built, _ = await _run(entries, pool, kill=True)
    finally:
        await pool.close()
    wanted = [e.index for e in entries if isinstance(e, FetchedEntry)]
    assert _by_log(built) == {s.url: wanted for s in LOGS}
    assert any("build workers failed" in r.getMessage() for r in caplog.records)


async def test_pool_answers_in_order_and_reports_a_dead_worker() -> None:
    pool = WorkerPool(divmod, 1)
    await pool.start()
    try:
        results = await asyncio.gather(*(pool.submit(1, n, 7) for n in range(200)))
        assert results == [divmod(n, 7) for n in range(200)]
        worker = pool._workers[0]
        assert worker.process is not None and worker.process.pid is not None
        os.kill(worker.process.pid, signal.SIGKILL)
        with pytest.raises(WorkerLost):
            for _ in range(100):  # until the loss is noticed
                await pool.submit(1, 1, 1)
                await asyncio.sleep(0.01)
    finally:
        await pool.close()

"""A process that feeds a live sink until it is killed (see test_crash.py).

    python tests/lake/sink_child.py TABLE START STOP

Offers LOG_A indices START..STOP-1 in order, every 13th as unparseable, with LOG_B interleaved
(the same indices + 1000), in small bursts like a watcher's batches; flushes every 7 rows.
Prints "ready" once the sink has started and "done" after a clean close.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.lake.conftest import LOG_A, LOG_B, make_message
from tests.lake.helpers import make_sink


async def main(table: str, start: int, stop: int) -> None:
    sink = make_sink(table, batch_size=7, flush_interval=0.05)
    await sink.start([LOG_A, LOG_B])
    print("ready", flush=True)
    for index in range(start, stop):
        for url, i in ((LOG_A, index), (LOG_B, index + 1000)):
            if i % 13 == 0:
                sink.offer_unparseable(url, i, "unparseable by construction")
            else:
                sink.offer(make_message(i, url))
        if index % 5 == 0:
            await asyncio.sleep(0.01)
    await sink.close()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))

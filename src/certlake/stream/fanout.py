"""The asyncio shell around the hub: the flush timer and the housekeeping tick."""

from __future__ import annotations

import asyncio
import time

from certlake.stream.hub import (
    Client,
    History,
    Hub,
    HubConfig,
    Predicate,
    Sink,
    StreamKind,
    StreamMessage,
    Wire,
)
from certlake.stream.resume import cursor_base


class Fanout:
    """Owns a `Hub` and drives it from the running event loop.

    `publish` is what the producer calls for every message: synchronous and O(clients).
    Cursors start at the time the fanout is created (see `resume.py`).
    """

    def __init__(self, config: HubConfig | None = None, history: History | None = None) -> None:
        """`history`: an edge's relay stream; cursors are then given with each message (the
        relay's sequence, the same on every edge), not numbered from the start time."""
        self.hub = Hub(
            config or HubConfig(),
            wake=self._schedule_flush,
            wall_clock=time.time,
            cursor_base=0 if history is not None else cursor_base(time.time_ns()),
            history=history,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._flush_handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Bind to the running loop and start housekeeping; call once, from inside the loop."""
        self._loop = asyncio.get_running_loop()
        self._tick()

    def stop(self) -> None:
        """Stop the timers and drop every client."""
        for handle in (self._tick_handle, self._flush_handle):
            if handle is not None:
                handle.cancel()
        self._tick_handle = self._flush_handle = None
        for client in self.hub.clients():
            self.hub.remove(client)
            client.sink.abort()

    def publish(self, message: StreamMessage, cursor: int | None = None) -> int:
        return self.hub.publish(message, cursor)

    def connect(
        self,
        kind: StreamKind,
        wire: Wire,
        sink: Sink,
        accepts: Predicate | None = None,
        since: int | None = None,
        keys: frozenset[str] | None = None,
    ) -> Client:
        return self.hub.add(kind, wire, sink, time.monotonic(), accepts, since, keys)

    def disconnect(self, client: Client) -> None:
        self.hub.remove(client)

    def _schedule_flush(self) -> None:
        if self._loop is None:
            raise RuntimeError("Fanout.start() must run before clients are served")
        self._flush_handle = self._loop.call_later(self.hub.config.coalesce, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        self.hub.flush(time.monotonic())

    def _tick(self) -> None:
        assert self._loop is not None
        self.hub.tick(time.monotonic())
        self._tick_handle = self._loop.call_later(self.hub.config.tick, self._tick)

"""A name for a test log that does not change with the port it is bound to.

A log's URL is its identity everywhere: the state file's key, the archive's `source_url`, the
join key of backfill (`ct/urls.py`). A test log on a random loopback port would be a new log on
every start, and the same certificates would be archived under a new URL each time. So a long-
lived test log (the demo's) is published under a fixed name, such as
`http://demo.certlake.invalid/rfc6962`, and the reader's HTTP client resolves that name to
wherever the log listens now, the way curl's `--connect-to` does; `.invalid` (RFC 2606) can never
be a real host, so nothing outside the process can be reached by mistake under that name.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver


class PinnedResolver(AbstractResolver):
    """Resolves each host in `pins` to its (address, port), whatever port the URL names; every
    other host as aiohttp would."""

    def __init__(self, pins: Mapping[str, tuple[str, int]]) -> None:
        self._pins = dict(pins)
        self._other = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        pin = self._pins.get(host)
        if pin is None:
            return await self._other.resolve(host, port, family)
        address, pinned_port = pin
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=pinned_port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        await self._other.close()

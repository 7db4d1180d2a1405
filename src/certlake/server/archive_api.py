"""The archive's HTTP endpoints: `GET /api/query/certs` (certstream-server-rust's archive search,
parameter- and response-compatible) and the archive behind `/api/cert/<key>`.

A search reads Parquet files: it runs in worker threads (delta-rs and Arrow release the GIL), at
most `SEARCHES_AT_ONCE` at a time so that searches never take the cores the stream needs, and
within `query_api.query_timeout_secs` counted from the request's arrival, waiting included. The
search checks its own deadline between batches; a storage call that does not return is waited
for one second past it at most, then the request is answered 504 while the thread finishes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

import orjson
from aiohttp import web

from certlake.config import Config, s3_storage_options
from certlake.lake.snapshot import CursorGoneError, NoArchiveError
from certlake.lake.table import TableUnreadableError, table_storage_options, table_uri
from certlake.query.lookup import find_archived
from certlake.query.search import QueryTimeoutError, search_page
from certlake.query.spec import QueryError, parse_request

log = logging.getLogger(__name__)

SEARCHES_AT_ONCE: Final = 2
_GRACE_SECS: Final = 1.0
_R = TypeVar("_R")


def _error(message: str, status: int) -> web.Response:
    return web.Response(
        body=orjson.dumps({"error": message}), status=status, content_type="application/json"
    )


class ArchiveApi:
    def __init__(self, config: Config) -> None:
        query = config.query_api
        self.uri = table_uri(config.query_table)
        self.storage_options = table_storage_options(
            self.uri, s3_storage_options(config.storage.s3)
        )
        self.default_limit = query.default_results_per_page
        self.max_limit = query.max_results_per_page
        self.timeout = float(query.query_timeout_secs)
        self._executor = ThreadPoolExecutor(SEARCHES_AT_ONCE, thread_name_prefix="archive-query")
        self._slots = asyncio.Semaphore(SEARCHES_AT_ONCE)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def query_certs(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        try:
            page_request = parse_request(
                request.query, default_limit=self.default_limit, max_limit=self.max_limit
            )
        except QueryError as exc:
            return _error(str(exc), 400)
        try:
            page = await self._run(
                arrived,
                lambda left: search_page(
                    self.uri, self.storage_options, page_request, timeout_secs=left
                ),
            )
        except _Answer as answer:
            return answer.response
        body = {
            "version": page.version,
            "results": page.api_results(),
            "next_cursor": page.next_cursor,
            "has_more": page.has_more,
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def find(self, key: str) -> bytes | web.Response | None:
        """The archived full message of the certificate `key` (a checked hash), None when the
        archive does not hold it, or an error response."""
        arrived = time.monotonic()
        try:
            return await self._run(
                arrived,
                lambda left: find_archived(self.uri, self.storage_options, key, timeout_secs=left),
            )
        except _Answer as answer:
            return answer.response

    async def _run(self, arrived: float, work: Callable[[float], _R]) -> _R:
        """`work(seconds_left)` in a worker thread, its failures turned into `_Answer`s."""
        deadline = arrived + self.timeout
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                await self._slots.acquire()
        except TimeoutError:
            raise _Answer(_error("query timed out", 504)) from None
        loop = asyncio.get_running_loop()
        left = deadline - time.monotonic()
        future = loop.run_in_executor(self._executor, functools.partial(work, left))
        # The slot is the thread's, not the request's: a search answered 504 still holds it.
        future.add_done_callback(lambda _: self._slots.release())
        try:
            return await asyncio.wait_for(asyncio.shield(future), left + _GRACE_SECS)
        except (TimeoutError, QueryTimeoutError):
            raise _Answer(_error("query timed out", 504)) from None
        except QueryError as exc:
            raise _Answer(_error(str(exc), 400)) from None
        except NoArchiveError:
            raise _Answer(_error("the archive has no table yet", 503)) from None
        except CursorGoneError as exc:
            raise _Answer(_error(f"cursor expired: {exc}", 410)) from None
        except TableUnreadableError as exc:
            log.warning("archive query failed", extra={"table": self.uri, "error": str(exc)})
            raise _Answer(_error("the archive cannot be read now", 503)) from None


class _Answer(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _loop_time(monotonic_deadline: float) -> float:
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())

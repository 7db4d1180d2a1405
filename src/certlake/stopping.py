"""How a batch job (backfill, merge) stops on SIGINT/SIGTERM: within seconds, whatever its storage
or the logs are doing.

A service manager gives a stopping job little time before it kills it (docker stop: 10 s,
Kubernetes: 30 s). A signal asks the job to stop where it safely can — backfill's fetchers and
planning at once, a merge at its next batch — and to write what it holds, for at most
`STOP_GRACE` seconds. A delta-rs call cannot be interrupted: one still running then (a commit to
a store that does not answer, which object_store retries for minutes) is abandoned in its
thread. That is safe: a Delta commit lands whole or not at all, and the next run finds out which
(backfill's gap detection, merge's anti-join). The job reports what it did and what is left, then
leaves without waiting for that thread (`exit_if_abandoned`): Python would join it at exit, for
as long as the store takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Awaitable
from typing import Final, TypeVar

from certlake.lake import panics

log = logging.getLogger(__name__)

# Seconds a job has, after the signal, to write what it holds before it gives up on it.
STOP_GRACE: Final = 5.0

_T = TypeVar("_T")
_abandoned: list[str] = []


class Stopped(Exception):
    """The stop signal came before the awaited work finished (`until_stopped`)."""


def abandon(what: str) -> None:
    """Note that a call (`what`) is left running in a thread: the process must not wait for it."""
    _abandoned.append(what)
    log.warning("left running after the stop", extra={"call": what})


async def until_stopped(
    work: Awaitable[_T], stop: asyncio.Event, what: str, *, threads: bool = True
) -> _T:
    """`work`'s result; raises `Stopped` if `stop` is set first. `work` is then cancelled and
    noted as abandoned (`what` names it): it may be a call running on in a thread. Work that
    runs no thread (`threads=False`: requests only) is cancelled and waited for instead."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
        if threads:
            abandon(what)
        else:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        raise Stopped(what)
    return task.result()


def left_running() -> list[str]:
    """What was abandoned so far (`abandon`), oldest first."""
    return list(_abandoned)


def exit_if_abandoned(code: int) -> None:
    """Exit the process now with `code` if a call was abandoned (the logs and stdio flushed
    first); return otherwise."""
    if not _abandoned:
        return
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    panics.drain()
    os._exit(code)

"""Failures of a read from a CT log, as the fetch loop needs to tell them apart."""

from __future__ import annotations

import enum


class FetchError(Exception):
    """A request that did not yield usable data. `status` is the HTTP status, if any."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        retry_after: float | None = None,
        *,
        timed_out: bool = False,
    ):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.timed_out = timed_out  # no answer within the timeout (a sign of overload)


class NotFound(FetchError):
    """404: the resource does not exist (yet): a partial tile that was replaced, a wrong URL."""


class Limit(enum.Enum):
    """Which bound on one answer of a log was passed (`ct/limits.py`)."""

    BODY = "body"  # bytes on the wire
    DECOMPRESSED = "decompressed"  # bytes once gunzipped
    ENTRIES = "entries"  # elements of a get-entries answer


class AnswerTooLarge(FetchError):
    """An answer past one of the bounds put on every read: reading stopped at the bound, so the
    answer was never held whole. The HTTP status was 200; like any unusable answer it is retried
    with back-off, and the log is read on once it answers within the bounds."""

    def __init__(self, message: str, limit: Limit, bound: int) -> None:
        super().__init__(message, 200)
        self.limit = limit
        self.bound = bound  # bytes, or for `Limit.ENTRIES` the entries asked

"""Failures of a read from a CT log, as the fetch loop needs to tell them apart."""

from __future__ import annotations


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

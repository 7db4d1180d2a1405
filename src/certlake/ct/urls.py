"""Log URLs as identities.

A log's normalized URL is its key everywhere (state file, `source_url` column, backfill join), so
every component must derive it the same way: here, and nowhere else.
"""

from __future__ import annotations

import re

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class URLError(ValueError):
    """A string that cannot serve as a log URL."""


def normalize_url(url: str) -> str:
    """`https://` added when the scheme is missing, trailing `/` removed.

    Nothing else is changed (no case folding): paths are case-sensitive, and a state file
    written by one run must key the same logs in the next.
    """
    text = url.strip()
    scheme = _SCHEME.match(text)
    prefix = scheme.group() if scheme else "https://"
    rest = (text[scheme.end() :] if scheme else text).rstrip("/")
    if not rest:
        raise URLError(f"log URL {url!r} has no host")
    return prefix + rest


def checkpoint_origin(submission_url: str) -> str:
    """The static-ct checkpoint origin: the submission prefix without scheme and trailing `/`.

    Only the submission prefix names the log; the monitoring prefix may be on another host.
    """
    return _SCHEME.sub("", normalize_url(submission_url), count=1)


def get_entries_link(log_url: str, index: int) -> str:
    """The `get-entries` URL that serves exactly entry `index` of an RFC 6962 log: the
    `cert_link` of its messages."""
    return f"{log_url}/ct/v1/get-entries?start={index}&end={index}"

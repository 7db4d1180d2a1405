"""`certlake fetch [--tiled] LOG_URL INDEX...`: what did this log hold at index N?

Prints each entry's message exactly as the stream would send it, one per line, built by the same
code as the live stream: the log is looked up in the log list and the configuration as `serve`
does (so `source.name` is its description, and a tiled log is read as one without `--tiled`), and
each message carries a `cursor` spliced in as the hub does. The cursors are numbered as a fresh
server run would number them (from the current time, +1 per message): they are this run's, not a
position in any server's stream — given to a server as `?since=`, one is simply "from now on".
Anything that cannot be fetched or parsed goes to stderr with its index, and the exit code is 1.
"""

from __future__ import annotations

import itertools
import sys
import time

from certlake.certs.errors import CertificateParseError
from certlake.certs.message import build_message
from certlake.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from certlake.config import Config
from certlake.ct.client.fetch import GaveUp, fetch_range
from certlake.ct.client.reader import Unparseable, settle
from certlake.ct.entry import LogKind
from certlake.ct.errors import FetchError, NotFound
from certlake.ct.loglist import LogInfo, merge_config_logs
from certlake.ct.urls import URLError, normalize_url
from certlake.ingest.discovery import Discovery, discover_logs
from certlake.ingest.readers import ct_log_retry_policy, http_client, make_reader
from certlake.ranges import union_ranges
from certlake.stream.resume import cursor_base, stamp_cursor

# What a 404 on the tree head suggests when the protocol was only guessed from `--tiled`.
_TRY_TILED = "this looks like a static-ct-api (tiled) log: try --tiled"
_TRY_RFC6962 = "no checkpoint there: if this is an RFC 6962 log, drop --tiled"


def fetch_target(discovery: Discovery, url: str, tiled: bool) -> tuple[LogInfo, bool]:
    """The log at normalized `url` and whether its protocol is known (not guessed).

    A log the list or the configuration describes is read as described — its description as
    `source.name`, its protocol whatever `--tiled` says, its key verified. Any other log is read
    unverified, under its URL, by the protocol `--tiled` names."""
    known = discovery.resolve(url)
    if known is not None:
        return known, True
    guess = [(url, url)]
    (info,) = merge_config_logs([], [] if tiled else guess, guess if tiled else [])
    return info, False


def tree_head_error(url: str, error: FetchError, kind: LogKind, guessed: bool) -> str:
    """The message for a tree head that could not be read, with a hint when a 404 suggests the
    other protocol."""
    text = f"Error: cannot read the tree head of {url}: {error}"
    if guessed and isinstance(error, NotFound):
        text += f"\n  {_TRY_TILED if kind is LogKind.RFC6962 else _TRY_RFC6962}"
    return text


async def run_fetch(
    config: Config, tiled: bool, log_url: str, indices: tuple[int, ...], stream: str
) -> int:
    try:
        url = normalize_url(log_url)
    except URLError as e:
        print(f"Error: {e}", file=sys.stderr)
        return EXIT_USAGE
    failed = False
    out = sys.stdout.buffer
    cursors = itertools.count(cursor_base(time.time_ns()) + 1)
    async with http_client(config.ct_log) as http:
        log, known = fetch_target(await discover_logs(config, http), url, tiled)
        reader = make_reader(http, log, config.ct_log)
        try:
            size = await reader.latest_size()
        except FetchError as e:
            print(tree_head_error(url, e, log.kind, not known), file=sys.stderr)
            return EXIT_FAILED
        wanted = sorted(set(indices))
        beyond = [i for i in wanted if i >= size]
        for i in beyond:
            print(f"Error: index {i} is beyond the tree size {size} of {url}", file=sys.stderr)
        failed = bool(beyond)
        policy = ct_log_retry_policy(config.ct_log)
        # Neighbouring indices are fetched as one range: they share requests.
        for start, end in union_ranges((i, i) for i in wanted if i < size):
            async for item in fetch_range(reader, start, end, tree_size=size, policy=policy):
                if isinstance(item, GaveUp):
                    print(
                        f"Error: could not fetch [{item.start}, {item.end}] of {url}: {item.error}",
                        file=sys.stderr,
                    )
                    failed = True
                    continue
                item = settle(item, reader.source.url)
                if isinstance(item, Unparseable):
                    print(f"Error: entry {item.index} of {url}: {item.error}", file=sys.stderr)
                    failed = True
                    continue
                try:
                    msg = build_message(item.entry, log.source, time.time(), item.cert_link)
                except CertificateParseError as e:
                    print(f"Error: entry {item.index} of {url}: {e}", file=sys.stderr)
                    failed = True
                    continue
                payload = {"full": msg.full, "lite": msg.lite, "domains": msg.domains}[stream]
                payload = stamp_cursor(payload, next(cursors))
                out.write(payload if payload.endswith(b"\n") else payload + b"\n")
                out.flush()
    return EXIT_FAILED if failed else EXIT_OK

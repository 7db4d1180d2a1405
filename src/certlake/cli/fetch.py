"""`certlake fetch [--tiled] LOG_URL INDEX...`: what did this log hold at index N?

Prints each entry's message exactly as the stream would send it, one per line, built by the same
code as the live stream. Anything that cannot be fetched or parsed goes to stderr with its index,
and the exit code is 1.
"""

from __future__ import annotations

import sys
import time

from certlake.certs.errors import CertificateParseError
from certlake.certs.message import build_message
from certlake.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from certlake.config import Config
from certlake.ct.client.fetch import GaveUp, fetch_range
from certlake.ct.client.reader import Unparseable, settle
from certlake.ct.errors import FetchError
from certlake.ct.loglist import ConfiguredLog, LogInfo, merge_config_logs
from certlake.ct.urls import URLError, normalize_url
from certlake.ingest.readers import config_logs, ct_log_retry_policy, http_client, make_reader
from certlake.ranges import union_ranges


def _log_info(config: Config, url: str, tiled: bool) -> LogInfo:
    """The log as configured (name, key, origin) if the config lists it, else unverified."""
    custom, static = config_logs(config)
    listed = [c for c in (static if tiled else custom) if c.url == url]
    log = listed[0] if listed else ConfiguredLog(url, url)
    (info,) = merge_config_logs([], [] if tiled else [log], [log] if tiled else [])
    return info


async def run_fetch(
    config: Config, tiled: bool, log_url: str, indices: tuple[int, ...], stream: str
) -> int:
    try:
        url = normalize_url(log_url)
    except URLError as e:
        print(f"Error: {e}", file=sys.stderr)
        return EXIT_USAGE
    log = _log_info(config, url, tiled)
    failed = False
    out = sys.stdout.buffer
    async with http_client(config.ct_log) as http:
        reader = make_reader(http, log, config.ct_log)
        try:
            size = await reader.latest_size()
        except FetchError as e:
            print(f"Error: cannot read the tree head of {url}: {e}", file=sys.stderr)
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
                        f"Error: could not fetch [{item.start}, {item.end}] of {url}: "
                        f"{item.error}",
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
                out.write(payload if payload.endswith(b"\n") else payload + b"\n")
                out.flush()
    return EXIT_FAILED if failed else EXIT_OK



"""Prometheus metrics of the live ingest path: per-log reads, tree sizes, lag, health,
verification and messages published. Collectors live on a registry passed in, so tests and
several servers in one process never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.entries = Counter(
            "certlake_log_entries", "Entries read from each log", ["log"], registry=registry
        )
        self.parse_failures = Counter(
            "certlake_parse_failures",
            "Entries that could not be decoded (kind=entry) or whose certificate could not be "
            "parsed (kind=certificate)",
            ["log", "kind"],
            registry=registry,
        )
        self.fetch_errors = Counter(
            "certlake_fetch_errors",
            "Failed reads from a log, by HTTP status (none = timeout or connection error)",
            ["log", "status"],
            registry=registry,
        )
        self.over_limit = Counter(
            "certlake_answers_over_limit",
            "Answers from a log refused for passing a bound (limit=body: bytes on the wire, "
            "decompressed: bytes once gunzipped, entries: more than asked); each is also one of "
            "certlake_fetch_errors",
            ["log", "limit"],
            registry=registry,
        )
        self.tree_size = Gauge(
            "certlake_log_tree_size", "Latest tree size seen", ["log"], registry=registry
        )
        self.lag = Gauge(
            "certlake_log_lag_entries",
            "Entries published by the log but not yet read",
            ["log"],
            registry=registry,
        )
        self.lag_seconds = Gauge(
            "certlake_log_lag_seconds",
            "Seconds since the oldest unread entry was first seen in a tree head",
            ["log"],
            registry=registry,
        )
        self.healthy = Gauge(
            "certlake_log_health",
            "1 for the log's current health state, 0 for the others",
            ["log", "state"],
            registry=registry,
        )
        self.verified_index = Gauge(
            "certlake_log_verified_index",
            "Entries below this are proven to be in a tree head the log signed",
            ["log"],
            registry=registry,
        )
        self.verification = Gauge(
            "certlake_log_verification",
            "1 for the log's verification state (ok, pending, inconsistent), 0 for the others",
            ["log", "state"],
            registry=registry,
        )
        self.verified_heads = Counter(
            "certlake_verified_tree_heads",
            "Signed tree heads whose root the downloaded entries reproduced",
            ["log"],
            registry=registry,
        )
        self.verification_failures = Counter(
            "certlake_verification_failures",
            "Evidence of a misbehaving log (kind=mismatch: a head's root is not its entries'; "
            "split-view: two heads that cannot both hold; served-differently: entries first "
            "served otherwise than the tree holds)",
            ["log", "kind"],
            registry=registry,
        )
        # The range is a value, not a label: one series per log, however often it lies.
        self.suspect_range = Gauge(
            "certlake_log_suspect_range",
            "The entries found not to match a signed head: first index (bound=first) and the "
            "index past the last (bound=end) of the latest evidence",
            ["log", "bound"],
            registry=registry,
        )
        self.messages = Counter(
            "certlake_messages_published", "Messages handed to the stream", registry=registry
        )

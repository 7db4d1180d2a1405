"""certstream-server-rust's metric names, offered on /metrics beside certlake's own.

Beside, not instead: operators switching from the Rust server keep the Grafana dashboards and
alerts they built on its names, and certlake keeps its own, which carry what the Rust names cannot
(lag in entries and seconds, per-operator pacing, parse failures and archive skips by kind, health
states), follow Prometheus' conventions (`_total` on counters) and label logs by their normalized
URL, the identity the state file and the archive key on, where the Rust server labels them by
description. Renaming certlake's series would lose that; offering only them would break every
dashboard made for the Rust server. Nothing is counted twice: each series below is derived, when
/metrics is read, from a value certlake keeps anyway.

    certstream_messages_sent{log}                  counter    log entries minus parse failures
    certstream_parse_failures{log}                 counter    parse failures, both kinds
    certstream_ct_logs_count                       gauge      RFC 6962 logs watched
    certstream_static_ct_logs_count                gauge      static-ct logs watched
    certstream_ws_connections_total                gauge      WebSocket clients (a gauge there too)
    certstream_ws_connections_full/_lite/_domains  gauge      WebSocket clients per stream
    certstream_sse_connections                     gauge      SSE clients
    certstream_ws_messages_lagged                  counter    dropped from WebSocket clients' queues
    certstream_sse_messages_lagged                 counter    dropped from SSE clients' queues
    certstream_auth_rejected                       counter    refused: no valid token
    certstream_rate_limit_rejected                 counter    refused: request rate
    certstream_connection_limit_rejected           counter    refused: server's connection limit
    certstream_per_ip_limit_rejected               counter    refused: client's connection limit
    certstream_delta_records_written               counter    rows committed to the archive
    certstream_delta_flushes                       counter    archive commits
    certstream_delta_write_errors                  counter    failed archive writes
    certstream_delta_buffer_size                   gauge      rows waiting to be written
    certstream_delta_messages_lagged               counter    rows dropped at the sink's bound
    certstream_delta_flush_duration_seconds        histogram  time per archive commit

(`certstream_delta_*` only while the archive is enabled.) As the Rust server's exporter
(metrics-exporter-prometheus) writes them, counters have no `_total` suffix and `log` is the log's
description; prometheus_client would add `_total` to any counter it renders, so this module
renders these families itself. The Rust server's summary of flush times becomes a histogram here:
its `_sum` and `_count` series are the same.

Not offered, for want of an equivalent: certstream_duplicates_filtered and
certstream_dedup_cache_size (certlake de-duplicates per connection, on request, not for everyone),
certstream_static_ct_* and certstream_issuer_cache_* (the same figures are per log in certlake's
own series), certstream_worker_panics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from prometheus_client.samples import Sample

from certlake.ct.entry import LogKind
from certlake.ingest.fleet import Fleet
from certlake.ingest.metrics import IngestMetrics
from certlake.lake.txn import SkipKind
from certlake.server.guard import GuardStats
from certlake.stream.hub import Hub, StreamKind, Wire

if TYPE_CHECKING:  # Delta and Arrow load only where an archive is written
    from certlake.lake.sink import DeltaSink


Kind = Literal["counter", "gauge", "histogram"]
Labels = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family as it is rendered: samples are (name, labels, value)."""

    name: str
    kind: Kind
    doc: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)


def single(name: str, kind: Kind, doc: str, value: float) -> Family:
    return Family(name, kind, doc, [(name, {}, value)])


def per_log(
    name: str, kind: Kind, doc: str, values: Mapping[str, float], names: Mapping[str, str]
) -> Family:
    """A family labelled `log` by each log's description (`names`, by URL; the URL itself for a
    log no longer watched)."""
    return Family(
        name, kind, doc, [(name, {"log": names.get(url, url)}, v) for url, v in values.items()]
    )


def sums_by_log(samples: Iterable[Sample]) -> dict[str, float]:
    """The values of certlake counter samples (`*_total`), summed per `log` label."""
    out: dict[str, float] = {}
    for s in samples:
        if s.name.endswith("_total"):
            out[s.labels["log"]] = out.get(s.labels["log"], 0.0) + s.value
    return out


def renamed_histogram(name: str, doc: str, source: str, samples: Iterable[Sample]) -> Family:
    """The buckets, sum and count of histogram `source` under `name` (no `_created`)."""
    wanted = {f"{source}{suffix}": f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count")}
    return Family(
        name,
        "histogram",
        doc,
        [(wanted[s.name], s.labels, s.value) for s in samples if s.name in wanted],
    )


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def exposition(families: Iterable[Family]) -> bytes:
    """The Prometheus text format (0.0.4) of `families`, sample names as given."""
    lines: list[str] = []
    for f in families:
        doc = f.doc.replace("\\", r"\\").replace("\n", r"\n")
        lines += [f"# HELP {f.name} {doc}", f"# TYPE {f.name} {f.kind}"]
        for name, labels, value in f.samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(
                f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}"
            )
    return "".join(line + "\n" for line in lines).encode()


def stream_families(hub: Hub) -> list[Family]:
    ws = {kind: hub.client_count(kind, Wire.WEBSOCKET) for kind in StreamKind}
    sse = sum(hub.client_count(kind, Wire.SSE) for kind in StreamKind)
    dropped = hub.stats.dropped_on
    return [
        single("certstream_ws_connections_total", "gauge", "WebSocket clients", sum(ws.values())),
        single(
            "certstream_ws_connections_full", "gauge", "Full stream clients", ws[StreamKind.FULL]
        ),
        single(
            "certstream_ws_connections_lite", "gauge", "Lite stream clients", ws[StreamKind.LITE]
        ),
        single(
            "certstream_ws_connections_domains",
            "gauge",
            "Domains-only clients",
            ws[StreamKind.DOMAINS],
        ),
        single("certstream_sse_connections", "gauge", "SSE clients", sse),
        single(
            "certstream_ws_messages_lagged",
            "counter",
            "Messages dropped from slow WebSocket clients' queues",
            dropped[Wire.WEBSOCKET],
        ),
        single(
            "certstream_sse_messages_lagged",
            "counter",
            "Messages dropped from slow SSE clients' queues",
            dropped[Wire.SSE],
        ),
    ]


def refusal_families(guard: GuardStats) -> list[Family]:
    return [
        single(
            "certstream_auth_rejected",
            "counter",
            "Requests without a valid token",
            guard.unauthorized,
        ),
        single(
            "certstream_rate_limit_rejected",
            "counter",
            "Requests over the rate limit",
            guard.rate_limited,
        ),
        single(
            "certstream_connection_limit_rejected",
            "counter",
            "Connections refused at the server's limit",
            guard.server_full,
        ),
        single(
            "certstream_per_ip_limit_rejected",
            "counter",
            "Connections refused at the per-client limit",
            guard.client_full,
        ),
    ]


def sink_families(sink: DeltaSink) -> list[Family]:
    stats = sink.stats
    return [
        single(
            "certstream_delta_records_written",
            "counter",
            "Rows committed to the archive",
            stats.rows_written,
        ),
        single("certstream_delta_flushes", "counter", "Archive commits", stats.commits),
        single("certstream_delta_write_errors", "counter", "Failed archive writes", stats.errors),
        single(
            "certstream_delta_buffer_size", "gauge", "Rows waiting to be written", sink.buffered
        ),
        single(
            "certstream_delta_messages_lagged",
            "counter",
            "Entries the archive dropped at its memory bound (recorded for backfill)",
            stats.skipped[SkipKind.DROPPED],
        ),
        renamed_histogram(
            "certstream_delta_flush_duration_seconds",
            "Time to convert and commit one batch",
            "certlake_sink_flush_seconds",
            (s for m in sink.metrics.flush_seconds.collect() for s in m.samples),
        ),
    ]


def log_families(fleet: Fleet, metrics: IngestMetrics) -> list[Family]:
    names = {url: w.info.description for url, w in fleet.watched.items()}
    entries = sums_by_log(s for m in metrics.entries.collect() for s in m.samples)
    failures = sums_by_log(s for m in metrics.parse_failures.collect() for s in m.samples)
    # Every entry a watcher hands over becomes exactly one message or one parse failure
    # (ingest/pipeline.Pipeline.handle), so what was sent is the difference.
    sent = {url: n - failures.get(url, 0.0) for url, n in entries.items()}
    kinds = [w.info.kind for w in fleet.watched.values()]
    return [
        per_log(
            "certstream_messages_sent", "counter", "Messages sent to clients, per log", sent, names
        ),
        per_log(
            "certstream_parse_failures",
            "counter",
            "Entries that could not be turned into a message, per log",
            failures,
            names,
        ),
        single(
            "certstream_ct_logs_count",
            "gauge",
            "RFC 6962 logs watched",
            kinds.count(LogKind.RFC6962),
        ),
        single(
            "certstream_static_ct_logs_count",
            "gauge",
            "Static-ct logs watched",
            kinds.count(LogKind.STATIC),
        ),
    ]


def rust_families(
    fleet: Fleet,
    metrics: IngestMetrics,
    hub: Hub,
    guard: GuardStats,
    sink: DeltaSink | None,
) -> Sequence[Family]:
    """Every certstream-server-rust family, read now (on the event loop: the values are live)."""
    families = log_families(fleet, metrics) + stream_families(hub) + refusal_families(guard)
    return families if sink is None else families + sink_families(sink)

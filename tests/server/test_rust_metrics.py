"""The rendering of certstream-server-rust's families (pure): names exactly as its exporter
writes them, label values escaped, and prometheus' own parser accepting the result."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from certlake.server.rust_metrics import (
    Family,
    exposition,
    per_log,
    renamed_histogram,
    single,
    sums_by_log,
)


def test_counters_keep_their_name_and_labels_are_escaped() -> None:
    families = [
        per_log(
            "certstream_messages_sent",
            "counter",
            "Messages sent",
            {"https://a.example/log": 3.0, "https://gone.example": 1.0},
            {"https://a.example/log": 'Log "A"\\ne\nw'},
        ),
        single("certstream_sse_connections", "gauge", "SSE\nclients", 2),
        Family(
            "x_ratio", "gauge", "odd values", [("x_ratio", {}, math.inf), ("x_ratio", {}, -1.5)]
        ),
    ]
    text = exposition(families).decode()
    assert text.splitlines() == [
        "# HELP certstream_messages_sent Messages sent",
        "# TYPE certstream_messages_sent counter",
        'certstream_messages_sent{log="Log \\"A\\"\\\\ne\\nw"} 3.0',
        # A log that left the watch list has no description at hand: its URL stands in.
        'certstream_messages_sent{log="https://gone.example"} 1.0',
        "# HELP certstream_sse_connections SSE\\nclients",
        "# TYPE certstream_sse_connections gauge",
        "certstream_sse_connections 2.0",
        "# HELP x_ratio odd values",
        "# TYPE x_ratio gauge",
        "x_ratio +Inf",
        "x_ratio -1.5",
    ]
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    (sample, _) = parsed["certstream_messages_sent"].samples
    assert sample.labels == {"log": 'Log "A"\\ne\nw'}


def test_a_histogram_is_renamed_whole_without_its_created_series() -> None:
    registry = CollectorRegistry()
    source = Histogram("certlake_sink_flush_seconds", "t", buckets=(0.5,), registry=registry)
    source.observe(0.2)
    source.observe(2.0)
    samples = [s for m in registry.collect() for s in m.samples]
    # What the source has when `_created` series are on (they are switched off process-wide).
    samples.append(Sample("certlake_sink_flush_seconds_created", {}, 1.7e9))
    family = renamed_histogram(
        "certstream_delta_flush_duration_seconds", "t", "certlake_sink_flush_seconds", samples
    )
    assert [(n, dict(labels), v) for n, labels, v in family.samples] == [
        ("certstream_delta_flush_duration_seconds_bucket", {"le": "0.5"}, 1.0),
        ("certstream_delta_flush_duration_seconds_bucket", {"le": "+Inf"}, 2.0),
        ("certstream_delta_flush_duration_seconds_count", {}, 2.0),
        ("certstream_delta_flush_duration_seconds_sum", {}, 2.2),
    ]


def test_counter_samples_are_summed_per_log_without_created() -> None:
    samples = [
        Sample("certlake_parse_failures_total", {"log": "a", "kind": "entry"}, 2.0),
        Sample("certlake_parse_failures_total", {"log": "a", "kind": "certificate"}, 1.0),
        Sample("certlake_parse_failures_created", {"log": "a", "kind": "entry"}, 1.7e9),
        Sample("certlake_parse_failures_total", {"log": "b", "kind": "entry"}, 0.0),
    ]
    assert sums_by_log(samples) == {"a": 3.0, "b": 0.0}

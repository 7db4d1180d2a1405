"""CertMessage → Arrow conversion: values, the fast paths, and malformed messages."""

from __future__ import annotations

import datetime as dt
import pickle
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certlake.certs.message import CertMessage
from certlake.lake.rows import (
    SLICE_ROWS,
    WRITE_SCHEMA,
    MalformedMessage,
    message_problem,
    messages_to_batch,
    split_malformed,
)
from certlake.lake.schema import ARCHIVE_SCHEMA

from .conftest import LOG_B, MakeMessages, make_message

ROW_FIELDS = [n for n in ARCHIVE_SCHEMA.names if n not in ("seen", "seen_date")]


def _expected_row(msg: CertMessage) -> dict[str, object]:
    return {name: getattr(msg, name) for name in ROW_FIELDS}


def test_rows_carry_every_message_field(messages: MakeMessages) -> None:
    msgs = messages(0, 12) + messages(100, 103, url=LOG_B)
    batch = messages_to_batch(msgs)
    assert batch.schema == ARCHIVE_SCHEMA
    rows = batch.to_pylist()
    assert [{k: r[k] for k in ROW_FIELDS} for r in rows] == [_expected_row(m) for m in msgs]
    assert any(len(m.chain) == 2 for m in msgs) and any(
        m.update_type == "PrecertLogEntry" for m in msgs
    )


def test_seen_is_truncated_to_microseconds_and_dated_in_utc() -> None:
    seen = [1_700_000_000.9999999, 1_699_999_999.5, 0.25, 1_735_689_599.999999]
    batch = messages_to_batch([make_message(i, seen=s) for i, s in enumerate(seen)])
    micros = batch["seen"].cast(pa.int64()).to_pylist()
    assert micros == [int(s * 1_000_000) for s in seen]
    assert batch["seen_date"].to_pylist() == [
        dt.datetime.fromtimestamp(m // 1_000_000, dt.UTC).strftime("%Y-%m-%d") for m in micros
    ]
    assert batch["seen_date"].to_pylist()[-1] == "2024-12-31"


def test_non_ascii_and_empty_values_convert_exactly() -> None:
    base = make_message(1)
    msgs = [
        base._replace(subject_aggregated="/C=DE/L=München/CN=bücher.example", all_domains=[]),
        base._replace(cert_index=2, chain=[], issuer_aggregated=""),
        base._replace(cert_index=3, all_domains=["xn--bcher-kva.example", "ünï.example"]),
    ]
    assert [{k: r[k] for k in ROW_FIELDS} for r in messages_to_batch(msgs).to_pylist()] == [
        _expected_row(m) for m in msgs
    ]


def test_empty_input_gives_an_empty_batch_of_the_schema() -> None:
    batch = messages_to_batch([])
    assert batch.num_rows == 0 and batch.schema == ARCHIVE_SCHEMA


BAD_VALUES = {
    "cert_index": [-1, 2**63, 1.0, True, None, "5"],
    "not_before": [2**64, 3.5, None],
    "seen": [float("nan"), float("inf"), 1e300, "now", None],
    "is_ca": [1, "yes", None],
    "sha256": [None, 12, b"AB", "\ud800"],
    "all_domains": [None, ("a.example",), ["a.example", None], [1]],
    "chain": [None, ["{}", 3]],
}


@pytest.mark.parametrize(("field", "value"), [(f, v) for f, vs in BAD_VALUES.items() for v in vs])
def test_malformed_values_are_named_and_never_written(field: str, value: object) -> None:
    good = [make_message(i) for i in range(4)]
    bad = make_message(9)._replace(**{field: value})
    assert str(message_problem(bad)).startswith(f"{field}:")
    with pytest.raises(MalformedMessage):
        messages_to_batch([*good[:2], bad, *good[2:]])
    table, rejected = split_malformed([*good[:2], bad, *good[2:]])
    assert table["cert_index"].to_pylist() == [0, 1, 2, 3]
    assert [(m, r.split(":")[0]) for m, r in rejected] == [(bad, field)]


_bad = st.sampled_from([(f, v) for f, vs in BAD_VALUES.items() for v in vs])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=st.lists(st.one_of(st.none(), _bad), min_size=0, max_size=40))
def test_split_keeps_exactly_the_good_rows_in_order(plan: list[tuple[str, object] | None]) -> None:
    msgs = [
        make_message(i) if spec is None else make_message(i)._replace(**{spec[0]: spec[1]})
        for i, spec in enumerate(plan)
    ]
    table, rejected = split_malformed(msgs)
    assert table["cert_index"].to_pylist() == [i for i, s in enumerate(plan) if s is None]
    assert [m for m, _ in rejected] == [m for m, s in zip(msgs, plan, strict=True) if s is not None]


def test_large_inputs_are_converted_in_slices(messages: MakeMessages) -> None:
    msgs = messages(0, SLICE_ROWS + 5)
    msgs[SLICE_ROWS + 1] = msgs[SLICE_ROWS + 1]._replace(is_ca="no")
    table, rejected = split_malformed(msgs)
    assert table.num_rows == SLICE_ROWS + 4
    assert [b.num_rows for b in table.to_batches()] == [SLICE_ROWS, 4]
    assert [m.cert_index for m, _ in rejected] == [SLICE_ROWS + 1]


def test_transport_rows_are_the_archive_rows_with_chains_as_a_dictionary(
    messages: MakeMessages, tmp_path: Path
) -> None:
    msgs = messages(0, 300)
    plain, _ = split_malformed(msgs)
    moved, _ = split_malformed(msgs, schema=WRITE_SCHEMA)
    assert moved.schema == WRITE_SCHEMA and moved.num_rows == 300
    assert moved.cast(ARCHIVE_SCHEMA).equals(plain)
    # What crosses the process boundary: the chains' few distinct certificates once.
    assert len(pickle.dumps(moved)) < len(pickle.dumps(plain)) / 2
    # delta-rs writes the dictionary column as it is; read back, it is the archive's column.
    write_deltalake(str(tmp_path / "t"), plain.slice(0, 1))
    write_deltalake(str(tmp_path / "t"), moved.slice(1), mode="append")
    back = DeltaTable(str(tmp_path / "t")).to_pyarrow_table().sort_by("cert_index")
    assert back.column("chain").type == ARCHIVE_SCHEMA.field("chain").type
    assert back.column("chain").to_pylist() == plain.column("chain").to_pylist()

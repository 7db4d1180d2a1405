"""Messages → Arrow, column by column (pure; no JSON round trip).

`CertMessage` is a NamedTuple, so one `zip(*messages)` transposes a whole batch into its columns
in C; each column then becomes an Arrow array in one call. A value that does not fit the schema
makes that fast path fail, and only then is each message checked on its own, so one malformed
message costs its own row, never the batch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from certlake.certs.message import CertMessage
from certlake.lake.schema import ARCHIVE_SCHEMA, SEEN_TYPE, SKIPPED_SCHEMA, STRING_LIST
from certlake.lake.txn import SkippedRange

# The archive's rows as both writers hand them to delta-rs: `chain` kept dictionary-encoded.
# Its JSON is ~4 KB a row but the same few intermediates throughout: backfill's rows cross a
# process boundary as a pickle (8 MB of chain strings: 19 ms to pickle, as a dictionary 0.1 ms),
# and a live commit of 10,000 rows is 19 MB of Arrow instead of 57 (delta-rs's append 0.14–0.18 s
# of CPU instead of 0.22–0.24). delta-rs writes the column as it is and reads it back as strings.
_DICTIONARY_LIST: Final = pa.list_(
    pa.field("item", pa.dictionary(pa.int32(), pa.string()), nullable=True)
)
WRITE_SCHEMA: Final = pa.schema(
    [f.with_type(_DICTIONARY_LIST) if f.name == "chain" else f for f in ARCHIVE_SCHEMA]
)

_FIELDS: Final = CertMessage._fields
_STRINGS: Final = (
    "update_type",
    "source_name",
    "source_url",
    "cert_link",
    "serial_number",
    "fingerprint",
    "sha256",
    "sha1",
    "signature_algorithm",
    "subject_aggregated",
    "issuer_aggregated",
    "as_der",
)
_INTS: Final = ("cert_index", "not_before", "not_after")
_LISTS: Final = ("all_domains", "chain")
_I64_MIN: Final = -(2**63)
_I64_MAX: Final = 2**63 - 1
# `seen` becomes µs in an int64; this keeps the product in range with room for rounding.
_SEEN_LIMIT: Final = 9.0e12
SLICE_ROWS: Final = 10_000


class MalformedMessage(ValueError):
    """A message whose values do not fit the archive schema."""


def message_problem(msg: CertMessage) -> str | None:
    """Why `msg` cannot become an archive row, or None when it can."""
    for name in _INTS:
        value = getattr(msg, name)
        if type(value) is not int or not _I64_MIN <= value <= _I64_MAX:
            return f"{name}: expected a 64-bit integer, got {value!r:.80}"
    if msg.cert_index < 0:
        return f"cert_index: negative ({msg.cert_index})"
    seen = msg.seen
    if type(seen) not in (float, int) or not math.isfinite(seen) or abs(seen) > _SEEN_LIMIT:
        return f"seen: expected Unix seconds, got {seen!r:.80}"
    if type(msg.is_ca) is not bool:
        return f"is_ca: expected a boolean, got {msg.is_ca!r:.80}"
    for name in _STRINGS:
        problem = _text_problem(getattr(msg, name))
        if problem:
            return f"{name}: {problem}"
    for name in _LISTS:
        values = getattr(msg, name)
        if not isinstance(values, list):
            return f"{name}: expected a list of strings, got {values!r:.80}"
        for item in values:
            problem = _text_problem(item)
            if problem:
                return f"{name}: {problem}"
    return None


def _text_problem(value: object) -> str | None:
    if type(value) is not str:
        return f"expected a string, got {value!r:.80}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not encodable as UTF-8 ({exc.reason} at {exc.start})"
    return None


def messages_to_batch(
    messages: Sequence[CertMessage], *, schema: pa.Schema = ARCHIVE_SCHEMA
) -> pa.RecordBatch:
    """The archive rows of `messages`, in order; raises `MalformedMessage` if any does not fit.
    `schema`: `ARCHIVE_SCHEMA`, or `WRITE_SCHEMA` for rows going to delta-rs."""
    if not messages:
        return _empty_batch(schema)
    try:
        return _convert(messages, schema)
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
        raise MalformedMessage(str(exc)) from exc


def split_malformed(
    messages: Sequence[CertMessage], *, schema: pa.Schema = ARCHIVE_SCHEMA
) -> tuple[pa.Table, list[tuple[CertMessage, str]]]:
    """The rows of the well-formed messages and, separately, each malformed one with its reason.
    Converted in slices of `SLICE_ROWS`, so string offsets (int32) never overflow whatever the
    batch size. `schema` as in `messages_to_batch`."""
    batches: list[pa.RecordBatch] = []
    bad: list[tuple[CertMessage, str]] = []
    for lo in range(0, len(messages), SLICE_ROWS):
        part = messages[lo : lo + SLICE_ROWS]
        try:
            batches.append(messages_to_batch(part, schema=schema))
            continue
        except MalformedMessage:
            pass
        good: list[CertMessage] = []
        for msg in part:
            problem = message_problem(msg)
            if problem is None:
                good.append(msg)
            else:
                bad.append((msg, problem))
        batches.append(messages_to_batch(good, schema=schema))
    return pa.Table.from_batches(batches, schema=schema), bad


def _empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema)


def _convert(messages: Sequence[CertMessage], schema: pa.Schema) -> pa.RecordBatch:
    columns = dict(zip(_FIELDS, zip(*messages, strict=True), strict=True))
    arrays: dict[str, pa.Array] = {}
    for name in _INTS:
        # pyarrow silently truncates floats into an int64 column; a row must not change value.
        if not set(map(type, columns[name])) <= {int}:
            raise MalformedMessage(f"{name}: non-integer value")
        arrays[name] = pa.array(columns[name], pa.int64())
    if pc.min(arrays["cert_index"]).as_py() < 0:
        raise MalformedMessage("cert_index: negative value")
    seen = pa.array(columns["seen"], pa.float64())
    if not pc.all(pc.less_equal(pc.abs(seen), _SEEN_LIMIT)).as_py():  # false for NaN too
        raise MalformedMessage("seen: out of range or not finite")
    # Truncation toward zero, as the Rust tool's `(seen * 1e6) as i64`.
    micros = pc.cast(pc.multiply(seen, 1_000_000.0), pa.int64(), safe=False)
    arrays["seen"] = micros.view(SEEN_TYPE)
    arrays["seen_date"] = pc.cast(pc.cast(arrays["seen"], pa.date32()), pa.string())
    arrays["is_ca"] = pa.array(columns["is_ca"], pa.bool_())
    for name in _STRINGS:
        arrays[name] = _strings(columns[name])
    arrays["all_domains"] = _string_lists(columns["all_domains"], shared=False)
    # Chain elements are the same few intermediates and roots (and the same str objects, from
    # the message builder's cache): each distinct one is encoded once and repeated in Arrow.
    arrays["chain"] = _string_lists(
        columns["chain"], shared=True, dictionary=schema.field("chain").type == _DICTIONARY_LIST
    )
    for name, array in arrays.items():
        if array.null_count:
            raise MalformedMessage(f"{name}: null value")
    return pa.RecordBatch.from_arrays([arrays[n] for n in schema.names], schema=schema)


def _offsets(lengths: Iterable[int]) -> pa.Array:
    return pa.array(itertools.accumulate(lengths, initial=0), pa.int32())


def _strings(values: Sequence[str]) -> pa.Array:
    """A string array built from one joined buffer: several times faster than `pa.array` for the
    kilobyte-long base64 and JSON values. Only for ASCII, where characters and bytes agree."""
    text = "".join(values)  # TypeError if any value is not a str
    data = text.encode("utf-8")
    if len(data) != len(text):
        return pa.array(values, pa.string())
    offsets = _offsets(map(len, values))
    return pa.StringArray.from_buffers(len(values), offsets.buffers()[1], pa.py_buffer(data))


def _string_lists(
    lists: Sequence[list[str]], *, shared: bool, dictionary: bool = False
) -> pa.Array:
    if not set(map(type, lists)) <= {list}:
        raise MalformedMessage("expected lists of strings")
    flat = list(itertools.chain.from_iterable(lists))
    if shared:
        distinct: dict[str, int] = {}
        indices = pa.array([distinct.setdefault(v, len(distinct)) for v in flat], pa.int32())
        values = pa.DictionaryArray.from_arrays(indices, _strings(list(distinct)))
        if dictionary:
            return pa.ListArray.from_arrays(
                _offsets(map(len, lists)), values, type=_DICTIONARY_LIST
            )
        items = values.cast(pa.string())
    else:
        items = _strings(flat)
    return pa.ListArray.from_arrays(_offsets(map(len, lists)), items, type=STRING_LIST)


def skipped_to_batch(ranges: Sequence[SkippedRange], recorded_us: int) -> pa.RecordBatch:
    """Rows of the side table of passed-over ranges."""
    return pa.RecordBatch.from_arrays(
        [
            pa.array([r.source_url for r in ranges], pa.string()),
            pa.array([r.start for r in ranges], pa.int64()),
            pa.array([r.end for r in ranges], pa.int64()),
            pa.array([r.kind.value for r in ranges], pa.string()),
            pa.array([r.reason for r in ranges], pa.string()),
            pa.array([recorded_us] * len(ranges), pa.int64()).view(SEEN_TYPE),
        ],
        schema=SKIPPED_SCHEMA,
    )

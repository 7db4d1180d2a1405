"""`certlake query`: the archive search of `GET /api/query/certs` for pipelines — every match, as
JSON lines, CSV or Parquet, streamed (`query.search.iter_rows`: memory does not grow with the
result), each row with the API's fields."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Final

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from certlake.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from certlake.config import Config, s3_storage_options
from certlake.lake.snapshot import NoArchiveError
from certlake.lake.table import TableUnreadableError, table_storage_options, table_uri
from certlake.query.search import api_result, iter_rows
from certlake.query.spec import QueryError, parse_request

FORMATS: Final = ("jsonl", "csv", "parquet")
_ROWS_PER_GROUP: Final = 50_000
# The results' columns as Parquet holds them (`seen` as text, as the API gives it).
RESULT_SCHEMA: Final = pa.schema(
    [
        ("cert_index", pa.int64()),
        ("fingerprint", pa.string()),
        ("sha256", pa.string()),
        ("serial_number", pa.string()),
        ("subject", pa.string()),
        ("issuer", pa.string()),
        ("not_before", pa.int64()),
        ("not_after", pa.int64()),
        ("all_domains", pa.list_(pa.string())),
        ("source_name", pa.string()),
        ("seen", pa.string()),
        ("is_ca", pa.bool_()),
        ("source_url", pa.string()),
    ]
)


def run_query(
    config: Config,
    filters: Mapping[str, str | None],
    *,
    output_format: str,
    output: Path | None,
    table: str | None,
) -> int:
    params = {k: v for k, v in filters.items() if v}
    try:
        query = parse_request(params, default_limit=1, max_limit=1).query
    except QueryError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if output_format == "parquet" and output is None and sys.stdout.isatty():
        print("Error: --format parquet writes binary: give --output FILE", file=sys.stderr)
        return EXIT_USAGE
    uri = table_uri(table or config.query_table)
    options = table_storage_options(uri, s3_storage_options(config.storage.s3))
    results = (api_result(r) for r in iter_rows(uri, options, query))
    try:
        written = _write(results, output_format, output)
    except NoArchiveError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except TableUnreadableError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{written} certificates", file=sys.stderr)
    return EXIT_OK


def _write(results: Iterator[dict[str, Any]], output_format: str, output: Path | None) -> int:
    if output_format == "parquet":
        sink: Any = output if output is not None else sys.stdout.buffer
        return _parquet(results, sink)
    if output is None:
        return _text(results, output_format, sys.stdout)
    with output.open("w", newline="", encoding="utf-8") as out:
        return _text(results, output_format, out)


def _text(results: Iterator[dict[str, Any]], output_format: str, out: IO[str]) -> int:
    written = 0
    if output_format == "jsonl":
        for result in results:
            out.write(orjson.dumps(result).decode() + "\n")
            written += 1
        return written
    writer = csv.writer(out)
    writer.writerow(RESULT_SCHEMA.names)
    for result in results:
        # Names hold no spaces: a space-separated list stays one CSV field that splits back.
        writer.writerow(" ".join(v) if k == "all_domains" else v for k, v in result.items())
        written += 1
    return written


def _parquet(results: Iterator[dict[str, Any]], sink: Any) -> int:
    written = 0
    with pq.ParquetWriter(sink, RESULT_SCHEMA, compression="zstd") as writer:
        for group in _groups(results, _ROWS_PER_GROUP):
            writer.write_table(pa.Table.from_pylist(group, schema=RESULT_SCHEMA))
            written += len(group)
    return written


def _groups(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    group: list[dict[str, Any]] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group

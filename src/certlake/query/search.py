"""A page of a search of the archive (the I/O shell around `spec`).

One page is read from one archive snapshot (the cursor's version, or the newest) in two steps:
1. candidates: the rows (`cert_index`, `source_url`) that may match, smallest first after the
   cursor — from the domain index for a domain (its rows hold what a result holds: the index
   covers the query), plus a direct scan of the files the index does not cover yet
   (`uncovered`); from the archive's own columns otherwise (issuer and dates only: no index
   answers those, the partitions bound the dates);
2. rows: the candidates the index holds whole are the rows; the others (found by the direct
   scan, or wide rows the index keeps without their payload: `domains.WIDE_NAMES`) are read from
   the archive files whose statistics may hold them. Every row is checked against
   `Query.matches`, the definition, which the index's own filters only approximate.
When the check turns candidates down (an issuer filter), more are taken until the page is full
or there are no more. Only the page's keys and rows are ever held: memory follows the page size,
not the number of matches.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from certlake.lake.domains import DOMAINS_SCHEMA, KEY, PAYLOAD, PAYLOAD_COLUMNS
from certlake.lake.files import may_hold
from certlake.lake.schema import CERT_INDEX, SOURCE_URL
from certlake.lake.snapshot import Snapshot, TablePool
from certlake.query.spec import After, Cursor, DomainFilter, DomainMode, PageRequest, Query

BATCH_ROWS: Final = 65_536
# Candidates an export holds at most before it reads the whole archive instead (~50 bytes each).
STREAM_CANDIDATES: Final = 200_000
# What a result holds: the fork's fields (subject and issuer under their short names), then
# certlake's `source_url`.
ROW_COLUMNS: Final = (CERT_INDEX, *PAYLOAD_COLUMNS, SOURCE_URL, "seen_date")
_KEYS: Final = [CERT_INDEX, SOURCE_URL]
# What a candidate holds: its key, whether the index held its row whole, and that row if so.
_CANDIDATE: Final = [*_KEYS, PAYLOAD, *PAYLOAD_COLUMNS, "seen_date"]
_CANDIDATE_SCHEMA: Final = pa.schema([DOMAINS_SCHEMA.field(name) for name in _CANDIDATE])


# The archive and its index kept open between this process's searches (`TablePool`).
TABLES: Final = TablePool()


class QueryTimeoutError(Exception):
    """The search ran out of its time (HTTP 504)."""


@dataclass(frozen=True, slots=True)
class Page:
    version: int
    rows: list[dict[str, Any]]  # archive columns (`ROW_COLUMNS`), in page order
    next_cursor: str | None
    has_more: bool

    def api_results(self) -> list[dict[str, Any]]:
        """The rows as the fork's API answers them (plus `source_url`)."""
        return [api_result(r) for r in self.rows]


def api_result(row: Mapping[str, Any]) -> dict[str, Any]:
    seen = row["seen"]
    if isinstance(seen, dt.datetime):
        seen = seen.astimezone(dt.UTC).isoformat()
    return {
        "cert_index": row["cert_index"],
        "fingerprint": row["fingerprint"],
        "sha256": row["sha256"],
        "serial_number": row["serial_number"],
        "subject": row["subject_aggregated"],
        "issuer": row["issuer_aggregated"],
        "not_before": row["not_before"],
        "not_after": row["not_after"],
        "all_domains": list(row["all_domains"] or ()),
        "source_name": row["source_name"],
        "seen": seen,
        "is_ca": row["is_ca"],
        "source_url": row["source_url"],
    }


class Deadline:
    def __init__(self, seconds: float | None) -> None:
        self._at = None if seconds is None else time.monotonic() + seconds

    def check(self) -> None:
        if self._at is not None and time.monotonic() > self._at:
            raise QueryTimeoutError("query timed out")


def search_page(
    uri: str,
    storage_options: Mapping[str, str] | None,
    request: PageRequest,
    *,
    timeout_secs: float | None = None,
) -> Page:
    """One page of `request` (raises `NoArchiveError`, `CursorGoneError`,
    `QueryTimeoutError`, `TableUnreadableError`)."""
    deadline = Deadline(timeout_secs)
    cursor = request.cursor
    with TABLES.snapshot(uri, storage_options, None if cursor is None else cursor.version) as snap:
        return _page(snap, request, deadline)


def _page(snapshot: Snapshot, request: PageRequest, deadline: Deadline) -> Page:
    cursor = request.cursor
    after = None if cursor is None else cursor.after
    want = request.limit + 1
    take = want
    while True:
        candidates = _candidates(snapshot, request.query, deadline, whole=True)
        keys = _smallest(candidates, take, after, deadline)
        rows = _rows(snapshot, request.query, keys, deadline)
        if len(rows) >= want or keys.num_rows < take:
            break
        take *= 4  # the check turned candidates down: look further
    has_more = len(rows) > request.limit
    page = rows[: request.limit]
    next_cursor = None
    if has_more:
        last = page[-1]
        next_cursor = Cursor(snapshot.version, (last[CERT_INDEX], last[SOURCE_URL])).encode()
    return Page(snapshot.version, page, next_cursor, has_more)


def iter_rows(
    uri: str,
    storage_options: Mapping[str, str] | None,
    query: Query,
    *,
    batch_rows: int = 5_000,
) -> Iterator[dict[str, Any]]:
    """Every matching row of the newest snapshot, for export (`certlake query`), in no
    particular order, memory bounded whatever the result's size. A domain search through the
    index holds its candidates' keys (up to `STREAM_CANDIDATES`: a few MB) and reads their rows
    `batch_rows` at a time; past that, or without the index, one pass over the archive is
    cheaper than looking rows up, and the rows are checked as they stream by. (Pages would
    read their candidates again for every page: quadratic for a big result.)"""
    deadline = Deadline(None)
    snapshot = Snapshot(uri, storage_options, None)
    if query.domain is not None and snapshot.index is not None and snapshot.uncovered is not None:
        keys = _all_keys(_candidates(snapshot, query, deadline, whole=False), STREAM_CANDIDATES)
        if keys is not None:
            yield from _stream_candidates(snapshot, query, deadline, batch_rows)
            return
    paths = snapshot.all_paths()
    for batch in snapshot.files.scan(
        paths, ROW_COLUMNS, _date_filter(query), batch_rows, lean=True
    ):
        for row in pa.Table.from_batches([batch]).filter(_archive_mask(batch, query)).to_pylist():
            if _matches(query, row):
                yield row


def _stream_candidates(
    snapshot: Snapshot, query: Query, deadline: Deadline, batch_rows: int
) -> Iterator[dict[str, Any]]:
    """The matching rows of the candidates as they come (the index's whole rows), then of the
    others read from the archive `batch_rows` at a time; each once (a row is a candidate once
    for each of its names that matches: the caller has checked that the keys are few)."""
    done: set[tuple[int, str]] = set()
    pending: set[tuple[int, str]] = set()
    for table in _candidates(snapshot, query, deadline, whole=True):
        whole = pc.fill_null(table.column(PAYLOAD), False)
        for row in table.filter(whole).select(ROW_COLUMNS).to_pylist():
            key = (row[CERT_INDEX], row[SOURCE_URL])
            if key not in done:
                done.add(key)
                if _matches(query, row):
                    yield row
        rest = table.filter(pc.invert(whole))
        indices, urls = rest.column(CERT_INDEX).to_pylist(), rest.column(SOURCE_URL).to_pylist()
        pending.update(zip(indices, urls, strict=True))
    left = sorted(pending - done)
    for start in range(0, len(left), batch_rows):
        part = left[start : start + batch_rows]
        keys = pa.table(
            {
                CERT_INDEX: pa.array([k for k, _ in part], pa.int64()),
                SOURCE_URL: pa.array([u for _, u in part], pa.string()),
            }
        )
        yield from _rows(snapshot, query, keys, deadline)


def _matches(query: Query, row: Mapping[str, Any]) -> bool:
    return query.matches(row["all_domains"] or (), row["issuer_aggregated"], row["seen_date"])


def _all_keys(tables: Iterator[pa.Table], most: int) -> pa.Table | None:
    """The distinct keys of `tables`, sorted; None when there are more than `most`."""
    parts: list[pa.Table] = []
    held = 0
    for table in tables:
        parts.append(table)
        held += table.num_rows
        if held > most:
            parts = [_distinct(pa.concat_tables(parts))]
            held = parts[0].num_rows
            if held > most:
                return None
    if not parts:
        return _empty_keys()
    return _distinct(pa.concat_tables(parts))


def _distinct(table: pa.Table) -> pa.Table:
    unique = table.group_by(_KEYS, use_threads=False).aggregate([])
    return unique.sort_by([(CERT_INDEX, "ascending"), (SOURCE_URL, "ascending")])


def _empty_keys() -> pa.Table:
    return pa.table({CERT_INDEX: pa.array([], pa.int64()), SOURCE_URL: pa.array([], pa.string())})


# --- candidates ---------------------------------------------------------------------------


def _date_filter(query: Query, column: str = "seen_date") -> pc.Expression | None:
    parts = []
    if query.date_from is not None:
        parts.append(pc.field(column) >= query.date_from)
    if query.date_to is not None:
        parts.append(pc.field(column) <= query.date_to)
    return _and(parts)


def _and(parts: Iterable[pc.Expression | None]) -> pc.Expression | None:
    result: pc.Expression | None = None
    for part in parts:
        if part is not None:
            result = part if result is None else result & part
    return result


def _candidates(
    snapshot: Snapshot, query: Query, deadline: Deadline, *, whole: bool
) -> Iterator[pa.Table]:
    """Tables that hold every matching row's key (and maybe more; `_rows` checks): with
    `whole`, of `_CANDIDATE`'s columns (the row, when the index holds it whole), else of the
    keys only."""
    domain = query.domain
    if domain is None or snapshot.uncovered is None or snapshot.index is None:
        # Issuer and dates only, or no usable index: the archive's own columns.
        yield from _scan_archive(snapshot, query, snapshot.all_paths(), deadline, whole=whole)
        return
    yield from _scan_index(snapshot, query, domain, deadline, whole=whole)
    yield from _scan_archive(snapshot, query, snapshot.uncovered, deadline, whole=whole)


def _scan_index(
    snapshot: Snapshot, query: Query, domain: DomainFilter, deadline: Deadline, *, whole: bool
) -> Iterator[pa.Table]:
    key_range = domain.key_range()
    if key_range is not None:
        low, high = key_range
        match: pc.Expression = (pc.field(KEY) >= low) & (pc.field(KEY) < high)
    else:
        match = pc.match_substring(pc.field(KEY), domain.key_substring())
    columns = _CANDIDATE if whole else _KEYS
    predicate = _and([match, _date_filter(query)])
    assert predicate is not None
    for batch in snapshot.scan_index(columns, predicate, BATCH_ROWS, key_range):
        deadline.check()
        yield pa.Table.from_batches([batch])


def _scan_archive(
    snapshot: Snapshot, query: Query, paths: list[str], deadline: Deadline, *, whole: bool
) -> Iterator[pa.Table]:
    columns = list(_KEYS)
    if query.domain is not None:
        columns.append("all_domains")
    if query.issuer is not None:
        columns.append("issuer_aggregated")
    for batch in snapshot.files.scan(paths, columns, _date_filter(query), BATCH_ROWS):
        deadline.check()
        keep = _archive_mask(batch, query)
        keys = pa.Table.from_batches([batch]).filter(keep).select(_KEYS)
        yield _to_read(keys) if whole else keys


def _to_read(keys: pa.Table) -> pa.Table:
    """Candidates of `keys` whose rows are to be read from the archive (`_CANDIDATE`)."""
    n = keys.num_rows
    types = {f.name: f.type for f in _CANDIDATE_SCHEMA}
    columns = {name: keys.column(name) for name in _KEYS}
    columns[PAYLOAD] = pa.repeat(pa.scalar(False), n)
    for name in (*PAYLOAD_COLUMNS, "seen_date"):
        columns[name] = pa.nulls(n, types[name])
    return pa.table(columns, schema=_CANDIDATE_SCHEMA)


def _archive_mask(batch: pa.RecordBatch, query: Query) -> pa.Array:
    """Which rows of `batch` may match (vectorized; `Query.matches` decides)."""
    mask: Any = pa.repeat(pa.scalar(True), batch.num_rows)
    if query.issuer is not None:
        issuers = pc.utf8_lower(batch.column("issuer_aggregated"))
        mask = pc.and_(mask, pc.match_substring(issuers, query.issuer))
    if query.domain is not None:
        names = batch.column("all_domains")
        flat = pc.utf8_lower(pc.list_flatten(names))
        text = query.domain.text
        if query.domain.mode is DomainMode.EXACT:
            hit = pc.equal(flat, text)
        elif query.domain.mode is DomainMode.SUFFIX:
            hit = pc.ends_with(flat, text)
        else:
            hit = pc.match_substring(flat, text)
        parents = pc.filter(pc.list_parent_indices(names), pc.fill_null(hit, False))
        positions = pa.array(range(batch.num_rows), pa.int64())
        mask = pc.and_(mask, pc.is_in(positions, value_set=parents.cast(pa.int64())))
    return mask


def _smallest(
    tables: Iterator[pa.Table], take: int, after: After | None, deadline: Deadline
) -> pa.Table:
    """The candidates of the `take` smallest distinct keys after `after`, sorted; of a key
    found more than once (a row under two matching names, or in the index and a direct scan),
    a whole one if there is one."""
    best: pa.Table | None = None
    for table in tables:
        if after is not None:
            table = table.filter(_after_mask(table, after))
        if table.num_rows == 0:
            continue
        deadline.check()
        merged = table if best is None else pa.concat_tables([best, table])
        best = _first_of_each_key(merged).slice(0, take)
    if best is None:
        return _to_read(_empty_keys())
    return best


def _first_of_each_key(table: pa.Table) -> pa.Table:
    """`table` sorted by key, one row a key: a whole one first."""
    table = table.sort_by(
        [(CERT_INDEX, "ascending"), (SOURCE_URL, "ascending"), (PAYLOAD, "descending")]
    ).combine_chunks()
    n = table.num_rows
    if n < 2:
        return table
    indices, urls = table.column(CERT_INDEX).chunk(0), table.column(SOURCE_URL).chunk(0)
    new = pc.or_(
        pc.not_equal(indices.slice(1), indices.slice(0, n - 1)),
        pc.not_equal(urls.slice(1), urls.slice(0, n - 1)),
    )
    return table.filter(pa.concat_arrays([pa.array([True]), new]))


def _after_mask(table: pa.Table, after: After) -> pa.ChunkedArray:
    index, url = after
    indices = table.column(CERT_INDEX)
    later = pc.greater(indices, index)
    if url is None:
        return later
    same = pc.and_(pc.equal(indices, index), pc.greater(table.column(SOURCE_URL), url))
    return pc.or_(later, same)


# --- rows ---------------------------------------------------------------------------------


def _rows(
    snapshot: Snapshot, query: Query, candidates: pa.Table, deadline: Deadline
) -> list[dict[str, Any]]:
    """The rows of `candidates` (distinct keys; `_CANDIDATE`'s columns, or the keys only) that
    match, in the candidates' order: the whole ones as the index holds them, the others read
    from the archive."""
    if candidates.num_rows == 0:
        return []
    indices = candidates.column(CERT_INDEX).to_pylist()
    urls = candidates.column(SOURCE_URL).to_pylist()
    if PAYLOAD in candidates.column_names:
        whole = pc.fill_null(candidates.column(PAYLOAD), False)
        held = candidates.filter(whole).select(ROW_COLUMNS).to_pylist()
        rows = {(r[CERT_INDEX], r[SOURCE_URL]): r for r in held}
        rest = candidates.filter(pc.invert(whole))
    else:
        rows, rest = {}, candidates
    if rest.num_rows:
        rows.update(_read_rows(snapshot, rest, deadline))
    result = []
    for key in zip(indices, urls, strict=True):
        row = rows.get(key)
        if row is not None and _matches(query, row):
            result.append(row)
    return result


def _read_rows(
    snapshot: Snapshot, keys: pa.Table, deadline: Deadline
) -> dict[tuple[int, str], dict[str, Any]]:
    """The archive rows of `keys`, read from the files whose statistics may hold them."""
    indices = keys.column(CERT_INDEX).to_pylist()
    urls = keys.column(SOURCE_URL).to_pylist()
    mask = may_hold(snapshot.files.stats, ((u, i, i) for u, i in zip(urls, indices, strict=True)))
    paths = [str(p) for p in pc.filter(snapshot.files.stats.column("path"), mask).to_pylist()]
    predicate = pc.field(CERT_INDEX).isin(pa.array(sorted(set(indices)), pa.int64())) & pc.field(
        SOURCE_URL
    ).isin(pa.array(sorted(set(urls)), pa.string()))
    wanted = set(zip(indices, urls, strict=True))
    found: dict[tuple[int, str], dict[str, Any]] = {}
    for batch in snapshot.files.scan(paths, ROW_COLUMNS, predicate, BATCH_ROWS):
        deadline.check()
        for row in batch.to_pylist():
            key = (row[CERT_INDEX], row[SOURCE_URL])
            if key in wanted and key not in found:
                found[key] = row
    return found

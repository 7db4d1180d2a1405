"""`certlake merge --staging-path P`: move a staging table's rows into the main table.

Every staging row whose `(source_url, cert_index)` is not in main is appended to main; the rest
is skipped, and duplicates inside staging collapse to one row (which one: `mergekeys`). Staging's
record of the indices its backfill passed without a row (`_certlake_skipped`: undecodable
entries) is added to main's, less what main records already — also when it is all staging holds.
Then the staging table is deleted.

How it stays safe at any size:

- Staging is read in *windows* of at most `window_rows` rows (whole Parquet row groups, in
  staging order). A window is decided from its keys alone (two columns), then its rows are
  re-read, filtered and appended in *batches* of at most `batch_rows` rows (and ~16 MB). Memory
  holds one window's keys (~30 bytes a row) and one batch of rows, never a table.
- Main is pruned per window: only the files whose `source_url`/`cert_index` statistics overlap
  the window's key segments are opened, and only their two key columns are read, with each
  log's index bounds in the window pushed down to Parquet row groups.
- Each batch is its own Delta commit. The decision is an anti-join against main, so it is
  idempotent: a batch that landed before a crash or a Ctrl-C is found in main by the re-run and
  skipped, whether staging is the same table or a new one with the same rows. (Delta MERGE was
  measured and rejected: delta-rs 1.6.6 decodes whole target rows for an insert-only merge; two
  50,000-row batches against a 930,000-row main took 10-20 s and ~7 GB of RSS, this 2.7 s and
  0.8 GB; docs/benchmarks.md, "merge".)
- Staging is deleted only after the last batch committed, log first and newest version first,
  so an interrupted deletion leaves either an older readable version of staging (whose rows are
  all in main) or nothing.
- Nothing is touched when staging and main are the same table (under any spelling) or when their
  schemas differ: exit 2.
- SIGINT/SIGTERM stop the merge at its next batch (exit 1, staging kept). The merge runs in a
  thread of its own so that the signal is taken at once even while delta-rs works: a commit to a
  store that does not answer is retried by object_store for minutes. One still running
  `stopping.STOP_GRACE` seconds after the signal is abandoned (it lands whole or not at all; the
  re-run skips what landed) and the process leaves without waiting for it.

Main may receive appends from other writers meanwhile (the live sink); each window reads main as
it is when the window starts. A writer that inserts a key of the current window between that
read and the window's commits would make a duplicate; the live sink writes at the logs' heads,
which backfill (the only producer of staging tables) does not fetch.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from certlake.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from certlake.ingest.state import write_atomic
from certlake.lake import domains
from certlake.lake.files import RowGroup, TableFiles, may_hold
from certlake.lake.location import Location, TableLocationError, local_path, object_location
from certlake.lake.schema import (
    ARCHIVE_SCHEMA,
    CERT_INDEX,
    SOURCE_URL,
    ArchiveSchemaError,
    Segment,
    check_archive_schema,
    schema_problems,
)
from certlake.lake.table import (
    STORAGE_ERRORS,
    ArchiveTable,
    TableUnreadableError,
    delete_table,
    read_skipped,
    record_skipped,
    table_storage_options,
    table_uri,
)
from certlake.lake.txn import skips_to_add
from certlake.merge.keys import MergeKeyError, WindowKeys
from certlake.stopping import STOP_GRACE, abandon

log = logging.getLogger(__name__)

DEFAULT_WINDOW_ROWS: Final = 1 << 20
# A window's keys are matched against main's file statistics as at most this many index
# intervals (each costs one vectorized pass over the statistics).
MAX_SEGMENTS: Final = 256
_SCAN_ROWS: Final = 1 << 19  # main's keys per probe of the window: ~6 MB, one hash build each
# Staging rows are decoded a couple of thousand at a time, and a commit ends at this many bytes
# of Arrow data even before `batch_rows` rows: delta-rs needs several times a batch's size while
# it writes it (measured: ~250 MB for 32 MB), and realistic rows are ~4 KB, so 10,000 rows
# (`delta_sink.batch_size`'s default) would be ~40 MB.
_READ_ROWS: Final = 2048
BATCH_BYTES: Final = 16 << 20


class SameTableError(ValueError):
    """Staging and main are one table (or one lies inside the other): merging would delete it."""


class MergeError(RuntimeError):
    """A merge that started could not finish (staging changed under it, ...)."""


class MergeInterrupted(Exception):
    """A stop signal came: raised in the merge thread at the next batch, window or step."""


@dataclass
class MergeSummary:
    """What a merge did. Totals cover completed windows: `inserted + skipped == staging_rows`."""

    staging: str
    main: str
    outcome: str = "running"
    total_staging_rows: int = 0
    total_inserted: int = 0
    total_skipped: int = 0
    skipped_in_main: int = 0  # of total_skipped: the key was already in main
    skipped_duplicates: int = 0  # of total_skipped: a repeat of a key earlier in staging
    batches: int = 0  # commits to main
    windows: int = 0
    main_files_read: int = 0  # summed over windows
    # Records of indices passed without a row (undecodable entries) in staging's side table,
    # and the ranges of them recorded in main's (what main did not record already).
    skip_records: int = 0
    skip_records_added: int = 0
    main_created: bool = False
    staging_deleted: bool = False
    seconds: float = 0.0

    def add_window(self, keys: WindowKeys, inserted: int) -> None:
        self.windows += 1
        self.total_staging_rows += keys.rows
        self.total_inserted += inserted
        self.skipped_in_main += keys.already_present
        self.skipped_duplicates += keys.duplicates
        self.total_skipped = self.skipped_in_main + self.skipped_duplicates


# --- locations ------------------------------------------------------------------------------------


def resolve_location(path: str) -> Location:
    """The one spelling of a table location: local paths made absolute with `..` and symlinks
    resolved (also for a table that does not exist yet), `s3://` keys normalized."""
    local = local_path(path)
    if local is None:
        return object_location(path)
    return Location.local(os.path.realpath(os.path.expanduser(local)))


def check_distinct(staging: Location, main: Location) -> None:
    """Raise `SameTableError` unless the two locations are disjoint."""
    relation = staging.relation(main)
    if relation is None and staging.scheme == main.scheme == "file":
        # Bind mounts and hard-linked directories escape path comparison; the inode does not.
        try:
            if os.path.samefile(str(staging), str(main)):
                relation = "same"
        except OSError:
            pass
    if relation == "same":
        raise SameTableError(f"staging {staging} is the main table")
    if relation == "inside":
        raise SameTableError(f"staging {staging} lies inside the main table {main}")
    if relation == "contains":
        raise SameTableError(
            f"the main table {main} lies inside staging {staging}: deleting staging would delete it"
        )


# --- staging --------------------------------------------------------------------------------------


def _staging_windows(staging: TableFiles, limit: int) -> Iterator[list[RowGroup]]:
    """Staging's row groups in staging order (`TableFiles.row_groups`), grouped into windows of
    at most `limit` rows (a larger row group is a window of its own). Footers are read as the
    windows are reached."""
    window: list[RowGroup] = []
    rows = 0
    for group in staging.row_groups():
        if window and rows + group.rows > limit:
            yield window
            window, rows = [], 0
        window.append(group)
        rows += group.rows
    if window:
        yield window


def _window_keys(units: list[RowGroup]) -> WindowKeys:
    def parts() -> Iterator[tuple[pa.ChunkedArray, pa.ChunkedArray]]:
        for unit in units:
            keys = unit.keys()
            if keys.num_rows != unit.rows:
                raise MergeError(f"a staging row group read {keys.num_rows} rows, not {unit.rows}")
            yield keys.column(SOURCE_URL), keys.column(CERT_INDEX)

    return WindowKeys.build(parts())


def _staging_rows(stats: pa.Table) -> int | None:
    """Rows in staging by the log's statistics; None when some file has none recorded."""
    rows = stats.column("rows")
    if rows.null_count:
        return None
    return int(pc.sum(rows).as_py() or 0)


# --- main -----------------------------------------------------------------------------------------


def _main_files(main: TableFiles, segments: list[Segment]) -> tuple[list[str], int]:
    """The data files of main whose statistics can hold a key of `segments`, and how many
    files main has."""
    stats = main.stats
    if not stats.num_rows or not segments:
        return [], stats.num_rows
    paths: list[str] = pc.filter(stats.column("path"), may_hold(stats, segments)).to_pylist()
    return paths, stats.num_rows


def _mark_main_keys(main: TableFiles, paths: list[str], keys: WindowKeys) -> None:
    """Feed `keys` the keys of `paths` that fall within the window's per-log bounds."""
    if not paths:
        return
    predicate: Any = None
    for url, lo, hi in keys.url_bounds():
        term = (
            (pc.field(SOURCE_URL) == url)
            & (pc.field(CERT_INDEX) >= lo)
            & (pc.field(CERT_INDEX) <= hi)
        )
        predicate = term if predicate is None else predicate | term
    # Batches are a row group or less; each call probes every key of the window once, so
    # main's keys are handed over in chunks of about _SCAN_ROWS.
    urls: list[pa.Array] = []
    indices: list[pa.Array] = []
    held = 0
    for batch in main.scan_keys(paths, predicate, _SCAN_ROWS):
        urls.append(batch.column(SOURCE_URL))
        indices.append(batch.column(CERT_INDEX))
        held += batch.num_rows
        if held >= _SCAN_ROWS:
            keys.mark_present(pa.chunked_array(urls), pa.chunked_array(indices))
            urls, indices, held = [], [], 0
    if held:
        keys.mark_present(pa.chunked_array(urls), pa.chunked_array(indices))


# --- the merge ------------------------------------------------------------------------------------


class _Merge:
    def __init__(
        self,
        main_path: str,
        staging_path: str,
        *,
        storage_options: Mapping[str, str] | None,
        batch_rows: int,
        compression_level: int,
        window_rows: int,
    ) -> None:
        if batch_rows < 1 or window_rows < 1:
            raise ValueError("batch_rows and window_rows must be at least 1")
        self.main_uri = table_uri(main_path)
        self.staging_uri = table_uri(staging_path)
        self.main_options = table_storage_options(self.main_uri, storage_options)
        self.staging_options = table_storage_options(self.staging_uri, storage_options)
        self.batch_rows = batch_rows
        self.level = compression_level
        self.window_rows = window_rows
        self.summary = MergeSummary(self.staging_uri, self.main_uri)
        self.deleting = False
        self.stop = threading.Event()  # set by a signal; the merge stops at its next step

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise MergeInterrupted

    def run(self) -> None:
        summary = self.summary
        check_distinct(resolve_location(self.staging_uri), resolve_location(self.main_uri))
        staging = TableFiles.open(self.staging_uri, self.staging_options, "staging")
        if staging is None:
            summary.outcome = "missing staging"
            return
        problems = schema_problems(staging.schema, ARCHIVE_SCHEMA)
        if problems:
            raise ArchiveSchemaError(
                f"staging {self.staging_uri} does not have the archive's schema: "
                + "; ".join(problems)
            )
        main = self._open_main()
        if main is not None and main.table_id == staging.table_id:
            raise SameTableError(
                f"staging {self.staging_uri} has the Delta table id of the main table "
                f"{self.main_uri}: it is main under another name, or a copy of it"
            )
        # Staging's record of the indices its backfill passed without a row (undecodable
        # entries) travels with its rows: gap detection over main would list them for ever.
        skips = read_skipped(self.staging_uri, self.staging_options)
        summary.skip_records = len(skips)
        if _staging_rows(staging.stats) == 0 and not skips:
            summary.outcome = "empty staging"
            return
        if main is None:
            ArchiveTable.open_or_create(
                self.main_uri, storage_options=self.main_options, compression_level=self.level
            )
            summary.main_created = True
            log.info("main table did not exist: created it", extra={"main": self.main_uri})
            main = self._open_main()
            if main is None:
                raise MergeError(f"main table {self.main_uri}: created, but cannot be opened")
        writer = main.archive(self.level)
        for units in _staging_windows(staging, self.window_rows):
            self._window(units, main, writer, staging.table_id)
        self._check_stop()
        self._index_main()
        if skips:
            added = skips_to_add(skips, read_skipped(self.main_uri, self.main_options))
            if added:
                record_skipped(self.main_uri, self.main_options, added)
            summary.skip_records_added = len(added)
        self.deleting = True
        deleted = delete_table(self.staging_uri, self.staging_options)
        summary.staging_deleted = True
        summary.outcome = "merged"
        log.info(
            "staging table deleted",
            extra={
                "staging": self.staging_uri,
                "files": deleted,
                "skip_records": summary.skip_records,
                "skip_records_added": summary.skip_records_added,
            },
        )

    def _index_main(self) -> None:
        """Bring main's domain index up to what the merge added. A failure only leaves the
        newest files to be scanned by searches until the next catch-up: the rows are merged."""
        try:
            done = domains.catch_up(self.main_uri, self.main_options, compression_level=self.level)
        except Exception as exc:  # any failure: the merge itself succeeded
            log.warning(
                "the domain index could not catch up with main; the next writer or"
                " `certlake maintain` will",
                extra={"main": self.main_uri, "error": str(exc)[:500]},
            )
            return
        if done is None:
            log.warning(
                "main has no domain index: `certlake index rebuild` builds it",
                extra={"main": self.main_uri},
            )

    def _open_main(self) -> TableFiles | None:
        """Main, or None when it does not exist yet; raises `ArchiveSchemaError` when the table
        there is not an archive table."""
        main = TableFiles.open(self.main_uri, self.main_options, "main")
        if main is not None:
            where = f"main table {self.main_uri}"
            check_archive_schema(main.schema, main.partition_columns, where)
        return main

    def _window(
        self, units: list[RowGroup], main: TableFiles, writer: ArchiveTable, staging_id: str
    ) -> None:
        self._check_stop()
        keys = _window_keys(units)
        main.refresh()  # commits of earlier windows, and of other writers
        paths, main_files = _main_files(main, keys.segments(MAX_SEGMENTS))
        _mark_main_keys(main, paths, keys)
        self.summary.main_files_read += len(paths)
        mask = keys.insert_mask()
        to_insert = int(pc.sum(mask).as_py() or 0)
        log.info(
            "merge window decided",
            extra={
                "window": self.summary.windows + 1,
                "staging_rows": keys.rows,
                "duplicates": keys.duplicates,
                "already_in_main": keys.already_present,
                "to_insert": to_insert,
                "main_files_read": len(paths),
                "main_files_total": main_files,
            },
        )
        inserted = self._insert(units, keys, mask, writer, staging_id) if to_insert else 0
        if inserted != to_insert:
            raise MergeError(f"window decided {to_insert} rows to insert, wrote {inserted}")
        self.summary.add_window(keys, inserted)

    def _insert(
        self,
        units: list[RowGroup],
        keys: WindowKeys,
        mask: pa.Array,
        writer: ArchiveTable,
        staging_id: str,
    ) -> int:
        """Re-read the window's rows, keep those `mask` selects, append them in batches."""
        pending: list[pa.RecordBatch] = []
        pending_rows = pending_bytes = 0
        inserted = 0
        position = 0
        for unit in units:
            end = position + unit.rows
            if not pc.any(mask.slice(position, unit.rows)).as_py():
                position = end  # every row of this row group is skipped: it is not read
                continue
            for batch in unit.batches(_READ_ROWS):
                n = batch.num_rows
                expected = keys.indices_in_order.slice(position, n)
                if position + n > end or not pc.all(pc.equal(batch[CERT_INDEX], expected)).as_py():
                    raise MergeError("staging changed while it was being merged")
                kept = batch.filter(mask.slice(position, n))
                position += n
                if kept.num_rows:
                    pending.append(kept)
                    pending_rows += kept.num_rows
                    pending_bytes += kept.nbytes
                while pending_rows >= self.batch_rows or pending_bytes >= BATCH_BYTES:
                    rows = pa.Table.from_batches(pending)
                    take = min(pending_rows, self.batch_rows)
                    inserted += self._commit(rows.slice(0, take), writer, staging_id)
                    rest = rows.slice(take)
                    pending, pending_rows, pending_bytes = (
                        rest.to_batches(),
                        rest.num_rows,
                        rest.nbytes,
                    )
            if position != end:
                raise MergeError("staging changed while it was being merged")
        if pending_rows:
            inserted += self._commit(pa.Table.from_batches(pending), writer, staging_id)
        return inserted

    def _commit(self, rows: pa.Table, writer: ArchiveTable, staging_id: str) -> int:
        self._check_stop()
        batch = self.summary.batches + 1
        writer.append(
            rows.cast(ARCHIVE_SCHEMA),
            versions={},
            commit_id=f"merge {staging_id} window {self.summary.windows + 1} batch {batch}",
        )
        self.summary.batches = batch
        log.info(
            "merge batch committed",
            extra={"batch": batch, "window": self.summary.windows + 1, "rows": rows.num_rows},
        )
        return int(rows.num_rows)


# --- the command ----------------------------------------------------------------------------------


def merge_command(
    main_path: str,
    staging_paths: str | Sequence[str],
    *,
    storage_options: Mapping[str, str] | None = None,
    batch_rows: int = 10_000,
    compression_level: int = 3,
    window_rows: int = DEFAULT_WINDOW_ROWS,
    summary_json: Path | None = None,
) -> int:
    """Merge one staging, or several (a cluster backfill's, several jobs') one after the other
    as separate merges: a row in two of them is inserted by the first and skipped by the next.
    The first that does not merge (refused, failed, interrupted) ends the call with its exit
    code; the rest are left as they are and listed. `summary_json`: the merge's summary, or with
    several stagings a list of one per staging tried."""
    several = not isinstance(staging_paths, str)
    paths = list(staging_paths) if several else [str(staging_paths)]
    summaries: list[MergeSummary] = []
    code = EXIT_OK
    for n, staging in enumerate(paths):
        code, summary = merge_one(
            main_path,
            staging,
            storage_options=storage_options,
            batch_rows=batch_rows,
            compression_level=compression_level,
            window_rows=window_rows,
        )
        summaries.append(summary)
        if code != EXIT_OK:
            if rest := paths[n + 1 :]:
                log.error("stagings left unmerged", extra={"stagings": rest})
            break
    if summary_json is not None:
        document = [asdict(s) for s in summaries] if several else asdict(summaries[0])
        write_atomic(summary_json, orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    return code


def merge_one(
    main_path: str,
    staging_path: str,
    *,
    storage_options: Mapping[str, str] | None = None,
    batch_rows: int = 10_000,
    compression_level: int = 3,
    window_rows: int = DEFAULT_WINDOW_ROWS,
) -> tuple[int, MergeSummary]:
    """Run the merge, log and print its summary; the exit code and the summary."""
    started = time.monotonic()
    merge = _Merge(
        main_path,
        staging_path,
        storage_options=storage_options,
        batch_rows=batch_rows,
        compression_level=compression_level,
        window_rows=window_rows,
    )
    summary = merge.summary
    log.info("merge starting", extra={"staging": merge.staging_uri, "main": merge.main_uri})
    signalled: list[str] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not signalled:
            log.warning(
                "signalled: the merge stops at its next batch",
                extra={"signal": signal.Signals(signum).name, "grace_secs": STOP_GRACE},
            )
        signalled.append(signal.Signals(signum).name)
        merge.stop.set()

    handlers: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:  # as `nohup` and `&` leave them
                handlers[sig] = signal.signal(sig, on_signal)
    failed: list[BaseException] = []
    try:
        left_running = _run_in_thread(merge, failed)
    finally:
        for signum, previous in handlers.items():
            signal.signal(signum, previous)
    exc = failed[0] if failed else None
    code = EXIT_FAILED
    if left_running:
        summary.outcome = "interrupted"
        abandon("the merge's delta-rs call")
        log.error(
            "merge interrupted; a delta-rs call was still running",
            extra={"signal": signalled[0], "seconds_after_signal": STOP_GRACE, **_left(merge)},
        )
    elif exc is None:
        code = EXIT_OK
    elif isinstance(exc, SameTableError | ArchiveSchemaError | TableLocationError):
        summary.outcome = "refused"
        code = EXIT_USAGE
        log.error("merge refused; nothing was changed", extra={"reason": str(exc)})
    elif isinstance(exc, MergeInterrupted):
        summary.outcome = "interrupted"
        log.error("merge interrupted", extra={"signal": signalled[0], **_left(merge)})
    elif isinstance(exc, (MergeError, MergeKeyError, TableUnreadableError, *STORAGE_ERRORS)):
        summary.outcome = "failed"
        log.error("merge failed", extra={"error": f"{type(exc).__name__}: {exc}", **_left(merge)})
    else:
        raise exc
    summary.seconds = round(time.monotonic() - started, 3)
    _report(summary)
    return code, summary


def _run_in_thread(merge: _Merge, failed: list[BaseException]) -> bool:
    """Run the merge in a thread of its own, its exception (if any) put in `failed`; waits for
    it, and once a signal set `merge.stop`, for `STOP_GRACE` seconds more at most. True when it
    is still running then (stuck in a delta-rs call)."""

    def work() -> None:
        try:
            merge.run()
        except BaseException as exc:  # handed to the caller's thread, which classifies it
            failed.append(exc)

    # A daemon: a thread left running must not keep the process alive.
    thread = threading.Thread(target=work, name="merge", daemon=True)
    thread.start()
    deadline = None
    while thread.is_alive():
        if merge.stop.is_set():
            deadline = deadline or time.monotonic() + STOP_GRACE
            if time.monotonic() >= deadline:
                return True
        thread.join(0.05)  # short waits: the deadline is looked at between them
    return False


def _left(merge: _Merge) -> dict[str, object]:
    """What a failed or interrupted merge leaves behind, for its log line."""
    if merge.deleting:
        state = "partly deleted; every row is in main; run the merge again to finish"
    else:
        state = "intact; run the merge again to finish (batches already committed are skipped)"
    return {"staging": merge.staging_uri, "staging_state": state, "batches": merge.summary.batches}


def _report(summary: MergeSummary) -> None:
    figures = {
        "total_inserted": summary.total_inserted,
        "total_skipped": summary.total_skipped,
        "total_staging_rows": summary.total_staging_rows,
        "skipped_in_main": summary.skipped_in_main,
        "skipped_duplicates": summary.skipped_duplicates,
        "batches": summary.batches,
        "main_files_read": summary.main_files_read,
        "skip_records": summary.skip_records,
        "skip_records_added": summary.skip_records_added,
    }
    if summary.outcome == "merged":
        log.info("merge complete", extra=figures)
        print(
            f"merge complete: total_inserted={summary.total_inserted} "
            f"total_skipped={summary.total_skipped} "
            f"(already in main {summary.skipped_in_main}, duplicates within staging "
            f"{summary.skipped_duplicates}) total_staging_rows={summary.total_staging_rows} "
            f"skip_records={summary.skip_records} (added to main {summary.skip_records_added}); "
            f"staging {summary.staging} deleted",
            flush=True,
        )
    elif summary.outcome in ("missing staging", "empty staging"):
        log.info("nothing to merge", extra={"reason": summary.outcome, "staging": summary.staging})
        print(f"nothing to merge: {summary.outcome} ({summary.staging})", flush=True)
    elif summary.outcome in ("failed", "interrupted"):
        log.info("merge stopped", extra={"outcome": summary.outcome, **figures})

"""What a backfill run did, per log and in total, and the exit code that follows.

Pure: plain values in, plain values out. The job (`run.py`) fills a `Summary` as it goes and
logs it; `certlake backfill --summary-json FILE` also writes `Summary.to_json()`.

Exit code: 0 only when every missing range was fetched and every fetched entry written; any range
left — given up, interrupted, not attempted, or belonging to a log that cannot be read — or any
entry fetched but not written makes it 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from certlake.backfill.gaps import SkippedLog, log_label, skipped_lines
from certlake.cli.exits import EXIT_FAILED, EXIT_OK
from certlake.ct.errors import FetchError
from certlake.ranges import Range, ranges_text, union_ranges
from certlake.texttable import text_table


@dataclass(frozen=True, slots=True)
class Unfetched:
    """Indices `[start, end]` of a log that were not fetched, and why."""

    start: int
    end: int
    reason: str

    @property
    def count(self) -> int:
        return self.end - self.start + 1


@dataclass(slots=True)
class LogOutcome:
    """One planned log: how much was missing, how much arrived, what is left."""

    url: str
    name: str | None
    missing: int  # entries the plan asked for
    ranges: int  # work items the plan made of them
    fetched: int = 0  # entries received: messages and unparseable ones
    unparseable: int = 0  # of which recorded as undecodable (never holes again)
    # rows handed to the writer: what was written of the log once the writer landed everything
    written: int = 0
    ranges_done: int = 0  # work items finished, fully or not
    retries: dict[str, int] = field(default_factory=dict)  # failed reads by HTTP status
    unfetched: list[Unfetched] = field(default_factory=list)
    unwritten: list[Range] = field(default_factory=list)  # fetched, then not written
    # What the log is doing now, for the progress display: fetching, waiting on a 429 for N s,
    # retrying after a 503 ...
    status: str = "queued"
    verified: int = 0  # entries proven to be in a signed head of the log
    head_source: str | None = None  # which head they were checked against (None: not checked)
    unverified: list[Unfetched] = field(default_factory=list)  # fetched, and not proven
    evidence: int = 0  # ranges that did not verify (the log's proofs did not hold)
    # Entries of a work item found already written when it started again on another worker of a
    # cluster (commits of a worker that was lost mid-item): not fetched twice, nor verified again.
    resumed: int = 0

    @property
    def label(self) -> str:
        return log_label(self.url, self.name)

    @property
    def complete(self) -> bool:
        return not self.unfetched and not self.unwritten and not self.unverified

    def add_unverified(self, start: int, end: int, reason: str, evidence: bool = False) -> None:
        self.unverified.append(Unfetched(start, end, reason))
        self.evidence += evidence

    @property
    def unfetched_count(self) -> int:
        return sum(u.count for u in self.unfetched)

    @property
    def unwritten_count(self) -> int:
        return sum(end - start + 1 for start, end in self.unwritten)

    def add_unfetched(self, start: int, end: int, reason: str) -> None:
        if start <= end:
            self.unfetched.append(Unfetched(start, end, reason))

    def count_retry(self, status: int | None) -> None:
        key = "none" if status is None else str(status)
        self.retries[key] = self.retries.get(key, 0) + 1

    def retrying(self, error: FetchError, attempts_left: int) -> None:
        self.status = retry_status(error, attempts_left)

    def absorb(self, part: LogOutcome, ranges: int) -> None:
        """Add what `ranges` work items, run elsewhere (a cluster worker), did for this log."""
        self.fetched += part.fetched
        self.unparseable += part.unparseable
        self.written += part.written
        self.verified += part.verified
        self.evidence += part.evidence
        self.resumed += part.resumed
        self.ranges_done += ranges
        for status, count in part.retries.items():
            self.retries[status] = self.retries.get(status, 0) + count
        self.unfetched.extend(part.unfetched)
        self.unwritten.extend(part.unwritten)
        self.unverified.extend(part.unverified)
        if part.head_source is not None:
            self.head_source = part.head_source

    def left(self) -> list[Range]:
        """The unfetched indices as coalesced ranges (what a rerun will find missing)."""
        return union_ranges((u.start, u.end) for u in self.unfetched)


FETCHING: Final = "fetching"


def retry_status(error: FetchError, attempts_left: int) -> str:
    """How a log's last failed read reads on the progress display."""
    if attempts_left <= 0:
        return f"gave up: {error}"
    if error.status in (429, 503) and error.retry_after is not None:
        what = f"waiting {error.retry_after:.0f} s on a {error.status}"
    elif error.status is not None:
        what = f"retrying after a {error.status}"
    else:
        what = f"retrying after {error}"
    return f"{what} ({attempts_left} attempts left)"


@dataclass(slots=True)
class WorkerTally:
    items: int = 0
    records_written: int = 0


@dataclass(slots=True)
class Summary:
    mode: str  # "catch-up" / "historical"
    from_index: int | None
    target: str  # the table written to
    staging: bool
    logs: list[LogOutcome] = field(default_factory=list)
    skipped: list[SkippedLog] = field(default_factory=list)
    records_written: int = 0
    write_error: str | None = None
    interrupted: bool = False
    elapsed: float = 0.0
    error: str | None = None  # why the job could not run at all
    error_code: int = EXIT_FAILED
    # On a cluster: per worker address, the work items it finished and the rows it wrote.
    workers: dict[str, WorkerTally] = field(default_factory=dict)

    @property
    def completed(self) -> list[LogOutcome]:
        return [o for o in self.logs if o.complete]

    @property
    def failed(self) -> list[LogOutcome]:
        return [o for o in self.logs if not o.complete]

    @property
    def fetched(self) -> int:
        return sum(o.fetched for o in self.logs)

    @property
    def unwritten(self) -> int:
        """Entries fetched but not written (the writer failed, or the stop cut it short)."""
        return sum(o.unwritten_count for o in self.logs)

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return self.error_code
        ok = not self.failed and not self.unwritten and self.write_error is None
        return EXIT_OK if ok and not self.interrupted else EXIT_FAILED

    def to_json(self) -> dict[str, object]:
        return {
            "exit_code": self.exit_code,
            "mode": self.mode,
            "from": self.from_index,
            "target": self.target,
            "staging": self.staging,
            "records_written": self.records_written,
            "entries_fetched": self.fetched,
            "unparseable_recorded": sum(o.unparseable for o in self.logs),
            "entries_missing": sum(o.missing for o in self.logs),
            "entries_unfetched": sum(o.unfetched_count for o in self.logs),
            "entries_unwritten": self.unwritten,
            "write_error": self.write_error,
            "error": self.error,
            "logs_completed": [o.url for o in self.completed],
            "logs_failed": [o.url for o in self.failed],
            "interrupted": self.interrupted,
            "elapsed_secs": round(self.elapsed, 3),
            "logs": [_log_json(o) for o in self.logs],
            "skipped_logs": [
                {"url": s.url, "name": s.name, "reason": s.reason} for s in self.skipped
            ],
            "workers": {
                address: {"items": t.items, "records_written": t.records_written}
                for address, t in sorted(self.workers.items())
            },
        }


def _log_json(o: LogOutcome) -> dict[str, object]:
    return {
        "url": o.url,
        "name": o.name,
        "complete": o.complete,
        "missing": o.missing,
        "fetched": o.fetched,
        "unparseable": o.unparseable,
        "retries": dict(sorted(o.retries.items())),
        "unfetched": [
            {"start": u.start, "end": u.end, "count": u.count, "reason": u.reason}
            for u in sorted(o.unfetched, key=lambda u: u.start)
        ],
        "unwritten": [
            {"start": start, "end": end, "count": end - start + 1} for start, end in o.unwritten
        ],
        "resumed": o.resumed,
        "verified": o.verified,
        "verified_against": o.head_source,
        "unverified": [
            {"start": u.start, "end": u.end, "count": u.count, "reason": u.reason}
            for u in sorted(o.unverified, key=lambda u: u.start)
        ],
    }


def reasons_text(o: LogOutcome) -> str:
    """The distinct reasons a log's ranges were left, in index order."""
    ordered = sorted(o.unfetched, key=lambda u: u.start)
    return "; ".join(dict.fromkeys(u.reason for u in ordered))


# Unfetched ranges shown per log in the terminal table (the JSON summary lists all of them).
_SHOWN_RANGES: Final = 3


def format_summary(summary: Summary) -> str:
    """The end-of-job summary for a person at a terminal: a row per log (as `certlake gaps`
    prints its plan), totals, what was left and why, the elapsed time and the exit code."""
    target = f"{summary.target}{' (staging)' if summary.staging else ''}"
    mode = (
        summary.mode if summary.from_index is None else f"{summary.mode} from {summary.from_index}"
    )
    lines = [f"Backfill summary ({mode}, into {target})"]
    if summary.logs:
        # A log's rows handed to the writer were all written unless some of its entries were
        # left unwritten; how many of its rows those were is not known.
        header = ("LOG", "MISSING", "FETCHED", "WRITTEN", "UNPARSEABLE", "UNFETCHED", "LEFT")
        rows = [
            (
                o.label,
                str(o.missing),
                str(o.fetched),
                "?" if o.unwritten else str(o.written),
                str(o.unparseable),
                str(o.unfetched_count),
                f"{ranges_text(o.left(), _SHOWN_RANGES)}: {reasons_text(o)}"
                if o.unfetched
                else "-",
            )
            for o in summary.logs
        ]
        total = (
            "total",
            str(sum(o.missing for o in summary.logs)),
            str(summary.fetched),
            str(summary.records_written),
            str(sum(o.unparseable for o in summary.logs)),
            str(sum(o.unfetched_count for o in summary.logs)),
            "",
        )
        lines.extend(text_table(header, [*rows, total], left=(0, 6)))
    elif summary.error is None:
        lines.append("no log had anything to fetch")
    lines.extend(skipped_lines(summary.skipped))
    lines.extend(_verification_lines(summary))
    if summary.unwritten:
        lines.append(
            f"not written: {summary.unwritten} fetched entries ({summary.write_error}); "
            "the next run fetches them again"
        )
    if summary.interrupted:
        lines.append("interrupted: the next run continues where this one stopped")
    if summary.error is not None:
        lines.append(f"error: {summary.error}")
    lines.append(
        f"{len(summary.completed)} logs complete, {len(summary.failed)} with entries left, "
        f"{summary.elapsed:.1f} s; exit code {summary.exit_code}"
    )
    return "\n".join(lines) + "\n"


def _verification_lines(summary: Summary) -> list[str]:
    """Per log checked: what its entries were checked against and what did not verify."""
    lines = []
    for o in summary.logs:
        if o.head_source is None and not o.unverified:
            continue
        against = f" against {o.head_source}" if o.head_source is not None else ""
        lines.append(f"verified {o.label}: {o.verified} entries{against}")
        for u in sorted(o.unverified, key=lambda u: u.start)[:_SHOWN_RANGES]:
            lines.append(f"  NOT verified [{u.start}, {u.end}]: {u.reason}")
        if len(o.unverified) > _SHOWN_RANGES:
            lines.append(f"  … and {len(o.unverified) - _SHOWN_RANGES} more ranges not verified")
    return lines

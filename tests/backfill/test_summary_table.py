"""The backfill summary as a person at a terminal reads it (`summary.format_summary`), for what a
real run does not easily produce: a writer that failed, a job that could not run."""

from __future__ import annotations

from certlake.backfill.summary import LogOutcome, Summary, format_summary


def _summary() -> Summary:
    return Summary(mode="catch-up", from_index=None, target="/t", staging=True)


def test_per_log_written_is_unknown_when_the_writer_did_not_land_everything() -> None:
    s = _summary()
    a = LogOutcome("https://a", "A", missing=10, ranges=1, fetched=10, written=10)
    a.unwritten = [(4, 9)]
    s.logs.append(a)
    s.logs.append(LogOutcome("https://b", "B", missing=2, ranges=1, fetched=2, written=2))
    s.records_written, s.write_error = 6, "OSError: disk full"
    text = format_summary(s)
    assert text.startswith("Backfill summary (catch-up, into /t (staging))\n")
    assert text.splitlines()[2].split() == ["A", "(https://a)", "10", "10", "?", "0", "0", "-"]
    assert text.splitlines()[3].split() == ["B", "(https://b)", "2", "2", "2", "0", "0", "-"]
    assert text.splitlines()[4].split() == ["total", "12", "12", "6", "0", "0"]
    assert "not written: 6 fetched entries (OSError: disk full)" in text
    assert text.endswith("1 logs complete, 1 with entries left, 0.0 s; exit code 1\n")


def test_a_job_that_could_not_run_says_why() -> None:
    s = _summary()
    s.error, s.error_code = "--logs 'x' matches no log", 2
    assert format_summary(s).splitlines()[1:] == [
        "error: --logs 'x' matches no log",
        "0 logs complete, 0 with entries left, 0.0 s; exit code 2",
    ]


def test_what_was_verified_and_against_which_head() -> None:
    s = _summary()
    a = LogOutcome("https://a", "A", missing=30, ranges=2, fetched=30, written=30, verified=20)
    a.head_source = "a fresh head from the log (1100)"
    a.add_unverified(40, 49, "entries [40, 50) as downloaded are not in the tree", evidence=True)
    b = LogOutcome("https://b", "B", missing=5, ranges=1, fetched=5, written=5, verified=5)
    b.head_source = "the stored verified head (900)"
    s.logs += [a, b]
    lines = format_summary(s).splitlines()
    at = lines.index("verified A (https://a): 20 entries against a fresh head from the log (1100)")
    assert lines[at + 1] == (
        "  NOT verified [40, 49]: entries [40, 50) as downloaded are not in the tree"
    )
    assert lines[at + 2] == (
        "verified B (https://b): 5 entries against the stored verified head (900)"
    )
    # A range that is not proven leaves its log incomplete: exit code 1.
    assert lines[-1].endswith("1 logs complete, 1 with entries left, 0.0 s; exit code 1")
    assert a.evidence == 1 and not a.complete and b.complete

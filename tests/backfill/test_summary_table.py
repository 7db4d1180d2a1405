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

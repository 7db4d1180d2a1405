"""`certlake query`, `certlake maintain` and `certlake index rebuild`, run as the real console
script on real archives."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from certlake.lake import domains
from certlake.lake.table import ArchiveTable
from certlake.query.spec import DomainFilter, Query
from query.archive_rows import Row, append, rows_table

CERTLAKE = str(Path(sys.executable).with_name("certlake"))
MAXRSS = str(Path(__file__).resolve().parents[1] / "support" / "maxrss.py")
LOGS = ("https://one.example/ct/", "https://two.example/ct/")


def certlake(
    tmp_path: Path, *args: str, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, CERTLAKE, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def small_archive(tmp_path: Path) -> str:
    uri = str(tmp_path / "archive")
    rows = [
        Row(LOGS[i % 2], i // 2, f"2026-11-{10 + i % 5:02d}", (f"h{i}.Example.com", f"x{i}.org"))
        for i in range(40)
    ]
    append(uri, rows[:25], "first")
    append(uri, rows[25:], "second")
    return uri


def naive(uri: str, query: Query) -> list[tuple[int, str]]:
    rows = DeltaTable(uri).to_pyarrow_table().to_pylist()
    return sorted(
        (r["cert_index"], r["source_url"])
        for r in rows
        if query.matches(r["all_domains"], r["issuer_aggregated"], r["seen_date"])
    )


@pytest.mark.parametrize("output_format", ["jsonl", "csv", "parquet"])
def test_query_prints_every_match_in_each_format(tmp_path: Path, output_format: str) -> None:
    uri = small_archive(tmp_path)
    out = tmp_path / f"out.{output_format}"
    args = ["--table", uri, "--domain", "*.example.com", "--from", "2026-11-12"]
    done = certlake(tmp_path, "query", *args, "--format", output_format, "-o", str(out))
    assert done.returncode == 0, done.stderr
    if output_format == "jsonl":
        got = [json.loads(line) for line in out.read_text().splitlines()]
    elif output_format == "csv":
        got = list(csv.DictReader(io.StringIO(out.read_text())))
        for r in got:
            r["cert_index"] = int(r["cert_index"])
            r["all_domains"] = r["all_domains"].split(" ")
    else:
        got = pq.read_table(out).to_pylist()
    want = naive(uri, Query(DomainFilter.parse("*.example.com"), date_from="2026-11-12"))
    assert sorted((r["cert_index"], r["source_url"]) for r in got) == want
    assert len(want) == 24 and f"{len(want)} certificates" in done.stderr
    assert all(r["all_domains"][0].startswith("h") for r in got)
    assert set(got[0]) >= {"sha256", "issuer", "subject", "seen", "source_url"}


def test_query_to_standard_output_and_its_errors(tmp_path: Path) -> None:
    uri = small_archive(tmp_path)
    done = certlake(tmp_path, "query", "--table", uri, "--domain", "h3.example.com")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert json.loads(line)["all_domains"] == ["h3.Example.com", "x3.org"]
    bad = certlake(tmp_path, "query", "--table", uri, "--from", "2026-11-31")
    assert bad.returncode == 2 and "invalid 'from' date" in bad.stderr
    nothing = certlake(tmp_path, "query", "--table", uri)
    assert nothing.returncode == 2 and "at least one filter" in nothing.stderr
    missing = certlake(tmp_path, "query", "--table", str(tmp_path / "none"), "--domain", "x.com")
    assert missing.returncode == 1 and "no archive table" in missing.stderr


def _rss_of_export(tmp_path: Path, rows: int) -> float:
    """Peak RSS (MiB) of `certlake query` exporting `rows` rows, all matches."""
    uri = str(tmp_path / f"big{rows}")
    step = 50_000
    # One block of rows, shifted along cert_index for each commit: building the archive costs
    # its writes only.
    block = rows_table(
        [
            Row(LOGS[i % 2], i, "2026-11-20", (f"host{i}.example.com", f"www.host{i}.example.com"))
            for i in range(step)
        ]
    )
    table = ArchiveTable.open_or_create(uri, compression_level=1)
    for start in range(0, rows, step):
        shifted = block.set_column(
            block.schema.get_field_index("cert_index"),
            "cert_index",
            pc.add(block.column("cert_index"), start),
        )
        table.append(shifted, versions={u: start + step for u in LOGS}, commit_id=f"c{start}")
    domains.catch_up(uri, None, build=True)
    rss = tmp_path / f"rss{rows}"
    out = tmp_path / f"out{rows}.jsonl"
    args = ["query", "--table", uri, "--domain", "*.example.com", "-o", str(out)]
    done = certlake(tmp_path, *args, prefix=(sys.executable, MAXRSS, str(rss)))
    assert done.returncode == 0, done.stderr
    with out.open() as f:
        assert sum(1 for _ in f) == rows
    return float(rss.read_text())


def test_an_export_three_times_larger_takes_about_the_same_memory(tmp_path: Path) -> None:
    # Both past the candidates an export holds (`STREAM_CANDIDATES`): one pass over the archive.
    small = _rss_of_export(tmp_path, 250_000)
    large = _rss_of_export(tmp_path, 750_000)
    # 500,000 more rows are 250 MB more JSON and some 1.3 GB as Python rows; measured here:
    # ~270 and ~330 MiB (what grows is Arrow's read-ahead and allocator, up to their bounds).
    assert large < small * 1.35 and large < 450, (small, large)


def test_maintain_compacts_indexes_and_keeps_every_row(tmp_path: Path) -> None:
    uri = str(tmp_path / "archive")
    for n in range(6):
        append(
            uri,
            [Row(LOGS[0], 10 * n + i, "2026-11-20", (f"m{n}-{i}.ex.com",)) for i in range(10)],
            f"c{n}",
        )
    before = sorted(
        DeltaTable(uri).to_pyarrow_table(columns=["cert_index"])["cert_index"].to_pylist()
    )
    done = certlake(tmp_path, "maintain", "--table", uri, "--cluster")
    assert done.returncode == 0, done.stderr
    assert "archive files 6 -> 1" in done.stderr and "(clustered)" in done.stderr
    table = DeltaTable(uri)
    assert len(table.file_uris()) == 1
    after = sorted(table.to_pyarrow_table(columns=["cert_index"])["cert_index"].to_pylist())
    assert after == before == list(range(60))
    index = domains.open_index(uri, None)
    assert domains.covered_version(index) == table.version() - 1  # the lease's hand-back after it
    again = certlake(tmp_path, "index", "rebuild", "--table", uri)
    assert again.returncode == 0, again.stderr
    assert "domain index of 60 rows (60 names)" in again.stderr
    assert certlake(tmp_path, "maintain", "--table", str(tmp_path / "none")).returncode == 1


@pytest.mark.skipif(shutil.which("jq") is None, reason="the README's example pipes through jq")
def test_the_readmes_worked_example_prints_the_new_names(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("**Worked example", 1)[1].split("```\n", 2)[1]
    assert "certlake query --domain '*.example.com' --from 2026-11-01" in example
    archive = str(tmp_path / "data" / "certstream")  # the default delta_sink.table_path
    append(
        archive,
        [
            Row(LOGS[0], 1, "2026-10-20", ("old.example.com", "a.example.com")),
            Row(LOGS[0], 2, "2026-11-02", ("a.example.com", "other.org")),
            Row(LOGS[1], 1, "2026-11-05", ("new1.example.com", "www.new1.example.com")),
            Row(LOGS[1], 2, "2026-12-01", ("new2.Example.com", "x.example.org")),
        ],
    )
    env = {**os.environ, "PATH": f"{Path(CERTLAKE).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", example],
        cwd=tmp_path,
        env={k: v for k, v in env.items() if not k.startswith("CERTSTREAM_")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["new1.example.com", "new2.example.com", "www.new1.example.com"]

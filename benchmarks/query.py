"""Archive search through the domain index (`certlake.query.search.search_page`) against the
full scan certstream-server-rust's fork runs for the same request, on a large archive.

    .venv/bin/python benchmarks/query.py [--rows N] [--dir DIR] [--queries Q] [--scan-runs R]
    .venv/bin/python benchmarks/query.py --scale      # 5 M and 20 M rows, side by side
    .venv/bin/python benchmarks/query.py --quick      # 200 k rows, 10 searches: does it work
    .venv/bin/python benchmarks/query.py --profile    # where a suffix search spends its time

The archive (built once, cached in DIR/<rows>, default /tmp/certlake-bench-query; rebuilt when
the parameters change; see `benchmarks/_archive.py` for the details): a pool of 4,096 real
certificates the built-in test log issues, each turned into an archive row by `build_record` and
`messages_to_batch`; the archive's rows reuse the pool's DER, chain and certificate fields (Arrow
`take`) while the columns a search reads are new for every row, made with Arrow vectorized
operations: 8 logs of different sizes in 256-row chunks (`source_url`, `cert_index`, links), 30
days of `seen`/`seen_date`, 1–3 names under 65,536 synthetic registered domains, unique hashes
and serials. 1,000 rows at random positions are named `h{n}.example.com` (every fifth also
`www.h{n}.example.com`), 5 rows `exact-target.example.org`. Written with `ArchiveTable.append`
in commits of 1 M rows (an eighth of the archive below 8 M rows; zstd 3, the sink's default; a
file per day a commit spans: 38 files at 5 M rows, 100 at 20 M), then the
domain index is built (`certlake.lake.domains.catch_up(uri, None, build=True)`) and clustered by
key (`optimize.z_order(["key"])` + `vacuum(retention_hours=0)`: the step `certlake maintain` is
to do). The build runs in a child process at nice 5.

Measured, each side in a fresh process (so building does not count; peak RSS = its `VmHWM`):
- index: `search_page` for `*.example.com` (one page, `limit=1000`: the 1,000 rows; the server's
  `max_results_per_page` must be >= 1,000 for a client to ask this) and for the exact name,
  alternating, `--queries` times each after one first call of each (reported apart; fewer, at
  least 5, when the first calls say they would take more than `--budget` seconds: the machine
  is shared), wall time end to end (as in the server, every call brings the archive and the
  index its process keeps open up to date, `search.TABLES`; the first call opens them); then,
  apart from the timing, what each phase costs and how many files it reads;
- scan: what the fork runs (`deltalake.QueryBuilder`, DataFusion, over the archive): for the
  suffix, a CTE `UNNEST(all_domains) AS d` + `SELECT DISTINCT ... WHERE d ILIKE '%.example.com'
  ORDER BY cert_index LIMIT 1001`; for the exact name, `array_has(all_domains, ...)`; the fork's
  columns plus `source_url` (to compare keys), `--scan-runs` times each, median kept.
Both sides' (cert_index, source_url) sets must equal the generator's targets.

Goals (issue): suffix p50 <= 300 ms, exact p50 <= 100 ms, >= 50x faster than the scan, peak RSS
of the query process <= 500 MB.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final

import deltalake
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, QueryBuilder

from certlake.lake.domains import KEY, index_uri
from certlake.lake.files import TableFiles
from certlake.query import search
from certlake.query.search import Page, search_page
from certlake.query.spec import DomainFilter, PageRequest, Query
from certlake.texttable import text_table

sys.path.insert(0, str(Path(__file__).parent))
import _archive
from _archive import EXACT_NAME, EXACT_ROWS, EXAMPLE_ROWS, SUFFIX_QUERY

VERSION: Final = 2  # of the archive and its index (2: covering index): a change rebuilds the cache
INDEX_LAYOUT: Final = 2  # of the index's clustering: a change clusters a cached index again
SEED: Final = 17
PAGE_LIMIT: Final = 1_000
SCALE_ROWS: Final = (5_000_000, 20_000_000)
QUICK_ROWS: Final = 200_000
QUICK_QUERIES: Final = 10
GOALS: Final = {"suffix_p50_ms": 300.0, "exact_p50_ms": 100.0, "speedup": 50.0, "rss_mb": 500.0}
# The fork's result columns (`src/query.rs`), plus `source_url` to compare keys.
FORK_COLUMNS: Final = (
    "cert_index, source_url, fingerprint, sha256, serial_number, subject_aggregated,"
    " issuer_aggregated, not_before, not_after, all_domains, source_name, seen, is_ca"
)
Key = tuple[int, str]


# --- helpers ----------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak RSS (`VmHWM`; not `ru_maxrss`, which Linux carries across fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def percentile(values: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1), linear between the closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def requests() -> dict[str, PageRequest]:
    return {
        "suffix": PageRequest(Query(domain=DomainFilter.parse(SUFFIX_QUERY)), PAGE_LIMIT, None),
        "exact": PageRequest(Query(domain=DomainFilter.parse(EXACT_NAME)), PAGE_LIMIT, None),
    }


def page_keys(page: Page) -> list[Key]:
    return [(r["cert_index"], r["source_url"]) for r in page.rows]


def run_child(
    mode: str, args: argparse.Namespace, rows: int, extra: Sequence[str] = ()
) -> dict[str, Any]:
    """Run `mode` in a fresh process; its result is the last line it prints (JSON)."""
    command = [sys.executable, __file__, "--child", mode, "--dir", str(args.dir)]
    command += ["--rows", str(rows), "--queries", str(args.queries)]
    command += ["--scan-runs", str(args.scan_runs), "--budget", str(args.budget), *extra]
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def table_dir(base: Path, rows: int) -> Path:
    return base / str(rows)


def archive_uri(base: Path, rows: int) -> str:
    return str((table_dir(base, rows) / "archive").absolute())


# --- building (child) -------------------------------------------------------------------------


def child_cluster(args: argparse.Namespace) -> dict[str, Any]:
    os.nice(5)
    return _archive.cluster(archive_uri(args.dir, args.rows), _archive.progress)


def child_build(args: argparse.Namespace) -> dict[str, Any]:
    os.nice(5)  # the machine is shared: the queries measured later run at normal priority
    uri = archive_uri(args.dir, args.rows)
    started = time.perf_counter()
    built = _archive.build(uri, args.rows, SEED, _archive.progress)
    built["seconds"] = time.perf_counter() - started
    built["peak_rss_mb"] = peak_rss_mb()
    return built


def ensure_built(args: argparse.Namespace, rows: int) -> dict[str, Any]:
    """The archive of `rows` rows, built now or found in the cache; its build record."""
    where = table_dir(args.dir, rows)
    params = {"rows": rows, "seed": SEED, "version": VERSION, "index_layout": INDEX_LAYOUT}
    marker, record = where / "params.json", where / "build.json"
    cached = json.loads(marker.read_text()) if marker.exists() and record.exists() else None
    if cached is not None and {**cached, "index_layout": INDEX_LAYOUT} == params:
        built: dict[str, Any] = json.loads(record.read_text())
        if cached.get("index_layout") != INDEX_LAYOUT:  # the rows are right: cluster again
            print(f"archive of {rows:,} rows: clustering its index again", file=sys.stderr)
            built.update(run_child("cluster", args, rows))
            built["seconds"] = (
                sum(built[k] for k in ("pool_seconds", "write_seconds", "index_seconds"))
                + built["cluster_seconds"]
            )
            record.write_text(json.dumps(built))
            marker.write_text(json.dumps(params))
        built["cached"] = True
        print(f"archive of {rows:,} rows: cached in {where}", file=sys.stderr)
        return built
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    print(f"building an archive of {rows:,} rows in {where}", file=sys.stderr, flush=True)
    built = run_child("build", args, rows)
    built["built_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    record.write_text(json.dumps(built))
    marker.write_text(json.dumps(params))
    built["cached"] = False
    return built


# --- the index side (child) -------------------------------------------------------------------


def timed(fn: Callable[[], Page]) -> tuple[float, Page]:
    started = time.perf_counter()
    page = fn()
    return (time.perf_counter() - started) * 1000, page


def child_query(args: argparse.Namespace) -> dict[str, Any]:
    uri = archive_uri(args.dir, args.rows)
    result: dict[str, Any] = {"load_before": os.getloadavg()}
    asked = requests()
    first: dict[str, float] = {}
    pages: dict[str, Page] = {}
    for name, request in asked.items():
        first[name], pages[name] = timed(partial(search_page, uri, None, request))
    # The machine is shared: searches far slower than the goals are timed fewer times.
    slowest = max(first.values()) / 1000
    count = max(5, min(args.queries, int(args.budget / max(slowest, 1e-3) / len(asked))))
    result["queries"] = count
    times: dict[str, list[float]] = {name: [] for name in asked}
    for _ in range(count):
        for name, request in asked.items():
            ms, page = timed(partial(search_page, uri, None, request))
            times[name].append(ms)
            if page_keys(page) != page_keys(pages[name]):
                raise SystemExit(f"{name}: a later page differs from the first")
    result["rss_after_timing_mb"] = peak_rss_mb()
    for name in asked:
        result[name] = {
            "rows": len(pages[name].rows),
            "has_more": pages[name].has_more,
            "first_ms": first[name],
            "p50_ms": percentile(times[name], 0.5),
            "p99_ms": percentile(times[name], 0.99),
            "min_ms": min(times[name]),
            "max_ms": max(times[name]),
            "keys": page_keys(pages[name]),
            "phases": phases(uri, asked[name], runs=min(10, max(3, count // 5))),
        }
    result["load_after"] = os.getloadavg()
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def phases(uri: str, request: PageRequest, runs: int) -> dict[str, Any]:
    """What `search_page`'s steps cost (means over `runs`, ms) and how many files they read,
    timed by wrapping, for these calls only, the module's `_page` (all but taking the snapshot:
    bringing the archive, its file statistics and the index up to date) and `_rows` (read the
    candidates' rows from the archive); the rest is the candidates (the index scan). Apart from
    the timed searches: the wrappers cost a little."""
    spent: dict[str, list[float]] = {"total": [], "snapshot": [], "rows": []}
    reads: dict[str, list[int]] = {"rows": [], "other": []}
    inside_rows = False
    opened: list[Any] = []
    paged: list[float] = []
    # Looked up by name in the module's namespace, as `search_page` finds them.
    names = vars(search)
    real_page, real_rows, real_scan = names["_page"], names["_rows"], TableFiles.scan

    def page(snapshot: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        opened.append(snapshot)
        try:
            return real_page(snapshot, *args, **kwargs)
        finally:
            paged.append((time.perf_counter() - started) * 1000)

    def rows(*args: Any, **kwargs: Any) -> Any:
        nonlocal inside_rows
        started = time.perf_counter()
        inside_rows = True
        try:
            return real_rows(*args, **kwargs)
        finally:
            inside_rows = False
            spent["rows"].append((time.perf_counter() - started) * 1000)

    def scan(self: TableFiles, paths: Sequence[str], *args: Any, **kwargs: Any) -> Any:
        reads["rows" if inside_rows else "other"].append(len(paths))
        return real_scan(self, paths, *args, **kwargs)

    names["_page"], names["_rows"] = page, rows
    TableFiles.scan = scan  # type: ignore[method-assign]
    try:
        for _ in range(runs):
            reads["rows"].clear()
            reads["other"].clear()
            started = time.perf_counter()
            search_page(uri, None, request)
            total = (time.perf_counter() - started) * 1000
            spent["total"].append(total)
            spent["snapshot"].append(total - paged[-1])
    finally:
        names["_page"], names["_rows"] = real_page, real_rows
        TableFiles.scan = real_scan  # type: ignore[method-assign]
    mean = {k: statistics.mean(v) for k, v in spent.items()}
    last = opened[-1]
    index = last.index
    in_range = index_files = None
    key_range = request.query.domain.key_range() if request.query.domain else None
    if index is not None and key_range is not None:
        actions = pa.table(index.get_add_actions(flatten=True))
        index_files = actions.num_rows
        low, high = key_range
        if f"min.{KEY}" in actions.column_names:
            hit = pc.and_(
                pc.less(actions.column(f"min.{KEY}"), high),
                pc.greater_equal(actions.column(f"max.{KEY}"), low),
            )
            in_range = int(pc.sum(pc.fill_null(hit, True).cast(pa.int64())).as_py() or 0)
    return {
        "runs": runs,
        "total_ms": mean["total"],
        "snapshot_ms": mean["snapshot"],
        "rows_ms": mean["rows"],
        "candidates_ms": mean["total"] - mean["snapshot"] - mean["rows"],
        "archive_files": last.files.stats.num_rows,
        "files_read_for_rows": sum(reads["rows"]),
        "files_scanned_uncovered": sum(reads["other"]),
        "uncovered_files": None if last.uncovered is None else len(last.uncovered),
        "index_files": index_files,
        "index_files_in_range": in_range,
    }


def child_profile(args: argparse.Namespace) -> None:
    uri = archive_uri(args.dir, args.rows)
    request = requests()["suffix"]
    search_page(uri, None, request)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.queries):
        search_page(uri, None, request)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
    stats.print_stats(40)
    print(f"cProfile of {args.queries} suffix searches (cumulative):", file=sys.stderr)
    print(out.getvalue(), file=sys.stderr)
    print(json.dumps({"queries": args.queries}))


# --- the scan side (child) --------------------------------------------------------------------


def fork_sql(name: str) -> str:
    if name == "suffix":
        suffix = SUFFIX_QUERY[1:]
        return (
            f"WITH unnested AS (SELECT {FORK_COLUMNS}, seen_date, UNNEST(all_domains) AS d"
            f" FROM certs) SELECT DISTINCT {FORK_COLUMNS} FROM unnested WHERE 1=1"
            f" AND d ILIKE '%{suffix}' ORDER BY cert_index LIMIT {PAGE_LIMIT + 1}"
        )
    return (
        f"SELECT {FORK_COLUMNS} FROM certs WHERE 1=1 AND array_has(all_domains, '{EXACT_NAME}')"
        f" ORDER BY cert_index LIMIT {PAGE_LIMIT + 1}"
    )


def child_scan(args: argparse.Namespace) -> dict[str, Any]:
    uri = archive_uri(args.dir, args.rows)
    result: dict[str, Any] = {"load_before": os.getloadavg()}
    for name in ("suffix", "exact"):
        seconds: list[float] = []
        keys: list[Key] = []
        for _ in range(args.scan_runs):
            started = time.perf_counter()
            reader = QueryBuilder().register("certs", DeltaTable(uri)).execute(fork_sql(name))
            table = pa.RecordBatchReader.from_stream(reader).read_all()
            seconds.append(time.perf_counter() - started)
            keys = list(
                zip(
                    table.column("cert_index").to_pylist(),
                    table.column("source_url").to_pylist(),
                    strict=True,
                )
            )
        result[name] = {
            "runs_s": seconds,
            "median_s": statistics.median(seconds),
            "rows": len(keys),
            "keys": keys,
        }
    result["load_after"] = os.getloadavg()
    result["peak_rss_mb"] = peak_rss_mb()
    return result


# --- one archive, measured --------------------------------------------------------------------


def measure(args: argparse.Namespace, rows: int, built: dict[str, Any]) -> dict[str, Any]:
    where = table_dir(args.dir, rows)
    uri = archive_uri(args.dir, rows)
    archive, index = DeltaTable(uri), DeltaTable(index_uri(uri))
    archive_actions = pa.table(archive.get_add_actions(flatten=True))
    index_actions = pa.table(index.get_add_actions(flatten=True))
    print(f"  {rows:,} rows: index searches (fresh process)", file=sys.stderr, flush=True)
    found = run_child("query", args, rows)
    print(f"  {rows:,} rows: the fork's scan (fresh process)", file=sys.stderr, flush=True)
    scanned = run_child("scan", args, rows)
    targets = {q: {(int(i), str(u)) for i, u in keys} for q, keys in built["targets"].items()}
    agree = {}
    for name, query in (("suffix", SUFFIX_QUERY), ("exact", EXACT_NAME)):
        index_keys = {(int(i), str(u)) for i, u in found[name].pop("keys")}
        scan_keys = {(int(i), str(u)) for i, u in scanned[name].pop("keys")}
        agree[name] = {
            "index_equals_scan": index_keys == scan_keys,
            "index_equals_targets": index_keys == targets[query],
            "targets": len(targets[query]),
        }
    return {
        "rows": int(pc.sum(archive_actions.column("num_records")).as_py()),
        "archive_files": archive_actions.num_rows,
        "archive_bytes": du(where / "archive") - du(where / "archive" / "_certlake_domains"),
        "archive_version": archive.version(),
        "index_rows": int(pc.sum(index_actions.column("num_records")).as_py()),
        "index_files": index_actions.num_rows,
        "index_bytes": du(where / "archive" / "_certlake_domains"),
        "build": {k: v for k, v in built.items() if k != "targets"},
        "index": found,
        "scan": scanned,
        "agree": agree,
        "speedup": {
            name: scanned[name]["median_s"] * 1000 / found[name]["p50_ms"]
            for name in ("suffix", "exact")
        },
    }


# --- report -----------------------------------------------------------------------------------


def goals(result: dict[str, Any]) -> dict[str, bool]:
    index = result["index"]
    return {
        "suffix p50 <= 300 ms": index["suffix"]["p50_ms"] <= GOALS["suffix_p50_ms"],
        "exact p50 <= 100 ms": index["exact"]["p50_ms"] <= GOALS["exact_p50_ms"],
        ">= 50x the scan (suffix)": result["speedup"]["suffix"] >= GOALS["speedup"],
        ">= 50x the scan (exact)": result["speedup"]["exact"] >= GOALS["speedup"],
        "query RSS <= 500 MB": index["peak_rss_mb"] <= GOALS["rss_mb"],
        "results agree": all(
            a["index_equals_scan"] and a["index_equals_targets"] for a in result["agree"].values()
        ),
    }


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB" if n < 1e10 else f"{n / 1e9:,.1f} GB"


def _ratio(x: float) -> str:
    return f"{x:,.0f}x" if x >= 10 else f"{x:.2f}x"


def column(r: dict[str, Any]) -> list[tuple[str, str]]:
    """One archive's figures: (label, value) lines."""
    b = r["build"]
    built = (
        f"{b['seconds']:,.0f} s{' (cached)' if b['cached'] else ''}: pool"
        f" {b['pool_seconds']:,.0f}, write {b['write_seconds']:,.0f}, index"
        f" {b['index_seconds']:,.0f}, cluster {b['cluster_seconds']:,.0f}"
    )
    lines = [
        ("archive rows", f"{r['rows']:,}"),
        ("archive files / commits", f"{r['archive_files']} / {b['commits']}"),
        ("archive on disk", _mb(r["archive_bytes"])),
        ("index rows / files", f"{r['index_rows']:,} / {r['index_files']}"),
        ("index on disk", _mb(r["index_bytes"])),
        ("build", built),
        ("build peak RSS", f"{b['peak_rss_mb']:,.0f} MB"),
    ]
    for name, label in (("suffix", SUFFIX_QUERY), ("exact", EXACT_NAME)):
        found, scanned, p = r["index"][name], r["scan"][name], r["index"][name]["phases"]
        agree = r["agree"][name]
        runs = ", ".join(f"{s:.2f}" for s in scanned["runs_s"])
        ok = agree["index_equals_scan"] and agree["index_equals_targets"]
        lines += [
            ("", ""),
            (f"{label}: rows found", f"{found['rows']:,} (has_more {found['has_more']})"),
            ("  index p50 / p99", f"{found['p50_ms']:,.1f} / {found['p99_ms']:,.1f} ms"),
            ("  index min / max", f"{found['min_ms']:,.1f} / {found['max_ms']:,.1f} ms"),
            ("  index first call", f"{found['first_ms']:,.1f} ms"),
            ("  scan median (runs)", f"{scanned['median_s']:,.2f} s ({runs})"),
            ("  scan / index p50", _ratio(r["speedup"][name])),
            (f"  phases (mean of {p['runs']}): total", f"{p['total_ms']:,.1f} ms"),
            ("  phase: take the snapshot", f"{p['snapshot_ms']:,.1f} ms"),
            ("  phase: candidates (index)", f"{p['candidates_ms']:,.1f} ms"),
            ("  phase: rows (archive)", f"{p['rows_ms']:,.1f} ms"),
            (
                "  archive files read for rows",
                f"{p['files_read_for_rows']} of {p['archive_files']}",
            ),
            ("  index files in key range", f"{p['index_files_in_range']} of {p['index_files']}"),
            ("  index = scan = targets", "yes" if ok else f"NO {agree}"),
        ]
    lines += [
        ("", ""),
        ("timed searches of each kind", f"{r['index']['queries']}"),
        ("query process peak RSS", f"{r['index']['peak_rss_mb']:,.0f} MB"),
        ("scan process peak RSS", f"{r['scan']['peak_rss_mb']:,.0f} MB"),
        (
            "load avg (1 min) index: start / end",
            f"{r['index']['load_before'][0]:.2f} / {r['index']['load_after'][0]:.2f}",
        ),
        (
            "load avg (1 min) scan: start / end",
            f"{r['scan']['load_before'][0]:.2f} / {r['scan']['load_after'][0]:.2f}",
        ),
    ]
    return lines


def report_lines(results: Sequence[dict[str, Any]]) -> list[str]:
    """The figures, one column per archive, then the goals."""
    columns = [column(r) for r in results]
    labels = [label for label, _ in columns[0]]
    table = [[label, *(c[i][1] for c in columns)] for i, label in enumerate(labels)]
    header = ["", *(f"{r['rows']:,} rows" for r in results)]
    lines = text_table(header, table, left=range(len(header)))
    lines += ["", "goals (" + ", ".join(f"{r['rows']:,} rows" for r in results) + "):"]
    for goal in goals(results[0]):
        marks = ["met" if goals(r)[goal] else "NOT MET" for r in results]
        lines.append(f"  {goal}: " + ", ".join(marks))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/certlake-bench-query"))
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--queries", type=int, default=50, help="timed searches of each kind")
    parser.add_argument(
        "--budget",
        type=float,
        default=600,
        help="seconds the timed searches may take: fewer than --queries (at least 5) if slow",
    )
    parser.add_argument("--scan-runs", type=int, default=3, help="runs of the scan; median kept")
    parser.add_argument("--scale", action="store_true", help="5 M and 20 M rows, side by side")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows")
    parser.add_argument("--profile", action="store_true", help="cProfile of suffix searches")
    parser.add_argument(
        "--child", choices=["build", "cluster", "query", "scan", "profile"], help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        if args.child == "profile":
            child_profile(args)
            return
        children = {"build": child_build, "cluster": child_cluster}
        run = {**children, "query": child_query, "scan": child_scan}[args.child]
        print(json.dumps(run(args)))
        return
    if args.quick:
        args.rows, args.queries = QUICK_ROWS, min(args.queries, QUICK_QUERIES)
    sizes = SCALE_ROWS if args.scale else (args.rows,)
    if args.profile:
        ensure_built(args, args.rows)
        run_child("profile", args, args.rows)
        return
    started = dt.datetime.now(dt.UTC)
    print(
        f"certlake query benchmark, {started:%Y-%m-%d %H:%M} UTC, load average {load()}",
        file=sys.stderr,
    )
    # Build first, so that no build runs between the measurements.
    built = {rows: ensure_built(args, rows) for rows in sizes}
    results = [measure(args, rows, built[rows]) for rows in sizes]
    header = (
        f"benchmarks/query.py, {started:%a %Y-%m-%d %H:%M}–{dt.datetime.now(dt.UTC):%H:%M} UTC;"
        f" {platform.node()}, nproc {os.cpu_count()}, {platform.processor() or platform.machine()};"
        f" Python {platform.python_version()}, deltalake {deltalake.__version__},"
        f" pyarrow {pa.__version__}; load average now {load()}"
    )
    lines = [
        header,
        f"page: one search_page of limit {PAGE_LIMIT} (all {EXAMPLE_ROWS:,} suffix"
        f" matches in one page; {EXACT_ROWS} exact); up to {args.queries} timed searches of each,"
        f" scan median of {args.scan_runs}",
        "",
        *report_lines(results),
    ]
    print("\n".join(lines))
    record = args.dir / f"results-{started:%Y%m%dT%H%M%S}.json"
    record.write_text(json.dumps({"header": header, "results": results}, indent=1))
    print(f"\nfigures: {record}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Benchmark of retention: pruning a long history on PostgreSQL while a runner fires a job
every second on the same database. PostgreSQL only.

    python bench/lifecycle_bench.py                  # 100,000 runs, 10,000,000 run items
    python bench/lifecycle_bench.py --scale 0.01     # a quick run
    BENCH_PG_URL=postgresql://postgres@127.0.0.1:5432/postgres python bench/lifecycle_bench.py

It builds, with set-based SQL (generate_series), a database of its own (`bench_lifecycle`,
created when missing; the ops_ tables through the real migrations, so the indexes are a
deployment's): 100,000 runs of the four jobs created between 800 and 400 days ago (every
status a runner writes), 100 items each, old sent and dead emails, old alerts with two
deliveries each. Everything is past `keep_failed_days`, so a prune deletes all of it but
each job's newest `keep_min_runs` runs. The build's time is printed. A prune empties the
history, so each run of this script builds it again (`--keep` leaves the result behind).

Then:
1. a real `storeflow-ops run` process fires expiry-checker every second on that database
   (its own hourly prune is marked done, so the only pruner is ours);
2. after a quiet window (the baseline fire latency), `history prune --dry-run` and the
   prune itself run as a child process (`jobs.retention`, the same code the runner and
   the CLI call), while the runner keeps firing;
3. reported: prune throughput (rows/s), the runner's fire latency (claim time
   ops_runs.started_at - scheduled_for, as bench/runner_bench.py measures it) before and
   during the prune (median, p99, max), the largest rows per statement, peak RSS of the
   pruning process, and whether the dry run counted what the prune deleted.

Targets: p99 fire latency during the prune < 1 s; <= 5,000 rows per statement; pruning
process peak RSS < 250 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from results_file import append  # bench/, the script's own folder

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE = "bench_lifecycle"
JOBS = ("expiry-checker", "payment-reminders", "analytics-aggregate", "cleanup")
EXE = str(Path(sys.executable).with_name("storeflow-ops"))
TARGET_P99_S = 1.0
TARGET_RSS_MB = 250.0
BATCH_LIMIT = 5_000


@dataclass(frozen=True)
class Sizes:
    runs: int
    items: int
    emails: int
    alerts: int

    @classmethod
    def at(cls, scale: float) -> Sizes:
        def n(x: int) -> int:
            return max(400, round(x * scale))

        return cls(runs=n(100_000), items=n(10_000_000), emails=n(100_000), alerts=n(2_000))


def build_sql(s: Sizes) -> list[tuple[str, str]]:
    """(label, statement) pairs; run i belongs to job i % 4 and was created 800 days ago +
    i * (400 days / runs). 1 in 50 failed, 1 in 40 partial, 1 in 100 skipped, the rest
    succeeded. Items are spread evenly over the runs."""
    jobs = "(ARRAY['" + "','".join(JOBS) + "'])"
    span = 400 * 86400
    k = "(i / 4)"
    status = f"""CASE WHEN {k} % 100 = 3 THEN 'skipped' WHEN {k} % 50 = 1 THEN 'failed'
                      WHEN {k} % 40 = 2 THEN 'partial' ELSE 'succeeded' END"""
    per_run = s.items // s.runs
    return [
        ("ops_runs", f"""
            INSERT INTO ops_runs (id, job_id, trigger, scheduled_for, attempt, status,
                started_by, runner_id, reference_time, params, created_at, started_at,
                finished_at, total, processed, errors, summary, error)
            SELECT i, {jobs}[1 + i % 4], 'schedule', t, 1, st, 'runner@bench', 'bench-old',
                t, '{{}}', t, t, t + interval '30 seconds', {per_run}, {per_run},
                CASE WHEN st = 'partial' THEN 1 ELSE 0 END, '{{}}',
                CASE WHEN st = 'failed' THEN 'bench failure' ELSE NULL END
            FROM (SELECT i, {status} AS st,
                         now() - interval '800 days' + make_interval(
                             secs => i * {span}::float8 / {s.runs}) AS t
                  FROM generate_series(1, {s.runs}) i) r"""),
        ("ops_run_items", f"""
            INSERT INTO ops_run_items (run_id, seq, tenant_id, tenant_name, action, status,
                detail, error)
            SELECT 1 + (i / {per_run}), i % {per_run}, md5('t' || (i % 10000))::uuid::text,
                'Store ' || (i % 10000), 'checked',
                CASE WHEN i % 97 = 0 THEN 'error' ELSE 'ok' END, '{{"from": "active"}}',
                CASE WHEN i % 97 = 0 THEN 'bench error' ELSE NULL END
            FROM generate_series(0, {s.items - 1}) i"""),
        ("ops_email_outbox", f"""
            INSERT INTO ops_email_outbox (idempotency_key, tenant_id, kind, recipient, subject,
                body_text, body_html, status, attempts, created_at, sent_at)
            SELECT 'bench-' || i, md5('t' || (i % 10000))::uuid::text, 'expiry',
                'owner' || i || '@example.com', 'Subject', 'text', '<p>html</p>',
                CASE WHEN i % 500 = 0 THEN 'dead' ELSE 'sent' END, 1,
                now() - interval '400 days', now() - interval '400 days'
            FROM generate_series(1, {s.emails}) i"""),
        ("ops_alerts", f"""
            INSERT INTO ops_alerts (id, key, event, job_id, run_id, at, payload)
            SELECT i, 'bench:' || i, 'job_failing', {jobs}[1 + i % 4], i,
                now() - interval '400 days', '{{}}'
            FROM generate_series(1, {s.alerts}) i"""),
        ("ops_alert_deliveries", f"""
            INSERT INTO ops_alert_deliveries (alert_id, kind, target, target_label, status,
                attempts)
            SELECT i, 'webhook', 'https://hooks.example.com/' || k, 'https://hooks.example.com',
                'sent', 1
            FROM generate_series(1, {s.alerts}) i, generate_series(1, 2) k"""),
    ]


def db_url(base: str, database: str) -> str:
    head, _, _ = base.rpartition("/")
    return f"{head}/{database}"


def build(base: str, sizes: Sizes, log: Callable[[str], None]) -> float:
    """Create (or empty) the bench database and fill it; returns the seconds it took."""
    from jobs.db import make_engine, platform
    from jobs.migrate import upgrade

    started = time.perf_counter()
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    url = db_url(base, DATABASE)
    engine = make_engine(url)
    platform.create_all(engine)  # empty platform tables: expiry-checker finds no tenant
    upgrade(engine)
    engine.dispose()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '256MB'")
        for label, stmt in build_sql(sizes):
            t0 = time.perf_counter()
            rows = conn.execute(stmt).rowcount
            log(f"  {label:<22} {rows:>12,} rows  {time.perf_counter() - t0:6.1f} s")
        conn.execute("SELECT setval(pg_get_serial_sequence('ops_runs', 'id'), "
                     "(SELECT max(id) FROM ops_runs))")
        conn.execute("SELECT setval(pg_get_serial_sequence('ops_alerts', 'id'), "
                     "(SELECT max(id) FROM ops_alerts))")
        t0 = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        log(f"  {'VACUUM ANALYZE':<22} {'':>12}       {time.perf_counter() - t0:6.1f} s")
    return time.perf_counter() - started


# --- the pruning child ---------------------------------------------------------------------


def prune_child(url: str, dry_run: bool) -> int:
    """One prune (or dry run) at the real time, as `history prune` does; prints JSON."""
    from jobs import retention
    from jobs.db import make_engine
    from jobs.settings import Overrides, load_settings

    engine = make_engine(url)
    settings = load_settings(Overrides(database_url=url), env={})
    started = time.perf_counter()
    now = datetime.now(UTC)
    if dry_run:
        result = retention.count(engine, settings, now)
    else:
        result = retention.prune(engine, settings, now, actor="bench@lifecycle",
                                 holder=f"bench:{os.getpid()}")
    elapsed = time.perf_counter() - started
    print(json.dumps({**result.to_json(), "seconds": elapsed,
                      "statements": result.statements,
                      "largest_statement": result.largest_statement,
                      "skipped": result.skipped,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    return 0


def run_child(url: str, dry_run: bool) -> dict[str, Any]:
    """The child's result, with its own peak RSS (its ru_maxrss, in MB)."""
    args = [sys.executable, __file__, "--prune-child", url] + (["--dry-run"] if dry_run else [])
    proc = subprocess.run(args, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


# --- the runner ------------------------------------------------------------------------------


def start_runner(url: str, tmp: Path) -> subprocess.Popen[bytes]:
    config = tmp / "schedules.toml"
    lines = ["[jobs.expiry-checker]", 'schedule = "* * * * * *"', ""]
    for other in JOBS[1:]:
        lines += [f"[jobs.{other}]", "enabled = false", ""]
    config.write_text("\n".join(lines))
    # The runner's own hourly prune is marked done: the prune measured here is the only one.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO ops_leases (name, done_at) VALUES ('prune', now()) "
                     "ON CONFLICT (name) DO UPDATE SET done_at = now()")
    log = (tmp / "runner.log").open("wb")
    return subprocess.Popen([EXE, "--config", str(config), "run"], stdout=subprocess.DEVNULL,
                            stderr=log, env={**os.environ, "DATABASE_URL": url})


def latencies(url: str, since: datetime, until: datetime) -> list[float]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT EXTRACT(EPOCH FROM started_at - scheduled_for) FROM ops_runs "
            "WHERE trigger = 'schedule' AND scheduled_for >= %s AND scheduled_for < %s "
            "AND started_at IS NOT NULL ORDER BY scheduled_for", (since, until)).fetchall()
    return [float(r[0]) for r in rows]


def missed_or_skipped(url: str, since: datetime, until: datetime) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM ops_runs WHERE trigger = 'schedule' "
            "AND scheduled_for >= %s AND scheduled_for < %s GROUP BY status",
            (since, until)).fetchall()
    return {str(s): int(n) for s, n in rows}


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    # At least keep_min_runs (50) slots: by the dry run, expiry-checker's newest 50 runs are
    # the runner's, so the dry run and the prune keep the same ones.
    ap.add_argument("--baseline-seconds", type=float, default=60.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results-lifecycle.txt"))
    ap.add_argument("--keep", action="store_true", help="keep the bench database")
    ap.add_argument("--prune-child", metavar="URL", help=argparse.SUPPRESS)
    ap.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.prune_child:
        return prune_child(args.prune_child, args.dry_run)

    base = os.environ.get("BENCH_PG_URL", DEFAULT_URL)
    sizes = Sizes.at(args.scale)
    lines: list[str] = []

    def log(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    load = os.getloadavg()
    log(f"lifecycle_bench: prune {sizes.runs:,} runs and {sizes.items:,} run items on "
        f"PostgreSQL while a runner fires expiry-checker every second")
    log(f"date {datetime.now(UTC):%Y-%m-%d %H:%MZ}, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores, load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    log("")
    log(f"build (database {DATABASE}, generate_series):")
    build_s = build(base, sizes, log)
    log(f"  build took {build_s:.1f} s")
    url = db_url(base, DATABASE)

    with tempfile.TemporaryDirectory() as tmp:
        runner = start_runner(url, Path(tmp))
        try:
            time.sleep(5)  # start-up: migrations checked, first slots
            base_from = datetime.now(UTC)
            time.sleep(args.baseline_seconds)
            base_to = datetime.now(UTC)
            dry = run_child(url, dry_run=True)
            log("")
            log(f"dry run: {dry['deleted']} in {dry['seconds']:.1f} s")
            load = os.getloadavg()
            prune_from = datetime.now(UTC)
            real = run_child(url, dry_run=False)
            prune_to = datetime.now(UTC)
            time.sleep(2)  # the last slot of the window is written
        finally:
            runner.terminate()
            runner.wait(60)
            runner_log = (Path(tmp) / "runner.log").read_text()
    if real.get("skipped"):
        log(f"prune skipped: {real['skipped']}")
        return 1
    rows = sum(real["deleted"].values())
    rss_mb = float(real["peak_rss_mb"])
    secs = real["seconds"]
    before = latencies(url, base_from, base_to)
    during = latencies(url, prune_from, prune_to)
    statuses = missed_or_skipped(url, prune_from, prune_to)
    log(f"prune:   {real['deleted']} in {secs:.1f} s "
        f"(load average as it started {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")
    log("")
    log(f"{'':<34}{'before the prune':>20}{'during the prune':>20}")

    def row(label: str, a: str, b: str) -> None:
        log(f"{label:<34}{a:>20}{b:>20}")

    def ms(x: float) -> str:
        return f"{x * 1000:.1f} ms"

    row("slots fired", str(len(before)), str(len(during)))
    row("fire latency median", ms(statistics.median(before)), ms(statistics.median(during)))
    row("fire latency p99", ms(p(before, 99)), ms(p(during, 99)))
    row("fire latency max", ms(max(before)), ms(max(during)))
    log(f"slot statuses during the prune: {statuses}")
    log("")
    log(f"prune throughput                  {rows / secs:,.0f} rows/s "
        f"({rows:,} rows in {secs:.1f} s)")
    log(f"DELETE statements                 {real['statements']:,}")
    log(f"largest rows per statement        {real['largest_statement']:,}")
    log(f"pruning process peak RSS          {rss_mb:.1f} MB")
    same = dry["deleted"] == real["deleted"]
    log(f"dry run counted what was deleted  {'yes' if same else 'NO'}")
    log("")
    ok_p99 = bool(during) and p(during, 99) < TARGET_P99_S
    ok_batch = real["largest_statement"] <= BATCH_LIMIT
    ok_rss = rss_mb < TARGET_RSS_MB
    log(f"targets: p99 fire latency during the prune < 1 s: {'PASS' if ok_p99 else 'FAIL'}; "
        f"<= {BATCH_LIMIT:,} rows per statement: {'PASS' if ok_batch else 'FAIL'}; "
        f"peak RSS < {TARGET_RSS_MB:.0f} MB: {'PASS' if ok_rss else 'FAIL'}")
    if "Traceback" in runner_log:
        log("runner log has a traceback:\n" + runner_log[-2000:])
    if not args.keep:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    append(Path(args.out), "\n".join(lines))
    return 0 if (ok_p99 and ok_batch and ok_rss and same) else 1


if __name__ == "__main__":
    raise SystemExit(main())

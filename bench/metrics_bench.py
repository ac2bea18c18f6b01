"""Benchmark of a /metrics scrape on a long history (issue 12). PostgreSQL only.

    python bench/metrics_bench.py                 # full scale: 100,000 runs, 10,000,000 run items
    python bench/metrics_bench.py --scale 0.05    # a quick run
    BENCH_PG_URL=postgresql://... python bench/metrics_bench.py --scrapes 500

It builds its own schema: the ops_ tables through the real migrations (so the indexes are
the ones a deployment has), then, with set-based SQL (generate_series), two years of
history for the four jobs: runs of every final status (and one running), their run items,
an outbox of sent and pending emails, alert events with deliveries, and the runs counter
seeded from the history. A live runner is registered with its schedules, as a real one is.

It then times scrapes two ways, after a few warm-up scrapes:
- `collect`: jobs.metrics.exposition() in this process (the database reads and the text);
- `http`: GET /metrics on the metrics face of `run --metrics` (console.http,
  metrics_only), served on an event loop in a thread, over a real socket.
and prints median and p99 of each against the targets (50 ms median, 200 ms p99).
The schema is dropped at the end (unless --keep).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from jobs.db import make_engine  # noqa: E402
from jobs.metrics import exposition, registry  # noqa: E402
from jobs.migrate import upgrade  # noqa: E402
from jobs.presence import Presence  # noqa: E402
from jobs.runner_schedules import record_schedules  # noqa: E402
from jobs.settings import Overrides, load_settings  # noqa: E402
from jobs.timeutil import utc_now  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
TARGET_MEDIAN_MS = 50.0
TARGET_P99_MS = 200.0
JOBS = ("expiry-checker", "payment-reminders", "analytics-aggregate", "cleanup")


@dataclass(frozen=True)
class Sizes:
    runs: int
    items: int
    emails: int
    alerts: int

    @classmethod
    def at(cls, scale: float) -> Sizes:
        def n(x: int) -> int:
            return max(4, round(x * scale))

        return cls(runs=n(100_000), items=n(10_000_000), emails=n(200_000), alerts=n(2_000))


def build_sql(s: Sizes) -> list[tuple[str, str]]:
    """(label, statement) pairs that fill the ops_ tables; rows come from generate_series.

    Run i belongs to job i % 4 and ends two years ago + i * (2 years / runs): the newest run
    of each job is recent. Statuses: 1 in 50 failed, 1 in 40 partial, 1 in 200 interrupted,
    1 in 100 skipped, 1 in 300 missed, the rest succeeded (skipped and missed never started).
    Items are spread evenly over the runs that ran."""
    jobs = "(ARRAY['" + "','".join(JOBS) + "'])"
    span = 2 * 365 * 86400
    k = "(i / 4)"  # the run's number within its job: every job gets every status
    status = f"""CASE WHEN {k} % 300 = 7 THEN 'missed' WHEN {k} % 100 = 3 THEN 'skipped'
                      WHEN {k} % 50 = 1 THEN 'failed' WHEN {k} % 40 = 2 THEN 'partial'
                      WHEN {k} % 200 = 5 THEN 'interrupted' ELSE 'succeeded' END"""
    return [
        ("ops_runs", f"""
            INSERT INTO ops_runs (id, job_id, trigger, scheduled_for, attempt, status,
                started_by, runner_id, reference_time, params, created_at, started_at,
                finished_at, total, processed, errors, summary, error)
            SELECT i, {jobs}[1 + i % 4], 'schedule', t, 1, st, 'runner@bench', 'bench-old',
                t, '{{}}', t,
                CASE WHEN st IN ('skipped', 'missed') THEN NULL ELSE t END,
                t + make_interval(secs => CASE WHEN st IN ('skipped', 'missed') THEN 0
                                               ELSE 1 + i % 120 END),
                100, 100, CASE WHEN st = 'partial' THEN 1 ELSE 0 END, '{{}}',
                CASE WHEN st = 'failed' THEN 'bench failure' ELSE NULL END
            FROM (SELECT i, {status} AS st,
                         now() - make_interval(secs => {span}) + make_interval(
                             secs => i * {span}::float8 / {s.runs}) AS t
                  FROM generate_series(1, {s.runs}) i) r"""),
        ("ops_runs running", f"""
            INSERT INTO ops_runs (id, job_id, trigger, scheduled_for, attempt, status,
                started_by, runner_id, reference_time, params, created_at, started_at)
            VALUES ({s.runs + 1}, 'cleanup', 'schedule', now(), 1, 'running',
                    'runner@bench', 'bench-old', now(), '{{}}', now(), now())"""),
        ("ops_run_items", f"""
            INSERT INTO ops_run_items (run_id, seq, tenant_id, tenant_name, action, status,
                detail, error)
            SELECT 1 + (i % {s.runs}), i / {s.runs}, md5('t' || (i % 10000))::uuid::text,
                'Store ' || (i % 10000), 'checked',
                CASE WHEN i % 97 = 0 THEN 'error' ELSE 'ok' END, NULL,
                CASE WHEN i % 97 = 0 THEN 'bench error' ELSE NULL END
            FROM generate_series(0, {s.items - 1}) i"""),
        ("ops_email_outbox", f"""
            INSERT INTO ops_email_outbox (idempotency_key, tenant_id, kind, recipient, subject,
                body_text, body_html, status, attempts, created_at, sent_at)
            SELECT 'bench-' || i, md5('t' || (i % 10000))::uuid::text, 'expiry',
                'owner' || i || '@example.com', 'Subject', 'text', '<p>html</p>',
                CASE WHEN i % 500 = 0 THEN 'dead' WHEN i % 100 = 1 THEN 'pending'
                     ELSE 'sent' END, 1, now(), now()
            FROM generate_series(1, {s.emails}) i"""),
        ("ops_alerts", f"""
            INSERT INTO ops_alerts (id, key, event, job_id, run_id, at, payload)
            SELECT i, 'bench:' || i, CASE WHEN i % 2 = 0 THEN 'job_failing'
                                          ELSE 'job_recovered' END,
                {jobs}[1 + i % 4], i, now(), '{{}}'
            FROM generate_series(1, {s.alerts}) i"""),
        ("ops_alert_deliveries", f"""
            INSERT INTO ops_alert_deliveries (alert_id, kind, target, target_label, status,
                attempts)
            SELECT i, 'webhook', 'https://hooks.example.com/' || k, 'https://hooks.example.com',
                CASE WHEN i % 50 = 0 THEN 'dead' ELSE 'sent' END, 1
            FROM generate_series(1, {s.alerts}) i, generate_series(1, 2) k"""),
        ("ops_run_counts", """
            INSERT INTO ops_run_counts (job_id, status, count)
            SELECT job_id, status, COUNT(*) FROM ops_runs WHERE status <> 'running'
            GROUP BY job_id, status"""),
        ("ops_job_state", f"""
            INSERT INTO ops_job_state (job_id, paused, alert_state, active_run_id)
            SELECT j, j = 'analytics-aggregate', CASE WHEN j = 'expiry-checker'
                                                    THEN 'failing' ELSE 'ok' END,
                CASE WHEN j = 'cleanup' THEN {s.runs + 1} END
            FROM unnest({jobs}) j"""),
        ("ops_runners (stopped)", """
            INSERT INTO ops_runners (id, kind, host, pid, started_at, heartbeat_at, stopped_at)
            SELECT 'bench-old-' || i, 'runner', 'bench', i, now() - interval '1 day',
                now() - interval '1 day', now() - interval '1 day'
            FROM generate_series(1, 1000) i"""),
    ]


def schema_url(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


def build(url: str, schema: str, sizes: Sizes, log: Callable[[str], None]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    engine = make_engine(schema_url(url, schema))
    upgrade(engine)  # the real migrations, and so the real indexes
    engine.dispose()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute("SET maintenance_work_mem = '256MB'")
        for label, stmt in build_sql(sizes):
            started = time.perf_counter()
            rows = conn.execute(stmt).rowcount  # type: ignore[arg-type]
            log(f"  {label:<22} {rows:>12,} rows  {time.perf_counter() - started:6.1f} s")
        conn.execute("SELECT setval(pg_get_serial_sequence('ops_runs', 'id'), "
                     "(SELECT max(id) FROM ops_runs))")
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        log(f"  {'VACUUM ANALYZE':<22} {'':>12}       {time.perf_counter() - started:6.1f} s")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


@dataclass
class BenchHost:
    engine: Any
    settings: Any
    runner_id: str
    stop: threading.Event


def time_collect(reg: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        exposition(reg)
        out.append((time.perf_counter() - started) * 1000)
    return out


def time_http(host: BenchHost, n: int) -> list[float]:
    from console.http import start_http

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(
        start_http(host, "127.0.0.1", 0, metrics_only=True), loop).result(60)
    url = server.url + "/metrics"
    try:
        for _ in range(3):
            urllib.request.urlopen(url, timeout=30).read()
        out = []
        for _ in range(n):
            started = time.perf_counter()
            with urllib.request.urlopen(url, timeout=30) as resp:
                resp.read()
                assert resp.status == 200
            out.append((time.perf_counter() - started) * 1000)
        return out
    finally:
        asyncio.run_coroutine_threadsafe(server.cleanup(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="1.0 = 100,000 runs and 10,000,000 run items (default)")
    parser.add_argument("--scrapes", type=int, default=300, help="timed scrapes of each kind")
    parser.add_argument("--url", default=os.environ.get("BENCH_PG_URL", DEFAULT_URL))
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    args = parser.parse_args(argv)

    sizes = Sizes.at(args.scale)
    schema = f"bench_metrics_{uuid.uuid4().hex[:8]}"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"metrics_bench  scale {args.scale}  scrapes {args.scrapes}  schema {schema}  {stamp}")
    print(f"data: {sizes.runs:,} runs, {sizes.items:,} run items, {sizes.emails:,} emails, "
          f"{sizes.alerts:,} alerts with 2 deliveries each, 1,000 stopped runners")
    started = time.perf_counter()
    try:
        build(args.url, schema, sizes, print)
        print(f"built in {time.perf_counter() - started:.0f} s")
        db = schema_url(args.url, schema)
        engine = make_engine(db)
        settings = load_settings(Overrides(database_url=db), env={}, cwd=ROOT / "bench")
        with Presence(engine, "runner", clock=utc_now, interval=5.0) as presence:
            record_schedules(engine, presence.id, settings)
            reg = registry(engine, settings)
            text = exposition(reg).decode()
            samples = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
            print(f"one scrape: {len(text):,} bytes, {samples} samples")
            time_collect(reg, 5)  # warm-up: connection pool, plans, caches
            results = {
                "collect": time_collect(reg, args.scrapes),
                "http": time_http(BenchHost(engine, settings, presence.id, threading.Event()),
                                  args.scrapes),
            }
        ok = True
        for kind, values in results.items():
            med, p99 = statistics.median(values), percentile(values, 99)
            good = med < TARGET_MEDIAN_MS and p99 < TARGET_P99_MS
            ok = ok and good
            print(f"  {kind:<8} median {med:7.2f} ms  p99 {p99:7.2f} ms  max {max(values):7.2f} ms"
                  f"  (target < {TARGET_MEDIAN_MS:g} / < {TARGET_P99_MS:g} ms: "
                  f"{'met' if good else 'NOT met'})")
        engine.dispose()
        return 0 if ok else 1
    finally:
        if not args.keep:
            with psycopg.connect(args.url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    sys.exit(main())

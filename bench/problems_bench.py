"""Benchmark of the problems view and the outbox search (issue 14). PostgreSQL only.

    python bench/problems_bench.py                # build once (kept), then measure
    python bench/problems_bench.py --rebuild      # drop the schema and build it again
    python bench/problems_bench.py --scale 0.05   # a quick run in a schema of its own

It builds, in schema `bench_problems` (set-based SQL, generate_series), through the real
migrations (so the indexes are a deployment's):
- 10,000 tenants;
- 30 days of history for the four jobs, 1,000,000 run items in all (2 % of them failed,
  with 25 error texts, some of them naming the tenant), plus failed, interrupted and
  missed runs;
- 1,000,000 emails over a year for those tenants, with real-sized text and HTML bodies,
  and their lines in ops_email_search, as outbox.queue writes them.

Then it times, median of --repeat runs after one warm-up each:
- the problems view's query (jobs.problems.groups) for 24 h, 7 days and 30 days, and
  the lines of the largest group, with the partial index and without it (the baseline:
  dropped for that measure, then built again);
- the outbox search's first page and a page deep into the results (jobs.outbox.search):
  by tenant id, by a part of a tenant's name, by recipient, by a subject word, by status,
  and a text nothing matches (the whole outbox is searched); text searches against the
  same match on the outbox's own columns (the baseline), deep pages against OFFSET.
Results are appended to bench/results-problems.txt.
"""

from __future__ import annotations

import argparse
import os
import platform as host
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from jobs import outbox, problems  # noqa: E402
from jobs.db import make_engine, platform  # noqa: E402
from jobs.migrate import upgrade  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
RESULTS = ROOT / "bench" / "results-problems.txt"
JOBS = ("expiry-checker", "payment-reminders", "analytics-aggregate", "cleanup")
TARGET_PROBLEMS_MS = 1000.0
TARGET_SEARCH_MS = 500.0

HTML = ("<!doctype html><html><body style=\"font-family: sans-serif\"><table width=\"100%\">"
        "<tr><td><h1>StoreFlow</h1><p>Hello {name},</p><p>Your StoreFlow subscription for "
        "<strong>{name}</strong> has expired. Your store stays open during the grace period; "
        "renew before it ends to keep selling without interruption.</p>"
        "<p><a href=\"https://storeflow.example.com/billing\">Renew now</a></p>"
        "<p style=\"color:#777\">You receive this email because you own a StoreFlow store. "
        "Questions? Answer this email and our team will help.</p></td></tr></table>"
        "</body></html>")
TEXT = ("Hello {name},\n\nYour StoreFlow subscription for {name} has expired.\nYour store "
        "stays open during the grace period; renew before it ends to keep selling.\n\n"
        "Renew: https://storeflow.example.com/billing\n\n-- StoreFlow\n")


def build_sql(scale: float, now: datetime) -> list[tuple[str, str]]:
    tenants = max(10, round(10_000 * scale))
    items_per_run = max(10, round(10_000 * scale))
    emails = max(100, round(1_000_000 * scale))
    days = 30
    # Runs: each job daily (cleanup weekly) for 30 days, about 95 runs of ~10,500 items,
    # so 1,000,000 items; and 40 failed, interrupted or missed runs with no items.
    runs_per_job = {"expiry-checker": days, "payment-reminders": days,
                    "analytics-aggregate": days, "cleanup": 5}
    total_runs = sum(runs_per_job.values())
    per_run = round(1_000_000 * scale / total_runs) if scale != 1 else 1_000_000 // total_runs + 1
    per_run = max(items_per_run // 2, per_run)
    selects = []
    for job, n in runs_per_job.items():
        step = 7 if job == "cleanup" else 1
        selects.append(f"SELECT '{job}' AS job, d FROM generate_series(0, {n - 1}) d "
                       f"WHERE d * {step} < {days}")
    union = " UNION ALL ".join(selects)
    at = f"'{now.isoformat()}'::timestamptz"
    name = "'Store ' || lpad(t::text, 5, '0')"
    # 25 error texts; the first names the tenant (one group per tenant, as real invalid
    # addresses do).
    errors = ["'invalid recipient ''owner-' || t || '@example,com'': the part after the "
              "@-sign contains invalid characters'",
              "'tenant has no email address'", "'database error: deadlock detected'",
              "'cache write refused: OOM command not allowed'"]
    errors += [f"'upstream check {k} failed: timeout after 30 s'" for k in range(21)]
    error_case = "CASE (i / 50) % 25 " + " ".join(
        f"WHEN {k} THEN {e}" for k, e in enumerate(errors)) + " END"
    return [
        ("tenants", f"""
            INSERT INTO tenants (id, name, email, status, expire_date, created_at)
            SELECT 't-' || lpad(t::text, 5, '0'), {name}, 'owner-' || t || '@example.com',
                'active', {at} + make_interval(days => t % 60), {at} - interval '2 years'
            FROM generate_series(1, {tenants}) t"""),
        ("ops_runs", f"""
            INSERT INTO ops_runs (job_id, trigger, scheduled_for, attempt, status, started_by,
                reference_time, params, created_at, started_at, finished_at, total,
                processed, errors, summary)
            SELECT job, 'schedule', s, 1, 'partial', 'runner@bench', s, '{{}}', s, s,
                s + interval '40 seconds', {per_run}, {per_run}, 0, '{{}}'
            FROM (SELECT job, date_trunc('day', {at}) - make_interval(
                      days => d * (CASE WHEN job = 'cleanup' THEN 7 ELSE 1 END))
                      + make_interval(hours => array_position(ARRAY['expiry-checker',
                        'analytics-aggregate', 'cleanup', 'payment-reminders'], job) - 1) AS s
                  FROM ({union}) j) r
            ORDER BY s"""),
        ("ops_runs (failed)", f"""
            INSERT INTO ops_runs (job_id, trigger, scheduled_for, attempt, status, started_by,
                reference_time, params, created_at, started_at, finished_at, processed,
                errors, error)
            SELECT (ARRAY{list(JOBS)})[1 + k % 4], 'manual', NULL, 1,
                (ARRAY['failed', 'interrupted', 'missed'])[1 + k % 3], 'ops@bench',
                {at} - make_interval(hours => k * 17), '{{}}',
                {at} - make_interval(hours => k * 17), {at} - make_interval(hours => k * 17),
                {at} - make_interval(hours => k * 17), 0, 0,
                CASE k % 3 WHEN 0 THEN 'database unreachable at postgresql://db/storeflow: '
                                       || 'connection refused'
                           WHEN 1 THEN 'runner stopped heartbeating'
                           ELSE 'no runner was alive within the misfire grace' END
            FROM generate_series(1, 40) k"""),
        ("ops_run_items", f"""
            INSERT INTO ops_run_items (run_id, seq, tenant_id, tenant_name, action, status,
                detail, error)
            SELECT r.id, i, 't-' || lpad(t::text, 5, '0'), {name}, 'checked',
                CASE WHEN i % 50 = 7 THEN 'error' ELSE 'ok' END, NULL,
                CASE WHEN i % 50 = 7 THEN {error_case} END
            FROM ops_runs r, generate_series(0, {per_run - 1}) i,
                 LATERAL (SELECT 1 + (i * 7 + r.id) % {tenants} AS t) tt
            WHERE r.status = 'partial'"""),
        ("ops_runs errors", """
            UPDATE ops_runs r SET errors = e.n FROM (
                SELECT run_id, count(*) n FROM ops_run_items WHERE status = 'error'
                GROUP BY run_id) e WHERE e.run_id = r.id"""),
        ("ops_email_outbox", f"""
            INSERT INTO ops_email_outbox (idempotency_key, tenant_id, kind, recipient, subject,
                body_text, body_html, status, attempts, next_attempt_at, last_error,
                created_at, sent_at)
            SELECT 'subscription_expired:t-' || lpad(t::text, 5, '0') || ':' || i,
                't-' || lpad(t::text, 5, '0'), 'subscription_expired',
                'owner-' || t || '@example.com',
                'Your StoreFlow subscription for ' || {name} || ' has expired',
                replace('{TEXT}', '{{name}}', {name}), replace('{HTML}', '{{name}}', {name}),
                st, CASE WHEN st = 'dead' THEN 8 WHEN st = 'pending' THEN 0 ELSE 1 END, c,
                CASE WHEN st IN ('dead', 'failed') THEN '550 5.1.1 mailbox unknown' END,
                c, CASE WHEN st = 'sent' THEN c + interval '30 seconds' END
            FROM (SELECT i, 1 + (i * 7919) % {tenants} AS t,
                         CASE WHEN i % 200 = 0 THEN 'dead' WHEN i % 100 = 1 THEN 'pending'
                              WHEN i % 100 = 2 THEN 'failed' ELSE 'sent' END AS st,
                         {at} - interval '365 days' + make_interval(
                             secs => i * 365 * 86400.0 / {emails}) AS c
                  FROM generate_series(1::bigint, {emails}) i) e"""),
        # what outbox.queue writes beside each email (and migration 0007_p backfills)
        ("ops_email_search", """
            INSERT INTO ops_email_search (email_id, text)
            SELECT id, lower(recipient || ' ' || subject || ' ' || coalesce(tenant_id, ''))
            FROM ops_email_outbox"""),
    ]


def schema_url(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


def build(url: str, schema: str, scale: float, now: datetime, log: Callable[[str], None]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    engine = make_engine(schema_url(url, schema))
    platform.create_all(engine)
    upgrade(engine)  # the real migrations, and so the real indexes
    engine.dispose()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute("SET maintenance_work_mem = '256MB'")
        for label, stmt in build_sql(scale, now):
            started = time.perf_counter()
            rows = conn.execute(stmt).rowcount  # type: ignore[arg-type]
            log(f"  {label:<22} {rows:>12,} rows  {time.perf_counter() - started:6.1f} s")
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        log(f"  {'VACUUM ANALYZE':<22} {'':>12}       {time.perf_counter() - started:6.1f} s")


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, float, Any]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), min(times), max(times), result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("BENCH_PG_URL", DEFAULT_URL))
    ap.add_argument("--schema", default="bench_problems")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--only", choices=("problems", "outbox"), help="measure one of the two")
    args = ap.parse_args()
    schema = args.schema if args.scale == 1 else f"{args.schema}_{str(args.scale).replace('.', '_')}"
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    with psycopg.connect(args.url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                              (schema,)).fetchone() is not None
        if exists and args.rebuild:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
            exists = False
        if exists:
            now = conn.execute(f'SELECT max(created_at) FROM "{schema}".ops_runs'
                               ).fetchone()[0]  # type: ignore[index]
            now = now.astimezone(UTC) + timedelta(hours=1)
    load = os.getloadavg()
    log(f"problems_bench {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  python "
        f"{host.python_version()}  {os.cpu_count()} cpus  load {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f}  (uptime)")
    log(f"command: python bench/problems_bench.py{'' if args.scale == 1 else f' --scale {args.scale}'}"
        f"  (PostgreSQL, schema {schema}; medians of {args.repeat} runs after a warm-up)")
    if not exists:
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        log("building:")
        build(args.url, schema, args.scale, now, log)
    engine = make_engine(schema_url(args.url, schema))
    with psycopg.connect(schema_url(args.url, schema), autocommit=True) as conn:
        counts = conn.execute("SELECT (SELECT count(*) FROM ops_run_items), "
                              "(SELECT count(*) FROM ops_run_items WHERE status = 'error'), "
                              "(SELECT count(*) FROM ops_runs), "
                              "(SELECT count(*) FROM ops_email_outbox), "
                              "(SELECT count(*) FROM tenants)").fetchone()
    assert counts is not None
    log(f"data: {counts[0]:,} run items ({counts[1]:,} failed) in {counts[2]:,} runs over 30 "
        f"days; {counts[3]:,} emails; {counts[4]:,} tenants")

    def row(label: str, median: float, lo: float, hi: float, note: str = "") -> None:
        log(f"  {label:<44} {median:8.1f} ms (min {lo:.1f}, max {hi:.1f}){note}")

    def problems_measures(tag: str) -> None:
        for window in problems.WINDOWS:
            since, title = now - window, problems.window_label(window)
            med, lo, hi, found = timed(lambda s=since: problems.groups(engine, since=s),
                                       args.repeat)
            n = sum(g.count for g in found)
            target = f"   target < {TARGET_PROBLEMS_MS:.0f} ms" if tag == "with" else ""
            row(f"groups, last {title} ({n:,} problems, {len(found)} groups)", med, lo, hi,
                target)
        since = now - problems.WINDOWS[-1]
        top = problems.groups(engine, since=since)[0]
        med, lo, hi, lines_ = timed(lambda: problems.problems(
            engine, since=since, job_id=top.job_id, error=top.error, limit=500), args.repeat)
        row(f"lines of the largest group, 30 days ({len(lines_)})", med, lo, hi)

    def measure_problems() -> None:
        log("problems view (jobs.problems), with ops_run_items_errors_idx and ops_runs_created_idx")
        problems_measures("with")
        with psycopg.connect(schema_url(args.url, schema), autocommit=True) as conn:
            conn.execute("DROP INDEX ops_run_items_errors_idx")
            conn.execute("DROP INDEX ops_runs_created_idx")
        try:
            log("baseline: the same without those two indexes (the schema before this change)")
            problems_measures("without")
        finally:
            with psycopg.connect(schema_url(args.url, schema), autocommit=True) as conn:
                conn.execute("CREATE INDEX ops_run_items_errors_idx ON ops_run_items (run_id, seq) "
                             "WHERE status = 'error'")
                conn.execute("CREATE INDEX ops_runs_created_idx ON ops_runs (created_at)")
                conn.execute("ANALYZE ops_run_items")

    def measure_outbox() -> None:
        log("outbox search (jobs.outbox.search), first page of 100, newest first")
        tenant = "t-04242" if args.scale == 1 else "t-00042"
        cases: list[tuple[str, dict[str, Any]]] = [
            ("everything", {}),
            (f"tenant id {tenant}", {"tenant_id": tenant}),
            ("a part of a tenant's name ('store 0424')", {"text": "store 0424"}),
            ("recipient 'owner-4242@'", {"text": "owner-4242@"}),
            ("subject word 'expired'", {"text": "expired"}),
            ("status dead", {"status": "dead"}),
            ("status failed + text 'store 01'", {"status": "failed", "text": "store 01"}),
            ("text nothing matches ('zzz-nowhere')", {"text": "zzz-nowhere"}),
        ]
        def on_outbox(needle: str) -> Any:
            from sqlalchemy import func, or_, select

            from jobs.db import ops_email_outbox as o
            from jobs.db import transaction

            q = (select(o).where(or_(func.lower(o.c.recipient).contains(needle),
                                     func.lower(o.c.subject).contains(needle),
                                     func.lower(o.c.tenant_id).contains(needle)))
                 .order_by(o.c.id.desc()).limit(101))
            with transaction(engine) as conn:
                return conn.execute(q).all()

        def scan() -> Any:
            with psycopg.connect(schema_url(args.url, schema)) as conn:
                return conn.execute("SELECT count(*) FROM ops_email_search").fetchone()

        med, lo, hi, _ = timed(scan, args.repeat)
        row("reference: count(*) of ops_email_search (what a full search reads)", med, lo, hi)
        for label, kw in cases:
            med, lo, hi, page = timed(lambda kw=kw: outbox.search(engine, limit=100, **kw),
                                      args.repeat)
            row(f"{label}: {len(page.entries)} shown", med, lo, hi,
                f"   target < {TARGET_SEARCH_MS:.0f} ms")
            if kw.get("text") and not kw.get("status"):
                # The baseline: the same match on the outbox's own columns, as a search
                # without ops_email_search would do it (its rows carry the bodies: ~1 GB).
                med, lo, hi, _ = timed(lambda kw=kw: on_outbox(kw["text"]), args.repeat)
                row("  the same on the outbox's own columns (baseline)", med, lo, hi)
            if label in ("everything", "status dead"):
                # Half-way down the outbox: a key where the pages before it ended, against
                # OFFSET, which reads and drops every row before the page.
                deep = page.entries[0].id - 500_000 if label == "everything" else None
                offset = 500_000 if label == "everything" else 2_500
                if deep is None:
                    ids = [e.id for e in outbox.search(engine, limit=2_500, **kw).entries]
                    deep = ids[-1]
                med, lo, hi, _ = timed(lambda kw=kw, deep=deep: outbox.search(
                    engine, limit=100, before=deep, **kw), args.repeat)
                row(f"  a page {offset:,} emails down, by key", med, lo, hi)
                med, lo, hi, _ = timed(lambda kw=kw, offset=offset: outbox.list_entries(
                    engine, status=kw.get("status"), limit=100, offset=offset), args.repeat)
                row(f"  the same page by OFFSET {offset:,} (the old way)", med, lo, hi)

    if args.only != "outbox":
        measure_problems()
    if args.only != "problems":
        measure_outbox()
    engine.dispose()
    with RESULTS.open("a") as f:
        f.write("\n".join(lines) + "\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

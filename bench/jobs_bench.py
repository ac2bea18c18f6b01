"""Benchmark of analytics-aggregate and cleanup at platform scale, and how their cost grows.
PostgreSQL only.

    python bench/jobs_bench.py                       # 1x: 10,000 tenants, 2M orders, ~5M lines
    python bench/jobs_bench.py --scale 1,2,4         # the growth table: 1x, 2x and 4x
    python bench/jobs_bench.py --scale 0.1 --repeat 1 --only cleanup   # a quick run
    python bench/jobs_bench.py --scale 1,2,4 --skip analytics-loop   # growth, without the loop
    BENCH_PG_URL=postgresql://... python bench/jobs_bench.py --repeat 5

The data of each scale is built once with set-based SQL (generate_series) into its own
schema (`jobs_x1`, `jobs_x2`, ...) of the database `bench_perf` (created when missing) and
kept for the next run (--rebuild builds it again, --drop removes it at the end). Then, in
one run, side by side, the order alternating:
- analytics-aggregate through the real job, as an operator runs it (a whole
  `storeflow-ops trigger` process) and in-process (jobs.runs.execute), against hand-written
  single statements doing the same aggregation and a per-tenant loop (3 queries and one
  cache write per tenant, as the seed's route did; information only); all write the same
  values to the same kind of cache (see VARIANT_NOTES);
- cleanup through the real job, as a whole process and in-process, against the three plain
  DELETEs in one transaction; the two tables it changes are rebuilt from templates,
  vacuumed, analysed and checkpointed before every run of every variant.
Each variant runs in its own process, so its peak RSS (GNU time's %M) is its own;
"s" is the work as timed inside the process, "process s" the whole process from outside.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from launch import LAUNCH  # bench/, the script's own folder: this tree's entry point
from results_file import append

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/bench_perf"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
TIME = "/usr/bin/time"  # GNU time (Debian's package `time`), for each variant's peak RSS

ANALYTICS_NOW = datetime(2026, 11, 28, 1, 0, tzinfo=UTC)  # aggregates 2026-11-27 (UTC)
DAY = date(2026, 11, 27)
CLEANUP_NOW = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)  # the Sunday slot
RETENTION_DAYS = 30
CUTOFF = CLEANUP_NOW - timedelta(days=RETENTION_DAYS)

ANALYTICS_VARIANTS = ("analytics-job-process", "analytics-job", "analytics-sql",
                      "analytics-sql-tuned", "analytics-sql-lateral", "analytics-loop")
CLEANUP_VARIANTS = ("cleanup-job-process", "cleanup-job", "cleanup-unbatched")
# Run as `storeflow-ops trigger JOB --json --now ...`, in a folder without schedules.toml.
PROCESS_VARIANTS = {"analytics-job-process": ("analytics-aggregate", ANALYTICS_NOW),
                    "cleanup-job-process": ("cleanup", CLEANUP_NOW)}
VARIANT_NOTES = {
    "analytics-job-process": "`storeflow-ops trigger analytics-aggregate --json` as an operator "
                             "runs it: interpreter start, imports, settings, the run below, "
                             "the JSON report on stdout",
    "analytics-job": "the real job through jobs.runs.execute: its statement (jobs.analytics."
                     "day_statement, 3 GROUP BY subqueries, planned with jobs.analytics."
                     "plan_for_a_day), 10 pipelined cache writes of 1,000 keys, and the run's "
                     "bookkeeping (10,000 items in ops_run_items)",
    "analytics-sql": "hand-written naive statement (tenants LEFT JOIN 3 GROUP BY subqueries: "
                     "the day's orders, new customers, lines of paid orders), then the same "
                     "10 pipelined cache writes; no bookkeeping",
    "analytics-sql-tuned": "the same hand-written statement under the job's planner settings "
                           "(random_page_cost 1.1, jit off: lines of paid orders by index), "
                           "then the same cache writes; no bookkeeping",
    "analytics-sql-lateral": "hand-written statement reading the day's orders once and each "
                             "paid order's lines through order_products_order_idx (LATERAL), "
                             "then the same cache writes; measured as an alternative plan",
    "analytics-loop": "per tenant: its 3 queries (orders+revenue, new customers, products "
                      "sold) and its own cache write (one set_many of 1 key: one round trip)",
    "cleanup-job-process": "`storeflow-ops trigger cleanup --json` as an operator runs it "
                           "(no instrumentation)",
    "cleanup-job": "the real job: batches of at most batch_size rows, each its own "
                   "transaction, per-tenant counts and run items (rows per DELETE observed "
                   "with pg_stat_get_xact_tuples_deleted before and after each statement)",
    "cleanup-unbatched": "the same work done plainly: 3 DELETE statements (stale carts; order "
                         "lines whose order is gone, by NOT EXISTS; cart items whose product "
                         "is gone) in one transaction, nothing counted per tenant",
}


# --- building the data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    tenants: int
    orders: int
    day_orders: int
    customers_per_tenant: int
    products_per_tenant: int
    carts: int  # half of them stale
    orphans: int  # of each kind

    @classmethod
    def at(cls, scale: float) -> Sizes:
        def n(x: int) -> int:
            return max(1, round(x * scale))

        return cls(tenants=n(10_000), orders=n(2_000_000), day_orders=n(200_000),
                   customers_per_tenant=20, products_per_tenant=10, carts=n(2_000_000),
                   orphans=n(50_000))


PLATFORM_DDL = """
CREATE TABLE tenants (id text, name text NOT NULL, email text NOT NULL,
    status text NOT NULL DEFAULT 'active', expire_date timestamptz NULL,
    created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE customers (id text, tenant_id text NOT NULL, email text NULL,
    created_at timestamptz NOT NULL);
CREATE TABLE products (id text, tenant_id text NOT NULL, name text NOT NULL,
    price numeric(12,2) NOT NULL);
CREATE TABLE orders (id text, tenant_id text NOT NULL, customer_id text NULL,
    total_amount numeric(12,2) NOT NULL, payment_status text NOT NULL,
    created_at timestamptz NOT NULL);
CREATE TABLE tpl_order_products (id text, order_id text NOT NULL, product_id text NOT NULL,
    quantity integer NOT NULL, price numeric(12,2) NOT NULL);
CREATE TABLE tpl_cart_items (id text, tenant_id text NOT NULL, product_id text NOT NULL,
    customer_id text NULL, quantity integer NOT NULL, created_at timestamptz NOT NULL);
"""

# Ids are UUID text, as the platform has them, derived from a counter so the data is
# reproducible: uid('o', 7) is order 7's id everywhere.
UID = "md5({prefix} || ({n}))::uuid::text"


def uid(prefix: str, n: str) -> str:
    return UID.format(prefix=f"'{prefix}'", n=n)


def build_sql(s: Sizes) -> list[tuple[str, str]]:
    """(label, statement) pairs that fill the tables; every row comes from generate_series."""
    t = s.tenants
    older = s.orders - s.day_orders
    fresh_from = s.carts // 2  # carts 1..fresh_from are stale
    # Stale and fresh carts are spread evenly over 60 days around the cut-off, in insertion
    # order, as a table that only grows has them; cart `fresh_from + 1` sits exactly on it.
    cart_step = f"(interval '60 days' / {s.carts})"
    return [
        ("tenants", f"""
            INSERT INTO tenants (id, name, email, status, expire_date, created_at)
            SELECT {uid('t', 'i')}, 'Store ' || i, 'owner' || i || '@example.com', 'active',
                   NULL, timestamptz '2025-01-01 00:00+00'
            FROM generate_series(0, {t - 1}) i"""),
        ("customers", f"""
            INSERT INTO customers (id, tenant_id, email, created_at)
            SELECT {uid('c', 'i')}, {uid('t', f'i % {t}')}, 'c' || i || '@example.com',
                   CASE WHEN i < {t * 2} THEN timestamptz '{DAY} 00:00+00' + (i % 86400) * interval '1 second'
                        ELSE timestamptz '2026-06-01 00:00+00' + (i % 5000000) * interval '1 second' END
            FROM generate_series(0, {t * s.customers_per_tenant - 1}) i"""),
        ("products", f"""
            INSERT INTO products (id, tenant_id, name, price)
            SELECT {uid('p', 'i')}, {uid('t', f'i / {s.products_per_tenant}')}, 'Product ' || i,
                   1 + (i % 100)
            FROM generate_series(0, {t * s.products_per_tenant - 1}) i"""),
        # The aggregated day's orders come last, as the newest rows of a growing table.
        ("orders", f"""
            INSERT INTO orders (id, tenant_id, customer_id, total_amount, payment_status, created_at)
            SELECT {uid('o', 'i')}, {uid('t', f'i % {t}')}, NULL, 1 + (i * 37 % 20000) / 100.0,
                   (ARRAY['paid','paid','paid','paid','paid','paid','paid','pending','failed',
                          'refunded'])[1 + i % 10],
                   CASE WHEN i < {older}
                        THEN timestamptz '{DAY} 00:00+00' - interval '60 days'
                             + i * (interval '60 days' / {older})
                        ELSE timestamptz '{DAY} 00:00+00'
                             + (i - {older}) * (interval '1 day' / {s.day_orders}) END
            FROM generate_series(0, {s.orders - 1}) i"""),
        # 1 to 4 lines an order (2.5 on average), then the orphans: lines of orders that are gone.
        ("order_products", f"""
            INSERT INTO tpl_order_products (id, order_id, product_id, quantity, price)
            SELECT {uid('op', "i || '-' || j")}, {uid('o', 'i')},
                   {uid('p', f'(i % {t}) * {s.products_per_tenant} + (i + j) % {s.products_per_tenant}')},
                   1 + (i + j) % 5, 1 + (i + j) % 50
            FROM generate_series(0, {s.orders - 1}) i, generate_series(1, 1 + i % 4) j
            UNION ALL
            SELECT {uid('op-orphan', 'k')}, {uid('gone-order', 'k')}, {uid('p', '0')}, 1, 1
            FROM generate_series(1, {s.orphans}) k"""),
        ("cart_items", f"""
            INSERT INTO tpl_cart_items (id, tenant_id, product_id, customer_id, quantity, created_at)
            SELECT {uid('ci', 'i')}, {uid('t', f'i % {t}')},
                   CASE WHEN i > {fresh_from} AND (i - {fresh_from}) % {max(1, fresh_from // s.orphans)} = 0
                             AND (i - {fresh_from}) / {max(1, fresh_from // s.orphans)} <= {s.orphans}
                        THEN {uid('gone-product', 'i')}
                        ELSE {uid('p', f'(i % {t}) * {s.products_per_tenant} + i % {s.products_per_tenant}')}
                   END,
                   NULL, 1 + i % 5,
                   timestamptz '{CUTOFF.isoformat()}' - {fresh_from} * {cart_step}
                   + (i - 1) * {cart_step}
            FROM generate_series(1, {s.carts}) i"""),
    ]


INDEXES = """
ALTER TABLE tenants ADD PRIMARY KEY (id);
ALTER TABLE customers ADD PRIMARY KEY (id);
ALTER TABLE products ADD PRIMARY KEY (id);
ALTER TABLE orders ADD PRIMARY KEY (id);
CREATE INDEX orders_tenant_created_idx ON orders (tenant_id, created_at);
CREATE INDEX customers_tenant_created_idx ON customers (tenant_id, created_at);
CREATE INDEX tenants_expire_idx ON tenants (expire_date);
"""

# The two tables cleanup changes, rebuilt from their templates before every cleanup run,
# with the platform's indexes, vacuumed (hint bits set, visibility map current) and analysed.
RESTORE = """
DROP TABLE IF EXISTS order_products;
DROP TABLE IF EXISTS cart_items;
CREATE TABLE order_products (LIKE tpl_order_products) WITH (autovacuum_enabled = false);
CREATE TABLE cart_items (LIKE tpl_cart_items) WITH (autovacuum_enabled = false);
INSERT INTO order_products SELECT * FROM tpl_order_products;
INSERT INTO cart_items SELECT * FROM tpl_cart_items;
ALTER TABLE order_products ADD PRIMARY KEY (id);
ALTER TABLE cart_items ADD PRIMARY KEY (id);
CREATE INDEX order_products_order_idx ON order_products (order_id);
CREATE INDEX cart_items_created_idx ON cart_items (created_at);
CREATE INDEX cart_items_product_idx ON cart_items (product_id);
VACUUM ANALYZE order_products;
VACUUM ANALYZE cart_items;
"""


def pg_connect(url: str, schema: str | None = None) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True)
    if schema:
        conn.execute(f'SET search_path TO "{schema}"')
    return conn


def statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def build(url: str, schema: str, sizes: Sizes, log: Callable[[str], None]) -> None:
    with pg_connect(url) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute("SET maintenance_work_mem = '256MB'")
        for stmt in statements(PLATFORM_DDL):
            conn.execute(stmt)
        for label, stmt in build_sql(sizes):
            started = time.perf_counter()
            rows = conn.execute(stmt).rowcount
            log(f"  {label:<15} {rows:>10,} rows  {time.perf_counter() - started:6.1f} s")
        for stmt in statements(INDEXES):
            conn.execute(stmt)
        conn.execute("VACUUM ANALYZE")
    restore(url, schema)


def restore(url: str, schema: str) -> None:
    with pg_connect(url, schema) as conn:
        conn.execute("SET maintenance_work_mem = '256MB'")
        for stmt in statements(RESTORE):
            conn.execute(stmt)
        conn.execute("CHECKPOINT")  # so no variant pays for the previous one's dirty pages


def schema_url(url: str, schema: str) -> str:
    """The URL a job process uses: the bench schema first on its search_path."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


# --- the variants, each run in a child process ---------------------------------------------------


def open_cache(kind: str, engine: Any, prefix: str) -> Any:
    from jobs.cache import RedisCache, TableCache

    if kind == "redis":
        return RedisCache(REDIS_URL, prefix=prefix)
    return TableCache(engine)


def cache_digest(cache: Any, tenant_ids: list[str]) -> str:
    """What was cached for the day, without generatedAt: equal digests, equal results."""
    import hashlib

    from jobs.analytics import cache_key

    h = hashlib.sha256()
    for start in range(0, len(tenant_ids), 1000):
        chunk = tenant_ids[start : start + 1000]
        found = cache.get_many(cache_key(t, DAY) for t in chunk)
        for t in chunk:
            cached = found.get(cache_key(t, DAY))
            value = json.loads(cached.value) if cached else {}
            value.pop("generatedAt", None)
            h.update(json.dumps(value, sort_keys=True).encode())
    return h.hexdigest()[:16]


def cache_value(tenant_id: str, orders_: int, revenue: Decimal | None, new_customers: int,
                sold: int) -> str:
    from jobs.analytics import money
    from jobs.timeutil import iso_z

    return json.dumps({
        "tenantId": tenant_id, "date": DAY.isoformat(), "orders": orders_,
        "revenue": money(revenue), "newCustomers": new_customers, "productsSold": sold,
        "generatedAt": iso_z(ANALYTICS_NOW),
    }, separators=(",", ":"))


# The same aggregation as the job, written by hand as one statement.
ANALYTICS_SQL = """
SELECT t.id, coalesce(o.orders, 0), o.revenue, coalesce(c.new_customers, 0), coalesce(s.sold, 0)
FROM tenants t
LEFT JOIN (SELECT tenant_id, count(*) AS orders,
                  sum(total_amount) FILTER (WHERE payment_status = 'paid') AS revenue
           FROM orders WHERE created_at >= %(start)s AND created_at < %(end)s
           GROUP BY tenant_id) o ON o.tenant_id = t.id
LEFT JOIN (SELECT tenant_id, count(*) AS new_customers
           FROM customers WHERE created_at >= %(start)s AND created_at < %(end)s
           GROUP BY tenant_id) c ON c.tenant_id = t.id
LEFT JOIN (SELECT o.tenant_id, sum(op.quantity) AS sold
           FROM orders o JOIN order_products op ON op.order_id = o.id
           WHERE o.created_at >= %(start)s AND o.created_at < %(end)s AND o.payment_status = 'paid'
           GROUP BY o.tenant_id) s ON s.tenant_id = t.id
ORDER BY t.id
"""

# One read of the day's orders, each paid order's lines by the order_id index.
ANALYTICS_SQL_LATERAL = """
SELECT t.id, coalesce(o.orders, 0), o.revenue, coalesce(c.new_customers, 0),
       coalesce(o.sold, 0)::bigint
FROM tenants t
LEFT JOIN (SELECT d.tenant_id, count(*) AS orders,
                  sum(d.total_amount) FILTER (WHERE d.payment_status = 'paid') AS revenue,
                  sum(l.sold) AS sold
           FROM orders d
           LEFT JOIN LATERAL (SELECT sum(op.quantity) AS sold FROM order_products op
                              WHERE op.order_id = d.id AND d.payment_status = 'paid') l ON true
           WHERE d.created_at >= %(start)s AND d.created_at < %(end)s
           GROUP BY d.tenant_id) o ON o.tenant_id = t.id
LEFT JOIN (SELECT tenant_id, count(*) AS new_customers
           FROM customers WHERE created_at >= %(start)s AND created_at < %(end)s
           GROUP BY tenant_id) c ON c.tenant_id = t.id
ORDER BY t.id
"""

# The seed's way: three queries for every tenant.
LOOP_SQL = (
    """SELECT count(*), sum(total_amount) FILTER (WHERE payment_status = 'paid') FROM orders
       WHERE tenant_id = %(t)s AND created_at >= %(start)s AND created_at < %(end)s""",
    """SELECT count(*) FROM customers
       WHERE tenant_id = %(t)s AND created_at >= %(start)s AND created_at < %(end)s""",
    """SELECT coalesce(sum(op.quantity), 0) FROM orders o JOIN order_products op ON op.order_id = o.id
       WHERE o.tenant_id = %(t)s AND o.created_at >= %(start)s AND o.created_at < %(end)s
         AND o.payment_status = 'paid'""",
)

CLEANUP_SQL = (
    "DELETE FROM cart_items WHERE created_at < %(cutoff)s",
    "DELETE FROM order_products op WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = op.order_id)",
    "DELETE FROM cart_items c WHERE NOT EXISTS (SELECT 1 FROM products p WHERE p.id = c.product_id)",
)
# The same predicates as counts, read before the first cleanup variant (see main).
CLEANUP_WARM = tuple(sql.replace("DELETE FROM", "SELECT count(*) FROM", 1) for sql in CLEANUP_SQL)


def child(variant: str, url: str, schema: str, cache_kind: str, prefix: str) -> dict[str, Any]:
    """Run one variant once; what it reports goes to the parent as one JSON line."""
    from jobs import runs
    from jobs.db import make_engine
    from jobs.settings import Overrides, load_settings

    db_url = schema_url(url, schema)
    engine = make_engine(db_url)
    cache = open_cache(cache_kind, engine, f"{prefix}{variant}:")
    day_start = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)
    window = {"start": day_start, "end": day_start + timedelta(days=1)}
    out: dict[str, Any] = {}
    started = time.perf_counter()
    deletes: list[int] = []
    if variant == "cleanup-job":
        import re

        from sqlalchemy import event

        # Rows removed by each statement that deletes, as PostgreSQL counts them in the
        # statement's transaction (before and after it): a DELETE inside WITH reports the
        # outer SELECT's rows, not its own. Costs the job two small queries per batch.
        # Platform tables only: the job also rewrites its own run items (ops_run_items).
        deleting = re.compile(r"\bDELETE FROM (cart_items|order_products)\b", re.IGNORECASE)

        def deleted_so_far(cursor: Any, table: str) -> int:
            with cursor.connection.cursor() as own:
                own.execute("SELECT pg_stat_get_xact_tuples_deleted(%s::regclass)", (table,))
                row = own.fetchone()
            return int(row[0]) if row else 0

        def before_delete(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if found := deleting.search(statement):
                conn.info["deleted_before"] = deleted_so_far(cursor, found[1])

        def count_delete(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if found := deleting.search(statement):
                deletes.append(deleted_so_far(cursor, found[1]) - conn.info.pop("deleted_before"))

        event.listen(engine, "before_cursor_execute", before_delete)
        event.listen(engine, "after_cursor_execute", count_delete)
    if variant in ("analytics-job", "cleanup-job"):
        with tempfile.TemporaryDirectory() as cwd:  # no schedules.toml: the shipped defaults
            settings = load_settings(Overrides(database_url=db_url),
                                     env={"DATABASE_URL": db_url}, cwd=Path(cwd))
            job = "analytics-aggregate" if variant == "analytics-job" else "cleanup"
            now = ANALYTICS_NOW if variant == "analytics-job" else CLEANUP_NOW
            started = time.perf_counter()
            report = runs.execute(engine, settings, job, now=now, started_by="bench", cache=cache)
        out["status"] = str(report.status)
        out["error"] = report.error
        out["summary"] = dict(report.summary)
        out["items"] = len(report.items)
        if deletes:
            out["deletes"] = {"statements": len(deletes), "max_rows": max(deletes)}
    elif variant in ("analytics-sql", "analytics-sql-tuned", "analytics-sql-lateral"):
        sql = ANALYTICS_SQL_LATERAL if variant == "analytics-sql-lateral" else ANALYTICS_SQL
        with pg_connect(url, schema) as conn, conn.transaction():
            if variant == "analytics-sql-tuned":
                from jobs.analytics import DAY_PLAN_SETTINGS

                for setting in DAY_PLAN_SETTINGS:
                    conn.execute(f"SET LOCAL {setting}")
            rows = conn.execute(sql, window).fetchall()
        from jobs.analytics import cache_key

        values = {cache_key(r[0], DAY): cache_value(*r) for r in rows}
        for start in range(0, len(rows), 1000):  # the job's chunk size
            cache.set_many(dict(list(values.items())[start : start + 1000]), 86_400)
        out["summary"] = {"tenants": len(rows)}
    elif variant == "analytics-loop":
        from jobs.analytics import cache_key

        tenants = 0
        with pg_connect(url, schema) as conn:
            for (tenant_id,) in conn.execute("SELECT id FROM tenants ORDER BY id").fetchall():
                args = {**window, "t": tenant_id}
                n_orders, revenue = conn.execute(LOOP_SQL[0], args).fetchone() or (0, None)
                (n_customers,) = conn.execute(LOOP_SQL[1], args).fetchone() or (0,)
                (sold,) = conn.execute(LOOP_SQL[2], args).fetchone() or (0,)
                value = cache_value(tenant_id, n_orders, revenue, n_customers, int(sold))
                cache.set_many({cache_key(tenant_id, DAY): value}, 86_400)
                tenants += 1
        out["summary"] = {"tenants": tenants}
    elif variant == "cleanup-unbatched":
        deleted, seconds = [], []
        with pg_connect(url, schema) as conn, conn.transaction():
            for stmt in CLEANUP_SQL:
                t0 = time.perf_counter()
                deleted.append(conn.execute(stmt, {"cutoff": CUTOFF}).rowcount)
                seconds.append(round(time.perf_counter() - t0, 2))
        out["summary"] = {"stale_cart_items": deleted[0], "orphaned_order_products": deleted[1],
                          "orphaned_cart_items": deleted[2], "seconds_per_kind": seconds}
        out["deletes"] = {"statements": len(deleted), "max_rows": max(deleted)}
    else:
        raise SystemExit(f"unknown variant {variant}")
    out["seconds"] = time.perf_counter() - started
    engine.dispose()
    return out


# --- the parent: build, run every variant in turn, report ----------------------------------------


@dataclass
class Outcome:
    seconds: list[float]
    rss_mb: list[float]
    last: dict[str, Any]
    failed: str | None = None
    process_seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def process_median(self) -> float:
        return statistics.median(self.process_seconds) if self.process_seconds else float("nan")


def spawn(variant: str, args: argparse.Namespace, schema: str, prefix: str
          ) -> tuple[dict[str, Any], float]:
    """Run a variant in a child process: (its report, its peak RSS in MB, from GNU time). The
    report's "process_seconds" is the whole process, timed from outside."""
    if variant in PROCESS_VARIANTS:
        job, now = PROCESS_VARIANTS[variant]
        cmd = [sys.executable, "-c", LAUNCH, str(ROOT), "trigger", job, "--json", "--now",
               now.isoformat()]
        env = {"DATABASE_URL": schema_url(args.url, schema), "PATH": os.environ.get("PATH", ""),
               "HOME": os.environ.get("HOME", "/root"),
               "STOREFLOW_CACHE_PREFIX": f"{prefix}{variant}:"}
        if args.cache == "redis":
            env["REDIS_URL"] = REDIS_URL
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--url",
               args.url, "--schema", schema, "--cache", args.cache, "--prefix", prefix]
        env = dict(os.environ)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.TemporaryDirectory() as cwd:
        # The peak RSS comes from GNU time, a small process between this one and the
        # variant: a child exec'd straight from this process inherits its high-water mark
        # (Linux keeps the old mm's at exec), so none would read below this process's RSS.
        peak = Path(cwd) / "peak-rss-kb"
        started = time.perf_counter()
        proc = subprocess.Popen([TIME, "-f", "%M", "-o", str(peak), *cmd], stdout=out,
                                stderr=err, env=env,
                                cwd=cwd if variant in PROCESS_VARIANTS else ROOT)
        proc.wait()
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        text, errors = out.read().decode(), err.read().decode()
        rss_mb = int(peak.read_text().split()[-1]) / 1024  # kilobytes
    if variant in PROCESS_VARIANTS:
        try:
            doc = json.loads(text)
        except ValueError:
            doc = {}
        if proc.returncode != 0 or "status" not in doc:
            tail = " | ".join(errors.strip().splitlines()[-3:])
            return {"failed": f"exit {proc.returncode}: {tail}"}, rss_mb
        results = doc.get("results") or {}
        report = {"status": doc["status"], "summary": results.get("summary") or {},
                  "items": len(results.get("items") or []), "seconds": wall}
    elif proc.returncode != 0 or not text.strip():
        tail = " | ".join(errors.strip().splitlines()[-3:])
        return {"failed": f"exit {proc.returncode}: {tail}"}, rss_mb
    else:
        report = json.loads(text.strip().splitlines()[-1])
    report["process_seconds"] = wall
    if variant.startswith("analytics"):  # read afterwards, outside every variant's time
        report["digest"] = digest_of(args, schema, f"{prefix}{variant}:")
    return report, rss_mb


def digest_of(args: argparse.Namespace, schema: str, prefix: str) -> str:
    """The digest of what a job process cached (read by this process afterwards)."""
    from jobs.db import make_engine

    engine = make_engine(schema_url(args.url, schema))
    try:
        cache = open_cache(args.cache, engine, prefix)
        with pg_connect(args.url, schema) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM tenants ORDER BY id")]
        return cache_digest(cache, ids)
    finally:
        engine.dispose()


def run_variants(variants: tuple[str, ...], args: argparse.Namespace, schema: str, prefix: str,
                 before_each: Callable[[], None] | None, log: Callable[[str], None]
                 ) -> dict[str, Outcome]:
    results = {v: Outcome([], [], {}) for v in variants}
    for rep in range(args.repeat):
        # Alternate the order, so neither variant always runs on the other's warm cache.
        order = variants if rep % 2 == 0 else tuple(reversed(variants))
        for variant in order:
            if before_each is not None:
                before_each()
            report, rss = spawn(variant, args, schema, prefix)
            outcome = results[variant]
            if "failed" in report or report.get("status") in ("failed", "interrupted"):
                outcome.failed = report.get("failed") or report.get("error") or "failed"
                log(f"  {variant:<21} run {rep + 1}: FAILED {outcome.failed}")
                continue
            outcome.seconds.append(report["seconds"])
            outcome.process_seconds.append(report["process_seconds"])
            outcome.rss_mb.append(rss)
            outcome.last = report
            log(f"  {variant:<21} run {rep + 1}: {report['seconds']:8.2f} s  process "
                f"{report['process_seconds']:6.2f} s  peak RSS {rss:6.1f} MB")
    return results


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(analytics: Mapping[str, Outcome], cleanup: Mapping[str, Outcome]) -> str:
    out: list[str] = []

    def rows_for(results: Mapping[str, Outcome], base: Outcome, extra: Callable[[Outcome], list[str]],
                 head: list[str]) -> str:
        rows = [head]
        for name, o in results.items():
            if o.failed and not o.seconds:
                rows.append([name, "failed", *[""] * (len(head) - 3), o.failed[:60]])
                continue
            rows.append([name, f"{o.median:.2f}", f"{min(o.seconds):.2f}", f"{max(o.seconds):.2f}",
                         f"{o.process_median:.2f}",
                         f"{o.median / base.median:.2f}x" if base.seconds else "",
                         f"{max(o.rss_mb):.0f}", *extra(o)])
        return table(rows)

    if analytics:
        sql = analytics["analytics-sql"]
        out.append(rows_for(analytics, sql, lambda o: [str(o.last.get("digest", ""))],
                            ["analytics-aggregate", "median s", "min s", "max s", "process s",
                             "vs sql", "peak RSS MB", "digest"]))
        digests = {o.last.get("digest") for o in analytics.values() if o.seconds}
        out.append(f"same cached values in every variant: {'yes' if len(digests) == 1 else 'NO'}")
        out.append("")
    if cleanup:
        def counts(o: Outcome) -> list[str]:
            s = o.last.get("summary", {})
            rows = o.last.get("deletes", {}).get("max_rows")
            return ["-" if rows is None else f"{rows:,}", f"{s.get('stale_cart_items', 0):,}",
                    f"{s.get('orphaned_order_products', 0):,}",
                    f"{s.get('orphaned_cart_items', 0):,}"]

        out.append(rows_for(cleanup, cleanup["cleanup-unbatched"], counts,
                            ["cleanup", "median s", "min s", "max s", "process s",
                             "vs unbatched", "peak RSS MB", "max rows/DELETE", "stale",
                             "orphan lines", "orphan carts"]))
        cj, cu = cleanup["cleanup-job"], cleanup["cleanup-unbatched"]
        if cj.seconds:
            s, d = cj.last["summary"], cj.last.get("deletes", {})
            out.append(f"cleanup job summary: {s.get('batches')} batches of at most "
                       f"{s.get('batch_size')} rows; observed {d.get('statements')} DELETE "
                       f"statements, the largest {d.get('max_rows', 0):,} rows")
        if cu.seconds:
            out.append("unbatched DELETEs, seconds per kind (stale, orphan lines, orphan carts): "
                       f"{cu.last['summary'].get('seconds_per_kind')}")
        out.append("")
    return "\n".join(out)


def targets(analytics: Mapping[str, Outcome], cleanup: Mapping[str, Outcome]) -> list[str]:
    out = []
    if analytics:
        job, proc, sql = (analytics[v] for v in ("analytics-job", "analytics-job-process",
                                                 "analytics-sql"))
        if proc.seconds and sql.seconds:
            out.append(f"  analytics job (whole process) within 1.2x of the hand-written statement: "
                       f"{proc.median / sql.median:.2f}x {verdict(proc.median <= 1.2 * sql.median)}"
                       f"  (in-process: {job.median / sql.median:.2f}x)")
    if cleanup:
        job, proc, plain = (cleanup[v] for v in ("cleanup-job", "cleanup-job-process",
                                                 "cleanup-unbatched"))
        if proc.seconds and plain.seconds:
            out.append(f"  cleanup job (whole process) within 1.3x of the three DELETEs: "
                       f"{proc.median / plain.median:.2f}x "
                       f"{verdict(proc.median <= 1.3 * plain.median)}"
                       f"  (in-process: {job.median / plain.median:.2f}x)")
        if job.seconds:
            batch_ok = job.last.get("deletes", {}).get("max_rows", 0) <= job.last["summary"]["batch_size"]
            out.append(f"  cleanup rows per DELETE <= batch size: {verdict(batch_ok)}")
    peaks = [max(o.rss_mb) for name, o in [*analytics.items(), *cleanup.items()]
             if o.rss_mb and "job" in name]
    if peaks:
        out.append(f"  job process peak RSS < 250 MB: {max(peaks):.0f} MB {verdict(max(peaks) < 250)}")
    return out


def growth(by_scale: Mapping[float, tuple[Mapping[str, Outcome], Mapping[str, Outcome]]]) -> str:
    """Each job against its baseline at every scale, and the cost relative to 1x."""
    rows = [["job", "scale", "baseline s", "job s", "job process s", "process/baseline",
             "baseline vs first", "job process vs first", "job peak RSS MB"]]
    pairs = (("analytics-aggregate", 0, "analytics-sql", "analytics-job", "analytics-job-process"),
             ("cleanup", 1, "cleanup-unbatched", "cleanup-job", "cleanup-job-process"))
    for name, i, base_v, job_v, proc_v in pairs:
        first: tuple[float, float] | None = None
        for scale, results in sorted(by_scale.items()):
            res = results[i]
            if not res or not (res[base_v].seconds and res[proc_v].seconds):
                continue
            base, job, proc = res[base_v], res[job_v], res[proc_v]
            if first is None:
                first = (base.median, proc.median)
            rss = max(max(job.rss_mb, default=0), max(proc.rss_mb, default=0))
            rows.append([name, f"{scale:g}x", f"{base.median:.2f}", f"{job.median:.2f}",
                         f"{proc.median:.2f}", f"{proc.median / base.median:.2f}x",
                         f"{base.median / first[0]:.2f}x", f"{proc.median / first[1]:.2f}x",
                         f"{rss:.0f}"])
    return table(rows)


def ensure_database(url: str) -> None:
    """Create the benchmark's database when it does not exist (from the server's `postgres`)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    name = parts.path.strip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')


def schema_for(scale: float) -> str:
    """The schema that holds a scale's data: jobs_x1, jobs_x0_5, ..."""
    return f"jobs_x{scale:g}".replace(".", "_")


def built_sizes(url: str, schema: str) -> str | None:
    with pg_connect(url) as conn:
        row = conn.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = %s "
                           "AND table_name = 'bench_built'", (schema,)).fetchone()
        if row is None:
            return None
        found = conn.execute(f'SELECT sizes FROM "{schema}".bench_built').fetchone()
        return None if found is None else str(found[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", default="1", help="1 = 10,000 tenants; several: 1,2,4")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each variant (default 3)")
    parser.add_argument("--only", choices=("analytics", "cleanup"), help="one job's variants")
    parser.add_argument("--url", default=os.environ.get("BENCH_PG_URL", DEFAULT_URL))
    parser.add_argument("--cache", choices=("redis", "table"), default="redis",
                        help=f"redis at REDIS_URL ({REDIS_URL}) or the embedded ops_cache table")
    parser.add_argument("--rebuild", action="store_true", help="build the data again")
    parser.add_argument("--drop", action="store_true", help="drop each scale's schema at the end")
    parser.add_argument("--build-only", action="store_true", help="build the data and stop")
    parser.add_argument("--skip", action="append", default=[], metavar="VARIANT",
                        choices=("analytics-loop", "analytics-sql-lateral", "analytics-sql-tuned"),
                        help="leave out a variant that is information only (the per-tenant "
                             "loop takes minutes at 4x); repeatable")
    parser.add_argument("--out", help="also append the report to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(child(args.child, args.url, args.schema, args.cache, args.prefix),
                         default=str))
        return 0

    from jobs.db import make_engine
    from jobs.migrate import upgrade

    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    if not Path(TIME).exists():
        raise SystemExit(f"{TIME} not found: the bench reads each variant's peak RSS through "
                         "GNU time (Debian: apt install time)")
    ensure_database(args.url)
    # As `pip install .` leaves the package: with PYTHONDONTWRITEBYTECODE set (as on CI) the
    # whole-process variants would otherwise compile jobs/ and console/ on every run.
    for package in ("jobs", "console"):
        compileall.compile_dir(ROOT / package, quiet=1)
    tag = uuid.uuid4().hex[:8]
    prefix = f"bench-jobs:{tag}:"
    scales = [float(x) for x in args.scale.split(",")]
    load = os.getloadavg()
    log(f"jobs_bench  scales {args.scale}  repeat {args.repeat}  cache {args.cache}  "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC  {os.cpu_count()} cpus  load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    by_scale: dict[float, tuple[dict[str, Outcome], dict[str, Outcome]]] = {}
    summaries: list[str] = []
    try:
        for scale in scales:
            sizes = Sizes.at(scale)
            schema = schema_for(scale)
            log("")
            log(f"== scale {scale:g}x, schema {schema}: {sizes.tenants:,} tenants, "
                f"{sizes.orders:,} orders ({sizes.day_orders:,} on {DAY}), {sizes.carts:,} cart "
                f"items ({sizes.carts // 2:,} stale), {sizes.orphans:,} orphans of each kind")
            if args.rebuild or built_sizes(args.url, schema) != repr(sizes):
                with pg_connect(args.url) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                started = time.perf_counter()
                build(args.url, schema, sizes, log)
                engine = make_engine(schema_url(args.url, schema))
                upgrade(engine)
                engine.dispose()
                with pg_connect(args.url, schema) as conn:
                    conn.execute("CREATE TABLE bench_built (sizes text)")
                    conn.execute("INSERT INTO bench_built VALUES (%s)", (repr(sizes),))
                log(f"built in {time.perf_counter() - started:.0f} s")
            else:
                log("data kept from an earlier run")
            if args.build_only:
                continue
            analytics: dict[str, Outcome] = {}
            cleanup: dict[str, Outcome] = {}
            if args.only != "cleanup":
                with pg_connect(args.url, schema) as conn:  # warm the caches for the first variant
                    conn.execute(ANALYTICS_SQL, {"start": datetime(2026, 11, 27, tzinfo=UTC),
                                                 "end": datetime(2026, 11, 28, tzinfo=UTC)}).fetchall()
                log("analytics-aggregate")
                analytics = run_variants(
                    tuple(v for v in ANALYTICS_VARIANTS if v not in args.skip), args, schema,
                    prefix, None, log)
            if args.only != "analytics":
                # Warm the caches for the first variant, as for analytics: each one reads all
                # of orders and products. Read-only: no variant's rows change. A first job
                # run 1.5-3.5 s slower than the later ones remains, with or without this
                # (its own ops_runs duration says so, not the process start); use --repeat
                # 3 or more, so the median leaves it out.
                with pg_connect(args.url, schema) as conn:
                    for sql in CLEANUP_WARM:
                        conn.execute(sql, {"cutoff": CUTOFF}).fetchall()
                log("cleanup (the two tables rebuilt, vacuumed, analysed, checkpointed before each run)")
                cleanup = run_variants(CLEANUP_VARIANTS, args, schema, prefix,
                                       partial(restore, args.url, schema), log)
                restore(args.url, schema)  # leave the data as built for the next run
            by_scale[scale] = (analytics, cleanup)
            summaries.append(f"scale {scale:g}x\n{report(analytics, cleanup)}targets\n"
                             + "\n".join(targets(analytics, cleanup)))
            if args.drop:
                with pg_connect(args.url) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        if args.build_only:
            return 0
        load = os.getloadavg()
        log("")
        log(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        log("variants")
        for name, note in VARIANT_NOTES.items():
            log(f"  {name:<22} {note}")
        for text in summaries:
            log("")
            log(text)
        log("")
        log("growth (job process = the whole `storeflow-ops trigger` process; vs first = the time "
            "against the first scale's, to compare with the ratio of the scales)")
        log(growth(by_scale))
    finally:
        if args.cache == "redis":
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=prefix + "*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
        if args.out:
            append(Path(args.out), "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

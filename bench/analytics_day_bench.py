"""Analytics by day across every tenant: the console's day view over 100,000 tenants, and
`analytics verify` against the analytics job itself. PostgreSQL.

    python bench/analytics_day_bench.py [--tenants 100000] [--runs 7] [--scale 1.0]
                                        [--repeat 5] [--skip-verify] [--out bench/results-tui.txt]

1. Day view: a database of its own (`bench_dayview`, or $BENCH_DAY_DATABASE; built once, kept) with --tenants
   tenants and a cached value for each but 1% of them, in Redis and in the embedded
   ops_cache table. Headless console (Textual's test driver): timed from opening the day
   view to its first page shown with the totals; then a re-sort (keys 2, 3, 5, 1 in turn:
   orders, revenue, products sold, name) until the table shows the new order.
   Targets: open < 1 s, re-sort < 300 ms (medians of --runs).
2. Verify: the jobs benchmark's data (bench/jobs_bench.py, --scale 1.0 = 10,000 tenants,
   2M orders, 200,000 on the day), in a schema dropped at the end. The real analytics job
   (jobs.runs.execute, writing Redis and its run items) and `verify_day` (the job's preview
   plus a read of every key), alternating, --repeat times each. Target: verify within 1.5x
   of the job (medians).

Writes its own section of --out (other benchmarks' lines are kept). Not a test: the
figures depend on the machine and its load, which the section records.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from results_file import append  # bench/, the script's own folder

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# A branch's own database and Redis prefix (BENCH_DAY_DATABASE), so two branches measured at
# once do not rebuild or migrate each other's data.
DATABASE = os.environ.get("BENCH_DAY_DATABASE", "bench_dayview")
PREFIX = DATABASE.replace("_", "-") + ":"
DAY = date(2026, 11, 27)
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
SECTION = "analytics_day_bench"


def database_url(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    return base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")


# --- the 100,000-tenant day ------------------------------------------------------------------


def build_day(tenants: int, log: Callable[[str], None]) -> str:
    """The day-view database, built once: tenants, and their values in both caches."""
    import psycopg
    from sqlalchemy import func, select

    from jobs.analytics import cache_key
    from jobs.cache import RedisCache, TableCache
    from jobs.db import make_engine, ops_cache, platform
    from jobs.db import tenants as tenants_table
    from jobs.migrate import upgrade

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
    url = database_url(PG_URL, DATABASE)
    engine = make_engine(url)
    platform.create_all(engine)
    upgrade(engine)
    with engine.begin() as conn:
        have = conn.execute(select(func.count()).select_from(tenants_table)).scalar_one()
        cached = conn.execute(select(func.count()).select_from(ops_cache)).scalar_one()
    redis_cache = RedisCache(REDIS_URL, prefix=PREFIX)
    in_redis = redis_cache._client.dbsize() and len(redis_cache.get_many(
        [cache_key(f"{i:08d}-0000-4000-8000-000000000000", DAY) for i in range(1, 11)]))
    if have == tenants and cached >= tenants * 0.99 and in_redis:
        log(f"day data: {tenants:,} tenants already built in {DATABASE}")
        engine.dispose()
        return url
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE tenants, ops_cache")
        conn.exec_driver_sql(
            "INSERT INTO tenants (id, name, email, status, created_at) "
            "SELECT lpad(i::text, 8, '0') || '-0000-4000-8000-000000000000', "
            "'Shop ' || md5(i::text), 'owner' || i || '@example.com', 'active', now() "
            f"FROM generate_series(0, {tenants - 1}) AS i")
    values: dict[str, str] = {}
    for i in range(tenants):
        if i % 100 == 37:
            continue  # 1% missing
        tid = f"{i:08d}-0000-4000-8000-000000000000"
        orders = (i * 7919) % 97
        values[cache_key(tid, DAY)] = (
            f'{{"tenantId":"{tid}","date":"{DAY}","orders":{orders},'
            f'"revenue":{orders * 23.5 + (i % 13):.2f},"newCustomers":{i % 5},'
            f'"productsSold":{orders * 2 + i % 3},"generatedAt":"2026-11-28T01:00:00.000Z"}}')
    items = list(values.items())
    table = TableCache(engine, clock=NOW.timestamp)
    for start in range(0, len(items), 10_000):
        chunk = dict(items[start : start + 10_000])
        redis_cache.set_many(chunk, ttl=10 * 86_400)
        # Expiry far off, so the wall clock of a later run still reads them.
        table.set_many(chunk, ttl=3_650 * 86_400)
    log(f"day data: {tenants:,} tenants, {len(values):,} cached values in Redis and ops_cache, "
        f"built in {time.perf_counter() - started:.0f} s")
    engine.dispose()
    return url


async def time_day_view(url: str, cache_kind: str, runs: int
                        ) -> tuple[list[float], list[float], list[float], list[float]]:
    from textual.widgets import DataTable

    from console.tui.app import OpsApp
    from console.tui.screens.analytics_day import AnalyticsDayScreen
    from jobs.cache import RedisCache, TableCache
    from jobs.settings import Overrides, load_settings

    settings = load_settings(Overrides(database_url=url), env={})

    def make_cache(engine: Any) -> Any:
        if cache_kind == "redis":
            return RedisCache(REDIS_URL, prefix=PREFIX)
        return TableCache(engine)

    app = OpsApp(settings, refresh_seconds=0, clock=lambda: NOW, cache_factory=make_cache)
    opened: list[float] = []
    sorted_: list[float] = []
    # This process's CPU time over the same spans (every thread): what the wall time would
    # be on a machine with a core to spare, less what PostgreSQL and Redis spend.
    opened_cpu: list[float] = []
    sorted_cpu: list[float] = []
    async with app.run_test(size=(120, 36)) as pilot:
        while not app.session.connected:
            await asyncio.sleep(0.01)
        await app.workers.wait_for_complete()
        app.session.cache()  # opened once, as a session does
        for _ in range(runs):
            t0, c0 = time.perf_counter(), time.process_time()
            app.open_analytics_day(DAY)
            while True:
                screen = app.screen
                if (isinstance(screen, AnalyticsDayScreen) and screen.loaded is not None
                        and screen.query_one("#day-table", DataTable).row_count > 1):
                    break
                await asyncio.sleep(0.002)
            await pilot.pause()
            opened.append(time.perf_counter() - t0)
            opened_cpu.append(time.process_time() - c0)
            table = screen.query_one("#day-table", DataTable)
            for key, field in (("2", "orders"), ("3", "revenue"), ("5", "productsSold"),
                               ("1", "name")):
                t0, c0 = time.perf_counter(), time.process_time()
                await pilot.press(key)
                while screen.sort_field != field:  # set, sorted and shown in one handler
                    await asyncio.sleep(0.002)
                await pilot.pause()
                assert table.row_count > 1
                sorted_.append(time.perf_counter() - t0)
                sorted_cpu.append(time.process_time() - c0)
            app.pop_screen()
            await pilot.pause()
    return opened, sorted_, opened_cpu, sorted_cpu


def time_read_day(url: str, cache_kind: str, runs: int) -> list[float]:
    from jobs.analytics_day import read_day
    from jobs.cache import RedisCache, TableCache
    from jobs.db import make_engine

    engine = make_engine(url)
    cache = RedisCache(REDIS_URL, prefix=PREFIX) if cache_kind == "redis" else TableCache(engine)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        day = read_day(engine, cache, DAY, ttls=False)  # as the day view reads it
        out.append(time.perf_counter() - t0)
        assert day.totals.tenants > 0
    engine.dispose()
    return out


# --- verify against the job ------------------------------------------------------------------


def time_verify(scale: float, repeat: int, log: Callable[[str], None]) -> dict[str, Any]:
    import jobs_bench  # bench/jobs_bench.py: its data, built the same way

    from jobs import runs
    from jobs.analytics import JOB_ID
    from jobs.analytics_day import verify_day
    from jobs.cache import RedisCache
    from jobs.db import make_engine
    from jobs.migrate import upgrade
    from jobs.records import RunParams
    from jobs.settings import Overrides, load_settings

    sizes = jobs_bench.Sizes.at(scale)
    tag = uuid.uuid4().hex[:8]
    schema, prefix = f"bench_verify_{tag}", f"bench-verify:{tag}:"
    started = time.perf_counter()
    jobs_bench.build(PG_URL, schema, sizes, log)
    url = jobs_bench.schema_url(PG_URL, schema)
    engine = make_engine(url)
    upgrade(engine)
    log(f"jobs benchmark data (scale {scale}): {sizes.tenants:,} tenants, {sizes.orders:,} "
        f"orders ({sizes.day_orders:,} on {jobs_bench.DAY}), built in "
        f"{time.perf_counter() - started:.0f} s")
    settings = load_settings(Overrides(database_url=url), env={})
    cache = RedisCache(REDIS_URL, prefix=prefix)
    now = jobs_bench.ANALYTICS_NOW
    job: list[float] = []
    check: list[float] = []
    result = None
    try:
        for i in range(repeat):
            for variant in (("job", "verify") if i % 2 == 0 else ("verify", "job")):
                t0 = time.perf_counter()
                if variant == "job":
                    report = runs.execute(engine, settings, JOB_ID, now=now, started_by="bench",
                                          params=RunParams(date=jobs_bench.DAY), cache=cache)
                    assert report.summary["cache_writes"] == sizes.tenants, report.error
                    job.append(time.perf_counter() - t0)
                else:
                    result = verify_day(engine, settings, cache, jobs_bench.DAY, now=now,
                                        started_by="bench")
                    check.append(time.perf_counter() - t0)
                log(f"  {variant:<7} run {i + 1}: {(job if variant == 'job' else check)[-1]:.2f} s")
    finally:
        engine.dispose()
        with jobs_bench.pg_connect(PG_URL) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        keys = list(cache._client.scan_iter(match=prefix + "*", count=1000))
        for start in range(0, len(keys), 1000):
            cache._client.delete(*keys[start : start + 1000])
    assert result is not None
    return {"sizes": sizes, "job": job, "verify": check, "result": result}


# --- the report ------------------------------------------------------------------------------


def ms(values: list[float]) -> str:
    return (f"{statistics.median(values) * 1000:6.0f} ms (min {min(values) * 1000:.0f}, "
            f"max {max(values) * 1000:.0f})")


def write_section(out: Path, lines: list[str]) -> None:
    """Add this run to `out` under a heading of its own; the file is shared with
    tui_bench.py, and every earlier run of either stays."""
    append(out, "\n".join([f"# --- {SECTION} (bench/analytics_day_bench.py) ---", *lines]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--tenants", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--scale", type=float, default=1.0, help="jobs benchmark data, 1.0 = 10,000 tenants")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-verify", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results-tui.txt"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))

    def log(line: str) -> None:
        print(line, flush=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    load_before = os.getloadavg()
    lines = [f"{SECTION} {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  commit {commit}  python "
             f"{platform.python_version()}  {os.cpu_count()} cpus  load {load_before[0]:.2f} "
             f"{load_before[1]:.2f} {load_before[2]:.2f} (uptime, at the start; the machine "
             "is shared)"]
    url = build_day(args.tenants, log)
    lines.append(f"day view: {args.tenants:,} tenants on PostgreSQL (1% without a value), 120x36, "
                 f"medians of {args.runs} opens and {args.runs * 4} re-sorts")
    for kind in ("redis", "table"):
        read = time_read_day(url, kind, args.runs)
        opened, resorted, opened_cpu, resorted_cpu = asyncio.run(
            time_day_view(url, kind, args.runs))
        label = "Redis" if kind == "redis" else "embedded ops_cache"
        log(f"{label}: read {ms(read)}; open {ms(opened)}; re-sort {ms(resorted)}")
        lines += [f"  cache: {label}",
                  f"    read_day as the view reads it     {ms(read)}",
                  f"    day view opened, first page shown {ms(opened)}   target < 1000 ms  "
                  f"{'met' if statistics.median(opened) < 1 else 'NOT met'}",
                  f"    re-sorted (2/3/5/1 in turn)       {ms(resorted)}   target < 300 ms  "
                  f"{'met' if statistics.median(resorted) < 0.3 else 'NOT met'}",
                  f"    CPU of this process: open {ms(opened_cpu)}, re-sort {ms(resorted_cpu)}"]
    if not args.skip_verify:
        v = time_verify(args.scale, args.repeat, log)
        job, check = statistics.median(v["job"]), statistics.median(v["verify"])
        s, r = v["sizes"], v["result"]
        lines += [f"analytics verify vs the analytics job: jobs_bench data at --scale {args.scale} "
                  f"({s.tenants:,} tenants, {s.orders:,} orders, {s.day_orders:,} on the day), "
                  f"Redis, alternating, medians of {args.repeat}",
                  f"  analytics job (writes the cache and its run items)  {ms(v['job'])}",
                  f"  verify_day (preview + read every key, writes nothing) {ms(v['verify'])}",
                  f"  ratio verify/job {check / job:.2f}x   target <= 1.5x  "
                  f"{'met' if check / job <= 1.5 else 'NOT met'}  "
                  f"(last verify: {r.checked:,} checked, {r.matching:,} matching)"]
    load_after = os.getloadavg()
    lines.append(f"load at the end {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    write_section(Path(args.out), lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

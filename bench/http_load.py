"""Load on the runner's HTTP face, loopback only, bounded in count and time.

Starts a real `storeflow-ops run --http` with expiry-checker scheduled every 2 seconds,
then fires rounds of 200 concurrent /healthz and 20 concurrent trigger requests (at the
other three jobs) until --seconds have passed (at most --max-rounds rounds). Checks that
every request got an answer and that the runner fired every 2-second slot of the load
window, and how late. Prints latency median/p99 per kind.

    python bench/http_load.py [--db postgresql|sqlite] [--seconds 12] [--tenants 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import sqlalchemy as sa
from sqlalchemy import select

from jobs.db import make_engine, ops_runs, platform, tenants
from jobs.migrate import upgrade
from jobs.registry import JOBS

TOKEN = "bench-http-token-" + uuid.uuid4().hex
PG_URL = os.environ.get("STOREFLOW_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SLOT_JOB = "expiry-checker"
TRIGGER_JOBS = ("payment-reminders", "analytics-aggregate", "cleanup")
SCHEDULE = f"""[jobs.{SLOT_JOB}]
schedule = "* * * * * */2"   # every 2 seconds
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def database(kind: str, workdir: Path) -> tuple[str, str | None]:
    """A fresh database URL (and the PostgreSQL schema to drop afterwards)."""
    if kind == "sqlite":
        return f"sqlite:///{workdir / 'bench.sqlite3'}", None
    schema = f"bench_http_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"),
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    admin.dispose()
    return f"{PG_URL}?options=-csearch_path%3D{schema}", schema


def drop_schema(schema: str) -> None:
    admin = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"),
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    admin.dispose()


def populate(url: str, count: int) -> None:
    engine = make_engine(url)
    platform.create_all(engine)
    upgrade(engine)
    now = datetime.now(UTC)
    with engine.begin() as c:  # expired 1-3 days ago: in grace, so every run visits them
        c.execute(tenants.insert(), [
            {"id": f"t-{i:05d}", "name": f"Store {i}", "email": f"owner-{i}@example.com",
             "status": "active", "expire_date": now - timedelta(days=1 + i % 3)}
            for i in range(count)
        ])
    engine.dispose()


async def fire(session: aiohttp.ClientSession, kind: str, url: str,
               headers: dict[str, str]) -> tuple[str, str, float]:
    start = time.perf_counter()
    try:
        async with session.get(url, headers=headers) as resp:
            await resp.read()
            outcome = str(resp.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        outcome = type(exc).__name__
    return kind, outcome, time.perf_counter() - start


async def load(base: str, seconds: float, max_rounds: int, health: int,
               triggers: int) -> tuple[list[tuple[str, str, float]], int]:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    jobs = [TRIGGER_JOBS[i % len(TRIGGER_JOBS)] for i in range(triggers)]
    results: list[tuple[str, str, float]] = []
    timeout = aiohttp.ClientTimeout(total=60)
    rounds = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=timeout) as session:
        deadline = time.monotonic() + seconds
        while rounds < max_rounds and time.monotonic() < deadline:
            batch = [fire(session, "healthz", base + "/healthz", {}) for _ in range(health)]
            batch += [fire(session, job, base + JOBS[job].endpoint, auth) for job in jobs]
            results += await asyncio.gather(*batch)
            rounds += 1
    return results, rounds


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
    return f"median {statistics.median(values) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, " \
           f"max {values[-1] * 1000:.1f} ms"


def slot_report(url: str, start: datetime, end: datetime) -> tuple[list[str], bool]:
    first = start.replace(microsecond=0) + timedelta(seconds=2 - start.second % 2)  # even seconds
    expected = []
    slot = first
    while slot <= end:
        expected.append(slot)
        slot += timedelta(seconds=2)
    engine = make_engine(url)
    with engine.connect() as c:
        rows = c.execute(
            select(ops_runs.c.scheduled_for, ops_runs.c.status, ops_runs.c.started_at)
            .where(ops_runs.c.job_id == SLOT_JOB, ops_runs.c.scheduled_for >= first,
                   ops_runs.c.scheduled_for <= end)
        ).all()
    engine.dispose()
    per_slot = Counter(r.scheduled_for for r in rows)
    statuses = Counter(r.status for r in rows)
    late = sorted((r.started_at - r.scheduled_for).total_seconds()
                  for r in rows if r.started_at is not None)
    missing = [s for s in expected if per_slot[s] == 0]
    doubled = [s for s, n in per_slot.items() if n > 1]
    ok = not missing and not doubled and statuses.get("missed", 0) == 0
    lines = [
        f"slots of {SLOT_JOB} in the load window: {len(expected)} expected, "
        f"{len(per_slot)} with a run, missing {len(missing)}, fired twice {len(doubled)}",
        f"  statuses: {dict(sorted(statuses.items()))}",
        "  lateness (started_at - slot): "
        + (f"median {statistics.median(late) * 1000:.0f} ms, max {late[-1] * 1000:.0f} ms"
           if late else "-"),
    ]
    return lines, ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    ap.add_argument("--seconds", type=float, default=12.0, help="keep firing rounds this long")
    ap.add_argument("--max-rounds", type=int, default=30)
    ap.add_argument("--health", type=int, default=200, help="concurrent /healthz per round")
    ap.add_argument("--triggers", type=int, default=20, help="concurrent triggers per round")
    ap.add_argument("--tenants", type=int, default=200)
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="sfops-http-load-"))
    url, schema = database(args.db, workdir)
    exe = str(Path(sys.executable).with_name("storeflow-ops"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = workdir / "runner.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        populate(url, args.tenants)
        (workdir / "schedules.toml").write_text(SCHEDULE)
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(workdir), "DATABASE_URL": url,
               "CRON_SECRET_TOKEN": TOKEN}
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen([exe, "run", "--http", f"127.0.0.1:{port}"], cwd=workdir,
                                    env=env, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    print(log_path.read_text(), file=sys.stderr)
                    return 1
                time.sleep(0.1)
        time.sleep(4)  # a few slots before the load, so the window starts in steady state

        start = datetime.now(UTC)
        t0 = time.perf_counter()
        results, rounds = asyncio.run(asyncio.wait_for(
            load(base, args.seconds, args.max_rounds, args.health, args.triggers),
            timeout=args.seconds + 180))
        elapsed = time.perf_counter() - t0
        end = datetime.now(UTC)
        time.sleep(3)  # let the last slot of the window be claimed

        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        runner_log = log_path.read_text()

        print(f"storeflow-ops HTTP load, {args.db}, loopback, {os.cpu_count()} cores; "
              f"{args.tenants} tenants; {SLOT_JOB} every 2 s")
        print(f"{rounds} rounds of {args.health} concurrent /healthz + {args.triggers} "
              f"concurrent triggers ({', '.join(TRIGGER_JOBS)}) in {elapsed:.1f} s: "
              f"{len(results)} requests, {len(results) / elapsed:.0f} req/s")
        answered = True
        for kind in ("healthz", "trigger"):
            mine = [r for r in results if (r[0] == "healthz") == (kind == "healthz")]
            counts = Counter(r[1] for r in mine)
            answered &= all(k.isdigit() for k in counts)
            print(f"{kind}: {len(mine)} requests, status {dict(sorted(counts.items()))}")
            print(f"  latency {ms([r[2] for r in mine])}")
        for job_id in TRIGGER_JOBS:
            mine = [r for r in results if r[0] == job_id]
            print(f"  {job_id}: status {dict(sorted(Counter(r[1] for r in mine).items()))}")
        lines, slots_ok = slot_report(url, start, end)
        print("\n".join(lines))
        leaked = TOKEN in runner_log
        print(f"runner exit code {code}; token in runner log: {leaked}; "
              f"every request answered: {answered}; every slot fired once: {slots_ok}")
        return 0 if answered and slots_ok and code == 0 and not leaked else 1
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if schema:
            drop_schema(schema)


if __name__ == "__main__":
    raise SystemExit(main())

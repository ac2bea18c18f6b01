"""Benchmark of the outbox sender (issue 4): drain pending emails to a local SMTP server.

    python bench/outbox_bench.py                      # 10,000 emails unlimited, 1,000 at 100/s
    python bench/outbox_bench.py --count 2000 --repeat 1 --db sqlite
    BENCH_PG_URL=postgresql://... python bench/outbox_bench.py

For each database (SQLite file, PostgreSQL schema of its own) and each mode it queues
`--count` rendered emails (`--rate-count` for the rate-limited mode), drains them with
jobs.sender.drain exactly as `storeflow-ops outbox send` does (batches of
outbox.batch_size, one SMTP connection per batch, each row marked when the server
answers), checks that the server received each email once and every row is `sent`, and
prints messages per second; the median of `--repeat` runs is the figure.

The aiosmtpd server runs in its own process (`--serve`), so it does not share the
sender's interpreter lock: what is measured is the sender, not the test server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
NOW = datetime(2026, 11, 28, 0, 0, tzinfo=UTC)
FROM = "StoreFlow <billing@storeflow.example>"


# --- the SMTP server, in a process of its own ----------------------------------------------------


class _Counter:
    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content: bytes = envelope.original_content or envelope.content
        head = content.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ")
        mid = next((line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                    if line.lower().startswith(b"message-id:")), "?")
        self.ids[mid] = self.ids.get(mid, 0) + 1
        return "250 2.0.0 queued"


def serve(port: int) -> None:
    """Accept mail until SIGTERM, then print `received DISTINCT TOTAL`."""
    from aiosmtpd.controller import Controller

    handler = _Counter()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.run_until_complete(stop.wait())
    controller.stop()
    print(f"received {len(handler.ids)} {sum(handler.ids.values())}", flush=True)


@contextmanager
def smtp_process() -> Iterator[tuple[int, list[str]]]:
    from tests.smtp_sink import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit("the SMTP server did not start")
    tail: list[str] = []
    try:
        yield port, tail
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        tail.extend(out.split())


# --- databases ---------------------------------------------------------------------------------


@contextmanager
def database(kind: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/bench.sqlite3"
        return
    import sqlalchemy as sa

    base = os.environ.get("BENCH_PG_URL", DEFAULT_PG_URL).replace(
        "postgresql://", "postgresql+psycopg://")
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    schema = f"outbox_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        sep = "&" if "?" in base else "?"
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def fill(engine: Any, count: int) -> None:
    """`count` pending emails with real rendered bodies, due at NOW."""
    from jobs import outbox
    from jobs.db import ops_email_outbox

    with engine.begin() as conn:
        conn.execute(ops_email_outbox.delete())
    template = outbox.render(
        "subscription_expired", idempotency_key="x", tenant_id="x",
        recipient="owner@example.com",
        context={"tenant_name": "Corner Shop", "expire_date": "Saturday 28 November 2026",
                 "grace_end": "Saturday 5 December 2026", "grace_days": 7})
    rows = [{
        "idempotency_key": f"subscription_expired:t-{i:06d}:2026-11-28",
        "tenant_id": f"t-{i:06d}", "kind": template.kind,
        "recipient": f"owner-{i:06d}@example.com", "subject": template.subject,
        "body_text": template.body_text, "body_html": template.body_html,
        "status": "pending", "attempts": 0, "next_attempt_at": NOW, "created_at": NOW,
    } for i in range(count)]
    with engine.begin() as conn:
        for i in range(0, count, 1000):
            conn.execute(ops_email_outbox.insert(), rows[i : i + 1000])


def sent_rows(engine: Any) -> int:
    from sqlalchemy import func, select

    from jobs.db import ops_email_outbox

    with engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(ops_email_outbox)
                             .where(ops_email_outbox.c.status == "sent")).scalar_one())


# --- the measurement ---------------------------------------------------------------------------


def measure(kind: str, count: int, rate: float, repeat: int) -> list[float]:
    from jobs import sender
    from jobs.db import make_engine, platform
    from jobs.migrate import upgrade
    from jobs.settings import Overrides, load_settings

    rates = []
    with database(kind) as url:
        engine = make_engine(url)
        platform.create_all(engine)
        upgrade(engine)
        settings = load_settings(Overrides(database_url=url), env={}, cwd=ROOT / "bench")
        settings = replace(settings, mail_from=FROM,
                           outbox=replace(settings.outbox, rate_limit=rate))
        for run in range(1, repeat + 1):
            fill(engine, count)
            with smtp_process() as (port, tail):
                smtp = sender.SmtpConfig("127.0.0.1", port, timeout=10)
                started = time.perf_counter()
                result = sender.drain(engine, settings, now=NOW, sender_id="bench", smtp=smtp)
                elapsed = time.perf_counter() - started
            distinct, total = int(tail[-2]), int(tail[-1])
            ok = result.sent == count == sent_rows(engine) == distinct == total
            rates.append(count / elapsed)
            print(f"  {kind:10} {'unlimited' if not rate else f'limit {rate:g}/s':>13} "
                  f"run {run}: {count} emails in {elapsed:6.2f} s = {count / elapsed:7.1f} msg/s"
                  f"  (server got {total}, distinct {distinct}, rows sent {result.sent})"
                  f"{'' if ok else '  MISMATCH'}", flush=True)
            if not ok:
                raise SystemExit("the server did not receive each email exactly once")
        engine.dispose()
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=10_000, help="emails per unlimited run")
    p.add_argument("--rate", type=float, default=100.0, help="messages/second when limited")
    p.add_argument("--rate-count", type=int, default=1_000, help="emails per limited run")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--db", default="sqlite,postgresql")
    args = p.parse_args()
    if args.serve:
        serve(args.serve)
        return
    print(f"outbox sender benchmark · {datetime.now(UTC):%Y-%m-%d %H:%M} UTC · "
          f"python {sys.version.split()[0]} · {os.cpu_count()} CPUs "
          f"(load {os.getloadavg()[0]:.1f}) · batch_size 100 · aiosmtpd in its own process")
    summary = []
    for kind in args.db.split(","):
        for rate, count in ((0.0, args.count), (args.rate, args.rate_count)):
            rates = measure(kind, count, rate, args.repeat)
            label = "unlimited" if not rate else f"limited to {rate:g}/s"
            summary.append(f"{kind:10} {label:18} median {statistics.median(rates):7.1f} msg/s"
                           f"  (runs: {', '.join(f'{r:.1f}' for r in rates)})")
    print("\nmedian of", args.repeat, "runs")
    for line in summary:
        print(line)


if __name__ == "__main__":
    main()

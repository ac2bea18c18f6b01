"""Benchmark of alert delivery (issue 12): 1,000 alert events to a local receiver.

    python bench/alerts_bench.py                  # both databases, 1,000 events, 3 repeats
    python bench/alerts_bench.py --db postgresql --count 2000 --repeat 1
    BENCH_PG_URL=postgresql://... python bench/alerts_bench.py

For each database (a SQLite file, a PostgreSQL schema of its own) it records `--count`
events with one webhook target each, the way a runner does (state-free `alert_test`
events through jobs.alerts, a delivery row each), then drains them with
jobs.alerts.deliver_due exactly as the runner's delivery thread does (claims with a lease,
one POST per delivery, each row marked when the target answers), checks that the receiver
got each event once, signed, and that every row is `sent`, and prints events per second;
the median of `--repeat` runs is the figure.

The receiver (http.server) runs in a process of its own, so it does not share the
deliverer's interpreter lock: what is measured is the delivery, not the test server.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
SECRET = "bench-secret"
NOW = datetime(2026, 11, 28, 0, 0, tzinfo=UTC)


def serve(out: str) -> None:
    """The receiver: counts POSTs by event key, checks each signature; writes the tally to
    `out` on SIGTERM."""
    import signal
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: dict[str, int] = {}
    bad = [0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, self.headers.get("X-StoreFlow-Signature", "")):
                bad[0] += 1
            key = json.loads(body)["text"]
            seen[key] = seen.get(key, 0) + 1
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    ThreadingHTTPServer.request_queue_size = 128  # the default 5 drops parallel connects
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)

    def stop(*_: Any) -> None:
        Path(out).write_text(json.dumps({"seen": seen, "bad": bad[0]}))
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()


def one_run(db: str, count: int, pg_url: str) -> dict[str, Any]:
    import sqlalchemy as sa

    from jobs import alerts
    from jobs.db import make_engine, ops_alert_deliveries, platform, transaction
    from jobs.migrate import upgrade
    from jobs.settings import Overrides, load_settings

    tally = Path(tempfile.mkdtemp()) / "tally.json"
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(tally)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    schema = None
    admin = None
    if db == "sqlite":
        url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.sqlite3'}"
    else:
        schema = f"bench_alerts_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"),
                                 isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        url = (pg_url.replace("postgresql://", "postgresql+psycopg://")
               + f"?options=-csearch_path%3D{schema}")
    engine = make_engine(url)
    try:
        platform.create_all(engine)
        upgrade(engine)
        settings = load_settings(Overrides(database_url=url), env={})
        settings = replace(settings, alerts=replace(
            settings.alerts, webhooks=(f"http://127.0.0.1:{port}/hooks/bench-secret-path",),
            webhook_secret=SECRET))
        t0 = time.perf_counter()
        for i in range(count):
            payload = {"event": "alert_test", "job": None, "run_id": None, "status": None,
                       "scheduled_for": None, "errors": 0, "error": None, "first_errors": [],
                       "summary": {}, "at": "2026-11-28T00:00:00.000Z", "text": f"event {i}"}
            with transaction(engine) as conn:
                alerts._record(conn, settings, event="alert_test", key=f"bench:{i}",
                               job_id=None, run_id=None, payload=payload, now=NOW)
        recorded = time.perf_counter() - t0
        t1 = time.perf_counter()
        result = alerts.deliver_due(engine, settings, worker_id="bench")
        delivered = time.perf_counter() - t1
        with engine.connect() as c:
            statuses = c.execute(sa.select(ops_alert_deliveries.c.status)).scalars().all()
    finally:
        proc.terminate()
        proc.wait(10)
        engine.dispose()
        if admin is not None:
            with admin.connect() as c:
                c.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
            admin.dispose()
    got = json.loads(tally.read_text())
    ok = (result.sent == count and statuses == ["sent"] * count and got["bad"] == 0
          and len(got["seen"]) == count and set(got["seen"].values()) == {1})
    return {"recorded_s": recorded, "delivered_s": delivered, "ok": ok}


def _hang(port_file: str) -> None:
    """A receiver that accepts connections and never answers."""
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(512)
    Path(port_file).write_text(str(srv.getsockname()[1]))
    held = []
    while True:
        conn, _ = srv.accept()
        held.append(conn)


def latency(seconds: float, db: str, pg_url: str) -> None:
    """p99 slot fire latency of a runner firing every second, with no alert target and
    with a target that never answers (100 deliveries queued for it, plus the job's own
    failing event), each for `seconds`."""
    import signal

    import sqlalchemy as sa

    from jobs import alerts
    from jobs.db import make_engine, platform, tenants, transaction
    from jobs.migrate import upgrade
    from jobs.settings import Overrides, load_settings

    print(f"slot fire latency, {db}, expiry-checker every second (each run partial: one "
          f"tenant with a bad address), {seconds:g} s per mode")
    for mode in ("no alert target", "a target that never answers"):
        tmp = Path(tempfile.mkdtemp())
        schema = admin = None
        if db == "sqlite":
            url = f"sqlite:///{tmp / 'bench.sqlite3'}"
        else:
            schema = f"bench_alerts_{uuid.uuid4().hex[:8]}"
            admin = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"),
                                     isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
            url = (pg_url.replace("postgresql://", "postgresql+psycopg://")
                   + f"?options=-csearch_path%3D{schema}")
        engine = make_engine(url)
        platform.create_all(engine)
        upgrade(engine)
        with engine.begin() as c:
            c.execute(tenants.insert().values(id="bad", name="Bad", email="not an email",
                                              status="active", expire_date=NOW))
        config = tmp / "schedules.toml"
        lines = ['[jobs.expiry-checker]', 'schedule = "* * * * * *"', ""]
        for other in ("payment-reminders", "analytics-aggregate", "cleanup"):
            lines += [f"[jobs.{other}]", "enabled = false", ""]
        hang = None
        if mode != "no alert target":
            port_file = tmp / "port"
            hang = subprocess.Popen([sys.executable, __file__, "--hang", str(port_file)])
            while not port_file.exists() or not port_file.read_text():
                time.sleep(0.05)
            hook = f"http://127.0.0.1:{port_file.read_text()}/hooks/never"
            lines += ["[alerts]", f'webhooks = ["{hook}"]', ""]
            settings = replace(load_settings(Overrides(database_url=url), env={}))
            settings = replace(settings, alerts=replace(settings.alerts, webhooks=(hook,)))
            for i in range(100):
                with transaction(engine) as conn:
                    alerts._record(conn, settings, event="alert_test", key=f"q:{i}",
                                   job_id=None, run_id=None, payload={"text": str(i)}, now=NOW)
        config.write_text("\n".join(lines) + "\n")
        log = tmp / "runner.log"
        env = {**os.environ, "DATABASE_URL": url}
        with log.open("w") as fh:
            runner = subprocess.Popen([sys.executable, "-m", "console.cli", "--config",
                                       str(config), "run", "--log-format", "json"],
                                      env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=fh)
            time.sleep(seconds)
            runner.send_signal(signal.SIGTERM)
            runner.wait(60)
        if hang is not None:
            hang.kill()
        events = [json.loads(line) for line in log.read_text().splitlines()]
        late = sorted(e["late_s"] * 1000 for e in events if e["event"] == "slot-claimed")
        p99 = late[min(len(late) - 1, int(len(late) * 0.99))]
        timeouts = sum(e["event"] == "alert-retry" for e in events)
        print(f"  {mode}: {len(late)} slots, late median {statistics.median(late):.0f} ms, "
              f"p99 {p99:.0f} ms, max {late[-1]:.0f} ms; delivery timeouts meanwhile: {timeouts}")
        engine.dispose()
        if admin is not None:
            with admin.connect() as c:
                c.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
            admin.dispose()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--latency", type=float, metavar="SECONDS",
                   help="instead: slot fire latency with and without a hanging target")
    p.add_argument("--serve", metavar="TALLY", help=argparse.SUPPRESS)
    p.add_argument("--hang", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    if args.hang:
        _hang(args.hang)
        return 0
    pg_url = os.environ.get("BENCH_PG_URL", DEFAULT_PG_URL)
    if args.latency:
        for db in ("sqlite", "postgresql") if args.db == "both" else (args.db,):
            latency(args.latency, db, pg_url)
        return 0
    failed = False
    for db in ("sqlite", "postgresql") if args.db == "both" else (args.db,):
        runs = [one_run(db, args.count, pg_url) for _ in range(args.repeat)]
        took = statistics.median(r["delivered_s"] for r in runs)
        rec = statistics.median(r["recorded_s"] for r in runs)
        ok = all(r["ok"] for r in runs)
        failed |= not ok
        each = ", ".join(f"{r['delivered_s']:.2f}" for r in runs)
        print(f"{db}: {args.count} events, one webhook each: recorded in {rec:.2f} s; "
              f"delivered in {took:.2f} s median of {args.repeat} "
              f"({args.count / took:.0f}/s; runs {each}); "
              f"each received once, signed, every row sent: {ok}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

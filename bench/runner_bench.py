"""The runner against APScheduler 3's BackgroundScheduler, side by side, same schedule.

    python bench/runner_bench.py [--seconds 60] [--idle-seconds 20]

Both schedulers run as their own processes at the same time, fire every second, and do
the same work on each slot: an expiry-checker run on an empty SQLite database of their
own, through the same `jobs.runs.execute` path. Reported for each:

- fire latency after the slot: for the runner, the claim (ops_runs.started_at -
  scheduled_for); for APScheduler, the job's submission to its executor
  (EVENT_JOB_SUBMITTED time - scheduled_run_time): both "the scheduler decided to fire";
- CPU time over the busy window (after start-up), and peak RSS (psutil, sampled);
- idle CPU: a second pair of processes whose only slot is a year away, over --idle-seconds
  after start-up.

Targets: p99 latency < 1 s, idle CPU < 1% of a core, peak RSS <= APScheduler's + 60 MB.
Not a test: the figures depend on the machine and its load, printed with the result.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

EVERY_SECOND = "* * * * * *"  # croniter order: seconds last
YEARLY = "0 0 1 1 * 0"
JOB = "expiry-checker"
OTHERS = ("payment-reminders", "analytics-aggregate", "cleanup")


# --- the APScheduler side (runs as a child process) ------------------------------------------


def apscheduler_child(database_url: str, out: Path, schedule: str) -> int:
    from apscheduler.events import EVENT_JOB_SUBMITTED, JobSubmissionEvent
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.cron import CronTrigger

    from jobs import runs
    from jobs.db import make_engine
    from jobs.records import Trigger
    from jobs.settings import Overrides, load_settings

    engine = make_engine(database_url)
    settings = load_settings(Overrides(database_url=database_url), env={})
    lines = out.open("a")
    lock = threading.Lock()

    def on_submitted(event: JobSubmissionEvent) -> None:
        now = time.time()
        for slot in event.scheduled_run_times:
            with lock:
                lines.write(json.dumps({"slot": slot.timestamp(), "latency": now - slot.timestamp()})
                            + "\n")
                lines.flush()

    def fire() -> None:
        slot = datetime.now(UTC).replace(microsecond=0)
        runs.execute(engine, settings, JOB, now=slot, started_by="apscheduler",
                     trigger=Trigger.SCHEDULE)

    trigger = (CronTrigger(second="*", timezone=UTC) if schedule == EVERY_SECOND
               else CronTrigger(month=1, day=1, hour=0, minute=0, second=0, timezone=UTC))
    scheduler = BackgroundScheduler(timezone=UTC)
    scheduler.add_listener(on_submitted, EVENT_JOB_SUBMITTED)
    scheduler.add_job(fire, trigger, id=JOB, max_instances=1, coalesce=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    scheduler.start()
    Path(str(out) + ".ready").touch()
    stop.wait()
    scheduler.shutdown(wait=True)
    return 0


# --- the parent ------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    ready: Path | None = None  # exists once the scheduler runs
    log: Path | None = None  # runner: ready once "runner-started" is logged
    peak_rss: int = 0
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    samples: list[float] = field(default_factory=list)

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.popen.pid)

    def is_ready(self) -> bool:
        if self.ready is not None:
            return self.ready.exists()
        assert self.log is not None
        return self.log.exists() and "runner-started" in self.log.read_text()

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)


def _sqlite(path: Path) -> str:
    from jobs.db import make_engine, platform
    from jobs.migrate import upgrade

    url = f"sqlite:///{path}"
    engine = make_engine(url)
    platform.create_all(engine)
    upgrade(engine)
    engine.dispose()
    return url


def _config(path: Path, schedule: str) -> Path:
    text = f'[jobs.{JOB}]\nschedule = "{schedule}"\n\n'
    text += "".join(f"[jobs.{o}]\nenabled = false\n\n" for o in OTHERS)
    path.write_text(text)
    return path


def _start_pair(tmp: Path, tag: str, schedule: str) -> tuple[Proc, Proc, str, Path]:
    runner_url = _sqlite(tmp / f"runner-{tag}.sqlite3")
    aps_url = _sqlite(tmp / f"aps-{tag}.sqlite3")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"),
           "DATABASE_URL": runner_url}
    log = tmp / f"runner-{tag}.log"
    with log.open("w") as err:
        runner = subprocess.Popen(
            [sys.executable, "-m", "console.cli", "--config",
             str(_config(tmp / f"{tag}.toml", schedule)), "run", "--log-format", "json"],
            env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=err)
    out = tmp / f"aps-{tag}.jsonl"
    aps = subprocess.Popen(
        [sys.executable, __file__, "--child-apscheduler", aps_url, str(out), schedule],
        env=env, cwd=tmp, stdout=subprocess.DEVNULL)
    return Proc("storeflow-ops run", runner, log=log), Proc("APScheduler", aps, ready=Path(
        str(out) + ".ready")), runner_url, out


def _watch(procs: list[Proc], seconds: float) -> None:
    """Sample RSS every 0.1 s for `seconds`, after both are ready."""
    deadline = time.monotonic() + 60
    while not all(p.is_ready() for p in procs):
        if time.monotonic() > deadline:
            raise SystemExit("a scheduler did not start within 60 s")
        time.sleep(0.05)
    for p in procs:
        p.cpu_start = p.cpu()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for p in procs:
            p.peak_rss = max(p.peak_rss, p.ps.memory_info().rss)
        time.sleep(0.1)
    for p in procs:
        p.cpu_end = p.cpu()


def _stop(procs: list[Proc]) -> None:
    for p in procs:
        p.popen.send_signal(signal.SIGTERM)
    for p in procs:
        p.popen.wait(timeout=40)


def _runner_latencies(url: str) -> tuple[list[float], dict[str, int]]:
    from sqlalchemy import select

    from jobs.db import make_engine, ops_runs

    engine = make_engine(url)
    with engine.connect() as c:
        rows = c.execute(select(ops_runs.c.scheduled_for, ops_runs.c.started_at,
                                ops_runs.c.status)).all()
    engine.dispose()
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return [(r.started_at - r.scheduled_for).total_seconds() for r in rows
            if r.started_at is not None], statuses


def _aps_latencies(out: Path) -> list[float]:
    if not out.exists():
        return []
    return [float(json.loads(line)["latency"]) for line in out.read_text().splitlines()]


def _p(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--idle-seconds", type=float, default=20)
    ap.add_argument("--child-apscheduler", nargs=3, metavar=("URL", "OUT", "SCHEDULE"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_apscheduler:
        url, out, schedule = args.child_apscheduler
        return apscheduler_child(url, Path(out), schedule)

    import apscheduler

    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="runner-bench-") as d:
        tmp = Path(d)
        runner, aps, runner_url, aps_out = _start_pair(tmp, "busy", EVERY_SECOND)
        busy = [runner, aps]
        try:
            _watch(busy, args.seconds)
        finally:
            _stop(busy)
        r_lat, r_status = _runner_latencies(runner_url)
        a_lat = _aps_latencies(aps_out)

        runner_i, aps_i, _, _ = _start_pair(tmp, "idle", YEARLY)
        idle = [runner_i, aps_i]
        try:
            _watch(idle, args.idle_seconds)
        finally:
            _stop(idle)

    def row(label: str, values: list[Any]) -> str:
        return f"{label:<34}" + "".join(f"{v:>24}" for v in values)

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.1f} ms"

    def mb(size: float) -> str:
        return f"{size / 2**20:.1f} MB"

    busy_cpu = [p.cpu_end - p.cpu_start for p in busy]
    idle_pct = [(p.cpu_end - p.cpu_start) / args.idle_seconds * 100 for p in idle]
    lines = [
        f"runner_bench: every-second schedule for {args.seconds:.0f} s, both processes side by "
        "side; each slot runs expiry-checker on an empty SQLite db",
        f"date {datetime.now(UTC):%Y-%m-%d %H:%M}Z, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores, load average at start {load[0]:.2f} {load[1]:.2f}",
        "",
        row("", ["storeflow-ops run", f"APScheduler {apscheduler.__version__}"]),
        row("slots fired", [len(r_lat), len(a_lat)]),
        row("fire latency median", [ms(statistics.median(r_lat)), ms(statistics.median(a_lat))]),
        row("fire latency p99", [ms(_p(r_lat, 99)), ms(_p(a_lat, 99))]),
        row("fire latency max", [ms(max(r_lat)), ms(max(a_lat))]),
        row(f"CPU time over {args.seconds:.0f} s",
            [f"{c:.2f} s ({c / args.seconds * 100:.1f}%)" for c in busy_cpu]),
        row("peak RSS (busy)", [mb(p.peak_rss) for p in busy]),
        row(f"idle CPU over {args.idle_seconds:.0f} s", [f"{v:.2f}% of a core" for v in idle_pct]),
        row("peak RSS (idle)", [mb(p.peak_rss) for p in idle]),
        "",
        f"runner run statuses: {dict(sorted(r_status.items()))}",
        "latency: runner = ops_runs.started_at - scheduled_for (the claim); "
        "APScheduler = EVENT_JOB_SUBMITTED - scheduled_run_time",
        "",
        "targets: p99 < 1 s: {}; idle CPU < 1% of a core: {}; peak RSS <= APScheduler + 60 MB: {}"
        .format(
            "PASS" if _p(r_lat, 99) < 1 else "FAIL",
            "PASS" if idle_pct[0] < 1 else "FAIL",
            "PASS" if runner.peak_rss <= aps.peak_rss + 60 * 2**20 else "FAIL",
        ),
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Who may end a run: only the run itself, or another process once the run's owner stopped
heartbeating. Real runner processes, a real HTTP client and the real CLI, on SQLite and
PostgreSQL.

A run is made slow by volume: expiry-checker over a few thousand tenants takes seconds,
long enough to outlive many runner ticks (the runner sweeps its orphans on each tick).

Slow (real seconds): marked `slow`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from jobs.db import ops_runs, tenants
from tests.conftest import EXE, cli, wait_until
from tests.test_http import TOKEN, free_port

pytestmark = pytest.mark.slow

JOB = "expiry-checker"
TICKING = "cleanup"  # fires every second, so the runner ticks (and sweeps) every second
# Long enough to outlast three one-second ticks on a quiet machine (2,000 took 2.3 s).
N_SLOW = 6_000


def write_config(path: Path, schedules: dict[str, str]) -> Path:
    lines: list[str] = []
    for job in ("expiry-checker", "payment-reminders", "analytics-aggregate", "cleanup"):
        lines += [f"[jobs.{job}]"]
        lines += [f'schedule = "{schedules[job]}"'] if job in schedules else ["enabled = false"]
        lines += [""]
    lines += ["[runner]", "heartbeat_interval = 0.5", "stale_after = 3", "shutdown_timeout = 20"]
    path.write_text("\n".join(lines) + "\n")
    return path


def add_tenants(engine: Engine, n: int, expire_date: datetime) -> None:
    """Active tenants past their grace at `expire_date` + grace: a run suspends each one,
    in a transaction of its own, which takes real time."""
    with engine.begin() as c:
        c.execute(tenants.insert(), [
            {"id": f"t{i:05d}", "name": f"Store {i}", "email": f"owner{i}@example.com",
             "status": "active", "expire_date": expire_date}
            for i in range(n)
        ])


class Runner:
    """`storeflow-ops run` (optionally with --http), its JSON log in a file."""

    def __init__(self, tmp_path: Path, env: dict[str, str], config: Path,
                 http_port: int | None = None) -> None:
        self.log_path = tmp_path / "runner.log"
        self._log: IO[str] = self.log_path.open("w")
        http = [] if http_port is None else ["--http", f"127.0.0.1:{http_port}"]
        self.proc = subprocess.Popen(
            [EXE, "--config", str(config), "run",
             "--log-format", "json", *http],
            env={**env, "CRON_SECRET_TOKEN": TOKEN}, cwd=tmp_path,
            stdout=subprocess.DEVNULL, stderr=self._log,
        )

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:  # aiohttp's access log is not JSON
                continue
        return out

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self._log.close()


@pytest.fixture
def runners() -> Iterator[list[Runner]]:
    started: list[Runner] = []
    yield started
    for r in started:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()


def trigger(url: str) -> tuple[int, Any]:
    req = urllib.request.Request(url, method="POST", data=b"",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def runs_of(engine: Engine, job_id: str) -> list[Any]:
    with engine.connect() as c:
        return list(c.execute(select(ops_runs).where(ops_runs.c.job_id == job_id)
                              .order_by(ops_runs.c.id)))


def running_with_progress(engine: Engine, job_id: str) -> Any:
    rows = [r for r in runs_of(engine, job_id) if r.status == "running" and r.processed > 0]
    return rows[0] if rows else None


def ticks_during(engine: Engine, start: datetime, end: datetime) -> int:
    """Slots of the ticking job fired in [start, end]: each is a runner tick, and with it
    a sweep of the runner's orphans."""
    return sum(1 for r in runs_of(engine, TICKING)
               if r.scheduled_for is not None and start <= as_utc(r.scheduled_for) <= end)


def as_utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --- a run started inside a runner is that runner's to end ---------------------------------


def test_a_slow_http_run_outlives_the_runners_ticks_and_holds_its_lock(
        engine: Engine, env: dict[str, str], tmp_path: Path, runners: list[Runner]) -> None:
    add_tenants(engine, N_SLOW, datetime(2026, 1, 1, tzinfo=UTC))
    config = write_config(tmp_path / "schedules.toml", {TICKING: "* * * * * */1"})
    port = free_port()
    runner = Runner(tmp_path, env, config, port)
    runners.append(runner)
    wait_until("the runner ticking", lambda: len(runs_of(engine, TICKING)) >= 2, 60)

    url = f"http://127.0.0.1:{port}/api/admin/subscriptions/expiry-checker"
    with subprocess.Popen([sys.executable, "-c", _CLIENT, url, TOKEN],
                          stdout=subprocess.PIPE, text=True) as client:
        run = wait_until("the HTTP run", lambda: next(iter(runs_of(engine, JOB)), None), 60)
        # A second trigger while it runs is refused: the job's lock is still the first run's.
        second = trigger(url)
        assert second == (409, {"message": "Job already running", "job": JOB,
                                "run_id": run.id})
        # Watch it through several of the runner's ticks: it stays `running`.
        seen_ticks = 0
        while client.poll() is None and seen_ticks < 3:
            now = datetime.now(UTC)
            row = next(r for r in runs_of(engine, JOB) if r.id == run.id)
            if row.status != "running":
                break
            seen_ticks = ticks_during(engine, as_utc(run.started_at), now)
            time.sleep(0.2)
        out, _ = client.communicate(timeout=300)
    status, body = json.loads(out)
    assert runner.stop() == 0

    rows = runs_of(engine, JOB)
    assert [(r.id, r.trigger, r.status) for r in rows] == [(run.id, "http", "succeeded")]
    assert status == 200 and body["run_id"] == run.id and body["status"] == "succeeded"
    assert rows[0].processed == N_SLOW and rows[0].error is None
    assert ticks_during(engine, as_utc(run.started_at), as_utc(rows[0].finished_at)) >= 3
    assert not [e for e in runner.events() if e["event"] == "run-interrupted"]


# A client in its own process, so the test can watch the run while the request is open.
_CLIENT = """
import json, sys, urllib.error, urllib.request
req = urllib.request.Request(sys.argv[1], method="POST", data=b"",
                             headers={"Authorization": "Bearer " + sys.argv[2]})
try:
    with urllib.request.urlopen(req, timeout=300) as resp:
        print(json.dumps([resp.status, json.loads(resp.read())]))
except urllib.error.HTTPError as exc:
    print(json.dumps([exc.code, json.loads(exc.read())]))
"""


def test_a_slow_cli_run_racing_slots_of_its_job_keeps_its_lock(
        engine: Engine, env: dict[str, str], tmp_path: Path, runners: list[Runner]) -> None:
    # The tenants expire in a few minutes: the runner's slots (now) have nothing to do, the
    # CLI run at --now (later, but within the few minutes a real run may look ahead of the
    # clock) has every one of them.
    base = datetime.now(UTC)
    later = base + timedelta(minutes=4, seconds=30)
    add_tenants(engine, N_SLOW, base + timedelta(minutes=3, seconds=30))
    config = write_config(tmp_path / "schedules.toml", {JOB: "* * * * * */1"})
    runner = Runner(tmp_path, env, config)
    runners.append(runner)
    wait_until("the runner firing slots", lambda: len(runs_of(engine, JOB)) >= 2, 60)

    manual: subprocess.Popen[str] | None = None
    # Files, not pipes: the test reads the output only at the end, and a run's progress
    # lines and report would fill a pipe and block the CLI before it exits.
    out_file, err_file = tmp_path / "manual.out", tmp_path / "manual.err"
    while manual is None:  # the CLI's start must not collide with a slot in flight
        with out_file.open("w") as out_w, err_file.open("w") as err_w:
            proc = subprocess.Popen(
                [EXE, "trigger", JOB, "--now", later.isoformat(), "--json"], env=env,
                cwd=tmp_path, stdout=out_w, stderr=err_w, text=True)
        found = wait_until("the CLI run in progress, or refused",
                           lambda p=proc: p.poll() is not None
                           or running_with_progress(engine, JOB), 60)
        if found is True and proc.returncode == 4:
            continue
        manual = proc
    run = running_with_progress(engine, JOB)
    assert run is not None and run.trigger == "manual"

    refused = cli(env, "trigger", JOB, cwd=tmp_path)
    assert refused.returncode == 4, refused.stderr
    seen_skips = 0
    while manual.poll() is None and seen_skips < 3:
        seen_skips = sum(1 for r in runs_of(engine, JOB)
                         if r.status == "skipped" and r.error == f"previous run {run.id} "
                                                                  "was still running")
        time.sleep(0.2)
    manual.wait(timeout=300)
    out, err = out_file.read_text(), err_file.read_text()
    assert runner.stop() == 0

    assert manual.returncode == 0, err
    report = json.loads(out)
    assert report["run_id"] == run.id and report["status"] == "succeeded"
    rows = {r.id: r for r in runs_of(engine, JOB)}
    assert rows[run.id].status == "succeeded" and rows[run.id].processed == N_SLOW
    skipped = [r for r in rows.values() if r.status == "skipped"]
    assert len(skipped) >= 3
    assert all(r.error == f"previous run {run.id} was still running" for r in skipped)
    assert not [r for r in rows.values() if r.status == "interrupted"]


# --- a dead runner's run is stale at once ------------------------------------------------------


def test_a_killed_runners_run_shows_as_stale_and_the_next_trigger_interrupts_it(
        engine: Engine, env: dict[str, str], tmp_path: Path, runners: list[Runner]) -> None:
    add_tenants(engine, N_SLOW, datetime(2026, 1, 1, tzinfo=UTC))
    config = write_config(tmp_path / "schedules.toml", {JOB: "* * * * * */3"})
    runner = Runner(tmp_path, env, config)
    runners.append(runner)
    victim = wait_until("a slot run in progress", lambda: running_with_progress(engine, JOB),
                        60)
    runner.stop(signal.SIGKILL)
    # No runner is left to sweep: the run stays `running` in history, but every face
    # must say it is stale as soon as its runner counts as dead.
    wait_until("the runner counted dead",
               lambda: cli(env, "status", "--json", cwd=tmp_path).returncode == 1, 30)

    status = cli(env, "status", "--json", cwd=tmp_path)
    job = next(j for j in json.loads(status.stdout)["jobs"] if j["job"] == JOB)
    assert job == {**job, "running": True, "run_id": victim.id, "stale": True}
    human = cli(env, "status", cwd=tmp_path).stdout
    line = next(ln for ln in human.splitlines() if ln.startswith(JOB))
    assert f"run {victim.id}, stale (its runner stopped heartbeating)" in line

    jobs = cli(env, "jobs", "--json", cwd=tmp_path)
    row = next(j for j in json.loads(jobs.stdout) if j["job"] == JOB)
    assert row["last_run"]["run_id"] == victim.id and row["last_run"]["stale"] is True
    line = next(ln for ln in cli(env, "jobs", cwd=tmp_path).stdout.splitlines()
                if ln.startswith(JOB))
    assert "stale (its runner stopped heartbeating)" in line and "running" not in line

    from jobs.overview import load_overview
    from jobs.settings import Overrides, load_settings

    settings = load_settings(Overrides(config=str(config)), env=env, cwd=tmp_path)
    overview = load_overview(engine, settings, None, datetime.now(UTC))
    assert overview.running[JOB].run_id == victim.id and victim.id in overview.stale

    # The next trigger of the job is a process that can: it interrupts the dead run,
    # takes over the lock and runs.
    done = cli(env, "trigger", JOB, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {r.id: r for r in runs_of(engine, JOB)}
    assert rows[victim.id].status == "interrupted" and "heartbeat" in rows[victim.id].error
    after = json.loads(cli(env, "status", "--json", cwd=tmp_path).stdout)
    assert next(j for j in after["jobs"] if j["job"] == JOB)["stale"] is False

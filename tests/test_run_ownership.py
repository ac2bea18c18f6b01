"""Who may end a run: only the run itself, or another process once the run's owner stopped
heartbeating. Real runner processes, a real HTTP client and the real CLI, on SQLite and
PostgreSQL.

A run is kept going for as long as the test watches it (the runner sweeps its orphans on
each tick): on PostgreSQL by a row lock the test holds on one of its tenants, on SQLite by
pausing the process that runs it, or by volume (a few thousand tenants) where that process
must go on ticking (tests/row_gate.py).

Slow (real seconds): marked `slow`.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from jobs.db import ops_runners, ops_runs
from tests.conftest import EXE, cli, start, wait_until
from tests.row_gate import RunHold
from tests.test_http import TOKEN, free_port

pytestmark = pytest.mark.slow

JOB = "expiry-checker"
TICKING = "cleanup"  # fires every second, so the runner ticks (and sweeps) every second
# SQLite's volume for a runner's own run: long enough to outlast three one-second ticks on
# a quiet machine (2,000 took 2.3 s).
N_TICKS = 6_000
STALE_AFTER = 3.0
# Where no process dies: on SQLite a long run's writes can hold off a heartbeat for seconds
# on a loaded machine, a paused process sends none, and a run judged dead is not what
# those tests are about.
STALE_AFTER_ALIVE = 60.0


def write_config(path: Path, schedules: dict[str, str],
                 stale_after: float = STALE_AFTER) -> Path:
    lines: list[str] = []
    for job in ("expiry-checker", "payment-reminders", "analytics-aggregate", "cleanup"):
        lines += [f"[jobs.{job}]"]
        lines += [f'schedule = "{schedules[job]}"'] if job in schedules else ["enabled = false"]
        lines += [""]
    lines += ["[runner]", "heartbeat_interval = 0.5", f"stale_after = {stale_after:g}",
              "shutdown_timeout = 20"]
    path.write_text("\n".join(lines) + "\n")
    return path


class Runner:
    """`storeflow-ops run` (optionally with --http), its JSON log in a file."""

    def __init__(self, tmp_path: Path, env: dict[str, str], config: Path,
                 http_port: int | None = None) -> None:
        self.log_path = tmp_path / "runner.log"
        self._log: IO[str] = self.log_path.open("w")
        http = [] if http_port is None else ["--http", f"127.0.0.1:{http_port}"]
        self.proc = start(["--config", str(config), "run", "--log-format", "json", *http],
                          {**env, "CRON_SECRET_TOKEN": TOKEN}, tmp_path, stderr=self._log)

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
def hold_run(engine: Engine, db_url: str) -> Iterator[Callable[..., RunHold]]:
    """Tenants for a run the test keeps going (tests/row_gate.py), given their expiry date
    and, for a run SQLite must keep going by volume, their number."""
    made: list[RunHold] = []

    def make(expire_date: datetime, n_volume: int | None = None) -> RunHold:
        made.append(RunHold(engine, db_url, expire_date, n_volume))
        return made[-1]

    yield make
    for hold in made:
        hold.let_go()


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


def running(engine: Engine, job_id: str) -> Any:
    return next((r for r in runs_of(engine, job_id) if r.status == "running"), None)


def ticks_during(engine: Engine, start: datetime, end: datetime) -> int:
    """Slots of the ticking job fired in [start, end]: each is a runner tick, and with it
    a sweep of the runner's orphans."""
    return sum(1 for r in runs_of(engine, TICKING)
               if r.scheduled_for is not None and start <= as_utc(r.scheduled_for) <= end)


def heartbeat_age(engine: Engine, runner_id: str) -> float:
    with engine.connect() as c:
        beat = c.execute(select(ops_runners.c.heartbeat_at)
                         .where(ops_runners.c.id == runner_id)).scalar_one()
    return (datetime.now(UTC) - as_utc(beat)).total_seconds()


def as_utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --- a run started inside a runner is that runner's to end ---------------------------------


@pytest.mark.slow(seconds=10)
def test_a_slow_http_run_outlives_the_runners_ticks_and_holds_its_lock(
        engine: Engine, env: dict[str, str], tmp_path: Path, runners: list[Runner],
        hold_run: Callable[..., RunHold]) -> None:
    hold = hold_run(datetime(2026, 1, 1, tzinfo=UTC), N_TICKS)
    config = write_config(tmp_path / "schedules.toml", {TICKING: "* * * * * */1"},
                          STALE_AFTER_ALIVE)
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
        def three_ticks_watched() -> bool:
            row = next(r for r in runs_of(engine, JOB) if r.id == run.id)
            return (client.poll() is not None or row.status != "running"
                    or ticks_during(engine, as_utc(run.started_at), datetime.now(UTC)) >= 3)

        wait_until("three ticks during the run", three_ticks_watched, 120)
        hold.let_go()
        out, _ = client.communicate(timeout=300)
    status, body = json.loads(out)
    assert runner.stop() == 0

    rows = runs_of(engine, JOB)
    assert [(r.id, r.trigger, r.status) for r in rows] == [(run.id, "http", "succeeded")]
    assert status == 200 and body["run_id"] == run.id and body["status"] == "succeeded"
    assert rows[0].processed == hold.n and rows[0].error is None
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


@pytest.mark.slow(seconds=8)
def test_a_slow_cli_run_racing_slots_of_its_job_keeps_its_lock(
        engine: Engine, env: dict[str, str], tmp_path: Path, runners: list[Runner],
        hold_run: Callable[..., RunHold]) -> None:
    # The tenants expire in a few minutes: the runner's slots (now) have nothing to do, the
    # CLI run at --now (later, but within the few minutes a real run may look ahead of the
    # clock) has every one of them.
    base = datetime.now(UTC)
    later = base + timedelta(minutes=4, seconds=30)
    hold = hold_run(base + timedelta(minutes=3, seconds=30))
    config = write_config(tmp_path / "schedules.toml", {JOB: "* * * * * */1"},
                          STALE_AFTER_ALIVE)
    runner = Runner(tmp_path, env, config)
    runners.append(runner)
    wait_until("the runner firing slots", lambda: len(runs_of(engine, JOB)) >= 2, 60)

    def manual_run() -> Any:
        return next((r for r in runs_of(engine, JOB)
                     if r.status == "running" and r.trigger == "manual"), None)

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
                           lambda p=proc: p.poll() is not None or hold.waited_on()
                           or (not hold.gated and manual_run() is not None), 60)
        if found is True and proc.returncode == 4:
            continue
        manual = proc
    run = hold.in_progress(manual_run, trigger="manual")
    assert run is not None and run.trigger == "manual"

    refused = cli(env, "trigger", JOB, cwd=tmp_path)
    assert refused.returncode == 4, refused.stderr

    def skips_seen() -> int:
        return sum(1 for r in runs_of(engine, JOB)
                   if r.status == "skipped" and r.error == f"previous run {run.id} "
                                                         "was still running")

    wait_until("three slots skipped during the run",
               lambda: manual.poll() is not None or skips_seen() >= 3, 120)
    hold.let_go()
    manual.wait(timeout=300)
    out, err = out_file.read_text(), err_file.read_text()
    assert runner.stop() == 0

    assert manual.returncode == 0, err
    report = json.loads(out)
    assert report["run_id"] == run.id and report["status"] == "succeeded"
    rows = {r.id: r for r in runs_of(engine, JOB)}
    assert rows[run.id].status == "succeeded" and rows[run.id].processed == hold.n
    skipped = [r for r in rows.values() if r.status == "skipped"]
    assert sum(r.error == f"previous run {run.id} was still running" for r in skipped) >= 3
    # On a loaded machine a slot's own run can outlast the second before the next slot, whose
    # skip then names that run: a slot's, over before the CLI run began or begun after it
    # ended, never overlapping it. Every other skip names the CLI run.
    cli_run = rows[run.id]
    for r in skipped:
        named = re.fullmatch(r"previous run (\d+) was still running", r.error or "")
        assert named is not None, r.error
        other = rows[int(named.group(1))]
        assert other.id == run.id or (other.trigger == "schedule" and (
            other.finished_at <= cli_run.started_at
            or other.started_at >= cli_run.finished_at)), (r, other, cli_run)
    assert not [r for r in rows.values() if r.status == "interrupted"]


# --- a dead runner's run is stale at once ------------------------------------------------------


@pytest.mark.slow(seconds=10)
def test_a_killed_runners_run_shows_as_stale_and_the_next_trigger_interrupts_it(
        engine: Engine, env: dict[str, str], tmp_path: Path, runners: list[Runner],
        hold_run: Callable[..., RunHold]) -> None:
    hold = hold_run(datetime(2026, 1, 1, tzinfo=UTC))
    config = write_config(tmp_path / "schedules.toml", {JOB: "* * * * * */3"})
    runner = Runner(tmp_path, env, config)
    runners.append(runner)
    victim = hold.in_progress(lambda: running(engine, JOB))
    runner.stop(signal.SIGKILL)
    # PostgreSQL: the killed run's transaction, never committed, rolls back; SQLite: it
    # was paused between two of its transactions.
    hold.let_go()
    # No runner is left to sweep: the run stays `running` in history, but every face
    # must say it is stale as soon as its runner counts as dead.
    # Watched in the database (a `status` process per poll is slow on a loaded machine);
    # `status` itself must then say so.
    wait_until("the runner's heartbeat older than stale_after",
               lambda: heartbeat_age(engine, victim.runner_id) > STALE_AFTER, 30)

    status = cli(env, "status", "--json", cwd=tmp_path)
    assert status.returncode == 1, status.stderr  # no runner alive
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

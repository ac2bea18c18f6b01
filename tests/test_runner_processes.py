"""Real `storeflow-ops run` processes on one database: every slot exactly once across
runners, a SIGKILLed runner's slot retried by another without a second email, and a
SIGTERM that stops cleanly with the run marked interrupted.

Slow (real seconds): marked `slow`.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from jobs.db import ops_email_outbox, ops_runners, ops_runs, tenants
from jobs.timeutil import utc_now
from tests.conftest import cli, start, wait_until
from tests.row_gate import RunHold, add_tenants, run_hold
from tests.smtp_sink import Sink, smtp_server

pytestmark = pytest.mark.slow

JOB = "expiry-checker"
OTHERS = ("payment-reminders", "analytics-aggregate", "cleanup")


def write_config(path: Path, schedule: str, *, heartbeat: float = 0.5,
                 stale_after: float = 3) -> Path:
    lines = [f'[jobs.{JOB}]', f'schedule = "{schedule}"', ""]
    for other in OTHERS:
        lines += [f"[jobs.{other}]", "enabled = false", ""]
    lines += ["[runner]", f"heartbeat_interval = {heartbeat}", f"stale_after = {stale_after}",
              "shutdown_timeout = 20"]
    path.write_text("\n".join(lines) + "\n")
    return path


class Runner:
    """One `storeflow-ops run` process, its stderr in a file."""

    def __init__(self, tmp_path: Path, env: dict[str, str], config: Path, name: str) -> None:
        self.log_path = tmp_path / f"{name}.log"
        self._log: IO[str] = self.log_path.open("w")
        self.proc = start(["--config", str(config), "run", "--log-format", "json"], env,
                          tmp_path, stderr=self._log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Runner]]:
    started: list[Runner] = []

    def start(env: dict[str, str], config: Path, name: str) -> Runner:
        r = Runner(tmp_path, env, config, name)
        started.append(r)
        return r

    yield start
    for r in started:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()



def alive_runners(engine: Engine, pids: set[int]) -> int:
    cutoff = utc_now() - timedelta(seconds=3)
    with engine.connect() as c:
        rows = c.execute(select(ops_runners.c.pid).where(
            ops_runners.c.kind == "runner", ops_runners.c.stopped_at.is_(None),
            ops_runners.c.heartbeat_at >= cutoff)).scalars().all()
    return len(pids & set(rows))


def slot_runs(engine: Engine) -> list[Any]:
    with engine.connect() as c:
        return list(c.execute(select(ops_runs).where(ops_runs.c.job_id == JOB).order_by(
            ops_runs.c.scheduled_for, ops_runs.c.attempt)))


def with_password(url: str) -> str:
    """The same database with a password in its URL (trust auth ignores it), so the test can
    check that it never reaches a log line."""
    if url.startswith("postgresql+psycopg://postgres@"):
        return url.replace("postgres@", "postgres:pg-secret-pw@", 1)
    return url


@pytest.mark.slow(seconds=22)
def test_every_slot_runs_exactly_once_across_runners(
        engine: Engine, db_url: str, env: dict[str, str], tmp_path: Path,
        spawn: Callable[..., Runner]) -> None:
    postgres = engine.dialect.name == "postgresql"
    n = 3 if postgres else 2
    config = write_config(tmp_path / "schedules.toml", "* * * * * */2")
    env = {**env, "DATABASE_URL": with_password(db_url),
           "SMTP_URL": "smtp://mailer:smtp-secret-pw@127.0.0.1:1",
           "CRON_SECRET_TOKEN": "token-secret-0123456789"}
    runners = [spawn(env, config, f"runner{i}") for i in range(n)]
    pids = {r.pid for r in runners}
    wait_until(f"{n} runners alive", lambda: alive_runners(engine, pids) == n)

    window_start = utc_now()
    time.sleep(20)
    window_end = utc_now()
    status = cli(env, "--config", str(config), "status", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["runner_alive"] is True

    codes = [r.stop() for r in runners]
    assert codes == [0] * n

    expected = []
    slot = window_start.replace(microsecond=0) + timedelta(seconds=1)
    while slot <= window_end - timedelta(seconds=1):
        if slot.second % 2 == 0:
            expected.append(slot)
        slot += timedelta(seconds=1)
    rows = slot_runs(engine)
    in_window = [r for r in rows if window_start < r.scheduled_for <= expected[-1]]
    assert [r.scheduled_for for r in in_window] == expected  # one row per slot, no gap
    assert {(r.status, r.attempt, r.trigger) for r in in_window} == {
        ("succeeded", 1, "schedule")}
    assert not [r for r in rows if r.status == "missed"]
    assert len({r.runner_id for r in rows}) >= 1

    logs = [r.log_path.read_text() for r in runners]
    for text in logs:
        assert "pg-secret-pw" not in text and "smtp-secret-pw" not in text
        assert "token-secret" not in text
    events = [e for r in runners for e in r.events()]  # every line is one JSON event
    claimed = [e for e in events if e["event"] == "slot-claimed"]
    assert len(claimed) == len({e["slot"] for e in claimed})  # no slot claimed twice
    assert sum(e["event"] == "runner-stopped" for e in events) == n

    after = cli(env, "--config", str(config), "status", cwd=tmp_path)
    assert after.returncode == 1  # no runner alive any more


def running_run(engine: Engine) -> Any:
    return next((r for r in slot_runs(engine) if r.status == "running"), None)


@pytest.fixture
def hold(engine: Engine, db_url: str) -> Iterator[RunHold]:
    with run_hold(engine, db_url, datetime(2026, 1, 1, tzinfo=UTC)) as held:
        yield held


@pytest.mark.slow(seconds=11)
def test_sigkill_mid_run_another_runner_retries_the_slot_without_a_second_email(
        engine: Engine, env: dict[str, str], tmp_path: Path,
        spawn: Callable[..., Runner], hold: RunHold) -> None:
    # Every 5 seconds: on SQLite, which serialises writes, a slot's claim may wait seconds
    # behind the retry's tenants on a loaded machine; a gap shorter than that wait would
    # record the slot before it as missed.
    config = write_config(tmp_path / "schedules.toml", "* * * * * */5")
    # Two runners from the start: whichever claims the first slot is killed mid-run, and a
    # live runner is there for every slot, so none is missed while a second one starts.
    both = [spawn(env, config, f"runner{i}") for i in range(2)]
    wait_until("2 runners alive", lambda: alive_runners(engine, {r.pid for r in both}) == 2, 60)
    victim = hold.in_progress(lambda: running_run(engine))
    with engine.connect() as c:
        victim_pid = c.execute(select(ops_runners.c.pid).where(
            ops_runners.c.id == victim.runner_id)).scalar_one()
    first, second = sorted(both, key=lambda r: r.pid != victim_pid)
    first.stop(signal.SIGKILL)
    # PostgreSQL: the killed run's session may still wait on the gate; let go: its
    # transaction, never committed, rolls back. SQLite: it was paused between two of its
    # transactions, and SIGKILL ends a stopped process as any other.
    hold.let_go()

    retry = wait_until("the slot's retry to finish", lambda: next(
        (r for r in slot_runs(engine) if r.scheduled_for == victim.scheduled_for
         and r.attempt == 2 and r.status != "running"), None), 90)
    assert second.stop() == 0

    killed = next(r for r in slot_runs(engine) if r.id == victim.id)
    assert killed.status == "interrupted" and "heartbeat" in killed.error
    assert 0 < killed.processed < hold.n
    assert retry.status == "succeeded" and retry.trigger == "schedule"
    assert retry.reference_time == victim.scheduled_for
    with engine.connect() as c:
        statuses: dict[str, int] = dict(c.execute(select(tenants.c.status, func.count())
                                  .group_by(tenants.c.status)).all())
        per_tenant = c.execute(select(ops_email_outbox.c.tenant_id, func.count())
                               .group_by(ops_email_outbox.c.tenant_id)).all()
    assert statuses == {"suspended": hold.n}
    assert len(per_tenant) == hold.n and {n for _, n in per_tenant} == {1}
    assert any(e["event"] == "run-interrupted" and e["run_id"] == victim.id
               for e in second.events())
    assert not [r for r in slot_runs(engine) if r.status == "missed"]


@pytest.mark.slow(seconds=4)
def test_sigterm_mid_run_exits_0_and_marks_the_run_interrupted(
        engine: Engine, env: dict[str, str], tmp_path: Path,
        spawn: Callable[..., Runner], hold: RunHold) -> None:
    config = write_config(tmp_path / "schedules.toml", "* * * * * */3")
    runner = spawn(env, config, "runner")
    victim = hold.in_progress(lambda: running_run(engine))

    sent = time.monotonic()
    runner.proc.send_signal(signal.SIGTERM)
    if not hold.gated:  # SQLite: the paused runner takes the signal once it goes on
        hold.let_go()
    # Held by the gate, the run is inside a tenant's transaction: once the runner is
    # stopping, let that tenant finish (whole) and see the run stop after it.
    wait_until("the runner stopping",
               lambda: '"runner-stopping"' in runner.log_path.read_text(), 30)
    hold.let_go()
    runner.proc.wait(timeout=40)  # no second signal: that one would mean "do not wait"
    code = runner.stop()
    took = time.monotonic() - sent

    assert code == 0
    assert took < 30, f"took {took:.1f}s to exit"
    run = next(r for r in slot_runs(engine) if r.id == victim.id)
    assert run.status == "interrupted" and "shutdown" in run.error
    assert 0 < run.processed < hold.n
    with engine.connect() as c:
        emails = c.execute(select(func.count()).select_from(ops_email_outbox)).scalar_one()
        suspended = c.execute(select(func.count()).where(
            tenants.c.status == "suspended")).scalar_one()
    assert emails == suspended == run.processed  # the tenant in hand finished, whole
    assert not [r for r in slot_runs(engine) if r.status == "running"]
    events = [e["event"] for e in runner.events()]
    assert events[0] == "runner-started" and events[-1] == "runner-stopped"
    assert "runner-stopping" in events


@pytest.mark.slow(seconds=2)
def test_the_runner_delivers_the_outbox_on_its_interval(
        engine: Engine, env: dict[str, str], tmp_path: Path,
        spawn: Callable[..., Runner]) -> None:
    add_tenants(engine, 5, datetime(2026, 1, 1, tzinfo=UTC))
    config = write_config(tmp_path / "schedules.toml", "* * * * * */2")
    with config.open("a") as fh:
        fh.write("\n[outbox]\nsend_interval = 1\n")
    sink = Sink()
    with smtp_server(sink) as port:
        runner = spawn({**env, "SMTP_URL": f"smtp://127.0.0.1:{port}"}, config, "runner")
        wait_until("5 emails delivered", lambda: len(sink.received) >= 5, 60)
        assert runner.stop() == 0
    with engine.connect() as c:
        statuses = c.execute(select(ops_email_outbox.c.status)).scalars().all()
    assert statuses == ["sent"] * 5
    assert sorted(m["To"] for m in sink.messages()) == [f"owner{i}@example.com"
                                                        for i in range(5)]
    assert any(e["event"] == "outbox-drained" and e["sent"] >= 1 for e in runner.events())
    assert not [e for e in runner.events() if e["event"] == "smtp-not-configured"]


@pytest.mark.parametrize(("args", "extra_env", "code", "says"), [
    (["run", "--http", "nowhere"], {}, 2, "--http: nowhere: expected HOST:PORT"),
    (["run", "--http", "127.0.0.1:0"], {"CRON_SECRET_TOKEN": "short"}, 2,
     "CRON_SECRET_TOKEN: is 5 characters"),
    (["--config", "bad.toml", "run"], {}, 2, "bad.toml: jobs.expiry-checker.schedule"),
    (["run"], {"DATABASE_URL": "postgresql://ops:pw@127.0.0.1:1/none"}, 3,
     "database unreachable"),
])
def test_start_errors_are_one_line_with_their_exit_code(
        tmp_path: Path, args: list[str], extra_env: dict[str, str], code: int,
        says: str) -> None:
    (tmp_path / "bad.toml").write_text('[jobs.expiry-checker]\nschedule = "61 * * * *"\n')
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", **extra_env}
    done = cli(env, *args, cwd=tmp_path)
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "pw@" not in lines[0]


def test_a_runner_with_new_schedules_on_the_demo_counts_slots_from_its_start(
        tmp_path: Path, spawn: Callable[..., Runner]) -> None:
    """The demo's history was made under the default schedules. A runner started on it
    with expiry-checker every 2 seconds is a schedule change: it fires the new slots from
    its start instead of recording the hours since the demo's last run as missed slots."""
    from jobs.db import make_engine
    from jobs.demo import build_demo

    path = tmp_path / "demo.sqlite3"
    build_demo(path, 5, utc_now())
    demo = make_engine(f"sqlite:///{path}")
    env = {"DATABASE_URL": f"sqlite:///{path}", "PATH": os.environ.get("PATH", ""),
           "HOME": str(tmp_path)}
    config = write_config(tmp_path / "schedules.toml", "* * * * * */2")

    started = utc_now()
    runner = spawn(env, config, "runner")
    wait_until("a slot of the new schedule", lambda: [
        r for r in slot_runs(demo) if r.status in ("succeeded", "partial")
        and r.scheduled_for is not None and r.scheduled_for > started])
    assert runner.stop() == 0

    assert [r for r in slot_runs(demo) if r.status == "missed"] == []
    assert not [e for e in runner.events() if e["event"].startswith("missed")
                or e["event"] == "slots-missed"]
    demo.dispose()


def test_jobs_and_status_show_the_live_runners_schedule_not_the_viewers(
        engine: Engine, env: dict[str, str], tmp_path: Path,
        spawn: Callable[..., Runner]) -> None:
    """A runner started with its own --config (@daily); `jobs` and `status` run in a
    directory whose ./schedules.toml says every 5 seconds. They show what the runner will
    do, and say once that the local configuration differs."""
    slow = write_config(tmp_path / "slow.toml", "@daily")
    write_config(tmp_path / "schedules.toml", "* * * * * */5")  # the viewer's
    runner = spawn(env, slow, "runner")
    wait_until("the runner alive", lambda: alive_runners(engine, {runner.pid}) == 1)

    done = cli(env, "jobs", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith(JOB))
    assert "@daily" in line and "daily at 00:00 UTC" in line and "*/5" not in line
    tomorrow = (utc_now() + timedelta(days=1)).date()  # the next midnight, UTC
    if f"{tomorrow:%Y-%m-%d} 00:00 UTC" not in line:  # it may have struck in between
        tomorrow += timedelta(days=1)
    assert f"{tomorrow:%Y-%m-%d} 00:00 UTC" in line, line
    warnings = done.stderr.strip().splitlines()
    assert len(warnings) == 1, done.stderr
    assert "warning" in warnings[0] and str(slow) in warnings[0]
    assert f"{JOB} (runner: @daily UTC, local: * * * * * */5 UTC)" in warnings[0]

    done = cli(env, "jobs", "--json", "--count", "1", cwd=tmp_path)
    assert done.returncode == 0 and len(done.stderr.strip().splitlines()) == 1
    row = next(r for r in json.loads(done.stdout) if r["job"] == JOB)
    assert row["schedule"] == "@daily" and row["schedule_source"] == "runner"
    assert row["next_runs"] == [f"{tomorrow.isoformat()}T00:00:00+00:00"]

    done = cli(env, "status", "--json", cwd=tmp_path)
    assert done.returncode == 0 and len(done.stderr.strip().splitlines()) == 1
    job = next(j for j in json.loads(done.stdout)["jobs"] if j["job"] == JOB)
    assert job["schedule"] == "@daily" and job["schedule_source"] == "runner"

    assert runner.stop() == 0
    done = cli(env, "jobs", "--json", cwd=tmp_path)  # no live runner: the local configuration
    assert done.returncode == 0 and done.stderr == ""
    row = next(r for r in json.loads(done.stdout) if r["job"] == JOB)
    assert row["schedule"] == "* * * * * */5" and row["schedule_source"] == "local"


@pytest.mark.parametrize(("extra_env", "says"), [
    ({"SMTP_URL": "smtp://ops:mail-secret@127.0.0.1:2525/inbox"},
     "environment: SMTP_URL: 'smtp://ops:***@127.0.0.1:2525/inbox': unexpected path"),
    ({"SMTP_URL": "smtp://ops:mail-secret@127.0.0.1:port"},
     "SMTP_URL: 'smtp://ops:***@127.0.0.1:port': the port must be a number"),
    ({"SMTP_URL": "http://ops:mail-secret@127.0.0.1"}, "SMTP_URL: 'http://ops:***@127.0.0.1': "
     "expected smtp://"),
    ({"SMTP_URL": "smtp://ops:mail-secret@127.0.0.1:2525", "MAIL_FROM": "billing"},
     "environment: MAIL_FROM: 'billing' is not an address"),
])
def test_a_runner_with_malformed_mail_settings_refuses_to_start(
        engine: Engine, env: dict[str, str], tmp_path: Path, extra_env: dict[str, str],
        says: str) -> None:
    """Not a runner that starts and logs an error at every drain: exit 2 at once, one
    line naming the variable and the reason, the password masked, nothing registered."""
    done = cli({**env, **extra_env}, "run", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("storeflow-ops: "), done.stderr
    assert says in lines[0], lines[0]
    assert "mail-secret" not in done.stderr
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(ops_runners)).scalar_one() == 0

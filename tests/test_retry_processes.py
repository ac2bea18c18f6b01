"""Real `storeflow-ops run` processes on PostgreSQL: a slot's run blocked on a lock the
test holds ends `timed_out` at its timeout and its retry, once the lock is released,
succeeds as a later attempt of the same slot while the runner goes on firing; with two
runners, a failing slot is retried exactly once per attempt number, and `job_failing`
comes from the last attempt only.

PostgreSQL only: a lock on one table or row is what blocks a job there, while on SQLite
a write lock holds the whole file (the runner's own bookkeeping waits too), which
tests/test_timeouts.py covers in process. Slow (real seconds): marked `slow`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from jobs.db import is_sqlite, ops_alerts, ops_runs, transaction
from tests import test_runner_processes
from tests.factories import add_tenant
from tests.test_runner_processes import JOB, OTHERS, Runner, wait_until

pytestmark = pytest.mark.slow

# The runner-process tests' fixture that starts runners and kills what is left at the end.
spawn = test_runner_processes.spawn


@pytest.fixture(autouse=True)
def postgresql_only(engine: Engine) -> None:
    if is_sqlite(engine):
        pytest.skip("a SQLite write lock holds the whole file; see tests/test_timeouts.py")


def write_config(path: Path, schedule: str, **job: Any) -> Path:
    lines = [f"[jobs.{JOB}]", f'schedule = "{schedule}"']
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in job.items()]
    for other in OTHERS:
        lines += [f"[jobs.{other}]", "enabled = false"]
    lines += ["[runner]", "heartbeat_interval = 0.5", "stale_after = 3", "shutdown_timeout = 10"]
    path.write_text("\n".join(lines) + "\n")
    return path


def slot_runs(engine: Engine) -> list[Any]:
    with transaction(engine) as conn:
        return list(conn.execute(
            select(ops_runs).where(ops_runs.c.job_id == JOB, ops_runs.c.trigger == "schedule")
            .order_by(ops_runs.c.scheduled_for, ops_runs.c.attempt)))


def failing_alerts(engine: Engine) -> list[int]:
    with transaction(engine) as conn:
        return list(conn.execute(select(ops_alerts.c.run_id)
                                 .where(ops_alerts.c.event == "job_failing")).scalars())


@pytest.mark.slow(seconds=10)
def test_a_timed_out_slot_is_retried_once_the_lock_is_released(
        engine: Engine, env: dict[str, str], tmp_path: Path,
        spawn: Callable[..., Runner]) -> None:
    now = datetime.now(UTC)
    add_tenant(engine, id="t-a", expire_date=now - timedelta(days=1))
    add_tenant(engine, id="t-b", expire_date=now - timedelta(days=1))
    config = write_config(tmp_path / "s.toml", "* * * * * */5", timeout="1s", retries=3,
                          retry_backoff="1s")
    with engine.connect() as holder:
        holder.execute(text("SELECT id FROM tenants WHERE id = 't-b' FOR UPDATE"))
        runner = spawn(env, config, "r1")
        timed_out = wait_until("a timed-out run", lambda: next(
            (r for r in slot_runs(engine) if r.status == "timed_out"), None), 30)
        holder.rollback()  # the lock is released
    took = (timed_out.finished_at - timed_out.started_at).total_seconds()
    assert 0.9 <= took < 4, took  # its timeout, not however long the lock was held
    retried = wait_until("its slot's retry to succeed", lambda: next(
        (r for r in slot_runs(engine) if r.scheduled_for == timed_out.scheduled_for
         and r.attempt > timed_out.attempt and r.status == "succeeded"), None), 30)
    assert retried.reference_time == timed_out.scheduled_for
    # The runner is unharmed: it goes on firing the slots that follow.
    wait_until("a later slot to succeed", lambda: any(
        r.scheduled_for > timed_out.scheduled_for and r.attempt == 1
        and r.status == "succeeded" for r in slot_runs(engine)), 30)
    assert runner.stop() == 0
    events = runner.events()
    planned = [e for e in events if e["event"] == "retry-planned"]
    assert planned and planned[0]["run_id"] == timed_out.id and planned[0]["status"] == "timed_out"
    assert [e["status"] for e in events if e["event"] == "run-finished"
            and e["run_id"] == timed_out.id] == ["timed_out"]
    assert failing_alerts(engine) == []  # the timed-out run had its retry left


@pytest.mark.slow(seconds=12)
def test_two_runners_retry_a_failing_slot_once_per_attempt(
        engine: Engine, env: dict[str, str], tmp_path: Path,
        spawn: Callable[..., Runner]) -> None:
    with transaction(engine) as conn:  # every run of the job fails
        conn.execute(text("ALTER TABLE tenants RENAME TO tenants_moved"))
    # Slots 30 s apart, so a slot's four attempts end before the next slot; the first one
    # a few seconds from now, so the test does not wait up to 30 s for it to come round.
    first = (datetime.now(UTC).second + 5) % 60
    seconds = ",".join(str(s) for s in sorted((first, (first + 30) % 60)))
    config = write_config(tmp_path / "s.toml", f"* * * * * {seconds}", retries=3,
                          retry_backoff="1s")
    runners = [spawn(env, config, "r1"), spawn(env, config, "r2")]

    def last_attempt() -> Any:
        rows = slot_runs(engine)
        return next((r for r in rows if r.attempt == 4 and r.status == "failed"), None)

    last = wait_until("a slot's fourth attempt to fail", last_attempt, 60)
    for r in runners:
        assert r.stop() == 0
    attempts = [(r.attempt, r.status) for r in slot_runs(engine)
                if r.scheduled_for == last.scheduled_for]
    assert attempts == [(1, "failed"), (2, "failed"), (3, "failed"), (4, "failed")]
    claimed = [e["attempt"] for r in runners for e in r.events()
               if e["event"] == "retry-claimed" and e["slot"].startswith(
                   last.scheduled_for.strftime("%Y-%m-%dT%H:%M:%S"))]
    assert sorted(claimed) == [2, 3, 4]  # one claim per attempt, across both runners
    # Three failures with a retry left raised nothing; the last one raised job_failing.
    assert failing_alerts(engine) == [last.id]

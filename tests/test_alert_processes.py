"""Alerts with real `storeflow-ops run` processes and a real HTTP receiver: one event per
state change however many runners judge it, a target that never answers does not delay
slots, and a run blocked on a lock makes the job overdue once while its skipped slots
fail nothing.

Slow (real seconds): marked `slow`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from jobs.db import ops_alert_deliveries, ops_alerts, ops_job_state, tenants
from jobs.timeutil import utc_now
from tests.conftest import cli, wait_until
from tests.factories import add_tenant
from tests.test_runner_processes import (
    JOB,
    Runner,
    slot_runs,
    spawn,  # noqa: F401 - the fixture
    write_config,
)
from tests.webhook_receiver import receiver

pytestmark = pytest.mark.slow

SECRET = "whsec-process-0123456789"


def alerts_config(path: Path, schedule: str, urls: list[str], *, extra_job: str = "",
                  timeout: float = 10) -> Path:
    write_config(path, schedule)
    text = path.read_text().replace(f'[jobs.{JOB}]\n', f'[jobs.{JOB}]\n{extra_job}')
    hooks = ", ".join(f'"{u}"' for u in urls)
    text += (f'\n[alerts]\nwebhooks = [{hooks}]\nwebhook_secret = "{SECRET}"\n'
             f"poll_interval = 0.2\nbackoff_base = 0.5\ntimeout = {timeout}\n")
    path.write_text(text)
    return path


def alert_events(engine: Engine) -> list[str]:
    with engine.connect() as c:
        return list(c.execute(select(ops_alerts.c.event).order_by(ops_alerts.c.id)).scalars())


def statuses(engine: Engine) -> list[str]:
    return [r.status for r in slot_runs(engine)]


@pytest.mark.slow(seconds=12)
def test_two_runners_raise_one_failing_and_one_recovered(
        engine: Engine, db_url: str, env: dict[str, str], tmp_path: Path,
        spawn: Callable[..., Runner]) -> None:  # noqa: F811 - the fixture
    add_tenant(engine, id="bad-tenant", email="not an email",
               expire_date=utc_now().replace(year=2026, month=1, day=1))
    with receiver() as rec:
        secret_url = rec.url()
        config = alerts_config(tmp_path / "schedules.toml", "* * * * * */2", [secret_url])
        runners = [spawn(env, config, f"runner{i}") for i in range(2)]
        wait_until("3 partial runs", lambda: statuses(engine).count("partial") >= 3, 60)
        with engine.begin() as c:
            c.execute(update(tenants).values(email="owner@example.com"))
        wait_until("2 succeeded runs", lambda: statuses(engine).count("succeeded") >= 2, 60)
        wait_until("2 deliveries", lambda: len(rec.hits) >= 2, 30)
        time.sleep(1)
        assert [r.stop() for r in runners] == [0, 0]
        hits = list(rec.hits)

    assert alert_events(engine) == ["job_failing", "job_recovered"]
    assert len(hits) == 2
    bodies = []
    for hit in hits:
        expected = "sha256=" + hmac.new(SECRET.encode(), hit.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(expected, hit.headers["X-StoreFlow-Signature"])
        bodies.append(json.loads(hit.body))
    assert [b["event"] for b in bodies] == ["job_failing", "job_recovered"]
    assert bodies[0]["status"] == "partial" and bodies[0]["scheduled_for"] is not None
    assert bodies[0]["first_errors"][0]["tenant_id"] == "bad-tenant"
    with engine.connect() as c:
        assert c.execute(select(ops_alert_deliveries.c.status)).scalars().all() == ["sent"] * 2

    listed = cli(env, "--config", str(config), "alerts", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [a["event"] for a in json.loads(listed.stdout)] == ["job_recovered", "job_failing"]
    path = secret_url.split(str(rec.port))[1]
    for text in [r.log_path.read_text() for r in runners] + [listed.stdout, listed.stderr]:
        assert path not in text and "s3cr3t" not in text
    delivered = [e for r in runners for e in r.events() if e["event"] == "alert-delivered"]
    assert {e["target"] for e in delivered} == {f"http://127.0.0.1:{rec.port}"}


@pytest.mark.slow(seconds=10)
def test_a_target_that_never_answers_does_not_delay_slots(
        engine: Engine, env: dict[str, str], tmp_path: Path,
        spawn: Callable[..., Runner]) -> None:  # noqa: F811 - the fixture
    add_tenant(engine, id="bad-tenant", email="not an email",
               expire_date=utc_now().replace(year=2026, month=1, day=1))
    with receiver(hang=60) as rec:
        config = alerts_config(tmp_path / "schedules.toml", "* * * * * */2", [rec.url()],
                               timeout=10)
        runner = spawn(env, config, "runner")
        wait_until("5 finished runs", lambda: statuses(engine).count("partial") >= 5, 60)
        assert len(rec.hits) >= 1  # the delivery thread is stuck in its POST
        assert runner.stop() == 0
    events = runner.events()
    late = [e["late_s"] for e in events if e["event"] == "slot-claimed"]
    took = [e["duration_s"] for e in events if e["event"] == "run-finished"]
    assert len(late) >= 5 and max(late) < 1.0, late
    assert max(took) < 1.0, took
    assert "slot-skipped" not in {e["event"] for e in events}
    assert alert_events(engine) == ["job_failing"]


@pytest.mark.slow(seconds=10)
def test_a_run_blocked_on_a_lock_makes_the_job_overdue_once(
        engine: Engine, db_url: str, env: dict[str, str], tmp_path: Path,
        spawn: Callable[..., Runner]) -> None:  # noqa: F811 - the fixture
    if engine.dialect.name != "postgresql":
        pytest.skip("holds a table lock the way PostgreSQL does; SQLite locks the whole file")
    add_tenant(engine, id="t1", expire_date=utc_now().replace(year=2026, month=1, day=1))
    blocker = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    with receiver() as rec:
        config = alerts_config(tmp_path / "schedules.toml", "* * * * * */2", [rec.url()],
                               extra_job='overdue_after = "1s"\n')
        with blocker.connect() as hold:
            tx = hold.begin()
            hold.exec_driver_sql("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")
            runner = spawn(env, config, "runner")
            wait_until("job_overdue", lambda: "job_overdue" in alert_events(engine), 60)
            wait_until("3 skipped slots", lambda: statuses(engine).count("skipped") >= 3, 30)
            time.sleep(2)  # more maintenance passes: still one event
            assert alert_events(engine) == ["job_overdue"]
            tx.rollback()
        wait_until("the blocked run succeeds", lambda: "succeeded" in statuses(engine), 30)
        wait_until("the overdue episode ends", lambda: _overdue_since(engine) is None, 30)
        wait_until("1 delivery", lambda: len(rec.hits) >= 1, 30)
        assert runner.stop() == 0
        hits = list(rec.hits)
    blocker.dispose()
    assert alert_events(engine) == ["job_overdue"]  # skipped slots raised no job_failing
    assert [json.loads(h.body)["event"] for h in hits] == ["job_overdue"]
    body: dict[str, Any] = json.loads(hits[0].body)
    assert body["job"] == JOB and "overdue" in body["text"]
    with engine.connect() as c:
        st = c.execute(select(ops_job_state).where(ops_job_state.c.job_id == JOB)).one()
    assert st.alert_state == "ok" and st.overdue_since is None


def _overdue_since(engine: Engine) -> Any:
    with engine.connect() as c:
        return c.execute(select(ops_job_state.c.overdue_since)
                         .where(ops_job_state.c.job_id == JOB)).scalar_one_or_none()

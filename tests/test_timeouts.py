"""Timeouts: a run blocked on a lock the test holds ends `timed_out` at its job's
`timeout`, with the statement in flight cancelled (PostgreSQL) or cut short (SQLite),
its items so far kept and the job's lock freed; other connections are untouched.
Both databases; a real CLI process on PostgreSQL.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from jobs import runs
from jobs.db import is_sqlite, ops_job_state, ops_runs, sqlite_file, tenants, transaction
from jobs.records import RunStatus
from jobs.settings import Settings
from jobs.timeouts import RunDeadline, RunTimedOut
from tests.conftest import cli
from tests.factories import add_tenant
from tests.test_scheduler import JOB, job_settings

NOW = datetime(2026, 11, 28, 9, tzinfo=UTC)
LIMIT = timedelta(seconds=1)


class Lock:
    """A write lock the test holds on the job's data: the whole file on SQLite (a write
    transaction), the `tenants` table on PostgreSQL; released by `release()` or at exit."""

    def __init__(self, engine: Engine, db_url: str) -> None:
        self.engine, self.db_url = engine, db_url
        self._release = threading.Event()
        self._taken = threading.Event()
        self._thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        if is_sqlite(self.engine):
            path = sqlite_file(self.db_url)
            assert path is not None
            raw = sqlite3.connect(path, isolation_level=None, timeout=30)
            raw.execute("BEGIN IMMEDIATE")
            self._taken.set()
            self._release.wait(30)
            raw.rollback()
            raw.close()
            return
        with self.engine.connect() as conn:
            conn.execute(text("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE"))
            self._taken.set()
            self._release.wait(30)
            conn.rollback()

    def take(self) -> Lock:
        self._thread.start()
        assert self._taken.wait(30)
        return self

    def release(self, after: float = 0.0) -> None:
        threading.Timer(after, self._release.set).start()

    def close(self) -> None:
        self._release.set()
        self._thread.join(30)


@contextmanager
def held(engine: Engine, db_url: str) -> Iterator[Lock]:
    lock = Lock(engine, db_url).take()
    try:
        yield lock
    finally:
        lock.close()


def count_tenants(engine: Engine) -> int:
    with transaction(engine) as conn:
        return int(conn.execute(select(func.count()).select_from(tenants)).scalar_one())


def test_a_statement_waiting_for_a_lock_is_cut_off_at_the_deadline(
        engine: Engine, db_url: str) -> None:
    deadline = RunDeadline(LIMIT).start(engine)
    with held(engine, db_url), deadline.guard():
        started = time.monotonic()
        with pytest.raises(SQLAlchemyError):
            count_tenants(engine)
        took = time.monotonic() - started
        # A statement started after the deadline fails at once, without waiting again.
        with pytest.raises(RunTimedOut):
            count_tenants(engine)
    assert deadline.finish()
    assert 0.8 <= took < 3, took  # not the 30 s a writer otherwise waits
    assert count_tenants(engine) == 0  # the engine's other connections still work


def test_a_long_statement_is_cancelled_at_the_deadline(engine: Engine) -> None:
    # No lock involved: a statement that runs and runs (PostgreSQL's cancel request,
    # SQLite's interrupt).
    forever = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
               "SELECT count(*) FROM n" if is_sqlite(engine) else "SELECT pg_sleep(30)")
    deadline = RunDeadline(LIMIT).start(engine)
    started = time.monotonic()
    with deadline.guard(), pytest.raises(SQLAlchemyError), transaction(engine) as conn:
        conn.execute(text(forever))
    assert deadline.finish() and time.monotonic() - started < 3
    with transaction(engine) as conn:  # a fresh connection: the cancelled one is not reused
        assert conn.execute(text("SELECT 1")).scalar_one() == 1


def test_a_run_without_a_timeout_is_not_watched(engine: Engine) -> None:
    deadline = RunDeadline(None).start(engine)
    with deadline.guard():
        assert count_tenants(engine) == 0
    assert not deadline.finish() and not deadline.expired


def test_a_manual_run_past_its_timeout_ends_timed_out_and_frees_the_lock(
        engine: Engine, db_url: str, settings: Settings, env: dict[str, str]) -> None:
    s = job_settings(settings, "0 0 * * *", timeout=LIMIT)
    add_tenant(engine, expire_date=NOW - timedelta(days=1))
    locks: list[Lock] = []

    def take_lock(_run_id: int | None) -> None:
        # The run has its row and the job's lock; now its job meets the test's lock,
        # held for 3 s past the timeout.
        locks.append(Lock(engine, db_url).take())
        locks[0].release(after=LIMIT.total_seconds() + 3)

    try:
        report = runs.execute(engine, s, JOB, now=NOW, started_by="op@host",
                              on_started=take_lock)
    finally:
        for lock in locks:
            lock.close()
    took = (report.finished_at - report.started_at).total_seconds()
    assert report.status is RunStatus.TIMED_OUT and 0.9 <= took < 3, took
    assert report.error is not None and report.error.startswith("timed out after 1s")
    assert report.message == "Job failed" and report.exit_code == 1
    with transaction(engine) as conn:
        row = conn.execute(select(ops_runs.c.status, ops_runs.c.error)
                           .where(ops_runs.c.id == report.run_id)).one()
        holder = conn.execute(select(ops_job_state.c.active_run_id)
                              .where(ops_job_state.c.job_id == JOB)).scalar_one()
    assert row.status == "timed_out" and holder is None
    with transaction(engine) as conn:  # what storeflow_job_runs_total reports
        counted = conn.execute(text("SELECT count FROM ops_run_counts WHERE job_id = :j "
                                    "AND status = 'timed_out'"), {"j": JOB}).scalar_one()
    assert counted == 1
    shown = cli(env, "show", str(report.run_id))
    assert shown.returncode == 0, shown.stderr
    assert f"run {report.run_id}, timed_out, manual" in shown.stdout
    assert "error:     timed out after 1s" in shown.stdout
    # Nothing else is in the way: the next manual run does the work.
    assert runs.execute(engine, s, JOB, now=NOW, started_by="op@host").status is (
        RunStatus.SUCCEEDED)


def test_a_cli_trigger_past_its_timeout_keeps_the_items_done(
        engine: Engine, env: dict[str, str], tmp_path: Path) -> None:
    if is_sqlite(engine):
        pytest.skip("holds one row's lock the way PostgreSQL does; SQLite locks the whole file")
    # Two tenants to expire; the test holds the second one's row, so the job updates the
    # first and then waits on the second until its timeout cancels that statement.
    now = datetime.now(UTC)
    add_tenant(engine, id="t-a", expire_date=now - timedelta(days=1))
    add_tenant(engine, id="t-b", expire_date=now - timedelta(days=1))
    config = tmp_path / "schedules.toml"
    # 3 s, not 1: the deadline counts from the run's start, and a process starved for a
    # second on a loaded machine (seen on CI with load 8) had it cancel t-a's update.
    config.write_text(f'[jobs.{JOB}]\ntimeout = "3s"\n')
    with engine.connect() as conn:
        conn.execute(text("SELECT id FROM tenants WHERE id = 't-b' FOR UPDATE"))
        started = time.monotonic()
        proc = cli(env, "--config", str(config), "trigger", JOB, "--json")
        took = time.monotonic() - started
        conn.rollback()
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["status"] == "timed_out" and report["message"] == "Job failed"
    items = {i["tenant_id"]: i for i in report["results"]["items"]}
    assert items["t-a"]["status"] == "ok"
    assert items["t-b"]["status"] == "error" and "cancel" in items["t-b"]["error"].lower()
    assert took < 15  # the process's own start-up included; the lock was never released
    with transaction(engine) as c:
        statuses = {r.id: r.status for r in c.execute(select(tenants.c.id, tenants.c.status))}
    assert statuses == {"t-a": "expired", "t-b": "active"}  # the items done are kept

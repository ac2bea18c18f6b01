"""Retries of a slot's run, driven like the runner's loop with an injected clock (no
sleeping), on both databases: attempts 2, 3, ... of the same slot after a doubling
backoff, never at or after the next slot, not for `partial` or manual runs, and
`job_failing` only once no retry is left.

A run is made to fail for real: the platform's `tenants` table is renamed away under it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.engine import Engine

from jobs import runs
from jobs.db import ops_alerts, ops_job_state, ops_runs, require_platform_tables, transaction
from jobs.errors import ConfigError
from jobs.records import RunReport, RunStatus
from jobs.settings import Overrides, Settings, load_settings
from jobs.slots import retry_backoff
from tests.conftest import cli
from tests.factories import add_tenant
from tests.test_scheduler import JOB, Harness, harness, job_settings, slot_rows, utc

SLOT = utc(2026, 11, 28, 9)


@pytest.fixture
def harnesses(engine: Engine) -> Iterator[list[Harness]]:
    made: list[Harness] = []
    yield made
    for h in made:
        h.close()


@contextmanager
def tenants_gone(engine: Engine) -> Iterator[None]:
    """The job's table is missing while the block runs: every run of it fails."""
    require_platform_tables(engine)  # checked once per engine, as a runner does
    with transaction(engine) as conn:
        conn.execute(text("ALTER TABLE tenants RENAME TO tenants_moved"))
    try:
        yield
    finally:
        with transaction(engine) as conn:
            conn.execute(text("ALTER TABLE tenants_moved RENAME TO tenants"))


def failing_alerts(engine: Engine) -> list[int]:
    with transaction(engine) as conn:
        return list(conn.execute(select(ops_alerts.c.run_id)
                                 .where(ops_alerts.c.event == "job_failing")).scalars())


def run_slot(h: Harness) -> RunReport | None:
    """Fire SLOT (the harness starts just before it) and run it, as the loop would."""
    [claim] = h.tick(SLOT, all_jobs=True, run=False)
    return h.runner.run(claim)


def run_claims(h: Harness, at: timedelta) -> list[tuple[int, RunStatus]]:
    """Maintenance at SLOT + `at` (as the loop does when a retry is due); run what it
    claimed. Returns (attempt, status) of each."""
    h.clock.set(SLOT + at)
    out = []
    for claim in h.runner.maintain(h.clock()):
        report = h.runner.run(claim)
        assert report is not None
        out.append((claim.attempt, report.status))
    return out


def test_a_failed_slot_runs_again_after_a_doubling_backoff_until_it_succeeds(
        engine: Engine, settings: Settings, harnesses: list[Harness],
        env: dict[str, str]) -> None:
    s = job_settings(settings, "0 * * * *", retries=3, retry_backoff=60)
    add_tenant(engine, expire_date=SLOT - timedelta(days=1))
    h = harness(harnesses, engine, s, SLOT - timedelta(seconds=1))
    with tenants_gone(engine):
        report = run_slot(h)
        assert report is not None and report.status is RunStatus.FAILED
        [planned] = h.events("retry-planned")
        assert (planned["attempt"], planned["at"]) == (2, "2026-11-28T09:01:00.000Z")
        assert h.runner.retry_wake == SLOT + timedelta(minutes=1)  # the loop wakes then
        assert run_claims(h, timedelta(seconds=59)) == []  # not before its backoff
        assert run_claims(h, timedelta(minutes=1)) == [(2, RunStatus.FAILED)]
        # The next wait is twice the first: 2 min after attempt 2 ended.
        assert run_claims(h, timedelta(minutes=2, seconds=59)) == []
    assert run_claims(h, timedelta(minutes=3)) == [(3, RunStatus.SUCCEEDED)]
    assert run_claims(h, timedelta(minutes=30)) == []  # done: no attempt 4
    assert slot_rows(engine) == [(SLOT, 1, "failed"), (SLOT, 2, "failed"), (SLOT, 3, "succeeded")]
    assert failing_alerts(engine) == []  # each failure had a retry left
    with transaction(engine) as conn:
        refs = set(conn.execute(select(ops_runs.c.reference_time)).scalars())
    assert refs == {SLOT}  # every attempt runs as the slot it retries
    listed = cli(env, "history").stdout.splitlines()
    assert ["schedule, attempt 3" in line and "succeeded" in line for line in listed[1:]] == [
        True, False, False]


def test_job_failing_is_raised_by_the_last_attempt_only(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    s = job_settings(settings, "0 * * * *", retries=1, retry_backoff=60)
    h = harness(harnesses, engine, s, SLOT - timedelta(seconds=1))
    with tenants_gone(engine):
        assert run_slot(h) is not None
        assert failing_alerts(engine) == []
        assert run_claims(h, timedelta(minutes=1)) == [(2, RunStatus.FAILED)]
    last = runs.history(engine, JOB, limit=1)[0]
    assert last.attempt == 2 and failing_alerts(engine) == [last.run_id]
    assert h.events("retry-planned")[-1]["attempt"] == 2  # none planned after attempt 2
    assert run_claims(h, timedelta(minutes=10)) == []


def test_no_retry_starts_at_or_after_the_next_slot(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    # Every 5 minutes with a 10-minute backoff: the retry would come after 09:05, so the
    # failure is final at once and 09:05 does the work.
    s = job_settings(settings, "*/5 * * * *", retries=2, retry_backoff=600)
    h = harness(harnesses, engine, s, SLOT - timedelta(seconds=1))
    with tenants_gone(engine):
        first = run_slot(h)
    assert first is not None and first.status is RunStatus.FAILED
    assert h.events("retry-planned") == [] and failing_alerts(engine) == [first.run_id]
    assert h.runner.retry_wake is None
    assert run_claims(h, timedelta(minutes=4, seconds=59)) == []
    assert [c.slot for c in h.tick(SLOT + timedelta(minutes=5))] == [SLOT + timedelta(minutes=5)]
    assert slot_rows(engine) == [(SLOT, 1, "failed"), (SLOT + timedelta(minutes=5), 1, "succeeded")]


def test_a_retry_found_due_only_after_the_next_slot_is_not_run(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    # The retry was due at 09:01, but no runner looked until 09:05:30 (all were down):
    # the next slot has come, so the failure stands and is alerted on.
    s = job_settings(settings, "*/5 * * * *", retries=2, retry_backoff=60)
    h = harness(harnesses, engine, s, SLOT - timedelta(seconds=1))
    with tenants_gone(engine):
        first = run_slot(h)
    assert first is not None and failing_alerts(engine) == []
    later = harness(harnesses, engine, s, SLOT + timedelta(minutes=5, seconds=30))
    later.clock.set(SLOT + timedelta(minutes=5, seconds=30))
    assert later.runner.maintain(later.clock()) == []
    [refused] = later.events("retry-not-wanted")
    assert refused["attempt"] == 2 and "next slot" in refused["reason"]
    assert failing_alerts(engine) == [first.run_id]
    assert slot_rows(engine) == [(SLOT, 1, "failed")]


def test_a_retry_that_finds_the_lock_held_waits_for_it_instead_of_ending_skipped(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    # A manual run (of a CLI without presence, so never stale) holds the job's lock
    # (concurrency = forbid) when attempt 2 is due: the
    # attempt is not recorded as `skipped` (the slot's work would be lost); it is asked
    # again shortly, and runs once the lock is free.
    s = job_settings(settings, "0 * * * *", retries=2, retry_backoff=60)
    add_tenant(engine, expire_date=SLOT - timedelta(days=1))
    h = harness(harnesses, engine, s, SLOT - timedelta(seconds=1))
    with tenants_gone(engine):
        report = run_slot(h)
    assert report is not None and report.status is RunStatus.FAILED
    with transaction(engine) as conn:
        holder = conn.execute(ops_runs.insert().values(
            job_id=JOB, trigger="manual", attempt=1, status="running", started_by="op@host",
            runner_id=None, reference_time=SLOT, params={}, created_at=SLOT,
            started_at=SLOT)).inserted_primary_key[0]
        conn.execute(update(ops_job_state).where(ops_job_state.c.job_id == JOB)
                     .values(active_run_id=holder))

    assert run_claims(h, timedelta(minutes=1)) == []
    assert run_claims(h, timedelta(minutes=1, seconds=2)) == []
    [waiting] = h.events("retry-waiting")  # said once, not on every look
    assert waiting["attempt"] == 2 and f"run {holder} holds" in waiting["reason"]
    assert set(slot_rows(engine)) == {(None, 1, "running"), (SLOT, 1, "failed")}
    assert h.runner.retry_wake == SLOT + timedelta(minutes=1, seconds=4)  # asked again then

    with transaction(engine) as conn:
        conn.execute(update(ops_runs).where(ops_runs.c.id == holder)
                     .values(status="succeeded", finished_at=SLOT + timedelta(minutes=1)))
        conn.execute(update(ops_job_state).where(ops_job_state.c.job_id == JOB)
                     .values(active_run_id=None))
    assert run_claims(h, timedelta(minutes=1, seconds=4)) == [(2, RunStatus.SUCCEEDED)]
    assert set(slot_rows(engine)) == {(None, 1, "succeeded"), (SLOT, 1, "failed"),
                                      (SLOT, 2, "succeeded")}


def test_partial_and_manual_runs_are_not_retried(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    s = job_settings(settings, "0 * * * *", retries=2, retry_backoff=60)
    add_tenant(engine, email="not an address", expire_date=SLOT - timedelta(days=1))
    h = harness(harnesses, engine, s, SLOT - timedelta(seconds=1))
    report = run_slot(h)
    assert report is not None and report.status is RunStatus.PARTIAL
    with tenants_gone(engine):
        manual = runs.execute(engine, s, JOB, now=SLOT, started_by="op@host",
                              clock=lambda: SLOT)
    assert manual.status is RunStatus.FAILED
    assert run_claims(h, timedelta(minutes=5)) == []
    assert h.events("retry-planned") == [] and h.runner.retry_wake is None
    assert set(slot_rows(engine)) == {(None, 1, "failed"), (SLOT, 1, "partial")}


def test_the_backoff_doubles_up_to_an_hour(settings: Settings) -> None:
    job = job_settings(settings, "0 0 * * *", retries=10, retry_backoff=60).job(JOB)
    assert [retry_backoff(job, a) for a in (1, 2, 3, 6, 7, 30)] == [
        timedelta(minutes=m) for m in (1, 2, 4, 32, 60, 60)]


def test_timeout_and_retry_keys_are_read_and_checked(tmp_path: Path) -> None:
    config = tmp_path / "s.toml"
    config.write_text(f'[jobs.{JOB}]\ntimeout = "30m"\nretries = 3\nretry_backoff = "5m"\n')
    job = load_settings(Overrides(config=str(config)), env={}, cwd=tmp_path).job(JOB)
    assert (job.timeout, job.retries, job.retry_backoff) == (timedelta(minutes=30), 3, 300)
    for line, reason in (('timeout = "0"', "at least one second"),
                         ("retries = -1", "-1 is negative"),
                         ('retry_backoff = "0s"', "at least one second")):
        config.write_text(f"[jobs.{JOB}]\n{line}\n")
        with pytest.raises(ConfigError) as caught:
            load_settings(Overrides(config=str(config)), env={}, cwd=tmp_path)
        key = line.split(" ")[0]
        assert f"jobs.{JOB}.{key}" in str(caught.value) and reason in str(caught.value)

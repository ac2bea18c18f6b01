"""The runner's slot decisions against a real database, with an injected clock (no sleeping):
which slots fire, which are missed, overlap, pause/resume, stale-run recovery and retry.

Each test drives `SlotRunner` the way `serve` does: wake at `scheduler.next_wake()`, tick,
run what was claimed. Both databases via the `engine`/`settings` fixtures.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from console.runlog import RunLog, RunLogHandler
from console.runner import ClaimedRun, RunnerState, SlotRunner, Tick, serve
from jobs import runs
from jobs.cron import CronSchedule
from jobs.db import _platform_ok as jobs_platform_ok
from jobs.db import ops_runners, ops_runs, transaction
from jobs.presence import Presence
from jobs.records import RunStatus, Trigger
from jobs.settings import JobConfig, Settings
from jobs.slots import JobFacts, Scheduler, plan_job, recent_slots
from tests.factories import add_tenant

JOB = "expiry-checker"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
        microsecond: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)


class Clock:
    """The injected wall clock; moving it also beats this runner's heartbeat, as the
    Presence thread does in a real runner."""

    def __init__(self, start: datetime) -> None:
        self.now = start
        self.presence: Presence | None = None

    def __call__(self) -> datetime:
        return self.now

    def set(self, when: datetime) -> None:
        self.now = when
        if self.presence is not None:
            self.presence.beat()


def job_settings(settings: Settings, expression: str, tz: str = "UTC",
                 **changes: Any) -> Settings:
    """Only JOB enabled, on `expression`; the other jobs disabled."""
    jobs = {j: replace(c, enabled=False) for j, c in settings.jobs.items()}
    jobs[JOB] = replace(settings.job(JOB), schedule=CronSchedule.parse(expression, tz),
                        enabled=True, **changes)
    return replace(settings, jobs=jobs)


class Harness:
    def __init__(self, engine: Engine, settings: Settings, start: datetime,
                 scheduler_cap: int | None = None) -> None:
        self.engine = engine
        self.clock = Clock(start)
        self.stream = io.StringIO()
        self.presence = Presence(engine, "runner", self.clock, interval=3600).start()
        self.clock.presence = self.presence
        state = RunnerState(engine=engine, settings=settings, runner_id=self.presence.id,
                            started_by="runner@test", log=RunLog(self.stream, "json",
                                                                 clock=self.clock),
                            clock=self.clock, started_at=start, stop=threading.Event())
        scheduler = None
        if scheduler_cap is not None:
            scheduler = Scheduler(settings.jobs, start, cap=scheduler_cap)
        self.runner = SlotRunner(state, scheduler)

    def tick(self, at: datetime, *, all_jobs: bool = False, run: bool = True) -> list[ClaimedRun]:
        self.clock.set(at)
        claims = self.runner.tick(at, all_jobs=all_jobs).claims
        if run:
            for c in claims:
                report = self.runner.run(c)
                assert report is not None and report.status is RunStatus.SUCCEEDED
        return claims

    def drive(self, until: datetime) -> list[datetime]:
        """Wake at every next slot up to `until`, as the loop does; the slots fired."""
        fired: list[datetime] = []
        while (wake := self.runner.scheduler.next_wake()) is not None and wake <= until:
            fired += [c.slot for c in self.tick(wake)]
        return fired

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        lines = [json.loads(x) for x in self.stream.getvalue().splitlines()]
        return [e for e in lines if name is None or e["event"] == name]

    def close(self) -> None:
        self.presence.stop()


@pytest.fixture
def harnesses(engine: Engine) -> Iterator[list[Harness]]:
    made: list[Harness] = []
    yield made
    for h in made:
        h.close()


def harness(made: list[Harness], engine: Engine, settings: Settings, start: datetime,
            **kw: Any) -> Harness:
    h = Harness(engine, settings, start, **kw)
    made.append(h)
    return h


def slot_rows(engine: Engine) -> list[tuple[datetime, int, str]]:
    with transaction(engine) as conn:
        rows = conn.execute(
            select(ops_runs.c.scheduled_for, ops_runs.c.attempt, ops_runs.c.status)
            .where(ops_runs.c.job_id == JOB)
            .order_by(ops_runs.c.scheduled_for, ops_runs.c.attempt)
        ).all()
    return [(r.scheduled_for, r.attempt, r.status) for r in rows]


# --- due slots --------------------------------------------------------------------------------


def test_due_slots_fire_once_each_and_nothing_before_start(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    start = utc(2026, 11, 28, 12, 3)
    h = harness(harnesses, engine, job_settings(settings, "*/10 * * * *"), start)

    assert h.tick(start, all_jobs=True) == []  # no history: 12:00 is not "missed"
    assert h.runner.scheduler.next_wake() == utc(2026, 11, 28, 12, 10)
    assert h.tick(utc(2026, 11, 28, 12, 9, 59)) == []
    claims = h.tick(utc(2026, 11, 28, 12, 10, 0, 300_000))
    assert [(c.slot, c.attempt) for c in claims] == [(utc(2026, 11, 28, 12, 10), 1)]
    assert h.tick(utc(2026, 11, 28, 12, 10, 1)) == []
    assert h.drive(utc(2026, 11, 28, 12, 30)) == [utc(2026, 11, 28, 12, 20),
                                                  utc(2026, 11, 28, 12, 30)]
    assert [(s, a, st) for s, a, st in slot_rows(engine)] == [
        (utc(2026, 11, 28, 12, m), 1, "succeeded") for m in (10, 20, 30)
    ]
    with transaction(engine) as conn:
        run = conn.execute(select(ops_runs).where(
            ops_runs.c.scheduled_for == utc(2026, 11, 28, 12, 10))).one()
    assert run.trigger == "schedule" and run.reference_time == utc(2026, 11, 28, 12, 10)
    assert run.runner_id == h.presence.id and run.started_by == "runner@test"
    assert [e["slot"] for e in h.events("slot-claimed")][:1] == ["2026-11-28T12:10:00.000Z"]


# 2026 changes: London 03-29 01:00Z (GMT->BST) and 10-25 01:00Z (BST->GMT);
# New York 03-08 07:00Z (EST->EDT) and 11-01 06:00Z (EDT->EST).
DST_CASES = [
    pytest.param("Europe/London", "30 1 * * *", utc(2026, 3, 28, 12), utc(2026, 3, 30, 12),
                 [utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)], id="london-spring-gap"),
    pytest.param("Europe/London", "30 1 * * *", utc(2026, 10, 24, 12), utc(2026, 10, 26, 12),
                 [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)], id="london-fall-once"),
    pytest.param("Europe/London", "*/30 * * * *", utc(2026, 10, 25, 0, 15),
                 utc(2026, 10, 25, 2, 5),
                 [utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 0), utc(2026, 10, 25, 1, 30),
                  utc(2026, 10, 25, 2, 0)], id="london-fall-interval-both-copies"),
    pytest.param("America/New_York", "30 2 * * *", utc(2026, 3, 7, 12), utc(2026, 3, 9, 12),
                 [utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 30)], id="new-york-spring-gap"),
    pytest.param("America/New_York", "30 1 * * *", utc(2026, 10, 31, 12), utc(2026, 11, 2, 12),
                 [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)], id="new-york-fall-once"),
    pytest.param("America/New_York", "*/30 * * * *", utc(2026, 11, 1, 5, 15),
                 utc(2026, 11, 1, 7, 5),
                 [utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 6, 0), utc(2026, 11, 1, 6, 30),
                  utc(2026, 11, 1, 7, 0)], id="new-york-fall-interval-both-copies"),
]


@pytest.mark.parametrize(("tz", "expression", "start", "until", "expected"), DST_CASES)
def test_dst_days_fire_what_cron_says(engine: Engine, settings: Settings,
                                      harnesses: list[Harness], tz: str, expression: str,
                                      start: datetime, until: datetime,
                                      expected: list[datetime]) -> None:
    h = harness(harnesses, engine, job_settings(settings, expression, tz), start)
    assert h.tick(start, all_jobs=True) == []
    assert h.drive(until) == expected
    assert slot_rows(engine) == [(s, 1, "succeeded") for s in expected]


# --- misfires ---------------------------------------------------------------------------------


def _history(engine: Engine, settings: Settings, slot: datetime) -> None:
    """A slot some earlier runner fired and finished."""
    claim = runs.claim_slot(engine, settings, JOB, slot, runner_id="runner-old",
                            started_by="runner@old", clock=lambda: slot)
    assert claim.run_id is not None
    runs.execute(engine, settings, JOB, now=slot, started_by="runner@old",
                 trigger=Trigger.SCHEDULE, claimed_run_id=claim.run_id, scheduled_for=slot,
                 clock=lambda: slot)


def test_misfire_without_grace_fires_latest_once_and_records_the_rest(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    s = job_settings(settings, "0 * * * *")  # misfire_grace unset: no limit
    _history(engine, s, utc(2026, 11, 28, 6))
    h = harness(harnesses, engine, s, utc(2026, 11, 28, 10, 59))

    claims = h.tick(utc(2026, 11, 28, 10, 59), all_jobs=True)

    assert [c.slot for c in claims] == [utc(2026, 11, 28, 10)]  # 4h59m late, still fires
    assert slot_rows(engine) == [
        (utc(2026, 11, 28, 6), 1, "succeeded"),
        (utc(2026, 11, 28, 7), 1, "missed"),
        (utc(2026, 11, 28, 8), 1, "missed"),
        (utc(2026, 11, 28, 9), 1, "missed"),
        (utc(2026, 11, 28, 10), 1, "succeeded"),
    ]
    [missed] = h.events("slots-missed")
    assert missed["count"] == 3 and missed["first"] == "2026-11-28T07:00:00.000Z"
    # The next tick decides nothing again.
    assert h.tick(utc(2026, 11, 28, 10, 59, 30), all_jobs=True) == []
    assert len(slot_rows(engine)) == 5


@pytest.mark.parametrize(("start", "fired"), [
    (utc(2026, 11, 28, 11, 10), [utc(2026, 11, 28, 11)]),  # 10 min late: within 15m
    (utc(2026, 11, 28, 11, 20), []),  # 20 min late: outside 15m
])
def test_misfire_with_grace(engine: Engine, settings: Settings, harnesses: list[Harness],
                            start: datetime, fired: list[datetime]) -> None:
    s = job_settings(settings, "0 * * * *", misfire_grace=timedelta(minutes=15))
    _history(engine, s, utc(2026, 11, 28, 8))
    h = harness(harnesses, engine, s, start)

    claims = h.tick(start, all_jobs=True)

    assert [c.slot for c in claims] == fired
    expected_11 = "succeeded" if fired else "missed"
    assert slot_rows(engine) == [
        (utc(2026, 11, 28, 8), 1, "succeeded"),
        (utc(2026, 11, 28, 9), 1, "missed"),
        (utc(2026, 11, 28, 10), 1, "missed"),
        (utc(2026, 11, 28, 11), 1, expected_11),
    ]
    with transaction(engine) as conn:
        reasons = dict(conn.execute(select(ops_runs.c.scheduled_for, ops_runs.c.error).where(
            ops_runs.c.status == "missed")).all())
    if not fired:
        assert "misfire_grace" in str(reasons[utc(2026, 11, 28, 11)])
    assert "most recent" in str(reasons[utc(2026, 11, 28, 9)])


def test_coalescing_after_a_long_outage_records_only_the_newest(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    s = job_settings(settings, "* * * * *")
    last = utc(2026, 11, 25, 12)
    _history(engine, s, last)
    now = last + timedelta(days=3, seconds=30)
    h = harness(harnesses, engine, s, now, scheduler_cap=5)

    claims = h.tick(now, all_jobs=True)

    rows = slot_rows(engine)[1:]
    assert [c.slot for c in claims] == [last + timedelta(days=3)]
    assert [r[2] for r in rows] == ["missed"] * 5 + ["succeeded"]
    assert [r[0] for r in rows] == [last + timedelta(days=3, minutes=m) for m in range(-5, 1)]
    [dropped] = h.events("missed-not-recorded")
    assert dropped["count"] == 3 * 24 * 60 - 6  # 4320 passed: 1 fired, 5 recorded


def test_recent_slots_counts_every_older_slot() -> None:
    sched = CronSchedule.parse("* * * * *")
    since = utc(2026, 11, 1)
    kept, older, exact = recent_slots(sched, since, since + timedelta(days=2), 3)
    assert kept == [since + timedelta(days=2, minutes=m) for m in (-2, -1, 0)]
    assert (older, exact) == (2 * 24 * 60 - 3, True)
    # A sparse schedule: the windows grow until they reach `since`.
    kept, older, exact = recent_slots(CronSchedule.parse("0 0 1 * *"), since,
                                      utc(2027, 3, 15), 2)
    assert kept == [utc(2027, 2, 1), utc(2027, 3, 1)]
    assert (older, exact) == (2, True)  # Dec 1 and Jan 1


def test_plan_is_empty_when_paused_or_disabled() -> None:
    job = JobConfig(JOB, CronSchedule.parse("* * * * *"))
    since, now = utc(2026, 11, 28), utc(2026, 11, 28, 1)
    assert plan_job(job, JobFacts(paused=True), since, now).empty
    assert plan_job(replace(job, enabled=False), JobFacts(), since, now).empty
    plan = plan_job(job, JobFacts(), since, now)
    assert plan.fire == now and len(plan.missed) == 59 and plan.through == now


# --- overlap ----------------------------------------------------------------------------------


def test_overlap_forbid_records_skipped(engine: Engine, settings: Settings,
                                        harnesses: list[Harness]) -> None:
    h = harness(harnesses, engine, job_settings(settings, "* * * * *"), utc(2026, 11, 28, 12))
    [first] = h.tick(utc(2026, 11, 28, 12, 1), run=False)  # claimed, still running
    assert h.tick(utc(2026, 11, 28, 12, 2), run=False) == []
    assert h.runner.run(first) is not None  # the first run ends
    [third] = h.tick(utc(2026, 11, 28, 12, 3), run=False)
    assert third.slot == utc(2026, 11, 28, 12, 3)
    assert slot_rows(engine) == [
        (utc(2026, 11, 28, 12, 1), 1, "succeeded"),
        (utc(2026, 11, 28, 12, 2), 1, "skipped"),
        (utc(2026, 11, 28, 12, 3), 1, "running"),
    ]
    [skipped] = h.events("slot-skipped")
    assert str(first.run_id) in skipped["reason"]


def test_overlap_allow_runs_concurrently(engine: Engine, settings: Settings,
                                         harnesses: list[Harness]) -> None:
    s = job_settings(settings, "* * * * *", concurrency="allow")
    h = harness(harnesses, engine, s, utc(2026, 11, 28, 12))
    first = h.tick(utc(2026, 11, 28, 12, 1), run=False)
    second = h.tick(utc(2026, 11, 28, 12, 2), run=False)
    assert len(first) == len(second) == 1
    assert [r[2] for r in slot_rows(engine)] == ["running", "running"]
    for c in first + second:
        h.runner.run(c)
    assert [r[2] for r in slot_rows(engine)] == ["succeeded", "succeeded"]


# --- pause and resume -------------------------------------------------------------------------


def test_pause_and_resume_fire_from_now_on_without_a_burst(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    s = job_settings(settings, "0 * * * *")
    h = harness(harnesses, engine, s, utc(2026, 11, 28, 8, 30))
    assert h.drive(utc(2026, 11, 28, 9, 0)) == [utc(2026, 11, 28, 9)]

    runs.set_paused(engine, JOB, True, by="op", now=utc(2026, 11, 28, 9, 30))
    assert h.drive(utc(2026, 11, 28, 11, 10)) == []  # 10:00 and 11:00 pass while paused
    assert [e["slot"] for e in h.events("slot-paused")] == ["2026-11-28T10:00:00.000Z",
                                                             "2026-11-28T11:00:00.000Z"]

    runs.set_paused(engine, JOB, False, by="op", now=utc(2026, 11, 28, 11, 30))
    # A runner starting after the resume, with history at 09:00, must not count 10:00 and
    # 11:00 as missed either.
    late = harness(harnesses, engine, s, utc(2026, 11, 28, 11, 45))
    assert late.tick(utc(2026, 11, 28, 11, 45), all_jobs=True) == []
    assert h.tick(utc(2026, 11, 28, 11, 45), all_jobs=True) == []

    assert h.drive(utc(2026, 11, 28, 12, 0)) == [utc(2026, 11, 28, 12)]
    assert late.tick(utc(2026, 11, 28, 12, 0, 1)) == []  # taken by the first runner
    assert slot_rows(engine) == [(utc(2026, 11, 28, 9), 1, "succeeded"),
                                 (utc(2026, 11, 28, 12), 1, "succeeded")]


def test_pause_while_no_runner_is_up_then_resume(engine: Engine, settings: Settings,
                                                  harnesses: list[Harness]) -> None:
    s = job_settings(settings, "0 * * * *")
    _history(engine, s, utc(2026, 11, 28, 6))
    runs.set_paused(engine, JOB, True, by="op", now=utc(2026, 11, 28, 6, 30))
    h = harness(harnesses, engine, s, utc(2026, 11, 28, 9, 10))
    assert h.tick(utc(2026, 11, 28, 9, 10), all_jobs=True) == []
    runs.set_paused(engine, JOB, False, by="op", now=utc(2026, 11, 28, 9, 20))
    assert h.drive(utc(2026, 11, 28, 10, 0)) == [utc(2026, 11, 28, 10)]
    assert [r[2] for r in slot_rows(engine)] == ["succeeded", "succeeded"]  # nothing missed


# --- stale runs -------------------------------------------------------------------------------


def _dead_runner_claims(engine: Engine, settings: Settings, slot: datetime) -> int:
    """A runner that claimed `slot` and then stopped heartbeating (SIGKILL, power cut)."""
    with transaction(engine) as conn:
        conn.execute(ops_runners.insert().values(id="runner-dead", kind="runner", host="gone",
                                                 pid=1, started_at=slot, heartbeat_at=slot))
    claim = runs.claim_slot(engine, settings, JOB, slot, runner_id="runner-dead",
                            started_by="runner@gone", clock=lambda: slot)
    assert claim.status == "claimed" and claim.run_id is not None
    return claim.run_id


def test_stale_run_is_interrupted_and_its_slot_retried_once(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    s = job_settings(settings, "0 * * * *")
    slot = utc(2026, 11, 28, 9)
    dead_run = _dead_runner_claims(engine, s, slot)
    h = harness(harnesses, engine, s, slot + timedelta(seconds=10))

    h.clock.set(slot + timedelta(seconds=10))
    assert h.runner.maintain(h.clock()) == []  # 10 s of silence is not dead yet
    assert h.tick(slot + timedelta(seconds=10), all_jobs=True) == []  # 09:00 is taken

    later = slot + timedelta(seconds=10 + s.runner.stale_after)
    h.clock.set(later)
    [retry] = h.runner.maintain(later)
    assert (retry.slot, retry.attempt) == (slot, 2)
    report = h.runner.run(retry)
    assert report is not None and report.status is RunStatus.SUCCEEDED
    assert report.reference_time == slot  # the retry runs as the slot it replaces

    h.clock.set(later + timedelta(minutes=5))
    assert h.runner.maintain(h.clock()) == []  # once only
    assert slot_rows(engine) == [(slot, 1, "interrupted"), (slot, 2, "succeeded")]
    record = runs.get_run(engine, dead_run)
    assert record is not None and "heartbeat" in (record.error or "")
    [event] = h.events("run-interrupted")
    assert event["run_id"] == dead_run


def test_a_slot_that_takes_over_a_dead_runs_lock_logs_it_as_run_interrupted(
        engine: Engine, settings: Settings) -> None:
    # A runner's sweep is not the only one to end a dead run: the next slot's claim that
    # finds the run holding the job's lock does too, and the runner's log says so the same
    # way (an operator looking for interruptions finds both).
    s = job_settings(settings, "0 * * * *")
    slot = utc(2026, 11, 28, 9)
    dead_run = _dead_runner_claims(engine, s, slot)
    later = utc(2026, 11, 28, 10)
    stream = io.StringIO()
    handler = RunLogHandler(RunLog(stream, "json"))
    root = logging.getLogger()
    root.addHandler(handler)  # as a runner routes the jobs' logging into its log
    try:
        claim = runs.claim_slot(engine, s, JOB, later, runner_id="runner-alive", started_by="runner@test",
                                clock=lambda: later)
    finally:
        root.removeHandler(handler)
    assert claim.status == "claimed"
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["event"], e.get("run_id"), e.get("job")) for e in events] == [
        ("run-interrupted", dead_run, JOB)]
    record = runs.get_run(engine, dead_run)
    assert record is not None and record.status == "interrupted"


def test_stale_run_outside_grace_is_not_retried(engine: Engine, settings: Settings,
                                                harnesses: list[Harness]) -> None:
    s = job_settings(settings, "0 * * * *", misfire_grace=timedelta(minutes=1))
    slot = utc(2026, 11, 28, 9)
    _dead_runner_claims(engine, s, slot)
    h = harness(harnesses, engine, s, slot + timedelta(minutes=5))
    assert h.runner.maintain(slot + timedelta(minutes=5)) == []
    assert slot_rows(engine) == [(slot, 1, "interrupted")]
    assert h.events("retry-not-wanted")


def test_a_slot_skipped_behind_a_retry_fires_when_the_retry_ends(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    # The dead 09:00 run holds the forbid lock; by 10:00 it is recovered and retried
    # (once, within grace), so 10:00 is recorded skipped while the retry runs. When
    # the retry ends, 10:00 fires: the newest slot of an outage is never lost.
    s = job_settings(settings, "0 * * * *")
    slot = utc(2026, 11, 28, 9)
    _dead_runner_claims(engine, s, slot)
    h = harness(harnesses, engine, s, slot + timedelta(minutes=59, seconds=50))
    claims = h.tick(utc(2026, 11, 28, 10), all_jobs=True, run=False)
    assert [(c.slot, c.attempt) for c in claims] == [(slot, 2)]
    assert slot_rows(engine) == [(slot, 1, "interrupted"), (slot, 2, "running"),
                                 (utc(2026, 11, 28, 10), 1, "skipped")]
    report = h.runner.run(claims[0])
    assert report is not None and report.status is RunStatus.SUCCEEDED
    assert slot_rows(engine) == [(slot, 1, "interrupted"), (slot, 2, "succeeded"),
                                 (utc(2026, 11, 28, 10), 1, "skipped"),
                                 (utc(2026, 11, 28, 10), 2, "succeeded")]
    [refired] = h.events("slot-refired")
    assert refired["slot"] == "2026-11-28T10:00:00.000Z"
    h.clock.set(utc(2026, 11, 28, 10, 5))
    assert h.runner.maintain(h.clock()) == []  # nothing more to retry


def test_a_slot_stopped_by_sigterm_is_retried_by_another_runner(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    s = job_settings(settings, "0 * * * *")
    slot = utc(2026, 11, 28, 9)
    for days in (1, 2):  # something to do, so the stop lands before the work is done
        add_tenant(engine, expire_date=slot - timedelta(days=days))
    stopping = harness(harnesses, engine, s, slot - timedelta(seconds=1))
    [claim] = stopping.tick(slot, all_jobs=True, run=False)
    stopping.runner.state.stop.set()  # SIGTERM: the run records itself interrupted
    report = stopping.runner.run(claim)
    assert report is not None and report.status is RunStatus.INTERRUPTED
    stopping.close()

    other = harness(harnesses, engine, s, slot + timedelta(seconds=20))
    [retry] = other.runner.maintain(slot + timedelta(seconds=20))
    assert (retry.slot, retry.attempt) == (slot, 2)
    assert other.runner.run(retry) is not None
    assert slot_rows(engine) == [(slot, 1, "interrupted"), (slot, 2, "succeeded")]
    assert other.runner.maintain(slot + timedelta(minutes=1)) == []  # once only


def test_a_run_that_raised_frees_the_lock_for_the_next_slot(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    s = job_settings(settings, "0 * * * *")
    slot = utc(2026, 11, 28, 9)
    h = harness(harnesses, engine, s, slot - timedelta(seconds=1))
    [claim] = h.tick(slot, all_jobs=True, run=False)
    with transaction(engine) as conn:  # the platform tables vanish under the run
        conn.execute(text("ALTER TABLE order_products RENAME TO order_products_moved"))
    jobs_platform_ok.clear()
    assert h.runner.run(claim) is None  # raised before the job started
    with transaction(engine) as conn:
        conn.execute(text("ALTER TABLE order_products_moved RENAME TO order_products"))
    assert slot_rows(engine) == [(slot, 1, "failed")]
    [next_claim] = h.tick(utc(2026, 11, 28, 10))
    assert next_claim.slot == utc(2026, 11, 28, 10)  # not skipped behind a stuck lock


def test_a_runner_never_takes_its_own_running_run_for_dead(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    s = job_settings(settings, "0 * * * *")
    slot = utc(2026, 11, 28, 9)
    h = harness(harnesses, engine, s, slot - timedelta(seconds=1))
    [claim] = h.tick(slot, all_jobs=True, run=False)
    # Its heartbeats did not get through for a while (a busy database), but it is alive
    # and its run is in hand: only another process may declare the run dead.
    h.clock.now = slot + timedelta(seconds=5 + s.runner.stale_after)
    assert h.runner.maintain(h.clock()) == []
    assert slot_rows(engine) == [(slot, 1, "running")]
    assert h.events("run-interrupted") == []
    report = h.runner.run(claim)
    assert report is not None and report.status is RunStatus.SUCCEEDED
    assert slot_rows(engine) == [(slot, 1, "succeeded")]


def test_a_runners_next_slot_never_takes_the_lock_of_its_own_running_run(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    s = job_settings(settings, "0 * * * *")
    slot = utc(2026, 11, 28, 9)
    h = harness(harnesses, engine, s, slot - timedelta(seconds=1))
    [claim] = h.tick(slot, all_jobs=True, run=False)
    # The run is still in hand an hour later and the runner's heartbeat looks stale (a
    # busy machine): its own next slot is skipped behind it, not declared its killer.
    later = utc(2026, 11, 28, 10)
    h.clock.now = later  # no heartbeat since 09:00
    assert h.runner.tick(later).claims == []
    assert slot_rows(engine) == [(slot, 1, "running"), (later, 1, "skipped")]
    report = h.runner.run(claim)
    assert report is not None and report.status is RunStatus.SUCCEEDED


def test_an_orphaned_run_of_this_runner_is_released(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    s = job_settings(settings, "0 * * * *")
    slot = utc(2026, 11, 28, 9)
    h = harness(harnesses, engine, s, slot - timedelta(seconds=1))
    [claim] = h.tick(slot, all_jobs=True, run=False)
    # Its worker ended without writing an outcome (the database was down at the end).
    h.runner.state.in_flight.pop(claim.run_id)
    h.clock.set(slot + timedelta(seconds=5))
    [retry] = h.runner.maintain(h.clock())  # released, and its slot retried once
    assert (retry.slot, retry.attempt) == (slot, 2)
    assert h.runner.run(retry) is not None
    claims = h.tick(utc(2026, 11, 28, 10))
    assert slot_rows(engine) == [(slot, 1, "interrupted"), (slot, 2, "succeeded"),
                                 (utc(2026, 11, 28, 10), 1, "succeeded")]
    assert [c.slot for c in claims] == [utc(2026, 11, 28, 10)]


def test_a_manual_run_without_a_runner_is_never_stale(engine: Engine, settings: Settings,
                                                      harnesses: list[Harness]) -> None:
    seen: list[list[int]] = []

    def during(run_id: int | None) -> None:
        later = utc(2026, 11, 28, 13)
        seen.append([r.run_id for r in runs.recover_stale_runs(engine, later, 30)])

    runs.execute(engine, settings, JOB, now=utc(2026, 11, 28, 12), started_by="op@host",
                 clock=lambda: utc(2026, 11, 28, 12), on_started=during)
    assert seen == [[]]


# --- the log ----------------------------------------------------------------------------------


def test_log_lines_are_one_event_each_and_hide_passwords() -> None:
    stream = io.StringIO()
    log = RunLog(stream, "json", clock=lambda: utc(2026, 11, 28))
    log.error("tick-failed", error="database unreachable at postgresql://ops:hunter2@db/x",
              token="abc", nested={"password": "p", "url": "redis://:s3cret@cache:6379"})
    text = io.StringIO()
    RunLog(text, "text", clock=lambda: utc(2026, 11, 28)).info(
        "slot-claimed", job=JOB, note="two\nlines", url="smtp://u:pw@mail:25")
    [line] = stream.getvalue().splitlines()
    event = json.loads(line)
    assert event["ts"] == "2026-11-28T00:00:00.000Z" and event["level"] == "error"
    assert event["event"] == "tick-failed" and event["token"] == "***"
    assert "hunter2" not in line and "s3cret" not in line and '"p"' not in line
    assert "postgresql://ops:***@db/x" in event["error"]
    [tline] = text.getvalue().splitlines()
    assert tline.startswith("2026-11-28T00:00:00.000Z INFO slot-claimed job=expiry-checker")
    assert "pw@" not in tline


def test_a_changed_schedule_counts_from_the_change_not_from_the_old_slots(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    daily = job_settings(settings, "0 0 * * *")
    _history(engine, daily, utc(2026, 11, 28, 0))
    assert runs.note_schedules(engine, daily, utc(2026, 11, 28, 0)) == []  # first note: no change
    assert runs.note_schedules(engine, daily, utc(2026, 11, 28, 5)) == []  # same schedule
    every5 = job_settings(settings, "*/5 * * * *")
    assert runs.note_schedules(engine, every5, utc(2026, 11, 28, 10, 58)) == [JOB]
    h = harness(harnesses, engine, every5, utc(2026, 11, 28, 10, 59))

    assert h.tick(utc(2026, 11, 28, 10, 59), all_jobs=True) == []
    # Not 130 missed five-minute slots since midnight: only the daily run that happened.
    assert slot_rows(engine) == [(utc(2026, 11, 28, 0), 1, "succeeded")]
    assert [c.slot for c in h.tick(utc(2026, 11, 28, 11))] == [utc(2026, 11, 28, 11)]


def test_an_unchanged_schedule_still_fires_its_misfire(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    hourly = job_settings(settings, "0 * * * *")
    _history(engine, hourly, utc(2026, 11, 28, 6))
    runs.note_schedules(engine, hourly, utc(2026, 11, 28, 6))
    assert runs.note_schedules(engine, hourly, utc(2026, 11, 28, 8, 30)) == []  # restart
    h = harness(harnesses, engine, hourly, utc(2026, 11, 28, 8, 30))
    assert [c.slot for c in h.tick(utc(2026, 11, 28, 8, 30), all_jobs=True)] == [
        utc(2026, 11, 28, 8)]


# --- the loop ------------------------------------------------------------------------------------


class _OnePass(SlotRunner):
    """Counts its recoveries; the loop stops after its first pass."""

    recoveries = 0

    def recover(self, now: datetime) -> list[ClaimedRun]:
        self.recoveries += 1
        return super().recover(now)

    def tick(self, now: datetime, *, all_jobs: bool = False, recover: bool = True) -> Tick:
        try:
            return super().tick(now, all_jobs=all_jobs, recover=recover)
        finally:
            self.state.stop.set()


def test_a_loop_pass_with_maintenance_and_a_slot_recovers_once(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    # The first pass is both the maintenance tick and the start-up tick of every job.
    s = job_settings(settings, "0 * * * *")
    slot = utc(2026, 11, 28, 9)
    _dead_runner_claims(engine, s, slot)
    h = harness(harnesses, engine, s, slot + timedelta(seconds=45))
    core = _OnePass(h.runner.state)
    assert asyncio.run(serve(h.runner.state, core)) == 0
    assert core.recoveries == 1
    [retry] = h.events("retry-claimed")
    assert (retry["slot"], retry["attempt"]) == ("2026-11-28T09:00:00.000Z", 2)
    assert [e["event"] for e in h.events() if e["event"].startswith("retry-")] == [
        "retry-claimed"]

"""Which slots a runner fires, records as missed, or retries: decisions only, no I/O.

The runner reads what the database says about each job (the newest slot any runner
handled, pause state) and hands it in with the time; this module answers. Every runner
computes the same answers from the same facts, and the unique claim in ops_runs turns
them into exactly one run per slot.

Counting starts after the newest of: the last slot handled in ops_runs, the moment the
job was last resumed (no burst of paused slots), and this runner's own cursor. A job
with no history starts from the runner's start: nothing before it counts as missed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from jobs.cron import CronSchedule
from jobs.records import RunStatus, Trigger
from jobs.settings import JobConfig

MISSED_CAP = 1_000  # newest missed slots recorded after an outage; older ones are only counted
COUNT_LIMIT = 10_000  # beyond this many older slots the count is a lower bound
_FIRST_WINDOW = timedelta(minutes=1)
RETRY_BACKOFF_MAX = timedelta(hours=1)
RETRIED_STATUSES = frozenset({RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.INTERRUPTED})


@dataclass(frozen=True)
class JobFacts:
    """What the database says about one job right now."""

    last_slot: datetime | None = None  # newest scheduled_for of the job in ops_runs
    paused: bool = False
    resumed_at: datetime | None = None


@dataclass(frozen=True)
class SlotPlan:
    """What to do about one job's passed slots at `now`."""

    job_id: str
    through: datetime  # every slot up to here is decided by this plan
    fire: datetime | None = None  # the most recent passed slot, within misfire_grace
    missed: tuple[datetime, ...] = ()  # older passed slots, superseded by a later one
    too_late: datetime | None = None  # the most recent slot, when outside misfire_grace
    dropped: int = 0  # passed slots older than the recorded ones, not recorded
    dropped_exact: bool = True  # False: `dropped` is a lower bound

    @property
    def empty(self) -> bool:
        return self.fire is None and not self.missed and self.too_late is None


def since_for(facts: JobFacts, cursor: datetime | None, started_at: datetime) -> datetime:
    """The instant after which a job's slots are still undecided."""
    marks = [t for t in (cursor, facts.last_slot, facts.resumed_at) if t is not None]
    if cursor is None and facts.last_slot is None:
        marks.append(started_at)
    return max(marks)


def recent_slots(schedule: CronSchedule, since: datetime, now: datetime,
                 keep: int) -> tuple[list[datetime], int, bool]:
    """The newest `keep` slots in (since, now], plus how many older slots lie in that span
    and whether that count is exact.

    Looks back from `now` in growing windows, so a runner that was down for a month on an
    every-second schedule does not walk millions of slots to find the last thousand.
    """
    window = _FIRST_WINDOW
    while True:
        lo = max(since, now - window)
        slots = schedule.previous_slots(now, lo)
        if len(slots) >= keep or lo == since:
            break
        window *= 4
    kept = slots[-keep:] if keep else []
    older = len(slots) - len(kept)
    exact = True
    if lo > since:
        counted = 0
        for slot in schedule.slots_after(since):
            if slot > lo:
                break
            counted += 1
            if counted >= COUNT_LIMIT:
                exact = False
                break
        older += counted
    return kept, older, exact


def plan_job(job: JobConfig, facts: JobFacts, since: datetime, now: datetime,
             cap: int = MISSED_CAP) -> SlotPlan:
    """Decide a job's slots in (since, now]: the most recent fires once if within
    misfire_grace, every other one is missed; at most `cap` are recorded."""
    through = max(since, now)
    if not job.enabled or facts.paused or since >= now:
        return SlotPlan(job.job_id, through)
    kept, older, exact = recent_slots(job.schedule, since, now, cap + 1)
    if not kept:
        return SlotPlan(job.job_id, through)
    latest, rest = kept[-1], kept[:-1]
    grace = job.misfire_grace
    if grace is None or now - latest <= grace:
        fire, too_late = latest, None
    else:
        fire, too_late = None, latest
        if len(rest) >= cap:  # the late one counts against the cap too
            rest, older = rest[1:], older + 1
    return SlotPlan(job.job_id, through, fire, tuple(rest), too_late, older, exact)


class EndedRun(Protocol):
    """What a retry decision reads of a run: a RunRecord, or an ops_runs row."""

    @property
    def trigger(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def scheduled_for(self) -> datetime | None: ...
    @property
    def finished_at(self) -> datetime | None: ...
    @property
    def created_at(self) -> datetime: ...


def retry_backoff(job: JobConfig, attempt: int) -> timedelta:
    """The wait after attempt `attempt` ended before the next one: `retry_backoff`,
    doubling with each attempt, at most an hour."""
    doublings = min(attempt - 1, 20)  # 2**20 backoffs is past the cap for any backoff
    wait = timedelta(seconds=job.retry_backoff * 2 ** doublings)
    return min(wait, RETRY_BACKOFF_MAX)


def retry_at(run: EndedRun, job: JobConfig) -> datetime | None:
    """When the next attempt of a slot's run that just ended is due, or None when the
    run has no retry left (its outcome is final).

    With `retries = 0` only a slot's first interruption is retried, at once (its runner
    died or stopped; the work was not wrong). With `retries = N`, a run ending failed,
    timed_out or interrupted runs again as attempt 2 ... N + 1 after the backoff,
    unless that would be at or after the job's next slot, which then does the work.
    `partial` is never retried; nor are manual and HTTP runs."""
    if run.trigger != Trigger.SCHEDULE or run.scheduled_for is None:
        return None
    if run.status not in RETRIED_STATUSES:
        return None
    ended = run.finished_at or run.created_at
    if job.retries == 0:
        return ended if run.status == RunStatus.INTERRUPTED and run.attempt == 1 else None
    if run.attempt > job.retries:
        return None
    due = ended + retry_backoff(job, run.attempt)
    following = next_slot_after(job, run.scheduled_for)
    if following is not None and due >= following:
        return None
    return due


def next_slot_after(job: JobConfig, slot: datetime) -> datetime | None:
    return next(iter(job.schedule.slots_after(slot)), None)


def retry_refusal(run: EndedRun, job: JobConfig, facts: JobFacts, now: datetime) -> str | None:
    """Why a retry that is due now must not start after all, or None when it may: the job
    is disabled or paused, the slot is past misfire_grace, or (with `retries`) the job's
    next slot has come meanwhile."""
    if not job.enabled or facts.paused:
        return "the job is disabled or paused"
    assert run.scheduled_for is not None
    if job.misfire_grace is not None and now - run.scheduled_for > job.misfire_grace:
        return f"the slot is past misfire_grace ({job.misfire_grace})"
    following = next_slot_after(job, run.scheduled_for)
    if job.retries and following is not None and now >= following:
        return "the job's next slot has come; it does the work"
    return None


class Scheduler:
    """One runner's cursors over its enabled jobs' slots, and when to wake next.

    Pure state: the caller reads the facts, calls `plan`, acts on the plan, then `advance`s
    the cursor; a failed action leaves the cursor where it was, so the slot is decided
    again on the next tick.
    """

    def __init__(self, jobs: Mapping[str, JobConfig], started_at: datetime,
                 cap: int = MISSED_CAP) -> None:
        self.jobs = {job_id: job for job_id, job in jobs.items() if job.enabled}
        self.started_at = started_at
        self.cap = cap
        self._cursor: dict[str, datetime] = {}
        self._next: dict[str, tuple[datetime, datetime | None]] = {}

    @property
    def job_ids(self) -> list[str]:
        return list(self.jobs)

    def cursor(self, job_id: str) -> datetime | None:
        return self._cursor.get(job_id)

    def plan(self, job_id: str, facts: JobFacts, now: datetime) -> SlotPlan:
        since = since_for(facts, self._cursor.get(job_id), self.started_at)
        return plan_job(self.jobs[job_id], facts, since, now, self.cap)

    def advance(self, job_id: str, through: datetime) -> None:
        current = self._cursor.get(job_id)
        if current is None or through > current:
            self._cursor[job_id] = through

    def next_slot(self, job_id: str) -> datetime | None:
        """The job's first slot after its cursor (cached: croniter is not free)."""
        after = self._cursor.get(job_id, self.started_at)
        cached = self._next.get(job_id)
        if cached is not None and cached[0] == after:
            return cached[1]
        slot = next(iter(self.jobs[job_id].schedule.slots_after(after)), None)
        self._next[job_id] = (after, slot)
        return slot

    def due(self, now: datetime) -> list[str]:
        return [j for j in self.jobs if (slot := self.next_slot(j)) is not None and slot <= now]

    def next_wake(self) -> datetime | None:
        slots = [s for j in self.jobs if (s := self.next_slot(j)) is not None]
        return min(slots, default=None)


__all__ = [
    "MISSED_CAP",
    "JobFacts",
    "Scheduler",
    "SlotPlan",
    "plan_job",
    "recent_slots",
    "retry_at",
    "retry_backoff",
    "retry_refusal",
    "since_for",
]

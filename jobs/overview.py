"""What the faces show about the jobs, read in one go: each job's schedule, whether it
fires, its last and its running run, the runners, the outbox and the cache. The console's
jobs screen (in a worker thread) and the CLI's `jobs` and `status` all read this, so they
agree on every fact and on the words for it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy.engine import Engine

from jobs import outbox, runs
from jobs.cache import Cache
from jobs.errors import OpsError
from jobs.presence import RunnerInfo, list_runners
from jobs.records import RunnerKind, RunRecord
from jobs.runner_schedules import EffectiveSchedules, JobSchedule, live_schedules
from jobs.runs import JobState
from jobs.settings import JOB_IDS, Settings

RECENT = 30

ScheduleState = Literal["disabled", "paused", "active"]

# Why a `running` run is shown as stale: its process stopped heartbeating, so it is not
# running any more, until some process marks it `interrupted`.
STALE_REASON = "its runner stopped heartbeating"


def schedule_state(enabled: bool, paused: bool) -> ScheduleState:
    """Whether a job's slots fire: `disabled` in the configuration, `paused` by an
    operator (manual runs still work in both), else `active`."""
    if not enabled:
        return "disabled"
    return "paused" if paused else "active"


@dataclass(frozen=True)
class JobView:
    """One job as every face shows it."""

    job_id: str
    schedule: JobSchedule  # what the live runners plan with, else the local configuration
    pause: JobState
    last_run: RunRecord | None  # the newest run that ran (not missed or skipped)
    running: RunRecord | None  # the newest `running` run
    stale: frozenset[int] = field(default_factory=frozenset)  # of all jobs' running runs

    @property
    def enabled(self) -> bool:
        return self.schedule.enabled

    @property
    def paused(self) -> bool:
        return self.pause.paused

    @property
    def state(self) -> ScheduleState:
        return schedule_state(self.enabled, self.paused)

    def next_slots(self, now: datetime, count: int) -> list[datetime]:
        """The next `count` slots after `now`; none for a job that fires nothing."""
        if self.state != "active":
            return []
        return self.schedule.schedule.next_slots(now, count)

    def is_stale(self, record: RunRecord | None) -> bool:
        return record is not None and record.run_id in self.stale


@dataclass(frozen=True)
class Overview:
    loaded_at: datetime
    states: Mapping[str, JobState]
    last_runs: Mapping[str, RunRecord]
    running: Mapping[str, RunRecord]  # job id -> its newest running run
    runners: tuple[RunnerInfo, ...]  # the kinds asked for, newest first
    outbox_counts: Mapping[str, int] | None  # None: not read
    cache_error: str | None
    schedules: EffectiveSchedules  # what the live runners plan with
    recent: tuple[RunRecord, ...] = ()  # the newest runs of every job
    stale: frozenset[int] = frozenset()  # running runs whose process stopped heartbeating

    @property
    def alive_runners(self) -> tuple[RunnerInfo, ...]:
        """The live runners (the CLI and the console fire no slots)."""
        return tuple(r for r in self.runners if r.alive and r.kind is RunnerKind.RUNNER)

    @property
    def runner_alive(self) -> bool:
        return bool(self.alive_runners)

    def job(self, job_id: str) -> JobView:
        return JobView(job_id, self.schedules.job(job_id), self.states[job_id],
                       self.last_runs.get(job_id), self.running.get(job_id), self.stale)

    @property
    def jobs(self) -> tuple[JobView, ...]:
        return tuple(self.job(job_id) for job_id in JOB_IDS)


def load_overview(engine: Engine, settings: Settings, cache: Cache | None, now: datetime, *,
                  kinds: tuple[RunnerKind, ...] = (RunnerKind.RUNNER,), recent: int = RECENT,
                  with_outbox: bool = True) -> Overview:
    """Everything at `now` (the real time: liveness is judged on it). `cache` is pinged
    when given; `kinds` of processes are listed (`status` shows the CLI's and the
    console's too); `recent` newest runs are read (0: none) and the outbox counted unless
    `with_outbox` is false, for the faces that show neither."""
    running: dict[str, RunRecord] = {}
    for record in sorted(runs.running_runs(engine), key=lambda r: r.run_id):
        running[record.job_id] = record
    cache_error: str | None = None
    if cache is not None:
        try:
            cache.ping()
        except OpsError as exc:
            cache_error = exc.message
    runners = tuple(list_runners(engine, now, settings.runner.stale_after, kinds=kinds))
    return Overview(
        loaded_at=now,
        states=runs.job_states(engine),
        last_runs=runs.last_runs(engine),
        running=running,
        runners=runners,
        outbox_counts=outbox.counts_by_status(engine) if with_outbox else None,
        cache_error=cache_error,
        recent=tuple(runs.history(engine, None, limit=recent)) if recent > 0 else (),
        schedules=live_schedules(engine, settings, now, runners),
        stale=frozenset(runs.stale_run_ids(engine, now, settings.runner.stale_after)),
    )

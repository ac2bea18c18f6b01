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

from jobs import alerts, outbox, runs
from jobs.alerts import Undelivered
from jobs.cache import Cache
from jobs.errors import OpsError
from jobs.humanize import ago, plural
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

AttentionKind = Literal["failing", "overdue", "stale", "paused", "dead_emails", "undelivered_alerts"]


@dataclass(frozen=True)
class Attention:
    """One thing an operator should look at (the jobs screen's attention strip); `job_id`
    and `run_id` say what it leads to."""

    kind: AttentionKind
    text: str
    job_id: str | None = None
    run_id: int | None = None


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
    stale_runs: tuple[RunRecord, ...] = ()  # those runs, oldest first
    undelivered: Undelivered | None = None  # alert deliveries that need a person; None: not read

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

    def attention(self) -> tuple[Attention, ...]:
        """What needs a person, most urgent first; empty when all is well."""
        now = self.loaded_at
        out: list[Attention] = []
        for view in self.jobs:
            state, last = view.pause, view.last_run
            if state.failing_since is not None:
                text = f"{view.job_id} failing since {ago(state.failing_since, now)}"
                if last is not None and str(last.status) in alerts.FAILING_STATUSES:
                    text += f" · last run #{last.run_id} {last.status}"
                    if last.errors:
                        text += f", {plural(last.errors, 'error')}"
                out.append(Attention("failing", text, view.job_id,
                                     None if last is None else last.run_id))
            if state.overdue_since is not None and view.state == "active":
                out.append(Attention(
                    "overdue", f"{view.job_id} overdue since {ago(state.overdue_since, now)}: "
                    "no successful run within its period", view.job_id))
        for record in self.stale_runs:
            out.append(Attention(
                "stale", f"run #{record.run_id} of {record.job_id} is stale: {STALE_REASON}"
                f" (started {ago(record.started_at, now)})", record.job_id, record.run_id))
        for view in self.jobs:
            state = view.pause
            if state.paused:
                why = f": {state.paused_reason}" if state.paused_reason else " (no reason given)"
                out.append(Attention(
                    "paused", f"{view.job_id} paused {ago(state.paused_at, now)} by "
                    f"{state.paused_by or '?'}{why}", view.job_id))
        dead = (self.outbox_counts or {}).get("dead", 0)
        if dead:
            out.append(Attention("dead_emails", f"{plural(dead, 'dead email')} in the outbox: "
                                 "every attempt failed, nobody received them"))
        un = self.undelivered
        if un is not None and un.total:
            parts = ([f"{un.dead:,} dead"] if un.dead else []) + (
                [f"{un.waiting:,} pending for over {alerts.PENDING_TOO_LONG.seconds // 60} min"]
                if un.waiting else [])
            out.append(Attention(
                "undelivered_alerts", f"Alerts not delivered: {', '.join(parts)} "
                f"(the oldest raised {ago(un.oldest, now)})"))
        return tuple(out)


def load_overview(engine: Engine, settings: Settings, cache: Cache | None, now: datetime, *,
                  kinds: tuple[RunnerKind, ...] = (RunnerKind.RUNNER,), recent: int = RECENT,
                  with_outbox: bool = True, with_alerts: bool = False) -> Overview:
    """Everything at `now` (the real time: liveness is judged on it). `cache` is pinged
    when given; `kinds` of processes are listed (`status` shows the CLI's and the
    console's too); `recent` newest runs are read (0: none) and the outbox counted unless
    `with_outbox` is false, for the faces that show neither; undelivered alerts are read
    `with_alerts` (the console's attention strip)."""
    running: dict[str, RunRecord] = {}
    all_running = sorted(runs.running_runs(engine), key=lambda r: r.run_id)
    for record in all_running:
        running[record.job_id] = record
    cache_error: str | None = None
    if cache is not None:
        try:
            cache.ping()
        except OpsError as exc:
            cache_error = exc.message
    runners = tuple(list_runners(engine, now, settings.runner.stale_after, kinds=kinds))
    stale = frozenset(runs.stale_run_ids(engine, now, settings.runner.stale_after))
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
        stale=stale,
        stale_runs=tuple(r for r in all_running if r.run_id in stale),
        undelivered=alerts.undelivered(engine, now) if with_alerts else None,
    )

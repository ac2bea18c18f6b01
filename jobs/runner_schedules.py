"""The schedules the live runners plan with, for the faces to show.

What fires is decided by the runners' configuration, not by the configuration of whoever
looks: a runner started with `--config slow.toml` (@daily) fires daily even when the
viewer's ./schedules.toml says every 5 seconds. So each runner records, before it
registers, every job's schedule (cron, timezone, enabled) and a digest of the job's whole
configuration in ops_runner_schedules; `live_schedules` reads them back for the live
runners and says where the local configuration, or the runners among themselves, differ.
With no live runner the local configuration is all there is, and it is what is shown.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine

from jobs.audit import AuditAction, record
from jobs.cron import CronError, CronSchedule
from jobs.db import ops_runner_schedules, transaction
from jobs.presence import RunnerInfo, list_runners
from jobs.records import RunnerKind
from jobs.runs import note_schedules_on
from jobs.settings import JOB_IDS, JobConfig, Settings

ScheduleSource = Literal["runner", "local"]


def _plain(value: Any) -> Any:
    if isinstance(value, CronSchedule):
        return [value.expression, value.timezone.key]
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, tuple):
        return list(value)
    return value


def config_digest(job: JobConfig) -> str:
    """sha256 of everything that decides what the job does, the same in every process."""
    data = {f.name: _plain(getattr(job, f.name)) for f in fields(job)}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class JobSchedule:
    """One job's schedule as one process plans it."""

    job_id: str
    schedule: CronSchedule
    enabled: bool
    digest: str

    @classmethod
    def of(cls, job: JobConfig) -> JobSchedule:
        return cls(job.job_id, job.schedule, job.enabled, config_digest(job))

    @property
    def expression(self) -> str:
        return self.schedule.expression

    @property
    def timezone(self) -> str:
        return self.schedule.timezone.key

    @property
    def words(self) -> str:
        """`@daily UTC`, or `disabled` when nothing fires."""
        return f"{self.expression} {self.timezone}" if self.enabled else "disabled"


def _rows(runner_id: str, settings: Settings) -> list[dict[str, Any]]:
    return [
        {"runner_id": runner_id, "job_id": job_id, "schedule": job.schedule.expression,
         "timezone": job.timezone, "enabled": job.enabled, "config_digest": config_digest(job),
         "config_source": settings.source}
        for job_id, job in settings.jobs.items()
    ]


def record_schedules(engine: Engine, runner_id: str, settings: Settings) -> None:
    """What the runner `runner_id` plans with; called before it registers, so a runner
    that looks alive always has its schedules on record."""
    with transaction(engine) as conn:
        conn.execute(ops_runner_schedules.insert(), _rows(runner_id, settings))


def record_reload(engine: Engine, runner_id: str, settings: Settings, now: datetime, *,
                  detail: str) -> list[str]:
    """A runner's reloaded configuration, in one transaction: the schedules it now plans
    with (for the faces), each job's schedule change (counting restarts at `now`, as at a
    start) and the audit entry, so none is on record without the others. Returns the jobs
    whose schedule changed."""
    with transaction(engine) as conn:
        changed = note_schedules_on(conn, settings, now)
        conn.execute(delete(ops_runner_schedules)
                     .where(ops_runner_schedules.c.runner_id == runner_id))
        conn.execute(ops_runner_schedules.insert(), _rows(runner_id, settings))
        record(conn, at=now, actor=f"runner:{runner_id}", action=AuditAction.RELOAD,
               detail=detail)
    return changed


@dataclass(frozen=True)
class RunnerSchedules:
    """A live runner and the schedules it recorded."""

    runner: RunnerInfo
    config_source: str
    jobs: Mapping[str, JobSchedule]

    @property
    def label(self) -> str:
        return _label(self.runner)


def _label(runner: RunnerInfo) -> str:
    return f"{runner.host} pid {runner.pid}"


@dataclass(frozen=True)
class Unreadable:
    """Schedules of one job that live runners recorded and this version cannot parse
    (written by another version), and which runners recorded them."""

    job_id: str
    schedule: str  # as recorded, with its timezone
    runners: tuple[str, ...]  # their labels


@dataclass(frozen=True)
class EffectiveSchedules:
    """The schedules to show for each job, and where they come from."""

    source: ScheduleSource  # "runner": a live runner's; "local": this process's configuration
    jobs: Mapping[str, JobSchedule]
    local: Mapping[str, JobSchedule]
    local_source: str  # the schedules file this process read
    runners: tuple[RunnerSchedules, ...] = ()  # live runners with recorded schedules, newest first
    differs: tuple[str, ...] = ()  # jobs whose local configuration differs from the shown one
    disagree: tuple[str, ...] = ()  # jobs the live runners configure differently
    # Live runners' schedules this version cannot parse: such a runner's plan for the job
    # is unknown here, so the job is shown from another runner's or the local configuration.
    unreadable: tuple[Unreadable, ...] = ()

    def job(self, job_id: str) -> JobSchedule:
        return self.jobs[job_id]

    def source_of(self, job_id: str) -> ScheduleSource:
        """Where the job's shown schedule comes from (a job that no live runner recorded in
        a form this version can read is shown from the local configuration)."""
        return "runner" if any(job_id in r.jobs for r in self.runners) else "local"

    def warnings(self) -> list[str]:
        """At most one line for the local configuration, one for runners that disagree and
        one for schedules of live runners that this version cannot read, in that order."""
        lines: list[str] = []
        if self.differs:
            sources = sorted({r.config_source for r in self.runners})
            whose = "live runner's" if len(self.runners) == 1 else "live runners'"
            lines.append(
                f"the {whose} configuration ({', '.join(sources)}) differs from the local one "
                f"({self.local_source}) for {self._describe(self.differs)}; showing the {whose} schedules"
            )
        if self.disagree:
            parts = []
            for job_id in self.disagree:
                plans = [(r.label, r.jobs[job_id].words) for r in self.runners if job_id in r.jobs]
                if len({words for _, words in plans}) == 1:
                    parts.append(f"{job_id} (settings other than the schedule)")
                else:
                    parts.append(f"{job_id} ({', '.join(f'{who}: {w}' for who, w in plans)})")
            lines.append("live runners disagree about " + "; ".join(parts)
                         + "; each fires its own slots, showing the newest runner's")
        if self.unreadable:
            parts = []
            for u in self.unreadable:
                # The newest runner that recorded it readably is the one shown, as in jobs.
                by = next((r for r in self.runners if u.job_id in r.jobs), None)
                shown = "the local configuration" if by is None else f"{by.label}'s"
                parts.append(f"{u.job_id} ({', '.join(u.runners)}: {u.schedule}; "
                             f"showing {shown})")
            lines.append("this version cannot read the schedule live runners recorded for "
                         + "; ".join(parts) + "; what they fire may differ from what is shown")
        return lines

    def _describe(self, job_ids: Sequence[str]) -> str:
        parts = []
        for job_id in job_ids:
            theirs, mine = self.jobs[job_id], self.local[job_id]
            if (theirs.expression, theirs.timezone, theirs.enabled) == (
                    mine.expression, mine.timezone, mine.enabled):
                parts.append(f"{job_id} (settings other than the schedule)")
            else:
                parts.append(f"{job_id} (runner: {theirs.words}, local: {mine.words})")
        return ", ".join(parts)


def _job_schedule(row: Any) -> JobSchedule | None:
    try:
        schedule = CronSchedule.parse(row.schedule, row.timezone)
    except CronError:  # written by a runner of another version; nothing we can plan from
        return None
    return JobSchedule(row.job_id, schedule, bool(row.enabled), row.config_digest)


def live_schedules(engine: Engine, settings: Settings, now: datetime,
                   runners: Sequence[RunnerInfo] | None = None) -> EffectiveSchedules:
    """The schedules the live runners use (the newest runner's, per job), else the local
    configuration. `now` is the real time: liveness is judged on it. `runners` saves a
    query when the caller has just listed them."""
    local = {job_id: JobSchedule.of(settings.job(job_id)) for job_id in JOB_IDS}
    if runners is None:
        runners = list_runners(engine, now, settings.runner.stale_after)
    alive = [r for r in runners if r.alive and r.kind is RunnerKind.RUNNER]
    recorded: dict[str, dict[str, JobSchedule]] = {}
    sources: dict[str, str] = {}
    unreadable: dict[tuple[str, str], list[str]] = {}  # (job, schedule) -> runners
    if alive:
        with transaction(engine) as conn:
            rows = conn.execute(
                select(ops_runner_schedules)
                .where(ops_runner_schedules.c.runner_id.in_([r.id for r in alive]))
            ).all()
        labels = {r.id: _label(r) for r in alive}
        for row in sorted(rows, key=lambda r: labels[r.runner_id]):
            sources[row.runner_id] = row.config_source
            if row.job_id not in local:
                continue
            job = _job_schedule(row)
            if job is None:
                unreadable.setdefault((row.job_id, f"{row.schedule} {row.timezone}"),
                                      []).append(labels[row.runner_id])
            else:
                recorded.setdefault(row.runner_id, {})[job.job_id] = job
    unread = tuple(Unreadable(job_id, schedule, tuple(who))
                   for (job_id, schedule), who in sorted(
                       unreadable.items(), key=lambda kv: (JOB_IDS.index(kv[0][0]), kv[0][1])))
    live = tuple(
        RunnerSchedules(r, sources[r.id], recorded[r.id])
        for r in sorted(alive, key=lambda r: r.started_at, reverse=True) if r.id in recorded
    )
    if not live:
        return EffectiveSchedules("local", local, local, settings.source, unreadable=unread)
    shown: dict[str, JobSchedule] = {}
    disagree: list[str] = []
    for job_id in JOB_IDS:
        plans = [r.jobs[job_id] for r in live if job_id in r.jobs]
        shown[job_id] = plans[0] if plans else local[job_id]
        if len({p.digest for p in plans}) > 1:
            disagree.append(job_id)
    differs = tuple(j for j in JOB_IDS if shown[j].digest != local[j].digest)
    return EffectiveSchedules("runner", shown, local, settings.source, live, differs,
                              tuple(disagree), unread)


__all__ = [
    "EffectiveSchedules",
    "JobSchedule",
    "RunnerSchedules",
    "ScheduleSource",
    "Unreadable",
    "config_digest",
    "live_schedules",
    "record_reload",
    "record_schedules",
]

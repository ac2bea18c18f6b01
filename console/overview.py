"""The jobs screen's data, read in one go from the jobs API (in a worker thread)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Engine

from jobs import outbox, runs
from jobs.cache import Cache
from jobs.errors import OpsError
from jobs.presence import RunnerInfo, list_runners
from jobs.records import RunRecord
from jobs.runner_schedules import EffectiveSchedules, live_schedules
from jobs.runs import JobState
from jobs.settings import Settings

RECENT = 30


@dataclass(frozen=True)
class Overview:
    loaded_at: datetime
    states: Mapping[str, JobState]
    last_runs: Mapping[str, RunRecord]
    running: Mapping[str, RunRecord]  # job id -> its newest running run
    runners: tuple[RunnerInfo, ...]
    outbox_counts: Mapping[str, int]
    cache_error: str | None
    recent: tuple[RunRecord, ...] = ()  # the newest runs of every job
    schedules: EffectiveSchedules | None = None  # what the live runners plan with
    stale: frozenset[int] = frozenset()  # running runs whose process stopped heartbeating

    @property
    def alive_runners(self) -> tuple[RunnerInfo, ...]:
        return tuple(r for r in self.runners if r.alive)


def load_overview(engine: Engine, settings: Settings, cache: Cache | None,
                  now: datetime) -> Overview:
    running: dict[str, RunRecord] = {}
    for record in sorted(runs.running_runs(engine), key=lambda r: r.run_id):
        running[record.job_id] = record
    cache_error: str | None = None
    if cache is not None:
        try:
            cache.ping()
        except OpsError as exc:
            cache_error = exc.message
    runners = tuple(list_runners(engine, now, settings.runner.stale_after))
    return Overview(
        loaded_at=now,
        states=runs.job_states(engine),
        last_runs=runs.last_runs(engine),
        running=running,
        runners=runners,
        outbox_counts=outbox.counts_by_status(engine),
        cache_error=cache_error,
        recent=tuple(runs.history(engine, None, limit=RECENT)),
        schedules=live_schedules(engine, settings, now, runners),
        stale=frozenset(runs.stale_run_ids(engine, now, settings.runner.stale_after)),
    )

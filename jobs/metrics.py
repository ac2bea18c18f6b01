"""Prometheus metrics of the deployment, read from the database at scrape time.

Like kube-state-metrics, the figures describe the deployment, not the process that
serves them: every runner on one database reports the same values. `MetricsCollector` is
a prometheus_client custom collector; `exposition()` renders one scrape in the text
format. Labels are `job` and `status` only, never a tenant: a scrape holds no tenant data.

Each family and where it comes from:
- storeflow_job_runs_total{job,status}: ops_run_counts, bumped as each run reaches a final
  status (pruning history never lowers it); every job and final status, zeros included;
- storeflow_job_last_success_timestamp_seconds{job}: finish of the newest `succeeded` run
  (no sample for a job that never succeeded);
- storeflow_job_last_duration_seconds{job}: start to finish of the newest finished run
  that ran (not a skipped or missed slot);
- storeflow_job_next_run_timestamp_seconds{job}: the next slot of the live runners'
  schedule of each enabled job (the local configuration when no runner is alive);
- storeflow_job_running / _paused / _failing / _overdue{job}: 0 or 1, from ops_runs and
  ops_job_state (alert_state 'failing', overdue_since set);
- storeflow_outbox_emails{status}, storeflow_alert_deliveries{status}: rows per status
  (the outbox's `sent` rows, the one figure that grows with the history kept, are counted
  at most once every SENT_COUNT_TTL seconds; every other status on each scrape);
- storeflow_runners_alive: runners heartbeating within `stale_after`.

A scrape stays cheap on a long history: every per-job figure is an index lookup (see
migration 0004_n), never a scan of ops_runs or ops_run_items; emails are counted per status
by index ranges that leave out `sent` (see above).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import CompoundSelect, Select, String, func, literal, select, union_all
from sqlalchemy.engine import Connection, Engine

from jobs.db import (
    connection,
    is_sqlite,
    ops_alert_deliveries,
    ops_email_outbox,
    ops_job_state,
    ops_run_counts,
    ops_runners,
    ops_runs,
)
from jobs.records import RunStatus
from jobs.runner_schedules import EffectiveSchedules, live_schedules
from jobs.settings import JOB_IDS, Settings
from jobs.timeutil import utc_now

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SENT_COUNT_TTL = 60.0  # seconds between two counts of the outbox's sent emails
FINAL_STATUSES = tuple(str(s) for s in RunStatus if s is not RunStatus.RUNNING)
# A run that ran: its duration means something (skipped and missed slots never started).
_DID_NOT_RUN = (str(RunStatus.RUNNING), str(RunStatus.SKIPPED), str(RunStatus.MISSED))


@dataclass
class Figures:
    """One scrape's values."""

    runs: dict[tuple[str, str], int] = field(default_factory=dict)
    last_success: dict[str, datetime] = field(default_factory=dict)
    last_duration: dict[str, float] = field(default_factory=dict)
    next_run: dict[str, datetime] = field(default_factory=dict)
    running: dict[str, int] = field(default_factory=dict)
    paused: dict[str, bool] = field(default_factory=dict)
    failing: dict[str, bool] = field(default_factory=dict)
    overdue: dict[str, bool] = field(default_factory=dict)
    outbox: dict[str, int] = field(default_factory=dict)
    deliveries: dict[str, int] = field(default_factory=dict)
    runners_alive: int = 0


def _per_job() -> Select[Any]:
    """One row per job: newest success, newest finished run that ran, running runs, state.
    Each figure is a scalar subquery answered from an index (ops_runs_job_status_idx,
    ops_runs_job_created_idx), so its cost does not grow with the history."""
    jobs = union_all(*(select(literal(j, String).label("job_id")) for j in JOB_IDS)).subquery("j")
    r = ops_runs.alias("r")
    last_success = (
        select(func.max(r.c.finished_at))
        .where(r.c.job_id == jobs.c.job_id, r.c.status == RunStatus.SUCCEEDED)
        .scalar_subquery()
    )
    last_ran = (
        select(r.c.id)
        .where(r.c.job_id == jobs.c.job_id, r.c.status.not_in(_DID_NOT_RUN),
               r.c.started_at.is_not(None), r.c.finished_at.is_not(None))
        .order_by(r.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    running = (
        select(func.count())
        .where(r.c.job_id == jobs.c.job_id, r.c.status == RunStatus.RUNNING)
        .scalar_subquery()
    )
    last = ops_runs.alias("last")
    return (
        select(jobs.c.job_id, last_success.label("last_success"),
               last.c.started_at, last.c.finished_at, running.label("running"),
               ops_job_state.c.paused, ops_job_state.c.alert_state,
               ops_job_state.c.overdue_since)
        .select_from(
            jobs.outerjoin(last, last.c.id == last_ran)
            .outerjoin(ops_job_state, ops_job_state.c.job_id == jobs.c.job_id))
    )


def _tallies(cutoff: datetime) -> CompoundSelect[Any]:
    """(kind, key, status, n) rows: the runs counter, emails and deliveries per status,
    and the ids of the live runners (kind 'runner', n = 1)."""
    empty = literal("", String)
    return union_all(
        select(literal("runs", String).label("kind"), ops_run_counts.c.job_id.label("key"),
               ops_run_counts.c.status.label("status"), ops_run_counts.c.count.label("n")),
        # Two index ranges around `sent`: each an index-only scan of the few rows that are
        # not sent (`<>` would read every sent row too).
        select(literal("outbox", String), empty, ops_email_outbox.c.status, func.count())
        .where(ops_email_outbox.c.status < _SENT).group_by(ops_email_outbox.c.status),
        select(literal("outbox", String), empty, ops_email_outbox.c.status, func.count())
        .where(ops_email_outbox.c.status > _SENT).group_by(ops_email_outbox.c.status),
        select(literal("deliveries", String), empty, ops_alert_deliveries.c.status,
               func.count())
        .group_by(ops_alert_deliveries.c.status),
        select(literal("runner", String), ops_runners.c.id, empty, literal(1))
        .where(ops_runners.c.kind == "runner", ops_runners.c.stopped_at.is_(None),
               ops_runners.c.heartbeat_at >= cutoff),
    )


_SENT = "sent"


class SentCount:
    """The number of sent emails in the outbox, counted again at most every `ttl` seconds:
    with a month of sent email kept, counting them takes tens of milliseconds, the rest of
    a scrape well under one."""

    def __init__(self, ttl: float = SENT_COUNT_TTL) -> None:
        self.ttl = ttl
        self._value: int | None = None
        self._at = 0.0

    def read(self, conn: Connection) -> int:
        if self._value is None or time.monotonic() - self._at >= self.ttl:
            self._value = int(conn.execute(
                select(func.count()).select_from(ops_email_outbox)
                .where(ops_email_outbox.c.status == _SENT)).scalar_one())
            self._at = time.monotonic()
        return self._value


def _read(conn: Connection, cutoff: datetime, sent: SentCount
          ) -> tuple[list[Any], list[Any], int]:
    return (list(conn.execute(_per_job())), list(conn.execute(_tallies(cutoff))),
            sent.read(conn))


class ScheduleCache:
    """The live runners' schedules, read again only when the set of live runners changes
    (a runner records its schedules before it registers and never changes them)."""

    def __init__(self) -> None:
        self._key: frozenset[str] | None = None
        self._schedules: EffectiveSchedules | None = None

    def get(self, engine: Engine, settings: Settings, now: datetime,
            alive: frozenset[str]) -> EffectiveSchedules:
        if self._schedules is None or alive != self._key:
            self._schedules = live_schedules(engine, settings, now)
            self._key = alive
        return self._schedules


def read_figures(engine: Engine, settings: Settings, now: datetime,
                 schedules: ScheduleCache | None = None, sent: SentCount | None = None,
                 ) -> Figures:
    """Everything a scrape reports, from the database (and the live runners' schedules).

    Two statements on one connection. On PostgreSQL they run in autocommit: no BEGIN and
    COMMIT round trips (a scrape need not be one snapshot); SQLite, in process, reads in
    a transaction like every other reader."""
    cutoff = now - timedelta(seconds=settings.runner.stale_after)
    sent = sent or SentCount()
    with connection(engine) as conn:
        if is_sqlite(conn):
            with conn.begin():
                per_job, tallies, sent_count = _read(conn, cutoff, sent)
        else:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            per_job, tallies, sent_count = _read(conn, cutoff, sent)
    fig = Figures(outbox={_SENT: sent_count} if sent_count else {})
    for row in per_job:
        job_id = row.job_id
        if row.last_success is not None:
            fig.last_success[job_id] = row.last_success
        if row.started_at is not None and row.finished_at is not None:
            seconds: float = (row.finished_at - row.started_at).total_seconds()
            fig.last_duration[job_id] = max(0.0, seconds)
        fig.running[job_id] = int(row.running or 0)
        fig.paused[job_id] = bool(row.paused)
        fig.failing[job_id] = row.alert_state == "failing"
        fig.overdue[job_id] = row.overdue_since is not None
    alive: set[str] = set()
    for kind, key, status, n in tallies:
        if kind == "runs":
            fig.runs[(key, status)] = int(n)
        elif kind == "outbox":
            fig.outbox[status] = int(n)
        elif kind == "deliveries":
            fig.deliveries[status] = int(n)
        else:
            alive.add(key)
    fig.runners_alive = len(alive)
    plans = (schedules or ScheduleCache()).get(engine, settings, now, frozenset(alive))
    for job_id in JOB_IDS:
        plan = plans.job(job_id)
        if plan.enabled:
            upcoming = plan.schedule.next_slots(now, 1)
            if upcoming:
                fig.next_run[job_id] = upcoming[0]
    return fig


def families(fig: Figures) -> Iterator[Metric]:
    """The metric families of one scrape, in a fixed order."""
    runs = CounterMetricFamily("storeflow_job_runs", "Runs that reached a final status, "
                               "by job and status (never decreases)", labels=["job", "status"])
    keys = {(j, s) for j in JOB_IDS for s in FINAL_STATUSES} | set(fig.runs)
    for job_id, status in sorted(keys):
        runs.add_metric([job_id, status], fig.runs.get((job_id, status), 0))
    yield runs

    def per_job(name: str, doc: str, values: dict[str, float]) -> GaugeMetricFamily:
        gauge = GaugeMetricFamily(name, doc, labels=["job"])
        for job_id in JOB_IDS:
            if job_id in values:
                gauge.add_metric([job_id], values[job_id])
        return gauge

    def flag(values: dict[str, bool] | dict[str, int]) -> dict[str, float]:
        return {j: 1.0 if values.get(j) else 0.0 for j in JOB_IDS}

    yield per_job("storeflow_job_last_success_timestamp_seconds",
                  "Unix time the newest succeeded run finished",
                  {j: t.timestamp() for j, t in fig.last_success.items()})
    yield per_job("storeflow_job_last_duration_seconds",
                  "Duration of the newest finished run that ran", fig.last_duration)
    yield per_job("storeflow_job_next_run_timestamp_seconds",
                  "Unix time of the next slot of an enabled job (the live runners' schedule)",
                  {j: t.timestamp() for j, t in fig.next_run.items()})
    yield per_job("storeflow_job_running", "1 while a run of the job is running",
                  flag(fig.running))
    yield per_job("storeflow_job_paused", "1 while the job is paused", flag(fig.paused))
    yield per_job("storeflow_job_failing", "1 while the job's alert state is failing",
                  flag(fig.failing))
    yield per_job("storeflow_job_overdue", "1 while the job has had no success for longer "
                  "than its period plus overdue_after", flag(fig.overdue))

    def per_status(name: str, doc: str, values: dict[str, int],
                   statuses: tuple[str, ...]) -> GaugeMetricFamily:
        gauge = GaugeMetricFamily(name, doc, labels=["status"])
        for status in sorted(set(statuses) | set(values)):
            gauge.add_metric([status], values.get(status, 0))
        return gauge

    yield per_status("storeflow_outbox_emails", "Emails in the outbox, by status", fig.outbox,
                     ("pending", "sent", "failed", "dead"))
    yield per_status("storeflow_alert_deliveries", "Alert deliveries, by status",
                     fig.deliveries, ("pending", "sent", "dead"))
    yield GaugeMetricFamily("storeflow_runners_alive", "Runners heartbeating on this database",
                            value=fig.runners_alive)


class MetricsCollector(Collector):
    """A prometheus_client collector that reads the database on every scrape."""

    def __init__(self, engine: Engine, settings: Settings,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.engine = engine
        self.settings = settings
        self.clock = clock
        self.schedules = ScheduleCache()
        self.sent = SentCount()

    def collect(self) -> Iterator[Metric]:
        yield from families(read_figures(self.engine, self.settings, self.clock(),
                                         self.schedules, self.sent))


def registry(engine: Engine, settings: Settings,
             clock: Callable[[], datetime] = utc_now) -> CollectorRegistry:
    """A registry holding only StoreFlow's collector (no process or platform metrics)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(MetricsCollector(engine, settings, clock))
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    """One scrape in the Prometheus text format; raises OpsError when the database is
    unreachable."""
    return generate_latest(reg)

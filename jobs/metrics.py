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
- storeflow_outbox_emails{status}, storeflow_alert_deliveries{status}: rows per status;
- storeflow_runners_alive: runners heartbeating within `stale_after`.

A scrape stays cheap on a long history: every per-job figure is an index lookup (see
migration 0004), never a scan of ops_runs or ops_run_items.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Column, func, select
from sqlalchemy.engine import Connection, Engine

from jobs.db import (
    ops_alert_deliveries,
    ops_email_outbox,
    ops_job_state,
    ops_run_counts,
    ops_runs,
    transaction,
)
from jobs.presence import list_runners
from jobs.records import RunStatus
from jobs.runner_schedules import live_schedules
from jobs.settings import JOB_IDS, Settings
from jobs.timeutil import utc_now

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FINAL_STATUSES = tuple(str(s) for s in RunStatus if s is not RunStatus.RUNNING)
# A run that ran: its duration means something (skipped and missed slots never started).
_DID_NOT_RUN = (str(RunStatus.RUNNING), str(RunStatus.SKIPPED), str(RunStatus.MISSED))


@dataclass
class Figures:
    """One scrape's values, read in one transaction."""

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


def _last_success(conn: Connection, job_id: str) -> datetime | None:
    return conn.execute(
        select(func.max(ops_runs.c.finished_at)).where(
            ops_runs.c.job_id == job_id, ops_runs.c.status == RunStatus.SUCCEEDED)
    ).scalar_one_or_none()


def _last_duration(conn: Connection, job_id: str) -> float | None:
    row = conn.execute(
        select(ops_runs.c.started_at, ops_runs.c.finished_at)
        .where(ops_runs.c.job_id == job_id, ops_runs.c.status.not_in(_DID_NOT_RUN),
               ops_runs.c.started_at.is_not(None), ops_runs.c.finished_at.is_not(None))
        .order_by(ops_runs.c.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    seconds: float = (row.finished_at - row.started_at).total_seconds()
    return max(0.0, seconds)


def _by_status(conn: Connection, status: Column[str]) -> dict[str, int]:
    return {str(s): int(n) for s, n in conn.execute(select(status, func.count()).group_by(status))}


def read_figures(engine: Engine, settings: Settings, now: datetime) -> Figures:
    """Everything a scrape reports, from the database (and the live runners' schedules)."""
    fig = Figures()
    job_ids = list(JOB_IDS)
    with transaction(engine) as conn:
        for job_id, status, count in conn.execute(
                select(ops_run_counts.c.job_id, ops_run_counts.c.status, ops_run_counts.c.count)):
            fig.runs[(job_id, status)] = int(count)
        for job_id in job_ids:
            if (at := _last_success(conn, job_id)) is not None:
                fig.last_success[job_id] = at
            if (seconds := _last_duration(conn, job_id)) is not None:
                fig.last_duration[job_id] = seconds
        fig.running = {j: int(n) for j, n in conn.execute(
            select(ops_runs.c.job_id, func.count())
            .where(ops_runs.c.status == RunStatus.RUNNING).group_by(ops_runs.c.job_id))}
        for row in conn.execute(select(ops_job_state.c.job_id, ops_job_state.c.paused,
                                       ops_job_state.c.alert_state,
                                       ops_job_state.c.overdue_since)):
            fig.paused[row.job_id] = bool(row.paused)
            fig.failing[row.job_id] = row.alert_state == "failing"
            fig.overdue[row.job_id] = row.overdue_since is not None
        fig.outbox = _by_status(conn, ops_email_outbox.c.status)
        fig.deliveries = _by_status(conn, ops_alert_deliveries.c.status)
    runners = list_runners(engine, now, settings.runner.stale_after)
    fig.runners_alive = sum(1 for r in runners if r.alive)
    schedules = live_schedules(engine, settings, now, runners)
    for job_id in job_ids:
        plan = schedules.job(job_id)
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

    def collect(self) -> Iterator[Metric]:
        yield from families(read_figures(self.engine, self.settings, self.clock()))


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

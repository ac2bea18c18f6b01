"""What went wrong lately, across every job: failed items and failed runs in a window,
grouped by their error, for the console's problems view and the CLI's `problems`.

A problem is a run item whose status is `error` (one tenant, one reason), or a run that
ended `failed`, `timed_out`, `interrupted` or `missed` (the run's own error; no tenant). The window is
on the run's creation time, which every run has (a missed slot never started). Grouping
and counting happen in the database: a month of history can hold millions of items, and
only the failed ones, found through the partial index `ops_run_items_errors_idx`, are
read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, cast, func, literal, null, select, union_all
from sqlalchemy.engine import Engine
from sqlalchemy.sql import CompoundSelect

from jobs.db import ops_run_items, ops_runs, transaction
from jobs.errors import ConfigError, UsageError
from jobs.humanize import span
from jobs.records import ItemStatus, RunStatus
from jobs.settings import _duration
from jobs.timeutil import iso

# The windows the console cycles through; the CLI's --since takes any duration.
WINDOWS = (timedelta(hours=24), timedelta(days=7), timedelta(days=30))
DEFAULT_WINDOW = WINDOWS[0]
# Runs that ended without doing their work: their own error is the problem. `timed_out`
# is the status a run cut off by its job's timeout ends with.
FAILED_RUN_STATUSES = (str(RunStatus.FAILED), str(RunStatus.INTERRUPTED), str(RunStatus.MISSED),
                       "timed_out")
NO_ERROR_TEXT = "(no error text)"


def parse_since(text: str) -> timedelta:
    """`--since`: seconds or `90m`, `24h`, `7d`; UsageError (exit 2) otherwise."""
    try:
        window = _duration("--since", "", text)
    except ConfigError as exc:
        raise UsageError(exc.message) from None
    if window is None or window <= timedelta(0):
        raise UsageError(f"--since: {text!r} is not a length of time; write e.g. 24h or 7d")
    return window


def window_label(window: timedelta) -> str:
    """`24 h`, `7 days`, `90 min`, else humanize's span (`1h 30m 20s` is `1h 30m`)."""
    seconds = int(window.total_seconds())
    if seconds % 86_400 == 0 and seconds > 86_400:
        return f"{seconds // 86_400} days"
    if seconds % 3_600 == 0:
        return f"{seconds // 3_600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return span(window)


@dataclass(frozen=True)
class Problem:
    """One failed item (a tenant) or one failed run (no tenant)."""

    run_id: int
    job_id: str
    created_at: datetime
    started_at: datetime | None
    status: str  # the run's status
    tenant_id: str | None
    tenant_name: str | None
    action: str | None
    error: str

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "job": self.job_id,
            "started_at": iso(self.started_at),
            "status": self.status,
            "tenant_id": self.tenant_id,
            "action": self.action,
            "error": self.error,
        }


@dataclass(frozen=True)
class ProblemGroup:
    """Every problem of one job with one error text in the window."""

    job_id: str
    error: str
    count: int
    runs: int
    tenants: int
    last_at: datetime
    last_run_id: int


def _problems(since: datetime, job_id: str | None) -> CompoundSelect[Any]:
    """Failed items and failed runs since `since`, as one union: run_id, seq, job_id,
    created_at, started_at, status, tenant_id, tenant_name, action, error."""
    r, i = ops_runs, ops_run_items
    items = (
        select(r.c.id.label("run_id"), i.c.seq.label("seq"), r.c.job_id, r.c.created_at,
               r.c.started_at, r.c.status, i.c.tenant_id, i.c.tenant_name,
               i.c.action, func.coalesce(i.c.error, NO_ERROR_TEXT).label("error"))
        .select_from(r.join(i, i.c.run_id == r.c.id))
        .where(i.c.status == ItemStatus.ERROR, r.c.created_at >= since)
    )
    failed = (
        select(r.c.id.label("run_id"), literal(-1).label("seq"), r.c.job_id, r.c.created_at,
               r.c.started_at, r.c.status, cast(null(), String).label("tenant_id"),
               cast(null(), String).label("tenant_name"), cast(null(), String).label("action"),
               func.coalesce(r.c.error, r.c.status).label("error"))
        .where(r.c.status.in_(FAILED_RUN_STATUSES), r.c.created_at >= since)
    )
    if job_id is not None:
        items = items.where(r.c.job_id == job_id)
        failed = failed.where(r.c.job_id == job_id)
    return union_all(items, failed)


def groups(engine: Engine, *, since: datetime, job_id: str | None = None,
           limit: int = 500) -> list[ProblemGroup]:
    """The window's problems grouped by job and error text, most frequent first."""
    p = _problems(since, job_id).subquery("p")
    q = (
        select(p.c.job_id, p.c.error, func.count().label("n"),
               func.count(p.c.run_id.distinct()).label("runs"),
               func.count(p.c.tenant_id.distinct()).label("tenants"),
               func.max(p.c.created_at).label("last_at"), func.max(p.c.run_id).label("last_run"))
        .group_by(p.c.job_id, p.c.error)
        .order_by(func.count().desc(), func.max(p.c.run_id).desc())
        .limit(limit)
    )
    with transaction(engine) as conn:
        return [ProblemGroup(row.job_id, row.error, int(row.n), int(row.runs), int(row.tenants),
                             row.last_at, int(row.last_run)) for row in conn.execute(q)]


def problems(engine: Engine, *, since: datetime, job_id: str | None = None,
             error: str | None = None, limit: int | None = None) -> list[Problem]:
    """The window's problems one by one, newest run first (items in their run's order);
    `error` keeps one group's (with `job_id`)."""
    return list(iter_problems(engine, since=since, job_id=job_id, error=error, limit=limit))


def iter_problems(engine: Engine, *, since: datetime, job_id: str | None = None,
                  error: str | None = None, limit: int | None = None) -> Iterator[Problem]:
    p = _problems(since, job_id).subquery("p")
    q = select(p).order_by(p.c.created_at.desc(), p.c.run_id.desc(), p.c.seq)
    if error is not None:
        q = q.where(p.c.error == error)
    if limit is not None:
        q = q.limit(limit)
    with transaction(engine) as conn:
        for row in conn.execute(q):
            yield Problem(int(row.run_id), row.job_id, row.created_at, row.started_at,
                          str(row.status), row.tenant_id, row.tenant_name, row.action, row.error)


__all__ = ["DEFAULT_WINDOW", "WINDOWS", "Problem", "ProblemGroup", "groups", "iter_problems",
           "parse_since", "problems", "window_label"]

"""The four jobs: ids, what they do, the seed's endpoint, and the function that runs each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from jobs import analytics, cleanup, expiry, reminders
from jobs.context import JobFunction
from jobs.errors import UnknownJobError, UsageError
from jobs.records import RunParams
from jobs.settings import JOB_IDS, JobConfig, Settings
from jobs.timeutil import iso

# Checks a run's parameters before anything is written: a bad request leaves no run behind.
ParamsCheck = Callable[[JobConfig, RunParams, datetime], None]


# How far a real run's reference time may be ahead of the clock: another host's clock, a
# slot fired a moment early. Further ahead, a run would act on what has not happened yet:
# cart items deleted before they are stale, paid-up tenants suspended, real emails sent.
FUTURE_TOLERANCE = timedelta(minutes=5)


def check_reference_time(now: datetime, clock_now: datetime, dry_run: bool) -> None:
    """Refuse a real run whose reference time is later than the clock (read at the edge,
    passed in) by more than FUTURE_TOLERANCE. A preview may look at any time."""
    if not dry_run and now > clock_now + FUTURE_TOLERANCE:
        raise UsageError(
            f"the reference time {iso(now)} (--now) is later than the clock ({iso(clock_now)}); "
            "a real run may not act on the future; preview it with --dry-run"
        )


def _no_params(job: JobConfig, params: RunParams, now: datetime) -> None:
    if params != RunParams():
        raise UsageError(f"--date, --from and --to apply to {analytics.JOB_ID} only, not {job.job_id}")


def _analytics_params(job: JobConfig, params: RunParams, now: datetime) -> None:
    analytics.days_for(params, now, job.schedule.timezone)


@dataclass(frozen=True)
class JobSpec:
    id: str
    title: str
    description: str
    endpoint: str
    run: JobFunction
    check_params: ParamsCheck = _no_params


JOBS: dict[str, JobSpec] = {
    spec.id: spec
    for spec in (
        JobSpec(
            "expiry-checker", "Subscription expiry",
            "Expires subscriptions past their end date and suspends those past the grace period",
            "/api/admin/subscriptions/expiry-checker", expiry.run,
        ),
        JobSpec(
            "payment-reminders", "Payment reminders",
            "Emails renewal reminders before expiry and payment-due notices during grace",
            "/api/admin/subscriptions/payment-reminders", reminders.run,
        ),
        JobSpec(
            analytics.JOB_ID, "Daily analytics",
            "Aggregates yesterday's orders, revenue, new customers and products sold per tenant",
            "/api/admin/analytics/aggregate", analytics.run,
            _analytics_params,
        ),
        JobSpec(
            "cleanup", "Data cleanup",
            "Deletes stale cart items and orphaned order products and cart items, in batches",
            "/api/admin/cleanup", cleanup.run,
        ),
    )
}
assert tuple(JOBS) == JOB_IDS


def get_job(job_id: str) -> JobSpec:
    try:
        return JOBS[job_id]
    except KeyError:
        raise UnknownJobError(job_id, list(JOBS)) from None


def check_run(settings: Settings, job_id: str, params: RunParams, now: datetime, *,
              dry_run: bool = True, clock_now: datetime | None = None) -> JobSpec:
    """The one check of a run request; UsageError (exit 2, a 400) naming what is wrong.

    The job exists; its parameters fit it (analytics' dates: a day or a range of at most
    `analytics.MAX_RANGE_DAYS`, not both, none in the future); and, given the clock, a
    real run's reference time is not in the future. `runs.execute` makes it before it writes
    anything, so every face gets it; the CLI and the HTTP face make it first as well, so
    that a bad request is refused before the database is opened (and the console before
    it asks for a confirmation)."""
    spec = get_job(job_id)
    spec.check_params(settings.job(job_id), params, now)
    if clock_now is not None:
        check_reference_time(now, clock_now, dry_run)
    return spec


def job_for_endpoint(path: str) -> JobSpec | None:
    return next((j for j in JOBS.values() if j.endpoint == path.rstrip("/")), None)

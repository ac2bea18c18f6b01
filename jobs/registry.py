"""The four jobs: ids, what they do, the seed's endpoint, and the function that runs each."""

from __future__ import annotations

from dataclasses import dataclass

from jobs import analytics, cleanup, expiry, reminders
from jobs.context import JobFunction
from jobs.errors import UnknownJobError
from jobs.settings import JOB_IDS


@dataclass(frozen=True)
class JobSpec:
    id: str
    title: str
    description: str
    endpoint: str
    run: JobFunction
    summary_keys: tuple[str, ...]


JOBS: dict[str, JobSpec] = {
    spec.id: spec
    for spec in (
        JobSpec(
            "expiry-checker", "Subscription expiry",
            "Expires subscriptions past their end date and suspends those past the grace period",
            "/api/admin/subscriptions/expiry-checker", expiry.run,
            ("expired", "suspended", "unchanged", "emails_queued"),
        ),
        JobSpec(
            "payment-reminders", "Payment reminders",
            "Emails renewal reminders before expiry and payment-due notices during grace",
            "/api/admin/subscriptions/payment-reminders", reminders.run,
            ("renewal_reminders", "payment_due_reminders", "already_sent"),
        ),
        JobSpec(
            "analytics-aggregate", "Daily analytics",
            "Aggregates yesterday's orders, revenue, new customers and products sold per tenant",
            "/api/admin/analytics/aggregate", analytics.run,
            ("date", "tenants", "cache_writes", "orders", "revenue"),
        ),
        JobSpec(
            "cleanup", "Data cleanup",
            "Deletes stale cart items and orphaned order products and cart items, in batches",
            "/api/admin/cleanup", cleanup.run,
            ("stale_cart_items", "orphaned_order_products", "orphaned_cart_items"),
        ),
    )
}
assert tuple(JOBS) == JOB_IDS


def get_job(job_id: str) -> JobSpec:
    try:
        return JOBS[job_id]
    except KeyError:
        raise UnknownJobError(job_id, list(JOBS)) from None


def job_for_endpoint(path: str) -> JobSpec | None:
    return next((j for j in JOBS.values() if j.endpoint == path.rstrip("/")), None)

"""payment-reminders: renewal reminders before expiry, payment-due notices during grace.

Two queries find every candidate and one more tells which of their emails were
already queued; only then is each tenant's email queued in its own transaction.
The idempotency key is the whole memory of the job: a renewal reminder is keyed
by its subscription period and threshold, a payment-due notice by the local day,
so running twice (or a slot fired twice) sends nothing twice, and a preview that
reads the same keys reports exactly what the real run would do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from jobs import outbox
from jobs.context import RunContext, tenant_error
from jobs.db import tenants, transaction, ts
from jobs.errors import OpsError, UnreachableError
from jobs.humanize import long_date
from jobs.records import ItemResult, ItemStatus

DAY = timedelta(days=1)


@dataclass(frozen=True)
class Reminder:
    """One email a candidate tenant is due, before checking whether it was already sent."""

    tenant_id: str
    tenant_name: str
    recipient: str
    kind: str  # "renewal_reminder" or "payment_due"
    key: str
    context: dict[str, Any]
    detail: dict[str, Any]


def renewal_threshold(expire_date: datetime, reminder_days: tuple[int, ...],
                      now: datetime) -> int | None:
    """The smallest threshold crossed (`expire_date <= now + t days`), None when none is.

    Only the smallest counts: once "3 days left" went out, "7 days left" must not follow.
    The lower bound (`now < expire_date`) belongs to the candidate query.
    """
    crossed = [t for t in reminder_days if expire_date <= now + t * DAY]
    return min(crossed) if crossed else None


def days_left(expire_date: datetime, now: datetime) -> int:
    """Whole days until expiry, rounded up: 2 days and 1 hour is "3 days"."""
    return max(1, -((now - expire_date) // DAY))


def renewal_key(tenant_id: str, expire_date: datetime, threshold: int) -> str:
    return f"renewal_reminder:{tenant_id}:{expire_date.isoformat()}:{threshold}d"


def payment_due_key(tenant_id: str, local_day: date) -> str:
    return f"payment_due:{tenant_id}:{local_day.isoformat()}"


def run(ctx: RunContext) -> dict[str, Any]:
    reminder_days = ctx.job.reminder_days
    horizon = ctx.now + max(reminder_days) * DAY
    with transaction(ctx.engine) as conn:
        renewal_rows = conn.execute(
            select(tenants.c.id, tenants.c.name, tenants.c.email, tenants.c.expire_date)
            .where(
                tenants.c.status == "active",
                tenants.c.expire_date.is_not(None),
                ts(tenants.c.expire_date) > ctx.now,
                ts(tenants.c.expire_date) <= horizon,
            )
            .order_by(tenants.c.id)
        ).all()
        due_rows = conn.execute(
            select(tenants.c.id, tenants.c.name, tenants.c.email, tenants.c.expire_date)
            .where(
                tenants.c.status == "expired",
                tenants.c.expire_date.is_not(None),
                # In grace only: past its end the tenant is the expiry-checker's to suspend,
                # and a notice saying "will be suspended on <a past date>" helps no one.
                ts(tenants.c.expire_date) > ctx.now - ctx.job.grace_period_days * DAY,
            )
            .order_by(tenants.c.id)
        ).all()
        reminders = [
            r for r in (_renewal(ctx, row, reminder_days) for row in renewal_rows) if r is not None
        ]
        reminders += [_payment_due(ctx, row) for row in due_rows]
        sent = outbox.existing_keys(conn, (r.key for r in reminders))
    ctx.set_total(len(reminders))

    counts = {"renewal_reminders": 0, "payment_due_reminders": 0, "already_sent": 0}
    for reminder in reminders:
        if ctx.stop_requested:
            break
        ctx.record(_process(ctx, reminder, reminder.key in sent, counts))
    return counts


def _renewal(ctx: RunContext, row: Any, reminder_days: tuple[int, ...]) -> Reminder | None:
    threshold = renewal_threshold(row.expire_date, reminder_days, ctx.now)
    if threshold is None:  # cannot happen while the query's horizon is the largest threshold
        return None
    left = days_left(row.expire_date, ctx.now)
    key = renewal_key(row.id, row.expire_date, threshold)
    return Reminder(
        row.id, row.name, row.email, "renewal_reminder", key,
        context={
            "tenant_name": row.name,
            "expire_date": long_date(row.expire_date, ctx.tz),
            "days_left": left,
            "threshold": threshold,
        },
        detail={
            "threshold": threshold,
            "days_left": left,
            "expire_date": row.expire_date.isoformat(),
            "key": key,
        },
    )


def _payment_due(ctx: RunContext, row: Any) -> Reminder:
    grace_end = row.expire_date + ctx.job.grace_period_days * DAY
    local_day = ctx.now.astimezone(ctx.tz).date()
    key = payment_due_key(row.id, local_day)
    return Reminder(
        row.id, row.name, row.email, "payment_due", key,
        context={
            "tenant_name": row.name,
            "expire_date": long_date(row.expire_date, ctx.tz),
            "grace_end": long_date(grace_end, ctx.tz),
        },
        detail={
            "day": local_day.isoformat(),
            "expire_date": row.expire_date.isoformat(),
            "grace_end": grace_end.isoformat(),
            "key": key,
        },
    )


def _process(ctx: RunContext, reminder: Reminder, already_sent: bool,
             counts: dict[str, int]) -> ItemResult:
    detail = {"email": reminder.kind, **reminder.detail}
    if already_sent:
        counts["already_sent"] += 1
        return ItemResult(reminder.tenant_id, "already_sent", ItemStatus.SKIPPED, detail,
                          tenant_name=reminder.tenant_name)
    try:
        email = outbox.render(
            reminder.kind,
            idempotency_key=reminder.key,
            tenant_id=reminder.tenant_id,
            recipient=reminder.recipient,
            context=reminder.context,
        )
        queued = True
        if not ctx.dry_run:
            with transaction(ctx.engine) as conn:
                queued = outbox.queue(conn, email, now=ctx.queued_at, run_id=ctx.run_id)
    except UnreachableError:
        raise
    except (OpsError, SQLAlchemyError) as exc:
        return ItemResult(reminder.tenant_id, reminder.kind, ItemStatus.ERROR, detail,
                          tenant_error(exc), tenant_name=reminder.tenant_name)
    if not queued:
        # Another run queued the same key between our bulk check and this insert.
        counts["already_sent"] += 1
        return ItemResult(reminder.tenant_id, "already_sent", ItemStatus.SKIPPED, detail,
                          tenant_name=reminder.tenant_name)
    counts["renewal_reminders" if reminder.kind == "renewal_reminder"
           else "payment_due_reminders"] += 1
    return ItemResult(reminder.tenant_id, reminder.kind, ItemStatus.OK, detail,
                      tenant_name=reminder.tenant_name)

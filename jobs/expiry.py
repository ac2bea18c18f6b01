"""expiry-checker: expire subscriptions past their end date, suspend those past grace.

One query fetches every candidate; each tenant is then changed in its own
transaction together with its email, so neither exists without the other, and
one tenant's failure never stops the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from jobs import outbox
from jobs.context import RunContext, tenant_error
from jobs.db import tenants, transaction, ts
from jobs.errors import OpsError, UnreachableError
from jobs.humanize import long_date
from jobs.records import ItemResult, ItemStatus


@dataclass(frozen=True)
class Candidate:
    id: str
    name: str
    email: str
    status: str
    expire_date: datetime


def target_status(expire_date: datetime, grace_days: int, now: datetime) -> str:
    """`suspended` from the grace end on (inclusive), `expired` before it."""
    return "suspended" if now >= expire_date + timedelta(days=grace_days) else "expired"


def run(ctx: RunContext) -> dict[str, Any]:
    grace_days = ctx.job.grace_period_days
    with transaction(ctx.engine) as conn:
        rows = conn.execute(
            select(tenants.c.id, tenants.c.name, tenants.c.email, tenants.c.status,
                   tenants.c.expire_date)
            .where(
                tenants.c.status.in_(("active", "expired")),
                tenants.c.expire_date.is_not(None),
                ts(tenants.c.expire_date) <= ctx.now,
            )
            .order_by(tenants.c.id)
        ).all()
    candidates = [Candidate(r.id, r.name, r.email, r.status, r.expire_date) for r in rows]
    ctx.set_total(len(candidates))

    counts = {"expired": 0, "suspended": 0, "unchanged": 0, "emails_queued": 0}
    for cand in candidates:
        if ctx.stop_requested:
            break
        ctx.record(_process(ctx, cand, grace_days, counts))
    return counts


def _process(ctx: RunContext, cand: Candidate, grace_days: int,
             counts: dict[str, int]) -> ItemResult:
    target = target_status(cand.expire_date, grace_days, ctx.now)
    grace_end = cand.expire_date + timedelta(days=grace_days)
    detail = {
        "from": cand.status,
        "to": target,
        "expire_date": cand.expire_date.isoformat(),
        "grace_end": grace_end.isoformat(),
    }
    if target == cand.status:
        counts["unchanged"] += 1
        return ItemResult(cand.id, "unchanged", ItemStatus.SKIPPED, detail,
                          tenant_name=cand.name)
    kind = "subscription_suspended" if target == "suspended" else "subscription_expired"
    try:
        email = outbox.render(
            kind,
            idempotency_key=f"{kind}:{cand.id}:{cand.expire_date.isoformat()}",
            tenant_id=cand.id,
            recipient=cand.email,
            context={
                "tenant_name": cand.name,
                "expire_date": long_date(cand.expire_date, ctx.tz),
                "grace_end": long_date(grace_end, ctx.tz),
                "grace_days": grace_days,
            },
        )
        if ctx.dry_run:
            with transaction(ctx.engine) as conn:
                queued = not outbox.existing_keys(conn, [email.idempotency_key])
        else:
            with transaction(ctx.engine) as conn:
                # Guarded by the status we read: a concurrent change wins, and a second
                # run finds nothing to do.
                changed = conn.execute(
                    update(tenants)
                    .where(
                        tenants.c.id == cand.id,
                        tenants.c.status == cand.status,
                        # A renewal between our read and this update moved the date on.
                        ts(tenants.c.expire_date) <= ctx.now,
                    )
                    .values(status=target)
                ).rowcount
                if not changed:
                    return ItemResult(cand.id, "unchanged", ItemStatus.SKIPPED,
                                      {**detail, "reason": "status changed meanwhile"},
                                      tenant_name=cand.name)
                queued = outbox.queue(conn, email, now=ctx.queued_at, run_id=ctx.run_id)
    except UnreachableError:
        raise
    except (OpsError, SQLAlchemyError) as exc:
        return ItemResult(cand.id, target, ItemStatus.ERROR, detail, tenant_error(exc),
                          tenant_name=cand.name)
    counts[target] += 1
    counts["emails_queued"] += int(queued)
    return ItemResult(cand.id, target, ItemStatus.OK, {**detail, "email": kind,
                      "email_queued": queued}, tenant_name=cand.name)

"""Platform rows for tests and benchmarks, written the way StoreFlow writes them."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.engine import Engine

from jobs.db import cart_items, customers, order_products, orders, products, tenants

_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}-{next(_ids):06d}"


def add_tenant(engine: Engine, *, id: str | None = None, name: str | None = None,
               email: str | None = None, status: str = "active",
               expire_date: datetime | None = None,
               created_at: datetime | None = None) -> str:
    tid = id or _id("t")
    row: dict[str, Any] = {
        "id": tid, "name": name or f"Store {tid}", "email": email or f"owner-{tid}@example.com",
        "status": status, "expire_date": expire_date,
    }
    if created_at is not None:
        row["created_at"] = created_at
    with engine.begin() as c:
        c.execute(tenants.insert().values(**row))
    return tid


def add_customer(engine: Engine, tenant_id: str, created_at: datetime) -> str:
    cid = _id("c")
    with engine.begin() as c:
        c.execute(customers.insert().values(id=cid, tenant_id=tenant_id, email=f"{cid}@example.com",
                                            created_at=created_at))
    return cid


def add_product(engine: Engine, tenant_id: str, price: str = "10.00", id: str | None = None) -> str:
    pid = id or _id("p")
    with engine.begin() as c:
        c.execute(products.insert().values(id=pid, tenant_id=tenant_id, name=f"Product {pid}",
                                           price=Decimal(price)))
    return pid


def add_order(engine: Engine, tenant_id: str, created_at: datetime, total: str,
              payment_status: str = "paid", lines: list[tuple[str, int]] | None = None,
              id: str | None = None) -> str:
    oid = id or _id("o")
    with engine.begin() as c:
        c.execute(orders.insert().values(id=oid, tenant_id=tenant_id, customer_id=None,
                                         total_amount=Decimal(total),
                                         payment_status=payment_status, created_at=created_at))
        for product_id, qty in lines or []:
            c.execute(order_products.insert().values(id=_id("op"), order_id=oid,
                                                     product_id=product_id, quantity=qty,
                                                     price=Decimal("1.00")))
    return oid


def add_order_product(engine: Engine, order_id: str, product_id: str, quantity: int = 1) -> str:
    opid = _id("op")
    with engine.begin() as c:
        c.execute(order_products.insert().values(id=opid, order_id=order_id,
                                                 product_id=product_id, quantity=quantity,
                                                 price=Decimal("1.00")))
    return opid


def add_cart_item(engine: Engine, tenant_id: str, product_id: str, created_at: datetime,
                  quantity: int = 1) -> str:
    cid = _id("ci")
    with engine.begin() as c:
        c.execute(cart_items.insert().values(id=cid, tenant_id=tenant_id, product_id=product_id,
                                             customer_id=None, quantity=quantity,
                                             created_at=created_at))
    return cid


# --- old history, for retention: rows as the run path and the outbox write them -------------


def add_old_run(engine: Engine, job_id: str, status: str, created_at: datetime, *,
            items: int = 0, trigger: str = "schedule") -> int:
    """A run created at `created_at` (finished a minute later unless running), with
    `items` item rows."""
    from datetime import timedelta

    from jobs.db import ops_run_items, ops_runs

    running = status == "running"
    with engine.begin() as c:
        run_id = c.execute(ops_runs.insert().values(
            job_id=job_id, trigger=trigger,
            scheduled_for=created_at if trigger == "schedule" else None, attempt=1,
            status=status, started_by="runner@old-host", runner_id=None,
            reference_time=created_at, params={}, created_at=created_at,
            started_at=created_at,
            finished_at=None if running else created_at + timedelta(minutes=1),
            processed=items, errors=0, summary={},
        )).inserted_primary_key[0]
        if items:
            c.execute(ops_run_items.insert(), [
                {"run_id": run_id, "seq": i, "tenant_id": f"t-{i}", "tenant_name": None,
                 "action": "checked", "status": "ok", "detail": {}, "error": None}
                for i in range(items)])
    return int(run_id)


def add_old_email(engine: Engine, status: str, created_at: datetime,
              sent_at: datetime | None = None) -> int:
    from jobs.db import ops_email_outbox

    key = _id("mail")
    with engine.begin() as c:
        return int(c.execute(ops_email_outbox.insert().values(
            idempotency_key=key, tenant_id=None, kind="expiry_notice",
            recipient="owner@example.com", subject="Your plan", body_text="text",
            body_html="<p>html</p>", status=status, attempts=1, created_at=created_at,
            sent_at=sent_at,
        )).inserted_primary_key[0])


def add_alert(engine: Engine, at: datetime, deliveries: int = 1) -> int:
    from jobs.db import ops_alert_deliveries, ops_alerts

    with engine.begin() as c:
        alert_id = int(c.execute(ops_alerts.insert().values(
            key=_id("alert"), event="job_failing", job_id="cleanup", run_id=None, at=at,
            payload={"event": "job_failing"},
        )).inserted_primary_key[0])
        if deliveries:
            c.execute(ops_alert_deliveries.insert(), [
                {"alert_id": alert_id, "kind": "webhook", "target": f"https://hook/{i}",
                 "target_label": "https://hook", "status": "sent", "attempts": 1}
                for i in range(deliveries)])
    return alert_id


def add_run(engine: Engine, job_id: str, status: str, at: datetime, *,
            items: Sequence[tuple[str | None, str, str, str | None]] = (),
            error: str | None = None, trigger: str = "manual") -> int:
    """A finished run created and started at `at` (a missed one never started), with items
    (tenant_id, action, status, error); tenants are named `Store <id>`."""
    from jobs.db import ops_run_items, ops_runs

    ran = status != "missed"
    with engine.begin() as c:
        run_id = int(c.execute(ops_runs.insert().values(
            job_id=job_id, trigger=trigger, status=status, started_by="tests@host",
            reference_time=at, created_at=at, started_at=at if ran else None,
            finished_at=at, processed=len(items),
            errors=sum(1 for i in items if i[2] == "error"), error=error)
        ).inserted_primary_key[0])
        if items:
            c.execute(ops_run_items.insert(), [
                {"run_id": run_id, "seq": n, "tenant_id": tid,
                 "tenant_name": None if tid is None else f"Store {tid}", "action": action,
                 "status": item_status, "error": err, "detail": {}}
                for n, (tid, action, item_status, err) in enumerate(items)])
    return run_id


def add_email(engine: Engine, tenant_id: str | None, *, at: datetime, status: str = "pending",
              subject: str | None = None, recipient: str | None = None,
              kind: str = "subscription_expired", attempts: int = 0,
              last_error: str | None = None) -> int:
    """An email in the outbox, queued at `at` (and sent 30 s later when `sent`)."""
    from datetime import timedelta

    from sqlalchemy import select

    from jobs.db import ops_email_outbox
    from jobs.outbox import Email, queue

    key = f"{kind}:{tenant_id}:{next(_ids)}"
    name = f"Store {tenant_id}"
    email = Email(key, tenant_id, kind, recipient or f"owner-{tenant_id}@example.com",
                  subject or f"Your StoreFlow subscription for {name} has expired",
                  f"Hello {name},\n\nyour subscription has expired.\n",
                  f"<p>Hello <b>{name}</b>,</p><p>your subscription has expired.</p>")
    with engine.begin() as c:
        queue(c, email, now=at, run_id=None)  # as the jobs queue it: searchable
        c.execute(ops_email_outbox.update().where(ops_email_outbox.c.idempotency_key == key)
                  .values(status=status, attempts=attempts, last_error=last_error,
                          sent_at=at + timedelta(seconds=30) if status == "sent" else None))
        return int(c.execute(select(ops_email_outbox.c.id).where(
            ops_email_outbox.c.idempotency_key == key)).scalar_one())

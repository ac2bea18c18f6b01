"""The demo database: StoreFlow's platform tables with realistic data relative to `today`,
the ops_ tables, and a week of run history made by the real jobs.

This is the only code that creates platform tables; it does so in a database of its
own (by default a SQLite file beside the embedded default). The data is generated
from a fixed seed, so the same `today` always gives the same database.
"""

from __future__ import annotations

import bisect
import random
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import func, inspect, select, update
from sqlalchemy.engine import Engine

from jobs import analytics, runs
from jobs.cache import TableCache
from jobs.db import (
    cart_items,
    check_reachable,
    customers,
    make_engine,
    ops_email_outbox,
    ops_runs,
    order_products,
    orders,
    platform,
    products,
    tenants,
    transaction,
)
from jobs.errors import UsageError
from jobs.migrate import upgrade
from jobs.records import RunParams, Trigger
from jobs.redaction import redact
from jobs.settings import DEFAULTS_FILE, Overrides, Settings, load_settings
from jobs.timeutil import as_utc

SEED = 20_261_128
HISTORY_DAYS = 7
ORDER_DAYS = 30
ANALYTICS_BACKFILL_DAYS = 14
RUNNER_ID = "runner-demo"
RUNNER_BY = "runner@storeflow-worker-1"
OPERATOR = "maria@ops-laptop"

_ADJECTIVES = (
    "Blue", "Golden", "Little", "Northern", "Wild", "Urban", "Copper", "Silver", "Maple",
    "Harbor", "Sunny", "Quiet", "Velvet", "Cedar", "Juniper", "Olive", "Amber", "Coral",
    "Ivory", "Meadow", "Lakeside", "Rustic", "Salt", "Paper",
)
_NOUNS = (
    "Fern", "Fox", "Lantern", "Oak", "Bloom", "Thread", "Pantry", "Anchor", "Sparrow",
    "Pebble", "Bakery", "Roastery", "Goods", "Studio", "Supply Co.", "Outfitters",
    "Botanicals", "Ceramics", "Bookshop", "Apothecary",
)
_PRODUCTS = (
    ("Linen tote bag", "18.00"), ("Stoneware mug", "14.50"), ("Beeswax candle", "22.00"),
    ("Single-origin coffee 250 g", "11.90"), ("Sourdough starter kit", "24.00"),
    ("Hand-thrown bowl", "36.00"), ("Wool beanie", "29.00"), ("Notebook, dot grid", "9.50"),
    ("Olive oil soap", "6.75"), ("Herbal tea tin", "12.00"), ("Leather keyring", "15.00"),
    ("Botanical print A3", "28.00"), ("Gift card", "50.00"), ("Canvas apron", "32.00"),
    ("Terracotta planter", "19.90"), ("Cotton socks, 3 pairs", "17.00"),
    ("Enamel pin", "8.00"), ("Scented diffuser", "34.50"), ("Walnut serving board", "64.00"),
    ("Weekend duffel bag", "119.00"),
)
_MAILBOXES = ("hello", "owner", "billing", "info", "team", "accounts")
_PAYMENT = (("paid", 76), ("pending", 10), ("failed", 7), ("refunded", 7))


@dataclass(frozen=True)
class DemoInfo:
    url: str
    path: Path | None
    tenants: int
    orders: int
    runs: int
    emails: int
    invalid_email_tenant: str | None


@dataclass
class _Tenant:
    id: str
    name: str
    email: str
    status: str
    expire_date: datetime | None
    created_at: datetime
    activity: float  # orders a day, on average; 0 = a store with no activity


@dataclass
class _Rows:
    tenants: list[dict[str, Any]] = field(default_factory=list)
    products: list[dict[str, Any]] = field(default_factory=list)
    customers: list[dict[str, Any]] = field(default_factory=list)
    orders: list[dict[str, Any]] = field(default_factory=list)
    order_products: list[dict[str, Any]] = field(default_factory=list)
    cart_items: list[dict[str, Any]] = field(default_factory=list)


# (what is being done, how far along 0..1): for a progress bar; build_demo calls it often.
DemoProgress = Callable[[str, float], None]
# Shares of the whole build, for one bar across its steps.
_STEPS = (("stores", 0.25), ("rows", 0.2), ("history", 0.55))


def build_demo(path_or_url: str | Path, tenants_count: int, today: datetime, *,
               settings: Settings | None = None, seed: int = SEED,
               progress: DemoProgress | None = None,
               checked: Callable[[], None] | None = None) -> DemoInfo:
    """Create (overwrite) the demo database and return what it holds.

    `checked` is called once the target is known to be reachable and free of data, before
    anything is written.

    `path_or_url` is a SQLite file (a Path, replaced when it exists) or a database URL
    (SQLite or PostgreSQL), whose platform tables must not hold any data yet.
    """
    if tenants_count < 1:
        raise UsageError("a demo needs at least one tenant")
    now = as_utc(today)
    path: Path | None = None
    if isinstance(path_or_url, str) and "://" in path_or_url:
        url = path_or_url
    else:
        if looks_like_url(str(path_or_url)):
            raise UsageError(f"{path_or_url} looks like a database URL, not a file: give it as "
                             "the database URL (--database-url or DATABASE_URL)")
        path = Path(path_or_url).expanduser().resolve()
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        url = f"sqlite:///{path}"
    report = _Steps(progress)
    engine = make_engine(url)
    try:
        check_reachable(engine)
        if path is None:
            _refuse_data(engine, url)
        if checked is not None:
            checked()
        platform.create_all(engine)
        upgrade(engine)
        if settings is None:
            settings = load_settings(Overrides(config=str(DEFAULTS_FILE)), env={})
        settings = replace(settings, database_url=url, cache_url=None)

        rng = random.Random(seed)
        grace = settings.job("expiry-checker").grace_period_days
        last_expiry_check = _last_slot(settings, "expiry-checker", now)
        people = _make_tenants(rng, tenants_count, now, grace, last_expiry_check)
        rows = _Rows()
        for i, t in enumerate(people):
            _add_store(rng, rows, t, now, settings.job("cleanup").cart_retention_days)
            report("stores", i + 1, len(people))
        _add_orphans(rng, rows, people, now)
        _insert(engine, rows, lambda done, total: report("rows", done, total))

        _simulate_history(rng, engine, settings, now,
                          lambda done, total: report("history", done, total))

        # Orphans that appeared since the last cleanup, so a preview has some to find.
        later = _Rows()
        _add_orphans(rng, later, people, now)
        _insert(engine, later)
        _age_outbox(engine, settings, now)

        with transaction(engine) as conn:
            counts = {
                t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                for t in (tenants, orders, ops_runs, ops_email_outbox)
            }
        invalid = next((t.id for t in people if "," in t.email), None)
        return DemoInfo(url, path, counts["tenants"], counts["orders"], counts["ops_runs"],
                        counts["ops_email_outbox"], invalid)
    finally:
        engine.dispose()


def _refuse_data(engine: Engine, url: str) -> None:
    """UsageError when any platform table of the database already holds rows: the demo
    adds made-up stores, orders and runs, which have no place beside real ones."""
    present = set(inspect(engine).get_table_names())
    held: list[str] = []
    with transaction(engine) as conn:
        for table in platform.sorted_tables:
            if table.name in present and conn.execute(select(table).limit(1)).first():
                held.append(table.name)
    if held:
        raise UsageError(f"demo fills an empty database only, and {redact(url)} "
                         f"holds StoreFlow data ({', '.join(held)}); give a new database or "
                         "schema")


def looks_like_url(text: str) -> bool:
    """`scheme://…`, also as Path() leaves it (`postgresql:/host/db`): a URL given where a
    file or folder is expected, which would otherwise become folders named `postgresql:`."""
    return "://" in text or re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/", text) is not None


class _Steps:
    """Turns each step's own count into one fraction of the whole build, at most a few
    hundred calls whatever the size."""

    def __init__(self, progress: DemoProgress | None) -> None:
        self.progress = progress
        self.last = -1.0

    def __call__(self, step: str, done: int, total: int) -> None:
        if self.progress is None or total <= 0:
            return
        before = 0.0
        for name, share in _STEPS:
            if name == step:
                fraction = before + share * min(done, total) / total
                break
            before += share
        else:
            return
        if fraction - self.last >= 0.002 or done >= total:
            self.last = fraction
            self.progress(step, min(fraction, 1.0))


# --- tenants ---------------------------------------------------------------------------------


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _names(rng: random.Random, count: int) -> list[str]:
    pairs = [f"{a} {n}" for a in _ADJECTIVES for n in _NOUNS]
    rng.shuffle(pairs)
    return [pairs[i % len(pairs)] + (f" {i // len(pairs) + 1}" if i >= len(pairs) else "")
            for i in range(count)]


def _last_slot(settings: Settings, job_id: str, now: datetime) -> datetime | None:
    slots = settings.job(job_id).schedule.previous_slots(now, now - timedelta(days=HISTORY_DAYS))
    return slots[-1] if slots else None


def _make_tenants(rng: random.Random, count: int, now: datetime, grace: int,
                  last_check: datetime | None) -> list[_Tenant]:
    def days(lo: float, hi: float) -> timedelta:
        return timedelta(seconds=round(rng.uniform(lo, hi) * 86_400))

    since_check = (now - last_check) if last_check is not None else timedelta(0)
    # (status, expire_date, orders a day); the first kinds come first so that even a
    # small demo shows one of each thing an operator should see.
    kinds: list[Callable[[], tuple[str, datetime | None, float]]] = [
        lambda: ("active", now - days(1.5, 2.5), 3.0),  # the tenant whose email is invalid
        lambda: ("active", now + days(1, 7), 4.0),  # renewal reminder due
        lambda: ("expired", now - days(1, max(1.5, grace - 1)), 2.0),  # in grace
        lambda: ("expired", now - days(grace + 1, grace + 5), 1.0),  # grace ends in the window
        lambda: ("suspended", now - days(30, 120), 0.0),
        lambda: ("cancelled", now - days(10, 200), 0.0),
        lambda: ("active", None, 5.0),  # no expiry (an annual invoice plan)
        lambda: ("active", now + days(20, 60), 0.0),  # a new store with no activity yet
        lambda: ("active", now - days(3, HISTORY_DAYS - 1), 2.5),  # expired during the week
        lambda: ("active", now + days(1, 3), 6.0),
    ]
    if since_check > timedelta(minutes=2):
        # Expired since the last check: the next expiry-checker run has work to do.
        kinds.append(lambda: ("active", now - since_check * rng.uniform(0.2, 0.9), 3.0))
    weighted: list[tuple[Callable[[], tuple[str, datetime | None, float]], int]] = [
        (lambda: ("active", now + days(8, 365), rng.choice((0.5, 1.5, 3.0, 6.0))), 60),
        (lambda: ("active", now + days(1, 7), 3.0), 8),
        (lambda: ("expired", now - days(1, max(1.5, grace - 1)), 1.5), 6),
        (lambda: ("suspended", now - days(20, 200), 0.0), 6),
        (lambda: ("cancelled", now - days(10, 300), 0.0), 4),
        (lambda: ("active", None, 4.0), 6),
        (lambda: ("active", now - days(1, HISTORY_DAYS - 1), 2.0), 6),
    ]
    names = _names(rng, count)
    out: list[_Tenant] = []
    for i, name in enumerate(names):
        if i < len(kinds):
            make = kinds[i]
        else:
            make = rng.choices([k for k, _ in weighted], [w for _, w in weighted])[0]
        status, expire, activity = make()
        slug = _slug(name)
        email = f"{rng.choice(_MAILBOXES)}@{slug}.shop"
        if i == 0:
            email = f"{slug.replace('-', '.')}@gmail,com"  # a typo the validator rejects
        created = now - days(90, 900)
        if expire is not None and status != "active" and created > expire:
            created = expire - days(30, 300)
        out.append(_Tenant(_uuid(rng), name, email, status, expire, created, activity))
    return out


# --- a store's catalogue, customers, orders and carts ----------------------------------------


def _add_store(rng: random.Random, rows: _Rows, t: _Tenant, now: datetime,
               retention_days: int) -> None:
    rows.tenants.append({"id": t.id, "name": t.name, "email": t.email, "status": t.status,
                         "expire_date": t.expire_date, "created_at": t.created_at})
    catalogue = rng.sample(_PRODUCTS, rng.randint(4, 12))
    product_ids: list[tuple[str, Decimal]] = []
    for name, price in catalogue:
        pid = _uuid(rng)
        product_ids.append((pid, Decimal(price)))
        rows.products.append({"id": pid, "tenant_id": t.id, "name": name,
                              "price": Decimal(price)})
    if t.activity <= 0:
        return

    customer_times = sorted(now - timedelta(seconds=rng.uniform(0, 60 * 86_400))
                            for _ in range(rng.randint(8, 20 + int(t.activity * 12))))
    customer_ids = []
    for created in customer_times:
        cid = _uuid(rng)
        customer_ids.append(cid)
        rows.customers.append({"id": cid, "tenant_id": t.id,
                               "email": f"customer-{cid[:8]}@example.com", "created_at": created})

    first_day = (now - timedelta(days=ORDER_DAYS)).date()
    for offset in range(ORDER_DAYS + 1):
        day_start = datetime.combine(first_day + timedelta(days=offset), time(0), tzinfo=UTC)
        for _ in range(rng.randint(0, round(2 * t.activity))):
            created = day_start + timedelta(seconds=rng.randint(0, 86_399))
            if created > now:
                continue
            known = bisect.bisect_right(customer_times, created)
            customer = rng.choice(customer_ids[:known]) if known and rng.random() > 0.15 else None
            oid = _uuid(rng)
            total = Decimal("0.00")
            for pid, unit in rng.sample(product_ids, rng.randint(1, min(4, len(product_ids)))):
                qty = rng.choices((1, 2, 3, 5), (70, 20, 8, 2))[0]
                total += unit * qty
                rows.order_products.append({"id": _uuid(rng), "order_id": oid, "product_id": pid,
                                            "quantity": qty, "price": unit})
            status = rng.choices([s for s, _ in _PAYMENT], [w for _, w in _PAYMENT])[0]
            rows.orders.append({"id": oid, "tenant_id": t.id, "customer_id": customer,
                                "total_amount": total, "payment_status": status,
                                "created_at": created})

    # Carts: most fresh, some abandoned long enough ago for cleanup to remove.
    for stale in [False] * rng.randint(2, 12) + [True] * rng.randint(0, 6):
        age = rng.uniform(retention_days + 0.5, retention_days + 20) if stale else rng.uniform(
            0, retention_days - 1)
        pid, _ = rng.choice(product_ids)
        rows.cart_items.append({
            "id": _uuid(rng), "tenant_id": t.id, "product_id": pid,
            "customer_id": rng.choice(customer_ids) if rng.random() > 0.4 else None,
            "quantity": rng.randint(1, 3), "created_at": now - timedelta(days=age),
        })


def _add_orphans(rng: random.Random, rows: _Rows, people: list[_Tenant], now: datetime) -> None:
    """Rows the platform left behind: lines of deleted orders, carts of deleted products."""
    for _ in range(rng.randint(2, 4)):
        rows.order_products.append({"id": _uuid(rng), "order_id": _uuid(rng),
                                    "product_id": _uuid(rng), "quantity": rng.randint(1, 3),
                                    "price": Decimal("9.99")})
    for _ in range(rng.randint(2, 4)):
        rows.cart_items.append({"id": _uuid(rng), "tenant_id": rng.choice(people).id,
                                "product_id": _uuid(rng), "customer_id": None, "quantity": 1,
                                "created_at": now - timedelta(days=rng.uniform(0, 5))})


def _insert(engine: Engine, rows: _Rows,
            progress: Callable[[int, int], None] | None = None) -> None:
    tables = ((tenants, rows.tenants), (products, rows.products), (customers, rows.customers),
              (orders, rows.orders), (order_products, rows.order_products),
              (cart_items, rows.cart_items))
    total = sum(len(values) for _, values in tables)
    done = 0
    with transaction(engine) as conn:
        for table, values in tables:
            for i in range(0, len(values), 5_000):
                conn.execute(table.insert(), values[i : i + 5_000])
                done += len(values[i : i + 5_000])
                if progress is not None:
                    progress(done, total)


# --- a week of history, made by the real jobs ------------------------------------------------


def _clock(start: datetime, seconds: float) -> Callable[[], datetime]:
    """A run's clock: the first reading is its start, later ones its end."""
    readings = iter((start, start + timedelta(seconds=seconds)))
    last = start

    def clock() -> datetime:
        nonlocal last
        last = next(readings, last)
        return last

    return clock


def _at(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def _cache_at(engine: Engine, moment: datetime) -> TableCache:
    """The embedded cache as a run at `moment` writes it: each value expires `cache_ttl`
    after its run, so the demo's TTLs are what the real job would have left by now
    (yesterday's values live, older ones expired)."""
    return TableCache(engine, clock=moment.timestamp)


def _simulate_history(rng: random.Random, engine: Engine, settings: Settings,
                      now: datetime, progress: Callable[[int, int], None] | None = None
                      ) -> None:
    since = now - timedelta(days=HISTORY_DAYS)
    events: list[tuple[datetime, str]] = []
    for job_id in settings.jobs:
        slots = settings.job(job_id).schedule.previous_slots(now, since)
        events.extend((slot, job_id) for slot in slots[-HISTORY_DAYS - 3:])
    events.sort()

    # An operator backfilled two weeks of analytics just before the week began.
    tz = settings.job(analytics.JOB_ID).schedule.timezone
    local_today = now.astimezone(tz).date()
    backfill_at = since - timedelta(hours=2)
    runs.execute(
        engine, settings, analytics.JOB_ID, now=backfill_at, started_by=OPERATOR,
        params=RunParams(date_from=local_today - timedelta(days=ANALYTICS_BACKFILL_DAYS),
                         date_to=analytics.yesterday(backfill_at, tz)),
        cache=_cache_at(engine, backfill_at), clock=_clock(backfill_at, rng.uniform(1, 4)),
    )

    missed = next((e for e in events if e[1] == "payment-reminders"), None)
    manual_at = (now - timedelta(days=1)).replace(hour=10, minute=17, second=4, microsecond=0)
    manual_done = manual_at >= now
    for done, (slot, job_id) in enumerate(events, start=1):
        if progress is not None:
            progress(done, len(events))
        if not manual_done and slot > manual_at:
            manual_done = True
            runs.execute(engine, settings, "expiry-checker", now=manual_at,
                         started_by=OPERATOR, trigger=Trigger.MANUAL,
                         clock=_clock(manual_at, rng.uniform(0.5, 2)))
        if (slot, job_id) == missed:
            # The runner was down for a deploy: the slot was recorded, not fired.
            runs.record_missed(engine, job_id, [slot], runner_id=RUNNER_ID, started_by=RUNNER_BY,
                               clock=_at(slot + timedelta(minutes=42)),
                               reason="no runner was alive when the slot passed")
            continue
        claim = runs.claim_slot(engine, settings, job_id, slot, runner_id=RUNNER_ID,
                                started_by=RUNNER_BY,
                                clock=_at(slot + timedelta(milliseconds=120)))
        if claim.run_id is None:
            continue
        runs.execute(
            engine, settings, job_id, now=slot, started_by=RUNNER_BY, trigger=Trigger.SCHEDULE,
            runner_id=RUNNER_ID, claimed_run_id=claim.run_id, scheduled_for=slot,
            cache=_cache_at(engine, slot),
            clock=_clock(slot + timedelta(milliseconds=150), rng.uniform(0.3, 6.0)),
        )
    # What the simulated runner leaves behind as a real one would: the schedules it planned.
    # A real runner started on the demo with other schedules then counts slots from its
    # start, instead of taking hours of the new schedule for missed slots.
    runs.note_schedules(engine, settings, now)


def _age_outbox(engine: Engine, settings: Settings, now: datetime) -> None:
    """Give the outbox a history, as the sender leaves it: older mail delivered; one the
    server refused for good (5xx: `failed` at once); one it asked to try later (4xx:
    `pending`, due again after a back-off); one that kept getting 4xx answers until the
    attempts ran out (`dead`)."""
    yesterday = now - timedelta(days=1)
    with transaction(engine) as conn:
        old = conn.execute(
            select(ops_email_outbox.c.id, ops_email_outbox.c.created_at)
            .where(ops_email_outbox.c.created_at < yesterday)
            .order_by(ops_email_outbox.c.id)
        ).all()
        if not old:
            return
        for row in old[3:]:
            conn.execute(update(ops_email_outbox).where(ops_email_outbox.c.id == row.id).values(
                status="sent", attempts=1, sent_at=row.created_at + timedelta(seconds=31),
                next_attempt_at=None, message_id=f"<{row.id}.demo@storeflow.invalid>"))
        conn.execute(update(ops_email_outbox).where(ops_email_outbox.c.id == old[0].id).values(
            status="failed", attempts=1,
            last_error="550 5.1.1 Recipient address rejected: user unknown"))
        if len(old) > 1:
            conn.execute(update(ops_email_outbox).where(ops_email_outbox.c.id == old[1].id).values(
                status="pending", attempts=2, next_attempt_at=now + timedelta(minutes=12),
                last_error="421 4.7.0 Try again later, closing connection"))
        if len(old) > 2:
            conn.execute(update(ops_email_outbox).where(ops_email_outbox.c.id == old[2].id).values(
                status="dead", attempts=settings.outbox.max_attempts,
                last_error="451 4.3.0 Mail server temporarily rejected message"))

"""analytics-aggregate: each tenant's orders, revenue, new customers and products sold for
a day, written to the cache the dashboard reads.

PostgreSQL does the aggregation: one statement per day joins every tenant to three
GROUP BY subqueries (the day's orders, its new customers, the order lines of its paid
orders), so the cost does not grow with a query per tenant and Python only turns
each tenant's row into its JSON value.

Also the read side for the faces: `cache_key` and `read_days`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from itertools import islice
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import Select, and_, case, func, select
from sqlalchemy.engine import Connection

from jobs.cache import Cache
from jobs.context import RunContext
from jobs.db import customers, is_sqlite, order_products, orders, tenants, transaction, ts
from jobs.errors import UsageError
from jobs.records import ItemResult, ItemStatus, RunParams
from jobs.settings import Settings
from jobs.timeutil import iso_z

JOB_ID = "analytics-aggregate"
CHUNK = 1_000  # keys per cache write; also how often a stop request is honoured
MAX_RANGE_DAYS = 366
_CENT = Decimal("0.01")
_ZERO = Decimal(0)


# --- which days, and where they begin and end ------------------------------------------------


def days_for(params: RunParams, now: datetime, tz: ZoneInfo) -> list[date]:
    """`--date`, else the `--from/--to` range (inclusive), else the day before `now` in tz.

    A day after `now`'s own (in tz) is refused: it has not happened, and aggregating it
    would write zeros over every tenant's dashboard. `now` is the run's reference time,
    so `--now` moves "today" with it."""
    if params.date is not None and (params.date_from is not None or params.date_to is not None):
        raise UsageError("give either --date or --from/--to, not both")
    today = now.astimezone(tz).date()
    if params.date is not None:
        _not_after(today, "--date", params.date, tz)
        return [params.date]
    if params.date_from is not None or params.date_to is not None:
        if params.date_from is None or params.date_to is None:
            raise UsageError("--from needs --to (and --to needs --from): a backfill is a range")
        if params.date_from > params.date_to:
            raise UsageError(
                f"--from {params.date_from.isoformat()} is after --to {params.date_to.isoformat()}"
            )
        count = (params.date_to - params.date_from).days + 1
        if count > MAX_RANGE_DAYS:
            raise UsageError(
                f"a backfill covers at most {MAX_RANGE_DAYS} days; "
                f"{params.date_from.isoformat()}..{params.date_to.isoformat()} is {count}"
            )
        _not_after(today, "--to", params.date_to, tz)
        return [params.date_from + timedelta(days=i) for i in range(count)]
    return [yesterday(now, tz)]


def yesterday(now: datetime, tz: ZoneInfo) -> date:
    """The day before `now`'s own in `tz`: the day a run without dates aggregates."""
    return now.astimezone(tz).date() - timedelta(days=1)


def latest_day(settings: Settings, now: datetime) -> date:
    """Yesterday in the job's timezone: the newest day the faces show by default."""
    return yesterday(now, settings.job(JOB_ID).schedule.timezone)


def _not_after(today: date, flag: str, day: date, tz: ZoneInfo) -> None:
    if day > today:
        raise UsageError(
            f"{flag} {day.isoformat()} is in the future (today is {today.isoformat()} in "
            f"{tz.key}): a day can be aggregated once it has begun"
        )


def day_bounds(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[local midnight, next local midnight) in UTC: 23 or 25 hours on a DST change.

    A midnight that a DST gap skips resolves (fold=0) to the instant the gap starts,
    so the day still begins where the previous one ended.
    """
    start = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
    return start, end


def cache_key(tenant_id: str, day: date) -> str:
    return f"analytics:{tenant_id}:overview:daily:{day.isoformat()}"


def cents(value: Decimal | float | int | None) -> Decimal:
    """The amount rounded to cents (half up)."""
    if value is None:
        return _ZERO
    if not isinstance(value, Decimal):
        # str() first: SQLite sums REALs, and Decimal(0.1 + 0.2) would carry the binary error.
        value = Decimal(str(value))
    return value.quantize(_CENT, rounding=ROUND_HALF_UP)


def money(value: Decimal | float | int | None) -> int | float:
    """Rounded to cents, as the JSON number JavaScript would write (`1234.5`, `12`)."""
    return json_number(cents(value))


def json_number(rounded: Decimal) -> int | float:
    """An amount already rounded to cents (`cents`), as JavaScript would write it."""
    return int(rounded) if rounded == rounded.to_integral_value() else float(rounded)


# --- the job -----------------------------------------------------------------------------------


def day_statement(start: datetime, end: datetime) -> Select[Any]:
    """Every tenant (any status) with its aggregates for [start, end); zeros when idle."""
    order_in_day = and_(ts(orders.c.created_at) >= start, ts(orders.c.created_at) < end)
    paid = orders.c.payment_status == "paid"
    day_orders = (
        select(
            orders.c.tenant_id,
            func.count().label("orders"),
            func.sum(case((paid, orders.c.total_amount))).label("revenue"),
        )
        .where(order_in_day)
        .group_by(orders.c.tenant_id)
        .subquery("day_orders")
    )
    new_customers = (
        select(customers.c.tenant_id, func.count().label("new_customers"))
        .where(ts(customers.c.created_at) >= start, ts(customers.c.created_at) < end)
        .group_by(customers.c.tenant_id)
        .subquery("new_customers")
    )
    sold = (
        select(orders.c.tenant_id, func.sum(order_products.c.quantity).label("products_sold"))
        .select_from(orders.join(order_products, order_products.c.order_id == orders.c.id))
        .where(order_in_day, paid)
        .group_by(orders.c.tenant_id)
        .subquery("sold")
    )
    return (
        select(
            tenants.c.id,
            tenants.c.name,
            func.coalesce(day_orders.c.orders, 0),
            day_orders.c.revenue,
            func.coalesce(new_customers.c.new_customers, 0),
            func.coalesce(sold.c.products_sold, 0),
        )
        .select_from(
            tenants.outerjoin(day_orders, day_orders.c.tenant_id == tenants.c.id)
            .outerjoin(new_customers, new_customers.c.tenant_id == tenants.c.id)
            .outerjoin(sold, sold.c.tenant_id == tenants.c.id)
        )
        .order_by(tenants.c.id)
    )


DAY_PLAN_SETTINGS = ("random_page_cost = 1.1", "jit = off")


def plan_for_a_day(conn: Connection) -> None:
    """Planner settings for the day's statement, for this transaction only (PostgreSQL).

    A day's paid orders are a thin slice of every order line ever written. At PostgreSQL's
    default price of a random read (4, a spinning disk's) the planner hashes all the order
    lines to find that slice; priced as on an SSD or a cached table (1.1), it looks up each
    paid order's lines through order_products_order_idx, so the job's cost follows the day's
    orders rather than the table's history: 0.73 s against 1.19 s with 5M lines, 10% of
    them on the day (bench/jobs_bench.py). JIT compilation costs more than it saves on a
    statement this short."""
    if not is_sqlite(conn):
        for setting in DAY_PLAN_SETTINGS:
            conn.exec_driver_sql(f"SET LOCAL {setting}")


def run(ctx: RunContext) -> dict[str, Any]:
    days = days_for(ctx.params, ctx.now, ctx.tz)
    generated_at = iso_z(ctx.now)
    ttl = ctx.job.cache_ttl
    with transaction(ctx.engine) as conn:
        tenant_count = int(conn.execute(select(func.count()).select_from(tenants)).scalar_one())
    ctx.set_total(tenant_count * len(days))

    seen: set[str] = set()
    writes = 0
    total_orders = 0
    total_revenue = Decimal(0)
    cache = None if ctx.dry_run else ctx.cache
    # One chunk's cache write runs in a worker thread while the previous chunk's items
    # are recorded: Redis and PostgreSQL work at the same time. A chunk's items are recorded
    # only once its write succeeded; an unreachable cache raises UnreachableError from
    # `result()` and the run fails (exit 3) rather than report tenants as cached that are not.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="analytics-cache") as writer:
        pending: tuple[Future[None] | None, list[ItemResult]] = (None, [])
        for day in days:
            start, end = day_bounds(day, ctx.tz)
            # Fetched whole (one row per tenant), not streamed: on SQLite an open read
            # transaction holds the write lock that the embedded cache and the run's
            # items need.
            with transaction(ctx.engine) as conn:
                plan_for_a_day(conn)
                rows = conn.execute(day_statement(start, end)).all()
            day_text = day.isoformat()
            for chunk in _chunks(rows, CHUNK):
                if ctx.stop_requested:
                    break
                values: dict[str, str] = {}
                items: list[ItemResult] = []
                for tenant_id, name, n_orders, revenue, n_customers, n_sold in chunk:
                    rounded = cents(revenue)
                    value = {
                        "tenantId": tenant_id,
                        "date": day_text,
                        "orders": n_orders,
                        "revenue": json_number(rounded),  # rounded once, as totalled
                        "newCustomers": n_customers,
                        "productsSold": n_sold,
                        "generatedAt": generated_at,
                    }
                    key = cache_key(tenant_id, day)
                    values[key] = orjson.dumps(value).decode()  # compact, as the dashboard reads
                    items.append(ItemResult(tenant_id, "cached", ItemStatus.OK,
                                            {**value, "key": key}, tenant_name=name))
                    seen.add(tenant_id)
                    total_orders += n_orders
                    total_revenue += rounded
                write = None if cache is None else writer.submit(cache.set_many, values, ttl)
                _record_when_written(ctx, *pending)
                pending = (write, items)
                writes += len(values)
            if ctx.stop_requested:
                break
        _record_when_written(ctx, *pending)

    return {
        "date": days[0].isoformat() if len(days) == 1
        else f"{days[0].isoformat()}..{days[-1].isoformat()}",
        "tenants": len(seen),
        "cache_writes": writes,
        "orders": total_orders,
        "revenue": money(total_revenue),
    }


def _record_when_written(ctx: RunContext, write: Future[None] | None,
                         items: list[ItemResult]) -> None:
    if write is not None:
        write.result()
    ctx.record_many(items)


def _chunks(rows: Sequence[Any], size: int) -> Iterator[list[Any]]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


# --- reading it back (CLI `analytics`, the console) ---------------------------------------------


@dataclass(frozen=True)
class DayValue:
    """One tenant-day as the cache holds it; value None when absent, expired or unreadable."""

    day: date
    value: dict[str, Any] | None
    ttl: int | None  # seconds left; None when absent or without expiry


def read_days(cache: Cache, tenant_id: str, days: Iterable[date]) -> list[DayValue]:
    """The cached values of `days` for one tenant, in the order given, in one round trip."""
    days = list(days)
    found = cache.get_many(cache_key(tenant_id, d) for d in days)
    out: list[DayValue] = []
    for day in days:
        cached = found.get(cache_key(tenant_id, day))
        if cached is None:
            out.append(DayValue(day, None, None))
            continue
        try:
            parsed = json.loads(cached.value)
        except ValueError:
            parsed = None
        out.append(DayValue(day, parsed if isinstance(parsed, dict) else None, cached.ttl))
    return out


def last_days(until: date, count: int) -> list[date]:
    """`count` days ending with `until`, newest first (the CLI's default of 14)."""
    return [until - timedelta(days=i) for i in range(count)]


__all__ = [
    "DAY_PLAN_SETTINGS",
    "JOB_ID",
    "DayValue",
    "cache_key",
    "cents",
    "day_bounds",
    "day_statement",
    "days_for",
    "json_number",
    "last_days",
    "latest_day",
    "money",
    "plan_for_a_day",
    "read_days",
    "run",
    "yesterday",
]

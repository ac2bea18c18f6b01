"""One day of analytics across every tenant, as the cache holds it, and checked against
the database.

`read_day` lists every tenant with its cached value for a day (one query for the
tenants, the cache read in batches), `sort_day` orders them by a figure with the
tenants that have no value last, and `verify_day` recomputes the day through the
analytics job itself, as a preview that writes nothing, and compares. The console's
day view and `storeflow-ops analytics --all` / `analytics verify` are faces of these.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from operator import attrgetter
from typing import Any, NamedTuple

import orjson
from sqlalchemy import literal, select
from sqlalchemy.engine import Engine

from jobs import runs
from jobs.analytics import JOB_ID, cache_key, cents, money
from jobs.cache import Cache, TableCache
from jobs.db import ops_cache, require_platform_tables, tenants, transaction
from jobs.errors import OpsError, UsageError
from jobs.records import RunParams, RunStatus, Trigger
from jobs.settings import Settings

# The figures of a cached value, by the names the dashboard reads.
FIGURES = ("orders", "revenue", "newCustomers", "productsSold")
SORT_FIELDS = (*FIGURES, "name")
DEFAULT_SORT = "revenue"


class TenantDay(NamedTuple):
    """A tenant's cached figures for the day; all None (and `missing`) when the cache has
    no readable value for it.

    A NamedTuple rather than a frozen dataclass: a day holds one per tenant, and a frozen
    dataclass's __init__ (object.__setattr__ per field) takes ~1 s for 100,000 of them on
    a busy machine, a tuple a tenth of that."""

    tenant_id: str
    name: str
    orders: int | None = None
    revenue: int | float | None = None
    newCustomers: int | None = None  # the cached value's own field names
    productsSold: int | None = None
    ttl: int | None = None  # seconds left; None when missing or without expiry

    @property
    def missing(self) -> bool:
        return self.orders is None

    def figures(self) -> dict[str, int | float] | None:
        if self.missing:
            return None
        return {f: getattr(self, f) for f in FIGURES}

    def to_json(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant_id, "name": self.name, "orders": self.orders,
                "revenue": self.revenue, "newCustomers": self.newCustomers,
                "productsSold": self.productsSold, "ttl": self.ttl, "missing": self.missing}


@dataclass(frozen=True)
class DayTotals:
    tenants: int
    missing: int
    orders: int
    revenue: int | float
    newCustomers: int
    productsSold: int

    def to_json(self) -> dict[str, Any]:
        return {"tenants": self.tenants, "missing": self.missing, "orders": self.orders,
                "revenue": self.revenue, "newCustomers": self.newCustomers,
                "productsSold": self.productsSold}


@dataclass(frozen=True)
class AnalyticsDay:
    day: date
    tenants: tuple[TenantDay, ...]  # by tenant id
    totals: DayTotals


# --- reading a day -------------------------------------------------------------------------------


def tenant_names(engine: Engine) -> list[tuple[str, str]]:
    """Every tenant's (id, name), by id."""
    require_platform_tables(engine)
    with transaction(engine) as conn:
        rows = conn.execute(select(tenants.c.id, tenants.c.name).order_by(tenants.c.id)).all()
    return [(str(i), str(n)) for i, n in rows]


def read_day(engine: Engine, cache: Cache, day: date) -> AnalyticsDay:
    """Every tenant with its cached value for `day` (a value that is absent, expired or
    unreadable is missing): the tenants in one query, their values in batches (Redis), or
    both in one query joining the embedded cache's table, which lives in the same database."""
    before, after = cache_key("\0", day).split("\0")  # each key is before + id + after
    if isinstance(cache, TableCache):
        found = _joined(engine, cache, before, after)
    else:
        names = tenant_names(engine)
        keys = [before + tenant_id + after for tenant_id, _ in names]
        values = cache.get_many(keys)
        found = []
        for (tenant_id, name), key in zip(names, keys, strict=True):
            cached = values.get(key)
            found.append((tenant_id, name, None, None) if cached is None
                         else (tenant_id, name, cached.value, cached.ttl))
    rows = tuple(_tenant_day(*row) for row in found)
    return AnalyticsDay(day, rows, totals(rows))


def _joined(engine: Engine, cache: TableCache, before: str, after: str
            ) -> list[tuple[str, str, str | None, int | None]]:
    """tenants LEFT JOIN ops_cache on each tenant's key for the day: one statement, a hash
    join, where looking up 100,000 keys given as a parameter takes several times longer."""
    key = literal(before) + tenants.c.id + literal(after)
    require_platform_tables(engine)
    now = cache.now()
    with transaction(engine) as conn:
        rows = conn.execute(
            select(tenants.c.id, tenants.c.name, key, ops_cache.c.value, ops_cache.c.expires_at)
            .select_from(tenants.outerjoin(ops_cache, ops_cache.c.key == key))
            .order_by(tenants.c.id)
        ).all()
    out: list[tuple[str, str, str | None, int | None]] = []
    for tenant_id, name, k, value, expires in rows:
        cached = None if value is None else cache.live(k, value, expires, now)
        out.append((str(tenant_id), str(name), None, None) if cached is None
                   else (str(tenant_id), str(name), cached.value, cached.ttl))
    return out


_NUMBERS = (int, float)  # what a figure may be; bool is not (type(), not isinstance)


def _tenant_day(tenant_id: str, name: str, text: str | None, ttl: int | None) -> TenantDay:
    """The tenant's figures from its cached value; missing when the value is absent or is
    not one the dashboard could read (not JSON, not an object, a figure absent or not a
    number). Written for speed: it runs once per tenant."""
    if text is None:
        return TenantDay(tenant_id, name)
    try:
        v = orjson.loads(text)
        orders, revenue = v["orders"], v["revenue"]
        new, sold = v["newCustomers"], v["productsSold"]
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
        return TenantDay(tenant_id, name)
    if (type(orders) not in _NUMBERS or type(revenue) not in _NUMBERS
            or type(new) not in _NUMBERS or type(sold) not in _NUMBERS):
        return TenantDay(tenant_id, name)
    return TenantDay(tenant_id, name, int(orders), revenue, int(new), int(sold), ttl)


def _figures(text: str) -> dict[str, Any] | None:
    """The four figures of a cached value, or None when it is not readable as one."""
    day = _tenant_day("", "", text, None)
    return day.figures()


def totals(rows: Iterable[TenantDay]) -> DayTotals:
    count = missing = orders = new = sold = revenue_cents = 0
    for r in rows:
        count += 1
        if r.orders is None:
            missing += 1
            continue
        orders += r.orders
        # In whole cents: every cached revenue is rounded to cents, and summing integers
        # is exact where summing floats is not (and Decimals are slower).
        revenue_cents += round((r.revenue or 0) * 100)
        new += r.newCustomers or 0
        sold += r.productsSold or 0
    return DayTotals(count, missing, orders, money(Decimal(revenue_cents) / 100), new, sold)


def sort_day(rows: Sequence[TenantDay], field: str = DEFAULT_SORT,
             descending: bool | None = None) -> list[TenantDay]:
    """`rows` by `field` (figures highest first, names A to Z, unless `descending` says
    otherwise); tenants without a value come last whichever way. Ties keep the order given."""
    if field not in SORT_FIELDS:
        raise UsageError(f"cannot sort by {field!r}; one of: {', '.join(SORT_FIELDS)}")
    if descending is None:
        descending = field != "name"
    present = [r for r in rows if r.orders is not None]
    absent = [r for r in rows if r.orders is None]
    if field == "name":
        present.sort(key=lambda r: r.name.casefold(), reverse=descending)
        absent.sort(key=lambda r: r.name.casefold(), reverse=descending)
    else:
        present.sort(key=attrgetter(field), reverse=descending)
    return present + absent


def day_json(day: AnalyticsDay, rows: Sequence[TenantDay]) -> dict[str, Any]:
    """`analytics --all --json`: the totals of the whole day, the tenants given."""
    return {"date": day.day.isoformat(), "totals": day.totals.to_json(),
            "tenants": [r.to_json() for r in rows]}


# --- verifying a day -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    tenant_id: str
    name: str
    cached: dict[str, int | float]
    actual: dict[str, int | float]

    @property
    def fields(self) -> list[str]:
        return [f for f in FIGURES if self.cached.get(f) != self.actual.get(f)]


@dataclass(frozen=True)
class Verification:
    day: date
    checked: int
    matching: int
    differing: tuple[Difference, ...]
    missing: tuple[tuple[str, str], ...]  # (tenant id, name)

    @property
    def ok(self) -> bool:
        return not self.differing and not self.missing

    def to_json(self) -> dict[str, Any]:
        return {
            "date": self.day.isoformat(),
            "checked": self.checked,
            "matching": self.matching,
            "differing": [{"tenant_id": d.tenant_id, "cached": d.cached, "actual": d.actual}
                          for d in self.differing],
            "missing": [tenant_id for tenant_id, _ in self.missing],
        }


def verify_day(engine: Engine, settings: Settings, cache: Cache, day: date, *, now: datetime,
               started_by: str) -> Verification:
    """Recompute `day` as the analytics job would now, writing nothing (its preview: the
    same code, the same statement), and compare every tenant's figures with the cache.

    A figure differs when the cached number is not the one the job would write now
    (revenue compared in cents); `generatedAt` and the TTL are not compared."""
    report = runs.execute(engine, settings, JOB_ID, now=now, started_by=started_by,
                          trigger=Trigger.MANUAL, dry_run=True, params=RunParams(date=day),
                          cache=cache)
    if report.status is RunStatus.FAILED:
        error = OpsError(f"recomputing {day.isoformat()} failed: {report.error}")
        if report.error_exit_code is not None:
            error.exit_code = report.error_exit_code
        raise error
    items = [i for i in report.items if i.detail.get("key")]
    found = cache.get_many(str(i.detail["key"]) for i in items)
    differing: list[Difference] = []
    missing: list[tuple[str, str]] = []
    for item in items:
        tenant_id = str(item.tenant_id)
        actual = {f: item.detail[f] for f in FIGURES}
        cached_value = found.get(str(item.detail["key"]))
        parsed = _figures(cached_value.value) if cached_value is not None else None
        if parsed is None:
            missing.append((tenant_id, item.tenant_name or ""))
            continue
        cached = {f: parsed[f] for f in FIGURES}
        if _same(cached, actual):
            continue
        differing.append(Difference(tenant_id, item.tenant_name or "", cached, actual))
    checked = len(items)
    return Verification(day, checked, checked - len(differing) - len(missing),
                        tuple(differing), tuple(missing))


def _same(cached: dict[str, Any], actual: dict[str, Any]) -> bool:
    return (cached["orders"] == actual["orders"]
            and cached["newCustomers"] == actual["newCustomers"]
            and cached["productsSold"] == actual["productsSold"]
            and cents(cached["revenue"]) == cents(actual["revenue"]))


__all__ = [
    "DEFAULT_SORT",
    "FIGURES",
    "SORT_FIELDS",
    "AnalyticsDay",
    "DayTotals",
    "Difference",
    "TenantDay",
    "Verification",
    "day_json",
    "read_day",
    "sort_day",
    "tenant_names",
    "totals",
    "verify_day",
]

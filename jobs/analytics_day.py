"""One day of analytics across every tenant, as the cache holds it, and checked against
the database.

`read_day` lists every tenant with its cached value for a day (one query for the
tenants, the cache read in batches), `sort_day` orders them by a figure with the
tenants that have no value last, and `verify_day` recomputes the day through the
analytics job itself, as a preview that writes nothing, and compares. The console's
day view and `storeflow-ops analytics --all` / `analytics verify` are faces of these.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from operator import itemgetter
from typing import Any, NamedTuple

import orjson
from sqlalchemy import and_, literal, null, or_, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import Select

from jobs import runs
from jobs.analytics import JOB_ID, cache_key, cents, money
from jobs.cache import Cache, RedisCache, TableCache
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
        return _driver_rows(conn, select(tenants.c.id, tenants.c.name).order_by(tenants.c.id))


def _driver_rows(conn: Connection, statement: Select[Any]) -> list[Any]:
    """The rows as the driver returns them (plain tuples), not a SQLAlchemy Row each: for
    statements whose columns need no conversion (text), 100,000 rows in a third of the time."""
    result = conn.execute(statement)
    try:
        return list(result.cursor.fetchall())
    finally:
        result.close()


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off while a day's 100,000 tuples are made: none of them
    can form a cycle, yet each allocation counts towards a collection that walks every one
    made so far, which doubled the read's CPU."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def read_day(engine: Engine, cache: Cache, day: date, *, ttls: bool = True) -> AnalyticsDay:
    """Every tenant with its cached value for `day` (a value that is absent, expired or
    unreadable is missing): the tenants in one query, their values in batches (Redis), or
    both in one query joining the embedded cache's table, which lives in the same database.

    `ttls=False` leaves every `ttl` None and reads the values alone (one MGET per batch on
    Redis): for a face that shows the TTLs of a page at a time (`read_ttls`)."""
    before, after = cache_key("\0", day).split("\0")  # each key is before + id + after
    with _collector_paused():
        if isinstance(cache, TableCache):
            found = _joined(engine, cache, before, after, ttls)
        else:
            names = tenant_names(engine)
            keys = [before + tenant_id + after for tenant_id, _ in names]
            if isinstance(cache, RedisCache) and not ttls:
                texts = cache.values(keys)
                found = [(tenant_id, name, text, None)
                         for (tenant_id, name), text in zip(names, texts, strict=True)]
            else:
                values = cache.get_many(keys)
                found = []
                for (tenant_id, name), key in zip(names, keys, strict=True):
                    cached = values.get(key)
                    found.append((tenant_id, name, None, None) if cached is None
                                 else (tenant_id, name, cached.value, cached.ttl))
        rows = tuple([_tenant_day(*row) for row in found])
        return AnalyticsDay(day, rows, totals(rows))


def read_ttls(cache: Cache, day: date, tenant_ids: Iterable[str]) -> dict[str, int | None]:
    """Seconds left on each tenant's value for `day` (None: no expiry), for the tenants
    whose value is still there: the TTLs of the rows a face shows, read when it shows them."""
    keys = {cache_key(tenant_id, day): tenant_id for tenant_id in tenant_ids}
    return {keys[key]: value.ttl for key, value in cache.get_many(keys).items()}


def _joined(engine: Engine, cache: TableCache, before: str, after: str, ttls: bool
            ) -> list[tuple[str, str, str | None, int | None]]:
    """tenants LEFT JOIN ops_cache on each tenant's live key for the day: one statement, a
    hash join, where looking up 100,000 keys given as a parameter takes several times
    longer. Expiry is checked in the join, as TableCache's sweep checks it, so without
    `ttls` no timestamp comes back to be converted (~0.7 s for 100,000 on a busy machine)."""
    key = literal(before) + tenants.c.id + literal(after)
    require_platform_tables(engine)
    now = cache.now()
    live = and_(ops_cache.c.key == key,
                or_(ops_cache.c.expires_at.is_(None), ops_cache.c.expires_at > now))
    expires = ops_cache.c.expires_at if ttls else null()
    statement = (select(tenants.c.id, tenants.c.name, ops_cache.c.value, expires)
                 .select_from(tenants.outerjoin(ops_cache, live)).order_by(tenants.c.id))
    with transaction(engine) as conn:
        if not ttls:
            return _driver_rows(conn, statement)  # (id, name, value or None, None)
        rows = conn.execute(statement).all()
    return [(tenant_id, name, value, None if value is None or left is None
             else int((left - now).total_seconds()))
            for tenant_id, name, value, left in rows]


_NUMBERS = (int, float)  # what a figure may be; bool is not (type(), not isinstance)
_new = tuple.__new__  # a TenantDay without the Python frame of its generated __new__


def _tenant_day(tenant_id: str, name: str, text: str | None, ttl: int | None) -> TenantDay:
    """The tenant's figures from its cached value; missing when the value is absent or is
    not one the dashboard could read (not JSON, not an object, a figure absent or not a
    number). Written for speed: it runs once per tenant."""
    if text is None:
        return _new(TenantDay, (tenant_id, name, None, None, None, None, None))
    try:
        v = orjson.loads(text)
        orders, revenue = v["orders"], v["revenue"]
        new, sold = v["newCustomers"], v["productsSold"]
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
        return _new(TenantDay, (tenant_id, name, None, None, None, None, None))
    if (type(orders) not in _NUMBERS or type(revenue) not in _NUMBERS
            or type(new) not in _NUMBERS or type(sold) not in _NUMBERS):
        return _new(TenantDay, (tenant_id, name, None, None, None, None, None))
    return _new(TenantDay, (tenant_id, name, int(orders), revenue, int(new), int(sold), ttl))


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
        present.sort(key=_folded_name, reverse=descending)
        absent.sort(key=_folded_name, reverse=descending)
    else:
        present.sort(key=itemgetter(TenantDay._fields.index(field)), reverse=descending)
    return present + absent


def _folded_name(r: TenantDay) -> str:
    return r.name.casefold()


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
    "read_ttls",
    "sort_day",
    "tenant_names",
    "totals",
    "verify_day",
]

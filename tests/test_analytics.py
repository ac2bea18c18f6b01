"""analytics-aggregate on SQLite and PostgreSQL, with Redis and the embedded cache."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from jobs import runs
from jobs.analytics import DayValue, cache_key, day_bounds, days_for, read_days
from jobs.cache import Cache, RedisCache
from jobs.cron import CronSchedule
from jobs.db import ops_run_items, ops_runs
from jobs.errors import CacheRefusedError, ExitCode, UsageError
from jobs.records import ItemStatus, RunParams, RunReport, RunStatus
from jobs.settings import Settings
from tests.conftest import _unavailable
from tests.factories import add_customer, add_order, add_product, add_tenant

JOB = "analytics-aggregate"
NOW = datetime(2026, 11, 28, 1, 0, tzinfo=UTC)
DAY = date(2026, 11, 27)
MIDNIGHT = datetime(2026, 11, 27, tzinfo=UTC)
LAST_MICRO = timedelta(microseconds=1)
NY = ZoneInfo("America/New_York")


def trigger(engine: Engine, settings: Settings, cache: Cache, now: datetime = NOW,
            **kw: Any) -> RunReport:
    return runs.execute(engine, settings, JOB, now=now, started_by="test", cache=cache, **kw)


def with_job(settings: Settings, **changes: Any) -> Settings:
    jobs = dict(settings.jobs)
    jobs[JOB] = replace(jobs[JOB], **changes)
    return replace(settings, jobs=jobs)


def cached(cache: Cache, tenant_id: str, day: date = DAY) -> str | None:
    value = cache.get(cache_key(tenant_id, day))
    return None if value is None else value.value


def expected(tenant_id: str, day: str = "2026-11-27", orders: int = 0, revenue: str = "0",
             customers: int = 0, sold: int = 0,
             generated: str = "2026-11-28T01:00:00.000Z") -> str:
    return (f'{{"tenantId":"{tenant_id}","date":"{day}","orders":{orders},"revenue":{revenue},'
            f'"newCustomers":{customers},"productsSold":{sold},"generatedAt":"{generated}"}}')


def test_aggregates_every_tenant_over_the_day(engine: Engine, settings: Settings,
                                              cache: Cache) -> None:
    busy = add_tenant(engine, id="a-busy", name="Busy Store")
    idle = add_tenant(engine, id="b-idle", status="cancelled")
    cents = add_tenant(engine, id="c-cents", status="suspended")
    whole = add_tenant(engine, id="d-whole", status="expired")
    p = add_product(engine, busy)
    # both edges of the day belong to it; the microsecond either side does not
    add_order(engine, busy, MIDNIGHT, "10.00", lines=[(p, 2)])
    add_order(engine, busy, MIDNIGHT + timedelta(days=1) - LAST_MICRO, "5.50",
              lines=[(p, 3), (p, 1)])
    add_order(engine, busy, MIDNIGHT - LAST_MICRO, "999.00", lines=[(p, 9)])
    add_order(engine, busy, MIDNIGHT + timedelta(days=1), "999.00", lines=[(p, 9)])
    # counted as orders, never as revenue or products sold
    add_order(engine, busy, MIDNIGHT + timedelta(hours=3), "100.00", "pending", [(p, 7)])
    add_order(engine, busy, MIDNIGHT + timedelta(hours=4), "50.00", "refunded", [(p, 7)])
    add_order(engine, busy, MIDNIGHT + timedelta(hours=5), "20.00", "failed", [(p, 7)])
    add_customer(engine, busy, MIDNIGHT)
    add_customer(engine, busy, MIDNIGHT + timedelta(days=1) - LAST_MICRO)
    add_customer(engine, busy, MIDNIGHT - LAST_MICRO)
    add_customer(engine, busy, MIDNIGHT + timedelta(days=1))
    add_customer(engine, idle, MIDNIGHT + timedelta(days=1))
    add_order(engine, cents, MIDNIGHT + timedelta(hours=1), "0.10")
    add_order(engine, cents, MIDNIGHT + timedelta(hours=2), "0.20")
    add_order(engine, whole, MIDNIGHT + timedelta(hours=2), "12.00")
    s = with_job(settings, cache_ttl=3600)

    report = trigger(engine, s, cache)

    assert report.status is RunStatus.SUCCEEDED and report.exit_code is ExitCode.OK
    assert cached(cache, busy) == expected(busy, orders=5, revenue="15.5", customers=2, sold=6)
    assert cached(cache, idle) == expected(idle)
    assert cached(cache, cents) == expected(cents, orders=2, revenue="0.3")
    assert cached(cache, whole) == expected(whole, orders=1, revenue="12")
    assert dict(report.summary) == {"date": "2026-11-27", "tenants": 4, "cache_writes": 4,
                                    "orders": 8, "revenue": 27.8}
    ttl = cache.get(cache_key(busy, DAY))
    assert ttl is not None and ttl.ttl is not None and 3600 - 5 <= ttl.ttl <= 3600
    assert [(i.tenant_id, i.action, i.status) for i in report.items] == [
        (t, "cached", ItemStatus.OK) for t in (busy, idle, cents, whole)
    ]
    first = report.items[0]
    assert first.tenant_name == "Busy Store"
    assert dict(first.detail) == {**json.loads(expected(busy, orders=5, revenue="15.5",
                                                        customers=2, sold=6)),
                                  "key": "analytics:a-busy:overview:daily:2026-11-27"}
    with engine.connect() as c:
        run = c.execute(select(ops_runs)).one()
        assert (run.status, run.total, run.processed) == ("succeeded", 4, 4)
        assert len(c.execute(select(ops_run_items)).all()) == 4


def test_sqlite_text_without_fraction_or_with_t(engine: Engine, settings: Settings,
                                                cache: Cache) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("text timestamps are a SQLite matter")
    tid = add_tenant(engine, id="raw")
    rows = [("raw-1", "7.25", "paid", "2026-11-27 00:00:00"),
            ("raw-2", "1.00", "paid", "2026-11-27T12:30:00"),
            ("raw-3", "50.00", "paid", "2026-11-28 00:00:00")]
    with engine.begin() as c:
        for oid, total, status, created in rows:
            c.execute(text("INSERT INTO orders (id, tenant_id, customer_id, total_amount, "
                           "payment_status, created_at) VALUES (:i, :t, NULL, :a, :s, :c)"),
                      {"i": oid, "t": tid, "a": total, "s": status, "c": created})
            c.execute(text("INSERT INTO order_products (id, order_id, product_id, quantity, price)"
                           " VALUES (:i, :o, 'p', 4, 1.00)"), {"i": "op-" + oid, "o": oid})
        c.execute(text("INSERT INTO customers (id, tenant_id, email, created_at) "
                       "VALUES ('rc', :t, NULL, '2026-11-27 00:00:00')"), {"t": tid})

    trigger(engine, settings, cache)

    assert cached(cache, tid) == expected(tid, orders=2, revenue="8.25", customers=1, sold=8)


def test_local_midnight_bounds_in_new_york(engine: Engine, settings: Settings,
                                           cache: Cache) -> None:
    s = with_job(settings, schedule=CronSchedule.parse("0 1 * * *", "America/New_York"))
    tid = add_tenant(engine, id="ny")
    start = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)  # midnight EST
    end = datetime(2026, 11, 28, 5, 0, tzinfo=UTC)
    for at in (start - LAST_MICRO, start, end - LAST_MICRO, end):
        add_order(engine, tid, at, "1.00")
    now = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)  # 01:00 EST, the slot

    report = trigger(engine, s, cache, now=now)

    assert report.summary["date"] == "2026-11-27"
    assert cached(cache, tid) == expected(tid, orders=2, revenue="2",
                                          generated="2026-11-28T06:00:00.000Z")


def test_dst_fall_back_day_has_25_hours(engine: Engine, settings: Settings,
                                        cache: Cache) -> None:
    s = with_job(settings, schedule=CronSchedule.parse("0 1 * * *", "America/New_York"))
    tid = add_tenant(engine, id="ny")
    start = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # midnight EDT
    end = datetime(2026, 11, 2, 5, 0, tzinfo=UTC)  # midnight EST
    for at in (start - LAST_MICRO, start, end - LAST_MICRO, end):
        add_order(engine, tid, at, "1.00")

    trigger(engine, s, cache, params=RunParams(date=date(2026, 11, 1)))

    assert cached(cache, tid, date(2026, 11, 1)) == expected(tid, day="2026-11-01", orders=2,
                                                             revenue="2")


def test_day_bounds_and_default_day() -> None:
    spring = day_bounds(date(2026, 3, 8), NY)
    fall = day_bounds(date(2026, 11, 1), NY)
    assert spring == (datetime(2026, 3, 8, 5, tzinfo=UTC), datetime(2026, 3, 9, 4, tzinfo=UTC))
    assert fall == (datetime(2026, 11, 1, 4, tzinfo=UTC), datetime(2026, 11, 2, 5, tzinfo=UTC))
    # 22:00 on the 27th in New York is already the 28th in UTC
    late = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
    assert days_for(RunParams(), late, NY) == [date(2026, 11, 26)]
    assert days_for(RunParams(), late, ZoneInfo("UTC")) == [date(2026, 11, 27)]
    year = RunParams(date_from=date(2024, 1, 1), date_to=date(2024, 12, 31))
    assert len(days_for(year, NOW, NY)) == 366
    with pytest.raises(UsageError, match="at most 366"):
        days_for(replace(year, date_to=date(2025, 1, 1)), NOW, NY)
    with pytest.raises(UsageError, match="after --to"):
        days_for(RunParams(date_from=date(2026, 11, 2), date_to=date(2026, 11, 1)), NOW, NY)


def test_date_and_backfill(engine: Engine, settings: Settings, cache: Cache) -> None:
    t1 = add_tenant(engine, id="t1")
    t2 = add_tenant(engine, id="t2")
    for offset, total in ((-2, "1.00"), (-1, "2.00"), (0, "3.00")):
        add_order(engine, t1, MIDNIGHT + timedelta(days=offset, hours=12), total)
    add_order(engine, t2, datetime(2026, 11, 20, 8, tzinfo=UTC), "4.00")

    one = trigger(engine, settings, cache, params=RunParams(date=date(2026, 11, 20)))
    assert dict(one.summary) == {"date": "2026-11-20", "tenants": 2, "cache_writes": 2,
                                 "orders": 1, "revenue": 4}
    assert cached(cache, t2, date(2026, 11, 20)) == expected(t2, day="2026-11-20", orders=1,
                                                             revenue="4")
    assert cached(cache, t1) is None  # --date replaces yesterday

    back = trigger(engine, settings, cache,
                   params=RunParams(date_from=date(2026, 11, 25), date_to=date(2026, 11, 27)))
    assert dict(back.summary) == {"date": "2026-11-25..2026-11-27", "tenants": 2,
                                  "cache_writes": 6, "orders": 3, "revenue": 6}
    assert [(i.tenant_id, i.detail["date"]) for i in back.items] == [
        (t, f"2026-11-2{d}") for d in (5, 6, 7) for t in (t1, t2)
    ]
    for d, total in ((25, "1"), (26, "2"), (27, "3")):
        assert cached(cache, t1, date(2026, 11, d)) == expected(
            t1, day=f"2026-11-{d}", orders=1, revenue=total)
    with engine.connect() as c:
        assert c.execute(select(ops_runs.c.total).where(ops_runs.c.id == back.run_id)
                         ).scalar_one() == 6


@pytest.mark.parametrize("params", [
    RunParams(date_from=date(2026, 11, 27), date_to=date(2026, 11, 25)),
    RunParams(date_from=date(2025, 1, 1), date_to=date(2026, 1, 2)),
])
def test_bad_range_is_a_usage_error(engine: Engine, settings: Settings, cache: Cache,
                                    params: RunParams) -> None:
    tid = add_tenant(engine)
    # Refused before anything is written: no run row, no key.
    with pytest.raises(UsageError) as exc:
        trigger(engine, settings, cache, params=params)
    assert exc.value.exit_code is ExitCode.USAGE
    assert cached(cache, tid, params.date_from or DAY) is None
    with engine.connect() as c:
        assert c.execute(select(ops_runs)).all() == []


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_day_that_has_not_happened_is_refused(engine: Engine, settings: Settings,
                                                 cache: Cache, dry_run: bool) -> None:
    """A future day would write zeros over every dashboard: refused before anything is
    written, preview included (it shows what the run would do, and the run would refuse).
    "Today" is the reference time's day in the job's timezone, not the wall clock's."""
    tid = add_tenant(engine)
    ny = with_job(settings, schedule=CronSchedule.parse("0 1 * * *", "America/New_York"))
    future = [  # (settings, params): NOW is 2026-11-28 01:00 UTC, 2026-11-27 20:00 in NY
        (settings, RunParams(date=date(2026, 11, 29))),
        (ny, RunParams(date=date(2026, 11, 28))),
        (settings, RunParams(date_from=date(2026, 11, 27), date_to=date(2026, 11, 29))),
        (settings, RunParams(date=date(2026, 11, 20), date_from=date(2026, 11, 20),
                             date_to=date(2026, 11, 21))),
    ]
    for s, params in future:
        with pytest.raises(UsageError) as exc:
            trigger(engine, s, cache, params=params, dry_run=dry_run)
        assert exc.value.exit_code is ExitCode.USAGE
    assert "--date 2026-11-29 is in the future (today is 2026-11-28 in UTC)" in str(
        trigger_error(engine, settings, cache, RunParams(date=date(2026, 11, 29))))
    assert cached(cache, tid, date(2026, 11, 28)) is None
    assert cached(cache, tid, date(2026, 11, 29)) is None
    with engine.connect() as c:
        assert c.execute(select(ops_runs)).all() == []

    # Today has begun: allowed (its figures so far), in the job's own timezone.
    today = trigger(engine, settings, cache, params=RunParams(date=date(2026, 11, 28)),
                    dry_run=dry_run)
    assert today.status is RunStatus.SUCCEEDED and today.summary["date"] == "2026-11-28"
    earlier = trigger(engine, ny, cache, params=RunParams(date=date(2026, 11, 27)),
                      dry_run=dry_run)
    assert earlier.status is RunStatus.SUCCEEDED


def trigger_error(engine: Engine, settings: Settings, cache: Cache,
                  params: RunParams) -> UsageError:
    with pytest.raises(UsageError) as exc:
        trigger(engine, settings, cache, params=params)
    return exc.value


def test_preview_writes_no_key_and_reports_the_same(engine: Engine, settings: Settings,
                                                    cache: Cache) -> None:
    tid = add_tenant(engine)
    add_order(engine, tid, MIDNIGHT + timedelta(hours=1), "9.99", lines=[])
    add_customer(engine, tid, MIDNIGHT)

    preview = trigger(engine, settings, cache, dry_run=True)

    assert preview.status is RunStatus.SUCCEEDED and preview.message == "Preview completed"
    assert cached(cache, tid) is None
    real = trigger(engine, settings, cache)
    assert dict(preview.summary) == dict(real.summary) == {
        "date": "2026-11-27", "tenants": 1, "cache_writes": 1, "orders": 1, "revenue": 9.99}
    assert [i.to_json() for i in preview.items] == [i.to_json() for i in real.items]
    assert cached(cache, tid) == expected(tid, orders=1, revenue="9.99", customers=1)


def test_second_run_overwrites(engine: Engine, settings: Settings, cache: Cache) -> None:
    tid = add_tenant(engine)
    add_order(engine, tid, MIDNIGHT + timedelta(hours=1), "3.00")
    trigger(engine, settings, cache)
    first = cached(cache, tid)
    trigger(engine, settings, cache)
    assert cached(cache, tid) == first == expected(tid, orders=1, revenue="3")
    add_order(engine, tid, MIDNIGHT + timedelta(hours=2), "4.00")  # a late-arriving order
    trigger(engine, settings, cache)
    assert cached(cache, tid) == expected(tid, orders=2, revenue="7")


def test_unreachable_redis_fails_the_run(engine: Engine, settings: Settings) -> None:
    add_tenant(engine)
    down = RedisCache("redis://127.0.0.1:1/0")

    report = trigger(engine, settings, down)

    assert report.status is RunStatus.FAILED and report.exit_code is ExitCode.UNREACHABLE
    errors = report.to_json()["results"]["errors"]
    assert len(errors) == 1 and errors[0]["error"].startswith("cache unreachable at redis://")
    assert report.items == ()
    with engine.connect() as c:
        assert c.execute(select(ops_runs.c.status)).scalar_one() == "failed"
    # a preview never opens the cache, so it still works
    assert trigger(engine, settings, down, dry_run=True).status is RunStatus.SUCCEEDED


def test_stop_request_writes_nothing_more(engine: Engine, settings: Settings,
                                          cache: Cache) -> None:
    tid = add_tenant(engine)
    stop = threading.Event()
    stop.set()
    report = trigger(engine, settings, cache, stop=stop)
    assert report.status is RunStatus.INTERRUPTED and report.exit_code is ExitCode.INTERRUPTED
    assert report.items == () and cached(cache, tid) is None


def test_read_days(engine: Engine, settings: Settings, cache: Cache) -> None:
    tid = add_tenant(engine)
    add_order(engine, tid, MIDNIGHT, "1.50")
    trigger(engine, settings, cache)
    cache.set_many({cache_key(tid, date(2026, 11, 25)): "not json"}, 60)

    got = read_days(cache, tid, [DAY, date(2026, 11, 26), date(2026, 11, 25)])

    assert [g.day for g in got] == [DAY, date(2026, 11, 26), date(2026, 11, 25)]
    assert got[0].value == json.loads(expected(tid, orders=1, revenue="1.5"))
    assert got[0].ttl is not None and 86_400 - 5 <= got[0].ttl <= 86_400
    assert got[1] == DayValue(date(2026, 11, 26), None, None)
    assert got[2].value is None and got[2].ttl is not None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis server of this test's own, which the test may shut down."""
    binary = shutil.which("redis-server")
    if binary is None:
        _unavailable("redis", "redis-server is not on PATH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(binary), "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.05)
    yield url
    proc.kill()
    proc.wait()


def test_redis_lost_mid_run_records_only_the_tenants_written(
        engine: Engine, settings: Settings, own_redis: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk's items are recorded only after its cache write succeeded, even though the
    next chunk's write is already under way when they are."""
    monkeypatch.setattr("jobs.analytics.CHUNK", 2)
    tenants = [add_tenant(engine, id=f"t-{i}") for i in range(5)]

    class ShutsDownAfterFirstWrite(RedisCache):
        def set_many(self, values: Mapping[str, str], ttl: int) -> None:
            super().set_many(values, ttl)
            with contextlib.suppress(redis.ConnectionError):
                redis.Redis.from_url(self.url).shutdown(nosave=True)

    report = trigger(engine, settings, ShutsDownAfterFirstWrite(own_redis))

    assert report.status is RunStatus.FAILED and report.exit_code is ExitCode.UNREACHABLE
    assert [i.tenant_id for i in report.items] == tenants[:2]
    with engine.connect() as c:
        stored = c.execute(select(ops_run_items.c.tenant_id).order_by(ops_run_items.c.seq))
        assert list(stored.scalars()) == tenants[:2]


def refusing_writes(url: str) -> redis.Redis:
    """Puts the server over its memory limit with no eviction: every write is refused (OOM)."""
    admin = redis.Redis.from_url(url)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")
    return admin


def test_refused_write_is_one_clear_error_and_the_connection_stays_usable(own_redis: str) -> None:
    """A write Redis refuses (here: out of memory) names the server and Redis's reason, and
    leaves no unread replies behind: the next commands get their own answers."""
    admin = refusing_writes(own_redis)
    cache = RedisCache(own_redis, prefix="p:")

    with pytest.raises(CacheRefusedError) as refused:
        cache.set_many({"a": "1", "b": "2", "c": "3"}, 60)

    assert refused.value.exit_code is ExitCode.FAILED
    assert refused.value.message.startswith(f"cache at {own_redis} refused a command: ")
    assert "maxmemory" in refused.value.message
    admin.config_set("maxmemory", "0")
    cache.set_many({"a": "1", "b": "2"}, 60)
    got = cache.get_many(["a", "b", "c"])
    assert {key: value.value for key, value in got.items()} == {"a": "1", "b": "2"}
    assert all(value.ttl is not None and 0 < value.ttl <= 60 for value in got.values())


def test_redis_refusing_writes_fails_the_run_without_a_traceback(
        engine: Engine, settings: Settings, own_redis: str,
        caplog: pytest.LogCaptureFixture) -> None:
    add_tenant(engine)
    refusing_writes(own_redis)

    report = trigger(engine, settings, RedisCache(own_redis))

    assert report.status is RunStatus.FAILED and report.exit_code is ExitCode.FAILED
    assert report.error is not None and "refused a command" in report.error
    assert report.items == ()
    assert not [r for r in caplog.records if r.exc_info]


def test_a_dropped_cache_connection_is_reopened(own_redis: str) -> None:
    """A long-lived runner's pooled connection may have been closed by Redis (a restart, an
    idle timeout) since the last run: the next write reopens it instead of failing."""
    cache = RedisCache(own_redis, prefix="p:")
    cache.set_many({"a": "1"}, 60)
    admin = redis.Redis.from_url(own_redis)
    assert admin.client_kill_filter(_type="normal", skipme=True) >= 1

    cache.set_many({"b": "2"}, 60)

    assert {key: value.value for key, value in cache.get_many(["a", "b"]).items()} == {"a": "1", "b": "2"}

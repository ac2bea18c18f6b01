"""Analytics for a day across every tenant: the console's day view and its verification,
`analytics --all`, `analytics verify` and tenant lookup by part of a name. Every test
runs on SQLite and PostgreSQL, and on Redis and the embedded cache."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from textual.widgets import DataTable, Static

from console.tui.app import OpsApp
from console.tui.screens.analytics import AnalyticsScreen
from console.tui.screens.analytics_day import AnalyticsDayScreen
from console.tui.screens.confirm import ConfirmScreen
from console.tui.screens.verify import VerifyScreen
from jobs import runs
from jobs.analytics import JOB_ID, cache_key
from jobs.analytics_day import read_day, read_ttls, sort_day
from jobs.cache import Cache, RedisCache, TableCache
from jobs.db import ops_cache, orders
from jobs.records import RunParams
from jobs.settings import Settings
from tests.conftest import CliCall, cli, in_process_cli
from tests.factories import add_customer, add_order, add_product, add_tenant
from tests.test_tui import cell, column, notes, screen_of, settle, text

DAY = date(2026, 11, 27)
NOW = datetime(2026, 11, 28, 10, tzinfo=UTC)
SIZE = (120, 36)


def at(hour: int) -> datetime:
    return datetime(DAY.year, DAY.month, DAY.day, hour, tzinfo=UTC)


def shops(engine: Engine) -> None:
    """Amber Fern sells most, Blue Fern Goods has most orders, Cedar Oak nothing, and
    Dusty Lantern's value will be missing from the cache."""
    add_tenant(engine, id="t-a", name="Amber Fern")
    add_tenant(engine, id="t-b", name="Blue Fern Goods")
    add_tenant(engine, id="t-c", name="Cedar Oak")
    add_tenant(engine, id="t-d", name="Dusty Lantern")
    product = add_product(engine, "t-a")
    add_order(engine, "t-a", at(10), "120.50", lines=[(product, 3)], id="o-a1")
    add_order(engine, "t-a", at(11), "30.00", payment_status="pending")
    for hour in (12, 13, 14):
        add_order(engine, "t-b", at(hour), "10.00")
    add_customer(engine, "t-b", at(8))
    add_order(engine, "t-d", at(9), "5.00")


def aggregate(engine: Engine, settings: Settings, cache: Cache) -> None:
    report = runs.execute(engine, settings, JOB_ID, now=NOW, started_by="test",
                          params=RunParams(date=DAY), cache=cache)
    assert report.summary["cache_writes"] == 4


def drop(engine: Engine, cache: Cache, key: str) -> None:
    if isinstance(cache, RedisCache):
        assert cache._client.delete(cache.prefix + key) == 1
    else:
        with engine.begin() as conn:
            assert conn.execute(delete(ops_cache).where(ops_cache.c.key == key)).rowcount == 1


def make_app(settings: Settings, engine: Engine, cache: Cache, **kw: Any) -> OpsApp:
    return OpsApp(settings, clock=lambda: NOW, engine=engine, refresh_seconds=0,
                  cache_factory=lambda _: cache, **kw)


def change_an_order(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(update(orders).where(orders.c.id == "o-a1").values(total_amount=99))


# --- reading and sorting --------------------------------------------------------------------


def test_read_day_sorts_totals_and_marks_missing(engine: Engine, settings: Settings,
                                                 cache: Cache) -> None:
    shops(engine)
    aggregate(engine, settings, cache)
    drop(engine, cache, cache_key("t-d", DAY))
    day = read_day(engine, cache, DAY)
    assert day.totals.to_json() == {"tenants": 4, "missing": 1, "orders": 5, "revenue": 150.5,
                                    "newCustomers": 1, "productsSold": 3}
    by = {r.tenant_id: r for r in day.tenants}
    assert by["t-d"].missing and by["t-d"].ttl is None
    assert by["t-a"].figures() == {"orders": 2, "revenue": 120.5, "newCustomers": 0,
                                   "productsSold": 3}
    assert by["t-a"].ttl is not None and 0 < by["t-a"].ttl <= 86_400
    # Without TTLs (the day view's read), the same figures; the TTLs read for a page.
    bare = read_day(engine, cache, DAY, ttls=False)
    assert bare.totals == day.totals
    assert bare.tenants == tuple(r._replace(ttl=None) for r in day.tenants)
    ttls = read_ttls(cache, DAY, ["t-a", "t-d"])
    assert list(ttls) == ["t-a"] and abs((ttls["t-a"] or 0) - by["t-a"].ttl) <= 5

    def ids(field: str, descending: bool | None = None) -> list[str]:
        return [r.tenant_id for r in sort_day(day.tenants, field, descending)]

    assert ids("revenue") == ["t-a", "t-b", "t-c", "t-d"]
    assert ids("orders") == ["t-b", "t-a", "t-c", "t-d"]
    assert ids("orders", descending=False) == ["t-c", "t-a", "t-b", "t-d"]  # missing still last
    assert ids("name", descending=True) == ["t-c", "t-b", "t-a", "t-d"]


def test_the_embedded_cache_reads_a_day_of_many_tenants_in_one_query(engine: Engine) -> None:
    # More keys than either driver takes parameters in one statement.
    cache = TableCache(engine, clock=lambda: NOW.timestamp())
    values = {f"k{i}": str(i) for i in range(70_000)}
    cache.set_many(values, ttl=60)
    found = cache.get_many([*values, "absent"])
    assert len(found) == 70_000 and found["k69999"].value == "69999" and "absent" not in found


def test_an_expired_or_unreadable_value_is_missing(engine: Engine, settings: Settings,
                                                  cache: Cache, clock_value: list[float]) -> None:
    shops(engine)
    aggregate(engine, settings, cache)
    cache.set_many({cache_key("t-b", DAY): '{"orders": "3"}',  # not a figure the dashboard reads
                    cache_key("t-c", DAY): "not json"}, ttl=60)
    for ttls in (True, False):
        day = read_day(engine, cache, DAY, ttls=ttls)
        assert [r.tenant_id for r in day.tenants if r.missing] == ["t-b", "t-c"]
    if isinstance(cache, TableCache):  # its clock can be moved: past every value's TTL
        clock_value[0] += 2 * 86_400
        assert read_day(engine, cache, DAY).totals.missing == 4
        assert read_day(engine, cache, DAY, ttls=False).totals.missing == 4


def test_redis_reads_the_same_without_scripts(redis_url: str, redis_prefix: str) -> None:
    """A Redis that refuses scripts (NOPERM, scripting off) is read one command a key."""
    cache = RedisCache(redis_url, prefix=redis_prefix)
    cache.set_many({f"k{i}": str(i) for i in range(12_000)}, ttl=300)
    keys = [f"k{i}" for i in range(0, 12_500, 3)]
    with_scripts = cache.get_many(keys)
    assert cache._scripts  # this Redis ran the script
    cache._scripts = False
    without = cache.get_many(keys)
    assert len(without) == 4_000 and without["k11997"].value == "11997"
    assert {k: v.value for k, v in with_scripts.items()} == {
        k: v.value for k, v in without.items()}
    assert all(290 < (v.ttl or 0) <= 300 for v in [*with_scripts.values(), *without.values()])
    # Values alone (MGET, every batch sent at once), in the order asked, None where absent.
    assert cache.values(keys) == [str(i) if i < 12_000 else None for i in range(0, 12_500, 3)]


# --- the console ----------------------------------------------------------------------------


async def test_day_view_sorts_totals_marks_missing_and_opens_a_tenant(
        engine: Engine, settings: Settings, cache: Cache) -> None:
    shops(engine)
    aggregate(engine, settings, cache)
    drop(engine, cache, cache_key("t-d", DAY))
    app = make_app(settings, engine, cache)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("d")  # from the jobs screen; yesterday by the job's timezone
        await settle(app, pilot)
        screen = screen_of(app)
        assert isinstance(screen, AnalyticsDayScreen) and screen.day == DAY
        table = screen.query_one("#day-table", DataTable)
        assert column(table, "name") == ["Total: 4 tenants", "Amber Fern", "Blue Fern Goods",
                                         "Cedar Oak", "Dusty Lantern"]
        assert [cell(table, "totals", c) for c in
                ("orders", "revenue", "newCustomers", "productsSold", "ttl")] == [
            "5", "150.50", "1", "3", "1 missing"]
        assert cell(table, "t-d", "orders") == "missing"
        assert [cell(table, "t-a", c) for c in ("orders", "revenue", "newCustomers",
                                                  "productsSold")] == ["2", "120.50", "0", "3"]
        assert "1 missing" in text(screen.query_one("#day-summary", Static))
        # The TTLs of the rows on screen, read once the page is shown.
        assert re.fullmatch(r"\d+[dh] \d+[hm]", cell(table, "t-a", "ttl"))
        assert cell(table, "t-d", "ttl") == ""

        await pilot.press("2")  # orders, most first
        assert column(table, "name")[1:] == ["Blue Fern Goods", "Amber Fern", "Cedar Oak",
                                             "Dusty Lantern"]
        await pilot.press("2")  # again: fewest first, the missing one still last
        assert column(table, "name")[1:] == ["Cedar Oak", "Amber Fern", "Blue Fern Goods",
                                             "Dusty Lantern"]
        assert "by orders ↑" in text(screen.query_one("#day-summary", Static))
        await settle(app, pilot)  # the page shown again, its TTLs read again
        assert re.fullmatch(r"\d+[dh] \d+[hm]", cell(table, "t-b", "ttl"))

        await pilot.press("down", "enter")  # Amber Fern
        await settle(app, pilot)
        tenant = screen_of(app)
        assert isinstance(tenant, AnalyticsScreen) and tenant.tenant is not None
        assert tenant.tenant.id == "t-a"
        assert cell(tenant.query_one("#days", DataTable), DAY.isoformat(), "revenue") == "120.50"


async def test_verify_lists_differing_and_missing_then_recomputes_them(
        engine: Engine, settings: Settings, cache: Cache) -> None:
    shops(engine)
    aggregate(engine, settings, cache)
    drop(engine, cache, cache_key("t-d", DAY))
    change_an_order(engine)
    app = make_app(settings, engine, cache)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        app.open_analytics_day(DAY)
        await settle(app, pilot)
        await pilot.press("v")
        await settle(app, pilot)
        screen = screen_of(app)
        assert isinstance(screen, VerifyScreen)
        table = screen.query_one("#verify-table", DataTable)
        assert column(table, "name") == ["Amber Fern", "Dusty Lantern"]
        assert cell(table, "t-a", "state") == "differs"
        assert cell(table, "t-a", "revenue") == "120.50 → 99.00"
        assert cell(table, "t-a", "orders") == "2"  # the same: shown once
        assert cell(table, "t-d", "state") == "missing"
        assert text(screen.query_one("#verify-summary", Static)).startswith(
            "2026-11-27: 4 tenants checked, 2 matching, 1 differing, 1 missing")
        assert "analytics: Recompute these" in [t for t, _, _ in app.palette_entries(screen)]

        await pilot.press("c")
        await settle(app, pilot)
        assert isinstance(screen_of(app), ConfirmScreen)
        await pilot.press("y")
        await settle(app, pilot)
        assert screen_of(app) is screen  # verified again after the run
        assert table.row_count == 0
        assert "the cache agrees with the database" in text(
            screen.query_one("#verify-summary", Static))
    value = cache.get(cache_key("t-d", DAY))
    assert value is not None and json.loads(value.value)["orders"] == 1
    value = cache.get(cache_key("t-a", DAY))
    assert value is not None and json.loads(value.value)["revenue"] == 99


async def test_verify_in_read_only_mode_offers_no_recompute(
        engine: Engine, settings: Settings, cache: Cache) -> None:
    shops(engine)
    aggregate(engine, settings, cache)
    drop(engine, cache, cache_key("t-d", DAY))
    app = make_app(settings, engine, cache, read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        app.open_analytics_day(DAY)
        await settle(app, pilot)
        await pilot.press("v")
        await settle(app, pilot)
        screen = screen_of(app)
        assert isinstance(screen, VerifyScreen) and screen.result is not None
        assert [t for t, _ in screen.result.missing] == ["t-d"]
        assert "recompute" not in {b.binding.action for b in screen.active_bindings.values()}
        assert not any("Recompute" in t for t, _, _ in app.palette_entries(screen))
        await pilot.press("c")
        await settle(app, pilot)
        assert screen_of(app) is screen
        assert any("Read-only console" in n for n in notes(app))
    assert cache.get(cache_key("t-d", DAY)) is None


# --- the CLI --------------------------------------------------------------------------------


@pytest.fixture
def live_cache(engine: Engine, cache_kind: str, redis_prefix: str,
               request: pytest.FixtureRequest) -> Cache:
    """The cache a CLI process opens, from this process: on the wall clock, as it reads."""
    if cache_kind == "redis":
        return RedisCache(request.getfixturevalue("redis_url"), prefix=redis_prefix)
    return TableCache(engine)


@pytest.fixture
def cli_env(env: dict[str, str], cache_kind: str, request: pytest.FixtureRequest
            ) -> dict[str, str]:
    if cache_kind == "redis":
        return {**env, "REDIS_URL": request.getfixturevalue("redis_url")}
    return env


@pytest.fixture
def run_cli(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
            capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """`storeflow-ops ARGS` in this process, with the test's environment only."""
    return in_process_cli(cli_env, monkeypatch, tmp_path, capsys)


def test_analytics_all_json_csv_sort_and_limit(engine: Engine, settings: Settings,
                                               live_cache: Cache, run_cli: Any) -> None:
    shops(engine)
    aggregate(engine, settings, live_cache)
    drop(engine, live_cache, cache_key("t-d", DAY))

    code, out, _ = run_cli("analytics", "--all", "--date", "2026-11-27", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["date"] == "2026-11-27"
    assert doc["totals"] == {"tenants": 4, "missing": 1, "orders": 5, "revenue": 150.5,
                             "newCustomers": 1, "productsSold": 3}
    assert [t["tenant_id"] for t in doc["tenants"]] == ["t-a", "t-b", "t-c", "t-d"]
    first, last = doc["tenants"][0], doc["tenants"][-1]
    assert {k: v for k, v in first.items() if k != "ttl"} == {
        "tenant_id": "t-a", "name": "Amber Fern", "orders": 2, "revenue": 120.5,
        "newCustomers": 0, "productsSold": 3, "missing": False}
    assert 0 < first["ttl"] <= 86_400
    assert last == {"tenant_id": "t-d", "name": "Dusty Lantern", "orders": None,
                    "revenue": None, "newCustomers": None, "productsSold": None, "ttl": None,
                    "missing": True}

    code, out, _ = run_cli("analytics", "--all", "--date", "2026-11-27", "--sort", "orders",
                           "--limit", "2", "--json")
    doc = json.loads(out)
    assert [t["tenant_id"] for t in doc["tenants"]] == ["t-b", "t-a"]
    assert doc["totals"]["tenants"] == 4  # the totals are the whole day's

    code, out, _ = run_cli("analytics", "--all", "--date", "2026-11-27", "--sort", "name",
                           "--csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert code == 0 and rows[0] == ["tenant_id", "name", "orders", "revenue", "newCustomers",
                                     "productsSold", "ttl", "missing"]
    assert [r[1] for r in rows[1:]] == ["Amber Fern", "Blue Fern Goods", "Cedar Oak",
                                        "Dusty Lantern"]
    assert rows[2][:6] == ["t-b", "Blue Fern Goods", "3", "30", "1", "0"]
    assert rows[4] == ["t-d", "Dusty Lantern", "", "", "", "", "", "true"]

    code, out, err = run_cli("analytics", "--all", "--date", "2026-11-27")
    assert code == 0 and "1 without a cached value" in err
    assert out.splitlines()[-1].split()[:5] == ["TOTAL", "4", "tenants", "5", "150.50"]

    code, _, err = run_cli("analytics", "--all", "--sort", "price")
    assert code == 2 and "cannot sort by 'price'" in err


def test_analytics_verify_exit_codes_and_json(engine: Engine, settings: Settings,
                                              live_cache: Cache, cli_env: dict[str, str],
                                              tmp_path: Path, cli_here: CliCall) -> None:
    shops(engine)
    aggregate(engine, settings, live_cache)
    proc = cli_here(cli_env, "analytics", "verify", "--date", "2026-11-27", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"date": "2026-11-27", "checked": 4, "matching": 4,
                                       "differing": [], "missing": []}

    drop(engine, live_cache, cache_key("t-d", DAY))
    change_an_order(engine)
    proc = cli_here(cli_env, "analytics", "verify", "--date", "2026-11-27", "--json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout) == {
        "date": "2026-11-27", "checked": 4, "matching": 2,
        "differing": [{"tenant_id": "t-a",
                       "cached": {"orders": 2, "revenue": 120.5, "newCustomers": 0,
                                  "productsSold": 3},
                       "actual": {"orders": 2, "revenue": 99, "newCustomers": 0,
                                  "productsSold": 3}}],
        "missing": ["t-d"]}
    proc = cli_here(cli_env, "analytics", "verify", "--date", "2026-11-27", cwd=tmp_path)
    assert proc.returncode == 1
    assert re.search(r"^t-a\s+Amber Fern\s+revenue\s+120\.50\s+99\.00$", proc.stdout, re.M)
    assert re.search(r"^\s+t-d\s+Dusty Lantern$", proc.stdout, re.M)
    assert "trigger analytics-aggregate --date 2026-11-27" in proc.stderr
    # Verifying wrote nothing: the key is still missing, the cached revenue still the old one.
    assert live_cache.get(cache_key("t-d", DAY)) is None
    old = live_cache.get(cache_key("t-a", DAY))
    assert old is not None and json.loads(old.value)["revenue"] == 120.5


def test_tenant_lookup_by_a_unique_part_of_the_name(engine: Engine, settings: Settings,
                                                    live_cache: Cache, run_cli: Any) -> None:
    shops(engine)
    aggregate(engine, settings, live_cache)
    code, out, _ = run_cli("analytics", "oAK", "--date", "2026-11-27", "--json")
    assert code == 0 and json.loads(out)[0]["key"] == cache_key("t-c", DAY)
    code, out, _ = run_cli("analytics", "t-a", "--date", "2026-11-27", "--json")
    assert code == 0 and json.loads(out)[0]["value"]["revenue"] == 120.5

    code, out, err = run_cli("analytics", "fern", "--date", "2026-11-27")
    assert code == 2 and out == ""
    assert err.strip() == ("storeflow-ops: 'fern' matches 2 tenants: Amber Fern (t-a); "
                           "Blue Fern Goods (t-b); give more of the name, or the id")
    code, _, err = run_cli("analytics", "silver")
    assert code == 2 and "unknown tenant 'silver'" in err


# --- the demo in a database of one's own ------------------------------------------------------


def test_demo_builds_into_the_database_url_and_refuses_one_with_data(
        db_url: str, env: dict[str, str], cache_kind: str, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    """PostgreSQL included; REDIS_URL set or not, the demo keeps its values in its own
    embedded cache. Its data follow the product's rules: TTLs as `cache_ttl` leaves them,
    4xx answers pending for retry, 5xx failed at once."""
    redis_url = request.getfixturevalue("redis_url")
    demo_env = {**env, "REDIS_URL": redis_url} if cache_kind == "redis" else env
    proc = cli(demo_env, "demo", "--no-tui", "--tenants", "6", cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "demo database: " in proc.stdout and "6 tenants" in proc.stdout
    # In the database named, not in a file of its own; nothing in Redis.
    assert [f.name for f in tmp_path.glob("*.sqlite3")] == (
        ["storeflow.sqlite3"] if db_url.startswith("sqlite") else [])
    assert not list(redis.Redis.from_url(redis_url).scan_iter(match=env["STOREFLOW_CACHE_PREFIX"] + "*"))

    now = datetime.now(UTC)
    long_ago = (now.date() - timedelta(days=3)).isoformat()  # written, then expired
    doc = json.loads(cli(env, "analytics", "--all", "--date", long_ago, "--json",
                         cwd=tmp_path).stdout)
    assert doc["totals"]["tenants"] == 6 and doc["totals"]["missing"] == 6
    latest = json.loads(cli(env, "analytics", "--all", "--json", cwd=tmp_path).stdout)
    # Written by the run at 01:00 today (UTC, the job's default zone) with a day to live.
    slot = now.replace(hour=1, minute=0, second=0, microsecond=0)
    if now >= slot + timedelta(minutes=1):
        assert latest["totals"]["missing"] == 0
        left = 86_400 - (now - slot).total_seconds()
        assert all(left - 120 <= t["ttl"] <= left + 5 for t in latest["tenants"])

    emails = json.loads(cli(env, "outbox", "--limit", "500", "--json", cwd=tmp_path).stdout)
    answered = [e for e in emails if e["last_error"]]
    assert {e["status"] for e in answered} == {"failed", "pending", "dead"}
    for e in answered:
        code = e["last_error"][0]
        assert (e["status"], code) in {("failed", "5"), ("pending", "4"), ("dead", "4")}, e
        assert e["status"] != "failed" or e["attempts"] == 1

    again = cli(env, "demo", "--no-tui", "--tenants", "2", cwd=tmp_path)
    assert again.returncode == 2 and again.stdout == ""
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds StoreFlow data (" in lines[0] and "tenants" in lines[0]


def test_demo_takes_a_url_given_as_path_for_an_error_not_a_folder(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = cli(env, "demo", "--no-tui", "--path", "postgresql://db.example/shop", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "looks like a database URL" in proc.stderr and "--database-url" in proc.stderr
    assert list(tmp_path.iterdir()) == []

"""The console driven as an operator would (App.run_test + Pilot), on SQLite and PostgreSQL:
every screen, trigger, preview then run for real, pause/resume, filters and search,
analytics, the outbox, read-only mode and a database that is down.

Assertions look at what the screen shows (widgets, table cells) and at the rows written.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.text import Text
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Input, Static
from textual.widgets._footer import FooterKey

from console.formatting import clip
from console.tui.app import OpsApp
from console.tui.screens.analytics import AnalyticsScreen
from console.tui.screens.confirm import ConfirmScreen
from console.tui.screens.help import HelpScreen
from console.tui.screens.history import HistoryScreen
from console.tui.screens.jobs import JobsScreen
from console.tui.screens.outbox import OutboxScreen
from console.tui.screens.pause_reason import PauseReasonScreen
from console.tui.screens.preview import PreviewScreen
from console.tui.screens.run_detail import RunDetailScreen
from console.tui.widgets.footer import OpsFooter
from console.tui.widgets.items_view import PAGE
from jobs.analytics import cache_key
from jobs.audit import recent
from jobs.cache import RedisCache, TableCache
from jobs.db import (
    ops_email_outbox,
    ops_job_state,
    ops_run_items,
    ops_runners,
    ops_runs,
    tenants,
)
from jobs.presence import Presence
from jobs.settings import Overrides, Settings, load_settings
from jobs.tenants import search_tenants
from tests.factories import add_cart_item, add_order, add_order_product, add_product, add_tenant

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
SIZE = (120, 36)


def clock() -> datetime:
    return NOW


def make_app(settings: Settings, engine: Engine | None, **kw: Any) -> OpsApp:
    return OpsApp(settings, clock=clock, engine=engine, refresh_seconds=0,
                  cache_factory=lambda e: TableCache(e, clock=lambda: NOW.timestamp()), **kw)


async def settle(app: OpsApp, pilot: Pilot[Any]) -> None:
    """Until no worker runs and every message they posted has been handled."""
    for _ in range(50):
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        if not any(w.is_running for w in app.workers):
            return
    raise AssertionError("workers never settled")


def screen_of(app: OpsApp) -> Screen[Any]:
    """The screen on top now (a call, so type checkers do not narrow it across awaits)."""
    return app.screen


def text(widget: Widget) -> str:
    content = getattr(widget, "content", None)
    if isinstance(content, Text):
        return content.plain
    return str(content)


def cell(table: DataTable[Any], row: str, column: str) -> str:
    value = table.get_cell(row, column)
    return value.plain if isinstance(value, Text) else str(value)


def column(table: DataTable[Any], key: str) -> list[str]:
    return [v.plain if isinstance(v, Text) else str(v) for v in table.get_column(key)]


def footer(app: OpsApp) -> list[str]:
    """What the footer of the screen on top offers, as shown."""
    return [key.description for key in app.screen.query(FooterKey)]


def notes(app: OpsApp) -> list[str]:
    return [n.message for n in app._notifications]


def status_of(engine: Engine, tid: str) -> str:
    with engine.connect() as c:
        return str(c.execute(select(tenants.c.status).where(tenants.c.id == tid)).scalar_one())


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(table)).scalar_one())


def expiring_tenants(engine: Engine) -> tuple[str, str, str]:
    """One to expire, one to suspend, one whose address makes its item fail."""
    a = add_tenant(engine, id="t-expire", name="Acme Outdoor", expire_date=NOW - timedelta(days=1))
    b = add_tenant(engine, id="t-suspend", name="Blue Harbor",
                   expire_date=NOW - timedelta(days=10))
    c = add_tenant(engine, id="t-broken", name="Crooked Mail", email="not an address",
                   expire_date=NOW - timedelta(days=2))
    return a, b, c


# --- the jobs screen ------------------------------------------------------------------------


async def test_jobs_screen_shows_schedules_countdowns_and_runner_state(
        engine: Engine, settings: Settings) -> None:
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert isinstance(screen_of(app), JobsScreen)
        table = app.screen.query_one("#jobs", DataTable)
        assert table.row_count == 4
        assert cell(table, "expiry-checker", "schedule") == "0 0 * * *\ndaily at 00:00 UTC"
        assert cell(table, "expiry-checker", "next") == "29 Nov 00:00 UTC\nin 14h 00m 00s"
        assert cell(table, "cleanup", "schedule").startswith("0 2 * * 0\nevery Sunday at 02:00")
        assert cell(table, "expiry-checker", "last") == "never ran"
        assert cell(table, "expiry-checker", "state") == "active"
        status = text(app.screen.query_one("#status", Static))
        assert "No runner is alive: nothing will fire on schedule" in status
        assert "embedded (ops_cache table)" in status

        Presence(engine, "runner", clock, interval=3600).start()
        app.refresh_data()
        await settle(app, pilot)
        status = text(app.screen.query_one("#status", Static))
        assert "1 runner alive" in status and "No runner" not in status


async def test_jobs_screen_shows_the_live_runners_schedules_and_says_they_differ(
        engine: Engine, settings: Settings, tmp_path: Any) -> None:
    from jobs.runner_schedules import record_schedules

    slow = tmp_path / "slow.toml"
    slow.write_text('[jobs.expiry-checker]\nschedule = "0 6 * * *"\n'
                    '[jobs.cleanup]\nenabled = false\n')
    runner_settings = load_settings(Overrides(config=str(slow)), env={})
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one("#jobs", DataTable)
        note = app.screen.query_one("#schedules-note", Static)
        assert cell(table, "expiry-checker", "next") == "29 Nov 00:00 UTC\nin 14h 00m 00s"
        assert not note.display  # no runner: this console's configuration, nothing to say

        runner = Presence(engine, "runner", clock, interval=3600)
        record_schedules(engine, runner.id, runner_settings)
        runner.start()
        app.refresh_data()
        await settle(app, pilot)
        assert cell(table, "expiry-checker", "schedule") == "0 6 * * *\ndaily at 06:00 UTC"
        assert cell(table, "expiry-checker", "next") == "29 Nov 06:00 UTC\nin 20h 00m 00s"
        assert cell(table, "cleanup", "next").startswith("disabled")
        assert cell(table, "cleanup", "state") == "disabled"  # the CLI's word too
        assert note.display
        warning = text(note)
        assert warning.count("\n") == 0 and str(slow) in warning
        assert "expiry-checker (runner: 0 6 * * * UTC, local: 0 0 * * * UTC)" in warning
        assert "cleanup (runner: disabled, local: 0 2 * * 0 UTC)" in warning

        runner.stop()
        app.refresh_data()
        await settle(app, pilot)
        assert cell(table, "expiry-checker", "schedule") == "0 0 * * *\ndaily at 00:00 UTC"
        assert cell(table, "expiry-checker", "next") == "29 Nov 00:00 UTC\nin 14h 00m 00s"
        assert not note.display


async def test_trigger_asks_runs_in_a_worker_and_opens_the_result(
        engine: Engine, settings: Settings) -> None:
    a, b, c = expiring_tenants(engine)
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("t")
        assert isinstance(screen_of(app), ConfirmScreen)
        await pilot.press("n")  # cancelled: nothing runs
        await settle(app, pilot)
        assert isinstance(screen_of(app), JobsScreen) and count(engine, ops_runs) == 0

        await pilot.press("t")
        await pilot.press("y")
        await settle(app, pilot)
        assert isinstance(screen_of(app), RunDetailScreen)
        summary = text(app.screen.query_one("#run-summary", Static))
        assert "expiry-checker partial" in summary and "processed 3" in summary
        items = app.screen.query_one("#items", DataTable)
        assert sorted(column(items, "tenant")) == ["Acme Outdoor", "Blue Harbor", "Crooked Mail"]
        assert any("errors" in n for n in notes(app))

        await pilot.press("escape")
        await settle(app, pilot)
        jobs = app.screen.query_one("#jobs", DataTable)
        assert cell(jobs, "expiry-checker", "last").startswith("partial")
    assert status_of(engine, a) == "expired" and status_of(engine, b) == "suspended"
    assert status_of(engine, c) == "active"  # its email was invalid: nothing written for it
    with engine.connect() as conn:
        run = conn.execute(select(ops_runs)).one()
        console = conn.execute(select(ops_runners).where(ops_runners.c.kind == "console")).one()
    assert run.trigger == "manual" and run.status == "partial" and run.runner_id == console.id
    assert console.stopped_at is not None  # registered only while it ran


async def test_trigger_of_a_running_job_is_refused_with_a_notification(
        engine: Engine, settings: Settings) -> None:
    expiring_tenants(engine)
    holder = Presence(engine, "runner", clock, interval=3600).start()
    with engine.begin() as conn:
        run_id = conn.execute(insert(ops_runs).values(
            job_id="expiry-checker", trigger="schedule", status="running", started_by="r@h",
            runner_id=holder.id, reference_time=NOW, created_at=NOW, started_at=NOW,
            scheduled_for=NOW)).inserted_primary_key[0]  # type: ignore[index]
        conn.execute(insert(ops_job_state).values(job_id="expiry-checker", paused=False,
                                                  active_run_id=run_id))
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        jobs = app.screen.query_one("#jobs", DataTable)
        assert cell(jobs, "expiry-checker", "last").startswith("running")
        await pilot.press("t", "y")
        await settle(app, pilot)
        assert isinstance(screen_of(app), JobsScreen)
        assert any("already running" in n for n in notes(app))
    assert count(engine, ops_runs) == 1


async def test_a_run_whose_runner_stopped_heartbeating_shows_as_stale(
        engine: Engine, settings: Settings) -> None:
    # A runner killed five minutes ago: its run is still `running` in history.
    dead = Presence(engine, "runner", lambda: NOW - timedelta(minutes=5), interval=3600)
    dead.start()
    with engine.begin() as conn:
        run_id = conn.execute(insert(ops_runs).values(
            job_id="expiry-checker", trigger="schedule", status="running", started_by="r@h",
            runner_id=dead.id, reference_time=NOW, created_at=NOW, started_at=NOW,
            scheduled_for=NOW)).inserted_primary_key[0]  # type: ignore[index]
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        jobs = app.screen.query_one("#jobs", DataTable)
        assert cell(jobs, "expiry-checker", "last") == (
            f"stale run #{run_id}\nits runner stopped heartbeating")


async def test_preview_writes_nothing_then_run_for_real_asks_again(
        engine: Engine, settings: Settings) -> None:
    a, b, _ = expiring_tenants(engine)
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("p")
        await settle(app, pilot)
        assert isinstance(screen_of(app), PreviewScreen)
        summary = text(app.screen.query_one("#run-summary", Static))
        assert "nothing was written" in summary and "expired=1" in summary
        items = app.screen.query_one("#items", DataTable)
        assert sorted(column(items, "action")) == ["expired", "expired", "suspended"]
        assert count(engine, ops_runs) == 0 and count(engine, ops_email_outbox) == 0
        assert status_of(engine, a) == "active"

        await pilot.press("t")
        await settle(app, pilot)
        assert isinstance(screen_of(app), ConfirmScreen)
        assert "for real" in text(app.screen.query_one("#confirm-question", Static))
        await pilot.press("y")
        await settle(app, pilot)
        assert isinstance(screen_of(app), RunDetailScreen)
    assert status_of(engine, a) == "expired" and status_of(engine, b) == "suspended"
    assert count(engine, ops_runs) == 1 and count(engine, ops_email_outbox) == 2


async def test_long_actions_show_in_full_and_the_detail_column_gives_way(
        engine: Engine, settings: Settings) -> None:
    """cleanup's actions are twice as long as expiry's: the Action column widens to them
    (as drawn, not only as stored) and the table still fits 120 columns."""
    shop = add_tenant(engine, id="t-shop", name="Nordic Candles")
    product = add_product(engine, shop)
    add_order_product(engine, "an-order-long-gone", product)
    add_cart_item(engine, shop, "a-product-long-gone", NOW - timedelta(days=1))
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        jobs = app.screen.query_one("#jobs", DataTable)
        jobs.move_cursor(row=jobs.get_row_index("cleanup"))
        await pilot.press("p")
        await settle(app, pilot)
        assert isinstance(screen_of(app), PreviewScreen)
        items = app.screen.query_one("#items", DataTable)
        drawn = [items.render_line(y).text for y in range(items.row_count + 1)]
        assert any("orphaned_order_products" in line for line in drawn), drawn
        assert any("orphaned_cart_items" in line for line in drawn), drawn
        assert all(len(line) <= SIZE[0] for line in drawn)
        assert all("deleted=1" in line for line in drawn[1:]), drawn  # the detail still shows


async def test_progress_bar_follows_the_run(engine: Engine, settings: Settings) -> None:
    from console.tui.messages import RunProgressed, RunPurpose
    from console.tui.widgets.run_progress import RunProgress
    from jobs.records import Progress

    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        purpose = RunPurpose("cleanup", False, "Running cleanup")
        app.post_message(RunProgressed(purpose, Progress("cleanup", 7, 3, 40, 1)))
        await pilot.pause()
        panel = app.screen.query_one(RunProgress)
        assert panel.display
        assert "3 of 40 done, 1 error" in text(panel.query_one("#run-counts", Static))
        assert app.screen.query_one("#run-bar").progress == 3  # type: ignore[attr-defined]


async def test_pause_asks_why_then_persists_and_shows_it_and_resume(
        engine: Engine, settings: Settings) -> None:
    def paused() -> bool | None:
        with engine.connect() as c:
            row = c.execute(select(ops_job_state.c.paused).where(
                ops_job_state.c.job_id == "payment-reminders")).first()
        return None if row is None else bool(row.paused)

    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("down")  # payment-reminders
        assert "Pause" in footer(app) and "Resume" not in footer(app)
        await pilot.press("s")
        await settle(app, pilot)
        assert isinstance(screen_of(app), PauseReasonScreen)
        await pilot.press(*"smtp outage", "enter")
        await settle(app, pilot)
        assert paused() is True
        # The footer follows the highlighted job's state, and the cursor.
        assert "Resume" in footer(app) and "Pause" not in footer(app)
        await pilot.press("up")
        await settle(app, pilot)
        assert "Pause" in footer(app) and "Resume" not in footer(app)
        await pilot.press("down")
        await settle(app, pilot)
        assert "Resume" in footer(app)
        jobs = app.screen.query_one("#jobs", DataTable)
        assert cell(jobs, "payment-reminders", "state") == "paused"
        assert cell(jobs, "payment-reminders", "next").startswith("paused")
        detail = text(app.screen.query_one("#job-detail", Static))
        assert f"Paused by {app.session.started_by} " in detail
        assert "(2026-11-28 10:00:00 UTC): smtp outage" in detail
        await pilot.press("s")  # resume: nothing to ask
        await settle(app, pilot)
        assert paused() is False
        assert "Pause" in footer(app) and "Resume" not in footer(app)
        assert cell(jobs, "payment-reminders", "state") == "active"
    assert [(e.action, e.job, e.reason, e.actor) for e in recent(engine)] == [
        ("resume", "payment-reminders", None, app.session.started_by),
        ("pause", "payment-reminders", "smtp outage", app.session.started_by)]


async def test_the_footer_is_rebuilt_only_when_its_keys_change(
        engine: Engine, settings: Settings) -> None:
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        keys = list(app.screen.query(FooterKey))
        assert "Pause" in footer(app)
        # Asked again with nothing changed (as every refresh, focus change and cursor move
        # asks): the same key widgets stay.
        app.screen.refresh_bindings()
        app.refresh_data()
        await settle(app, pilot)
        await pilot.press("down", "up")  # expiry-checker to payment-reminders and back
        await settle(app, pilot)
        assert list(app.screen.query(FooterKey)) == keys
        await pilot.press("s")
        await settle(app, pilot)
        await pilot.press(*"upgrade", "enter")
        await settle(app, pilot)
        assert "Resume" in footer(app) and list(app.screen.query(FooterKey)) != keys


async def test_every_screens_keys_show_in_full_at_120_columns(
        engine: Engine, settings: Settings) -> None:
    app = make_app(settings, engine)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(app, pilot)

        def keys_cut() -> list[tuple[str, Any]]:
            bars = list(app.screen.query(Footer))
            assert [type(bar) for bar in bars] == [OpsFooter], app.screen
            shown = list(bars[0].query(FooterKey))
            palette = next(k for k in shown if k.has_class("-command-palette"))
            # Each key ends before the palette key starts: none is cut or hidden behind it.
            return [(k.description, k.region) for k in shown
                    if k is not palette and k.region.right > palette.region.x]

        assert {"Run", "Pause", "Timeline", "Quit", "Help"} <= set(footer(app))
        assert keys_cut() == []
        # Every screen the jobs screen opens: analytics, day, outbox, alerts, problems,
        # timeline, history, preview.
        for key in "adolenhp":
            await pilot.press(key)
            await settle(app, pilot)
            assert not isinstance(app.screen, JobsScreen), key
            assert keys_cut() == [], (key, app.screen)
            await pilot.press("escape")
            await settle(app, pilot)
            assert isinstance(app.screen, JobsScreen), key


async def test_escape_on_the_pause_question_pauses_nothing(engine: Engine,
                                                           settings: Settings) -> None:
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("s", "x", "escape")
        await settle(app, pilot)
        assert isinstance(screen_of(app), JobsScreen)
        assert cell(app.screen.query_one("#jobs", DataTable), "expiry-checker", "state") == "active"
    assert recent(engine) == []


# --- history and run detail ---------------------------------------------------------------


def add_runs(engine: Engine, n: int, job_id: str = "cleanup") -> None:
    statuses = ("succeeded", "missed", "skipped", "partial")
    rows = []
    for i in range(n):
        slot = NOW - timedelta(hours=n - i)
        status = statuses[i % 4]
        ran = status in ("succeeded", "partial")
        rows.append({
            "job_id": job_id, "trigger": "schedule", "scheduled_for": slot, "attempt": 1,
            "status": status, "started_by": "runner@host", "reference_time": slot,
            "created_at": slot, "started_at": slot if ran else None,
            "finished_at": slot + timedelta(seconds=2), "processed": 5 if ran else 0,
            "errors": 1 if status == "partial" else 0, "params": {}, "summary": {},
        })
    with engine.begin() as conn:
        conn.execute(insert(ops_runs), rows)


async def test_history_is_newest_first_with_missed_and_skipped_and_pages(
        engine: Engine, settings: Settings) -> None:
    add_runs(engine, 250)
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        for _ in range(3):
            await pilot.press("down")
        await pilot.press("h")
        await settle(app, pilot)
        assert isinstance(screen_of(app), HistoryScreen)
        table = app.screen.query_one("#history", DataTable)
        assert table.row_count == 100
        ids = [int(v.lstrip("#")) for v in column(table, "run")]
        assert ids == sorted(ids, reverse=True) and ids[0] == 250
        assert {"missed", "skipped", "succeeded", "partial"} <= set(column(table, "status"))
        await pilot.press("m")
        await settle(app, pilot)
        assert table.row_count == 200
        await pilot.press("end")  # scrolling to the end pages in the rest
        await settle(app, pilot)
        history = screen_of(app)
        assert isinstance(history, HistoryScreen)
        assert table.row_count == 250 and history.complete
        await pilot.press("enter")
        await settle(app, pilot)
        assert isinstance(screen_of(app), RunDetailScreen)


def add_run_with_items(engine: Engine, n: int, errors_every: int = 3) -> int:
    with engine.begin() as conn:
        run_id = int(conn.execute(insert(ops_runs).values(
            job_id="expiry-checker", trigger="manual", status="partial", started_by="op@host",
            reference_time=NOW, created_at=NOW, started_at=NOW,
            finished_at=NOW + timedelta(seconds=3), processed=n,
            errors=len(range(0, n, errors_every)), params={}, summary={"expired": n},
        )).inserted_primary_key[0])  # type: ignore[index]
        conn.execute(insert(ops_run_items), [
            {"run_id": run_id, "seq": i, "tenant_id": f"tenant-{i:05d}",
             "tenant_name": f"Shop {i:05d}", "action": "expired",
             "status": "error" if i % errors_every == 0 else "ok",
             "detail": {"from": "active", "to": "expired"},
             "error": (f"invalid recipient 'shop{i}@': the email address is not valid. "
                       "It must have exactly one @-sign." if i % errors_every == 0 else None)}
            for i in range(n)
        ])
    return run_id


async def test_run_detail_filters_errors_searches_and_shows_the_full_error(
        engine: Engine, settings: Settings) -> None:
    run_id = add_run_with_items(engine, 1200)
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        app.open_run(run_id)
        await settle(app, pilot)
        screen = app.screen
        assert isinstance(screen, RunDetailScreen)
        table = screen.query_one("#items", DataTable)
        assert table.row_count == PAGE  # paged: the rest come as the cursor nears the end
        assert "all items · 500 of 1,200" in text(screen.query_one("#items-count", Static))
        await pilot.press("end")
        await settle(app, pilot)
        await pilot.press("end")
        await settle(app, pilot)
        assert table.row_count == 1200

        await pilot.press("e")
        await settle(app, pilot)
        assert table.row_count == 400
        assert set(column(table, "status")) == {"error"}
        detail = text(screen.query_one("#item-detail", Static))
        assert "It must have exactly one @-sign." in detail  # the full text, not the clipped cell

        await pilot.press("slash")
        assert screen.query_one("#item-search", Input).has_focus
        await pilot.press(*"shop 00033")
        await settle(app, pilot)
        assert column(table, "tenant") == ["Shop 00033"]
        await pilot.press("enter", "e")  # back to the table; every status again
        await settle(app, pilot)
        assert column(table, "id") == ["tenant-00…"] and table.row_count == 1
        screen.query_one("#item-search", Input).value = "tenant-0003"
        await settle(app, pilot)
        assert table.row_count == 10  # tenant-00030 .. tenant-00039


# --- analytics --------------------------------------------------------------------------------


async def test_analytics_shows_cached_days_marks_missing_and_recomputes(
        engine: Engine, settings: Settings) -> None:
    tid = add_tenant(engine, id="t-analytics", name="Nordic Candles")
    add_tenant(engine, id="t-other", name="Other Shop")
    day = date(2026, 11, 27)
    add_order(engine, tid, datetime(2026, 11, 27, 12, tzinfo=UTC), "120.50")
    add_order(engine, tid, datetime(2026, 11, 27, 13, tzinfo=UTC), "30.00", payment_status="pending")
    add_order(engine, tid, datetime(2026, 11, 25, 9, tzinfo=UTC), "19.99")
    cache = TableCache(engine, clock=lambda: NOW.timestamp())
    cache.set_many({cache_key(tid, day): json.dumps({
        "tenantId": tid, "date": "2026-11-27", "orders": 2, "revenue": 120.5, "newCustomers": 1,
        "productsSold": 7, "generatedAt": "2026-11-28T01:00:00.000Z"})}, ttl=3600)

    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("a")
        await settle(app, pilot)
        screen = app.screen
        assert isinstance(screen, AnalyticsScreen)
        assert screen.query_one("#tenant-search", Input).has_focus
        await pilot.press(*"nordic")
        await settle(app, pilot)
        assert [t.id for t in screen.matches] == [tid]
        await pilot.press("enter")
        await settle(app, pilot)
        table = screen.query_one("#days", DataTable)
        assert table.row_count == 14  # the last 14 days, newest first
        assert cell(table, "2026-11-27", "orders") == "2"
        assert cell(table, "2026-11-27", "revenue") == "120.50"
        assert cell(table, "2026-11-27", "new") == "1"
        assert cell(table, "2026-11-27", "sold") == "7"
        assert cell(table, "2026-11-27", "ttl") == "1h 00m"
        assert cell(table, "2026-11-25", "orders") == "missing"
        assert cell(table, "2026-11-14", "orders") == "missing"
        assert "13 missing" in text(screen.query_one("#analytics-title", Static))

        await pilot.press("down", "down")  # 2026-11-25
        await pilot.press("c")
        await settle(app, pilot)
        assert isinstance(screen_of(app), ConfirmScreen)
        assert "for every tenant" in text(app.screen.query_one("#confirm-detail", Static))
        await pilot.press("y")
        await settle(app, pilot)
        assert screen_of(app) is screen  # stays on analytics and reloads
        assert cell(table, "2026-11-25", "orders") == "1"
        assert cell(table, "2026-11-25", "revenue") == "19.99"
        assert cell(table, "2026-11-25", "ttl") == "1d 00h"
    with engine.connect() as conn:
        run = conn.execute(select(ops_runs)).one()
    assert run.job_id == "analytics-aggregate" and run.params == {"date": "2026-11-25"}
    assert cache.get(cache_key("t-other", date(2026, 11, 25))) is not None
    # Audited as a recompute, by the console's user, with the run it made.
    assert [(e.action, e.actor, e.run_id, e.detail) for e in recent(engine)] == [
        ("recompute", app.session.started_by, run.id, "manual date=2026-11-25")]


EVIL = "Evil [/bold] Shop"
CLICK = "[@click=app.quit]x[/]"


async def test_tenant_names_that_look_like_markup_show_as_written(
        engine: Engine, settings: Settings) -> None:
    """Names are data: `[/bold]` must not crash a screen, `[@click=...]` must not become an
    action. Every place a name reaches: the recompute question, the run's items, the
    outbox, a notification."""
    add_tenant(engine, id="t-evil", name=EVIL, expire_date=NOW - timedelta(days=1))
    add_tenant(engine, id="t-click", name=CLICK, expire_date=NOW - timedelta(days=1))
    app = make_app(settings, engine)
    # notifications=True: toasts are drawn (run_test leaves them out by default), so a
    # message read as markup would fail here as it would on a terminal.
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await settle(app, pilot)
        await pilot.press("a")
        await settle(app, pilot)
        for search, name in (("evil", EVIL), ("click", CLICK)):
            screen = app.screen
            assert isinstance(screen, AnalyticsScreen)
            await pilot.press("slash")
            screen.query_one("#tenant-search", Input).value = search
            await settle(app, pilot)
            await pilot.press("enter")
            await settle(app, pilot)
            assert text(screen.query_one("#analytics-title", Static)).startswith(name)
            await pilot.press("c")
            await settle(app, pilot)
            assert isinstance(screen_of(app), ConfirmScreen)
            assert name in text(app.screen.query_one("#confirm-detail", Static))
            await pilot.press("n")
            await settle(app, pilot)
        assert app.is_running

        app.open_analytics(f"no {EVIL}")  # an id nobody has: a notification quoting it
        await settle(app, pilot)
        assert any(EVIL in n for n in notes(app))
        assert app.is_running

        app.show_jobs()
        await settle(app, pilot)
        await pilot.press("t", "y")  # expiry-checker: both tenants expire, with an email each
        await settle(app, pilot)
        assert isinstance(screen_of(app), RunDetailScreen)
        items = app.screen.query_one("#items", DataTable)
        assert sorted(column(items, "tenant")) == sorted([clip(CLICK, 20), EVIL])
        await pilot.press("escape")
        await settle(app, pilot)
        await pilot.press("o")
        await settle(app, pilot)
        subjects = column(app.screen.query_one("#emails", DataTable), "subject")
        assert len(subjects) == 2 and any(EVIL in s for s in subjects), subjects
        assert any(CLICK in s for s in subjects), subjects
        await pilot.pause()
        assert app.is_running


async def test_recomputing_a_day_that_has_not_happened_is_refused(
        engine: Engine, settings: Settings) -> None:
    """The console goes through the job's own check of its dates, as the CLI and HTTP do."""
    add_tenant(engine, id="t-shop", name="Nordic Candles")
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        app.open_analytics("t-shop")
        await settle(app, pilot)
        screen = app.screen
        assert isinstance(screen, AnalyticsScreen)
        screen.query_one("#date-to", Input).value = "2026-11-29"  # NOW is the 28th
        screen.action_reload()
        await settle(app, pilot)
        table = screen.query_one("#days", DataTable)
        table.focus()
        table.move_cursor(row=0)
        assert screen.highlighted_day == date(2026, 11, 29)
        await pilot.press("c", "y")
        await settle(app, pilot)
        assert any("--date 2026-11-29 is in the future" in n for n in notes(app)), notes(app)
    assert count(engine, ops_runs) == 0


def test_every_notification_of_the_console_is_plain_text() -> None:
    """Notifications quote data (errors with tenant names, ids); Textual reads a message
    as markup unless told otherwise, so every call says markup=False."""
    import ast
    from pathlib import Path

    import console

    missing = []
    for path in sorted(Path(console.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            notify = node.func.attr == "notify" or (
                node.func.attr == "call_from_thread" and node.args
                and isinstance(node.args[0], ast.Attribute) and node.args[0].attr == "notify")
            plain = any(k.arg == "markup" and isinstance(k.value, ast.Constant)
                        and k.value.value is False for k in node.keywords)
            if notify and not plain:
                missing.append(f"{path.name}:{node.lineno}")
    assert not missing


def test_search_tenants_by_name_or_id(engine: Engine) -> None:
    add_tenant(engine, id="abc-1", name="Zeta 100% Wool")
    add_tenant(engine, id="zzz-2", name="Abc Market")
    add_tenant(engine, id="q-3", name="Quiet Quill")
    assert [t.id for t in search_tenants(engine, "ABC")] == ["zzz-2", "abc-1"]
    assert [t.id for t in search_tenants(engine, "abc-1")] == ["abc-1"]  # exact id first
    assert [t.id for t in search_tenants(engine, "100%")] == ["abc-1"]  # % matches itself
    assert search_tenants(engine, "_") == []
    assert len(search_tenants(engine, "", limit=2)) == 2


# --- outbox ------------------------------------------------------------------------------------


def add_email(engine: Engine, key: str, status: str, **kw: Any) -> int:
    row = {"idempotency_key": key, "tenant_id": "t-1", "kind": "subscription_expired",
           "recipient": f"{key}@example.com", "subject": f"Subject {key}",
           "body_text": f"Hello {key},\nyour subscription expired.", "body_html": "<p>x</p>",
           "status": status, "attempts": 8 if status == "dead" else 0, "created_at": NOW,
           "last_error": "550 mailbox unavailable" if status == "dead" else None, **kw}
    with engine.begin() as conn:
        result = conn.execute(insert(ops_email_outbox).values(**row))
        return int(result.inserted_primary_key[0])  # type: ignore[index]


async def test_outbox_reads_an_email_filters_and_retries_a_dead_one(
        engine: Engine, settings: Settings) -> None:
    add_email(engine, "first", "sent", sent_at=NOW)
    dead = add_email(engine, "second", "dead")
    add_email(engine, "third", "pending")
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("o")
        await settle(app, pilot)
        screen = app.screen
        assert isinstance(screen, OutboxScreen)
        assert "SMTP not configured" in text(screen.query_one("#smtp-state", Static))
        counts = text(screen.query_one("#outbox-counts", Static))
        assert "pending 1" in counts and "sent 1" in counts and "dead 1" in counts
        table = screen.query_one("#emails", DataTable)
        assert column(table, "id") == [str(dead + 1), str(dead), str(dead - 1)]
        await pilot.press("down")
        body = text(screen.query_one("#email-body", Static))
        assert "Subject: Subject second" in body and "To: second@example.com" in body
        assert "your subscription expired." in body and "550 mailbox unavailable" in body

        await pilot.press("f", "f", "f", "f")  # all -> pending -> sent -> failed -> dead
        await settle(app, pilot)
        assert column(table, "id") == [str(dead)]
        await pilot.press("r")
        await settle(app, pilot)
        assert any("pending again" in n for n in notes(app))
        assert table.row_count == 0  # no dead email left
    with engine.connect() as conn:
        row = conn.execute(select(ops_email_outbox).where(ops_email_outbox.c.id == dead)).one()
    assert row.status == "pending" and row.attempts == 0


async def test_the_outbox_footer_offers_retry_only_while_the_email_can_be_retried(
        engine: Engine, settings: Settings) -> None:
    add_email(engine, "only", "dead")
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        app.open_outbox()
        await settle(app, pilot)

        def retry_key() -> FooterKey:
            return next(k for k in app.screen.query(FooterKey) if k.description == "Retry")

        assert not retry_key().has_class("-disabled")
        await pilot.press("r")  # the same row comes back, now pending: Retry goes dim
        await settle(app, pilot)
        assert any("pending again" in n for n in notes(app))
        assert retry_key().has_class("-disabled")


async def test_outbox_retry_of_a_pending_email_is_not_offered(
        engine: Engine, settings: Settings) -> None:
    add_email(engine, "only", "pending")
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        app.open_outbox()
        await settle(app, pilot)
        assert app.screen.check_action("retry", ()) is None  # shown disabled
        await pilot.press("r")
        await settle(app, pilot)
    with engine.connect() as conn:
        assert conn.execute(select(ops_email_outbox.c.status)).scalar_one() == "pending"


async def test_one_item_and_one_run_are_counted_in_the_singular(
        engine: Engine, settings: Settings) -> None:
    add_tenant(engine, id="t-one", name="Only One", expire_date=NOW - timedelta(days=1))
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("p")
        await settle(app, pilot)
        assert isinstance(screen_of(app), PreviewScreen)
        assert "Would act on 1 item, of which" in text(app.screen.query_one("#run-summary",
                                                                            Static))
        await pilot.press("escape", "t", "y")
        await settle(app, pilot)
        await pilot.press("escape", "h")
        await settle(app, pilot)
        assert isinstance(screen_of(app), HistoryScreen)
        title = app.screen.query_one("#history-title", Static)
        assert text(title).endswith(": 1 run shown"), text(title)


# --- read-only, help, palette, errors ---------------------------------------------------------


async def test_read_only_hides_and_refuses_every_write(engine: Engine, settings: Settings) -> None:
    a, _, _ = expiring_tenants(engine)
    app = make_app(settings, engine, read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        keys = {b.binding.action for b in app.screen.active_bindings.values()}
        assert {"run_now", "pause", "resume"}.isdisjoint(keys) and "preview" in keys
        assert "READ-ONLY" in text(app.screen.query_one("#status", Static))
        await pilot.press("t", "y", "s")
        await settle(app, pilot)
        assert isinstance(screen_of(app), JobsScreen)
        # Not ignored without a word: each writing key says why it does nothing.
        assert notes(app) == [
            "Read-only console: t (Run) writes, so it is off (started with --read-only).",
            "Read-only console: s (Pause/Resume) writes, so it is off (started with --read-only).",
        ]
        app.request_trigger("expiry-checker")  # even when asked directly
        app.request_pause("expiry-checker", True)
        await settle(app, pilot)
        assert isinstance(screen_of(app), JobsScreen)
        assert sum("Read-only console" in n for n in notes(app)) == 4
        titles = [t for t, _, _ in app.palette_entries(app.screen)]
        assert not any("Run now" in t or "Pause" in t for t in titles)
        assert "job: Preview · expiry-checker" in titles

        await pilot.press("p")  # preview is allowed: it writes nothing
        await settle(app, pilot)
        assert isinstance(screen_of(app), PreviewScreen)
        assert app.screen.check_action("run_for_real", ()) is False
    assert count(engine, ops_runs) == 0 and count(engine, ops_job_state) == 0
    assert status_of(engine, a) == "active"


async def test_help_lists_the_keys_of_every_screen(engine: Engine, settings: Settings) -> None:
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("question_mark")
        assert isinstance(screen_of(app), HelpScreen)
        console = Console(width=100, record=True, file=io.StringIO())
        console.print(app.screen.query_one("#help-keys", Static).content)
        listing = console.export_text()
        for words in ("Run now", "Preview", "Pause", "Resume", "History", "Errors only",
                      "Recompute day", "Retry", "Run for real", "Palette"):
            assert words in listing
        await pilot.press("escape")
        assert isinstance(screen_of(app), JobsScreen)


async def test_command_palette_runs_named_actions(engine: Engine, settings: Settings) -> None:
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        titles = [t for t, _, _ in app.palette_entries(app.screen)]
        for title in ("job: Run now · cleanup", "job: Preview · cleanup", "job: Pause · cleanup",
                      "view: History · cleanup", "view: Outbox", "view: Analytics", "view: Help"):
            assert title in titles
        await pilot.press("ctrl+p")
        await pilot.press(*"view: outbox")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await settle(app, pilot)
        assert isinstance(screen_of(app), OutboxScreen)
        titles = [t for t, _, _ in app.palette_entries(app.screen)]
        assert "email: Retry" not in titles  # nothing retryable is highlighted
        assert "email: Filter" in titles


async def test_a_database_that_is_down_is_a_status_line_not_a_crash(tmp_path: Any) -> None:
    settings = load_settings(Overrides(database_url="postgresql://postgres@127.0.0.1:9/none"),
                             env={}, cwd=tmp_path)
    app = OpsApp(settings, clock=clock, refresh_seconds=0)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        status = text(app.screen.query_one("#status", Static))
        assert "database unreachable at postgresql+psycopg://postgres@127.0.0.1:9/none" in status
        assert any("unreachable" in n for n in notes(app))
        await pilot.press("t")  # nothing to run against: a warning, not a traceback
        await pilot.press("p")
        await settle(app, pilot)
        assert isinstance(screen_of(app), JobsScreen)
        assert any("Not connected" in n for n in notes(app))


async def test_a_failing_job_is_a_notification(engine: Engine, settings: Settings) -> None:
    with engine.begin() as conn:  # a database without the platform's carts makes cleanup fail
        conn.exec_driver_sql("DROP TABLE cart_items")
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        app.request_preview("cleanup")
        await settle(app, pilot)
        assert isinstance(screen_of(app), JobsScreen)
        assert any("has no StoreFlow platform tables (cart_items)" in n for n in notes(app)), notes(app)



async def test_a_cache_that_is_down_shows_and_fails_the_run_not_the_app(
        engine: Engine, settings: Settings) -> None:
    add_tenant(engine, id="t-1", name="Only Shop")
    app = OpsApp(settings, clock=clock, engine=engine, refresh_seconds=0,
                 cache_factory=lambda e: RedisCache("redis://127.0.0.1:9/0"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        status = text(app.screen.query_one("#status", Static))
        assert "(unreachable)" in status and "cache unreachable at redis://127.0.0.1:9/0" in status
        await pilot.press("down", "down", "t", "y")  # analytics-aggregate, for real
        await settle(app, pilot)
        assert isinstance(screen_of(app), RunDetailScreen)
        assert "analytics-aggregate failed" in text(app.screen.query_one("#run-summary", Static))
        assert any(n.startswith("Job failed") for n in notes(app))
        app.open_analytics("t-1")
        await settle(app, pilot)
        assert any("cache unreachable" in n for n in notes(app))

"""The console's alert views, driven as an operator would on SQLite and PostgreSQL: each
job's alert state on the jobs screen, the attention strip (every kind of line, where
Enter leads, gone when all is well) and the alerts screen with its deliveries, read-only
mode and a test alert sent to a real receiver."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, insert, update
from sqlalchemy.engine import Engine
from textual.widgets import DataTable, Static

from console.tui.screens.alerts import AlertsScreen
from console.tui.screens.confirm import ConfirmScreen
from console.tui.screens.history import HistoryScreen
from console.tui.screens.jobs import JobsScreen
from console.tui.screens.outbox import OutboxScreen
from console.tui.screens.preview import PreviewScreen
from console.tui.screens.run_detail import RunDetailScreen
from console.tui.widgets.attention_strip import AttentionStrip
from jobs import runs
from jobs.db import (
    insert_ignore,
    ops_alert_deliveries,
    ops_alerts,
    ops_email_outbox,
    ops_job_state,
    ops_runs,
)
from jobs.presence import Presence
from jobs.settings import Settings
from tests.test_tui import (
    NOW,
    SIZE,
    add_email,
    cell,
    count,
    expiring_tenants,
    make_app,
    notes,
    screen_of,
    settle,
    text,
)
from tests.webhook_receiver import receiver

SECRET = "/hooks/storeflow/s3cr3t-path-token"


def set_alert_state(engine: Engine, job_id: str, **values: Any) -> None:
    with engine.begin() as conn:
        insert_ignore(conn, ops_job_state, [{"job_id": job_id, "paused": False}], ["job_id"])
        conn.execute(update(ops_job_state).where(ops_job_state.c.job_id == job_id)
                     .values(**values))


def add_run(engine: Engine, job_id: str, status: str, **kw: Any) -> int:
    row = {"job_id": job_id, "trigger": "schedule", "status": status, "started_by": "r@h",
           "reference_time": NOW, "created_at": NOW - timedelta(hours=3),
           "started_at": NOW - timedelta(hours=3),
           "finished_at": NOW - timedelta(hours=3) + timedelta(seconds=2), **kw}
    with engine.begin() as conn:
        return int(conn.execute(insert(ops_runs).values(**row)).inserted_primary_key[0])  # type: ignore[index]


def add_alert(engine: Engine, event: str, job_id: str | None, run_id: int | None,
              deliveries: list[dict[str, Any]], *, at: Any = NOW - timedelta(hours=1),
              text: str = "expiry-checker is failing") -> int:
    with engine.begin() as conn:
        alert_id = int(conn.execute(insert(ops_alerts).values(
            key=f"{event}:{job_id}:{run_id}:{at}", event=event, job_id=job_id, run_id=run_id,
            at=at, payload={"event": event, "text": text})).inserted_primary_key[0])  # type: ignore[index]
        for d in deliveries:
            conn.execute(insert(ops_alert_deliveries).values(alert_id=alert_id, **d))
    return alert_id


def webhook(status: str, attempts: int, error: str | None = None, **kw: Any) -> dict[str, Any]:
    return {"kind": "webhook", "target": f"https://hooks.example.com{SECRET}",
            "target_label": "https://hooks.example.com", "status": status, "attempts": attempts,
            "last_error": error, "next_attempt_at": NOW + timedelta(minutes=4), **kw}


def strip_lines(app: Any) -> list[str]:
    strip = app.screen.query_one(AttentionStrip)
    return [a.text for a in strip.lines] if strip.display else []


# --- the jobs screen: alert state and the attention strip ----------------------------------------


async def test_jobs_screen_shows_alert_state_and_the_strip_lists_what_needs_attention(
        engine: Engine, settings: Settings) -> None:
    failed = add_run(engine, "expiry-checker", "partial", errors=2, processed=5)
    set_alert_state(engine, "expiry-checker", alert_state="failing",
                    failing_since=NOW - timedelta(hours=3))
    set_alert_state(engine, "cleanup", overdue_since=NOW - timedelta(minutes=30))
    runs.set_paused(engine, "payment-reminders", True, by="ana@ops-1",
                    now=NOW - timedelta(hours=2), reason="migrating the mail provider")
    dead = Presence(engine, "runner", lambda: NOW - timedelta(minutes=5), interval=3600)
    dead.start()
    stale = add_run(engine, "analytics-aggregate", "running", runner_id=dead.id,
                    finished_at=None, started_at=NOW - timedelta(minutes=6))
    add_email(engine, "k1", "dead")
    add_alert(engine, "job_failing", "expiry-checker", failed, [webhook("dead", 1, "HTTP 404")])

    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        jobs = app.screen.query_one("#jobs", DataTable)
        assert cell(jobs, "expiry-checker", "state") == "active\nfailing since 3h 00m ago"
        assert cell(jobs, "cleanup", "state") == "active\noverdue since 30m 00s ago"
        assert cell(jobs, "payment-reminders", "state") == "paused"  # no overdue while paused
        detail = text(app.screen.query_one("#job-detail", Static))
        assert "Failing since 2026-11-28 07:00:00 UTC (3h 00m ago)" in detail.split("\n")
        assert strip_lines(app) == [
            "expiry-checker failing since 3h 00m ago · last run #1 partial, 2 errors",
            "cleanup overdue since 30m 00s ago: no successful run within its period",
            f"run #{stale} of analytics-aggregate is stale: its runner stopped heartbeating "
            "(started 6m 00s ago)",
            "payment-reminders paused 2h 00m ago by ana@ops-1: migrating the mail provider",
            "1 dead email in the outbox: every attempt failed, nobody received them",
            "Alerts not delivered: 1 dead (the oldest raised 1h 00m ago)",
        ]

        # All well again: no strip at all, and no alert words in the state column.
        set_alert_state(engine, "expiry-checker", alert_state="ok", failing_since=None)
        set_alert_state(engine, "cleanup", overdue_since=None)
        runs.set_paused(engine, "payment-reminders", False, by="ana@ops-1", now=NOW)
        with engine.begin() as conn:
            conn.execute(update(ops_runs).where(ops_runs.c.id == stale)
                         .values(status="interrupted", finished_at=NOW))
            conn.execute(delete(ops_email_outbox))
            conn.execute(update(ops_alert_deliveries).values(status="sent"))
        app.refresh_data()
        await settle(app, pilot)
        assert strip_lines(app) == []
        assert not app.screen.query_one(AttentionStrip).display
        assert cell(jobs, "expiry-checker", "state") == "active"


async def test_a_long_pending_alert_is_a_line_and_a_fresh_one_or_an_old_dead_one_is_not(
        engine: Engine, settings: Settings) -> None:
    add_alert(engine, "job_failing", "cleanup", None,
              [webhook("pending", 0)], at=NOW - timedelta(minutes=3))
    add_alert(engine, "job_failing", "expiry-checker", None,
              [webhook("dead", 8, "HTTP 503")], at=NOW - timedelta(days=2))  # history now
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert strip_lines(app) == []
        add_alert(engine, "job_overdue", "cleanup", None,
                  [webhook("pending", 3, "HTTP 503")], at=NOW - timedelta(minutes=25))
        app.refresh_data()
        await settle(app, pilot)
        assert strip_lines(app) == [
            "Alerts not delivered: 1 pending for over 10 min (the oldest raised 25m 00s ago)"]


async def test_enter_on_a_strip_line_opens_the_thing(engine: Engine, settings: Settings) -> None:
    set_alert_state(engine, "expiry-checker", alert_state="failing", failing_since=NOW)
    dead = Presence(engine, "runner", lambda: NOW - timedelta(minutes=5), interval=3600)
    dead.start()
    stale = add_run(engine, "cleanup", "running", runner_id=dead.id, finished_at=None)
    add_email(engine, "k1", "dead")
    add_email(engine, "k2", "sent")
    add_alert(engine, "job_failing", "expiry-checker", None, [webhook("dead", 1, "HTTP 404")])
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert len(strip_lines(app)) == 4
        opened: list[tuple[type, Any]] = []
        for index in range(4):
            await pilot.press("w", "home", *["down"] * index, "enter")
            await settle(app, pilot)
            screen = screen_of(app)
            opened.append((type(screen), getattr(screen, "job_id", None)
                           or getattr(screen, "run_id", None)
                           or getattr(screen, "status_filter", None)))
            if isinstance(screen, OutboxScreen):
                emails = screen.query_one("#emails", DataTable)
                assert [str(k.value) for k in emails.rows] == ["1"]  # the dead one only
            app.show_jobs()
            await settle(app, pilot)
        assert opened == [(HistoryScreen, "expiry-checker"), (RunDetailScreen, stale),
                          (OutboxScreen, "dead"), (AlertsScreen, None)]


# --- the alerts screen ------------------------------------------------------------------------


async def test_alerts_screen_lists_alerts_with_deliveries_and_opens_the_run(
        engine: Engine, settings: Settings) -> None:
    run_id = add_run(engine, "expiry-checker", "partial", errors=1)
    add_alert(engine, "job_failing", "expiry-checker", run_id, [
        webhook("sent", 1, sent_at=NOW),
        webhook("pending", 2, "HTTP 503", target="https://hooks.example.com/other/secret"),
        {"kind": "email", "target": "ops@example.com", "target_label": "ops@example.com",
         "status": "dead", "attempts": 1, "last_error": "invalid recipient"},
    ], text="expiry-checker is failing: run 1 ended partial")
    add_alert(engine, "job_overdue", "cleanup", None, [], at=NOW - timedelta(minutes=5))
    app = make_app(settings, engine, read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("l")
        await settle(app, pilot)
        assert isinstance(screen_of(app), AlertsScreen)
        table = app.screen.query_one("#alerts", DataTable)
        assert [cell(table, str(k.value), "event") for k in table.rows] == [
            "job_overdue", "job_failing"]
        assert cell(table, "2", "delivered") == "no targets"
        assert cell(table, "1", "delivered") == "1/3 sent · 1 dead · 1 wait"
        assert cell(table, "1", "run") == "#1"
        # Read-only: no "send test" in the footer, the palette or on its key.
        keys = {b.binding.action for b in app.screen.active_bindings.values()}
        assert "send_test" not in keys and "reload" in keys
        assert not any("Send test" in t for t, _, _ in app.palette_entries(app.screen))
        await pilot.press("t")
        await settle(app, pilot)
        assert isinstance(screen_of(app), AlertsScreen)
        assert count(engine, ops_alerts) == 2

        await pilot.press("down")
        await settle(app, pilot)
        shown = _rendered(app.screen.query_one("#alert-detail", Static))
        assert "expiry-checker is failing: run 1 ended partial" in shown
        for words in ("https://hooks.example.com #1", "https://hooks.example.com #2", "sent",
                      "HTTP 503", "in 4m 00s", "ops@example.com", "dead", "invalid recipient"):
            assert words in shown, words
        assert "secret" not in shown and "s3cr3t" not in shown  # labels only, never a path
        await pilot.press("enter")
        await settle(app, pilot)
        assert isinstance(screen_of(app), RunDetailScreen)
        assert screen_of(app).run_id == run_id  # type: ignore[attr-defined]


def _rendered(widget: Static) -> str:
    from io import StringIO

    from rich.console import Console

    out = StringIO()
    Console(file=out, width=160, color_system=None).print(widget.content)  # type: ignore[arg-type]
    return out.getvalue()


async def test_send_test_alert_asks_then_reaches_a_real_receiver(
        engine: Engine, settings: Settings) -> None:
    with receiver() as rec:
        url = rec.url()
        app = make_app(replace(settings, alerts=replace(settings.alerts, webhooks=(url,))),
                       engine)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("l")
            await settle(app, pilot)
            assert SECRET not in text(app.screen.query_one("#alert-targets", Static))
            await pilot.press("t")
            await settle(app, pilot)
            assert isinstance(screen_of(app), ConfirmScreen)
            await pilot.press("n")
            await settle(app, pilot)
            assert isinstance(screen_of(app), AlertsScreen) and rec.hits == []
            await pilot.press("t", "y")
            await settle(app, pilot)
            table = app.screen.query_one("#alerts", DataTable)
            assert [cell(table, str(k.value), "event") for k in table.rows] == ["alert_test"]
            assert cell(table, "1", "delivered") == "1/1 sent"
        assert [h.path for h in rec.hits] == [SECRET]
        assert any(f"http://127.0.0.1:{rec.port}: ok" in n for n in notes(app))
        assert not any(SECRET in n for n in notes(app))


# --- fixes seen in tmux ---------------------------------------------------------------------------


async def test_no_to_run_for_real_keeps_the_preview_open(
        engine: Engine, settings: Settings) -> None:
    expiring_tenants(engine)
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("p")
        await settle(app, pilot)
        await pilot.press("t")
        await settle(app, pilot)
        assert isinstance(screen_of(app), ConfirmScreen)
        await pilot.press("n")
        await settle(app, pilot)
        assert isinstance(screen_of(app), PreviewScreen)
        assert count(engine, ops_runs) == 0
        await pilot.press("t", "y")  # yes: the preview gives way to the run
        await settle(app, pilot)
        assert [type(s) for s in app.screen_stack[1:]] == [JobsScreen, RunDetailScreen]
        assert count(engine, ops_runs) == 1


async def test_the_last_run_cell_keeps_its_error_count_at_100_columns(
        engine: Engine, settings: Settings) -> None:
    add_run(engine, "expiry-checker", "partial", processed=1_234, errors=123,
            finished_at=NOW - timedelta(hours=3) + timedelta(seconds=83))
    app = make_app(settings, engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        jobs = app.screen.query_one("#jobs", DataTable)
        assert cell(jobs, "expiry-checker", "last").split("\n")[1] == "1,234 done · 123 err"

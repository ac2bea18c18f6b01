"""The problems, timeline and outbox-search views driven as an operator would (Pilot), on
SQLite and PostgreSQL: what each screen shows, and where Enter leads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import Engine
from textual.widgets import DataTable, Input, Label, Static

from console.tui.app import OpsApp
from console.tui.screens.outbox import PAGE, OutboxScreen
from console.tui.screens.problems import ProblemsScreen
from console.tui.screens.run_detail import RunDetailScreen
from console.tui.screens.timeline import TimelineScreen
from jobs.cache import TableCache
from jobs.runs import set_paused
from jobs.settings import Overrides, Settings, load_settings
from tests.factories import add_email, add_run, add_tenant
from tests.test_tui import NOW, SIZE, cell, column, make_app, screen_of, settle, text

BAD = "invalid recipient 'x@mail,co': invalid characters"


async def test_problems_groups_errors_by_window_and_opens_the_tenants_run(
        engine: Engine, settings: Settings) -> None:
    recent = add_run(engine, "expiry-checker", "partial", NOW - timedelta(hours=2), items=[
        ("t-a", "expired", "ok", None), ("t-b", "expired", "error", BAD),
        ("t-c", "suspended", "error", BAD), ("t-d", "expired", "error", "deadlock")])
    add_run(engine, "cleanup", "failed", NOW - timedelta(hours=5), error="database unreachable")
    add_run(engine, "expiry-checker", "partial", NOW - timedelta(days=3),
            items=[("t-e", "expired", "error", BAD)])
    add_run(engine, "analytics-aggregate", "succeeded", NOW - timedelta(hours=1),
            items=[("t-a", "cached", "ok", None)])
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("e")
        await settle(app, pilot)
        screen = screen_of(app)
        assert isinstance(screen, ProblemsScreen)
        groups = screen.query_one("#problem-groups", DataTable)
        title = text(screen.query_one("#problems-title", Label))
        assert "in the last 24 h: 4 problems in 3 groups" in title
        assert [(cell(groups, str(i), "count"), cell(groups, str(i), "job"),
                 cell(groups, str(i), "error")) for i in range(groups.row_count)] == [
            ("2", "expiry-checker", BAD), ("1", "cleanup", "database unreachable"),
            ("1", "expiry-checker", "deadlock")]
        lines = screen.query_one("#problem-lines", DataTable)
        assert column(lines, "id") == ["t-b", "t-c"]
        assert BAD in text(screen.query_one("#problem-detail", Static))

        await pilot.press("w")  # 7 days: the older run's failed tenant joins its group
        await settle(app, pilot)
        assert "in the last 7 days: 5 problems in 3 groups" in text(
            screen.query_one("#problems-title", Label))
        assert cell(groups, "0", "count") == "3" and cell(groups, "0", "tenants") == "3"
        assert column(lines, "id") == ["t-b", "t-c", "t-e"]

        await pilot.press("j", "j", "j", "j")  # every job -> expiry-checker -> ... -> cleanup
        await settle(app, pilot)
        assert column(groups, "job") == ["cleanup"]
        assert column(lines, "id") == ["(the run)"]
        await pilot.press("j")  # every job again
        await settle(app, pilot)
        assert column(groups, "job") == ["expiry-checker", "cleanup", "expiry-checker"]

        await pilot.press("tab", "down", "enter")  # the group's second line: t-c
        await settle(app, pilot)
        detail = screen_of(app)
        assert isinstance(detail, RunDetailScreen) and detail.run_id == recent
        assert detail.query_one("#item-search", Input).value == "t-c"
        assert column(detail.query_one("#items", DataTable), "id") == ["t-c"]


async def test_problems_says_when_there_are_none(engine: Engine, settings: Settings) -> None:
    add_run(engine, "expiry-checker", "partial", NOW - timedelta(days=20),
            items=[("t-old", "expired", "error", BAD)])
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        app.open_problems()
        await settle(app, pilot)
        screen = screen_of(app)
        assert screen.query_one("#problem-groups", DataTable).row_count == 0
        assert "No failed items or runs in the last 24 h" in text(
            screen.query_one("#problem-detail", Static))
        await pilot.press("w", "w")  # 30 days
        await settle(app, pilot)
        assert column(screen.query_one("#problem-groups", DataTable), "count") == ["1"]


# --- timeline ----------------------------------------------------------------------------------


def berlin(tmp_path: Path, env: dict[str, str]) -> Settings:
    config = tmp_path / "berlin.toml"
    config.write_text(
        '[jobs.expiry-checker]\nschedule = "30 2 * * *"\ntimezone = "Europe/Berlin"\n'
        '[jobs.payment-reminders]\nschedule = "0 9 * * *"\ntimezone = "Europe/Berlin"\n'
        '[jobs.analytics-aggregate]\nschedule = "0 * * * *"\ntimezone = "Europe/Berlin"\n'
        '[jobs.cleanup]\nenabled = false\n')
    return load_settings(Overrides(config=str(config)), env=env)


async def test_timeline_across_the_autumn_dst_change(engine: Engine, env: dict[str, str],
                                                    tmp_path: Path) -> None:
    # Saturday before the last Sunday of October 2026: Berlin goes from CEST to CET at
    # 03:00 CEST (01:00 UTC) on Sunday 25 October.
    now = datetime(2026, 10, 24, 12, 0, tzinfo=UTC)
    set_paused(engine, "payment-reminders", True, by="ops@host", now=now)
    app = OpsApp(berlin(tmp_path, env), clock=lambda: now, engine=engine, refresh_seconds=0,
                 cache_factory=lambda e: TableCache(e, clock=now.timestamp))
    async with app.run_test(size=(140, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("n")
        await settle(app, pilot)
        screen = screen_of(app)
        assert isinstance(screen, TimelineScreen)
        assert "Next 24 h from Sat 24 Oct 12:00 UTC" in text(
            screen.query_one("#timeline-title", Label))
        jobs = text(screen.query_one("#timeline-jobs", Static)).splitlines()
        assert jobs[1].startswith("payment-reminders") and "paused: none fires" in jobs[1]
        assert jobs[3].startswith("cleanup") and "enabled = false: none fires" in jobs[3]
        table = screen.query_one("#timeline", DataTable)
        rows = [(cell(table, k.value, "utc"), cell(table, k.value, "local"),
                 cell(table, k.value, "job"), cell(table, k.value, "state"),
                 cell(table, k.value, "note")) for k in table.rows if k.value]
        around = rows[rows.index(next(r for r in rows if r[0] == "Sun 25 Oct 00:00")):][:5]
        assert around == [
            ("Sun 25 Oct 00:00", "Sun 25 Oct 02:00 CEST", "analytics-aggregate", "active", ""),
            ("Sun 25 Oct 00:30", "Sun 25 Oct 02:30 CEST", "expiry-checker", "active", ""),
            ("Sun 25 Oct 01:00", "03:00 CEST → 02:00 CET", "Europe/Berlin", "",
             "⏰ clocks go back 1 h"),
            # the hourly job fires in both copies of 02:00; the 02:30 job once
            ("Sun 25 Oct 01:00", "Sun 25 Oct 02:00 CET", "analytics-aggregate", "active",
             "first slot on CET; the repeated hour's second copy"),
            ("Sun 25 Oct 02:00", "Sun 25 Oct 03:00 CET", "analytics-aggregate", "active", ""),
        ]
        paused = next(r for r in rows if r[2] == "payment-reminders")
        assert paused == ("Sun 25 Oct 08:00", "Sun 25 Oct 09:00 CET", "payment-reminders",
                          "paused", "will not fire; first slot on CET")
        assert [r for r in rows if r[2] == "cleanup"] == [  # Sundays 02:00 UTC, disabled
            ("Sun 25 Oct 02:00", "Sun 25 Oct 02:00 UTC", "cleanup", "disabled", "will not fire")]
        assert len([r for r in rows if r[2] == "analytics-aggregate"]) == 24

        await pilot.press("w")  # 7 days
        await settle(app, pilot)
        assert "Next 7 days" in text(screen.query_one("#timeline-title", Label))
        assert len([k for k in table.rows if cell(table, k.value or "", "job")
                    == "expiry-checker"]) == 7


# --- outbox search and paging ------------------------------------------------------------------


async def test_outbox_searches_by_tenant_recipient_subject_and_pages(
        engine: Engine, settings: Settings) -> None:
    add_tenant(engine, id="t-acme", name="Acme Outdoor")
    add_tenant(engine, id="t-blue", name="Blue Harbor Books")
    for n in range(PAGE + 30):  # more than a page
        add_email(engine, "t-acme", at=NOW - timedelta(minutes=PAGE + 30 - n),
                  status="sent" if n % 2 else "pending")
    blue = add_email(engine, "t-blue", at=NOW - timedelta(days=1), status="dead", attempts=8,
                     recipient="books@blueharbor.example",
                     subject="Your payment for Blue Harbor Books is due")
    app = make_app(settings, engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("o")
        await settle(app, pilot)
        screen = screen_of(app)
        assert isinstance(screen, OutboxScreen)
        table = screen.query_one("#emails", DataTable)
        assert table.row_count == PAGE
        assert f"showing {PAGE}+ (all" in text(screen.query_one("#outbox-counts", Label))
        first = screen.entries[0]
        # queued and sent times; the subject is not cut at 100 columns
        assert cell(table, str(first.id), "queued") == f"{first.created_at:%m-%d %H:%M}"
        sent = next(e for e in screen.entries if e.status == "sent")
        assert cell(table, str(sent.id), "sent") == f"{sent.sent_at:%H:%M}"
        assert cell(table, str(first.id), "subject") == first.subject
        await pilot.press("end")  # the next page follows the cursor
        await settle(app, pilot)
        assert table.row_count == PAGE + 31

        for query, expected in (("harbor books", [blue]), ("BLUEHARBOR", [blue]),
                                ("payment for", [blue]), ("t-blue", [blue]), ("zzz", [])):
            await pilot.press("slash")
            search = screen.query_one("#email-search", Input)
            search.value = query
            await settle(app, pilot)
            assert [e.id for e in screen.entries] == expected, query
        assert "No emails match 'zzz'." in text(screen.query_one("#email-body", Static))

        screen.query_one("#email-search", Input).value = "acme"
        await pilot.press("enter", "f")  # back to the list; then all -> pending
        await settle(app, pilot)
        assert table.row_count == (PAGE + 30) // 2
        assert {e.status for e in screen.entries} == {"pending"}
        assert all(e.tenant_id == "t-acme" for e in screen.entries)

        app.open_outbox(status="dead", search="harbor")  # opened on a search, e.g. from a line
        await settle(app, pilot)
        assert [e.id for e in screen_of(app).entries] == [blue]  # type: ignore[attr-defined]

"""Snapshots of the console's main screens (pytest-textual-snapshot): a fixed clock, a
fixed terminal size and fixed data in SQLite, so any change in what a screen shows
shows up as a diff. `pytest tests/test_tui_snapshots.py --snapshot-update` accepts one."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.engine import Engine
from textual.pilot import Pilot

from console.tui.app import OpsApp
from jobs.analytics import cache_key
from jobs.cache import TableCache
from jobs.db import (
    make_engine,
    ops_alert_deliveries,
    ops_alerts,
    ops_email_outbox,
    ops_job_state,
    ops_run_items,
    ops_runners,
    ops_runs,
    platform,
    tenants,
)
from jobs.migrate import upgrade
from jobs.settings import Overrides, load_settings

NOW = datetime(2026, 11, 28, 10, 30, tzinfo=UTC)
SIZE = (110, 32)
TENANTS = [
    ("0b6f2c1e-5d7a-4c3e-9f10-000000000001", "Acme Outdoor", "expired"),
    ("0b6f2c1e-5d7a-4c3e-9f10-000000000002", "Blue Harbor Books", "suspended"),
    ("0b6f2c1e-5d7a-4c3e-9f10-000000000003", "Crooked Mail Co.", "active"),
    ("0b6f2c1e-5d7a-4c3e-9f10-000000000004", "Nordic Candles", "active"),
    ("0b6f2c1e-5d7a-4c3e-9f10-000000000005", "Paper Anchor", "expired"),
]
NORDIC = TENANTS[3][0]


def _seed(engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(insert(tenants), [
            {"id": tid, "name": name, "email": f"owner{i}@example.com", "status": status,
             "expire_date": NOW - timedelta(days=2 + i), "created_at": NOW - timedelta(days=400)}
            for i, (tid, name, status) in enumerate(TENANTS)
        ])
        c.execute(insert(ops_runners).values(
            id="runner-ops-1-4242-abcd1234", kind="runner", host="ops-1", pid=4242,
            started_at=NOW - timedelta(days=2), heartbeat_at=NOW - timedelta(seconds=3)))
        runs = [
            ("analytics-aggregate", "succeeded", NOW.replace(hour=1, minute=0), 5, 0,
             {"date": "2026-11-27", "tenants": 5, "cache_writes": 5, "orders": 31,
              "revenue": 2411.4}),
            ("cleanup", "missed", NOW - timedelta(days=6, hours=8, minutes=30), 0, 0, None),
            ("payment-reminders", "succeeded", NOW.replace(hour=9, minute=0), 2, 0,
             {"renewal_reminders": 1, "payment_due_reminders": 1, "already_sent": 0}),
            ("expiry-checker", "partial", NOW.replace(hour=0, minute=0), 4, 1,
             {"expired": 2, "suspended": 1, "unchanged": 0, "emails_queued": 3}),
        ]
        for job_id, status, slot, processed, errors, summary in runs:
            ran = status != "missed"
            c.execute(insert(ops_runs).values(
                job_id=job_id, trigger="schedule", scheduled_for=slot, attempt=1, status=status,
                started_by="runner@ops-1", runner_id="runner-ops-1-4242-abcd1234",
                reference_time=slot, created_at=slot, started_at=slot if ran else None,
                finished_at=slot + timedelta(seconds=2.4), processed=processed, errors=errors,
                params={}, summary=summary,
                error=None if ran else "no runner was alive within the misfire grace"))
        bad = ("invalid recipient 'crooked@mail,co': The part after the @-sign contains "
               "invalid characters: ','.")
        items = [(TENANTS[0], "expired", None), (TENANTS[1], "suspended", None),
                 (TENANTS[4], "expired", None), (TENANTS[2], "expired", bad)]
        c.execute(insert(ops_run_items), [
            {"run_id": 4, "seq": i, "tenant_id": tid, "tenant_name": name, "action": action,
             "status": "error" if err else "ok", "error": err,
             "detail": {"from": "active", "to": action, "email": None if err else "queued"}}
            for i, ((tid, name, _), action, err) in enumerate(items)
        ])
        emails = [("sent", 1, None), ("sent", 1, None), ("dead", 8, "550 5.1.1 mailbox unknown"),
                  ("failed", 2, "421 4.7.0 try again later"), ("pending", 0, None)]
        c.execute(insert(ops_email_outbox), [
            {"idempotency_key": f"subscription_expired:{TENANTS[i][0]}:2026-11-2{i}",
             "tenant_id": TENANTS[i][0], "kind": "subscription_expired",
             "recipient": f"owner{i}@example.com",
             "subject": f"Your StoreFlow subscription for {TENANTS[i][1]} has expired",
             "body_text": f"Hello {TENANTS[i][1]},\n\nyour subscription expired on "
                          "Thursday 26 November 2026, 00:00 UTC.\nRenew to keep your store open.",
             "body_html": "<p>…</p>", "status": status, "attempts": attempts,
             "next_attempt_at": NOW, "last_error": error,
             "created_at": NOW - timedelta(hours=10 - i),
             "sent_at": NOW - timedelta(hours=9) if status == "sent" else None}
            for i, (status, attempts, error) in enumerate(emails)
        ])
    cache = TableCache(engine, clock=NOW.timestamp)
    for back in range(14):
        day = date(2026, 11, 27) - timedelta(days=back)
        if back in (4, 9):
            continue  # two missing days
        orders = (back * 7) % 11 + 1
        value = {"tenantId": NORDIC, "date": day.isoformat(), "orders": orders,
                 "revenue": round(orders * 41.25 + back, 2), "newCustomers": back % 3,
                 "productsSold": orders * 2, "generatedAt": "2026-11-28T01:00:00.000Z"}
        cache.set_many({cache_key(NORDIC, day): json.dumps(value)}, ttl=86_400 - back * 3_600)


@pytest.fixture
def snap_app(tmp_path: Path) -> Callable[..., OpsApp]:
    engine = make_engine(f"sqlite:///{tmp_path / 'snap.sqlite3'}")
    platform.create_all(engine)
    upgrade(engine)
    _seed(engine)
    # The label is what the status bar shows; the engine is the test's own file.
    settings = load_settings(Overrides(database_url="sqlite:///storeflow.sqlite3"), env={},
                             cwd=tmp_path)

    def make(**kw: Any) -> OpsApp:
        return OpsApp(settings, clock=lambda: NOW, engine=engine, refresh_seconds=0,
                      cache_factory=lambda e: TableCache(e, clock=NOW.timestamp), **kw)

    return make


async def _settle(pilot: Pilot[Any]) -> None:
    for _ in range(50):
        await pilot.pause()
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        if not any(w.is_running for w in pilot.app.workers):
            return


def _then(*keys: str, open_run: int | None = None) -> Callable[[Pilot[Any]], Any]:
    async def run_before(pilot: Pilot[Any]) -> None:
        await _settle(pilot)
        if open_run is not None:
            app = pilot.app
            assert isinstance(app, OpsApp)
            app.open_run(open_run)
            await _settle(pilot)
        for key in keys:
            await pilot.press(key)
            await _settle(pilot)

    return run_before


def test_jobs_screen(snap_compare: Any, snap_app: Callable[..., OpsApp]) -> None:
    assert snap_compare(snap_app(), terminal_size=SIZE, run_before=_then())


def test_jobs_screen_read_only(snap_compare: Any, snap_app: Callable[..., OpsApp]) -> None:
    assert snap_compare(snap_app(read_only=True), terminal_size=SIZE, run_before=_then())


def test_run_detail_screen(snap_compare: Any, snap_app: Callable[..., OpsApp]) -> None:
    assert snap_compare(snap_app(), terminal_size=SIZE, run_before=_then("end", open_run=4))


def test_analytics_screen(snap_compare: Any, snap_app: Callable[..., OpsApp]) -> None:
    assert snap_compare(snap_app(), terminal_size=SIZE,
                        run_before=_then("a", *"nordic", "enter"))


def test_outbox_screen(snap_compare: Any, snap_app: Callable[..., OpsApp]) -> None:
    assert snap_compare(snap_app(), terminal_size=SIZE, run_before=_then("o", "down", "down"))


def _seed_alerts(engine: Engine) -> None:
    """expiry-checker failing since its partial run, cleanup overdue, analytics paused with
    a reason, and two alerts whose deliveries did not all arrive."""
    def hook(host: str, status: str, attempts: int, error: str | None) -> dict[str, Any]:
        return {"kind": "webhook", "target": f"https://{host}/services/T0/B0/s3cr3t",
                "target_label": f"https://{host}", "status": status, "attempts": attempts,
                "last_error": error, "next_attempt_at": NOW + timedelta(seconds=40),
                "sent_at": NOW if status == "sent" else None}

    email = {"kind": "email", "target": "ops@example.com", "target_label": "ops@example.com",
             "status": "sent", "attempts": 1, "last_error": None, "next_attempt_at": None,
             "sent_at": NOW}
    alerts = [
        ("job_failing", "expiry-checker", 4, NOW.replace(hour=0, minute=0, second=3),
         "expiry-checker is failing: run 4 ended partial with 1 failed item "
         "(0b6f2c1e-5d7a-4c3e-9f10-000000000003: invalid recipient 'crooked@mail,co')",
         [hook("hooks.slack.com", "sent", 1, None),
          hook("alerts.example.net", "pending", 6, "HTTP 503"), email]),
        ("job_overdue", "cleanup", 2, NOW - timedelta(hours=2),
         "cleanup is overdue: no successful run since 2026-11-15T02:00:00Z",
         [hook("hooks.slack.com", "sent", 1, None),
          hook("alerts.example.net", "dead", 1, "HTTP 404"), email]),
    ]
    with engine.begin() as c:
        for i, (event, job, run, at, words, deliveries) in enumerate(alerts, start=1):
            c.execute(insert(ops_alerts).values(
                id=i, key=f"{event}:{job}:{run}", event=event, job_id=job, run_id=run, at=at,
                payload={"event": event, "text": words}))
            c.execute(insert(ops_alert_deliveries), [{"alert_id": i, **d} for d in deliveries])
        for state in [
            {"job_id": "expiry-checker", "paused": False, "alert_state": "failing",
             "failing_since": NOW.replace(hour=0, minute=0, second=3)},
            {"job_id": "cleanup", "paused": False, "overdue_since": NOW - timedelta(hours=2)},
            {"job_id": "analytics-aggregate", "paused": True, "paused_by": "ana@ops-1",
             "paused_at": NOW - timedelta(hours=1),
             "paused_reason": "moving the cache to the new Redis tonight"},
        ]:
            c.execute(insert(ops_job_state).values(**state))


def _with_alerts(make: Callable[..., OpsApp], **kw: Any) -> OpsApp:
    app = make(**kw)
    assert app.session.engine is not None
    _seed_alerts(app.session.engine)
    return app


def test_jobs_screen_attention_strip(snap_compare: Any, snap_app: Callable[..., OpsApp]) -> None:
    assert snap_compare(_with_alerts(snap_app), terminal_size=SIZE, run_before=_then())


def test_alerts_screen(snap_compare: Any, snap_app: Callable[..., OpsApp]) -> None:
    assert snap_compare(_with_alerts(snap_app, read_only=True), terminal_size=SIZE,
                        run_before=_then("l", "down"))


def test_pause_question(snap_compare: Any, snap_app: Callable[..., OpsApp]) -> None:
    assert snap_compare(snap_app(), terminal_size=SIZE,
                        run_before=_then("s", *"disk migration"))

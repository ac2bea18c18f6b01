"""payment-reminders on SQLite and PostgreSQL: windows, thresholds, local days."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from jobs import runs
from jobs.cron import CronSchedule
from jobs.db import ops_email_outbox, ops_runs, tenants
from jobs.errors import ExitCode
from jobs.humanize import long_date
from jobs.records import ItemStatus, Progress, RunReport, RunStatus
from jobs.settings import Settings
from tests.factories import add_tenant

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
JOB = "payment-reminders"


def with_job(settings: Settings, **changes: Any) -> Settings:
    jobs = dict(settings.jobs)
    jobs[JOB] = replace(jobs[JOB], **changes)
    return replace(settings, jobs=jobs)


def trigger(engine: Engine, settings: Settings, now: datetime = NOW,
            dry_run: bool = False) -> RunReport:
    # The clock reads `now`: the tests step through days that are ahead of the wall clock,
    # and a real run may not be later than its clock.
    return runs.execute(engine, settings, JOB, now=now, started_by="test", dry_run=dry_run,
                        clock=lambda: now)


def keys(engine: Engine) -> list[str]:
    with engine.connect() as c:
        return list(c.execute(select(ops_email_outbox.c.idempotency_key)
                              .order_by(ops_email_outbox.c.id)).scalars())


def outbox_row(engine: Engine, key: str) -> Any:
    with engine.connect() as c:
        return c.execute(select(ops_email_outbox)
                         .where(ops_email_outbox.c.idempotency_key == key)).one()


def items(report: RunReport) -> list[tuple[str | None, str, ItemStatus]]:
    return [(i.tenant_id, i.action, i.status) for i in report.items]


def status_of(engine: Engine, tid: str) -> str:
    with engine.connect() as c:
        return str(c.execute(select(tenants.c.status).where(tenants.c.id == tid)).scalar_one())


def test_renewal_window_boundaries(engine: Engine, settings: Settings) -> None:
    at_now = add_tenant(engine, id="a-now", expire_date=NOW)
    just_after = add_tenant(engine, id="b-after", expire_date=NOW + timedelta(microseconds=1))
    at_edge = add_tenant(engine, id="c-edge", expire_date=NOW + 7 * DAY)
    beyond = add_tenant(engine, id="d-beyond",
                        expire_date=NOW + 7 * DAY + timedelta(microseconds=1))

    report = trigger(engine, settings)

    assert report.status is RunStatus.SUCCEEDED and report.exit_code is ExitCode.OK
    assert items(report) == [(just_after, "renewal_reminder", ItemStatus.OK),
                             (at_edge, "renewal_reminder", ItemStatus.OK)]
    assert dict(report.summary) == {"renewal_reminders": 2, "payment_due_reminders": 0,
                                    "already_sent": 0}
    edge = NOW + 7 * DAY
    assert keys(engine) == [
        f"renewal_reminder:{just_after}:{(NOW + timedelta(microseconds=1)).isoformat()}:7d",
        f"renewal_reminder:{at_edge}:{edge.isoformat()}:7d",
    ]
    assert report.items[1].detail == {
        "email": "renewal_reminder", "threshold": 7, "days_left": 7,
        "expire_date": edge.isoformat(), "key": keys(engine)[1],
    }
    assert report.items[0].detail["days_left"] == 1  # a microsecond left still reads "1 day"
    row = outbox_row(engine, keys(engine)[1])
    assert row.kind == "renewal_reminder" and row.recipient == f"owner-{at_edge}@example.com"
    assert long_date(edge, ZoneInfo("UTC")) in row.body_text and "in 7 days" in row.body_text
    assert status_of(engine, at_now) == status_of(engine, beyond) == "active"
    with engine.connect() as c:
        assert c.execute(select(ops_runs.c.total)).scalar_one() == 2


def test_thresholds_progress_smallest_first_never_twice(engine: Engine,
                                                         settings: Settings) -> None:
    s = with_job(settings, reminder_days=(7, 3, 1))
    expire = NOW + 10 * DAY
    steady = add_tenant(engine, id="a-steady", expire_date=expire)
    # Enters the window with 2 days left: "3 days" is due, "7 days" must never follow.
    late = add_tenant(engine, id="b-late", expire_date=NOW + 2 * DAY + 12 * timedelta(hours=1))

    sent_by_day: dict[int, list[str]] = {}
    for day in range(11):
        before = set(keys(engine))
        report = trigger(engine, s, NOW + day * DAY)
        if day == 0:  # 2.5 days left reads "3 days"
            assert report.items[0].detail["days_left"] == 3
        again = trigger(engine, s, NOW + day * DAY + timedelta(hours=1))  # same day, re-run
        assert again.summary["renewal_reminders"] == 0
        assert report.exit_code is ExitCode.OK
        sent_by_day[day] = sorted(set(keys(engine)) - before)

    def key(tid: str, exp: datetime, t: int) -> str:
        return f"renewal_reminder:{tid}:{exp.isoformat()}:{t}d"

    late_exp = NOW + 2 * DAY + timedelta(hours=12)
    assert sent_by_day[0] == [key(late, late_exp, 3)]
    assert sent_by_day[1] == []  # 1.5 days left: 3d already sent, no fallback to 7d
    assert sent_by_day[2] == [key(late, late_exp, 1)]  # half a day left
    assert sent_by_day[3] == [key(steady, expire, 7)]
    assert sent_by_day[7] == [key(steady, expire, 3)]
    assert sent_by_day[9] == [key(steady, expire, 1)]
    assert all(sent_by_day[d] == [] for d in (4, 5, 6, 8, 10))
    assert len(keys(engine)) == 5 == len(set(keys(engine)))
    assert "in 3 days" in outbox_row(engine, key(late, late_exp, 3)).body_text

    # A day with 6 days left reports the 7d reminder as already sent, not as a new one.
    report = trigger(engine, s, NOW + 4 * DAY)
    assert items(report) == [(steady, "already_sent", ItemStatus.SKIPPED)]
    assert report.items[0].detail["threshold"] == 7
    assert dict(report.summary) == {"renewal_reminders": 0, "payment_due_reminders": 0,
                                    "already_sent": 1}


def test_renewed_subscription_is_reminded_again(engine: Engine, settings: Settings) -> None:
    first_end = NOW + 5 * DAY
    tid = add_tenant(engine, expire_date=first_end)
    assert trigger(engine, settings).summary["renewal_reminders"] == 1
    assert trigger(engine, settings).summary["already_sent"] == 1

    new_end = first_end + 365 * DAY
    with engine.begin() as c:
        c.execute(update(tenants).where(tenants.c.id == tid).values(expire_date=new_end))
    report = trigger(engine, settings, new_end - 5 * DAY)
    assert items(report) == [(tid, "renewal_reminder", ItemStatus.OK)]
    assert keys(engine) == [f"renewal_reminder:{tid}:{first_end.isoformat()}:7d",
                            f"renewal_reminder:{tid}:{new_end.isoformat()}:7d"]


def test_payment_due_once_per_day_and_says_suspension_date(engine: Engine,
                                                           settings: Settings) -> None:
    expire = NOW - 2 * DAY
    tid = add_tenant(engine, name="Acme\nShop", status="expired", expire_date=expire)

    first = trigger(engine, settings)
    same_day = trigger(engine, settings, NOW + timedelta(hours=14, minutes=59))  # 23:59 UTC
    next_day = trigger(engine, settings, NOW + DAY)

    assert items(first) == [(tid, "payment_due", ItemStatus.OK)]
    assert items(same_day) == [(tid, "already_sent", ItemStatus.SKIPPED)]
    assert items(next_day) == [(tid, "payment_due", ItemStatus.OK)]
    assert dict(same_day.summary) == {"renewal_reminders": 0, "payment_due_reminders": 0,
                                      "already_sent": 1}
    assert keys(engine) == [f"payment_due:{tid}:2026-11-28", f"payment_due:{tid}:2026-11-29"]
    grace_end = expire + 7 * DAY
    assert first.items[0].detail["grace_end"] == grace_end.isoformat()

    row = outbox_row(engine, f"payment_due:{tid}:2026-11-28")
    suspension = "Thursday 3 December 2026, 09:00 UTC"
    assert long_date(grace_end, ZoneInfo("UTC")) == suspension
    assert f"suspended on {suspension}" in row.body_text
    assert suspension in row.subject and "\n" not in row.subject
    assert suspension in row.body_html
    assert status_of(engine, tid) == "expired"  # reminders never change a status


def test_payment_due_day_follows_job_timezone(engine: Engine, settings: Settings) -> None:
    s = with_job(settings, schedule=CronSchedule.parse("0 9 * * *", "America/New_York"))
    tid = add_tenant(engine, status="expired", expire_date=NOW - 3 * DAY)
    evening = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)  # 22:00 on the 27th in New York

    trigger(engine, s, evening)
    late = trigger(engine, s, datetime(2026, 11, 28, 4, 59, 59, tzinfo=UTC))  # 23:59:59
    midnight = trigger(engine, s, datetime(2026, 11, 28, 5, 0, tzinfo=UTC))  # 00:00 on the 28th

    assert items(late) == [(tid, "already_sent", ItemStatus.SKIPPED)]
    assert items(midnight) == [(tid, "payment_due", ItemStatus.OK)]
    assert keys(engine) == [f"payment_due:{tid}:2026-11-27", f"payment_due:{tid}:2026-11-28"]
    body = outbox_row(engine, f"payment_due:{tid}:2026-11-27").body_text
    assert "Wednesday 2 December 2026, 04:00 EST" in body  # grace end in the job's timezone


def test_other_statuses_and_null_dates_untouched(engine: Engine, settings: Settings) -> None:
    soon = NOW + DAY
    past = NOW - DAY
    ids = [
        add_tenant(engine, status="suspended", expire_date=soon),
        add_tenant(engine, status="suspended", expire_date=past),
        add_tenant(engine, status="cancelled", expire_date=soon),
        add_tenant(engine, status="cancelled", expire_date=past),
        add_tenant(engine, status="active", expire_date=None),
        add_tenant(engine, status="expired", expire_date=None),
        add_tenant(engine, status="active", expire_date=past),  # expiry-checker's business
    ]
    report = trigger(engine, settings)
    assert report.items == ()
    assert dict(report.summary) == {"renewal_reminders": 0, "payment_due_reminders": 0,
                                    "already_sent": 0}
    assert keys(engine) == []
    assert [status_of(engine, t) for t in ids] == ["suspended", "suspended", "cancelled",
                                                   "cancelled", "active", "expired", "active"]


def test_preview_equals_next_real_run_and_writes_nothing(engine: Engine,
                                                         settings: Settings) -> None:
    s = with_job(settings, reminder_days=(7, 3))
    add_tenant(engine, id="a", expire_date=NOW + 2 * DAY + timedelta(hours=12))
    add_tenant(engine, id="b", expire_date=NOW + 6 * DAY)
    add_tenant(engine, id="c", status="expired", expire_date=NOW - DAY)
    add_tenant(engine, id="d", email="nobody", status="expired", expire_date=NOW - DAY)
    trigger(engine, s, NOW - DAY)  # a's and b's 7d and c's notice of yesterday are out
    add_tenant(engine, id="e", expire_date=NOW + DAY)
    before = keys(engine)
    with engine.connect() as c:
        runs_before = c.execute(select(ops_runs.c.id)).all()

    preview = trigger(engine, s, dry_run=True)

    assert preview.dry_run and preview.run_id is None
    assert keys(engine) == before
    with engine.connect() as c:
        assert c.execute(select(ops_runs.c.id)).all() == runs_before
    real = trigger(engine, s)
    assert dict(preview.summary) == dict(real.summary) == {
        "renewal_reminders": 2, "payment_due_reminders": 1, "already_sent": 1}
    assert [i.to_json() for i in preview.items] == [i.to_json() for i in real.items]
    assert items(real) == [("a", "renewal_reminder", ItemStatus.OK),
                           ("b", "already_sent", ItemStatus.SKIPPED),
                           ("e", "renewal_reminder", ItemStatus.OK),
                           ("c", "payment_due", ItemStatus.OK),
                           ("d", "payment_due", ItemStatus.ERROR)]
    assert preview.exit_code is real.exit_code is ExitCode.FAILED
    assert len(keys(engine)) == len(before) + 3


def test_bad_address_fails_only_that_tenant(engine: Engine, settings: Settings) -> None:
    bad = add_tenant(engine, id="a-bad", email="not an email", expire_date=NOW + DAY)
    good = add_tenant(engine, id="b-good", expire_date=NOW + DAY)
    bad_due = add_tenant(engine, id="c-bad", email="x@", status="expired",
                         expire_date=NOW - DAY)
    good_due = add_tenant(engine, id="d-good", status="expired", expire_date=NOW - DAY)

    report = trigger(engine, settings)

    assert report.status is RunStatus.PARTIAL
    assert report.exit_code is ExitCode.FAILED
    assert report.message == "Job completed with errors"
    assert items(report) == [(bad, "renewal_reminder", ItemStatus.ERROR),
                             (good, "renewal_reminder", ItemStatus.OK),
                             (bad_due, "payment_due", ItemStatus.ERROR),
                             (good_due, "payment_due", ItemStatus.OK)]
    errors = report.to_json()["results"]["errors"]
    assert [e["tenant_id"] for e in errors] == [bad, bad_due]
    assert all("invalid recipient" in e["error"] for e in errors)
    assert dict(report.summary) == {"renewal_reminders": 1, "payment_due_reminders": 1,
                                    "already_sent": 0}
    with engine.connect() as c:
        tids = c.execute(select(ops_email_outbox.c.tenant_id)
                         .order_by(ops_email_outbox.c.tenant_id)).scalars().all()
    assert tids == [good, good_due]


def test_stop_request_finishes_the_tenant_in_hand(engine: Engine, settings: Settings) -> None:
    first = add_tenant(engine, id="a", expire_date=NOW + DAY)
    add_tenant(engine, id="b", expire_date=NOW + DAY)
    add_tenant(engine, id="c", status="expired", expire_date=NOW - DAY)
    stop = threading.Event()

    def on_progress(p: Progress) -> None:
        if p.done >= 1:  # SIGTERM arrives while the first tenant is handled
            stop.set()

    report = runs.execute(engine, settings, JOB, now=NOW, started_by="test", stop=stop,
                          on_progress=on_progress)
    assert report.status is RunStatus.INTERRUPTED and report.exit_code is ExitCode.INTERRUPTED
    assert items(report) == [(first, "renewal_reminder", ItemStatus.OK)]
    assert keys(engine) == [f"renewal_reminder:{first}:{(NOW + DAY).isoformat()}:7d"]


def test_payment_due_only_while_in_grace(engine: Engine, settings: Settings) -> None:
    in_grace = add_tenant(engine, status="expired", expire_date=NOW - 7 * DAY + timedelta(seconds=1))
    at_grace_end = add_tenant(engine, status="expired", expire_date=NOW - 7 * DAY)
    report = trigger(engine, settings)
    # Past the grace end the tenant is the expiry-checker's to suspend, not to remind.
    assert items(report) == [(in_grace, "payment_due", ItemStatus.OK)]
    assert keys(engine) == [f"payment_due:{in_grace}:2026-11-28"]
    assert status_of(engine, at_grace_end) == "expired"

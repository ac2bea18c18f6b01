"""expiry-checker on SQLite and PostgreSQL, every boundary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from jobs import runs
from jobs.db import ops_email_outbox, ops_run_items, ops_runs, tenants
from jobs.errors import ExitCode, JobRunningError
from jobs.records import ItemStatus, RunReport, RunStatus
from jobs.settings import Settings
from tests.factories import add_tenant

NOW = datetime(2026, 11, 28, 0, 0, tzinfo=UTC)


def status_of(engine: Engine, tid: str) -> str:
    with engine.connect() as c:
        return str(c.execute(select(tenants.c.status).where(tenants.c.id == tid)).scalar_one())


def outbox_rows(engine: Engine) -> list[tuple[str, str, str]]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(  # type: ignore[misc]
            select(ops_email_outbox.c.tenant_id, ops_email_outbox.c.kind,
                   ops_email_outbox.c.recipient).order_by(ops_email_outbox.c.tenant_id))]


def trigger(engine: Engine, settings: Settings, now: datetime = NOW, **kw: Any) -> RunReport:
    return runs.execute(engine, settings, "expiry-checker", now=now, started_by="test", **kw)


def test_boundaries(engine: Engine, settings: Settings) -> None:
    grace = timedelta(days=7)
    t_exact = add_tenant(engine, id="a-exact", expire_date=NOW)  # expires exactly now
    t_future = add_tenant(engine, id="b-future", expire_date=NOW + timedelta(microseconds=1))
    t_grace_end = add_tenant(engine, id="c-grace-end", expire_date=NOW - grace)  # grace ends now
    t_in_grace = add_tenant(engine, id="d-in-grace", status="expired",
                            expire_date=NOW - grace + timedelta(seconds=1))
    t_null = add_tenant(engine, id="e-null", expire_date=None)
    t_susp = add_tenant(engine, id="f-susp", status="suspended", expire_date=NOW - 30 * grace)
    t_canc = add_tenant(engine, id="g-canc", status="cancelled", expire_date=NOW - 30 * grace)
    t_exp_past = add_tenant(engine, id="h-exp-past", status="expired",
                            expire_date=NOW - timedelta(days=8))

    report = trigger(engine, settings)

    assert report.status is RunStatus.SUCCEEDED and report.exit_code is ExitCode.OK
    assert status_of(engine, t_exact) == "expired"
    assert status_of(engine, t_future) == "active"
    assert status_of(engine, t_grace_end) == "suspended"
    assert status_of(engine, t_in_grace) == "expired"
    assert status_of(engine, t_null) == "active"
    assert status_of(engine, t_susp) == "suspended"
    assert status_of(engine, t_canc) == "cancelled"
    assert status_of(engine, t_exp_past) == "suspended"
    assert dict(report.summary) == {"expired": 1, "suspended": 2, "unchanged": 1,
                                    "emails_queued": 3}
    assert outbox_rows(engine) == [
        ("a-exact", "subscription_expired", f"owner-{t_exact}@example.com"),
        ("c-grace-end", "subscription_suspended", f"owner-{t_grace_end}@example.com"),
        ("h-exp-past", "subscription_suspended", f"owner-{t_exp_past}@example.com"),
    ]
    ids = {i.tenant_id for i in report.items}
    assert ids == {t_exact, t_grace_end, t_in_grace, t_exp_past}  # never-candidates absent
    with engine.connect() as c:
        run = c.execute(select(ops_runs)).one()
        assert run.status == "succeeded" and run.processed == 4 and run.trigger == "manual"
        assert c.execute(select(ops_run_items.c.tenant_id)).scalars().all()


def test_zero_grace_suspends_at_expiry(engine: Engine, settings: Settings) -> None:
    from dataclasses import replace

    jobs = dict(settings.jobs)
    jobs["expiry-checker"] = replace(jobs["expiry-checker"], grace_period_days=0)
    s0 = replace(settings, jobs=jobs)
    tid = add_tenant(engine, expire_date=NOW)
    trigger(engine, s0)
    assert status_of(engine, tid) == "suspended"


def test_second_run_changes_nothing(engine: Engine, settings: Settings) -> None:
    add_tenant(engine, expire_date=NOW - timedelta(days=1))
    add_tenant(engine, expire_date=NOW - timedelta(days=10))
    first = trigger(engine, settings)
    second = trigger(engine, settings)
    assert first.summary["emails_queued"] == 2
    # the suspended one is no longer a candidate; the expired one is in grace, unchanged
    assert dict(second.summary) == {"expired": 0, "suspended": 0, "unchanged": 1,
                                    "emails_queued": 0}
    assert len(outbox_rows(engine)) == 2


def test_preview_matches_real_run_and_writes_nothing(engine: Engine, settings: Settings) -> None:
    a = add_tenant(engine, expire_date=NOW - timedelta(days=1))
    add_tenant(engine, expire_date=NOW - timedelta(days=10))
    preview = trigger(engine, settings, dry_run=True)
    assert preview.dry_run and preview.run_id is None
    assert preview.message == "Preview completed"
    assert status_of(engine, a) == "active"
    assert outbox_rows(engine) == []
    with engine.connect() as c:
        assert c.execute(select(ops_runs)).all() == []
    real = trigger(engine, settings)
    assert dict(preview.summary) == dict(real.summary)
    assert [(i.tenant_id, i.action, i.status) for i in preview.items] == [
        (i.tenant_id, i.action, i.status) for i in real.items
    ]


def test_one_bad_tenant_fails_alone(engine: Engine, settings: Settings) -> None:
    bad = add_tenant(engine, id="bad", email="not an email", expire_date=NOW - timedelta(days=1))
    good = add_tenant(engine, id="good", expire_date=NOW - timedelta(days=1))
    report = trigger(engine, settings)
    assert report.status is RunStatus.PARTIAL
    assert report.exit_code is ExitCode.FAILED
    assert report.message == "Job completed with errors"
    body = report.to_json()
    assert [e["tenant_id"] for e in body["results"]["errors"]] == ["bad"]
    assert "invalid recipient" in body["results"]["errors"][0]["error"]
    assert status_of(engine, bad) == "active"  # nothing written for it
    assert status_of(engine, good) == "expired"
    assert [r[0] for r in outbox_rows(engine)] == ["good"]
    assert [i.status for i in report.items] == [ItemStatus.ERROR, ItemStatus.OK]


def test_refuses_while_running(engine: Engine, settings: Settings) -> None:
    add_tenant(engine, expire_date=NOW - timedelta(days=1))
    from jobs.presence import Presence

    with Presence(engine, "cli", clock=lambda: datetime.now(UTC)) as me:
        def again(_run_id: int | None) -> None:
            with pytest.raises(JobRunningError) as exc:
                trigger(engine, settings, runner_id=me.id)
            assert exc.value.exit_code == ExitCode.RUNNING

        report = trigger(engine, settings, runner_id=me.id, on_started=again)
    assert report.status is RunStatus.SUCCEEDED
    with engine.connect() as c:
        assert len(c.execute(select(ops_runs)).all()) == 1  # the refused one left no row


def test_a_stop_after_the_last_tenant_interrupts_nothing(engine: Engine, settings: Settings) -> None:
    import threading

    from jobs.records import Progress

    stop = threading.Event()

    def on_progress(p: Progress) -> None:
        if p.total is not None and p.done == p.total:
            stop.set()  # SIGTERM lands just as the last tenant is done

    add_tenant(engine, expire_date=NOW - timedelta(days=1))
    add_tenant(engine, expire_date=NOW - timedelta(days=2))
    report = trigger(engine, settings, stop=stop, on_progress=on_progress)
    assert stop.is_set()
    assert report.status is RunStatus.SUCCEEDED and report.exit_code is ExitCode.OK
    assert report.summary["expired"] == 2


def test_a_database_error_on_one_tenant_fails_only_that_tenant(engine: Engine,
                                                                settings: Settings) -> None:
    from sqlalchemy import text

    add_tenant(engine, id="a-good", expire_date=NOW - timedelta(days=1))
    add_tenant(engine, id="b-rejected", expire_date=NOW - timedelta(days=1))
    add_tenant(engine, id="c-good", expire_date=NOW - timedelta(days=1))
    with engine.begin() as c:  # the platform refuses this one tenant's change
        if engine.dialect.name == "sqlite":
            c.execute(text("CREATE TRIGGER refuse BEFORE UPDATE ON tenants WHEN OLD.id = 'b-rejected' "
                           "BEGIN SELECT RAISE(ABORT, 'tenant is locked by billing'); END"))
        else:
            c.execute(text("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                           "IF OLD.id = 'b-rejected' THEN RAISE EXCEPTION 'tenant is locked by billing'; "
                           "END IF; RETURN NEW; END $$"))
            c.execute(text("CREATE TRIGGER refuse BEFORE UPDATE ON tenants FOR EACH ROW "
                           "EXECUTE FUNCTION refuse()"))
    report = trigger(engine, settings)
    assert report.status is RunStatus.PARTIAL and report.exit_code is ExitCode.FAILED
    assert [(i.tenant_id, i.status) for i in report.items] == [
        ("a-good", ItemStatus.OK), ("b-rejected", ItemStatus.ERROR), ("c-good", ItemStatus.OK)]
    assert "tenant is locked by billing" in (report.items[1].error or "")
    assert [status_of(engine, t) for t in ("a-good", "b-rejected", "c-good")] == [
        "expired", "active", "expired"]
    assert [r[0] for r in outbox_rows(engine)] == ["a-good", "c-good"]  # no email without its change


def test_a_renewal_during_the_run_is_not_expired(engine: Engine, settings: Settings) -> None:
    from jobs.records import Progress

    add_tenant(engine, id="a", expire_date=NOW - timedelta(days=1))
    add_tenant(engine, id="b", expire_date=NOW - timedelta(days=1))

    def renew_b(p: Progress) -> None:
        if p.done == 0:  # after the candidates were read, before any tenant is processed
            with engine.begin() as c:
                c.execute(tenants.update().where(tenants.c.id == "b")
                          .values(expire_date=NOW + timedelta(days=30)))

    report = trigger(engine, settings, on_progress=renew_b)
    assert status_of(engine, "a") == "expired"
    assert status_of(engine, "b") == "active"
    assert [r[0] for r in outbox_rows(engine)] == ["a"]
    assert report.summary["expired"] == 1


def test_emails_are_due_when_queued_not_at_a_future_now(engine: Engine, settings: Settings) -> None:
    queued_at = NOW
    future = NOW + timedelta(minutes=4)  # a real run may be at most a few minutes ahead
    add_tenant(engine, expire_date=future - timedelta(minutes=1))
    trigger(engine, settings, now=future, clock=lambda: queued_at)
    with engine.connect() as c:
        row = c.execute(select(ops_email_outbox.c.next_attempt_at, ops_email_outbox.c.created_at)).one()
    assert row.next_attempt_at == queued_at and row.created_at == queued_at


def test_preview_reports_an_email_whose_key_exists_as_not_queued(engine: Engine,
                                                                   settings: Settings) -> None:
    add_tenant(engine, id="t", expire_date=NOW - timedelta(days=1))
    trigger(engine, settings)
    with engine.begin() as c:  # the status was reset by hand; the email was already sent
        c.execute(tenants.update().where(tenants.c.id == "t").values(status="active"))
    preview = trigger(engine, settings, dry_run=True)
    real = trigger(engine, settings)
    assert preview.summary == real.summary
    assert preview.summary["emails_queued"] == 0 and preview.summary["expired"] == 1

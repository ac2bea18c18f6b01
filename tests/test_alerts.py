"""Alerts in one process, on both databases: state changes raise one event each, the
delivery retries and gives up as it should, signatures verify, secrets stay out of what
is shown. The runner processes are in test_alert_processes.py."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import subprocess
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from jobs import alerts, runs
from jobs.db import (
    make_engine,
    ops_alert_deliveries,
    ops_alerts,
    ops_email_outbox,
    ops_job_state,
    ops_runs,
    tenants,
)
from jobs.errors import ConfigError
from jobs.records import RunStatus, Trigger
from jobs.settings import Overrides, Settings, load_settings
from jobs.timeutil import as_utc, utc_now
from tests.conftest import CliCall
from tests.factories import add_tenant
from tests.webhook_receiver import receiver

JOB = "expiry-checker"
SECRET = "whsec-test-0123456789"
PAYLOAD_KEYS = {"event", "job", "run_id", "status", "scheduled_for", "errors", "error",
                "first_errors", "summary", "at", "text"}


def with_targets(settings: Settings, *urls: str, emails: tuple[str, ...] = (),
                 **alert_cfg: Any) -> Settings:
    return replace(settings, alerts=replace(settings.alerts, webhooks=urls, emails=emails,
                                            webhook_secret=SECRET, **alert_cfg))


def trigger(engine: Engine, settings: Settings) -> Any:
    return runs.execute(engine, settings, JOB, now=utc_now(), started_by="test")


def events(engine: Engine) -> list[tuple[str, str | None]]:
    with engine.connect() as c:
        return [(r.event, r.job_id) for r in c.execute(select(ops_alerts).order_by(ops_alerts.c.id))]


def deliveries(engine: Engine) -> list[Any]:
    with engine.connect() as c:
        return list(c.execute(select(ops_alert_deliveries).order_by(ops_alert_deliveries.c.id)))


def state(engine: Engine) -> Any:
    with engine.connect() as c:
        row = c.execute(select(ops_job_state).where(ops_job_state.c.job_id == JOB)).first()
    return row if row is not None else type("Fresh", (), {"alert_state": "ok",
                                                          "overdue_since": None})


def verify(hit: Any) -> dict[str, Any]:
    """What a receiver does: recompute the HMAC of the raw body, compare in constant time."""
    expected = "sha256=" + hmac.new(SECRET.encode(), hit.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, hit.headers["X-StoreFlow-Signature"])
    body: dict[str, Any] = json.loads(hit.body)
    assert hit.headers["X-StoreFlow-Event"] == body["event"]
    assert hit.headers["Content-Type"] == "application/json"
    return body


def bad_tenants(engine: Engine, n: int) -> list[str]:
    expired = utc_now() - timedelta(days=30)
    return [add_tenant(engine, id=f"bad{i}", email="not an email", expire_date=expired)
            for i in range(n)]


def test_a_failing_job_raises_one_failing_and_fixing_it_one_recovered(
        engine: Engine, settings: Settings) -> None:
    bad = bad_tenants(engine, 7)
    with receiver() as rec:
        settings = with_targets(settings, rec.url())
        reports = [trigger(engine, settings) for _ in range(3)]
        assert [r.status for r in reports] == [RunStatus.PARTIAL] * 3
        assert events(engine) == [("job_failing", JOB)]
        assert state(engine).alert_state == "failing"
        assert state(engine).failing_since is not None

        with engine.begin() as c:  # the data is fixed
            c.execute(update(tenants).values(email="owner@example.com"))
        fixed = [trigger(engine, settings) for _ in range(2)]
        assert [r.status for r in fixed] == [RunStatus.SUCCEEDED] * 2
        assert events(engine) == [("job_failing", JOB), ("job_recovered", JOB)]
        assert state(engine).alert_state == "ok" and state(engine).failing_since is None

        result = alerts.deliver_due(engine, settings, worker_id="w1")
        assert (result.sent, result.retried, result.dead) == (2, 0, 0)
        bodies = [verify(h) for h in rec.hits]
    failing, recovered = bodies
    assert set(failing) == PAYLOAD_KEYS and set(recovered) == PAYLOAD_KEYS
    assert failing["event"] == "job_failing" and failing["run_id"] == reports[0].run_id
    assert failing["status"] == "partial" and failing["errors"] == 7
    assert [e["tenant_id"] for e in failing["first_errors"]] == bad[:5]  # at most 5
    assert "invalid recipient" in failing["first_errors"][0]["error"]
    assert failing["scheduled_for"] is None  # a manual run has no slot
    assert "bad0" in failing["text"] and JOB in failing["text"]
    assert recovered["event"] == "job_recovered" and recovered["run_id"] == fixed[0].run_id
    assert recovered["status"] == "succeeded" and recovered["errors"] == 0
    assert recovered["summary"]["suspended"] == 7
    assert [d.status for d in deliveries(engine)] == ["sent", "sent"]


def test_concurrent_judges_on_two_engines_raise_each_event_once(
        engine: Engine, settings: Settings, db_url: str) -> None:
    """Several runners judging the same runs at the same moment (threads on two engines
    here; real runner processes in test_alert_processes.py)."""
    engines = [engine, make_engine(db_url)]
    try:
        def finished_run(status: RunStatus) -> int:
            now = utc_now()
            with engine.begin() as c:
                pk = c.execute(ops_runs.insert().values(
                    job_id=JOB, trigger="manual", status=str(status), started_by="t",
                    reference_time=now, params={}, created_at=now, started_at=now,
                    finished_at=now, errors=1 if status is RunStatus.FAILED else 0,
                )).inserted_primary_key
            assert pk is not None
            return int(pk[0])

        def judge_all(run_id: int) -> list[str | None]:
            barrier = threading.Barrier(8)
            got: list[str | None] = []

            def one(i: int) -> None:
                barrier.wait()
                got.append(alerts.run_ended(engines[i % 2], settings, run_id))

            threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return got

        older = finished_run(RunStatus.FAILED)
        newest = finished_run(RunStatus.FAILED)
        assert alerts.run_ended(engine, settings, older) is None  # a newer verdict exists
        got = judge_all(newest)
        assert sorted(map(str, got)) == ["None"] * 7 + ["job_failing"]
        assert judge_all(finished_run(RunStatus.FAILED)).count(None) == 8  # still failing
        got = judge_all(finished_run(RunStatus.SUCCEEDED))
        assert got.count("job_recovered") == 1 and got.count(None) == 7
        assert events(engine) == [("job_failing", JOB), ("job_recovered", JOB)]
    finally:
        engines[1].dispose()


def _run_row(engine: Engine, status: RunStatus, trigger: Trigger, attempt: int = 1) -> int:
    now = utc_now()
    with engine.begin() as c:
        pk = c.execute(ops_runs.insert().values(
            job_id=JOB, trigger=str(trigger), status=str(status), started_by="t",
            scheduled_for=now if trigger is Trigger.SCHEDULE else None, attempt=attempt,
            reference_time=now, params={}, created_at=now, finished_at=now,
        )).inserted_primary_key
    assert pk is not None
    return int(pk[0])


def test_what_counts_as_failing(engine: Engine, settings: Settings) -> None:
    # Skipped slots never fail a job; a slot's first interruption has its retry left.
    skipped = _run_row(engine, RunStatus.SKIPPED, Trigger.SCHEDULE)
    assert alerts.run_ended(engine, settings, skipped) is None
    first = _run_row(engine, RunStatus.INTERRUPTED, Trigger.SCHEDULE)
    assert alerts.run_ended(engine, settings, first) is None
    assert state(engine).alert_state == "ok"
    # ... until the runner decides it will not be retried.
    assert alerts.run_ended(engine, settings, first, retry_left=False) == "job_failing"
    assert alerts.run_ended(engine, settings,
                            _run_row(engine, RunStatus.SUCCEEDED, Trigger.MANUAL)) == "job_recovered"
    # A manual run's interruption and a retry's have no retry left.
    assert alerts.run_ended(engine, settings, _run_row(engine, RunStatus.INTERRUPTED,
                                                       Trigger.MANUAL)) == "job_failing"
    assert alerts.run_ended(engine, settings,
                            _run_row(engine, RunStatus.SUCCEEDED, Trigger.HTTP)) == "job_recovered"
    second = _run_row(engine, RunStatus.INTERRUPTED, Trigger.SCHEDULE, attempt=2)
    assert alerts.run_ended(engine, settings, second) == "job_failing"
    # A job with alerts = false keeps its state but raises nothing.
    quiet = replace(settings, jobs={**settings.jobs, JOB: replace(settings.job(JOB), alerts=False)})
    assert alerts.run_ended(engine, quiet, _run_row(engine, RunStatus.SUCCEEDED,
                                                    Trigger.MANUAL)) is None
    assert state(engine).alert_state == "ok"


def test_a_missed_slot_fails_a_job_that_was_ok(engine: Engine, settings: Settings) -> None:
    slots = [datetime(2026, 11, 27, h, tzinfo=UTC) for h in (1, 2, 3)]
    n = runs.record_missed(engine, JOB, slots, runner_id="r", started_by="runner@h",
                           reason="no runner fired it in time", settings=settings)
    assert n == 3
    assert events(engine) == [("job_failing", JOB)]
    with engine.connect() as c:
        payload = c.execute(select(ops_alerts.c.payload)).scalar_one()
    assert payload["status"] == "missed" and payload["scheduled_for"].startswith("2026-11-27T03")
    # Recording the same slots again (another runner) raises nothing.
    assert runs.record_missed(engine, JOB, slots, runner_id="r2", started_by="runner@h2",
                              reason="x", settings=settings) == 0
    assert len(events(engine)) == 1


def test_delivery_retries_500_503_then_200_with_growing_gaps(
        engine: Engine, settings: Settings) -> None:
    with receiver([500, 503, 200]) as rec:
        settings = with_targets(settings, rec.url(), backoff_base=0.4, poll_interval=0.05)
        bad_tenants(engine, 1)
        trigger(engine, settings)
        stop = threading.Event()
        deliverer = alerts.Deliverer(engine, settings, "runner-a", stop=stop)
        deliverer.start()
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and deliveries(engine)[0].status != "sent":
                time.sleep(0.05)
        finally:
            stop.set()
            deliverer.join(5)
        hits = list(rec.hits)
    assert len(hits) == 3
    gaps = [b.at - a.at for a, b in itertools.pairwise(hits)]
    assert gaps[0] >= 0.4 and gaps[1] >= 0.8 and gaps[1] > gaps[0], gaps
    row = deliveries(engine)[0]
    assert (row.status, row.attempts, row.last_error) == ("sent", 3, None)
    assert row.claimed_by is None


def test_other_4xx_is_dead_at_once_and_errors_never_quote_the_url(
        engine: Engine, settings: Settings) -> None:
    with receiver([404]) as rec, receiver([429]) as busy:
        down = receiver()  # started and stopped: nothing listens on its port any more
        with down as gone:
            dead_url = gone.url("/hooks/down/s3cr3t-path-token")
        settings = with_targets(settings, rec.url(), busy.url(), dead_url)
        bad_tenants(engine, 1)
        trigger(engine, settings)
        result = alerts.deliver_due(engine, settings, worker_id="w")
    assert (result.sent, result.retried, result.dead) == (0, 2, 1)
    rows = deliveries(engine)
    assert [(r.status, r.attempts) for r in rows] == [("dead", 1), ("pending", 1), ("pending", 1)]
    assert rows[0].last_error == "HTTP 404" and rows[1].last_error == "HTTP 429"
    assert "connection failed" in rows[2].last_error
    assert rows[1].next_attempt_at > utc_now()  # after the backoff
    shown = json.dumps([a.to_json() for a in alerts.list_alerts(engine)])
    assert "s3cr3t" not in shown and "/hooks" not in shown
    assert f"http://127.0.0.1:{rec.port}" in shown
    # Nothing due yet: the retries wait for their backoff.
    assert alerts.deliver_due(engine, settings, worker_id="w").outcomes == []


def test_eight_attempts_then_dead(engine: Engine, settings: Settings) -> None:
    with receiver([503] * 20) as rec:
        settings = with_targets(settings, rec.url(), backoff_base=0.01, backoff_max=0.01)
        bad_tenants(engine, 1)
        trigger(engine, settings)
        for _ in range(12):
            alerts.deliver_due(engine, settings, worker_id="w")
            time.sleep(0.03)
        assert len(rec.hits) == 8
    row = deliveries(engine)[0]
    assert (row.status, row.attempts, row.last_error) == ("dead", 8, "HTTP 503")


def test_backoff_doubles_up_to_five_minutes() -> None:
    cfg = load_settings(Overrides(), env={}).alerts
    waits = [alerts.backoff(cfg, n).total_seconds() for n in range(1, 10)]
    assert waits == [2, 4, 8, 16, 32, 64, 128, 256, 300]


def test_a_lease_held_by_a_dead_runner_passes_to_the_next(
        engine: Engine, settings: Settings) -> None:
    with receiver() as rec:
        settings = with_targets(settings, rec.url())
        bad_tenants(engine, 1)
        trigger(engine, settings)
        with engine.begin() as c:  # runner-a claimed it and died
            c.execute(update(ops_alert_deliveries).values(
                claimed_by="runner-a", claimed_until=utc_now() + timedelta(seconds=60)))
        assert alerts.deliver_due(engine, settings, worker_id="runner-b").outcomes == []
        later = utc_now() + timedelta(seconds=61)
        result = alerts.deliver_due(engine, settings, worker_id="runner-b", clock=lambda: later)
        assert result.sent == 1 and len(rec.hits) == 1


def test_a_target_that_never_answers_does_not_slow_the_run(
        engine: Engine, settings: Settings) -> None:
    with receiver(hang=30) as rec:
        settings = with_targets(settings, rec.url(), timeout=10.0, poll_interval=0.05)
        bad_tenants(engine, 1)
        stop = threading.Event()
        deliverer = alerts.Deliverer(engine, settings, "runner-a", stop=stop)
        deliverer.start()
        try:
            took = []
            for _ in range(2):
                started = time.monotonic()
                trigger(engine, settings)
                took.append(time.monotonic() - started)
            with engine.begin() as c:
                c.execute(update(tenants).values(email="owner@example.com"))
            started = time.monotonic()
            trigger(engine, settings)
            took.append(time.monotonic() - started)
            time.sleep(0.5)
            assert len(rec.hits) >= 1  # the deliverer is stuck in its POST meanwhile
        finally:
            stop.set()
    assert max(took) < 2, took
    assert [e for e, _ in events(engine)] == ["job_failing", "job_recovered"]


def test_slack_gets_its_own_form_and_labels_hide_the_path() -> None:
    payload = {"event": "job_failing", "text": "expiry-checker is failing"}
    assert json.loads(alerts.webhook_body("https://hooks.slack.com/services/T0/B0/xyz",
                                          payload)) == {"text": "expiry-checker is failing"}
    assert json.loads(alerts.webhook_body("https://example.com/h", payload)) == payload
    assert alerts.target_label("https://user:pw@hooks.slack.com/services/T0/B0/xyz?a=1") == \
        "https://hooks.slack.com"
    assert alerts.target_label("http://127.0.0.1:8080/x") == "http://127.0.0.1:8080"
    assert alerts.target_label("https://u:pa/ss@example.com/hook") == "https://example.com"
    assert alerts.target_label("https://example.com/p@q/secret") == "https://example.com"
    assert alerts.target_label("not a url") == "?"
    url = "https://example.com/hooks/abc123?token=zz"
    assert alerts.scrub(f"failed for {url} at /hooks/abc123", url) == \
        "failed for https://example.com at [redacted]"


def test_email_targets_go_through_the_outbox(engine: Engine, settings: Settings) -> None:
    settings = with_targets(settings, emails=("ops@example.com",))
    bad_tenants(engine, 1)
    trigger(engine, settings)
    result = alerts.deliver_due(engine, settings, worker_id="w")
    assert result.sent == 1
    with engine.connect() as c:
        mail = c.execute(select(ops_email_outbox).where(ops_email_outbox.c.kind == "alert")).one()
    assert mail.recipient == "ops@example.com" and mail.status == "pending"
    assert mail.subject.startswith("[StoreFlow Ops] expiry-checker is failing")
    assert "bad0" in mail.body_text and "bad0" in mail.body_html
    assert "\n" not in mail.subject
    # Delivered again (a second runner): the outbox key keeps it to one email.
    with engine.begin() as c:
        c.execute(update(ops_alert_deliveries).values(status="pending"))
    alerts.deliver_due(engine, settings, worker_id="w2")
    with engine.connect() as c:
        assert len(c.execute(select(ops_email_outbox.c.id)).all()) == 1


def test_overdue_fires_once_per_episode(engine: Engine, settings: Settings) -> None:
    cfg = replace(settings.job(JOB), overdue_after=timedelta(hours=2))  # daily at 00:00
    settings = replace(settings, jobs={**settings.jobs, JOB: cfg})
    t0 = datetime(2026, 11, 27, 0, 5, tzinfo=UTC)
    with engine.begin() as c:
        c.execute(ops_runs.insert().values(
            job_id=JOB, trigger="schedule", scheduled_for=t0.replace(minute=0),
            status="succeeded", started_by="r", reference_time=t0, params={}, created_at=t0,
            started_at=t0, finished_at=t0))
        c.execute(ops_job_state.insert().values(job_id=JOB, paused=False))
    # Day + 2 h after the last success: not yet; a minute more: overdue, once.
    assert alerts.check_overdue(engine, settings, t0 + timedelta(hours=26)) == []
    assert alerts.check_overdue(engine, settings, t0 + timedelta(hours=26, minutes=1)) == [JOB]
    assert alerts.check_overdue(engine, settings, t0 + timedelta(hours=30)) == []
    assert events(engine) == [("job_overdue", JOB)]
    # Overdue since the job became overdue, not since the check that noticed it.
    assert as_utc(state(engine).overdue_since) == t0 + timedelta(hours=26)
    assert state(engine).alert_state == "ok"  # overdue is not failing
    # Paused jobs are never overdue; a success ends the episode.
    runs.set_paused(engine, JOB, True, by="t", now=t0)
    assert alerts.check_overdue(engine, settings, t0 + timedelta(days=9)) == []
    runs.set_paused(engine, JOB, False, by="t", now=t0 + timedelta(days=1))
    ok = _run_row(engine, RunStatus.SUCCEEDED, Trigger.MANUAL)
    assert alerts.run_ended(engine, settings, ok) is None
    assert state(engine).overdue_since is None
    assert events(engine) == [("job_overdue", JOB)]


def test_alerts_config_from_file_and_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "schedules.toml"
    cfg.write_text('[alerts]\nwebhooks = ["https://example.com/hooks/abc"]\n'
                   'emails = ["Ops@Example.com"]\nwebhook_secret = "s"\noverdue_after = "2h"\n'
                   '[jobs.cleanup]\nalerts = false\noverdue_after = "6h"\n')
    s = load_settings(Overrides(config=str(cfg)), env={})
    assert s.alerts.webhooks == ("https://example.com/hooks/abc",)
    assert s.alerts.emails == ("Ops@example.com",)
    assert s.alerts.webhook_secret == "s" and s.alerts.overdue_after == timedelta(hours=2)
    assert s.job("cleanup").alerts is False
    assert s.job("cleanup").overdue_after == timedelta(hours=6)
    assert s.job(JOB).alerts is True and s.job(JOB).overdue_after is None
    env = {"STOREFLOW_ALERT_WEBHOOKS": "https://a.example/x, https://b.example/y",
           "STOREFLOW_WEBHOOK_SECRET": "from-env"}
    s = load_settings(Overrides(config=str(cfg)), env=env)
    assert s.alerts.webhooks == ("https://a.example/x", "https://b.example/y")
    assert s.alerts.webhook_secret == "from-env"
    assert "from-env" not in repr(s) and "a.example/x" not in repr(s)

    cfg.write_text('[alerts]\nwebhooks = ["ftp://example.com/very-secret-path"]\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(Overrides(config=str(cfg)), env={})
    assert "alerts.webhooks[0]" in exc.value.message
    assert "very-secret-path" not in exc.value.message


def test_alerts_test_and_listing_on_the_cli(engine: Engine, db_url: str,
                                            env: dict[str, str], tmp_path: Path,
                                            cli_here: CliCall) -> None:
    with receiver() as ok, receiver([500]) as broken:
        cfg = tmp_path / "schedules.toml"
        cfg.write_text(f'[alerts]\nwebhooks = ["{ok.url()}", "{broken.url("/x/s3cr3t-two")}"]\n'
                       'emails = ["ops@example.com"]\n')

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return cli_here(env, *args, cwd=tmp_path)

        done = cli("alerts", "test")
        assert done.returncode == 1, done.stderr
        lines = done.stdout.splitlines()
        assert lines == [f"http://127.0.0.1:{ok.port}: ok",
                         f"http://127.0.0.1:{broken.port}: FAILED (HTTP 500)",
                         "ops@example.com: ok"]
        assert len(ok.hits) == 1 and len(broken.hits) == 1  # one attempt each
        assert json.loads(ok.hits[0].body)["event"] == "alert_test"
        listed = cli("alerts", "--json")
        assert listed.returncode == 0, listed.stderr
        doc = json.loads(listed.stdout)
        assert [(a["event"], a["job"], a["run_id"]) for a in doc] == [("alert_test", None, None)]
        assert set(doc[0]) == {"id", "event", "job", "run_id", "at", "deliveries"}
        assert [(d["target"], d["status"], d["attempts"]) for d in doc[0]["deliveries"]] == [
            (f"http://127.0.0.1:{ok.port}", "sent", 1),
            (f"http://127.0.0.1:{broken.port}", "dead", 1),
            ("ops@example.com", "sent", 1)]
        text = cli("alerts")
        assert "alert_test" in text.stdout
        for out in (done, listed, text):
            assert "s3cr3t" not in out.stdout + out.stderr

        cfg.write_text("")
        assert cli("alerts", "test").returncode == 2


def test_a_hanging_target_does_not_hold_up_another(engine: Engine, settings: Settings) -> None:
    with receiver(hang=30) as stuck, receiver() as rec:
        settings = with_targets(settings, stuck.url(), rec.url(), timeout=3.0)
        bad_tenants(engine, 1)
        trigger(engine, settings)
        started = time.monotonic()
        done = threading.Thread(target=alerts.deliver_due, args=(engine, settings),
                                kwargs={"worker_id": "w"}, daemon=True)
        done.start()
        deadline = started + 10
        while not rec.hits and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rec.hits and rec.hits[0].at - started < 2.0
        done.join(15)
    rows = deliveries(engine)
    assert [(r.status, r.last_error) for r in rows] == [("pending", "timed out after 3 s"),
                                                        ("sent", None)]

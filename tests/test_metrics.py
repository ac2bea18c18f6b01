"""Prometheus metrics and the never-decreasing runs counter, on SQLite and PostgreSQL.

The runs counter (ops_run_counts) is bumped wherever a run reaches a final status; /metrics
is scraped over real HTTP and parsed with prometheus_client's own parser, and its values
are compared with the history in ops_runs."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Engine

from jobs import runs
from jobs.db import (
    ops_alert_deliveries,
    ops_alerts,
    ops_email_outbox,
    ops_job_state,
    ops_runs,
)
from jobs.metrics import exposition, registry
from jobs.presence import Presence
from jobs.registry import JOBS
from jobs.settings import JOB_IDS, Settings
from jobs.timeutil import utc_now
from tests.conftest import start
from tests.factories import add_tenant
from tests.test_http import TOKEN, Served, State
from tests.test_run_counts import history_counts

FAMILIES = {
    "storeflow_job_runs": "counter",
    "storeflow_job_last_success_timestamp_seconds": "gauge",
    "storeflow_job_last_duration_seconds": "gauge",
    "storeflow_job_next_run_timestamp_seconds": "gauge",
    "storeflow_job_running": "gauge",
    "storeflow_job_paused": "gauge",
    "storeflow_job_failing": "gauge",
    "storeflow_job_overdue": "gauge",
    "storeflow_outbox_emails": "gauge",
    "storeflow_alert_deliveries": "gauge",
    "storeflow_runners_alive": "gauge",
}
PER_JOB = [name for name in FAMILIES if name.startswith("storeflow_job_")]


def parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """family name -> {sorted label pairs: value}; a counter's samples are its _total."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        assert FAMILIES.get(fam.name) == fam.type, (fam.name, fam.type)
        values = out.setdefault(fam.name, {})
        for s in fam.samples:
            assert set(s.labels) <= {"job", "status"}, s  # never a tenant
            if fam.type == "counter":
                assert s.name == fam.name + "_total", s.name
            values[tuple(sorted(s.labels.items()))] = s.value
    return out


def by_job(family: dict[tuple[tuple[str, str], ...], float]) -> dict[str, float]:
    return {dict(k)["job"]: v for k, v in family.items()}


@pytest.fixture
def presence(engine: Engine) -> Iterator[Presence]:
    with Presence(engine, "runner", clock=utc_now, interval=1.0) as p:
        yield p


@pytest.fixture
def served(engine: Engine, settings: Settings, presence: Presence) -> Iterator[Served]:
    import threading

    s = Served(State(engine, replace(settings, cron_token=TOKEN), presence.id, threading.Event()))
    yield s
    s.close()


def get(url: str) -> tuple[int, str, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


# --- the counter -------------------------------------------------------------------------------


def test_the_counter_never_goes_down_when_runs_are_deleted(engine: Engine, settings: Settings,
                                                           presence: Presence) -> None:
    now = utc_now()
    for job_id in JOB_IDS:
        runs.execute(engine, settings, job_id, now=now, started_by="t")
    reg = registry(engine, settings)
    before = parse(exposition(reg).decode())["storeflow_job_runs"]
    assert sum(before.values()) == 4
    with engine.begin() as c:  # what pruning does to old history
        c.execute(delete(ops_runs))
    after = parse(exposition(reg).decode())["storeflow_job_runs"]
    assert after == before
    runs.execute(engine, settings, "cleanup", now=now, started_by="t")
    again = parse(exposition(reg).decode())["storeflow_job_runs"]
    key = (("job", "cleanup"), ("status", "succeeded"))
    assert again[key] == before[key] + 1


# --- /metrics ----------------------------------------------------------------------------------


def _history(engine: Engine, settings: Settings, presence: Presence) -> int:
    """Runs of every job with every kind of end; returns the run left running."""
    now = utc_now()
    add_tenant(engine, expire_date=now - timedelta(days=30))
    for job_id in JOB_IDS:
        runs.execute(engine, settings, job_id, now=now, started_by="t")
    add_tenant(engine, email="not an address", expire_date=now - timedelta(days=30))
    runs.execute(engine, settings, "expiry-checker", now=now, started_by="t")  # partial
    slot = now.replace(microsecond=0) - timedelta(hours=1)
    held = runs.claim_slot(engine, settings, "cleanup", slot, runner_id=presence.id,
                           started_by="t")
    runs.claim_slot(engine, settings, "cleanup", slot + timedelta(minutes=1),
                    runner_id=presence.id, started_by="t")  # skipped
    runs.record_missed(engine, "payment-reminders", [slot], runner_id=presence.id,
                       started_by="t", reason="x")
    runs.set_paused(engine, "analytics-aggregate", True, by="t", now=now)
    with engine.begin() as c:
        c.execute(update(ops_job_state).where(ops_job_state.c.job_id == "expiry-checker")
                  .values(alert_state="failing", failing_since=now))
        c.execute(update(ops_job_state).where(ops_job_state.c.job_id == "payment-reminders")
                  .values(overdue_since=now))
        alert = c.execute(ops_alerts.insert().values(
            key="k", event="job_failing", job_id="expiry-checker", at=now, payload={}
        )).inserted_primary_key[0]
        for i, status in enumerate(("sent", "dead", "dead")):
            c.execute(ops_alert_deliveries.insert().values(
                alert_id=alert, kind="webhook", target=f"https://h/{i}", target_label="https://h",
                status=status))
    assert held.run_id is not None
    return held.run_id


def test_metrics_parse_have_every_family_and_match_the_history(
        served: Served, engine: Engine, settings: Settings, presence: Presence) -> None:
    running = _history(engine, settings, presence)
    before = utc_now()
    status, text, headers = get(served.url + "/metrics")  # no token
    after = utc_now()
    assert status == 200, text
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    fams = parse(text)
    assert set(fams) == set(FAMILIES)
    for name in PER_JOB:
        if name != "storeflow_job_runs":
            assert set(by_job(fams[name])) == set(JOB_IDS), name

    # runs_total: every job and final status, the history's counts, zeros included.
    hist = history_counts(engine)
    runs_total = {(dict(k)["job"], dict(k)["status"]): v for k, v in
                  fams["storeflow_job_runs"].items()}
    assert {k for k, v in runs_total.items() if v} == set(hist)
    assert all(runs_total[k] == n for k, n in hist.items())
    assert {s for _, s in runs_total} >= {"succeeded", "partial", "failed", "timed_out", "interrupted",
                                          "skipped", "missed"}

    with engine.connect() as c:
        rows = c.execute(select(ops_runs).order_by(ops_runs.c.id)).all()
        outbox = dict(c.execute(select(ops_email_outbox.c.status, func.count())
                                .group_by(ops_email_outbox.c.status)).all())
    for job_id in JOB_IDS:
        mine = [r for r in rows if r.job_id == job_id]
        ok = [r.finished_at for r in mine if r.status == "succeeded"]
        if ok:
            assert by_job(fams["storeflow_job_last_success_timestamp_seconds"])[job_id] == \
                pytest.approx(max(ok).timestamp(), abs=1e-3)
        ran = [r for r in mine if r.status not in ("running", "skipped", "missed")]
        assert by_job(fams["storeflow_job_last_duration_seconds"])[job_id] == pytest.approx(
            (ran[-1].finished_at - ran[-1].started_at).total_seconds(), abs=1e-3)
        sched = settings.job(job_id).schedule
        nxt = by_job(fams["storeflow_job_next_run_timestamp_seconds"])[job_id]
        assert sched.next_slots(before, 1)[0].timestamp() <= nxt
        assert nxt <= sched.next_slots(after, 1)[0].timestamp()
    assert outbox, "the expiry notices are in the outbox"
    assert {dict(k)["status"]: v for k, v in fams["storeflow_outbox_emails"].items()
            if v} == outbox
    assert by_job(fams["storeflow_job_running"]) == {
        j: float(j == "cleanup") for j in JOB_IDS}, running
    assert by_job(fams["storeflow_job_paused"]) == {
        j: float(j == "analytics-aggregate") for j in JOB_IDS}
    assert by_job(fams["storeflow_job_failing"]) == {
        j: float(j == "expiry-checker") for j in JOB_IDS}
    assert by_job(fams["storeflow_job_overdue"]) == {
        j: float(j == "payment-reminders") for j in JOB_IDS}
    assert {dict(k)["status"]: v for k, v in fams["storeflow_alert_deliveries"].items()} == {
        "pending": 0, "sent": 1, "dead": 2}
    assert fams["storeflow_runners_alive"] == {(): 1.0}
    # No tenant's id, name or email reaches a scrape.
    with engine.connect() as c:
        from jobs.db import tenants

        for tid, name, email in c.execute(select(tenants.c.id, tenants.c.name, tenants.c.email)):
            assert tid not in text and name not in text and email not in text


def test_every_runner_reports_the_same_figures(engine: Engine, settings: Settings,
                                               presence: Presence) -> None:
    _history(engine, settings, presence)
    fixed = utc_now()
    first = exposition(registry(engine, settings, clock=lambda: fixed))
    # Another process with another configuration: the figures come from the database and
    # the live runner's recorded schedules, not from the scraper's own settings.
    from jobs.cron import CronSchedule
    from jobs.runner_schedules import record_schedules

    record_schedules(engine, presence.id, settings)
    other = replace(settings, jobs={
        j: replace(c, schedule=CronSchedule.parse("*/5 * * * *")) for j, c in
        settings.jobs.items()})
    second = exposition(registry(engine, other, clock=lambda: fixed))
    assert first == second


def _scrape_now(engine: Engine, settings: Settings, at: datetime) -> dict[str, Any]:
    return parse(exposition(registry(engine, settings, clock=lambda: at)).decode())


def test_metrics_of_an_empty_database(engine: Engine, settings: Settings) -> None:
    fams = _scrape_now(engine, settings, utc_now())
    assert set(fams) == set(FAMILIES)
    assert not any(fams["storeflow_job_runs"].values())
    assert fams["storeflow_job_last_success_timestamp_seconds"] == {}
    assert set(by_job(fams["storeflow_job_paused"])) == set(JOB_IDS)
    assert fams["storeflow_runners_alive"] == {(): 0.0}


# --- a real runner -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow(seconds=2)
def test_run_metrics_serves_metrics_and_healthz_alone(engine: Engine, db_url: str,
                                                       env: dict[str, str],
                                                       tmp_path: Path) -> None:
    config = tmp_path / "schedules.toml"
    config.write_text('[jobs.expiry-checker]\nschedule = "* * * * * */2"\n\n'
                      "[runner]\nheartbeat_interval = 0.5\nstale_after = 3\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "runner.log"
    with log_path.open("w") as log_file:
        # No CRON_SECRET_TOKEN: the metrics face needs none.
        proc = start(["--config", str(config), "run", "--metrics", f"127.0.0.1:{port}",
                      "--log-format", "json"], env, tmp_path, stderr=log_file)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    status, body, _ = get(base + "/healthz")
                    if status == 200 and history_counts(engine):
                        break
                except OSError:
                    pass
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            # the contract of /healthz without a token, and nothing more: no token exists here
            health = json.loads(body)
            assert set(health) == {"status", "runner_id", "last_tick_age_s"}
            assert health["status"] == "ok"
            req = urllib.request.Request(base + "/healthz",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert set(json.loads(resp.read())) == set(health)

            status, text, headers = get(base + "/metrics")
            assert status == 200 and headers["Content-Type"].startswith("text/plain")
            fams = parse(text)
            assert set(fams) == set(FAMILIES)
            assert fams["storeflow_runners_alive"] == {(): 1.0}
            total = {dict(k)["status"]: v for k, v in fams["storeflow_job_runs"].items()
                     if dict(k)["job"] == "expiry-checker"}
            assert total["succeeded"] >= 1

            for path in [*(spec.endpoint for spec in JOBS.values()), "/"]:
                for method in ("GET", "POST"):
                    req = urllib.request.Request(base + path, method=method,
                                                 headers={"Authorization": f"Bearer {TOKEN}"})
                    with pytest.raises(urllib.error.HTTPError) as err:
                        urllib.request.urlopen(req, timeout=30)
                    assert err.value.code == 404, (path, method)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
    events = [json.loads(line) for line in log_path.read_text().splitlines()]
    listening = [e for e in events if e["event"] == "metrics-listening"]
    assert listening and listening[0]["port"] == port
    with engine.connect() as c:  # nothing but the slots ran: no trigger got through
        assert {r for r, in c.execute(select(ops_runs.c.trigger))} == {"schedule"}


def test_sent_emails_are_counted_again_after_their_ttl(engine: Engine, settings: Settings) -> None:
    from jobs.metrics import SentCount, read_figures

    def add_email(key: str, status: str) -> None:
        with engine.begin() as c:
            c.execute(ops_email_outbox.insert().values(
                idempotency_key=key, kind="expiry", recipient="a@example.com", subject="s",
                body_text="t", body_html="h", status=status, created_at=utc_now()))

    add_email("a", "sent")
    sent = SentCount(ttl=3600)
    assert read_figures(engine, settings, utc_now(), sent=sent).outbox == {"sent": 1}
    add_email("b", "sent")
    add_email("c", "pending")
    add_email("d", "dead")
    # within the TTL the sent count stands; every other status is exact at each scrape
    fig = read_figures(engine, settings, utc_now(), sent=sent)
    assert fig.outbox == {"sent": 1, "pending": 1, "dead": 1}
    sent.ttl = 0
    fig = read_figures(engine, settings, utc_now(), sent=sent)
    assert fig.outbox == {"sent": 2, "pending": 1, "dead": 1}

"""The audit trail: a change and its record commit together; reads are not recorded."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Engine

from jobs import runs
from jobs.audit import AuditAction, recent
from jobs.db import ops_job_state, ops_runs, transaction
from jobs.errors import JobRunningError
from jobs.presence import who_am_i
from jobs.settings import Settings
from tests.conftest import CliCall

NOW = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)


def test_pause_and_resume_are_recorded_newest_first_with_actor_and_reason(engine: Engine) -> None:
    assert runs.set_paused(engine, "cleanup", True, by="ops@laptop", now=NOW,
                           reason="disk migration")
    # Pausing a paused job changes nothing, so records nothing.
    assert not runs.set_paused(engine, "cleanup", True, by="ops@laptop", now=NOW)
    assert runs.set_paused(engine, "cleanup", False, by="ana@desk",
                           now=NOW + timedelta(hours=1))

    entries = recent(engine)
    assert [(e.action, e.actor, e.job, e.reason) for e in entries] == [
        (AuditAction.RESUME, "ana@desk", "cleanup", None),
        (AuditAction.PAUSE, "ops@laptop", "cleanup", "disk migration"),
    ]
    assert entries[1].at == NOW
    assert entries[0].as_json()["action"] == "resume"


def test_a_paused_job_says_who_paused_it_when_and_why(engine: Engine) -> None:
    runs.set_paused(engine, "expiry-checker", True, by="ops@laptop", now=NOW, reason="billing bug")
    state = runs.job_states(engine)["expiry-checker"]
    assert (state.paused, state.paused_by, state.paused_at, state.paused_reason) == (
        True, "ops@laptop", NOW, "billing bug")


# --- the CLI, as real processes ----------------------------------------------------------------


def test_the_cli_audits_pause_trigger_resume_with_actor_and_reason_not_previews(
        engine: Engine, env: dict[str, str], cli_here: CliCall) -> None:
    me = who_am_i()
    assert cli_here(env, "pause", "cleanup", "--reason", "disk migration").returncode == 0
    paused = {r["job"]: r for r in json.loads(cli_here(env, "jobs", "--json").stdout)}
    assert (paused["cleanup"]["paused_by"], paused["cleanup"]["paused_reason"]) == (
        me, "disk migration")
    assert datetime.fromisoformat(paused["cleanup"]["paused_at"]).tzinfo is not None
    assert paused["expiry-checker"]["paused_by"] is None
    assert paused["expiry-checker"]["paused_at"] is None
    assert paused["expiry-checker"]["paused_reason"] is None
    plain = cli_here(env, "jobs").stdout
    assert f"cleanup: paused by {me} " in plain and plain.rstrip().endswith(": disk migration")

    # Previews are reads: not audited, reason or not.
    assert cli_here(env, "preview", "expiry-checker").returncode == 0
    assert cli_here(env, "trigger", "expiry-checker", "--dry-run", "--reason", "just looking"
               ).returncode == 0
    run = cli_here(env, "trigger", "expiry-checker", "--reason", "tenant asked", "--json")
    assert run.returncode == 0, run.stderr
    run_id = json.loads(run.stdout)["run_id"]
    assert cli_here(env, "resume", "cleanup", "--reason", "migration done").returncode == 0
    assert cli_here(env, "resume", "cleanup").returncode == 0  # nothing changed: not audited

    listed = cli_here(env, "audit", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    assert [(e["action"], e["actor"], e["job"], e["run_id"], e["reason"]) for e in entries] == [
        ("resume", me, "cleanup", None, "migration done"),
        ("trigger", me, "expiry-checker", run_id, "tenant asked"),
        ("pause", me, "cleanup", None, "disk migration"),
    ]
    assert set(entries[0]) == {"id", "at", "actor", "action", "job", "run_id", "reason",
                               "detail"}
    assert entries[1]["detail"] == "manual"
    ats = [datetime.fromisoformat(e["at"]) for e in entries]
    assert ats == sorted(ats, reverse=True)

    limited = json.loads(cli_here(env, "audit", "--limit", "1", "--json").stdout)
    assert [e["action"] for e in limited] == ["resume"]
    text = cli_here(env, "audit").stdout.splitlines()
    assert text[0].split() == ["ID", "AT", "ACTOR", "ACTION", "JOB", "RUN", "REASON", "DETAIL"]
    assert "tenant asked" in text[2] and str(run_id) in text[2]
    assert cli_here(env, "audit", "--limit", "0").returncode == 2


def test_a_refused_trigger_leaves_no_audit_entry(engine: Engine, settings: Settings) -> None:
    runs.execute(engine, settings, "expiry-checker", now=NOW, started_by="ops@laptop",
                 clock=lambda: NOW, reason="first")
    first = runs.history(engine)[0].run_id
    with transaction(engine) as c:  # a run of another process holds the job's lock
        c.execute(ops_job_state.update().where(ops_job_state.c.job_id == "expiry-checker")
                  .values(active_run_id=first))
        c.execute(ops_runs.update().values(status="running"))
    with pytest.raises(JobRunningError):
        runs.execute(engine, settings, "expiry-checker", now=NOW, started_by="ops@laptop",
                     clock=lambda: NOW, reason="second")
    assert [e.reason for e in recent(engine)] == ["first"]

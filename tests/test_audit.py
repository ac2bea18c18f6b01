"""The audit trail: a change and its record commit together; reads are not recorded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine

from jobs import runs
from jobs.audit import AuditAction, recent

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

"""What a reload decides, driven synchronously with an injected clock on both databases
(the real process and its signal are in test_reload.py): a changed schedule and a job
enabled again count from the reload, a refused file changes nothing, and the sections set
at start stay as they were."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from jobs import runs
from jobs.audit import AuditAction, recent
from jobs.config_diff import diff_settings
from jobs.db import ops_job_state, ops_runner_schedules
from jobs.runner_schedules import record_schedules
from jobs.settings import Overrides, Settings, load_settings
from tests.test_scheduler import JOB, Harness, harness, harnesses, job_settings, slot_rows, utc

__all__ = ["harnesses"]  # the fixture


def reload_to(h: Harness, settings: Settings, at: datetime) -> None:
    h.runner.state.load_settings = lambda: settings
    h.clock.set(at)
    h.runner.reload(h.clock.now)


def test_a_changed_schedule_and_a_job_enabled_again_count_from_the_reload(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    hourly = job_settings(settings, "0 * * * *")
    h = harness(harnesses, engine, hourly, utc(2026, 11, 28, 12, 3))
    h.tick(utc(2026, 11, 28, 12, 3), all_jobs=True)
    assert h.drive(utc(2026, 11, 28, 14, 35)) == [utc(2026, 11, 28, 13), utc(2026, 11, 28, 14)]

    # Every 10 minutes from 14:35: 14:40 is the first slot; 14:10-14:30 were never slots.
    reload_to(h, job_settings(settings, "*/10 * * * *"), utc(2026, 11, 28, 14, 35))
    assert h.drive(utc(2026, 11, 28, 15, 0)) == [utc(2026, 11, 28, 14, 40),
                                                utc(2026, 11, 28, 14, 50), utc(2026, 11, 28, 15)]

    # Disabled, then enabled again three hours later: no catch-up, no missed slots.
    off = job_settings(settings, "*/10 * * * *")
    off = replace(off, jobs={**off.jobs, JOB: replace(off.job(JOB), enabled=False)})
    reload_to(h, off, utc(2026, 11, 28, 15, 5))
    assert h.runner.scheduler.next_wake() is None
    reload_to(h, job_settings(settings, "*/10 * * * *"), utc(2026, 11, 28, 18, 1))
    assert h.drive(utc(2026, 11, 28, 18, 20)) == [utc(2026, 11, 28, 18, 10),
                                                 utc(2026, 11, 28, 18, 20)]

    assert {status for _, _, status in slot_rows(engine)} == {"succeeded"}
    assert not h.events("slots-missed")
    entries = [e for e in recent(engine) if e.action is AuditAction.RELOAD]
    assert [e.at for e in entries] == [utc(2026, 11, 28, 18, 1), utc(2026, 11, 28, 15, 5),
                                       utc(2026, 11, 28, 14, 35)]  # newest first
    assert entries[1].detail is not None and entries[1].detail.endswith(
        f"{JOB}: enabled true -> false")
    assert {e.actor for e in entries} == {f"runner:{h.runner.state.runner_id}"}


def test_a_refused_file_changes_nothing(engine: Engine, settings: Settings, env: dict[str, str],
                                        harnesses: list[Harness], tmp_path: Path) -> None:
    every5 = job_settings(settings, "*/5 * * * *")
    h = harness(harnesses, engine, every5, utc(2026, 11, 28, 12, 3))
    h.tick(utc(2026, 11, 28, 12, 3), all_jobs=True)
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[jobs.{JOB}]\nschedule = "*/5 * * * *"\ntimezone = "Mars/Olympus"\n')
    scheduler = h.runner.scheduler
    h.runner.state.load_settings = lambda: load_settings(Overrides(str(bad)), env=env)

    assert h.runner.reload(utc(2026, 11, 28, 12, 4)) is None

    assert h.runner.scheduler is scheduler and h.runner.state.settings is every5
    assert [e["event"] for e in h.events()] == ["reload-refused"]
    refused = h.events("reload-refused")[0]
    assert (refused["file"], refused["key"]) == (str(bad), f"jobs.{JOB}.timezone")
    assert "Mars/Olympus" in refused["reason"]
    assert h.drive(utc(2026, 11, 28, 12, 10)) == [utc(2026, 11, 28, 12, 5),
                                                 utc(2026, 11, 28, 12, 10)]
    assert not [e for e in recent(engine) if e.action is AuditAction.RELOAD]


def test_runner_and_alerts_sections_wait_for_a_restart(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    daily = job_settings(settings, "@daily")
    h = harness(harnesses, engine, daily, utc(2026, 11, 28, 12, 3))
    new = replace(daily, runner=replace(daily.runner, stale_after=90.0),
                  outbox=replace(daily.outbox, send_interval=5))
    reload_to(h, new, utc(2026, 11, 28, 12, 4))

    state = h.runner.state
    assert state.settings.runner == daily.runner  # kept until the next start
    assert state.settings.outbox.send_interval == 5  # applied
    reloaded = h.events("config-reloaded")[0]
    assert reloaded["level"] == "warning" and reloaded["restart_needed"] == ["runner"]
    assert reloaded["sections"] == ["outbox", "runner"] and reloaded["changed"] == {}
    entry = next(e for e in recent(engine) if e.action is AuditAction.RELOAD)
    assert entry.detail is not None and entry.detail.endswith(
        "[outbox] changed; [runner] changed (needs a restart: [runner])")


def test_the_diff_names_secret_keys_without_quoting_them(settings: Settings) -> None:
    job = settings.job("cleanup")
    new = replace(settings, jobs={**settings.jobs, "cleanup": replace(
        job, ping_url="https://hc.example/ping/secret-uuid", batch_size=100)})
    changes = diff_settings(settings, new)
    assert changes.jobs == {"cleanup": ["batch_size", "ping_url"]}
    assert changes.describe() == "cleanup: batch_size 5000 -> 100, ping_url changed"
    assert diff_settings(settings, settings).describe() == "no changes"


def test_a_reload_that_cannot_be_recorded_is_not_applied(
        engine: Engine, settings: Settings, harnesses: list[Harness]) -> None:
    """The schedules on record, the schedule change and the audit entry are one
    transaction: when the entry cannot be written, none is, and nothing changes."""
    daily = job_settings(settings, "@daily")
    h = harness(harnesses, engine, daily, utc(2026, 11, 28, 12, 3))
    record_schedules(engine, h.runner.state.runner_id, daily)
    runs.note_schedules(engine, daily, utc(2026, 11, 28, 12, 3))
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE ops_audit"))

    reload_to(h, job_settings(settings, "@hourly"), utc(2026, 11, 28, 12, 4))

    assert h.runner.state.settings is daily
    assert h.runner.scheduler.jobs[JOB].schedule.expression == "@daily"
    failed = h.events("reload-failed")
    assert len(failed) == 1 and "ops_audit" in failed[0]["error"]
    with engine.connect() as conn:
        recorded = conn.execute(select(ops_runner_schedules.c.schedule).where(
            ops_runner_schedules.c.job_id == JOB)).scalars().all()
        key = conn.execute(select(ops_job_state.c.schedule_key).where(
            ops_job_state.c.job_id == JOB)).scalar_one()
    assert recorded == ["@daily"] and key == "@daily UTC"

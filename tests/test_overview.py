"""The view model every face reads (jobs.overview): one word for whether a job fires, and
the facts the CLI's `jobs` and `status` and the console's jobs screen all show."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert
from sqlalchemy.engine import Engine

from jobs import runs
from jobs.db import ops_runners, ops_runs
from jobs.overview import load_overview, schedule_state
from jobs.settings import Overrides, load_settings

NOW = datetime(2026, 11, 28, 10, 30, tzinfo=UTC)


def test_one_word_for_whether_a_job_fires() -> None:
    assert schedule_state(enabled=True, paused=False) == "active"
    assert schedule_state(enabled=True, paused=True) == "paused"
    assert schedule_state(enabled=False, paused=False) == "disabled"
    assert schedule_state(enabled=False, paused=True) == "disabled"  # the config wins


def test_each_job_as_the_faces_show_it(engine: Engine, tmp_path: Path) -> None:
    config = tmp_path / "off.toml"
    config.write_text("[jobs.payment-reminders]\nenabled = false\n")
    settings = load_settings(Overrides(config=str(config)), env={}, cwd=tmp_path)
    runs.set_paused(engine, "cleanup", True, by="ops@laptop", now=NOW)
    with engine.begin() as c:
        for rid, kind, beat in (("runner-a", "runner", NOW), ("cli-b", "cli", NOW),
                                ("runner-dead", "runner", NOW - timedelta(hours=1))):
            c.execute(insert(ops_runners).values(id=rid, kind=kind, host="h", pid=1,
                                                 started_at=NOW - timedelta(days=1),
                                                 heartbeat_at=beat))
        base = {"trigger": "schedule", "attempt": 1, "started_by": "r", "params": {},
                "reference_time": NOW, "created_at": NOW, "started_at": NOW, "finished_at": None,
                "runner_id": None}
        c.execute(insert(ops_runs), [
            {**base, "job_id": "expiry-checker", "status": "succeeded",
             "scheduled_for": NOW - timedelta(hours=2), "finished_at": NOW, "runner_id": "runner-a"},
            {**base, "job_id": "expiry-checker", "status": "running", "runner_id": "runner-a",
             "scheduled_for": NOW - timedelta(hours=1)},
            {**base, "job_id": "analytics-aggregate", "status": "running",
             "runner_id": "runner-dead", "scheduled_for": NOW - timedelta(hours=3)},
        ])

    overview = load_overview(engine, settings, None, NOW, recent=0, with_outbox=False)
    views = {v.job_id: v for v in overview.jobs}
    assert [v.state for v in overview.jobs] == ["active", "disabled", "active", "paused"]
    assert views["payment-reminders"].next_slots(NOW, 3) == []
    assert views["cleanup"].next_slots(NOW, 3) == []
    assert views["expiry-checker"].next_slots(NOW, 2) == [
        datetime(2026, 11, 29, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC)]
    expiry, analytics = views["expiry-checker"], views["analytics-aggregate"]
    # The last run is the newest that ran, a running one included.
    assert expiry.last_run is not None and expiry.last_run.run_id == 2
    assert expiry.running is not None and not expiry.is_stale(expiry.running)
    assert analytics.running is not None and analytics.is_stale(analytics.running)
    assert overview.recent == () and overview.outbox_counts is None
    assert [r.id for r in overview.runners] == ["runner-a", "runner-dead"]
    assert overview.runner_alive and [r.id for r in overview.alive_runners] == ["runner-a"]

    everyone = load_overview(engine, settings, None, NOW, kinds=("runner", "console", "cli"))
    assert {r.id for r in everyone.runners} == {"runner-a", "cli-b", "runner-dead"}
    assert [r.id for r in everyone.alive_runners] == ["runner-a"]  # a CLI fires no slots
    assert len(everyone.recent) == 3 and everyone.outbox_counts == {}


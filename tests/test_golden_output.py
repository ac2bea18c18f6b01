"""Golden output: the text of `jobs`, `history` and `show` for fixed data, a fixed `--now`
and a fixed wall clock, compared line for line with a file under tests/golden/. Any change
in what the CLI prints for people shows up as a diff of that file; the same files serve
both backends, so the text cannot depend on the database either.

After a deliberate change, write the files again and read the diff before committing:

    STOREFLOW_UPDATE_GOLDEN=1 python -m pytest tests/test_golden_output.py -p no:randomly
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.engine import Engine

from jobs import runs
from jobs.db import ops_run_items, ops_runners, ops_runs
from tests.conftest import in_process_cli
from tests.factories import add_tenant

GOLDEN = Path(__file__).with_name("golden")
UPDATE = os.environ.get("STOREFLOW_UPDATE_GOLDEN") == "1"

NOW_ARG = "2026-11-28T10:30:00Z"  # --now
WALL = datetime(2026, 11, 28, 10, 30, 5, tzinfo=UTC)  # the real clock, held still
DEAD = "runner-ops-2-77-dead0000"  # a runner that stopped heartbeating mid-run
ESC_NAME = "Blue \x1b[31mHarbor\x1b[0m Books"  # a name that tries to colour the terminal


def _at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, second, tzinfo=UTC)


def _seed(engine: Engine) -> None:
    """Runs of every outcome: quick and long (650 s, the case that once printed two ways),
    with and without summaries, items with an error, a missed slot, a run left `running`
    by a dead runner; one job paused, one disabled (by the config file the test writes)."""
    for i, name in enumerate(("Acme Outdoor", ESC_NAME, "Crooked Mail Co.")):
        add_tenant(engine, id=f"t-{i + 1}", name=name, expire_date=_at(25, 0))
    with engine.begin() as c:
        c.execute(insert(ops_runners).values(
            id=DEAD, kind="runner", host="ops-2", pid=77, started_at=_at(27, 8),
            heartbeat_at=_at(28, 9, 0)))
        rows: list[dict[str, Any]] = []

        def run(job_id: str, status: str, slot: datetime | None, took: float | None,
                processed: int = 0, errors: int = 0, summary: dict[str, Any] | None = None,
                error: str | None = None, trigger: str = "schedule",
                started_by: str = "runner@ops-1", runner: str | None = "runner-ops-1") -> None:
            start = slot or _at(28, 8, 15)
            rows.append({
                "job_id": job_id, "trigger": trigger, "scheduled_for": slot, "attempt": 1,
                "status": status, "started_by": started_by, "runner_id": runner,
                "reference_time": start, "created_at": start,
                "started_at": None if took is None and status == "missed" else start,
                "finished_at": None if took is None else start + timedelta(seconds=took),
                "processed": processed, "errors": errors, "params": {}, "summary": summary,
                "error": error,
            })

        run("cleanup", "missed", _at(22, 3), None,
            error="no runner was alive within the misfire grace")
        run("cleanup", "succeeded", _at(27, 3), 650, 12,
            summary={"orphans_found": 12, "deleted": 12})
        run("analytics-aggregate", "succeeded", _at(28, 1), 2.4, 3,
            summary={"date": "2026-11-27", "tenants": 3, "cache_writes": 3,
                     "revenue": 2411.4})
        run("expiry-checker", "partial", _at(28, 0), 7_384.0, 3, 1,
            summary={"expired": 2, "suspended": 0, "unchanged": 0, "emails_queued": 2},
            error="1 of 3 tenants failed")
        run("expiry-checker", "succeeded", None, 0.3, 0, trigger="manual",
            started_by="ops@laptop", runner=None, summary={})
        run("payment-reminders", "running", _at(28, 9), None, 1, runner=DEAD)
        c.execute(insert(ops_runs), rows)
        bad = "invalid recipient 'crooked@mail,co': the domain has a ','"
        c.execute(insert(ops_run_items), [
            {"run_id": 4, "seq": 0, "tenant_id": "t-1", "tenant_name": "Acme Outdoor",
             "action": "expired", "status": "ok", "error": None,
             "detail": {"from": "active", "to": "expired", "email": "queued"}},
            {"run_id": 4, "seq": 1, "tenant_id": "t-2", "tenant_name": ESC_NAME,
             "action": "expired", "status": "ok", "error": None,
             "detail": {"from": "active", "to": "expired", "email": "queued"}},
            {"run_id": 4, "seq": 2, "tenant_id": "t-3", "tenant_name": "Crooked Mail Co.",
             "action": "expired", "status": "error", "error": bad,
             "detail": {"from": "active", "to": "expired"}},
        ])
    runs.set_paused(engine, "cleanup", True, by="ops@laptop", now=_at(28, 9, 30),
                    reason="disk migration")


CASES = {
    "jobs": ("jobs", "--now", NOW_ARG),
    "jobs_seconds_before": ("jobs", "--now", "2026-11-30T23:59:59Z"),
    "history": ("history",),
    "history_job": ("history", "cleanup", "--limit", "1"),
    "show_partial": ("show", "4"),
    "show_errors": ("show", "4", "--errors"),
    "show_long": ("show", "2"),
    "show_manual": ("show", "5"),
    "show_missed": ("show", "1"),
    "show_running": ("show", "6"),
}


@pytest.fixture
def golden_cli(engine: Engine, env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
               tmp_path: Path, capsys: pytest.CaptureFixture[str],
               ) -> Callable[..., str]:
    _seed(engine)
    config = tmp_path / "golden.toml"
    config.write_text("[jobs.analytics-aggregate]\nenabled = false\n")
    # The wall clock at the CLI's edge: which runners are alive, how long ago a run ended.
    monkeypatch.setattr("console.commands.utc_now", lambda: WALL)
    run = in_process_cli(env, monkeypatch, tmp_path, capsys)

    def call(*args: str) -> str:
        code, out, err = run("--config", str(config), *args)
        assert code == 0, err
        return out

    return call


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_text(golden_cli: Callable[..., str], case: str) -> None:
    out = golden_cli(*CASES[case])
    path = GOLDEN / f"{case}.txt"
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(out, encoding="utf-8")
    assert path.exists(), f"no {path.name}: write it with STOREFLOW_UPDATE_GOLDEN=1"
    expected = path.read_text(encoding="utf-8")
    assert out.splitlines() == expected.splitlines()
    assert out == expected  # the final newline too


def test_every_golden_file_has_a_case() -> None:
    """A renamed or dropped case leaves no orphan file that nothing checks."""
    assert {p.stem for p in GOLDEN.glob("*.txt")} == set(CASES)

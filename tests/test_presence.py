"""Who is alive: one rule, read the same way by every face (the runners list, the /healthz
probe, the stale-run queries and the lock takeover). Both databases."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Engine

from jobs import runs
from jobs.presence import Presence, is_alive, list_runners, runner_alive
from jobs.settings import JOB_IDS, Settings

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
STALE = 30.0


def test_the_rule_at_its_edges() -> None:
    edge = T0 - timedelta(seconds=STALE)
    assert is_alive(T0, None, T0, STALE)
    assert is_alive(edge, None, T0, STALE)  # exactly stale_after old: still alive
    assert not is_alive(edge - timedelta(microseconds=1), None, T0, STALE)
    assert not is_alive(T0, T0, T0, STALE)  # stopped, however fresh its last beat


@pytest.fixture
def processes(engine: Engine) -> Iterator[dict[str, Presence]]:
    """A live runner, one silent since before the cutoff, one that stopped cleanly."""
    made = {
        "live": Presence(engine, "runner", lambda: T0, interval=3600),
        "silent": Presence(engine, "runner", lambda: T0 - timedelta(seconds=STALE + 1),
                           interval=3600),
        "stopped": Presence(engine, "runner", lambda: T0, interval=3600),
    }
    for p in made.values():
        p.start()
    made["stopped"].stop()
    yield made
    for name in ("live", "silent"):
        made[name].stop()


def test_every_reader_agrees_on_who_is_alive(engine: Engine, settings: Settings,
                                             processes: dict[str, Presence]) -> None:
    expected = {"live": True, "silent": False, "stopped": False}
    ids = {p.id: name for name, p in processes.items()}
    assert {name: runner_alive(engine, p.id, T0, STALE)
            for name, p in processes.items()} == expected
    assert runner_alive(engine, "runner-never-registered", T0, STALE) is False
    listed = list_runners(engine, T0, STALE, include_stopped=True)
    assert {ids[r.id]: r.alive for r in listed} == expected
    # A `running` run is stale exactly when its process is not alive.
    run_of: dict[str, int] = {}
    for job_id, (name, p) in zip(JOB_IDS, processes.items(), strict=False):
        claim = runs.claim_slot(engine, settings, job_id, T0, runner_id=p.id,
                                started_by="test", clock=lambda: T0)
        assert claim.run_id is not None
        run_of[name] = claim.run_id
    stale = runs.stale_run_ids(engine, T0, STALE)
    assert {name: run_of[name] not in stale for name in processes} == expected

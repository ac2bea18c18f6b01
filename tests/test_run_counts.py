"""The runs counter (ops_run_counts): every place that writes a final status bumps it once,
in the same transaction, for the rows it actually changed; on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from jobs import runs
from jobs.db import ops_run_counts, ops_runs
from jobs.presence import Presence
from jobs.records import RunStatus
from jobs.settings import Settings
from jobs.timeutil import utc_now
from tests.factories import add_tenant


def counts(engine: Engine) -> dict[tuple[str, str], int]:
    with engine.connect() as c:
        return {(j, s): n for j, s, n in c.execute(select(ops_run_counts)) if n}


def history_counts(engine: Engine) -> dict[tuple[str, str], int]:
    with engine.connect() as c:
        return {(j, s): n for j, s, n in c.execute(
            select(ops_runs.c.job_id, ops_runs.c.status, func.count())
            .where(ops_runs.c.status != RunStatus.RUNNING)
            .group_by(ops_runs.c.job_id, ops_runs.c.status))}


@pytest.fixture
def presence(engine: Engine) -> Iterator[Presence]:
    with Presence(engine, "runner", clock=utc_now, interval=1.0) as p:
        yield p



def test_every_final_status_write_counts_once(engine: Engine, settings: Settings,
                                              presence: Presence) -> None:
    now = utc_now()
    slot = now.replace(microsecond=0) - timedelta(hours=1)
    job = "cleanup"

    # _finish: a manual run that succeeds, one that ends partial.
    runs.execute(engine, settings, "expiry-checker", now=now, started_by="t")
    add_tenant(engine, email="not an address", expire_date=now - timedelta(days=30))
    assert runs.execute(engine, settings, "expiry-checker", now=now,
                        started_by="t").status is RunStatus.PARTIAL
    assert counts(engine) == {("expiry-checker", "succeeded"): 1,
                              ("expiry-checker", "partial"): 1}

    # claim_slot's skipped branch: a live runner's run holds the lock.
    held = runs.claim_slot(engine, settings, job, slot, runner_id=presence.id, started_by="t")
    assert held.status == "claimed" and held.run_id is not None
    skipped = runs.claim_slot(engine, settings, job, slot + timedelta(minutes=1),
                              runner_id=presence.id, started_by="t")
    assert skipped.status == "skipped"
    # a slot another runner has already: nothing ends, nothing counted
    assert runs.claim_slot(engine, settings, job, slot, runner_id=presence.id,
                           started_by="t").status == "taken"
    # abandon_run: the held run fails; twice is still once.
    assert runs.abandon_run(engine, job, held.run_id, now, "boom")
    assert not runs.abandon_run(engine, job, held.run_id, now, "boom")
    assert counts(engine)[(job, "skipped")] == 1 and counts(engine)[(job, "failed")] == 1

    # record_missed: only the rows actually inserted.
    missed = [slot - timedelta(hours=h) for h in (3, 2)]
    assert runs.record_missed(engine, job, missed, runner_id="r", started_by="t",
                              reason="x") == 2
    assert runs.record_missed(engine, job, [*missed, slot - timedelta(hours=4)],
                              runner_id="r", started_by="t", reason="x") == 1
    assert counts(engine)[(job, "missed")] == 3

    # recover_stale_runs: a run of a runner that vanished.
    ghost = runs.claim_slot(engine, settings, job, slot + timedelta(minutes=2),
                            runner_id="ghost", started_by="t")
    assert ghost.status == "claimed"
    assert [r.run_id for r in runs.recover_stale_runs(engine, now, 30)] == [ghost.run_id]
    assert runs.recover_stale_runs(engine, now, 30) == []
    # release_orphaned_runs: this runner's run that no worker executes.
    orphan = runs.claim_slot(engine, settings, job, slot + timedelta(minutes=3),
                             runner_id=presence.id, started_by="t")
    assert runs.release_orphaned_runs(engine, presence.id, set(), now) == [orphan.run_id]
    assert runs.release_orphaned_runs(engine, presence.id, set(), now) == []
    # _try_lock taking over the lock of a dead holder, then that run succeeding.
    dead = runs.claim_slot(engine, settings, job, slot + timedelta(minutes=4),
                           runner_id="ghost-2", started_by="t")
    assert dead.status == "claimed"
    assert runs.execute(engine, settings, job, now=now,
                        started_by="t").status is RunStatus.SUCCEEDED
    assert counts(engine)[(job, "interrupted")] == 3

    # Every final row counted exactly once, nothing else.
    assert counts(engine) == history_counts(engine)

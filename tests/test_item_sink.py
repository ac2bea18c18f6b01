"""Run items on their way to ops_run_items: COPY on PostgreSQL, executemany on SQLite."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from jobs.context import ItemSink
from jobs.db import ops_run_items, ops_runs
from jobs.records import ItemResult, ItemStatus, Progress
from jobs.runs import run_items

NOW = datetime(2026, 11, 28, 1, 0, tzinfo=UTC)
AWKWARD = "tab\there, newline\nthere, back\\slash, quote \" and ' , \\N, unicode ✓ 東京"


def a_run(engine: Engine) -> int:
    with engine.begin() as conn:
        return int(conn.execute(
            insert(ops_runs).values(job_id="cleanup", trigger="manual", status="running",
                                    started_by="test", reference_time=NOW, created_at=NOW)
            .returning(ops_runs.c.id)
        ).scalar_one())


def test_every_value_comes_back_as_written(engine: Engine) -> None:
    run_id = a_run(engine)
    sink = ItemSink(engine, "cleanup", run_id, None)
    written = [
        ItemResult(AWKWARD, "stale_cart_items", ItemStatus.OK,
                   {"deleted": 3, "note": AWKWARD, "nested": {"list": [1, None, 2.5]}},
                   tenant_name=AWKWARD),
        ItemResult(None, "orphaned_order_products", ItemStatus.OK, {"deleted": 1}),
        ItemResult("t-2", "stale_cart_items", ItemStatus.ERROR, {}, error=AWKWARD),
    ]
    for item in written:
        sink.add(item)
    sink.flush()

    assert run_items(engine, run_id) == written
    with engine.connect() as conn:
        seqs = conn.execute(select(ops_run_items.c.seq).order_by(ops_run_items.c.seq)).scalars()
        assert list(seqs) == [0, 1, 2]
        run = conn.execute(select(ops_runs.c.processed, ops_runs.c.errors)
                           .where(ops_runs.c.id == run_id)).one()
    assert tuple(run) == (3, 1)


def test_flushes_in_steps_keep_the_order(engine: Engine) -> None:
    run_id = a_run(engine)
    sink = ItemSink(engine, "cleanup", run_id, None)
    sink.FLUSH_EVERY = 7
    written = [ItemResult(f"t-{i:03}", "cached", ItemStatus.OK, {"i": i}) for i in range(30)]
    for item in written:
        sink.add(item)
    sink.flush()

    assert run_items(engine, run_id) == written


def test_items_added_together_count_their_errors_and_report_progress_once(engine: Engine) -> None:
    run_id = a_run(engine)
    reported: list[Progress] = []
    sink = ItemSink(engine, "cleanup", run_id, reported.append)
    written = [ItemResult("t-1", "cached", ItemStatus.OK, {"i": 1}),
               ItemResult("t-2", "cached", ItemStatus.ERROR, {}, error="refused"),
               ItemResult("t-3", "cached", ItemStatus.OK, {"i": 3})]

    sink.add_many(written)
    sink.flush()

    assert reported == [Progress("cleanup", run_id, 3, None, 1)]
    assert run_items(engine, run_id) == written
    with engine.connect() as conn:
        run = conn.execute(select(ops_runs.c.processed, ops_runs.c.errors)
                           .where(ops_runs.c.id == run_id)).one()
    assert tuple(run) == (3, 1)

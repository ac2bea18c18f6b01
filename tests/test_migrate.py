"""The ops_ tables: created by Alembic, safely when several processes start at once."""

from __future__ import annotations

import threading

from sqlalchemy import inspect

from jobs.db import make_engine
from jobs.migrate import current_revision, head_revision, upgrade


def test_runners_starting_together_migrate_once(db_url: str) -> None:
    engines = [make_engine(db_url) for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(engines))

    def migrate(i: int) -> None:
        start.wait()
        try:
            upgrade(engines[i])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(i,)) for i in range(len(engines))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert current_revision(engines[0]) == head_revision()
    names = set(inspect(engines[0]).get_table_names())
    assert {"ops_runs", "ops_run_items", "ops_email_outbox", "ops_cache", "ops_runners",
            "ops_job_state", "ops_alembic_version"} <= names
    assert not {"tenants", "orders"} & names  # the platform's tables are never ours to create
    for e in engines:
        e.dispose()


def test_upgrade_reports_before_and_after(db_url: str) -> None:
    engine = make_engine(db_url)
    assert upgrade(engine) == (None, head_revision())
    assert upgrade(engine) == (head_revision(), head_revision())  # nothing to do the second time
    engine.dispose()


def test_the_migrations_build_exactly_the_tables_the_code_declares(db_url: str) -> None:
    """What Alembic creates and what jobs.db declares may not drift apart: a column the
    code reads but no migration adds would fail only on a real deployment."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from jobs.db import ops

    engine = make_engine(db_url)
    upgrade(engine)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"include_name": lambda name, type_, _parent: type_ != "table"
                        or name in ops.tables}
        )
        diff = [d for d in compare_metadata(ctx, ops)
                if not (isinstance(d, tuple) and d[0] in ("modify_default",))]
    engine.dispose()
    assert diff == []


def test_the_error_index_is_partial_as_declared_and_as_migrated(db_url: str) -> None:
    """Alembic's comparison above ignores an index's WHERE: this checks it, both in the
    database the migrations built and in the declaration (jobs.db.PartialIndex, whose
    WHERE each dialect reads when it needs it)."""
    from sqlalchemy import inspect
    from sqlalchemy.schema import CreateIndex

    from jobs.db import ops_run_items

    engine = make_engine(db_url)
    upgrade(engine)
    found = {i["name"]: i for i in inspect(engine).get_indexes("ops_run_items")}
    declared = next(i for i in ops_run_items.indexes if i.name == "ops_run_items_errors_idx")
    ddl = str(CreateIndex(declared).compile(dialect=engine.dialect))
    engine.dispose()
    where = found["ops_run_items_errors_idx"]["dialect_options"][f"{engine.dialect.name}_where"]
    assert str(where).replace("(", "").replace(")", "").replace("::text", "") \
        == "status = 'error'"  # PostgreSQL gives it back as ((status)::text = 'error'::text)
    assert ddl.endswith("WHERE status = 'error'")
    assert "WHERE" not in str(CreateIndex(next(
        i for i in ops_run_items.indexes if i.name == "ops_run_items_run_idx"))
        .compile(dialect=engine.dialect))


def test_runs_that_ended_before_the_counter_existed_are_counted_once(db_url: str) -> None:
    """Upgrading a database with history seeds the never-decreasing run counter from it."""
    from alembic import command
    from sqlalchemy import text

    from jobs.migrate import _config

    engine = make_engine(db_url)
    with engine.begin() as conn:
        command.upgrade(_config(conn), "0002_b")
        for status in ("succeeded", "succeeded", "failed", "running"):
            conn.execute(text(
                "INSERT INTO ops_runs (job_id, trigger, status, started_by, reference_time, "
                "created_at) VALUES ('cleanup', 'manual', :s, 'test', :t, :t)"
            ), {"s": status, "t": "2026-11-28 00:00:00"})
    upgrade(engine)
    with engine.connect() as conn:
        counts = dict(conn.execute(text(
            "SELECT status, count FROM ops_run_counts WHERE job_id = 'cleanup'")).all())
    engine.dispose()
    assert counts == {"succeeded": 2, "failed": 1}


def test_emails_queued_before_the_search_existed_are_found(db_url: str) -> None:
    """Upgrading a database with an outbox copies each email's recipient, subject and
    tenant into the search table, so older emails are found like new ones."""
    from alembic import command
    from sqlalchemy import text

    from jobs.migrate import _config
    from jobs.outbox import search

    engine = make_engine(db_url)
    with engine.begin() as conn:
        command.upgrade(_config(conn), "0004_n")
        conn.execute(text(
            "INSERT INTO ops_email_outbox (idempotency_key, tenant_id, kind, recipient, subject, "
            "body_text, body_html, status, attempts, created_at) VALUES ('k1', 't-old', "
            "'payment_due', 'Owner@Old.example', 'Payment due for Old Shop', 't', 'h', "
            "'sent', 1, '2026-11-28 00:00:00')"))
    upgrade(engine)
    found = [e.idempotency_key for e in search(engine, text="old shop").entries]
    by_recipient = [e.idempotency_key for e in search(engine, text="owner@old").entries]
    engine.dispose()
    assert found == ["k1"] and by_recipient == ["k1"]

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

"""docs/platform-schema.sql, the platform tables the jobs expect, says what jobs/db.py
declares: both are built on PostgreSQL, each in a schema of its own, and what the database
reports of each (columns, types, NULLs, defaults, primary keys, indexes) must be the same.
Foreign keys are left out: the platform has some, the jobs do not rely on them."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jobs.db import platform
from tests.conftest import RUN_TAG, _pg, _schema_url

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "docs" / "platform-schema.sql"


@pytest.fixture
def pg_schema() -> Iterator[Engine]:
    """An engine whose search_path is a fresh PostgreSQL schema, dropped afterwards."""
    admin = _pg()
    schema = f"t_{RUN_TAG}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    eng = sa.create_engine(_schema_url(schema))
    yield eng
    eng.dispose()
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


def statements(sql: str) -> list[str]:
    """The file's statements, comments removed (none of them holds a ';' or '--' in a string)."""
    text = re.sub(r"--[^\n]*", "", sql)
    return [s.strip() for s in text.split(";") if s.strip()]


def described(engine: Engine) -> dict[str, Any]:
    """Every table as the database describes it."""
    insp = sa.inspect(engine)
    out: dict[str, Any] = {}
    for name in sorted(insp.get_table_names()):
        out[name] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"], c.get("default"))
                        for c in insp.get_columns(name)],
            "primary_key": insp.get_pk_constraint(name)["constrained_columns"],
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                              for i in insp.get_indexes(name)),
        }
    return out


def test_the_documented_platform_tables_are_the_declared_ones(pg_schema: Engine) -> None:
    with pg_schema.begin() as c:
        for statement in statements(SCHEMA_FILE.read_text()):
            c.exec_driver_sql(statement)
    documented = described(pg_schema)
    with pg_schema.begin() as c:
        c.exec_driver_sql("DROP TABLE " + ", ".join(documented) + " CASCADE")
    platform.create_all(pg_schema)
    declared = described(pg_schema)
    assert set(documented) == {t.name for t in platform.sorted_tables}
    assert documented == declared

"""Alembic environment: migrates only the ops_ tables, on the connection it is handed."""

from __future__ import annotations

from alembic import context

from jobs.db import ops

VERSION_TABLE = "ops_alembic_version"


def _include(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    # The platform's tables live in the same database and are never ours to touch.
    if type_ == "table":
        return bool(name and name.startswith("ops_"))
    return True


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=ops,
    version_table=VERSION_TABLE,
    include_object=_include,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()

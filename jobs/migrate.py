"""Creating and migrating the ops_ tables (Alembic), on demand and on first use."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from jobs.db import transaction

_SCRIPTS = Path(__file__).with_name("migrations")
VERSION_TABLE = "ops_alembic_version"
_LOCK_KEY = 0x5F0_0B5  # pg_advisory_xact_lock key for migrations ("sf ops")


def _config(conn: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str | None]:
    """Bring the ops_ tables to the newest revision; returns (before, after)."""
    before = current_revision(engine)
    head = head_revision()
    if before != head:
        with transaction(engine) as conn:
            if conn.dialect.name == "postgresql":
                # Runners starting together on a fresh database (or after a release) would
                # run the same DDL and all but one fail; the lock makes the others wait,
                # then find the work done. SQLite's BEGIN IMMEDIATE already serialises.
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            before = ctx.get_current_revision()
            if before != head:
                command.upgrade(_config(conn), "head")
    return before, head


def ensure_schema(engine: Engine) -> None:
    """Upgrade when needed: what the runner and the console do on start."""
    if current_revision(engine) != head_revision():
        upgrade(engine)

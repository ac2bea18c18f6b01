"""Creating and migrating the ops_ tables (Alembic), on demand and on first use.

Every command and the console check the tables on start. When the version table already
holds the newest revision, that check is one query: the newest revision is read from the
migration scripts' own `revision =` / `down_revision =` lines, and Alembic (a fifth of a
second to import) is loaded only when there is something to upgrade, or when the scripts
are not one straight line."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from jobs.db import check_reachable, transaction

if TYPE_CHECKING:
    from alembic.config import Config

_SCRIPTS = Path(__file__).with_name("migrations")
VERSION_TABLE = "ops_alembic_version"
_LOCK_KEY = 0x5F0_0B5  # pg_advisory_xact_lock key for migrations ("sf ops")

_REVISION = re.compile(r"^revision\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision\s*(?::[^=]*)?=\s*(.+)$", re.MULTILINE)


def _config(conn: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head()


@cache
def scripted_head() -> str | None:
    """The newest revision as the scripts name it, without Alembic: the one revision no
    other script revises. None when that is not one revision (no scripts, branches), or a
    script does not say: then Alembic's own reading decides."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in (_SCRIPTS / "versions").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        found, down = _REVISION.search(source), _DOWN_REVISION.search(source)
        if found is None or down is None:
            return None
        revisions.add(found[1])
        revised.update(re.findall(r"['\"]([^'\"]+)['\"]", down[1]))
    heads = revisions - revised
    return heads.pop() if len(heads) == 1 else None


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision()


def _stored_revision(engine: Engine) -> str | None:
    """What the version table holds, read plainly; None when it is missing or holds not
    exactly one revision (Alembic then looks for itself)."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    except DBAPIError:
        return None
    return str(rows[0][0]) if len(rows) == 1 else None


def upgrade(engine: Engine) -> tuple[str | None, str | None]:
    """Bring the ops_ tables to the newest revision; returns (before, after)."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

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


def checked(engine: Engine) -> Engine:
    """`engine`, reachable and with current ops_ tables: how the commands and the console
    open the database. If a check fails, the engine's connections are closed before the
    error goes on: an engine nobody keeps must hold none (the command's exit does not
    collect them)."""
    try:
        check_reachable(engine)
        ensure_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def ensure_schema(engine: Engine) -> None:
    """Upgrade when needed: what the runner, the commands and the console do on start."""
    head = scripted_head()
    if head is not None and _stored_revision(engine) == head:
        return
    upgrade(engine)

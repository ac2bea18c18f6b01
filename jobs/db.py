"""Database access: engines, the platform tables as the jobs see them, and the ops_ tables.

The platform tables belong to StoreFlow: the console reads and writes their rows
but never creates or alters them (only `demo` does, for its own database). The
ops_ tables are the console's own, created and migrated by Alembic.
"""

from __future__ import annotations

import os
import sqlite3
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    text,
    util,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.base import _DialectArgDict
from sqlalchemy.sql.expression import FunctionElement
from sqlalchemy.types import TypeDecorator

from jobs.errors import UnreachableError, UsageError
from jobs.redaction import redact, scrub


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend.

    PostgreSQL stores timestamptz. SQLite has no time type: the platform keeps UTC
    text in SQLAlchemy's format, so aware values are converted to naive UTC on the
    way in and given their UTC zone back on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite rows written by other tools
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class ts(FunctionElement[datetime]):
    """A platform timestamp column, comparable with bound datetimes on every backend.

    SQLite compares these as text, and the platform's format makes the fraction
    optional ('2026-11-27 00:00:00' or '2026-11-27 00:00:00.000000'). Without
    normalising, an order at exactly midnight would sort before the bound
    '2026-11-27 00:00:00.000000' and fall out of its own day.
    """

    inherit_cache = True
    type = UTCDateTime()


@compiles(ts)
def _ts_default(element: ts, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(ts, "sqlite")
def _ts_sqlite(element: ts, compiler: Any, **kw: Any) -> str:
    inner = compiler.process(element.clauses, **kw)
    return f"substr(replace({inner}, 'T', ' ') || '.000000', 1, 26)"


Money = Numeric(12, 2, asdecimal=True)

# --- the platform's tables, as the jobs read and write them -------------------------------
# docs/platform-schema.sql writes them down for a DBA; tests/test_platform_schema.py checks
# that it says what these declarations say.

platform = MetaData()

tenants = Table(
    "tenants",
    platform,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("email", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="active"),
    Column("expire_date", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False, server_default=func.now()),
    Index("tenants_expire_idx", "expire_date"),
)

customers = Table(
    "customers",
    platform,
    Column("id", Text, primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("email", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Index("customers_tenant_created_idx", "tenant_id", "created_at"),
)

products = Table(
    "products",
    platform,
    Column("id", Text, primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("price", Money, nullable=False),
)

orders = Table(
    "orders",
    platform,
    Column("id", Text, primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("customer_id", Text, nullable=True),
    Column("total_amount", Money, nullable=False),
    Column("payment_status", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index("orders_tenant_created_idx", "tenant_id", "created_at"),
)

order_products = Table(
    "order_products",
    platform,
    Column("id", Text, primary_key=True),
    Column("order_id", Text, nullable=False),
    Column("product_id", Text, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("price", Money, nullable=False),
    Index("order_products_order_idx", "order_id"),
)

cart_items = Table(
    "cart_items",
    platform,
    Column("id", Text, primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("product_id", Text, nullable=False),
    Column("customer_id", Text, nullable=True),
    Column("quantity", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index("cart_items_created_idx", "created_at"),
    Index("cart_items_product_idx", "product_id"),
)


class PartialIndex(Index):
    """An index over the rows matching `where`, on PostgreSQL and on SQLite.

    Declared as `Index(..., postgresql_where=..., sqlite_where=...)` it would make SQLAlchemy
    load both dialects' packages as this module is imported, to check those arguments: a
    cost every CLI command paid, though a command talks to one database only. Here a
    dialect's `where` is filled in when that dialect first asks for the index's options,
    that is when it creates or compares the index (tests/test_cli_imports.py,
    tests/test_migrate.py)."""

    def __init__(self, name: str, *columns: str, where: str) -> None:
        super().__init__(name, *columns)
        self.where = where

    @util.memoized_property
    def dialect_options(self) -> util.PopulateDict[str, _DialectArgDict]:
        def options(dialect_name: str) -> _DialectArgDict:
            found = self._kw_reg_for_dialect_cls(dialect_name)
            if dialect_name in ("postgresql", "sqlite"):
                found["where"] = text(self.where)
            return found

        return util.PopulateDict(options)


# --- the console's own tables ---------------------------------------------------------------

ops = MetaData()

Id = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER only

ops_runs = Table(
    "ops_runs",
    ops,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job_id", String(64), nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("scheduled_for", UTCDateTime, nullable=True),
    Column("attempt", Integer, nullable=False, server_default="1"),
    Column("status", String(16), nullable=False),
    Column("started_by", Text, nullable=False),
    Column("runner_id", String(64), nullable=True),
    Column("reference_time", UTCDateTime, nullable=False),
    Column("params", JSON, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("total", Integer, nullable=True),
    Column("processed", Integer, nullable=False, server_default="0"),
    Column("errors", Integer, nullable=False, server_default="0"),
    Column("summary", JSON, nullable=True),
    Column("error", Text, nullable=True),
    # A slot is claimed by inserting its run: the unique key is what makes it exactly once.
    UniqueConstraint("job_id", "scheduled_for", "attempt", name="ops_runs_slot_uq"),
    Index("ops_runs_job_created_idx", "job_id", "id"),
    Index("ops_runs_status_idx", "status"),
    # /metrics: each job's newest success and its running runs, by lookup (migration 0004_n).
    Index("ops_runs_job_status_idx", "job_id", "status", "finished_at"),
    # Retention finds old runs by age (migration 0006_r); problems, the runs created in
    # a window (migration 0007_p).
    Index("ops_runs_created_idx", "created_at"),
)

ops_run_items = Table(
    "ops_run_items",
    ops,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("run_id", Id, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("tenant_id", Text, nullable=True),
    Column("tenant_name", Text, nullable=True),
    Column("action", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("detail", JSON, nullable=True),
    Column("error", Text, nullable=True),
    Index("ops_run_items_run_idx", "run_id", "seq"),
    # The failed items of a run, without reading its other items: the problems view
    # groups them over a month of runs (migration 0007_p). Partial: errors are few.
    PartialIndex("ops_run_items_errors_idx", "run_id", "seq", where="status = 'error'"),
)

ops_email_outbox = Table(
    "ops_email_outbox",
    ops,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("idempotency_key", String(255), nullable=False, unique=True),
    Column("tenant_id", Text, nullable=True),
    Column("kind", String(64), nullable=False),
    Column("recipient", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("body_text", Text, nullable=False),
    Column("body_html", Text, nullable=False),
    Column("status", String(16), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime, nullable=True),
    Column("run_id", Id, nullable=True),
    Column("message_id", Text, nullable=True),
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_until", UTCDateTime, nullable=True),
    Index("ops_email_outbox_status_idx", "status", "next_attempt_at"),
    # Retention: sent, dead and failed emails by age (migration 0006_r).
    Index("ops_email_outbox_status_created_idx", "status", "created_at"),
    # The outbox is paged newest first by id (keyset, never OFFSET): a tenant's and a
    # status's emails each in id order (migration 0007_p).
    Index("ops_email_outbox_tenant_idx", "tenant_id", "id"),
    Index("ops_email_outbox_status_id_idx", "status", "id"),
)

# What the outbox search reads: one lower-case line per email (its recipient, subject and
# tenant id), written when the email is queued and never changed, as those never change.
# A search scans this narrow table, not the outbox's rows with their bodies: 1,000,000
# emails are ~120 MB here against ~1 GB there (migration 0007_p).
ops_email_search = Table(
    "ops_email_search",
    ops,
    Column("email_id", Id, primary_key=True, autoincrement=False),
    Column("text", Text, nullable=False),
)

ops_cache = Table(
    "ops_cache",
    ops,
    Column("key", String(512), primary_key=True),
    Column("value", Text, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
)

ops_runners = Table(
    "ops_runners",
    ops,
    Column("id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),  # runner | cli | console
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("stopped_at", UTCDateTime, nullable=True),
)

# The schedules each runner plans with (one row per runner and job), written before the
# runner registers: the faces show what the live runners will do, not what the viewer's
# own configuration says.
ops_runner_schedules = Table(
    "ops_runner_schedules",
    ops,
    Column("runner_id", String(64), primary_key=True),
    Column("job_id", String(64), primary_key=True),
    Column("schedule", Text, nullable=False),
    Column("timezone", Text, nullable=False),
    Column("enabled", Boolean, nullable=False),
    # sha256 of the job's whole effective configuration, so settings beside the schedule
    # that differ (misfire_grace, batch_size, ...) are noticed too.
    Column("config_digest", String(64), nullable=False),
    Column("config_source", Text, nullable=False),  # the schedules file the runner read
)

ops_job_state = Table(
    "ops_job_state",
    ops,
    Column("job_id", String(64), primary_key=True),
    Column("paused", Boolean, nullable=False, server_default="0"),
    Column("paused_at", UTCDateTime, nullable=True),
    Column("paused_by", Text, nullable=True),
    Column("paused_reason", Text, nullable=True),
    Column("resumed_at", UTCDateTime, nullable=True),
    # The run holding the job's overlap lock; NULL when idle.
    Column("active_run_id", Id, nullable=True),
    # The schedule (cron + timezone) runners last planned this job with, and since when:
    # slots of an older schedule are not the new one's to count as missed.
    Column("schedule_key", Text, nullable=True),
    Column("schedule_since", UTCDateTime, nullable=True),
    # Alert state, shared by every runner: alerts fire on changes of it, never once per
    # failing run. `failing_since` is set while the job is failing; `overdue_since` while
    # an overdue episode is open (ended by the next success): the moment the job became
    # overdue (where its counting starts, the last success, resume or schedule change,
    # plus its period plus overdue_after).
    Column("alert_state", String(16), nullable=False, server_default="ok"),
    Column("failing_since", UTCDateTime, nullable=True),
    Column("overdue_since", UTCDateTime, nullable=True),
)

# Runs per job and final status, counted as runs end: the runs counter of /metrics must
# never go down, and pruning old runs would lower a count taken from ops_runs.
ops_run_counts = Table(
    "ops_run_counts",
    ops,
    Column("job_id", String(64), primary_key=True),
    Column("status", String(16), primary_key=True),
    Column("count", BigInteger, nullable=False, server_default="0"),
)

# One row per alert event, recorded before any delivery. `key` is unique per event
# (e.g. "job_failing:<job>:<run_id>"), so several runners raise each event exactly once.
ops_alerts = Table(
    "ops_alerts",
    ops,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("key", String(255), nullable=False, unique=True),
    Column("event", String(32), nullable=False),  # job_failing | job_recovered | job_overdue | alert_test
    Column("job_id", String(64), nullable=True),
    Column("run_id", Id, nullable=True),
    Column("at", UTCDateTime, nullable=False),
    Column("payload", JSON, nullable=False),  # the webhook body, as sent
    Index("ops_alerts_at_idx", "at"),
)

# One row per alert and target; delivered asynchronously by any live runner, claimed
# with a lease like the email outbox, so a runner that dies mid-delivery leaves it to
# the next. `target` is a secret (a webhook URL's path is its credential): faces show
# `target_label` (scheme and host, or the email address) only.
ops_alert_deliveries = Table(
    "ops_alert_deliveries",
    ops,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("alert_id", Id, nullable=False),
    Column("kind", String(16), nullable=False),  # webhook | email
    Column("target", Text, nullable=False),
    Column("target_label", Text, nullable=False),
    Column("status", String(16), nullable=False, server_default="pending"),  # pending | sent | dead
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("sent_at", UTCDateTime, nullable=True),
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_until", UTCDateTime, nullable=True),
    UniqueConstraint("alert_id", "target", name="ops_alert_deliveries_uq"),
    Index("ops_alert_deliveries_due_idx", "status", "next_attempt_at"),
)


# Who changed what: one row per action that changes something (trigger, pause, resume,
# email retry, analytics recompute, prune, config reload), written in the same
# transaction as the change it records, so neither exists without the other.
ops_audit = Table(
    "ops_audit",
    ops,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", Text, nullable=False),  # user@host, a client address, or runner:<id>
    Column("action", String(32), nullable=False),
    Column("job_id", String(64), nullable=True),
    Column("run_id", Id, nullable=True),
    Column("detail", Text, nullable=True),
    Column("reason", Text, nullable=True),
    Index("ops_audit_at_idx", "at"),
)


# Named leases held by one process at a time, e.g. `prune`: the holder sets `until` and
# renews it while it works; a holder that dies leaves a lease that runs out. `done_at`
# is when the work last finished, so several runners share one hourly schedule.
ops_leases = Table(
    "ops_leases",
    ops,
    Column("name", String(64), primary_key=True),
    Column("holder", String(64), nullable=True),
    Column("until", UTCDateTime, nullable=True),
    Column("done_at", UTCDateTime, nullable=True),
)


# --- engines --------------------------------------------------------------------------------


def default_sqlite_path() -> Path:
    """The embedded database: $XDG_DATA_HOME/storeflow-ops/storeflow.sqlite3."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "storeflow-ops" / "storeflow.sqlite3"


def normalise_url(url: str) -> str:
    """Accept the URLs platforms hand out (postgres://, postgresql://) and use psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


# How long a SQLite writer waits for another's lock (a timed run waits less: jobs.timeouts).
SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the console read while a runner writes; busy_timeout makes
    # concurrent writers (several runners on one file) wait instead of failing.
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    # Switching a fresh file to WAL needs an exclusive lock and SQLite answers "database is
    # locked" at once, without the busy handler, when another process is switching it
    # too (runners starting together): wait and try again; once in WAL it is a no-op.
    for attempt in range(50):
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError:
            if attempt == 49:
                raise
            time.sleep(0.1)
    cur.execute("PRAGMA foreign_keys=OFF")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    # Take the write lock at BEGIN, so a read-then-write transaction cannot
    # deadlock against another process doing the same (SQLITE_BUSY on upgrade).
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names; None for another database, an in-memory one, or a
    `?uri=true` URL (SQLite's own syntax, left to SQLite)."""
    try:
        parsed = make_url(normalise_url(url))
    except (ArgumentError, ValueError):
        return None
    if (parsed.get_backend_name() != "sqlite" or not parsed.database
            or parsed.database == ":memory:" or parsed.query.get("uri")):
        return None
    return Path(parsed.database)


def _create_private(path: Path, url: str) -> None:
    """Create the embedded database's folder (0700) and file (0600) when they do not exist.

    The file holds tenants' email addresses and the emails themselves, so only its owner
    may read it, whatever the umask. The file is created empty (an empty file is an empty
    SQLite database) before SQLite opens it, because SQLite gives the -wal, -shm and
    -journal files it creates the database file's mode. Existing folders and files keep
    theirs: an operator may have chosen them.
    """
    if path.name.startswith("file:"):  # a SQLite URI filename: SQLite's own business
        return
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)  # the mode applies to the last
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass  # created before us (or by another runner starting now)
    except OSError as exc:
        where = f"folder {folder}" if not folder.is_dir() else str(path)
        reason = f"cannot create {where}: {exc.strerror or exc}"
        raise UnreachableError("database", redact(url), reason) from None


def make_engine(url: str, *, create: bool = True) -> Engine:
    """An engine for `url`. With `create=False`, what the faces use for the configured
    database, a SQLite file that does not exist is refused (UsageError): a mistyped path
    must not turn into a new, empty database that every command then reads as "no runs".
    Only the embedded default location is created on first use, folder included."""
    url = normalise_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise UsageError(f"database URL {redact(url)!r} is not a valid URL: {scrub(str(exc))}"
                         ) from None
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_file(url)
        if path is not None:
            if (not create and not path.exists()
                    and path.resolve() != default_sqlite_path().resolve()):
                raise UsageError(
                    f"database file {path.absolute()} does not exist; check the path in "
                    "DATABASE_URL or --database-url (only the embedded default database is "
                    "created on first use)")
            _create_private(path, url)
        engine = create_engine(
            parsed,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            isolation_level=None,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling is off (isolation_level=None); we
        # issue BEGIN IMMEDIATE ourselves.
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if parsed.get_backend_name() != "postgresql":
        raise UsageError(
            f"database URL {redact(url)!r}: only postgresql:// and sqlite:// are supported"
        )
    try:
        return create_engine(
            parsed,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=10,
            connect_args={"connect_timeout": 5, "application_name": "storeflow-ops"},
        )
    except ModuleNotFoundError as exc:  # pragma: no cover - psycopg is a dependency
        raise UsageError(f"database driver missing: {exc}") from None
    except ArgumentError as exc:  # e.g. ?port=abc
        raise UsageError(f"database URL {redact(url)!r}: {scrub(str(exc))}") from None


def dispose_quietly(engine: Engine | None) -> None:
    """Close the engine's connections, if there is one: PostgreSQL sees a clean goodbye,
    and SQLite's last connection checkpoints its WAL into the file and removes the -wal
    and -shm files. Only tidying: a database gone by now is left alone."""
    if engine is not None:
        with suppress(Exception):
            engine.dispose()


def check_reachable(engine: Engine) -> None:
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except (OperationalError, DBAPIError) as exc:
        raise UnreachableError("database", redact(str(engine.url)), first_line(exc)) from None


# The engines whose database was seen to have the platform tables: looked at once per
# engine (per process, or per reconnect of the console), not once per URL for the life of
# the process, so a URL that names another database by then is looked at again.
_platform_ok: weakref.WeakSet[Engine] = weakref.WeakSet()


def require_platform_tables(engine: Engine) -> None:
    """Fail early, in plain words, when the database is not StoreFlow's (e.g. an empty file)."""
    if engine in _platform_ok:
        return
    key = str(engine.url)
    try:
        present = set(inspect(engine).get_table_names())
    except (OperationalError, DBAPIError) as exc:
        raise UnreachableError("database", redact(key), first_line(exc)) from None
    missing = [name for name in platform.tables if name not in present]
    if missing:
        raise UsageError(
            f"database {redact(key)} has no StoreFlow platform tables ({', '.join(missing)}); "
            "set DATABASE_URL to StoreFlow's database, or try `storeflow-ops demo`"
        )
    _platform_ok.add(engine)


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    # Drivers may echo the connection string they were given.
    return scrub(text.splitlines()[0]) if text else type(exc).__name__


@contextmanager
def _reachable(engine: Engine) -> Iterator[None]:
    """Turns a lost connection into UnreachableError."""
    try:
        yield
    except OperationalError as exc:
        if exc.connection_invalidated or _is_connect_error(exc):
            raise UnreachableError("database", redact(str(engine.url)), first_line(exc)) from None
        raise


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction; turns a lost connection into UnreachableError."""
    with _reachable(engine), engine.begin() as conn:
        yield conn


@contextmanager
def connection(engine: Engine) -> Iterator[Connection]:
    """One connection for a series of short transactions (`with conn.begin():` each), so
    they skip the pool's checkout ping and reset; a lost connection is UnreachableError."""
    with _reachable(engine), engine.connect() as conn:
        yield conn


@contextmanager
def _driver_cursor(conn: Connection, sql: str, params: Any = None) -> Iterator[Any]:
    """psycopg's own cursor on `conn`'s connection (inside its transaction), for what
    SQLAlchemy does not offer (COPY, chunked reads); its errors become SQLAlchemy's, so
    `transaction`/`connection` still turn a lost connection into UnreachableError."""
    import psycopg

    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        yield cursor
    except psycopg.Error as exc:
        raise DBAPIError.instance(sql, params, exc, psycopg.Error) from None
    finally:
        cursor.close()


def insert_rows(conn: Connection, table: Table, columns: Sequence[str],
                rows: Sequence[Sequence[Any]]) -> None:
    """Appends rows (sequences of values in `columns` order) to one of our tables, fast.

    PostgreSQL gets them through COPY: 10,000 run items in ~0.05 s, against ~0.3 s as a
    pipelined executemany. SQLite gets an executemany, which is already in-process."""
    if not rows:
        return
    if is_sqlite(conn):
        conn.execute(table.insert(), [dict(zip(columns, row, strict=True)) for row in rows])
        return
    as_json = [i for i, name in enumerate(columns) if isinstance(table.c[name].type, JSON)]
    # orjson: a tenth of json.dumps's time; 10,000 items are 10,000 documents.
    dump = partial(orjson.dumps, option=orjson.OPT_NON_STR_KEYS)
    quote = conn.dialect.identifier_preparer
    names = ", ".join(quote.quote(name) for name in columns)
    sql = f"COPY {quote.format_table(table)} ({names}) FROM STDIN"
    with _driver_cursor(conn, sql) as cursor, cursor.copy(sql) as copy:
        for row in rows:
            if as_json:
                row = list(row)
                for i in as_json:
                    if row[i] is not None:
                        row[i] = dump(row[i]).decode()
            copy.write_row(row)


def _is_connect_error(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return any(
        s in text
        for s in ("connection refused", "could not connect", "unable to open", "timeout expired",
                  "server closed", "connection failed", "no such host", "name or service")
    )


def is_sqlite(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "sqlite"


def insert_ignore(conn: Connection, table: Table, rows: list[dict[str, Any]],
                  conflict: list[str]) -> int:
    """INSERT ... ON CONFLICT DO NOTHING on either backend; returns rows inserted."""
    if not rows:
        return 0
    if is_sqlite(conn):
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt_s = sqlite_insert(table).on_conflict_do_nothing(index_elements=conflict)
        return int(conn.execute(stmt_s, rows).rowcount or 0)
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    # Counted from RETURNING: for several rows psycopg reports rowcount -1.
    stmt_p = pg_insert(table).on_conflict_do_nothing(index_elements=conflict)
    return len(conn.execute(stmt_p.returning(table.c[conflict[0]]), rows).all())

"""Run timeouts: a job's `timeout` stops a run that is still running past it.

At the deadline a watchdog timer marks the run timed out, which the job sees as a stop
request between two tenants or batches, and cancels the database work the run's thread
has in hand: on PostgreSQL through psycopg's cancel request (the server aborts the
statement; the transaction fails), on SQLite through `interrupt()`. A SQLite statement
that waits for another writer's lock sits in SQLite's busy handler, which `interrupt()`
does not reach, so a timed run's statements wait at most until the deadline (their
connection's busy timeout is capped to the time left). After the deadline, a statement
the run starts fails at once (RunTimedOut): a job on its way out must not block again.

Which connections are the run's: those its own thread checks out while inside
`RunDeadline.guard()` (a context variable, so other threads, such as the runner's
heartbeat or another run, are never touched). The cancel is sent under a lock while
the connection is still checked out by the run, and a cancelled connection is never
handed out again (the pool discards it on its next checkout), so a late cancel cannot
reach anybody else's statement.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import weakref
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import timedelta
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError

from jobs.db import SQLITE_BUSY_TIMEOUT_MS
from jobs.errors import ExitCode, OpsError
from jobs.humanize import span

_DEADLINE = "storeflow_deadline"  # connection info: the deadline of the run holding it
_DISCARD = "storeflow_cancelled"  # connection info: a cancel was sent; never reuse it
_CAPPED = "storeflow_busy_capped"  # connection info: its busy timeout was shortened
_current: ContextVar[RunDeadline | None] = ContextVar("storeflow_run_deadline", default=None)
_instrumented: weakref.WeakSet[Engine] = weakref.WeakSet()
_instrument_lock = threading.Lock()


class RunTimedOut(OpsError):
    """A statement a run started after its timeout."""

    exit_code = ExitCode.FAILED

    def __init__(self, limit: timedelta) -> None:
        super().__init__(f"the run passed its timeout ({timeout_text(limit)})")


def timeout_text(limit: timedelta) -> str:
    return span(limit)


class RunDeadline:
    """One run's timeout: `start()` arms it, `guard()` marks the run's own thread, and
    `expired` says whether the deadline has passed (the job then stops)."""

    def __init__(self, limit: timedelta | None) -> None:
        self.limit = limit
        self._due: float | None = None
        self._fired = threading.Event()
        self._lock = threading.Lock()
        self._held: dict[int, tuple[Any, dict[Any, Any]]] = {}  # id -> (dbapi conn, info)
        self._timer: threading.Timer | None = None

    @property
    def expired(self) -> bool:
        return self._fired.is_set() or (self._due is not None and time.monotonic() >= self._due)

    @property
    def remaining(self) -> float | None:
        return None if self._due is None else self._due - time.monotonic()

    def start(self, engine: Engine) -> RunDeadline:
        if self.limit is not None:
            instrument(engine)
            seconds = self.limit.total_seconds()
            self._due = time.monotonic() + seconds
            self._timer = threading.Timer(seconds, self._expire)
            self._timer.daemon = True
            self._timer.name = "run-timeout"
            self._timer.start()
        return self

    def finish(self) -> bool:
        """The job returned (or raised): disarm the watchdog. Returns whether the deadline
        had passed by then, which `expired` keeps saying from now on."""
        if self._timer is not None:
            self._timer.cancel()
        if self.expired:
            self._fired.set()
        self._due = None
        return self._fired.is_set()

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """The calling thread's database work is this run's until the block ends."""
        if self.limit is None:
            yield
            return
        token = _current.set(self)
        try:
            yield
        finally:
            _current.reset(token)

    def _expire(self) -> None:
        self._fired.set()
        with self._lock:
            for dbapi_conn, info in list(self._held.values()):
                info[_DISCARD] = True
                _cancel(dbapi_conn)

    def _hold(self, dbapi_conn: Any, info: dict[Any, Any]) -> None:
        with self._lock:
            self._held[id(dbapi_conn)] = (dbapi_conn, info)
            info[_DEADLINE] = self

    def _release(self, dbapi_conn: Any, info: dict[Any, Any]) -> None:
        # Under the lock: a cancel being sent finishes before the connection goes back.
        with self._lock:
            self._held.pop(id(dbapi_conn), None)
            info.pop(_DEADLINE, None)


def _cancel(dbapi_conn: Any) -> None:
    """Abort what the connection is doing; a connection that is idle ignores it."""
    with contextlib.suppress(Exception):  # a cancel is best effort; the deadline holds anyway
        if hasattr(dbapi_conn, "cancel_safe"):  # psycopg 3
            dbapi_conn.cancel_safe(timeout=5.0)
        elif hasattr(dbapi_conn, "interrupt"):  # sqlite3
            dbapi_conn.interrupt()


# --- the engine's side: which connection is whose --------------------------------------------


def instrument(engine: Engine) -> None:
    """Listen to `engine`'s checkouts and statements (once per engine)."""
    with _instrument_lock:
        if engine in _instrumented:
            return
        event.listen(engine, "checkout", _on_checkout)
        event.listen(engine, "checkin", _on_checkin)
        event.listen(engine, "before_cursor_execute", _before_statement)
        _instrumented.add(engine)


def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    if record.info.get(_DISCARD):
        # A cancel may still be on its way to it: the pool connects a fresh one instead.
        raise DisconnectionError("connection of a timed-out run")
    deadline = _current.get()
    if deadline is not None:
        deadline._hold(dbapi_conn, record.info)


def _on_checkin(dbapi_conn: Any, record: Any) -> None:
    if record is None or dbapi_conn is None:
        return
    deadline = record.info.get(_DEADLINE)
    if deadline is not None:
        deadline._release(dbapi_conn, record.info)
    if record.info.pop(_CAPPED, False) and not record.info.get(_DISCARD):
        with contextlib.suppress(Exception):  # a connection that fails here is dropped later
            dbapi_conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")


def _before_statement(conn: Any, _cursor: Any, _statement: str, _parameters: Any,
                      _context: Any, _executemany: bool) -> None:
    deadline = _current.get()
    if deadline is None or deadline.limit is None:
        return
    left = deadline.remaining
    if deadline.expired or left is None or left <= 0:
        raise RunTimedOut(deadline.limit)
    if conn.dialect.name == "sqlite" and left * 1000 < SQLITE_BUSY_TIMEOUT_MS:
        fairy = conn.connection
        fairy.dbapi_connection.execute(f"PRAGMA busy_timeout={max(1, math.ceil(left * 1000))}")
        fairy.info[_CAPPED] = True


__all__ = ["RunDeadline", "RunTimedOut", "instrument", "timeout_text"]

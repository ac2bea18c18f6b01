"""What a job receives: its settings, the reference time, the database, the cache, and
a place to report items. The same object serves a real run and a preview."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, update
from sqlalchemy.engine import Connection, Engine

from jobs.cache import Cache
from jobs.db import first_line, insert_rows, ops_run_items, ops_runs, transaction
from jobs.errors import OpsError
from jobs.records import ItemResult, ItemStatus, Progress, RunParams, RunStatus
from jobs.settings import JobConfig, Settings
from jobs.timeouts import RunDeadline

ProgressCallback = Callable[[Progress], None]
ITEM_COLUMNS = ("run_id", "seq", "tenant_id", "tenant_name", "action", "status", "detail", "error")


class ItemSink:
    """Collects a run's items; for a real run, also writes them to ops_run_items in batches
    and keeps the run row's counts current, so other processes can watch progress."""

    FLUSH_EVERY = 2000
    FLUSH_SECONDS = 1.0

    def __init__(self, engine: Engine, job_id: str, run_id: int | None,
                 on_progress: ProgressCallback | None) -> None:
        self.engine = engine
        self.job_id = job_id
        self.run_id = run_id
        self.on_progress = on_progress
        self.items: list[ItemResult] = []
        self.errors = 0
        self.total: int | None = None
        # The summary the job last wrote as it went (note/store): a run that fails or times
        # out keeps it as its summary instead of ending with none.
        self.noted_summary: dict[str, Any] | None = None
        self._flushed = 0
        self._last_flush = time.monotonic()

    def set_total(self, total: int) -> None:
        self.total = total
        if self.run_id is not None:
            with transaction(self.engine) as conn:
                conn.execute(
                    update(ops_runs).where(ops_runs.c.id == self.run_id).values(total=total)
                )
        self._notify()

    def add(self, item: ItemResult) -> None:
        self.add_many((item,))

    def add_many(self, items: Iterable[ItemResult]) -> None:
        """Several items at once: one flush check and one progress report for all of them."""
        start = len(self.items)
        self.items.extend(items)
        self.errors += sum(1 for item in self.items[start:] if item.status is ItemStatus.ERROR)
        if self.run_id is not None and (
            len(self.items) - self._flushed >= self.FLUSH_EVERY
            or time.monotonic() - self._last_flush >= self.FLUSH_SECONDS
        ):
            self.flush()
        self._notify()

    def flush(self) -> None:
        if self.run_id is None:
            return
        run_id, first = self.run_id, self._flushed
        with transaction(self.engine) as conn:
            insert_rows(conn, ops_run_items, ITEM_COLUMNS, [
                (run_id, first + i, item.tenant_id, item.tenant_name, item.action,
                 str(item.status), dict(item.detail), item.error)
                for i, item in enumerate(self.items[first:])
            ])
            conn.execute(
                update(ops_runs).where(ops_runs.c.id == self.run_id)
                .values(processed=len(self.items), errors=self.errors)
            )
        self._flushed = len(self.items)
        self._last_flush = time.monotonic()

    def store(self, conn: Connection, items: Sequence[ItemResult],
              summary: dict[str, Any] | None = None, *, append: bool = False) -> None:
        """Make `items` the run's whole list of items (or add them to it, `append`), written
        on `conn` inside its transaction: for a job whose items are running totals (rows
        deleted per tenant) that must commit together with the changes they count, so a
        killed run still shows them. `summary`, when given, is the run's summary so far.
        Nothing is written again at the end; a preview only keeps the items."""
        first = len(self.items) if append else 0
        if self.run_id is not None:
            if not append:
                conn.execute(delete(ops_run_items).where(ops_run_items.c.run_id == self.run_id))
            insert_rows(conn, ops_run_items, ITEM_COLUMNS, [
                (self.run_id, first + i, item.tenant_id, item.tenant_name, item.action,
                 str(item.status), dict(item.detail), item.error)
                for i, item in enumerate(items)
            ])
        self.items = [*self.items[:first], *items]
        self.errors = sum(1 for item in self.items if item.status is ItemStatus.ERROR)
        self._flushed = len(self.items)
        self.note(conn, summary)
        self._notify()

    def note(self, conn: Connection, summary: dict[str, Any] | None) -> None:
        """The run row's counts of the stored items and, when given, its summary so far,
        on `conn` inside its transaction. Only a run still `running` is touched."""
        if summary is not None:
            self.noted_summary = dict(summary)
        if self.run_id is None:
            return
        values: dict[str, Any] = {"processed": self._flushed, "errors": self.errors}
        if summary is not None:
            values["summary"] = summary
        conn.execute(update(ops_runs)
                     .where(ops_runs.c.id == self.run_id, ops_runs.c.status == RunStatus.RUNNING)
                     .values(**values))

    def _notify(self) -> None:
        if self.on_progress is not None:
            self.on_progress(
                Progress(self.job_id, self.run_id, len(self.items), self.total, self.errors)
            )


@dataclass
class RunContext:
    engine: Engine
    settings: Settings
    job: JobConfig
    now: datetime  # the reference time: the slot, or the wall clock / --now of a manual run
    dry_run: bool
    params: RunParams
    run_id: int | None
    sink: ItemSink
    cache_factory: Callable[[], Cache]
    stop_event: threading.Event = field(default_factory=threading.Event)
    # When the run started, by the wall clock read at the edge: the outbox's queue time.
    # Not `now`: a `--now` in the future must not hold real emails back until then.
    started_at: datetime | None = None
    deadline: RunDeadline = field(default_factory=lambda: RunDeadline(None))  # the job's timeout

    @property
    def queued_at(self) -> datetime:
        return self.started_at or self.now

    @cached_property
    def cache(self) -> Cache:
        # Opened on first use, so a Redis outage only touches the job that needs the cache.
        return self.cache_factory()

    @property
    def tz(self) -> ZoneInfo:
        return self.job.schedule.timezone

    @property
    def stop_requested(self) -> bool:
        """True after SIGTERM or past the job's timeout: finish the tenant in hand (or
        give it up, when its statement was cancelled), then return."""
        return self.stop_event.is_set() or self.deadline.expired

    def record(self, item: ItemResult) -> None:
        self.sink.add(item)

    def record_many(self, items: Iterable[ItemResult]) -> None:
        self.sink.add_many(items)

    def set_total(self, total: int) -> None:
        self.sink.set_total(total)


def tenant_error(exc: Exception) -> str:
    """The one-line error recorded for a tenant whose item failed.

    Callers catch (OpsError, SQLAlchemyError) per tenant but let UnreachableError through:
    one tenant's constraint violation, deadlock or lock timeout is that tenant's failure;
    a database that is gone fails the run (exit 3)."""
    if isinstance(exc, OpsError):
        return exc.message
    return f"{type(getattr(exc, 'orig', None) or exc).__name__}: {first_line(exc)}"


JobFunction = Callable[[RunContext], dict[str, Any]]

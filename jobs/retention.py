"""Retention: history does not grow without bound.

What goes, at a reference time `now` (`[history]` and `[outbox]` in the settings):
- a run that succeeded, with its items, once it is older than `keep_days`;
- a run that ended any other way (failed, partial, interrupted, skipped, missed...) once
  it is older than `keep_failed_days`;
- never a `running` run, and never one of the newest `keep_min_runs` runs of its job;
- a sent email older than `keep_sent_days`; a dead or failed one older than
  `keep_failed_days` (pending email is never touched);
- an alert event older than `keep_days`, with its deliveries.
A run's age counts from its creation, an email's from its creation (and a sent one's
from its sending too), an alert's from when it was raised.

How: items before their runs, deliveries before their alerts, at most `batch` rows per
statement, each statement its own short transaction, so pruning never holds a lock a
slot needs nor a snapshot that keeps vacuum waiting. `ops_run_counts` is not touched:
the runs counter of /metrics never goes down. One process prunes at a time: the
`prune` lease in `ops_leases`, on PostgreSQL and SQLite alike. A dry run counts, with
the same rules at the same `now`, what the real run then deletes.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Delete, and_, delete, false, func, or_, select, text, update
from sqlalchemy.engine import Connection, Engine

from jobs import audit
from jobs.db import (
    connection,
    insert_ignore,
    is_sqlite,
    ops_alert_deliveries,
    ops_alerts,
    ops_email_outbox,
    ops_email_search,
    ops_leases,
    ops_run_items,
    ops_runs,
    transaction,
)
from jobs.records import RunStatus
from jobs.settings import Settings
from jobs.timeutil import Clock, utc_now

log = logging.getLogger("storeflow.retention")

BATCH = 5_000  # rows per statement at most
RUN_CHUNK = 1_000  # runs read per step; their items go first, then they do
LEASE = "prune"
LEASE_FOR = timedelta(minutes=5)  # renewed between statements while a prune lasts
EVERY = timedelta(hours=1)  # how often the runners prune, between them all


@dataclass(frozen=True)
class Cutoffs:
    """What is old at `now`: rows created before these go."""

    now: datetime
    runs: datetime  # succeeded runs, alerts
    failed: datetime  # other finished runs; dead and failed email
    sent: datetime  # sent email
    keep_min_runs: int

    @classmethod
    def at(cls, settings: Settings, now: datetime) -> Cutoffs:
        h = settings.history
        return cls(now=now, runs=now - timedelta(days=h.keep_days),
                   failed=now - timedelta(days=h.keep_failed_days),
                   sent=now - timedelta(days=settings.outbox.keep_sent_days),
                   keep_min_runs=h.keep_min_runs)


@dataclass(frozen=True)
class PruneResult:
    dry_run: bool
    runs: int = 0
    run_items: int = 0
    emails: int = 0
    alerts: int = 0
    statements: int = 0  # DELETE statements issued (0 for a dry run)
    largest_statement: int = 0  # the most rows one statement deleted
    skipped: str | None = None  # why nothing was done (another process holds the lease)
    complete: bool = True  # False: stopped before the end (a shutdown)

    @property
    def total(self) -> int:
        return self.runs + self.run_items + self.emails + self.alerts

    def deleted(self) -> dict[str, int]:
        return {"runs": self.runs, "run_items": self.run_items, "emails": self.emails,
                "alerts": self.alerts}

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "deleted": self.deleted()}


# --- what is old -------------------------------------------------------------------------------


def _kept_newest(conn: Connection, keep_min_runs: int) -> dict[str, int]:
    """Per job with more than `keep_min_runs` runs, the id of its `keep_min_runs`-th
    newest run: that run and newer ones are kept. A job with fewer runs keeps them all."""
    r = ops_runs.c
    out: dict[str, int] = {}
    for job_id in conn.execute(select(r.job_id).distinct()).scalars().all():
        edge = conn.execute(
            select(r.id).where(r.job_id == job_id).order_by(r.id.desc())
            .offset(keep_min_runs - 1).limit(1)
        ).scalar_one_or_none()
        if edge is not None:
            out[job_id] = int(edge)
    return out


def _old_runs(cut: Cutoffs, kept: dict[str, int]) -> ColumnElement[bool]:
    r = ops_runs.c
    beyond_newest = or_(*(and_(r.job_id == job_id, r.id < edge)
                          for job_id, edge in kept.items())) if kept else false()
    return and_(
        r.created_at < max(cut.runs, cut.failed),  # what the index narrows the search to
        r.status != RunStatus.RUNNING,
        or_(and_(r.status == RunStatus.SUCCEEDED, r.created_at < cut.runs),
            and_(r.status != RunStatus.SUCCEEDED, r.created_at < cut.failed)),
        beyond_newest,
    )


def _old_emails(cut: Cutoffs) -> ColumnElement[bool]:
    e = ops_email_outbox.c
    return or_(
        and_(e.status == "sent", e.created_at < cut.sent,
             or_(e.sent_at.is_(None), e.sent_at < cut.sent)),
        and_(e.status.in_(("dead", "failed")), e.created_at < cut.failed),
    )


def _old_alerts(cut: Cutoffs) -> ColumnElement[bool]:
    return ops_alerts.c.at < cut.runs


# --- the lease ---------------------------------------------------------------------------------


def take_lease(engine: Engine, holder: str, now: datetime, *,
               every: timedelta | None = None) -> bool:
    """Take the prune lease for `holder` unless another process holds it (or, with
    `every`, unless a prune finished less than `every` ago)."""
    lease = ops_leases.c
    with transaction(engine) as conn:
        insert_ignore(conn, ops_leases, [{"name": LEASE}], ["name"])
        conditions = [lease.name == LEASE,
                      or_(lease.until.is_(None), lease.until <= now, lease.holder == holder)]
        if every is not None:
            conditions.append(or_(lease.done_at.is_(None), lease.done_at <= now - every))
        return bool(conn.execute(
            update(ops_leases).where(*conditions).values(holder=holder, until=now + LEASE_FOR)
        ).rowcount)


def lease_holder(engine: Engine, now: datetime) -> str | None:
    lease = ops_leases.c
    with transaction(engine) as conn:
        return conn.execute(
            select(lease.holder).where(lease.name == LEASE, lease.until > now)
        ).scalar_one_or_none()


def _renew(conn: Connection, holder: str, now: datetime) -> bool:
    lease = ops_leases.c
    with conn.begin():
        return bool(conn.execute(
            update(ops_leases).where(lease.name == LEASE, lease.holder == holder)
            .values(until=now + LEASE_FOR)
        ).rowcount)


# --- pruning -----------------------------------------------------------------------------------


def count(engine: Engine, settings: Settings, now: datetime) -> PruneResult:
    """What a prune at `now` would delete (the dry run)."""
    cut = Cutoffs.at(settings, now)
    with transaction(engine) as conn:
        old = _old_runs(cut, _kept_newest(conn, cut.keep_min_runs))
        n_runs = conn.execute(select(func.count()).where(old)).scalar_one()
        n_items = conn.execute(
            select(func.count()).select_from(ops_run_items).where(
                ops_run_items.c.run_id.in_(select(ops_runs.c.id).where(old)))
        ).scalar_one()
        n_emails = conn.execute(
            select(func.count()).select_from(ops_email_outbox).where(_old_emails(cut))
        ).scalar_one()
        n_alerts = conn.execute(
            select(func.count()).select_from(ops_alerts).where(_old_alerts(cut))
        ).scalar_one()
    return PruneResult(True, runs=int(n_runs), run_items=int(n_items), emails=int(n_emails),
                       alerts=int(n_alerts))


class _Pruner:
    """One prune's statements on one connection, each in its own transaction."""

    def __init__(self, conn: Connection, holder: str, clock: Clock, batch: int,
                 stop: threading.Event | None) -> None:
        self.conn = conn
        self.holder = holder
        self.clock = clock
        self.batch = batch
        self.stop = stop
        self.statements = 0
        self.largest = 0
        self.renewed = clock()

    def go_on(self) -> bool:
        """Whether to issue the next statement: not stopping, and the lease still ours."""
        if self.stop is not None and self.stop.is_set():
            return False
        now = self.clock()
        if now - self.renewed > LEASE_FOR / 3:
            if not _renew(self.conn, self.holder, now):
                log.warning("prune: lost the lease; stopping")
                return False
            self.renewed = now
        return True

    def delete(self, stmt: Delete) -> int:
        with self.conn.begin():
            if not is_sqlite(self.conn):
                # A batch lost in a crash is simply deleted again by the next prune.
                self.conn.execute(text("SET LOCAL synchronous_commit = off"))
            n = int(self.conn.execute(stmt).rowcount or 0)
        self.statements += 1
        self.largest = max(self.largest, n)
        return n

    def read(self, stmt: Any) -> list[Any]:
        with self.conn.begin():
            return list(self.conn.execute(stmt).all())

    def delete_limited(self, table: Any, where: ColumnElement[bool]) -> int | None:
        """Delete every row of `table` matching `where`, `batch` rows per statement;
        None when stopped before the end."""
        total = 0
        while True:
            if not self.go_on():
                return None
            n = self.delete(delete(table).where(
                table.c.id.in_(select(table.c.id).where(where).limit(self.batch))))
            total += n
            if n < self.batch:
                return total


def prune(engine: Engine, settings: Settings, now: datetime, *, actor: str, holder: str,
          every: timedelta | None = None, batch: int = BATCH, clock: Clock = utc_now,
          stop: threading.Event | None = None) -> PruneResult:
    """Delete what is old at `now` (see the module docstring) and audit it as `actor`.

    `holder` names this process in the lease. With `every` (the runners), nothing is done
    when a prune finished less than `every` ago. Returns a result with `skipped` set when
    the lease is not ours to take."""
    if not take_lease(engine, holder, clock(), every=every):
        busy = lease_holder(engine, clock())
        return PruneResult(False, skipped=f"{busy} is pruning" if busy
                           else "pruned less than an hour ago")
    cut = Cutoffs.at(settings, now)
    counts = {"runs": 0, "run_items": 0, "emails": 0, "alerts": 0}
    complete = False
    try:
        with connection(engine) as conn:
            p = _Pruner(conn, holder, clock, batch, stop)
            complete = _prune_all(p, cut, counts)
            statements, largest = p.statements, p.largest
    finally:
        _release(engine, holder, clock(), complete, actor, counts)
    return PruneResult(False, runs=counts["runs"], run_items=counts["run_items"],
                       emails=counts["emails"], alerts=counts["alerts"], statements=statements,
                       largest_statement=largest, complete=complete)


def _prune_all(p: _Pruner, cut: Cutoffs, counts: dict[str, int]) -> bool:
    r, items = ops_runs.c, ops_run_items.c
    with p.conn.begin():
        old = _old_runs(cut, _kept_newest(p.conn, cut.keep_min_runs))
    chunk = min(RUN_CHUNK, p.batch)
    after = 0
    while True:
        if not p.go_on():
            return False
        rows = p.read(select(r.id, r.processed).where(old, r.id > after)
                      .order_by(r.id).limit(chunk))
        if not rows:
            break
        after = rows[-1].id
        # Items in packs of runs expected to hold fewer than `batch` of them, so most packs
        # are one statement (a short count ends the pack) and none rescans index entries
        # of items it already deleted.
        pack: list[int] = []
        expected = 0
        for i, row in enumerate(rows):
            pack.append(row.id)
            expected += row.processed
            nxt = rows[i + 1].processed if i + 1 < len(rows) else None
            if nxt is None or expected + nxt >= p.batch:
                n = p.delete_limited(ops_run_items, items.run_id.in_(pack))
                if n is None:
                    return False
                counts["run_items"] += n
                pack, expected = [], 0
        if not p.go_on():
            return False
        counts["runs"] += p.delete(delete(ops_runs).where(r.id.in_([x.id for x in rows]), old))

    e = ops_email_outbox.c
    while True:
        if not p.go_on():
            return False
        ids = [x.id for x in p.read(select(e.id).where(_old_emails(cut))
                                    .order_by(e.id).limit(p.batch))]
        if not ids:
            break
        # An email's search line goes with it: a search must never find a pruned email.
        p.delete(delete(ops_email_search).where(ops_email_search.c.email_id.in_(ids)))
        counts["emails"] += p.delete(delete(ops_email_outbox).where(e.id.in_(ids)))
        if len(ids) < p.batch:
            break

    a = ops_alerts.c
    after = 0
    while True:
        if not p.go_on():
            return False
        ids = [x.id for x in p.read(select(a.id).where(_old_alerts(cut), a.id > after)
                                    .order_by(a.id).limit(chunk))]
        if not ids:
            return True
        after = ids[-1]
        if p.delete_limited(ops_alert_deliveries, ops_alert_deliveries.c.alert_id.in_(ids)) is None:
            return False
        counts["alerts"] += p.delete(delete(ops_alerts).where(a.id.in_(ids)))


def _release(engine: Engine, holder: str, now: datetime, complete: bool, actor: str,
             counts: dict[str, int]) -> None:
    """Give the lease back (noting the prune done when it ran to the end) and audit what
    was deleted, in one transaction."""
    lease = ops_leases.c
    values: dict[str, Any] = {"holder": None, "until": None}
    if complete:
        values["done_at"] = now
    with transaction(engine) as conn:
        conn.execute(update(ops_leases).where(lease.name == LEASE, lease.holder == holder)
                     .values(**values))
        if any(counts.values()):
            audit.record(conn, at=now, actor=actor, action=audit.AuditAction.PRUNE,
                         detail=json.dumps({"deleted": counts,
                                            **({} if complete else {"stopped": True})}))

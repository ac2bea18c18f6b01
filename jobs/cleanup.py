"""cleanup: delete stale cart items, orphaned order products and orphaned cart items.

At most `batch_size` rows go in one DELETE, and every batch is its own short
transaction, so no lock is held long and a stop request lands between two batches.
How a batch finds its rows is what keeps a big table fast:

- by key: each batch starts after the last key of the previous one, `(created_at, id) >
  last` along the created_at index for stale carts on PostgreSQL, `id > last` otherwise.
  Starting from the top every time would wade through the dead rows that earlier batches
  left behind, which grows quadratically with the table.
- by one anti-join (orphans on PostgreSQL): a single statement finds every orphan
  (PostgreSQL hashes the parent ids once, with parallel workers) and writes its place and
  id, numbered, into a temporary table; each batch then deletes the next `size` of them
  by place and id, where the row is still an orphan: a parent inserted since the search
  keeps its rows. Paging the anti-join itself would cost a pass over the parent table (or
  a nested loop) per batch. No statement outlives its batch, so none holds back vacuum
  or needs more than the role's statement_timeout.

On PostgreSQL the phases of different tables run side by side, each on its own
connection: stale and orphaned cart items one after the other in one thread, orphaned order
lines in another. A run is mostly the server's work, and the order-line search alone keeps
one core busy for seconds (`bench/jobs_bench.py`); a phase waiting for the client or for
its commit leaves the other phase the core. The two never touch the same rows or table. A
phase that fails does not stop the other: the run fails once both are done, with every
batch that committed counted. SQLite has one writer at a time, so there they run in turn.

The run's items and summary are written in each batch's own transaction, so a run that is
killed still shows what its committed batches deleted.

A preview evaluates the same predicates as counts per tenant and deletes nothing; its
summary is what the real run that follows reports. A cart item both stale and orphaned is
counted once, as stale, because that phase deletes it first.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    Delete,
    Select,
    Table,
    Text,
    any_,
    bindparam,
    column,
    delete,
    exists,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    table,
    tuple_,
)
from sqlalchemy.engine import Connection, CursorResult, Engine, Transaction
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ClauseElement, Executable

from jobs.context import RunContext
from jobs.db import (
    cart_items,
    connection,
    is_sqlite,
    order_products,
    orders,
    products,
    tenants,
    transaction,
    ts,
)
from jobs.records import ItemResult, ItemStatus

STALE = "stale_cart_items"
ORPHANED_ORDER_PRODUCTS = "orphaned_order_products"
ORPHANED_CART_ITEMS = "orphaned_cart_items"


@dataclass(frozen=True)
class Kind:
    """One kind of row to delete: where it lives, which rows, and how to page them."""

    action: str
    table: Table
    where: ColumnElement[bool]
    keys: tuple[Any, ...]  # the paging key, unique, in the order batches walk it
    by_tenant: bool  # rows carry tenant_id: report per tenant
    one_scan: bool  # find every row with one streamed query instead of paging by key


@dataclass
class Tally:
    deleted: Counter[str | None] = field(default_factory=Counter)
    batches: int = 0
    # Tenants (None: rows without one) first deleted from since the ledger last wrote
    # their items: each batch's own newcomers, so no batch walks every tenant so far.
    fresh: set[str | None] = field(default_factory=set)

    @property
    def total(self) -> int:
        return sum(self.deleted.values())

    def add_batch(self, rows: int, tenant_ids: Sequence[str] | None = None) -> None:
        """One DELETE's outcome: its row count, and the tenant of each row when known."""
        if rows:
            known = len(self.deleted)
            if tenant_ids is None:
                self.deleted[None] += rows
            else:
                self.deleted.update(tenant_ids)
            if len(self.deleted) > known:
                # A Counter keeps its keys in the order they came: the newcomers are last.
                self.fresh.update(islice(self.deleted, known, None))
            self.batches += 1


def kinds(engine: Engine, cutoff: datetime) -> tuple[Kind, ...]:
    sqlite = is_sqlite(engine)
    # ts() is the bare column on PostgreSQL, so the comparison uses cart_items_created_idx.
    stale = ts(cart_items.c.created_at) < cutoff
    return (
        Kind(
            STALE, cart_items, stale,
            (cart_items.c.id,) if sqlite else (cart_items.c.created_at, cart_items.c.id),
            by_tenant=True, one_scan=False,
        ),
        Kind(
            ORPHANED_ORDER_PRODUCTS, order_products,
            ~exists().where(orders.c.id == order_products.c.order_id),
            (order_products.c.id,), by_tenant=False, one_scan=not sqlite,
        ),
        Kind(
            ORPHANED_CART_ITEMS, cart_items,
            ~exists().where(products.c.id == cart_items.c.product_id) & ~stale,
            (cart_items.c.id,), by_tenant=True, one_scan=not sqlite,
        ),
    )


class Ledger:
    """What the run has deleted so far, per kind and tenant, and its record in the run.

    Each batch writes, in its own transaction, the run's summary (rows per kind, batches)
    and an item for each tenant it is the first to delete from; every few seconds it
    rewrites all the items with their current counts instead. Rewriting thousands of
    tenants' totals after every batch would cost more than the deletes. A killed run thus
    shows exactly what its committed batches deleted, and every tenant they deleted from,
    at worst with some tenants' counts a few seconds behind.

    A rewrite costs in proportion to the tenants so far, so the next one waits at least
    REWRITE_SPACING times as long as the last one took: on a slow or loaded database the
    rewrites stay a twentieth of the run instead of taking over (seen: a third of a
    run spent rewriting 10,000 tenants every 5 s)."""

    REWRITE_SECONDS = 5.0
    REWRITE_SPACING = 20

    def __init__(self, ctx: RunContext, size: int) -> None:
        self.ctx = ctx
        self.size = size
        self.tallies: dict[str, Tally] = {}
        self._lock = threading.Lock()  # see commit_batch
        self._names: dict[str, str] = {}
        self._stored_at = time.monotonic()
        self._rewrite_after = self.REWRITE_SECONDS

    def start(self, action: str) -> Tally:
        tally = self.tallies[action] = Tally()
        return tally

    def summary(self) -> dict[str, Any]:
        done = self.tallies.values()
        return {
            STALE: self.tallies.get(STALE, Tally()).total,
            ORPHANED_ORDER_PRODUCTS: self.tallies.get(ORPHANED_ORDER_PRODUCTS, Tally()).total,
            ORPHANED_CART_ITEMS: self.tallies.get(ORPHANED_CART_ITEMS, Tally()).total,
            "batches": sum(t.batches for t in done),
            "batch_size": self.size,
        }

    def commit_batch(self, conn: Connection, tx: Transaction, kind: Kind,
                     result: CursorResult[*tuple[Any, ...]], sqlite: bool) -> None:
        """A batch's DELETE has run in `tx`: count what it deleted, write the run's record
        of it and commit. One phase at a time, from counting to the commit: the summary
        every batch writes then counts committed batches only, and phases side by side never
        write the run's row at once (no waits on its lock inside the database)."""
        with self._lock:
            _add(self.tallies[kind.action], result, kind, sqlite)
            self._record(conn)
            tx.commit()

    def _record(self, conn: Connection) -> None:
        """Inside a batch's transaction, after its DELETE: the run's record of it."""
        if time.monotonic() - self._stored_at >= self._rewrite_after:
            self._store(conn)
            return
        new = [(action, t) for action, tally in self.tallies.items() for t in tally.fresh]
        if new:
            self.ctx.sink.store(conn, self._items(conn, new), self.summary(), append=True)
        else:
            self.ctx.sink.note(conn, self.summary())
        self._forget_fresh()

    def finish(self) -> None:
        with self._lock, transaction(self.ctx.engine) as conn:
            self._store(conn)

    def _store(self, conn: Connection) -> None:
        started = time.monotonic()
        keys = [(action, t) for action, tally in self.tallies.items() for t in tally.deleted]
        self.ctx.sink.store(conn, self._items(conn, keys), self.summary())
        self._forget_fresh()
        self._stored_at = time.monotonic()
        self._rewrite_after = max(self.REWRITE_SECONDS,
                                  self.REWRITE_SPACING * (self._stored_at - started))

    def _forget_fresh(self) -> None:
        for tally in self.tallies.values():
            tally.fresh.clear()

    def _items(self, conn: Connection, keys: list[tuple[str, str | None]]) -> list[ItemResult]:
        """Items for `keys` (kind, tenant): per kind, the rows without a tenant first."""
        wanted = sorted({t for _, t in keys if t is not None} - self._names.keys())
        self._names.update(_tenant_names(conn, wanted))
        order = {action: i for i, action in enumerate(self.tallies)}
        return [
            ItemResult(t, action, ItemStatus.OK, {"deleted": self.tallies[action].deleted[t]},
                       tenant_name=self._names.get(t) if t else None)
            for action, t in sorted(keys, key=lambda k: (order[k[0]], k[1] is not None, k[1] or ""))
        ]


def run(ctx: RunContext) -> dict[str, Any]:
    cutoff = ctx.now - timedelta(days=ctx.job.cart_retention_days)
    size = ctx.job.batch_size
    ledger = Ledger(ctx, size)
    every = kinds(ctx.engine, cutoff)
    for kind in every:  # in this order in the summary and the items, however they run
        ledger.start(kind.action)
    try:
        if ctx.dry_run or is_sqlite(ctx.engine):
            _run_in_turn(ctx, every, ledger)
        else:
            _run_side_by_side(ctx, _by_table(every), ledger)
    except Exception:
        # The batches committed so far are deleted for good: a failed run still says
        # what it deleted, per tenant, if the database lets it; then the failure stands.
        with contextlib.suppress(Exception):
            ledger.finish()
        raise
    ledger.finish()
    return ledger.summary()


def _run_in_turn(ctx: RunContext, todo: Sequence[Kind], ledger: Ledger) -> None:
    size = ledger.size
    for kind in todo:
        if ctx.stop_requested:
            return
        if ctx.dry_run:
            _count(ctx, kind, size, ledger.tallies[kind.action])
        elif kind.one_scan:
            _delete_found(ctx, kind, size, ledger)
        else:
            _delete_by_key(ctx, kind, size, ledger)


def _by_table(todo: Sequence[Kind]) -> list[list[Kind]]:
    """The kinds grouped by the table they delete from, each group in the given order."""
    groups: dict[str, list[Kind]] = {}
    for kind in todo:
        groups.setdefault(kind.table.name, []).append(kind)
    return list(groups.values())


def _run_side_by_side(ctx: RunContext, groups: list[list[Kind]], ledger: Ledger) -> None:
    """Each group in its own thread (the first in this one), its kinds in turn. The
    threads run in copies of this one's context: the run's timeout (RunDeadline.guard)
    reaches their connections too. The first failure is raised once all have ended."""
    first, *others = groups
    with ThreadPoolExecutor(max_workers=max(1, len(others)),
                            thread_name_prefix="cleanup") as pool:
        running = [pool.submit(contextvars.copy_context().run, _run_in_turn, ctx, group, ledger)
                   for group in others]
        failures: list[BaseException | None] = []
        try:
            _run_in_turn(ctx, first, ledger)
        except Exception as exc:
            failures.append(exc)
        failures += [phase.exception() for phase in running]  # waits for each
    for failure in failures:
        if failure is not None:
            raise failure


def _tenant_column(kind: Kind) -> Any:
    return kind.table.c.tenant_id if kind.by_tenant else None


def _count(ctx: RunContext, kind: Kind, size: int, tally: Tally) -> None:
    """The preview: what the batches would delete, and in how many statements."""
    tenant = _tenant_column(kind)
    cols = [tenant, func.count()] if tenant is not None else [func.count()]
    q = select(*cols).select_from(kind.table).where(kind.where)
    if tenant is not None:
        q = q.group_by(tenant)
    with transaction(ctx.engine) as conn:
        for row in conn.execute(q):
            n = int(row[-1])
            if n:
                tally.deleted[row[0] if tenant is not None else None] += n
    total = tally.total
    tally.batches = math.ceil(total / size)


def _delete_by_key(ctx: RunContext, kind: Kind, size: int, ledger: Ledger) -> None:
    """Batches walk the paging key: find the last key of the next `size` rows, then delete
    the rows between the previous batch's last key and it. Both statements read only this
    batch's rows, neither revisits earlier batches, and no DELETE is sent for nothing."""
    key = tuple_(*kind.keys) if len(kind.keys) > 1 else kind.keys[0]
    after, upto = key > _key_params(kind, "after"), key <= _key_params(kind, "upto")
    sqlite = is_sqlite(ctx.engine)

    def bound_of(*where: ColumnElement[bool]) -> Select[Any]:
        batch = select(*kind.keys).where(*where).order_by(*kind.keys).limit(size).subquery()
        return select(*batch.c).order_by(*(c.desc() for c in batch.c)).limit(1)

    def delete_upto(*where: ColumnElement[bool]) -> Any:
        return _tallied(delete(kind.table).where(*where, upto), kind, sqlite)

    # Built once: each batch only binds new key values, so nothing is compiled again.
    first = (bound_of(kind.where), delete_upto(kind.where))
    following = (bound_of(kind.where, after), delete_upto(kind.where, after))
    params: dict[str, Any] = {}
    with _batches(ctx.engine) as conn:
        while not ctx.stop_requested:
            find_bound, remove = following if params else first
            with conn.begin() as tx:
                bound = conn.execute(find_bound, params).first()
                if bound is None:
                    return
                result = conn.execute(remove, {**params, **_key_bind(kind, "upto", bound)})
                ledger.commit_batch(conn, tx, kind, result, sqlite)
            params = _key_bind(kind, "after", bound)


def _tallied(stmt: Delete, kind: Kind, sqlite: bool) -> Any:
    """The DELETE as a statement that also says what it deleted, for `_add`.

    On PostgreSQL the DELETE sits in a CTE and one row comes back: the count and, for rows
    with a tenant, their tenant ids. A row per deleted row (RETURNING alone) costs ~1 µs
    each in the driver; over a million stale carts that is a second. The ids come as one
    comma-separated string, which PostgreSQL builds and the driver reads faster than an
    array (0.17 s less over a million stale carts); an id that itself holds a comma, or
    none, comes in an array beside it, so every id arrives exactly as stored."""
    tenant = _tenant_column(kind)
    if sqlite:
        return stmt.returning(tenant) if tenant is not None else stmt
    done = stmt.returning(tenant if tenant is not None else kind.table.c.id).cte("deleted")
    if tenant is None:
        return select(func.count(), null(), null()).select_from(done)
    ids = done.c[0]
    plain = func.strpos(ids, _SEPARATOR) == 0
    return select(
        func.count(),
        func.string_agg(ids, literal(_SEPARATOR)).filter(plain),
        func.array_agg(ids).filter(or_(~plain, ids.is_(None))),
    ).select_from(done)


_SEPARATOR = ","


@contextmanager
def _batches(engine: Engine) -> Iterator[Connection]:
    """The connection a phase holds for all its batches, each its own transaction
    (`with conn.begin():`), so a batch costs no pool checkout, ping or reset.

    On PostgreSQL its commits do not wait for the WAL flush: a batch lost in a crash is
    simply deleted again by the next run, and the run's own bookkeeping commits
    synchronously afterwards, which makes every batch before it durable. The setting is
    the session's, not each transaction's (one round trip less per batch), so it is reset
    before the connection goes back to the pool, or the connection is discarded."""
    with connection(engine) as conn:
        if is_sqlite(conn):
            yield conn
            return
        conn.exec_driver_sql("SET synchronous_commit = off")
        conn.commit()
        try:
            yield conn
        finally:
            try:
                conn.rollback()
                conn.exec_driver_sql("RESET synchronous_commit")
                conn.exec_driver_sql("DISCARD TEMP")  # the orphan phases' found rows
                conn.commit()
            except Exception:  # whatever broke, this session must not go back to the pool
                conn.invalidate()


def _add(tally: Tally, result: CursorResult[*tuple[Any, ...]], kind: Kind, sqlite: bool
         ) -> None:
    """Counts what one `_tallied` statement deleted."""
    if not sqlite:
        count, joined, others = result.one()
        if not kind.by_tenant:
            tally.add_batch(int(count))
            return
        ids = joined.split(_SEPARATOR) if joined is not None else []
        tally.add_batch(int(count), ids + others if others else ids)
    elif kind.by_tenant:
        returned = result.scalars().all()
        tally.add_batch(len(returned), returned)
    else:
        tally.add_batch(int(result.rowcount))


def _key_params(kind: Kind, name: str) -> Any:
    params = [bindparam(f"{name}_{i}", type_=col.type) for i, col in enumerate(kind.keys)]
    return tuple_(*params) if len(params) > 1 else params[0]


def _key_bind(kind: Kind, name: str, values: Sequence[Any]) -> dict[str, Any]:
    return {f"{name}_{i}": v for i, v in enumerate(values)}


def _delete_found(ctx: RunContext, kind: Kind, size: int, ledger: Ledger) -> None:
    """Batches of rows found by one anti-join (PostgreSQL), deleted by their place.

    The search is one statement that writes every match's (ctid, id), numbered, into a
    temporary table and ends: nothing stays open while the batches run. Each batch's DELETE
    joins its numbered range of that table and checks the row's condition again, against
    its own snapshot: a row whose parent was inserted since the search is kept.

    A row is deleted by its ctid and its id together: the ctid goes straight to the row
    (no index lookup), and the id makes sure it is still the row that was found. A row
    updated meanwhile has moved and is left for the next run; a slot reused by another
    row does not match its id."""
    batch = (
        select(_FOUND.c.tid, _FOUND.c.id)
        .where(_FOUND.c.n > bindparam("after"), _FOUND.c.n <= bindparam("upto"))
        .subquery("batch")
    )
    remove = delete(kind.table).where(
        kind.table.c.id == batch.c.id, _ctid(kind.table) == batch.c.tid, kind.where
    )
    stmt = _tallied(remove, kind, sqlite=False)
    search = select(
        func.row_number().over().label("n"), _ctid(kind.table).label("tid"),
        kind.table.c.id.label("id"),
    ).where(kind.where)
    with _batches(ctx.engine) as conn:  # the table lives in this session; dropped with it
        with conn.begin():
            found = conn.execute(_CreateTempTable(_FOUND.name, search)).rowcount
            conn.exec_driver_sql(f"CREATE INDEX ON pg_temp.{_FOUND.name} (n)")
        for after in range(0, found, size):
            if ctx.stop_requested:
                return
            with conn.begin() as tx:
                result = conn.execute(stmt, {"after": after, "upto": after + size})
                ledger.commit_batch(conn, tx, kind, result, sqlite=False)


def _ctid(table: Table) -> ColumnElement[Any]:
    """The row's physical address, PostgreSQL's system column `ctid`."""
    return literal_column(f"{table.name}.ctid")


# The rows an orphan search found: n = 1, 2, ... (a batch is a range of n), place, id.
_FOUND = table("cleanup_found", column("n", BigInteger), column("tid"), column("id", Text),
               schema="pg_temp")


class _CreateTempTable(Executable, ClauseElement):
    """CREATE TEMPORARY TABLE name AS query. Unlike INSERT ... SELECT, it runs the query
    with PostgreSQL's parallel workers."""

    inherit_cache = False

    def __init__(self, name: str, query: Select[Any]) -> None:
        self.name = name
        self.query = query


@compiles(_CreateTempTable)
def _create_temp_table(element: _CreateTempTable, compiler: Any, **kw: Any) -> str:
    return f"CREATE TEMPORARY TABLE {element.name} AS {compiler.process(element.query, **kw)}"


def _tenant_names(conn: Connection, ids: list[str]) -> dict[str, str]:
    names: dict[str, str] = {}
    if not ids:
        return names
    if is_sqlite(conn):
        for start in range(0, len(ids), 1000):
            rows = conn.execute(select(tenants.c.id, tenants.c.name)
                                .where(tenants.c.id.in_(ids[start : start + 1000])))
            names.update((row.id, row.name) for row in rows)
    else:
        # One array parameter: an IN list of 1,000 is a statement compiled afresh each time.
        wanted = bindparam("ids", ids, type_=ARRAY(Text))
        rows = conn.execute(select(tenants.c.id, tenants.c.name)
                            .where(tenants.c.id == any_(wanted)))
        names.update((row.id, row.name) for row in rows)
    return names

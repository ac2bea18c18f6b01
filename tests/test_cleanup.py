"""cleanup on SQLite and PostgreSQL: the cut-off, orphans, batches, preview."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Connection, Engine

from jobs import runs
from jobs.db import (
    cart_items,
    is_sqlite,
    make_engine,
    ops_email_outbox,
    ops_run_items,
    ops_runs,
    order_products,
    orders,
    products,
    tenants,
)
from jobs.errors import UsageError
from jobs.records import ItemStatus, RunReport, RunStatus
from jobs.settings import Settings
from tests.conftest import EXE, cli
from tests.factories import (
    add_cart_item,
    add_order,
    add_order_product,
    add_product,
    add_tenant,
)

NOW = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
CUTOFF = NOW - timedelta(days=30)
FRESH = NOW - timedelta(days=1)
OLD = CUTOFF - timedelta(days=3)


def trigger(engine: Engine, settings: Settings, **kw: Any) -> RunReport:
    return runs.execute(engine, settings, "cleanup", now=NOW, started_by="test", **kw)


def with_batch_size(settings: Settings, size: int) -> Settings:
    jobs = dict(settings.jobs)
    jobs["cleanup"] = replace(jobs["cleanup"], batch_size=size)
    return replace(settings, jobs=jobs)


def cart_ids(engine: Engine) -> set[str]:
    with engine.connect() as c:
        return set(c.execute(select(cart_items.c.id)).scalars())


def order_product_ids(engine: Engine) -> set[str]:
    with engine.connect() as c:
        return set(c.execute(select(order_products.c.id)).scalars())


def items_of(report: RunReport) -> list[tuple[str | None, str, str, dict[str, Any]]]:
    return [(i.tenant_id, i.action, str(i.status), dict(i.detail)) for i in report.items]


@pytest.fixture
def deletes(engine: Engine) -> Iterator[list[tuple[str, int]]]:
    """Every statement the job sends that deletes from a platform table: its table and the rows
    it removed. On PostgreSQL that is the transaction's own count of deleted rows before and
    after the statement, since a DELETE inside WITH reports the outer SELECT's rows; on SQLite
    the cursor's, which is unreliable (sqlite3 counts RETURNING rows as read)."""
    seen: list[tuple[str, int]] = []
    pattern = re.compile(r"\bDELETE FROM (cart_items|order_products)\b")

    def deleted_so_far(cursor: Any, table: str) -> int:
        with cursor.connection.cursor() as own:
            own.execute("SELECT pg_stat_get_xact_tuples_deleted(%s::regclass)", (table,))
            row = own.fetchone()
        return int(row[0]) if row else 0

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        found = pattern.search(statement)
        if found is not None and not is_sqlite(engine):
            conn.info["deleted_before"] = deleted_so_far(cursor, found[1])

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        found = pattern.search(statement)
        if found is None:
            return
        if is_sqlite(engine):
            seen.append((found[1], cursor.rowcount))
        else:
            seen.append((found[1], deleted_so_far(cursor, found[1])
                         - conn.info.pop("deleted_before")))

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    yield seen
    event.remove(engine, "after_cursor_execute", after)
    event.remove(engine, "before_cursor_execute", before)


def test_cutoff_orphans_and_items(engine: Engine, settings: Settings) -> None:
    ta = add_tenant(engine, id="t-a", name="Alpha")
    tb = add_tenant(engine, id="t-b", name="Beta")
    pa, pb = add_product(engine, ta), add_product(engine, tb)
    at_cutoff = add_cart_item(engine, ta, pa, CUTOFF)  # exactly on the cut-off: kept
    before_cutoff = add_cart_item(engine, ta, pa, CUTOFF - timedelta(microseconds=1))
    old_a = add_cart_item(engine, ta, pa, OLD)
    old_b = add_cart_item(engine, tb, pb, OLD)
    fresh = add_cart_item(engine, tb, pb, FRESH)
    orphan_cart = add_cart_item(engine, tb, "gone-product", FRESH)
    stale_orphan = add_cart_item(engine, tb, "gone-product", OLD)  # counted once, as stale
    order = add_order(engine, ta, FRESH, "10.00", lines=[(pa, 1), (pa, 2)])
    kept_lines = order_product_ids(engine)
    orphan_lines = {add_order_product(engine, "gone-order", pa) for _ in range(2)}

    report = trigger(engine, settings)

    assert report.status is RunStatus.SUCCEEDED, report.error
    assert cart_ids(engine) == {at_cutoff, fresh}
    assert order_product_ids(engine) == kept_lines and len(kept_lines) == 2 and order
    assert dict(report.summary) == {
        "stale_cart_items": 4, "orphaned_order_products": 2, "orphaned_cart_items": 1,
        "batches": 3, "batch_size": 5000,
    }
    assert items_of(report) == [
        (ta, "stale_cart_items", "ok", {"deleted": 2}),
        (tb, "stale_cart_items", "ok", {"deleted": 2}),
        (None, "orphaned_order_products", "ok", {"deleted": 2}),
        (tb, "orphaned_cart_items", "ok", {"deleted": 1}),
    ]
    assert [i.tenant_name for i in report.items] == ["Alpha", "Beta", None, "Beta"]
    with engine.connect() as c:
        stored = c.execute(select(ops_run_items.c.tenant_id, ops_run_items.c.action,
                                  ops_run_items.c.detail).order_by(ops_run_items.c.seq)).all()
    assert [(r.tenant_id, r.action, r.detail) for r in stored] == [
        (t, a, d) for t, a, _, d in items_of(report)
    ]
    assert {before_cutoff, old_a, old_b, orphan_cart, stale_orphan}.isdisjoint(cart_ids(engine))
    assert orphan_lines.isdisjoint(order_product_ids(engine))


def test_sqlite_text_timestamps_compare_as_times(engine: Engine, settings: Settings) -> None:
    """Rows written by other tools: no fraction, or a 'T' separator. On the cut-off is kept."""
    if not is_sqlite(engine):
        pytest.skip("text timestamps exist only on SQLite")
    t = add_tenant(engine)
    p = add_product(engine, t)
    rows = {"no-fraction-at-cutoff": "2026-10-30 02:00:00", "t-at-cutoff": "2026-10-30T02:00:00",
            "no-fraction-before": "2026-10-30 01:59:59", "t-before": "2026-10-30T01:59:59.999999"}
    with engine.begin() as c:
        for cid, created in rows.items():
            c.exec_driver_sql(
                "INSERT INTO cart_items (id, tenant_id, product_id, quantity, created_at) "
                "VALUES (?, ?, ?, 1, ?)", (cid, t, p, created))

    report = trigger(engine, settings)

    assert cart_ids(engine) == {"no-fraction-at-cutoff", "t-at-cutoff"}
    assert report.summary["stale_cart_items"] == 2


def _stale(engine: Engine, tenant: str, product: str, i: int) -> None:
    add_cart_item(engine, tenant, product, OLD - timedelta(minutes=i))


def _orphaned_line(engine: Engine, tenant: str, product: str, i: int) -> None:
    add_order_product(engine, f"gone-order-{i}", product)


def _stale_and_orphaned_lines(engine: Engine, **tenant: Any) -> tuple[str, str]:
    """A tenant with a product, three stale cart items and three orphaned order lines
    (`_stale`, `_orphaned_line` 0-2): (tenant id, product id)."""
    t = add_tenant(engine, **tenant)
    p = add_product(engine, t)
    for i in range(3):
        _stale(engine, t, p, i)
        _orphaned_line(engine, t, p, i)
    return t, p


def _orphaned_cart(engine: Engine, tenant: str, product: str, i: int) -> None:
    add_cart_item(engine, tenant, f"gone-product-{i}", FRESH)


def lock_first_orphaned_line(engine: Engine) -> Connection:
    """Another client's row lock on the orphaned line of `_orphaned_line(..., 0)`, held until
    the returned connection rolls back: the order-line phase's first DELETE waits for it."""
    lock = engine.connect()
    lock.execute(select(order_products.c.id).where(order_products.c.order_id == "gone-order-0")
                 .with_for_update())
    return lock


@pytest.mark.parametrize(("kind", "table", "make"), [
    ("stale_cart_items", "cart_items", _stale),
    ("orphaned_order_products", "order_products", _orphaned_line),
    ("orphaned_cart_items", "cart_items", _orphaned_cart),
])
def test_five_rows_in_batches_of_two(engine: Engine, settings: Settings,
                                     deletes: list[tuple[str, int]], kind: str, table: str,
                                     make: Callable[[Engine, str, str, int], None]) -> None:
    t = add_tenant(engine)
    p = add_product(engine, t)
    for i in range(5):
        make(engine, t, p, i)
    kept_cart = add_cart_item(engine, t, p, FRESH)
    kept_line = add_order_product(engine, add_order(engine, t, FRESH, "5.00"), p)

    report = trigger(engine, with_batch_size(settings, 2))

    assert report.status is RunStatus.SUCCEEDED, report.error
    assert report.summary[kind] == 5
    assert report.summary["batches"] == 3
    assert report.summary["batch_size"] == 2
    assert [name for name, _ in deletes] == [table] * 3  # none for kinds with nothing to do
    if not is_sqlite(engine):
        assert [rows for _, rows in deletes] == [2, 2, 1]
    assert cart_ids(engine) == {kept_cart}
    assert order_product_ids(engine) == {kept_line}


def test_second_run_deletes_nothing(engine: Engine, settings: Settings) -> None:
    t, p = _stale_and_orphaned_lines(engine)
    for i in range(3):
        _orphaned_cart(engine, t, p, i)
    first = trigger(engine, with_batch_size(settings, 2))
    assert first.summary["stale_cart_items"] == 3

    second = trigger(engine, with_batch_size(settings, 2))

    assert second.status is RunStatus.SUCCEEDED
    assert dict(second.summary) == {
        "stale_cart_items": 0, "orphaned_order_products": 0, "orphaned_cart_items": 0,
        "batches": 0, "batch_size": 2,
    }
    assert second.items == ()


def test_preview_reports_the_real_run_and_deletes_nothing(engine: Engine,
                                                          settings: Settings) -> None:
    small = with_batch_size(settings, 2)
    ta, tb = add_tenant(engine), add_tenant(engine)
    pa = add_product(engine, ta)
    for i in range(3):
        _stale(engine, ta, pa, i)
        _orphaned_line(engine, ta, pa, i)
    _stale(engine, tb, pa, 9)
    _orphaned_cart(engine, tb, pa, 1)
    add_cart_item(engine, tb, "gone-product", OLD)  # stale and orphaned: stale only
    add_cart_item(engine, ta, pa, FRESH)
    carts, lines = cart_ids(engine), order_product_ids(engine)

    preview = trigger(engine, small, dry_run=True)

    assert preview.dry_run and preview.run_id is None and preview.message == "Preview completed"
    assert cart_ids(engine) == carts and order_product_ids(engine) == lines
    with engine.connect() as c:
        assert c.execute(select(ops_run_items)).first() is None

    real = trigger(engine, small)

    assert dict(preview.summary) == dict(real.summary)
    assert dict(real.summary) == {
        "stale_cart_items": 5, "orphaned_order_products": 3, "orphaned_cart_items": 1,
        "batches": 3 + 2 + 1, "batch_size": 2,
    }
    assert items_of(preview) == items_of(real)
    assert all(i.status is ItemStatus.OK for i in real.items)
    assert len(cart_ids(engine)) == 1 and order_product_ids(engine) == set()


def stopped_after_first_delete(engine: Engine, settings: Settings,
                               deletes: list[tuple[str, int]]) -> RunReport:
    """A run whose stop request arrives as soon as its first DELETE has run."""
    stop = threading.Event()

    def stop_after_first_delete(*args: Any) -> None:
        if deletes:
            stop.set()

    event.listen(engine, "after_cursor_execute", stop_after_first_delete)
    try:
        return trigger(engine, settings, stop=stop)
    finally:
        event.remove(engine, "after_cursor_execute", stop_after_first_delete)


def test_stop_request_lands_between_batches(engine: Engine, settings: Settings,
                                            deletes: list[tuple[str, int]]) -> None:
    t = add_tenant(engine)
    p = add_product(engine, t)
    for i in range(5):
        _stale(engine, t, p, i)
    report = stopped_after_first_delete(engine, with_batch_size(settings, 2), deletes)

    assert report.status is RunStatus.INTERRUPTED
    assert report.summary["stale_cart_items"] == 2 and report.summary["batches"] == 1
    assert len(cart_ids(engine)) == 3
    assert items_of(report) == [(t, "stale_cart_items", "ok", {"deleted": 2})]


def test_a_multiple_of_the_batch_size_across_tenants(engine: Engine, settings: Settings,
                                                     deletes: list[tuple[str, int]]) -> None:
    small = with_batch_size(settings, 2)
    ta, tb = add_tenant(engine), add_tenant(engine)
    p = add_product(engine, ta)
    for i, tenant in enumerate((ta, tb, tb, ta)):
        _stale(engine, tenant, p, i)
    kept = add_cart_item(engine, ta, p, FRESH)

    preview = trigger(engine, small, dry_run=True)
    real = trigger(engine, small)

    assert dict(real.summary) == dict(preview.summary) == {
        "stale_cart_items": 4, "orphaned_order_products": 0, "orphaned_cart_items": 0,
        "batches": 2, "batch_size": 2,
    }
    assert sorted(items_of(real)) == sorted([(ta, "stale_cart_items", "ok", {"deleted": 2}),
                                             (tb, "stale_cart_items", "ok", {"deleted": 2})])
    assert all(rows <= 2 for _, rows in deletes)
    assert cart_ids(engine) == {kept}


def test_stop_during_the_orphan_search_ends_it_and_the_next_run_finishes(
        engine: Engine, settings: Settings, deletes: list[tuple[str, int]]) -> None:
    """On PostgreSQL the orphans come from one streamed query on a second connection: a stop
    request cancels it mid-stream, and the pool's connections stay usable."""
    t = add_tenant(engine)
    p = add_product(engine, t)
    for i in range(5):
        _orphaned_line(engine, t, p, i)
    first = stopped_after_first_delete(engine, with_batch_size(settings, 2), deletes)

    assert first.status is RunStatus.INTERRUPTED
    assert first.summary["orphaned_order_products"] == 2
    assert len(order_product_ids(engine)) == 3

    second = trigger(engine, with_batch_size(settings, 2))

    assert second.status is RunStatus.SUCCEEDED, second.error
    assert second.summary["orphaned_order_products"] == 3
    assert order_product_ids(engine) == set()


def test_an_orphan_changed_after_it_was_found_is_counted_only_when_deleted(
        engine: Engine, settings: Settings, deletes: list[tuple[str, int]]) -> None:
    """PostgreSQL deletes a found orphan by its place and id together: a row updated after the
    search has moved, so this run leaves it (and does not count it) and the next one deletes it.
    SQLite re-reads each batch, so there the row goes in the same run. Either way the counts
    are the rows actually deleted."""
    t = add_tenant(engine)
    p = add_product(engine, t)
    for i in range(4):
        _orphaned_line(engine, t, p, i)
    with engine.connect() as c:
        last = max(c.execute(select(order_products.c.id)).scalars())
    changed = threading.Event()

    def change_the_last_after_first_batch(conn: Any, cursor: Any, statement: str,
                                          *args: Any) -> None:
        # After the first batch: on PostgreSQL just before the phase's next DELETE, in the
        # phase's own thread (the cart phases run beside it); on SQLite before the next
        # BEGIN IMMEDIATE, when no transaction holds the write lock.
        if not deletes or changed.is_set():
            return
        if is_sqlite(engine) and not statement.startswith("BEGIN IMMEDIATE"):
            return
        if not is_sqlite(engine) and "DELETE FROM order_products" not in statement:
            return
        changed.set()
        with engine.begin() as c:
            c.execute(order_products.update().where(order_products.c.id == last)
                      .values(quantity=7))

    event.listen(engine, "before_cursor_execute", change_the_last_after_first_batch)
    try:
        first = trigger(engine, with_batch_size(settings, 2))
    finally:
        event.remove(engine, "before_cursor_execute", change_the_last_after_first_batch)

    assert first.status is RunStatus.SUCCEEDED, first.error
    assert changed.is_set()
    assert first.summary["orphaned_order_products"] == sum(rows for _, rows in deletes)
    if is_sqlite(engine):
        assert first.summary["orphaned_order_products"] == 4
        assert order_product_ids(engine) == set()
    else:
        assert first.summary["orphaned_order_products"] == 3
        assert order_product_ids(engine) == {last}
    second = trigger(engine, with_batch_size(settings, 2))
    assert order_product_ids(engine) == set()
    assert first.summary["orphaned_order_products"] + second.summary["orphaned_order_products"] == 4


def test_orphans_with_awkward_ids_are_deleted_and_others_kept(engine: Engine,
                                                              settings: Settings) -> None:
    """Ids are text: quotes, backslashes, commas and braces travel to the DELETE intact."""
    t = add_tenant(engine, id='tenant "quoted", {braced} \\ back')
    p = add_product(engine, t)
    awkward = ['line "1"', "line \\2", "line,3", "{line 4}", "NULL", " line 6 "]
    with engine.begin() as c:
        c.execute(order_products.insert(), [
            {"id": i, "order_id": f"gone {i}", "product_id": p, "quantity": 1, "price": 1}
            for i in awkward
        ])
        c.execute(cart_items.insert(), [
            {"id": i, "tenant_id": t, "product_id": f"gone {i}", "customer_id": None,
             "quantity": 1, "created_at": FRESH}
            for i in awkward
        ])
    kept_line = add_order_product(engine, add_order(engine, t, FRESH, "5.00"), p)
    kept_cart = add_cart_item(engine, t, p, FRESH)

    report = trigger(engine, with_batch_size(settings, 4))

    assert report.status is RunStatus.SUCCEEDED, report.error
    assert report.summary["orphaned_order_products"] == 6
    assert report.summary["orphaned_cart_items"] == 6
    assert order_product_ids(engine) == {kept_line}
    assert cart_ids(engine) == {kept_cart}
    assert (t, "orphaned_cart_items", "ok", {"deleted": 6}) in items_of(report)


@pytest.mark.parametrize("size", [4, 1])
def test_each_tenant_is_counted_as_its_id_is_stored_whatever_it_holds(
        engine: Engine, settings: Settings, deletes: list[tuple[str, int]], size: int) -> None:
    """Batches mixing tenants whose ids hold commas, quotes or nothing at all, and batches
    of one (an id with a comma alone, the empty id alone): the stale carts' counts land on
    exactly those tenants (PostgreSQL reads most ids from one comma-separated string, so a
    comma must not split one)."""
    odd = [add_tenant(engine, id=i) for i in ("plain", "a,b", ",", "", 'say "hi"', "a")]
    p = add_product(engine, odd[0])
    per_tenant = {t: n + 1 for n, t in enumerate(odd)}  # 1 to 6 stale carts each
    i = 0
    for _ in range(6):
        for t, n in per_tenant.items():
            if n > 0:
                _stale(engine, t, p, i)
                per_tenant[t] = n - 1
                i += 1

    report = trigger(engine, with_batch_size(settings, size))

    assert report.status is RunStatus.SUCCEEDED, report.error
    assert report.summary["stale_cart_items"] == 21
    assert sorted(items_of(report)) == sorted(
        (t, "stale_cart_items", "ok", {"deleted": n + 1}) for n, t in enumerate(odd))
    assert all(rows <= size for _, rows in deletes)
    assert cart_ids(engine) == set()


def test_connections_go_back_to_the_pool_with_synchronous_commit_on(
        engine: Engine, settings: Settings) -> None:
    """The batches turn off waiting for the WAL flush for their session; nothing else that
    borrows a pooled connection afterwards may inherit that."""
    if is_sqlite(engine):
        pytest.skip("synchronous_commit is a PostgreSQL setting")
    _stale_and_orphaned_lines(engine)

    assert trigger(engine, with_batch_size(settings, 2)).status is RunStatus.SUCCEEDED

    held = [engine.connect() for _ in range(5)]  # every connection the pool keeps
    try:
        assert {c.exec_driver_sql("SHOW synchronous_commit").scalar() for c in held} == {"on"}
    finally:
        for c in held:
            c.close()


def test_a_statement_timeout_does_not_cut_a_long_orphan_phase_off(
        engine: Engine, db_url: str, settings: Settings) -> None:
    """An orphan phase lasts longer than a role's statement_timeout allows a statement:
    the search and every batch are statements of their own, each well within it."""
    if is_sqlite(engine):
        pytest.skip("statement_timeout is a PostgreSQL setting; SQLite pages by key")
    orphans = 200_000  # more than the socket buffers hold, so the server waits for reads
    with engine.begin() as c:
        c.exec_driver_sql(
            "INSERT INTO order_products (id, order_id, product_id, quantity, price) "
            f"SELECT 'op-' || i, 'gone-' || i, 'p', 1, 1 FROM generate_series(1, {orphans}) i")
    timed_out = make_engine(f"{db_url} -cstatement_timeout%3D1000")
    with timed_out.connect() as c:
        assert c.exec_driver_sql("SHOW statement_timeout").scalar() == "1s"

    def slow_batches(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "DELETE FROM order_products" in statement:
            time.sleep(0.05)  # 40 batches: the phase outlasts the timeout

    event.listen(timed_out, "after_cursor_execute", slow_batches)
    try:
        report = trigger(timed_out, with_batch_size(settings, 5_000))
    finally:
        event.remove(timed_out, "after_cursor_execute", slow_batches)
        timed_out.dispose()

    assert report.status is RunStatus.SUCCEEDED, report.error
    assert report.summary["orphaned_order_products"] == orphans
    assert order_product_ids(engine) == set()


def test_a_run_that_fails_midway_still_records_what_it_deleted(
        engine: Engine, settings: Settings, deletes: list[tuple[str, int]]) -> None:
    """Batches commit one by one: when a later phase fails, the run fails, and its items
    still say which tenants' rows the committed batches removed."""
    t, _ = _stale_and_orphaned_lines(engine)

    def refuse_order_products(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "DELETE FROM order_products" in statement:
            raise RuntimeError("lock timeout (injected)")

    event.listen(engine, "before_cursor_execute", refuse_order_products)
    try:
        report = trigger(engine, with_batch_size(settings, 2))
    finally:
        event.remove(engine, "before_cursor_execute", refuse_order_products)

    assert report.status is RunStatus.FAILED
    assert "lock timeout (injected)" in (report.error or "")
    assert items_of(report) == [(t, "stale_cart_items", "ok", {"deleted": 3})]
    with engine.connect() as c:
        stored = c.execute(select(ops_run_items.c.tenant_id, ops_run_items.c.detail)).all()
        summary = c.execute(select(ops_runs.c.summary)).scalar_one()
    assert [tuple(row) for row in stored] == [(t, {"deleted": 3})]
    # The summary the batches wrote stays the run's: the failure does not wipe it.
    assert summary == dict(report.summary) == {
        "stale_cart_items": 3, "orphaned_order_products": 0, "orphaned_cart_items": 0,
        "batches": 2, "batch_size": 2}
    assert len(cart_ids(engine)) == 0 and len(order_product_ids(engine)) == 3


def test_cart_phases_go_on_while_the_order_line_phase_waits(
        engine: Engine, settings: Settings) -> None:
    """On PostgreSQL the phases of different tables run side by side: while another client
    holds a row lock on an orphaned order line, the run deletes every stale and orphaned
    cart item, and records them; once the lock goes, the order lines go too."""
    if is_sqlite(engine):
        pytest.skip("SQLite runs the phases in turn (one writer); it has no row locks")
    t, p = _stale_and_orphaned_lines(engine, id="t-a", name="Tenant a")
    for i in range(3):
        _orphaned_cart(engine, t, p, i)
    lock = lock_first_orphaned_line(engine)
    reports: list[RunReport] = []
    run = threading.Thread(target=lambda: reports.append(trigger(engine,
                                                                 with_batch_size(settings, 2))))
    run.start()
    try:
        deadline = time.monotonic() + 30
        while True:  # the cart phases finish while the order-line phase waits for the lock
            with engine.connect() as c:
                summary = c.execute(select(ops_runs.c.summary)).scalar()
            if (summary or {}).get("orphaned_cart_items") == 3:
                break
            assert run.is_alive() and time.monotonic() < deadline, summary
            time.sleep(0.02)
        assert cart_ids(engine) == set()
        assert len(order_product_ids(engine)) == 3 and run.is_alive()
        assert summary["stale_cart_items"] == 3 and summary["orphaned_order_products"] == 0
    finally:
        lock.rollback()
        lock.close()
        run.join(30)

    (report,) = reports
    assert report.status is RunStatus.SUCCEEDED, report.error
    assert order_product_ids(engine) == set()
    assert items_of(report) == [
        (t, "stale_cart_items", "ok", {"deleted": 3}),
        (None, "orphaned_order_products", "ok", {"deleted": 3}),
        (t, "orphaned_cart_items", "ok", {"deleted": 3}),
    ]


def test_the_timeout_reaches_the_phase_that_runs_beside(engine: Engine,
                                                        settings: Settings) -> None:
    """The order-line phase runs in a thread of its own: a statement of it that waits for
    a row lock is cancelled at the run's timeout like one of the run's own thread, and the
    run ends timed out with the cart phases' batches counted."""
    if is_sqlite(engine):
        pytest.skip("SQLite runs the phases in turn (one writer); it has no row locks")
    _stale_and_orphaned_lines(engine)
    jobs = dict(settings.jobs)
    jobs["cleanup"] = replace(jobs["cleanup"], batch_size=2, timeout=timedelta(seconds=1))
    lock = lock_first_orphaned_line(engine)
    # Let go after 8 s, so a phase the timeout does not reach ends the run late, not never.
    letting_go = threading.Timer(8, lock.rollback)
    letting_go.start()
    try:
        started = time.monotonic()
        report = trigger(engine, replace(settings, jobs=jobs))
        took = time.monotonic() - started
    finally:
        letting_go.cancel()
        letting_go.join()
        lock.rollback()
        lock.close()

    assert report.status is RunStatus.TIMED_OUT, report.error
    assert took < 5, took  # the lock was never released while the run lasted
    assert report.summary["stale_cart_items"] == 3
    assert report.summary["orphaned_order_products"] == 0
    assert cart_ids(engine) == set() and len(order_product_ids(engine)) == 3
    with engine.connect() as c:
        assert c.execute(select(ops_runs.c.summary)).scalar_one() == dict(report.summary)


@pytest.mark.parametrize("table", ["order_products", "cart_items"])
def test_a_parent_inserted_while_the_phase_runs_keeps_its_rows(
        engine: Engine, db_url: str, settings: Settings, deletes: list[tuple[str, int]],
        table: str) -> None:
    """Another client inserts the missing order (or product) once the first batch has
    committed: the canary row that pointed at it is no longer an orphan, and stays."""
    t = add_tenant(engine)
    p = add_product(engine, t)
    with engine.begin() as c:
        if table == "order_products":
            c.execute(order_products.insert(), [
                {"id": i, "order_id": f"gone-{i}", "product_id": p, "quantity": 1, "price": 1}
                for i in [f"a-line-{n}" for n in range(4)] + ["canary-line"]
            ])
        else:
            c.execute(cart_items.insert(), [
                {"id": i, "tenant_id": t, "product_id": f"gone-{i}", "customer_id": None,
                 "quantity": 1, "created_at": FRESH}
                for i in [f"a-cart-{n}" for n in range(4)] + ["canary-cart"]
            ])
    canary = "canary-line" if table == "order_products" else "canary-cart"
    other = make_engine(db_url)  # another client of the database
    inserted = threading.Event()

    def insert_the_parent_after_the_first_batch(conn: Any, cursor: Any, statement: str,
                                                *args: Any) -> None:
        # After the first batch's commit: on PostgreSQL just before the phase's next DELETE,
        # in the phase's own thread (another phase runs beside it); on SQLite before the
        # next BEGIN IMMEDIATE, when no transaction holds the write lock.
        if not deletes or inserted.is_set():
            return
        if is_sqlite(engine) and not statement.startswith("BEGIN IMMEDIATE"):
            return
        if not is_sqlite(engine) and f"DELETE FROM {table}" not in statement:
            return
        inserted.set()
        with other.begin() as c:
            if table == "order_products":
                c.execute(orders.insert().values(
                    id="gone-canary-line", tenant_id=t, customer_id=None, total_amount=1,
                    payment_status="paid", created_at=FRESH))
            else:
                c.execute(products.insert().values(
                    id="gone-canary-cart", tenant_id=t, name="Late", price=1))

    event.listen(engine, "before_cursor_execute", insert_the_parent_after_the_first_batch)
    try:
        report = trigger(engine, with_batch_size(settings, 2))
    finally:
        event.remove(engine, "before_cursor_execute", insert_the_parent_after_the_first_batch)
        other.dispose()

    assert report.status is RunStatus.SUCCEEDED, report.error
    assert inserted.is_set()
    assert all(rows <= 2 for _, rows in deletes)
    remaining = order_product_ids(engine) if table == "order_products" else cart_ids(engine)
    assert remaining == {canary}
    kind = "orphaned_order_products" if table == "order_products" else "orphaned_cart_items"
    assert report.summary[kind] == 4


def test_between_batches_no_statement_of_the_run_holds_back_vacuum(
        engine: Engine, settings: Settings) -> None:
    """The orphan search ends before the first batch: while a phase waits between batches
    (or its process is frozen), none of its sessions runs a statement or keeps a snapshot
    (backend_xmin), so vacuum can go on and no statement outlives the role's timeout."""
    if is_sqlite(engine):
        pytest.skip("backend_xmin and statement_timeout are PostgreSQL's")
    t = add_tenant(engine)
    p = add_product(engine, t)
    for i in range(6):
        _orphaned_line(engine, t, p, i)
    engine.dispose()  # every session of the run is then one the listener below sees open
    sessions: list[int] = []
    seen: list[list[tuple[Any, ...]]] = []
    batches: list[str] = []

    def note_session(dbapi_conn: Any, record: Any) -> None:
        sessions.append(dbapi_conn.info.backend_pid)

    def look_between_batches(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "DELETE FROM order_products" not in statement:
            return
        batches.append(statement)
        if len(batches) == 2:  # the first batch has committed; the second is yet to run
            # The cart phases run beside this one, with nothing to delete: their session is
            # let finish its statements; this phase's own session stays held here, so one
            # that kept a statement or a snapshot open would still show after 10 s.
            deadline = time.monotonic() + 10
            with cursor.connection.cursor() as own:  # this session is idle between batches
                while True:
                    # The activity view is read once per transaction unless cleared.
                    own.execute("SELECT pg_stat_clear_snapshot()")
                    own.execute("SELECT pid, state, backend_xmin FROM pg_stat_activity "
                                "WHERE pid = ANY(%s) AND pid <> pg_backend_pid() "
                                "AND (state <> 'idle' OR backend_xmin IS NOT NULL)", (sessions,))
                    busy = [tuple(row) for row in own.fetchall()]
                    if not busy or time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
            seen.append(busy)

    event.listen(engine, "connect", note_session)
    event.listen(engine, "before_cursor_execute", look_between_batches)
    try:
        report = trigger(engine, with_batch_size(settings, 2))
    finally:
        event.remove(engine, "before_cursor_execute", look_between_batches)
        event.remove(engine, "connect", note_session)

    assert report.status is RunStatus.SUCCEEDED, report.error
    assert report.summary["orphaned_order_products"] == 6
    assert sessions and seen == [[]]


@pytest.mark.slow
def test_a_killed_run_shows_what_its_committed_batches_deleted(
        engine: Engine, settings: Settings, env: dict[str, str], tmp_path: Path) -> None:
    """A real CLI process deletes two batches (tenants A and B), then waits for a row lock
    the test holds on C's first stale cart, and is killed with SIGKILL there: the run,
    marked interrupted, lists what the two committed batches deleted."""
    if is_sqlite(engine):
        pytest.skip("stalls the third batch on a row lock, which SQLite does not have")
    ta, tb, tc = (add_tenant(engine, id=f"t-{n}", name=f"Tenant {n}") for n in "abc")
    p = add_product(engine, ta)
    for i, tenant in enumerate((ta, ta, tb, tb, tc, tc)):  # oldest first: A's go first
        add_cart_item(engine, tenant, p, OLD - timedelta(days=10) + timedelta(minutes=i))
    with engine.connect() as c:
        c_rows = c.execute(select(cart_items.c.id).where(cart_items.c.tenant_id == tc)
                           .order_by(cart_items.c.created_at)).scalars().all()
    blocked = c_rows[0]
    (tmp_path / "schedules.toml").write_text("[jobs.cleanup]\nbatch_size = 2\n")

    lock = engine.connect()
    lock.execute(select(cart_items.c.id).where(cart_items.c.id == blocked).with_for_update())
    proc = subprocess.Popen(
        [EXE, "trigger", "cleanup", "--now", "2026-11-29T02:00:00Z"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:  # until the run has recorded its second batch, then waits for the lock
            with engine.connect() as c:
                run = c.execute(select(ops_runs)).first()
            if run is not None and (run.summary or {}).get("stale_cart_items") == 4:
                break
            assert proc.poll() is None and time.monotonic() < deadline, \
                "the run never recorded its two batches"
            time.sleep(0.05)
        time.sleep(0.5)  # well into the wait for the lock
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        lock.rollback()
        lock.close()

    runs.recover_stale_runs(engine, datetime.now(UTC) + timedelta(hours=1),
                            settings.runner.stale_after)
    with engine.connect() as c:
        run = c.execute(select(ops_runs)).one()
        stored = c.execute(select(ops_run_items.c.tenant_id, ops_run_items.c.tenant_name,
                                  ops_run_items.c.action, ops_run_items.c.detail)
                           .where(ops_run_items.c.run_id == run.id)
                           .order_by(ops_run_items.c.seq)).all()
    assert run.status == "interrupted"
    assert cart_ids(engine) == set(c_rows)  # the third batch never committed
    assert [tuple(r) for r in stored] == [
        (ta, "Tenant a", "stale_cart_items", {"deleted": 2}),
        (tb, "Tenant b", "stale_cart_items", {"deleted": 2}),
    ]
    assert run.processed == 2
    assert run.summary["stale_cart_items"] == 4 and run.summary["batches"] == 2


def test_a_real_run_may_not_look_into_the_future_a_preview_may(
        engine: Engine, settings: Settings) -> None:
    """With the clock at NOW, a real run at NOW + 1 day is refused before anything is
    written; a few minutes ahead (another host's clock) is fine, and so is a preview."""
    t = add_tenant(engine)
    p = add_product(engine, t)
    _stale(engine, t, p, 0)
    fresh = add_cart_item(engine, t, p, FRESH)  # stale a month after NOW + 1 day
    carts = cart_ids(engine)

    def at(now: datetime, **kw: Any) -> RunReport:
        return runs.execute(engine, settings, "cleanup", now=now, started_by="test",
                            clock=lambda: NOW, **kw)

    with pytest.raises(UsageError) as refused:
        at(NOW + timedelta(days=40))
    assert refused.value.exit_code == 2
    assert "later than the clock" in refused.value.message and "--dry-run" in refused.value.message
    assert cart_ids(engine) == carts
    with engine.connect() as c:
        assert c.execute(select(ops_runs)).first() is None

    preview = at(NOW + timedelta(days=40), dry_run=True)
    assert preview.summary["stale_cart_items"] == 2

    real = at(NOW + timedelta(minutes=4))
    assert real.status is RunStatus.SUCCEEDED, real.error
    assert cart_ids(engine) == {fresh}


@pytest.mark.slow
def test_cli_refuses_a_future_now_for_a_real_run(engine: Engine, env: dict[str, str],
                                                 tmp_path: Path) -> None:
    """The issue's two runs, through the CLI and the real clock: nothing deleted, nobody
    suspended, no email queued; exit 2 and one line on stderr. A preview still works."""
    t = add_tenant(engine, expire_date=datetime.now(UTC) + timedelta(days=30))
    p = add_product(engine, t)
    add_cart_item(engine, t, p, datetime.now(UTC) - timedelta(hours=1))
    carts = cart_ids(engine)

    for job in ("cleanup", "expiry-checker"):
        proc = cli(env, "trigger", job, "--now", "2099-01-01T00:00:00Z", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == "" and "Traceback" not in proc.stderr
        assert len(proc.stderr.splitlines()) == 1 and "later than the clock" in proc.stderr
    assert cart_ids(engine) == carts
    with engine.connect() as c:
        assert c.execute(select(tenants.c.status)).scalars().all() == ["active"]
        assert c.execute(select(ops_email_outbox)).first() is None
        assert c.execute(select(ops_runs)).first() is None

    preview = cli(env, "trigger", "cleanup", "--dry-run", "--now", "2099-01-01T00:00:00Z", "--json",
                  cwd=tmp_path)
    assert preview.returncode == 0, preview.stderr
    assert cart_ids(engine) == carts

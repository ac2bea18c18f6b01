"""Keeping a real run going for as long as a test needs, on PostgreSQL, without volume.

expiry-checker changes each tenant in a transaction of its own, in id order. The test
holds a row lock (`SELECT ... FOR UPDATE`) on a tenant: a run that reaches it waits there,
inside that tenant's transaction, until the test lets it go. PostgreSQL says who waits on
whom (`pg_blocking_pids`), so the test waits for that event instead of for a duration, and
a run stays `running` as long as the test holds the lock, however loaded the machine.

SQLite locks the whole file, which would stop the runner's heartbeats and ticks as well:
there, tests keep a run going by volume (enough tenants to outlast what they watch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.engine import Connection, Engine, RootTransaction

from jobs.db import make_engine, tenants
from tests.conftest import wait_until

# The tenants of a gated run (PostgreSQL), and the ones in its middle the gate may hold.
N_GATED = 20
GATE_IDS = [f"t{i:05d}" for i in range(5, 15)]

# A run writes its progress (`processed`) at most this often (jobs.context.ItemSink).
FLUSH_SECONDS = 1.0


class RowGate:
    """Row locks on tenants, held by the test on their own connections."""

    def __init__(self, db_url: str) -> None:
        self._engine: Engine = make_engine(db_url)
        self._held: dict[str, tuple[Connection, RootTransaction, int]] = {}

    def hold(self, tenant_id: str) -> None:
        conn = self._engine.connect()
        tx = conn.begin()
        locked = conn.execute(select(tenants.c.id).where(tenants.c.id == tenant_id)
                              .with_for_update()).scalar_one()
        assert locked == tenant_id
        pid = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
        self._held[tenant_id] = (conn, tx, pid)

    def waited_on(self, tenant_id: str) -> bool:
        """Another session is waiting for this lock (a run reached the tenant)."""
        pid = self._held[tenant_id][2]
        with self._engine.connect() as c:
            return bool(c.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
                {"pid": pid}).scalar_one())

    def release(self, tenant_id: str) -> None:
        conn, tx, _ = self._held.pop(tenant_id)
        tx.rollback()
        conn.close()

    def close(self) -> None:
        for tenant_id in list(self._held):
            self.release(tenant_id)
        self._engine.dispose()


def hold_run_with_progress(gate: RowGate, gate_ids: list[str],
                           running: Callable[[], Any]) -> tuple[Any, str]:
    """With the first of `gate_ids` already held: wait until a run waits on it, then let
    the run through one gate tenant at a time (the next one held first) until it has
    written progress (`processed` > 0). Returns the run's row, read while the run waits on
    the tenant returned, which the gate still holds. `running()` reads the run's row."""
    wait_until(f"a run waiting for {gate_ids[0]}", lambda: gate.waited_on(gate_ids[0]), 90)
    for current, following in pairwise(gate_ids):
        run = wait_until("the run's row", running, 30)
        if run.processed > 0:
            return run, current
        # The run writes its progress on the first tenant it finishes once FLUSH_SECONDS
        # have passed since it started; step it on only then, so the gate lasts.
        started = run.started_at if run.started_at.tzinfo else run.started_at.replace(tzinfo=UTC)
        wait_until("the run's first progress write due", lambda s=started: datetime.now(UTC)
                   >= s + timedelta(seconds=FLUSH_SECONDS), 30)
        gate.hold(following)
        gate.release(current)
        wait_until(f"the run waiting for {following}", lambda t=following: gate.waited_on(t), 90)
    raise AssertionError(f"the run wrote no progress through {gate_ids}")


def add_tenants(engine: Engine, n: int, expire_date: datetime) -> None:
    """Active tenants t00000, t00001, ... expiring at `expire_date`: a run past their grace
    suspends each one and queues its email, in a transaction per tenant."""
    with engine.begin() as c:
        c.execute(tenants.insert(), [
            {"id": f"t{i:05d}", "name": f"Store {i}", "email": f"owner{i}@example.com",
             "status": "active", "expire_date": expire_date}
            for i in range(n)
        ])


class RunHold:
    """Keeps an expiry-checker run over the tenants it adds going until the test lets go.

    On PostgreSQL the test holds a row lock on a tenant in the middle before any run
    starts, so a run waits there, inside that tenant's transaction, for as long as the test
    likes. On SQLite, which has no row locks, the run is long by volume instead:
    `n_volume` tenants, enough to outlast what the test watches on a fast, quiet machine
    (2,000 took 1.8-2.3 s on two machines, the first progress write coming at one second);
    a loaded machine only makes the run longer."""

    def __init__(self, engine: Engine, db_url: str, n_volume: int,
                 expire_date: datetime) -> None:
        self.gate = RowGate(db_url) if engine.dialect.name == "postgresql" else None
        self.n = N_GATED if self.gate else n_volume
        add_tenants(engine, self.n, expire_date)
        if self.gate:
            self.gate.hold(GATE_IDS[0])

    @property
    def gated(self) -> bool:
        return self.gate is not None

    def waited_on(self) -> bool:
        """A run waits at the gate (always False on SQLite)."""
        return self.gate is not None and self.gate.waited_on(GATE_IDS[0])

    def in_progress(self, running: Callable[[], Any]) -> Any:
        """The run `running()` reads, once it has written progress (processed > 0), read
        before it ends."""
        if self.gate is None:
            return wait_until("a run in progress", lambda: (
                (run := running()) is not None and run.processed > 0 and run), 60)
        run, _ = hold_run_with_progress(self.gate, GATE_IDS, running)
        return run

    def let_go(self) -> None:
        if self.gate:
            self.gate.close()
            self.gate = None


@contextmanager
def run_hold(engine: Engine, db_url: str, n_volume: int,
             expire_date: datetime) -> Iterator[RunHold]:
    hold = RunHold(engine, db_url, n_volume, expire_date)
    try:
        yield hold
    finally:
        hold.let_go()

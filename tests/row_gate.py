"""Keeping a real run going for as long as a test needs, on PostgreSQL, without volume.

expiry-checker changes each tenant in a transaction of its own, in id order. The test
holds a row lock (`SELECT ... FOR UPDATE`) on a tenant: a run that reaches it waits there,
inside that tenant's transaction, until the test lets it go. PostgreSQL says who waits on
whom (`pg_blocking_pids`), so the test waits for that event instead of for a duration, and
a run stays `running` as long as the test holds the lock, however loaded the machine.

SQLite locks the whole file, which would stop the runner's heartbeats and ticks as well.
There the test pauses the process that runs the run instead (SIGSTOP, then SIGCONT to let
go), stepping it on until the run has written progress, and only at a moment it holds no
exclusive lock on the file (/proc/locks says): paused inside a write, it holds off the
other processes' writes and even the test's reads (seen: a read waiting out its 30 s busy
timeout, and readers stuck 10 s in SQLite's WAL retry loop). A run inside a process that
must keep working meanwhile (a runner's HTTP run, watched through the runner's ticks) is
kept going by volume instead: enough tenants to outlast what the test watches.
"""

from __future__ import annotations

import os
import select as selectmodule
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.engine import Connection, Engine, RootTransaction

from jobs.db import make_engine, ops_runners, ops_runs, tenants
from jobs.timeutil import as_utc
from tests.conftest import wait_until

# The job whose runs a hold keeps going: the one that changes tenants one by one.
JOB = "expiry-checker"

# The tenants of a gated run (PostgreSQL), and the ones in its middle the gate may hold.
N_GATED = 20
GATE_IDS = [f"t{i:05d}" for i in range(5, 15)]

# A run writes its progress (`processed`) at most this often (jobs.context.ItemSink).
FLUSH_SECONDS = 1.0

# The tenants of a paused run (SQLite): enough that the run is still going when the test
# first sees it running (it polls every few milliseconds), ~2 s of work on a quiet machine;
# from then on the test steps it on a few milliseconds at a time.
N_PAUSED = 1_000


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
        started = as_utc(run.started_at)
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


class ProcessPause:
    """SIGSTOP and SIGCONT for the process running a run on SQLite, and the step between.

    Signals go through a pidfd opened when the process is first paused: a pid the fork
    server has reaped may be reused, a pidfd never names another process."""

    STEP_SECONDS = 0.02
    RESUME_SECONDS = 0.001  # the first time a stop catches it inside a write, doubling
    STOP_SECONDS = 30.0

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        self.pid: int | None = None
        self._pidfd: int | None = None
        self._files: set[tuple[int, int, int]] = set()  # (major, minor, inode) of the file and its -shm

    def stop(self, pid: int) -> None:
        """Stopped with every thread (the kernel says so), at a moment it holds no write
        lock on the file: continued and stopped again until so."""
        self.pid, self._pidfd = pid, os.pidfd_open(pid)
        # Which files /proc/locks names, found once: every step of the pause reads it.
        self._files = set()
        for path in (self.db_path, self.db_path + "-shm"):
            with suppress(FileNotFoundError):
                st = os.stat(path)
                self._files.add((os.major(st.st_dev), os.minor(st.st_dev), st.st_ino))
        self._stop()

    def _stop(self) -> None:
        pid = self.pid
        assert pid is not None
        deadline = time.monotonic() + self.STOP_SECONDS
        tries = 0
        while time.monotonic() < deadline:
            self._signal(signal.SIGSTOP)
            wait_until(f"process {pid} stopped", lambda: self._gone() or _all_stopped(pid),
                       self.STOP_SECONDS, every=0.001)
            if self._gone():
                raise AssertionError(f"process {pid}, running the run, exited")
            if self._lock_free():
                return
            self._signal(signal.SIGCONT)
            # Caught inside a write: let it go on for longer each time. On a loaded machine
            # its threads may not be scheduled at all within a millisecond, and stopping it
            # again at once keeps it stopped with the lock held, and every other process
            # waiting on it (seen: 10 s, the other runner missing a slot meanwhile).
            time.sleep(min(self.RESUME_SECONDS * 2 ** tries, self.STEP_SECONDS))
            tries += 1
        raise AssertionError(f"process {pid} never paused outside a write transaction "
                             f"in {self.STOP_SECONDS:g} s")

    def step(self) -> None:
        assert self.pid is not None
        if self._gone():
            raise AssertionError(f"process {self.pid}, running the run, exited")
        self._signal(signal.SIGCONT)
        time.sleep(self.STEP_SECONDS)
        self._stop()

    def cont(self) -> None:
        if self._pidfd is not None:
            with suppress(ProcessLookupError):  # killed by the test meanwhile
                self._signal(signal.SIGCONT)
            os.close(self._pidfd)
            self.pid = self._pidfd = None

    def _signal(self, sig: signal.Signals) -> None:
        assert self._pidfd is not None
        signal.pidfd_send_signal(self._pidfd, sig)

    def _gone(self) -> bool:
        """Exited (a zombie, or reaped): its pidfd reads as ready."""
        assert self._pidfd is not None
        return bool(selectmodule.select([self._pidfd], [], [], 0)[0])

    def _lock_free(self) -> bool:
        """The process holds no exclusive lock on the database or its -shm file. SQLite
        takes one only for a moment (a write transaction, a step of a checkpoint), and
        other processes wait on it. Read from /proc/locks, never through SQLite: a probe
        that opens a read on the file stalls, up to ~10 s in SQLite's WAL retry loop, on
        a process stopped in the middle of writing its commit into the -shm index (seen:
        the paused runner stopped in COMMIT, the test's probe and the other runner stuck
        for 10-11 s, a slot missed)."""
        assert self.pid is not None
        with open("/proc/locks") as f:
            for line in f:
                # "12: POSIX  ADVISORY  WRITE 4321 fe:00:2148060 120 120"; a waiter's line
                # has "->" after the number.
                fields = line.split()
                if len(fields) < 8 or fields[1] == "->" or fields[3] != "WRITE":
                    continue
                if int(fields[4]) != self.pid:
                    continue
                major, minor, inode = fields[5].split(":")
                if (int(major, 16), int(minor, 16), int(inode)) in self._files:
                    return False
        return True


def _all_stopped(pid: int) -> bool:
    """Every thread of `pid` stopped (state T), or the process gone."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                stat = f.read()
        except FileNotFoundError:
            continue
        if stat[stat.rfind(")") + 2] not in "TtZX":
            return False
    return True


class RunHold:
    """Keeps an expiry-checker run over the tenants it adds going until the test lets go.

    On PostgreSQL the test holds a row lock on a tenant in the middle before any run
    starts, so a run waits there, inside that tenant's transaction, for as long as the test
    likes. On SQLite, which has no row locks, the test pauses the process running the run
    (N_PAUSED tenants) once it has written progress; with `n_volume`, for a run whose
    process must go on working, the run is long by volume instead: that many tenants,
    enough to outlast what the test watches on a fast, quiet machine (2,000 took 1.8-2.3 s
    on two machines, the first progress write coming at one second); a loaded machine
    only makes the run longer."""

    def __init__(self, engine: Engine, db_url: str, expire_date: datetime,
                 n_volume: int | None = None) -> None:
        self.engine = engine
        self.gate = RowGate(db_url) if engine.dialect.name == "postgresql" else None
        self.pause = (ProcessPause(str(engine.url.database))
                      if self.gate is None and n_volume is None else None)
        self.n = N_GATED if self.gate else n_volume or N_PAUSED
        add_tenants(engine, self.n, expire_date)
        if self.gate:
            self.gate.hold(GATE_IDS[0])

    @property
    def gated(self) -> bool:
        return self.gate is not None

    def waited_on(self) -> bool:
        """A run waits at the gate (always False on SQLite)."""
        return self.gate is not None and self.gate.waited_on(GATE_IDS[0])

    def in_progress(self, running: Callable[[], Any], trigger: str = "schedule") -> Any:
        """The run `running()` reads, once it has written progress (processed > 0), read
        before it ends. On SQLite without volume its process is paused from then until
        `let_go`, between two of its write transactions: the process of the running run
        with this `trigger`."""
        if self.gate is not None:
            run, _ = hold_run_with_progress(self.gate, GATE_IDS, running)
            return run
        if self.pause is None:
            return wait_until("a run in progress", lambda: (
                (run := running()) is not None and run.processed > 0 and run), 60)
        # Polled every few milliseconds: a run of N_PAUSED tenants is caught early on. Read
        # as a plain WAL reader, which never waits for a writer: the program's engine
        # begins every transaction with BEGIN IMMEDIATE, and such a read can wait out a
        # whole run of back-to-back tenant transactions (seen: all 1,000 tenants done in
        # 1.6 s before one got through, and the test caught the next, empty, run instead).
        run_id, pid = wait_until("a run started", lambda: self._started_run(trigger), 60,
                                 every=0.005)
        self.pause.stop(pid)
        first = running()
        if first is None or first.id != run_id:
            raise AssertionError(f"paused the process of run {run_id}, but the run the "
                                 f"test watches is {first}")
        # Its first progress write comes with the first tenant it finishes once
        # FLUSH_SECONDS have passed since it started. Until then a step every quarter of a
        # second lets its heartbeats through (a process silent for stale_after is dead to
        # the others); from then on, steps back to back.
        due = as_utc(first.started_at) + timedelta(seconds=FLUSH_SECONDS)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            run = running()
            if run is None or run.id != first.id:
                # Not the paused process's run any more: it ended, or another process
                # judged it dead (its heartbeats held off too long) and took the job on.
                raise AssertionError(f"run {first.id} stopped running before it wrote "
                                     f"progress (now: {run}); {self.n} tenants too few, or "
                                     "its process was paused past stale_after")
            if run.processed > 0:
                return run
            if (wait := (due - datetime.now(UTC)).total_seconds()) > 0:
                time.sleep(min(0.25, wait))
            self.pause.step()
        raise AssertionError("the paused run wrote no progress in 60 s of steps")

    def _started_run(self, trigger: str) -> tuple[int, int] | None:
        """The running expiry-checker run with this trigger (its id, and the pid of the
        process that runs it), read without taking SQLite's write lock; None while there
        is none."""
        assert self.pause is not None
        conn = sqlite3.connect(f"file:{self.pause.db_path}?mode=rw", uri=True, timeout=1,
                               isolation_level=None)
        try:
            row = conn.execute(
                f"SELECT r.id, n.pid FROM {ops_runs.name} r"
                f" JOIN {ops_runners.name} n ON n.id = r.runner_id"
                " WHERE r.job_id = ? AND r.status = 'running' AND r.trigger = ?"
                " ORDER BY r.id DESC LIMIT 1", (JOB, trigger)).fetchone()
        except sqlite3.OperationalError:  # busy in WAL recovery: the next poll
            return None
        finally:
            conn.close()
        return (int(row[0]), int(row[1])) if row else None

    def let_go(self) -> None:
        if self.gate:
            self.gate.close()
            self.gate = None
        if self.pause:
            self.pause.cont()


@contextmanager
def run_hold(engine: Engine, db_url: str, expire_date: datetime,
             n_volume: int | None = None) -> Iterator[RunHold]:
    hold = RunHold(engine, db_url, expire_date, n_volume)
    try:
        yield hold
    finally:
        hold.let_go()

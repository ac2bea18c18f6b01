"""Who is alive: every process that runs jobs registers in ops_runners and heartbeats.

A `running` run whose process stopped heartbeating is dead; a live process marks
it `interrupted`. The runner is `kind = runner`; the CLI and the console register
as `cli` and `console` while they run a job, so their runs can be recovered too.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.engine import Engine

from jobs.db import ops_runners, transaction
from jobs.errors import OpsError
from jobs.records import RunnerKind
from jobs.timeutil import Clock


def is_alive(heartbeat_at: datetime, stopped_at: datetime | None, now: datetime,
             stale_after: float) -> bool:
    """The rule of who is alive: a process that has not stopped and whose last heartbeat
    is at most `stale_after` seconds old. `silent_or_stopped` is the same rule in SQL."""
    return stopped_at is None and heartbeat_at >= now - timedelta(seconds=stale_after)


def silent_or_stopped(now: datetime, stale_after: float) -> ColumnElement[bool]:
    """`not is_alive` for an ops_runners row, as a WHERE clause (a query that outer-joins
    ops_runners must also treat a missing row as it means to)."""
    cutoff = now - timedelta(seconds=stale_after)
    return or_(ops_runners.c.heartbeat_at < cutoff, ops_runners.c.stopped_at.is_not(None))


def who_am_i() -> str:
    """`user@host`, for runs started by the CLI and the console."""
    import getpass  # with termios: not needed to list runners

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class RunnerInfo:
    id: str
    kind: RunnerKind
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    alive: bool

    def to_json(self) -> dict[str, object]:
        from jobs.timeutil import iso

        return {
            "id": self.id,
            "kind": str(self.kind),
            "host": self.host,
            "pid": self.pid,
            "started_at": iso(self.started_at),
            "last_heartbeat": iso(self.heartbeat_at),
            "stopped_at": iso(self.stopped_at),
            "alive": self.alive,
        }


class Presence:
    """A registered process with a heartbeat thread."""

    def __init__(self, engine: Engine, kind: RunnerKind, clock: Clock,
                 interval: float = 5.0) -> None:
        self.engine = engine
        self.kind = kind
        self.clock = clock
        self.interval = interval
        # Opaque: the id is shown without a token (/healthz), and host and pid have
        # columns of their own.
        self.id = f"{kind}-{uuid.uuid4().hex[:16]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def start(self) -> Presence:
        now = self.clock()
        with transaction(self.engine) as conn:
            conn.execute(
                ops_runners.insert().values(
                    id=self.id, kind=str(self.kind), host=socket.gethostname(), pid=os.getpid(),
                    started_at=now, heartbeat_at=now,
                )
            )
        self._thread = threading.Thread(target=self._beat_loop, name=f"heartbeat-{self.kind}",
                                        daemon=True)
        self._thread.start()
        return self

    def beat(self) -> None:
        with transaction(self.engine) as conn:
            conn.execute(
                update(ops_runners).where(ops_runners.c.id == self.id)
                .values(heartbeat_at=self.clock())
            )

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
                self.last_error = None
            except OpsError as exc:  # the database blinked; the next beat may get through
                self.last_error = exc.message
            except Exception as exc:  # a heartbeat must never kill its process
                self.last_error = str(exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 1)
        try:
            with transaction(self.engine) as conn:
                conn.execute(
                    update(ops_runners).where(ops_runners.c.id == self.id)
                    .values(stopped_at=self.clock(), heartbeat_at=self.clock())
                )
        except Exception:  # best effort on the way out
            pass

    def __enter__(self) -> Presence:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def list_runners(engine: Engine, now: datetime, stale_after: float,
                 kinds: tuple[RunnerKind, ...] = (RunnerKind.RUNNER,),
                 include_stopped: bool = False,
                 ) -> list[RunnerInfo]:
    q = select(ops_runners).where(ops_runners.c.kind.in_(kinds)).order_by(
        ops_runners.c.started_at.desc()
    )
    if not include_stopped:
        q = q.where(ops_runners.c.stopped_at.is_(None))
    with transaction(engine) as conn:
        rows = conn.execute(q).all()
    return [
        RunnerInfo(
            id=r.id, kind=RunnerKind(r.kind), host=r.host, pid=r.pid, started_at=r.started_at,
            heartbeat_at=r.heartbeat_at, stopped_at=r.stopped_at,
            alive=is_alive(r.heartbeat_at, r.stopped_at, now, stale_after),
        )
        for r in rows
    ]


def runner_alive(engine: Engine, runner_id: str, now: datetime, stale_after: float) -> bool:
    """Whether the process registered as `runner_id` is alive (False when it never was)."""
    with transaction(engine) as conn:
        row = conn.execute(
            select(ops_runners.c.heartbeat_at, ops_runners.c.stopped_at)
            .where(ops_runners.c.id == runner_id)
        ).first()
    return row is not None and is_alive(row.heartbeat_at, row.stopped_at, now, stale_after)

"""Who is alive: every process that runs jobs registers in ops_runners and heartbeats.

A `running` run whose process stopped heartbeating is dead; a live process marks
it `interrupted`. The runner is `kind = runner`; the CLI and the console register
as `cli` and `console` while they run a job, so their runs can be recovered too.
"""

from __future__ import annotations

import getpass
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from jobs.db import ops_runners, transaction
from jobs.errors import OpsError

Clock = Callable[[], datetime]


def who_am_i() -> str:
    """`user@host`, for runs started by the CLI and the console."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class RunnerInfo:
    id: str
    kind: str
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
            "kind": self.kind,
            "host": self.host,
            "pid": self.pid,
            "started_at": iso(self.started_at),
            "last_heartbeat": iso(self.heartbeat_at),
            "stopped_at": iso(self.stopped_at),
            "alive": self.alive,
        }


class Presence:
    """A registered process with a heartbeat thread."""

    def __init__(self, engine: Engine, kind: str, clock: Clock, interval: float = 5.0) -> None:
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
                    id=self.id, kind=self.kind, host=socket.gethostname(), pid=os.getpid(),
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
                 kinds: tuple[str, ...] = ("runner",), include_stopped: bool = False,
                 ) -> list[RunnerInfo]:
    cutoff = now - timedelta(seconds=stale_after)
    q = select(ops_runners).where(ops_runners.c.kind.in_(kinds)).order_by(
        ops_runners.c.started_at.desc()
    )
    if not include_stopped:
        q = q.where(ops_runners.c.stopped_at.is_(None))
    with transaction(engine) as conn:
        rows = conn.execute(q).all()
    return [
        RunnerInfo(
            id=r.id, kind=r.kind, host=r.host, pid=r.pid, started_at=r.started_at,
            heartbeat_at=r.heartbeat_at, stopped_at=r.stopped_at,
            alive=r.stopped_at is None and r.heartbeat_at >= cutoff,
        )
        for r in rows
    ]

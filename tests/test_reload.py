"""A real `storeflow-ops run` process under systemd's eyes: SIGHUP reloads its
configuration (a bad file refused while the old schedule keeps firing, a good one applied
from the next slot and audited), and sd_notify messages reach the socket the test binds
and passes as NOTIFY_SOCKET, as systemd would.

Slow (real seconds): marked `slow`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from jobs.audit import AuditAction, recent
from jobs.timeutil import utc_now
from tests.conftest import cli
from tests.test_runner_processes import JOB, Runner, slot_runs, spawn, wait_until, write_config

pytestmark = pytest.mark.slow
__all__ = ["spawn"]  # the fixture, shared with the other runner-process tests

EVEN = "* * * * * */2"  # the old schedule: even seconds
ODD = "* * * * * 1-59/2"  # the new one: odd seconds, so every slot says which one fired it


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket, read by a thread of its own (a
    listener that stops reading would fill the queue), messages kept in arrival order."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.1)
        self.messages: list[list[str]] = []
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append(data.decode().splitlines())

    def wait_for(self, line: str, after: int = 0, timeout: float = 30) -> int:
        """The index of the first message from `after` on that holds `line`."""
        def found() -> int | None:
            return next((i + 1 for i, m in enumerate(self.messages.copy()) if i >= after
                         and line in m), None)
        return int(wait_until(f"{line} on {self.address}", found, timeout)) - 1

    def close(self) -> None:
        self._closed.set()
        self._reader.join()
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # Abstract-namespace name: no path to clean up, and the runner must resolve the `@`.
    s = NotifySocket(f"@storeflow-test-{uuid.uuid4().hex}")
    yield s
    s.close()


def succeeded_slots(engine: Engine, after: datetime) -> list[datetime]:
    return [r.scheduled_for for r in slot_runs(engine)
            if r.status == "succeeded" and r.scheduled_for > after]


@pytest.mark.slow(seconds=7)
def test_sighup_refuses_a_bad_file_and_applies_a_good_one_from_the_next_slot(
        engine: Engine, env: dict[str, str], tmp_path: Path, notify_socket: NotifySocket,
        spawn: Callable[..., Runner]) -> None:
    config = write_config(tmp_path / "schedules.toml", EVEN)
    runner = spawn({**env, "NOTIFY_SOCKET": notify_socket.address,
                    "WATCHDOG_USEC": "1000000"}, config, "runner")
    ready = notify_socket.wait_for("READY=1")
    assert any(line.startswith("STATUS=scheduling 1 job: " + JOB)
               for line in notify_socket.messages[ready])
    started = utc_now()
    wait_until("a slot of the old schedule", lambda: succeeded_slots(engine, started))

    # A bad file: refused in one line; the even slots keep firing.
    config.write_text(config.read_text().replace(EVEN, "61 * * * *"))
    runner.proc.send_signal(signal.SIGHUP)
    reloading = notify_socket.wait_for("RELOADING=1", ready + 1)
    assert any(line.startswith("MONOTONIC_USEC=") for line in notify_socket.messages[reloading])
    notify_socket.wait_for("READY=1", reloading + 1)
    refused = wait_until("the refusal", lambda: [
        e for e in runner.events() if e["event"].startswith(("reload", "config"))])
    assert len(refused) == 1, refused
    assert refused[0]["event"] == "reload-refused" and refused[0]["level"] == "error"
    assert refused[0]["file"] == str(config)
    assert refused[0]["key"] == f"jobs.{JOB}.schedule"
    assert "minute field '61': out of range" in refused[0]["reason"]
    after_bad = utc_now()
    wait_until("an old-schedule slot after the refusal", lambda: succeeded_slots(engine, after_bad))

    # A good file: odd seconds from the next slot on, the other job's change logged too.
    write_config(config, ODD)
    config.write_text(config.read_text().replace(
        "[jobs.payment-reminders]\nenabled = false", "[jobs.payment-reminders]\n"
        "reminder_days = [3, 1]"))
    runner.proc.send_signal(signal.SIGHUP)
    reloading = notify_socket.wait_for("RELOADING=1", reloading + 1)
    notify_socket.wait_for("READY=1", reloading + 1)
    reloaded = wait_until("the reload", lambda: [
        e for e in runner.events() if e["event"] == "config-reloaded"])[0]
    at = datetime.fromisoformat(reloaded["ts"].replace("Z", "+00:00"))
    new = wait_until("two slots of the new schedule",
                     lambda: len(succeeded_slots(engine, at)) >= 2 and succeeded_slots(engine, at))
    runs = slot_runs(engine)
    assert [r for r in runs if r.status not in ("succeeded", "running")] == []  # none missed
    assert all(s.second % 2 == 1 for s in new), new
    assert all(r.scheduled_for.second % 2 == 0 for r in runs if r.scheduled_for < at)
    # From the next slot: the first odd second after the reload, not a later one.
    assert (new[0] - at).total_seconds() <= 2
    assert reloaded["changed"] == {JOB: ["schedule"],
                                   "payment-reminders": ["enabled", "reminder_days"]}
    assert reloaded["jobs"] == {JOB: f"{ODD} UTC", "payment-reminders": "0 9 * * * UTC"}
    assert f"{JOB}: schedule {EVEN} -> {ODD}" in reloaded["detail"]

    # Audited once (the refusal changed nothing), by this runner.
    started_event = runner.events()[0]
    entries = [e for e in recent(engine) if e.action is AuditAction.RELOAD]
    assert len(entries) == 1
    assert entries[0].actor == f"runner:{started_event['runner_id']}"
    assert entries[0].detail is not None
    assert entries[0].detail.startswith(f"{config}: {JOB}: schedule {EVEN} -> {ODD}")
    assert "payment-reminders: enabled false -> true, reminder_days [7] -> [3, 1]" \
        in entries[0].detail

    # The faces show what the runner now plans with, wherever they are run from.
    shown = cli(env, "jobs", "--json", cwd=tmp_path.parent)
    assert shown.returncode == 0, shown.stderr
    row = next(r for r in json.loads(shown.stdout) if r["job"] == JOB)
    assert row["schedule"] == ODD and row["schedule_source"] == "runner"

    # The watchdog is fed from the loop, and the stop is announced.
    watchdogs = sum(m == ["WATCHDOG=1"] for m in notify_socket.messages)
    assert watchdogs >= 4, notify_socket.messages
    assert runner.stop() == 0
    notify_socket.wait_for("STOPPING=1")


def test_sd_notify_on_a_socket_path_without_a_watchdog(
        engine: Engine, env: dict[str, str], tmp_path: Path,
        spawn: Callable[..., Runner]) -> None:
    """A filesystem socket (short directory: the path limit is 108 bytes); without
    WATCHDOG_USEC no WATCHDOG=1 is sent. A SIGHUP with nothing changed is still a
    reload: RELOADING=1, READY=1, logged as no changes."""
    directory = tempfile.mkdtemp(prefix="sfn-")
    notify = NotifySocket(os.path.join(directory, "notify"))
    try:
        config = write_config(tmp_path / "schedules.toml", "@daily")
        runner = spawn({**env, "NOTIFY_SOCKET": notify.address}, config, "runner")
        ready = notify.wait_for("READY=1")
        runner.proc.send_signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING=1", ready + 1)
        notify.wait_for("READY=1", reloading + 1)
        reloaded = wait_until("the reload", lambda: [
            e for e in runner.events() if e["event"] == "config-reloaded"])[0]
        assert reloaded["changed"] == {} and reloaded["detail"] == "no changes"
        assert runner.stop() == 0
        notify.wait_for("STOPPING=1")  # the process has exited: every message is in
        assert not [m for m in notify.messages if "WATCHDOG=1" in m]
    finally:
        notify.close()
        os.unlink(notify.address)
        os.rmdir(directory)


def test_a_runner_without_notify_socket_sends_nothing_and_still_reloads(
        engine: Engine, env: dict[str, str], tmp_path: Path,
        spawn: Callable[..., Runner]) -> None:
    config = write_config(tmp_path / "schedules.toml", "@daily")
    runner = spawn(env, config, "runner")
    wait_until("the runner started", lambda: any(
        e["event"] == "runner-started" for e in runner.events()))
    write_config(config, "@hourly")
    # Maybe before the loop is up: a SIGHUP during start-up is a reload once it is,
    # never the end of the process.
    runner.proc.send_signal(signal.SIGHUP)
    wait_until("the reload", lambda: [e for e in runner.events()
                                      if e["event"] == "config-reloaded"])
    assert runner.proc.poll() is None
    assert runner.stop() == 0
    events: list[dict[str, Any]] = runner.events()
    assert not [e for e in events if e["event"].startswith("systemd")]
    reloaded = next(e for e in events if e["event"] == "config-reloaded")
    assert reloaded["jobs"] == {JOB: "@hourly UTC"}
    assert reloaded["detail"] == f"{JOB}: schedule @daily -> @hourly"

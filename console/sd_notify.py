"""The runner's side of systemd's notify protocol (sd_notify).

A service started with `Type=notify` gets `NOTIFY_SOCKET` (a path, or `@name` for the
abstract namespace) and tells the service manager how it is doing by sending datagrams of
`KEY=VALUE` lines to it: `READY=1` once it serves, `RELOADING=1` and then `READY=1` around
a configuration reload, `STOPPING=1` when it shuts down, and `WATCHDOG=1` at least every
half of `WATCHDOG_USEC` when the unit sets `WatchdogSec=` (systemd restarts a service that
goes quiet). Without `NOTIFY_SOCKET` every call is a no-op, so the runner calls it
unconditionally.

The protocol is a handful of lines; the Python packages that speak it are unmaintained
(sdnotify) or need libsystemd's headers to build (systemd-python), so it is spoken here.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


class Notifier:
    """Sends sd_notify messages; never raises (systemd's absence must not stop a runner)."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self.last_error: str | None = None
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """The socket and watchdog interval systemd handed this process, if any."""
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC", "")
        watchdog = int(usec) if usec.isdigit() and int(usec) > 0 else None
        # WATCHDOG_PID names the process the watchdog is for; a child that inherited the
        # variable must not feed the parent's watchdog.
        pid = env.get("WATCHDOG_PID", "")
        if watchdog is not None and pid.isdigit() and int(pid) != os.getpid():
            watchdog = None
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between two WATCHDOG=1, half the unit's WatchdogSec; None: not wanted."""
        if self.address is None or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2_000_000

    def send(self, *lines: str) -> bool:
        """Send one datagram of `lines`; False (and last_error) when it could not be sent."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A listener that stops reading fills its queue (a few datagrams); the
                # scheduling loop must not block on it: the message is dropped instead.
                self._sock.setblocking(False)
            self._sock.sendto(("\n".join(lines) + "\n").encode(), target)
        except OSError as exc:
            self.last_error = f"{self.address}: {exc.strerror or exc}"
            return False
        self.last_error = None
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        # MONOTONIC_USEC lets systemd (Type=notify-reload, 253+) tell this reload from an
        # earlier one; older versions ignore it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1_000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *_status(status))

    def watchdog(self) -> bool:
        if self.watchdog_usec is None:
            return False
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(status: str | None) -> tuple[str, ...]:
    # One line: a newline would start another KEY=VALUE assignment.
    return () if not status else ("STATUS=" + " ".join(status.split()),)


__all__ = ["Notifier"]

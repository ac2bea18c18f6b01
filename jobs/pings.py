"""Dead-man pings (healthchecks.io / Cronitor convention) for jobs with a `ping_url`.

The runner GETs `<ping_url>/start` when a run of the job starts, `<ping_url>` when it
succeeds and `<ping_url>/fail` when it ends any other way (partial, failed, timed out,
interrupted). An external monitor that stops hearing from a job then notices a
deployment whose runners are all dead, which nothing inside it can report.

Best effort and never in the job's way: `Pinger.ping` only puts the request on a queue;
one background thread sends them in order (a run's /start before its outcome), each with
a 10 s timeout and no retry. A full queue drops the ping with a log line. The URL is a
secret (its path is the credential): log lines show its scheme and host only.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from jobs.records import RunStatus
from jobs.redaction import origin

log = logging.getLogger("storeflow.pings")

PING_TIMEOUT = 10.0  # seconds per request
QUEUE_SIZE = 1_000
USER_AGENT = "storeflow-ops-ping"

PingKind = Literal["start", "success", "fail"]


def ping_target(url: str, kind: PingKind) -> str:
    """`<url>/start`, `<url>` or `<url>/fail`: the suffix goes on the path, before any
    query string (Cronitor-style URLs keep their parameters)."""
    if kind == "success":
        return url
    parts = urlsplit(url)
    path = parts.path.rstrip("/") + "/" + kind
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def outcome(status: RunStatus | None) -> PingKind:
    """The ping a run's end sends: success only for `succeeded`."""
    return "success" if status is RunStatus.SUCCEEDED else "fail"


def _reason(exc: BaseException) -> str:
    """Why a ping failed, without the URL (some exceptions quote it)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return str(reason) if not isinstance(reason, str) or "://" not in reason else "URL error"
    if isinstance(exc, TimeoutError):
        return f"no answer within {PING_TIMEOUT:g} s"
    return type(exc).__name__


@dataclass(frozen=True)
class Ping:
    job_id: str
    kind: PingKind
    url: str
    run_id: int | None


class Pinger:
    """A queue of pings and the thread that sends them; `close()` stops it."""

    def __init__(self, *, timeout: float = PING_TIMEOUT, maxsize: int = QUEUE_SIZE) -> None:
        self.timeout = timeout
        self._queue: queue.Queue[Ping | None] = queue.Queue(maxsize)
        self._thread = threading.Thread(target=self._work, name="pinger", daemon=True)
        self._thread.start()
        self.sent = 0
        self.failed = 0

    def ping(self, job_id: str, ping_url: str | None, kind: PingKind,
             run_id: int | None = None) -> None:
        """Queue one ping; returns at once (no ping_url: nothing to do)."""
        if not ping_url:
            return
        try:
            self._queue.put_nowait(Ping(job_id, kind, ping_target(ping_url, kind), run_id))
        except queue.Full:
            log.warning("ping dropped: %s %s to %s (queue full)", job_id, kind,
                        origin(ping_url))

    def _send(self, ping: Ping) -> None:
        started = time.monotonic()
        request = urllib.request.Request(ping.url, headers={"User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                resp.read(1024)
        except Exception as exc:  # best effort: a ping never fails anything
            self.failed += 1
            log.warning("ping failed: %s %s (run %s) to %s: %s", ping.job_id, ping.kind,
                        ping.run_id, origin(ping.url), _reason(exc))
            return
        self.sent += 1
        log.debug("ping sent: %s %s (run %s) to %s in %.0f ms", ping.job_id, ping.kind,
                  ping.run_id, origin(ping.url), (time.monotonic() - started) * 1000)

    def _work(self) -> None:
        while True:
            ping = self._queue.get()
            try:
                if ping is None:
                    return
                self._send(ping)
            finally:
                self._queue.task_done()

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the queued pings; True when all went out."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued for up to `timeout` seconds, then stop (the thread is a
        daemon: a ping stuck on a dead host does not hold the process)."""
        self.flush(timeout)
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            return
        self._thread.join(max(0.0, timeout))

"""The runner's log: one line per event on stderr, as text for people or JSON for shippers.

A line is an event name and its fields:

    2026-11-28T00:00:00.004Z INFO slot-claimed job=expiry-checker slot=2026-11-28T00:00:00Z run_id=17
    {"ts": "2026-11-28T00:00:00.004Z", "level": "info", "event": "slot-claimed", "job": "expiry-checker", ...}

No secret reaches a line: every string field goes through jobs.redaction.scrub (URL
passwords and secret query parameters, `password=…` pairs; the database URL is
redacted before it gets here, and this is the net under it), and fields named like a
secret are dropped to `***`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, ClassVar, Literal, TextIO

from console.formatting import terminal_safe
from jobs.log_events import EVENT_ATTR, FIELDS_ATTR
from jobs.redaction import scrub
from jobs.timeutil import iso_z, utc_now

LogFormat = Literal["text", "json"]
Level = Literal["debug", "info", "warning", "error"]

_SECRET_NAMES = re.compile(r"pass(word)?|secret|token|authorization", re.IGNORECASE)
_BARE = re.compile(r"^[^\s\"=]+$")


def _plain(value: Any) -> Any:
    """A JSON-ready value with secrets masked."""
    if isinstance(value, datetime):
        return iso_z(value)
    if isinstance(value, str):
        return scrub(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(k): "***" if _SECRET_NAMES.search(str(k)) else _plain(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return scrub(str(value))


def _text_value(value: Any) -> str:
    if isinstance(value, str):
        return value if _BARE.match(value) else json.dumps(value, ensure_ascii=False)
    if value is None:
        return "-"
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class RunLog:
    """Writes events; safe to call from the event loop and from worker threads."""

    def __init__(self, stream: TextIO | None = None, fmt: LogFormat = "text",
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.fmt = fmt
        self.clock = clock
        self._lock = threading.Lock()

    def event(self, event: str, level: Level = "info", **fields: Any) -> None:
        clean = {k: "***" if _SECRET_NAMES.search(k) else _plain(v) for k, v in fields.items()}
        ts = iso_z(self.clock())
        if self.fmt == "json":
            line = json.dumps({"ts": ts, "level": level, "event": event, **clean},
                              ensure_ascii=False, default=str)
        else:
            parts = [ts, level.upper(), event]
            parts += [f"{k}={_text_value(v)}" for k, v in clean.items()]
            line = " ".join(parts)
        # One write per line, so threads never interleave inside a line.
        line = line.replace("\r", " ").replace("\n", " ")
        if self.fmt == "text":  # a terminal reads it: no escape sequence from a name
            line = terminal_safe(line)
        with self._lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # stderr closed under us: nothing sensible to do
                pass

    def info(self, event: str, **fields: Any) -> None:
        self.event(event, "info", **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.event(event, "warning", **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.event(event, "error", **fields)


class RunLogHandler(logging.Handler):
    """Routes the `logging` records of the jobs package into the runner's one-line events,
    so a job's warning or a caught traceback does not break the log format.

    A record identical to one written less than REPEAT_WINDOW seconds ago is counted, not
    written; the next one written after the window carries `repeated=N`. A library that
    logs the same failure in a tight loop (asyncio's "socket.accept() out of system
    resource", thousands a second when file descriptors run out) must not flood the log."""

    _LEVELS: ClassVar[dict[int, Level]] = {
        logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
        logging.ERROR: "error", logging.CRITICAL: "error",
    }
    REPEAT_WINDOW = 10.0
    _MAX_KEYS = 1000

    def __init__(self, runlog: RunLog, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.runlog = runlog
        self.clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}  # -> (written, held)

    def _repeats(self, key: tuple[str, int, str]) -> int | None:
        """None: hold this record back; else how many like it were held back before it.
        Called under the handler's lock (logging.Handler.handle takes it)."""
        now = self.clock()
        written, held = self._seen.get(key, (None, 0))
        if written is not None and now - written < self.REPEAT_WINDOW:
            self._seen[key] = (written, held + 1)
            return None
        if len(self._seen) >= self._MAX_KEYS:  # forget the old ones, not the recent
            self._seen = {k: v for k, v in self._seen.items()
                          if now - v[0] < self.REPEAT_WINDOW}
        self._seen[key] = (now, 0)
        return held

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event, given = getattr(record, EVENT_ATTR, None), getattr(record, FIELDS_ATTR, None)
            if isinstance(event, str) and isinstance(given, Mapping):
                self.runlog.event(event, self._LEVELS.get(record.levelno, "warning"), **given)
                return
            message = record.getMessage()
            exc = record.exc_info[1] if record.exc_info else None
            repeated = self._repeats((record.name, record.levelno,
                                      f"{message}|{type(exc).__name__}: {exc}"))
            if repeated is None:
                return
            fields: dict[str, Any] = {"logger": record.name, "message": message}
            if repeated:
                fields["repeated"] = repeated
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                fields["exception"] = f"{type(exc).__name__}: {exc}"
                if self.runlog.fmt == "json":
                    fields["traceback"] = logging.Formatter().formatException(record.exc_info)
            level = self._LEVELS.get(record.levelno, "warning")
            self.runlog.event("log", level, **fields)
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


def install(runlog: RunLog, level: int = logging.INFO) -> None:
    """Send every `logging` record of this process through `runlog`."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(RunLogHandler(runlog))
    root.setLevel(level)
    # Library chatter (SQLAlchemy pool, alembic) is not a runner event.
    for noisy in ("sqlalchemy", "alembic", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

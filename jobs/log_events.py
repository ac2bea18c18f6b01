"""A `logging` record that is an event of its own, not a message.

The jobs log through `logging`; the runner routes those records into its one-line events
(`console.runlog.RunLogHandler`). A record made with `extra=event_extra(...)` is written
there as that event with these fields, the same line a runner writes for it itself (the
HTTP access log's `http-request`, a lock taken over from a dead run's `run-interrupted`),
instead of a `log` event with a message. Elsewhere it is an ordinary message.
"""

from __future__ import annotations

from typing import Any

EVENT_ATTR = "runlog_event"
FIELDS_ATTR = "runlog_fields"


def event_extra(event: str, **fields: Any) -> dict[str, Any]:
    """`extra=` for a logging call that the runner's log writes as `event` with `fields`."""
    return {EVENT_ATTR: event, FIELDS_ATTR: fields}


__all__ = ["EVENT_ATTR", "FIELDS_ATTR", "event_extra"]

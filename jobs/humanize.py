"""Dates, lengths of time, counts and summaries in plain words: one wording for emails,
logs, the CLI and the console. The console adds its colours on top (console/formatting.py);
the words are the same everywhere, so 650 seconds is `10m 50s` on every face.

Only the placeholder for a missing value differs by face: `—` by default, and the CLI's
ASCII tables pass `missing="-"`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from jobs.records import ItemResult
from jobs.timeutil import as_utc

MISSING = "—"


def long_date(value: datetime, tz: ZoneInfo) -> str:
    """`Saturday 5 December 2026, 00:00 UTC` in the job's timezone."""
    local = value.astimezone(tz)
    return f"{local:%A} {local.day} {local:%B %Y, %H:%M} {local.tzname()}"


def plural(n: int, word: str) -> str:
    """`1 error`, `2 errors`, `1,000 emails`."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _parts(seconds: int) -> tuple[int, int, int, int]:
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    return days, hours, minutes, secs


def span(delta: timedelta) -> str:
    """A length of time in at most two units: `3h 05m`, `2d 04h`, `10m 50s`, `45s`."""
    total = max(0, int(delta.total_seconds()))
    days, hours, minutes, secs = _parts(total)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def countdown(target: datetime, now: datetime) -> str:
    """`in 3h 12m 05s` up to a day away, then `in 2d 04h 12m`: for a display that ticks
    every second."""
    left = int((target - now).total_seconds())
    if left <= 0:
        return "due now"
    days, hours, minutes, secs = _parts(left)
    if days:
        return f"in {days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"in {hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"in {minutes}m {secs:02d}s"
    return f"in {secs}s"


def ago(moment: datetime | None, now: datetime, *, missing: str = MISSING) -> str:
    """How far `moment` is from `now`: `3h 05m ago`, `just now`, or `in 2d 04h` ahead."""
    if moment is None:
        return missing
    delta = now - moment
    if delta.total_seconds() < 0:
        return "in " + span(-delta)
    if delta.total_seconds() < 1:
        return "just now"
    return span(delta) + " ago"


def duration(seconds: float | None, *, missing: str = MISSING) -> str:
    """How long a run took: tenths under ten seconds (`2.4s`), else `span`."""
    if seconds is None:
        return missing
    if seconds < 10:
        return f"{seconds:.1f}s"
    return span(timedelta(seconds=seconds))


def clock_time(moment: datetime | None, tz: ZoneInfo) -> str:
    """`28 Nov 00:00 UTC` in the job's zone."""
    if moment is None:
        return MISSING
    local = moment.astimezone(tz)
    return f"{local.day:2d} {local:%b %H:%M} {local.tzname()}"


def stamp(moment: datetime | None, tz: ZoneInfo | None = None, *, zone: bool = False,
          missing: str = MISSING) -> str:
    """`2026-11-28 00:00:05` (UTC unless a zone is given): for tables of runs and emails.
    `zone` names the zone after it: `2026-11-28 00:00:05 UTC`."""
    if moment is None:
        return missing
    local = moment.astimezone(tz) if tz is not None else as_utc(moment)
    text = f"{local:%Y-%m-%d %H:%M:%S}"
    return f"{text} {local.tzname()}" if zone else text


def paused_note(by: str | None, at: datetime | None, reason: str | None, now: datetime) -> str:
    """Who paused a job, when and why: `paused by ops@laptop 2h 15m ago (2026-11-28
    09:30:00 UTC): disk migration`."""
    text = f"paused by {by or 'someone'}"
    if at is not None:
        text += f" {ago(at, now)} ({stamp(at, zone=True)})"
    return f"{text}: {reason}" if reason else text


def number(value: Any, *, missing: str = MISSING) -> str:
    """A figure: `1,234`, `2,411.40`, `true`."""
    if value is None:
        return missing
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def amount(value: Any, *, missing: str = MISSING) -> str:
    """Money, always with cents: `2,411.40`, `20.00`."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:,.2f}"
    return number(value, missing=missing)


def compact(detail: Mapping[str, Any]) -> str:
    """A run's summary on one line: `expired=1 suspended=0 emails_queued=1`."""
    return " ".join(f"{k}={v}" for k, v in detail.items())


def item_note(item: ItemResult, skip: tuple[str, ...] = ()) -> str:
    """An item's detail for a table row, without what the row already shows: values that
    repeat its tenant id (analytics' `tenantId`) go, so the figures come first. Moments
    are cut to the second in UTC (`2026-11-30T15:06:01Z`): the row is narrow, and the JSON
    and the detail pane keep them whole."""
    return " ".join(
        f"{k}={_note_value(v)}" for k, v in item.detail.items()
        if k not in skip and not isinstance(v, dict | list)
        and (item.tenant_id is None or v != item.tenant_id)
    )


# What datetime.isoformat() writes for an aware moment, which is how details hold them.
_ISO_MOMENT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)",
                         re.ASCII)


def _note_value(value: Any) -> Any:
    if isinstance(value, str) and _ISO_MOMENT.fullmatch(value):
        try:
            return f"{as_utc(datetime.fromisoformat(value)):%Y-%m-%dT%H:%M:%SZ}"
        except (ValueError, OverflowError):  # the shape of a moment, not one (Feb 30)
            pass
    return value

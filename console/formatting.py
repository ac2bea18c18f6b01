"""How the console writes times, durations, statuses and numbers: short, and the same on
every screen."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from rich.text import Text

from jobs.humanize import plural as plural  # here too: the console's screens use it
from jobs.records import ItemResult

STATUS_STYLES: dict[str, str] = {
    "succeeded": "green",
    "ok": "green",
    "sent": "green",
    "running": "bold cyan",
    "pending": "cyan",
    "partial": "yellow",
    "skipped": "yellow",
    "missed": "yellow",
    "failed": "bold red",
    "error": "bold red",
    "dead": "bold red",
    "interrupted": "magenta",
}


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def _parts(seconds: int) -> tuple[int, int, int, int]:
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    return days, hours, minutes, secs


def span(delta: timedelta) -> str:
    """A length of time in at most two units: `3h 05m`, `2d 04h`, `45s`."""
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
    """`in 3h 12m 05s` up to a day away, then `in 2d 04h`; ticks every second."""
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


def ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "—"
    delta = now - moment
    if delta.total_seconds() < 0:
        return "in " + span(-delta)
    if delta.total_seconds() < 1:
        return "just now"
    return span(delta) + " ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 10:
        return f"{seconds:.1f}s"
    return span(timedelta(seconds=seconds))


def clock_time(moment: datetime | None, tz: ZoneInfo) -> str:
    """`28 Nov 00:00 UTC` in the job's zone."""
    if moment is None:
        return "—"
    local = moment.astimezone(tz)
    return f"{local.day:2d} {local:%b %H:%M} {local.tzname()}"


def stamp(moment: datetime | None, tz: ZoneInfo | None = None) -> str:
    """`2026-11-28 00:00:05` (UTC unless a zone is given): for tables of runs and emails."""
    if moment is None:
        return "—"
    local = moment.astimezone(tz) if tz is not None else moment
    return f"{local:%Y-%m-%d %H:%M:%S}"


def number(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def append_outcome(text: Text, summary: Mapping[str, Any] | None, error: str | None) -> Text:
    """The summary and error lines a run and a preview both end with."""
    if summary:
        text.append("\nSummary ", style="dim")
        text.append(compact(summary))
    if error:
        text.append("\nError ", style="dim")
        text.append(error, style="red")
    return text


def compact(detail: Mapping[str, Any]) -> str:
    """A run's summary on one line: `expired=1 suspended=0 emails_queued=1`."""
    return " ".join(f"{k}={v}" for k, v in detail.items())


def item_note(item: ItemResult, skip: tuple[str, ...] = ()) -> str:
    """An item's detail for a table row, without what the row already shows: values that
    repeat its tenant id (analytics' `tenantId`) go, so the figures come first."""
    return " ".join(
        f"{k}={v}" for k, v in item.detail.items()
        if k not in skip and not isinstance(v, dict | list)
        and (item.tenant_id is None or v != item.tenant_id)
    )




def clip(text: str | None, width: int) -> str:
    if not text:
        return ""
    line = text.splitlines()[0] if text.strip() else text
    return line if len(line) <= width else line[: max(0, width - 1)] + "…"


# C0 and C1 controls, DEL, the line and paragraph separators, and the bidi overrides and
# isolates (they reorder what follows them on screen).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def terminal_safe(text: str, *, keep_newlines: bool = False) -> str:
    """`text` fit for a terminal: control characters written as escapes (`\\x1b`,
    `\\r`, `\\n`), so data from the database (a tenant's name, an email's subject)
    cannot colour or clear the screen, retitle the window, rewrite a line with a
    carriage return or start a line of its own. `keep_newlines` keeps the line breaks of
    text the CLI laid out itself. JSON output does not come here: it stays exact."""

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if keep_newlines and char == "\n":
            return char
        code = ord(char)
        return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")

    return _UNSAFE.sub(escape, text)

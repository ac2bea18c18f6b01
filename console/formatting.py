"""How the console writes times, durations, statuses and numbers: short, and the same on
every screen. The words come from jobs.humanize, shared with the CLI and the emails; this
module adds the console's colours and what only a screen needs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

# Here too, for the console's screens: the plain words are shared with the CLI.
from jobs.humanize import ago as ago
from jobs.humanize import amount as amount
from jobs.humanize import clock_time as clock_time
from jobs.humanize import compact as compact
from jobs.humanize import countdown as countdown
from jobs.humanize import duration as duration
from jobs.humanize import item_note as item_note
from jobs.humanize import number as number
from jobs.humanize import plural as plural
from jobs.humanize import span as span
from jobs.humanize import stamp as stamp

if TYPE_CHECKING:
    from rich.text import Text

    from jobs.overview import ScheduleState

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
    "timed_out": "bold red",
    "error": "bold red",
    "dead": "bold red",
    "interrupted": "magenta",
}


def status_text(status: str) -> Text:
    from rich.text import Text  # the screens' styling: the CLI's commands need none of Rich

    return Text(status, style=STATUS_STYLES.get(status, ""))


# Whether a job's slots fire (jobs.overview.schedule_state).
STATE_STYLES: dict[ScheduleState, str] = {
    "disabled": "dim",
    "paused": "bold yellow",
    "active": "green",
}


def state_text(state: ScheduleState) -> Text:
    from rich.text import Text

    return Text(state, style=STATE_STYLES[state])


def append_outcome(text: Text, summary: Mapping[str, Any] | None, error: str | None) -> Text:
    """The summary and error lines a run and a preview both end with."""
    if summary:
        text.append("\nSummary ", style="dim")
        text.append(compact(summary))
    if error:
        text.append("\nError ", style="dim")
        text.append(error, style="red")
    return text


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

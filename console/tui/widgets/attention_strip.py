"""The jobs screen's attention strip: one line per thing needing a person (a failing or
overdue job, a stale run, a paused job, dead emails, undelivered alerts). Enter on a line
goes to the thing; with nothing to show, the strip is not there at all."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from console.formatting import terminal_safe
from jobs.overview import Attention, AttentionKind

MARKS: dict[AttentionKind, tuple[str, str]] = {  # the sign before a line, and its colour
    "failing": ("✖", "bold red"),
    "stale": ("✖", "bold red"),
    "overdue": ("⚠", "bold yellow"),
    "dead_emails": ("✉", "bold red"),
    "undelivered_alerts": ("⚠", "bold red"),
    "paused": ("⏸", "yellow"),
}


class AttentionStrip(OptionList):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lines: tuple[Attention, ...] = ()
        self.display = False

    def show(self, lines: Sequence[Attention]) -> None:
        lines = tuple(lines)
        self.display = bool(lines)
        if lines == self.lines:
            return  # a refresh every few seconds must not move the highlight
        keep = self.highlighted
        self.lines = lines
        self.set_options(Option(_line(a), id=str(i)) for i, a in enumerate(lines))
        if lines:
            self.highlighted = min(keep or 0, len(lines) - 1)

    def line(self, index: int | None) -> Attention | None:
        return self.lines[index] if index is not None and 0 <= index < len(self.lines) else None


def _line(a: Attention) -> Text:
    mark, style = MARKS[a.kind]
    # A line, not a paragraph: the strip stays as many rows as it has lines.
    return Text.assemble((f"{mark} ", style), terminal_safe(a.text), no_wrap=True,
                         overflow="ellipsis")

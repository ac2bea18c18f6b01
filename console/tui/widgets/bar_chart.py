"""A small column chart of one value per day, with missing days marked.

Textual's Sparkline has one row and no way to show a gap, and a missing day must not
look like a zero: here a zero is a dot on the baseline and a missing day a cross.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

EIGHTHS = " ▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class Bar:
    label: str  # the x-axis label of this column, e.g. "11-27"
    value: float | None  # None: missing


class BarChart(Widget):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"bar-chart--bar"}
    DEFAULT_CSS = """
    BarChart {
        height: 10;
        min-height: 5;
    }
    BarChart > .bar-chart--bar { color: $accent; }
    """

    bars: reactive[tuple[Bar, ...]] = reactive(tuple, layout=False)

    def __init__(self, title: str, fmt: Callable[[float], str] = lambda v: f"{v:,.0f}",
                 *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.title = title
        self.fmt = fmt

    def set_bars(self, bars: Iterable[Bar]) -> None:
        self.bars = tuple(bars)

    def render(self) -> Text:
        width, height = self.content_size.width, self.content_size.height
        bars = list(self.bars)
        out = Text(no_wrap=True, overflow="crop")
        if width <= 0 or height <= 0:
            return out
        rows = max(1, height - 2)  # one line of title, one of labels
        gap = 1 if len(bars) * 2 - 1 <= width else 0
        shown = bars if len(bars) * (1 + gap) - gap <= width else bars[-((width + gap) // (1 + gap)):]
        bar_w = 1
        if shown:
            bar_w = max(1, min(8, (width + gap) // len(shown) - gap))
        values = [b.value for b in shown if b.value is not None]
        top = max(values, default=0.0)
        title = f"{self.title}  max {self.fmt(top)}" if values else f"{self.title}  no data"
        if len(shown) < len(bars):
            title += f"  (last {len(shown)})"
        out.append(title[:width] + "\n", style="bold")
        colour = self.get_component_rich_style("bar-chart--bar", partial=True)
        for r in range(rows):
            base = (rows - 1 - r) * 8
            line = Text(no_wrap=True)
            for i, bar in enumerate(shown):
                if i and gap:
                    line.append(" ")
                if bar.value is None:
                    line.append(("×" if r == rows - 1 else " ") * bar_w, style="bold yellow")
                    continue
                if top <= 0 or bar.value <= 0:
                    line.append(("·" if r == rows - 1 else " ") * bar_w, style="dim")
                    continue
                level = max(1, round(bar.value / top * rows * 8))  # a value > 0 always shows
                fill = min(8, max(0, level - base))
                line.append(EIGHTHS[fill] * bar_w, style=colour)
            out.append_text(line)
            out.append("\n")
        if shown:
            out.append(_axis([b.label for b in shown], bar_w, gap, width), style="dim")
        return out


def _axis(labels: list[str], bar_w: int, gap: int, width: int) -> str:
    """Labels under their bars, as many as fit without touching, counted from the last."""
    step = bar_w + gap
    every = max(1, -(-(max(map(len, labels)) + 1) // step))  # ceil
    line = [" "] * width
    for i in range(len(labels) - 1, -1, -every):
        label = labels[i]
        start = min(i * step, width - len(label))
        if start < 0 or any(c != " " for c in line[max(0, start - 1) : start + len(label)]):
            continue
        line[start : start + len(label)] = label
    return "".join(line).rstrip()

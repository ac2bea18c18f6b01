"""`?`: every key of every screen, read from the bindings themselves so it cannot drift."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, cast

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from console.tui.screens.alerts import AlertsScreen
from console.tui.screens.analytics import AnalyticsScreen
from console.tui.screens.analytics_day import AnalyticsDayScreen
from console.tui.screens.base import WRITING_ACTIONS
from console.tui.screens.history import HistoryScreen
from console.tui.screens.jobs import JobsScreen
from console.tui.screens.outbox import OutboxScreen
from console.tui.screens.preview import PreviewScreen
from console.tui.screens.problems import ProblemsScreen
from console.tui.screens.run_detail import RunDetailScreen
from console.tui.screens.timeline import TimelineScreen
from console.tui.screens.verify import VerifyScreen

if TYPE_CHECKING:
    from console.tui.app import OpsApp

SECTIONS: tuple[tuple[str, type[object]], ...] = (
    ("Jobs (the first screen)", JobsScreen),
    ("History of a job", HistoryScreen),
    ("Run detail", RunDetailScreen),
    ("Preview", PreviewScreen),
    ("Analytics", AnalyticsScreen),
    ("Analytics by day", AnalyticsDayScreen),
    ("Verify a day", VerifyScreen),
    ("Outbox", OutboxScreen),
    ("Alerts", AlertsScreen),
    ("Problems", ProblemsScreen),
    ("Timeline", TimelineScreen),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "app.pop_screen", "Close", id="help-close",
                tooltip="Close the help"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-dialog"):
            yield Label("Keys  (escape or ? closes)", id="help-title")
            yield Static(self._table(), id="help-keys")

    def _key(self, binding: Binding) -> str:
        if binding.key_display:
            return binding.key_display
        return ", ".join(self.app.get_key_display(binding.with_key(k.strip()))
                         for k in binding.key.split(","))

    def _table(self) -> Group:
        read_only = cast("OpsApp", self.app).session.read_only
        everywhere: list[BindingType] = [
            *type(self.app).BINDINGS,
            Binding("ctrl+p", "command_palette", "Palette",
                    tooltip="Every action by name, e.g. 'job: Run now' (type to filter)"),
            Binding("escape", "back", "Back", tooltip="Back to the previous screen"),
        ]
        note = ("Read-only console: the keys marked (writes) are off." if read_only
                else "Keys marked (writes) change data; storeflow-ops tui --read-only hides them.")
        parts: list[RenderableType] = [Text(note, style="yellow"), Text("")]
        for title, screen in (("Everywhere", None), *SECTIONS):
            table = Table(box=None, show_header=False, expand=True, padding=(0, 1),
                          title=title, title_justify="left", title_style="bold underline")
            table.add_column("key", style="bold", no_wrap=True, width=6)
            table.add_column("action", no_wrap=True, width=14)
            table.add_column("what", ratio=1)
            bindings = everywhere if screen is None else getattr(screen, "BINDINGS", [])
            for b in bindings:
                if not isinstance(b, Binding) or (screen is not None and b.id == "back"):
                    continue  # listed once, under Everywhere
                what = Text(b.tooltip or b.description)
                if b.action in WRITING_ACTIONS:
                    what.append("  (writes)", style="yellow")
                table.add_row(self._key(b), b.description, what)
            parts += [table, Text("")]
        return Group(*parts)

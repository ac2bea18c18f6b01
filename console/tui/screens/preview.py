"""A preview (dry run): what a real run at this moment would do to each tenant, and its
summary; nothing was written. `t` runs it for real, after asking again."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Header, Input, Static

from console.formatting import append_outcome, plural, stamp
from console.tui.screens.base import OpsScreen
from console.tui.widgets.footer import OpsFooter
from console.tui.widgets.items_view import ItemsView, ReportItems
from console.tui.widgets.status_bar import StatusBar
from jobs.records import RunReport
from jobs.registry import JOBS


def preview_summary(report: RunReport) -> Text:
    text = Text()
    text.append(f"Preview of {report.job_id}", style="bold")
    text.append(f" at {stamp(report.reference_time)} UTC", style="bold")
    text.append("  nothing was written", style="green")
    text.append("\nWould act on ", style="dim")
    text.append(plural(report.processed, "item"))
    text.append(", of which ", style="dim")
    text.append(f"{len(report.errors):,} would fail", style="bold red" if report.errors else "")
    return append_outcome(text, report.summary, report.error)


class PreviewScreen(OpsScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back", id="back", tooltip="Back, running nothing"),
        Binding("t", "run_for_real", "Run for real", id="preview-run",
                tooltip="Run the job for real now (asks again)"),
        Binding("e", "toggle_errors", "Errors only", id="items-errors",
                tooltip="Show only the items that would fail, or all of them again"),
        Binding("slash", "search", "Search", key_display="/", id="items-search",
                tooltip="Filter the items by tenant id or name"),
    ]
    PALETTE = (("job: Run for real", "Run the previewed job for real (asks again)",
                "run_for_real"),
               ("run: Errors only", "Show only the failing items (again: all)", "toggle_errors"),
               ("run: Search", "Filter items by tenant id or name", "search"))

    def __init__(self, report: RunReport) -> None:
        super().__init__()
        self.report = report

    def compose(self) -> ComposeResult:
        yield Header()
        yield StatusBar(id="status")
        yield Static(preview_summary(self.report), id="run-summary")
        yield ItemsView(ReportItems(self.report.items), total=self.report.processed,
                        errors=len(self.report.errors), id="items-view")
        yield OpsFooter()

    def on_mount(self) -> None:
        self.sub_title = f"Preview · {self.report.job_id}"

    def action_run_for_real(self) -> None:
        job_id = self.report.job_id
        # The preview stays open while the question is asked: a "no" comes back to it.
        self.ops.request_trigger(
            job_id,
            question=f"Run {job_id} for real now?",
            detail=f"{JOBS[job_id].title}. The preview showed {self.report.processed:,} "
                   "items; a real run now writes to the platform tables, the outbox or "
                   "the cache, and may differ if the data changed since.",
            yes="Run for real",
            on_yes=self._close,
        )

    def _close(self) -> None:
        if self.is_current:
            self.dismiss()

    def action_toggle_errors(self) -> None:
        view = self.query_one(ItemsView)
        view.errors_only = not view.errors_only

    def action_search(self) -> None:
        self.query_one("#item-search", Input).focus()

"""One run: its summary, then its per-tenant items (errors-only filter, search by tenant
id or name) and the highlighted item's error in full."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Header, Input, Static

from console.formatting import append_outcome, duration, stamp, status_text
from console.tui.messages import RunLoaded
from console.tui.screens.base import OpsScreen
from console.tui.widgets.footer import OpsFooter
from console.tui.widgets.items_view import ItemsView, StoredItems
from console.tui.widgets.status_bar import StatusBar
from jobs import runs
from jobs.records import RunRecord


def run_summary(record: RunRecord) -> Text:
    text = Text()
    text.append(f"Run #{record.run_id} ", style="bold")
    text.append(f"{record.job_id} ", style="bold")
    text.append_text(status_text(str(record.status)))
    text.append(f"  {record.trigger} by {record.started_by}")
    text.append("\nReference time ", style="dim")
    text.append(f"{stamp(record.reference_time)} UTC")
    if record.scheduled_for is not None:
        text.append("  slot ", style="dim")
        text.append(f"{stamp(record.scheduled_for)}")
    text.append("  started ", style="dim")
    text.append(stamp(record.started_at))
    text.append("  took ", style="dim")
    text.append(duration(record.duration_seconds))
    text.append("  processed ", style="dim")
    text.append(f"{record.processed:,}")
    text.append("  errors ", style="dim")
    text.append(f"{record.errors:,}", style="bold red" if record.errors else "")
    return append_outcome(text, record.summary, record.error)


class RunDetailScreen(OpsScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", id="back", tooltip="Back to where you were"),
        Binding("e", "toggle_errors", "Errors only", id="items-errors",
                tooltip="Show only the items that failed, or all of them again"),
        Binding("slash", "search", "Search", key_display="/", id="items-search",
                tooltip="Filter the items by tenant id or name"),
        Binding("r", "reload", "Reload", id="run-reload", tooltip="Read the run again"),
    ]
    PALETTE = (("run: Errors only", "Show only the failed items (again: all)", "toggle_errors"),
               ("run: Search", "Filter items by tenant id or name", "search"))

    def __init__(self, run_id: int, *, search: str = "", errors_only: bool = False) -> None:
        super().__init__()
        self.run_id = run_id
        self.record: RunRecord | None = None
        self.search = search  # opened on one tenant's items (from the problems view)
        self.errors_only = errors_only

    def compose(self) -> ComposeResult:
        yield Header()
        yield StatusBar(id="status")
        yield Static("Loading…", id="run-summary")
        yield ItemsView(StoredItems(self.session, self.run_id), id="items-view")
        yield OpsFooter()

    def on_mount(self) -> None:
        self.sub_title = f"Run #{self.run_id}"
        if self.errors_only:
            self.query_one(ItemsView).errors_only = True  # reloads the items
        if self.search:
            self.query_one("#item-search", Input).value = self.search  # so does this
        self._load()

    @work(thread=True, exclusive=True, exit_on_error=False, group="run-detail")
    def _load(self) -> None:
        self.post_message(RunLoaded(runs.get_run(self.session.db(), self.run_id)))

    def on_run_loaded(self, event: RunLoaded) -> None:
        self.record = event.record
        summary = self.query_one("#run-summary", Static)
        if event.record is None:
            summary.update(Text(f"Run #{self.run_id} does not exist.", style="red"))
            return
        summary.update(run_summary(event.record))
        self.sub_title = f"Run #{self.run_id} · {event.record.job_id}"
        self.query_one(ItemsView).set_totals(event.record.processed, event.record.errors)

    def action_back(self) -> None:
        search = self.query_one("#item-search", Input)
        if search.has_focus and search.value:
            search.value = ""
            return
        self.app.pop_screen()

    def action_toggle_errors(self) -> None:
        view = self.query_one(ItemsView)
        view.errors_only = not view.errors_only

    def action_search(self) -> None:
        self.query_one("#item-search", Input).focus()

    def action_reload(self) -> None:
        self._load()
        self.query_one(ItemsView).reload()

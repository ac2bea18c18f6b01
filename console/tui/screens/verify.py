"""A day of analytics checked against the database: the job recomputes the day as a
preview (writing nothing), and the tenants whose cached value differs, or is missing,
are listed with the cached and the actual figures. `c` recomputes the day for real."""

from __future__ import annotations

from datetime import date
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Header, Static
from textual.worker import Worker, WorkerState

from console.formatting import amount, number, plural
from console.tui.messages import DayVerified, RunPurpose
from console.tui.screens.base import OpsScreen
from console.tui.widgets.footer import OpsFooter
from console.tui.widgets.run_progress import RunProgress
from console.tui.widgets.status_bar import StatusBar
from console.tui.widgets.tables import RowTable
from jobs import analytics
from jobs.analytics_day import FIGURES, Verification, verify_day
from jobs.errors import OpsError
from jobs.records import RunParams, RunReport

# 97 columns in all: 100 show every one.
COLUMNS = (("Tenant", "name", 24), ("Cache", "state", 9), ("Orders", "orders", 11),
           ("Revenue", "revenue", 21), ("New cust.", "newCustomers", 10),
           ("Sold", "productsSold", 10))


class VerifyScreen(OpsScreen):
    CSS_PATH = "analytics_day.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", id="back", tooltip="Back to the day"),
        Binding("c", "recompute", "Recompute these", id="verify-recompute",
                tooltip="Aggregate the day again for real, so the cache holds what the "
                        "database says (asks first)"),
        Binding("r", "verify", "Verify again", id="verify-again",
                tooltip="Recompute the day again, writing nothing, and compare"),
    ]
    PALETTE = (("analytics: Recompute these", "Aggregate the day again for real (asks first)",
                "recompute"),
               ("analytics: Verify again", "Recompute the day without writing and compare",
                "verify"))

    def __init__(self, day: date) -> None:
        super().__init__()
        self.day = day
        self.result: Verification | None = None
        self.tenant_ids: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield StatusBar(id="status")
        yield Static("", id="verify-summary")
        yield RowTable(id="verify-table", zebra_stripes=True)
        yield RunProgress(id="run-progress")
        yield OpsFooter()

    def on_mount(self) -> None:
        self.sub_title = f"Verify analytics · {self.day.isoformat()}"
        table: DataTable[Any] = self.query_one("#verify-table", DataTable)
        for label, key, width in COLUMNS:
            # Figures are right-aligned, and so are their headings.
            heading = Text(label, justify="right") if key in FIGURES else label
            table.add_column(heading, key=key, width=width)
        table.focus()
        self.action_verify()

    def action_verify(self) -> None:
        self.result = None
        self.refresh_bindings()
        self.query_one("#verify-summary", Static).update(Text(
            f"Recomputing {self.day.isoformat()} for every tenant (writing nothing) and "
            "comparing with the cache…", style="dim"))
        self._verify()

    @work(thread=True, exclusive=True, exit_on_error=False, group="verify")
    def _verify(self) -> None:
        session = self.session
        result = verify_day(session.db(), session.settings, session.cache(), self.day,
                            now=session.clock(), started_by=session.started_by)
        self.post_message(DayVerified(result))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        super().on_worker_state_changed(event)  # the notification
        if event.worker.group == "verify" and event.state is WorkerState.ERROR:
            # The line that said "Reading…" / "Recomputing…" says what happened instead.
            error = event.worker.error
            message = error.message if isinstance(error, OpsError) else str(error)
            self.query_one("#verify-summary", Static).update(
                Text(f"Could not verify the day: {message}",
                     style="bold red", no_wrap=True, overflow="ellipsis"))

    def on_day_verified(self, event: DayVerified) -> None:
        result = self.result = event.result
        table = self.query_one("#verify-table", DataTable)
        table.clear()
        self.tenant_ids = []
        for d in result.differing:
            cells = [_change(f, d.cached[f], d.actual[f]) for f in FIGURES]
            table.add_row(Text(d.name, no_wrap=True, overflow="ellipsis"),
                          Text("differs", style="bold red"), *cells, key=d.tenant_id)
            self.tenant_ids.append(d.tenant_id)
        for tenant_id, name in result.missing:
            table.add_row(Text(name, no_wrap=True, overflow="ellipsis"),
                          Text("missing", style="bold yellow"), "", "", "", "", key=tenant_id)
            self.tenant_ids.append(tenant_id)
        summary = Text(no_wrap=True, overflow="ellipsis")
        summary.append(f"{result.day.isoformat()}: {plural(result.checked, 'tenant')} checked, "
                       f"{result.matching:,} matching, ")
        summary.append(f"{len(result.differing):,} differing",
                       style="bold red" if result.differing else "green")
        summary.append(", ")
        summary.append(f"{len(result.missing):,} missing",
                       style="bold yellow" if result.missing else "green")
        if result.ok:
            summary.append("  the cache agrees with the database", style="green")
        self.query_one("#verify-summary", Static).update(summary)
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        allowed = super().check_action(action, parameters)
        if allowed and action == "recompute":
            return self.result is not None and not self.result.ok
        return allowed

    def action_recompute(self) -> None:
        if self.result is None or self.result.ok:
            return
        n = len(self.result.differing) + len(self.result.missing)
        day = self.day.isoformat()
        self.ops.request_trigger(
            analytics.JOB_ID, RunParams(date=self.day),
            question=f"Recompute {plural(n, 'tenant')} for {day}?",
            detail=(f"The job aggregates {day} again for every tenant (it works a day at a "
                    "time), so these values and every other tenant's are written afresh, "
                    "with a new time to live."),
            yes="Recompute", open_result=False,
        )

    def on_job_finished(self, purpose: RunPurpose, report: RunReport) -> None:
        if purpose.job_id == analytics.JOB_ID and not report.dry_run:
            self.action_verify()

    @on(DataTable.RowSelected, "#verify-table")
    def _selected(self, event: DataTable.RowSelected) -> None:
        from console.tui.screens.analytics import AnalyticsScreen

        if event.row_key.value is not None:
            self.app.push_screen(AnalyticsScreen(str(event.row_key.value), until=self.day))

    def action_back(self) -> None:
        self.app.pop_screen()


def _change(field: str, cached: Any, actual: Any) -> Text:
    show = amount if field == "revenue" else number
    if cached == actual or (field == "revenue" and show(cached) == show(actual)):
        return Text(show(actual), style="dim", justify="right")
    return Text.assemble(show(cached), " → ", (show(actual), "bold"), justify="right")

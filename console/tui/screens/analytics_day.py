"""Analytics for one day across every tenant: each tenant's cached figures, sortable by
each, a totals row, tenants without a value marked (and listed last), and a page of
rows at a time so 100,000 tenants open and re-sort at once. Enter opens a tenant's days
and chart; `v` checks the day against the database."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any, ClassVar

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import DataTable, Header, Input, Static
from textual.worker import Worker, WorkerState

from console.formatting import amount, number, plural, span
from console.tui.messages import DayLoaded, DayTtlsRead, RunPurpose
from console.tui.screens.base import OpsScreen
from console.tui.widgets.footer import OpsFooter
from console.tui.widgets.run_progress import RunProgress
from console.tui.widgets.status_bar import StatusBar
from console.tui.widgets.tables import RowTable
from jobs import analytics
from jobs.analytics_day import FIGURES, AnalyticsDay, TenantDay, read_day, read_ttls, sort_day
from jobs.errors import OpsError
from jobs.records import RunReport

PAGE_SIZE = 100  # rows in the table at once; n/p (or moving past either end) turns the page
TOTALS = "totals"
# (heading, sort field and column key, width): 93 columns, so 100 show them all, and wider
# terminals do not push the figures far from the names.
COLUMNS = (("Tenant", "name", 32), ("Orders", "orders", 8), ("Revenue", "revenue", 13),
           ("New cust.", "newCustomers", 9), ("Sold", "productsSold", 8), ("TTL left", "ttl", 11))
SORT_KEYS = {"1": "name", "2": "orders", "3": "revenue", "4": "newCustomers",
             "5": "productsSold"}
SORT_WORDS = {"name": "name", "orders": "orders", "revenue": "revenue",
              "newCustomers": "new customers", "productsSold": "products sold"}


class AnalyticsDayScreen(OpsScreen):
    CSS_PATH = "analytics_day.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", id="back", tooltip="Back to the previous screen"),
        Binding("enter", "open_tenant", "Tenant", id="day-open-tenant", show=False,
                tooltip="The highlighted tenant's days and chart"),
        Binding("3", "sort('revenue')", "Sort", key_display="1-5", id="day-sort",
                tooltip="Sort by 1 name, 2 orders, 3 revenue, 4 new customers, 5 products "
                        "sold (again: the other way); or click a heading"),
        *(Binding(key, f"sort('{field}')", f"Sort by {SORT_WORDS[field]}", show=False)
          for key, field in SORT_KEYS.items() if key != "3"),
        Binding("n", "page(1)", "Page", key_display="n/p", id="day-next-page",
                tooltip=f"The next {PAGE_SIZE} tenants (also: down on the last row)"),
        Binding("p", "page(-1)", "Previous page", show=False, id="day-previous-page",
                tooltip=f"The previous {PAGE_SIZE} tenants (also: up on the first row)"),
        Binding("left_square_bracket", "shift_day(-1)", "Day", key_display="[ ]",
                id="day-before", tooltip="The day before ([) or after (])"),
        Binding("right_square_bracket", "shift_day(1)", "Day after", show=False,
                id="day-after", tooltip="The day after"),
        Binding("v", "verify", "Verify", id="day-verify",
                tooltip="Recompute the day without writing and list the tenants whose cached "
                        "value differs or is missing"),
        Binding("slash", "choose_day", "Date", key_display="/", id="day-date",
                tooltip="Type a date (YYYY-MM-DD), then enter"),
        Binding("r", "reload", "Reload", id="day-reload", tooltip="Read the cache again"),
    ]
    PALETTE = (("analytics: Verify day", "Recompute the day without writing; list the tenants "
                "whose cached value differs or is missing", "verify"),
               ("analytics: Sort by revenue", "Highest first (again: lowest)", "sort('revenue')"),
               ("analytics: Sort by orders", "Most first (again: fewest)", "sort('orders')"),
               ("analytics: Sort by new customers", "Most first", "sort('newCustomers')"),
               ("analytics: Sort by products sold", "Most first", "sort('productsSold')"),
               ("analytics: Sort by name", "A to Z (again: Z to A)", "sort('name')"),
               ("analytics: Reload day", "Read the cache again", "reload"))

    def __init__(self, day: date | None = None) -> None:
        super().__init__()
        self.day = day
        self.loaded: AnalyticsDay | None = None
        self.sort_field = "revenue"
        self.descending = True
        self.rows: list[TenantDay] = []  # every tenant, in the order shown
        self.page = 0

    def compose(self) -> ComposeResult:
        yield Header()
        yield StatusBar(id="status")
        with Horizontal(id="day-controls"):
            yield Input(placeholder="YYYY-MM-DD", id="day-date", max_length=10)
            yield Static("", id="day-summary")
        yield RowTable(id="day-table", zebra_stripes=True)
        yield RunProgress(id="run-progress")
        yield OpsFooter()

    def on_mount(self) -> None:
        self.sub_title = "Analytics by day"
        table: DataTable[Any] = self.query_one("#day-table", DataTable)
        for label, key, width in COLUMNS:
            # Figures are right-aligned, and so are their headings.
            heading = Text(label, justify="right") if key in FIGURES else label
            table.add_column(heading, key=key, width=width)
        if self.day is None:
            self.day = analytics.latest_day(self.session.settings, self.session.clock())
        self.query_one("#day-date", Input).value = self.day.isoformat()
        table.focus()
        self.action_reload()

    # --- loading ----------------------------------------------------------------------------

    def action_reload(self) -> None:
        if self.day is None:
            return
        # Said in the summary line, not with the table's loading indicator, which would
        # take the focus from the table to the date field.
        self.query_one("#day-summary", Static).update(
            Text(f"Reading {self.day.isoformat()} from the cache…", style="dim"))
        self._read(self.day)

    @work(thread=True, exclusive=True, exit_on_error=False, group="analytics-day")
    def _read(self, day: date) -> None:
        # Figures only: the TTLs of the 100 rows on screen are read when a page is shown,
        # not 100,000 of them here (on Redis a TTL a key, half of what the read carries).
        self.post_message(DayLoaded(read_day(self.session.db(), self.session.cache(), day,
                                             ttls=False)))

    @work(thread=True, exclusive=True, exit_on_error=False, group="analytics-day-ttls")
    def _read_ttls(self, day: date, tenant_ids: list[str]) -> None:
        self.post_message(DayTtlsRead(day, read_ttls(self.session.cache(), day, tenant_ids)))

    def on_day_ttls_read(self, event: DayTtlsRead) -> None:
        if event.day != self.day:
            return
        table = self.query_one("#day-table", DataTable)
        for tenant_id, ttl in event.ttls.items():
            if tenant_id in table.rows:  # else on a page turned since
                table.update_cell(tenant_id, "ttl", _ttl(ttl))

    def on_day_loaded(self, event: DayLoaded) -> None:
        if event.day.day != self.day:
            return  # a day asked for before the one now chosen
        self.loaded = event.day
        self._sort_and_show()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        super().on_worker_state_changed(event)  # the notification
        if event.worker.group == "analytics-day" and event.state is WorkerState.ERROR:
            # The line that said "Reading…" / "Recomputing…" says what happened instead.
            error = event.worker.error
            message = error.message if isinstance(error, OpsError) else str(error)
            self.query_one("#day-summary", Static).update(
                Text(f"Could not read the day: {message}",
                     style="bold red", no_wrap=True, overflow="ellipsis"))

    # --- sorting and paging -----------------------------------------------------------------

    def action_sort(self, field: str) -> None:
        if field == self.sort_field:
            self.descending = not self.descending
        else:
            self.sort_field, self.descending = field, field != "name"
        self._sort_and_show()

    @on(DataTable.HeaderSelected, "#day-table")
    def _heading(self, event: DataTable.HeaderSelected) -> None:
        field = str(event.column_key.value)
        if field in SORT_WORDS:
            self.action_sort(field)

    def _sort_and_show(self) -> None:
        if self.loaded is None:
            return
        self.rows = sort_day(self.loaded.tenants, self.sort_field, self.descending)
        self.page = 0
        self._show_page(cursor=1)

    @property
    def pages(self) -> int:
        return max(1, -(-len(self.rows) // PAGE_SIZE))

    def action_page(self, step: int, cursor: int | None = None) -> None:
        page = min(max(self.page + step, 0), self.pages - 1)
        if page != self.page:
            self.page = page
            self._show_page(cursor=cursor if cursor is not None else 1)

    def _show_page(self, cursor: int) -> None:
        assert self.loaded is not None
        table = self.query_one("#day-table", DataTable)
        table.clear()
        table.add_row(*_totals_row(self.loaded), key=TOTALS)
        # Fixed only once it exists: DataTable cannot draw a fixed row it does not have.
        table.fixed_rows = 1
        first = self.page * PAGE_SIZE
        shown = self.rows[first:first + PAGE_SIZE]
        for r in shown:
            table.add_row(*_tenant_row(r), key=r.tenant_id)
        table.move_cursor(row=min(max(cursor, 0), table.row_count - 1), animate=False)
        self._summarise()
        if self.day is not None:
            self._read_ttls(self.day, [r.tenant_id for r in shown if not r.missing])

    def _summarise(self) -> None:
        assert self.loaded is not None
        t = self.loaded.totals
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f"{plural(t.tenants, 'tenant')}  ")
        if t.missing:
            text.append(f"{t.missing:,} missing", style="bold yellow")
        else:
            text.append("none missing", style="green")
        arrow = "↓" if self.descending else "↑"
        text.append(f"  by {SORT_WORDS[self.sort_field]} {arrow}", style="bold")
        if self.pages > 1:
            first = self.page * PAGE_SIZE
            last = min(first + PAGE_SIZE, len(self.rows))
            text.append(f"  {first + 1:,}–{last:,} of {len(self.rows):,}", style="dim")
        self.query_one("#day-summary", Static).update(text)

    def on_key(self, event: events.Key) -> None:
        # Down on the last row turns to the next page, up on the first to the previous one,
        # so the page boundaries do not stop a scroll through every tenant.
        table = self.query_one("#day-table", DataTable)
        if not table.has_focus or event.key not in ("down", "up"):
            return
        if event.key == "down" and table.cursor_row == table.row_count - 1 \
                and self.page < self.pages - 1:
            self.action_page(1, cursor=1)
            event.stop()
        elif event.key == "up" and table.cursor_row <= 1 and self.page > 0:
            self.action_page(-1, cursor=PAGE_SIZE)
            event.stop()

    # --- the day -----------------------------------------------------------------------------

    def action_shift_day(self, step: int) -> None:
        if self.day is not None:
            self._go_to(self.day + timedelta(days=step))

    def action_choose_day(self) -> None:
        self.query_one("#day-date", Input).focus()

    @on(Input.Submitted, "#day-date")
    def _date_typed(self, event: Input.Submitted) -> None:
        try:
            day = date.fromisoformat(event.value.strip())
        except ValueError:
            self.notify("Dates are YYYY-MM-DD.", severity="warning", markup=False)
            return
        self.query_one("#day-table", DataTable).focus()
        self._go_to(day)

    def _go_to(self, day: date) -> None:
        self.day = day
        self.loaded = None
        self.query_one("#day-date", Input).value = day.isoformat()
        self.action_reload()

    # --- opening a tenant, verifying ---------------------------------------------------------

    @property
    def highlighted(self) -> TenantDay | None:
        table = self.query_one("#day-table", DataTable)
        row = table.cursor_row - 1  # the totals row comes first
        index = self.page * PAGE_SIZE + row
        return self.rows[index] if row >= 0 and index < len(self.rows) else None

    @on(DataTable.RowSelected, "#day-table")
    def _selected(self) -> None:
        self.action_open_tenant()

    def action_open_tenant(self) -> None:
        from console.tui.screens.analytics import AnalyticsScreen

        tenant = self.highlighted
        if tenant is not None:
            self.app.push_screen(AnalyticsScreen(tenant.tenant_id, until=self.day))

    def action_verify(self) -> None:
        from console.tui.screens.verify import VerifyScreen

        if self.day is not None:
            self.app.push_screen(VerifyScreen(self.day))

    def action_back(self) -> None:
        self.app.pop_screen()

    def on_job_finished(self, purpose: RunPurpose, report: RunReport) -> None:
        if purpose.job_id == analytics.JOB_ID and not report.dry_run:
            self.action_reload()


def _totals_row(day: AnalyticsDay) -> tuple[Text, ...]:
    t = day.totals
    bold = "bold"
    label = Text(f"Total: {plural(t.tenants, 'tenant')}", style=bold, no_wrap=True,
                 overflow="ellipsis")
    return (label, Text(number(t.orders), style=bold, justify="right"),
            Text(amount(t.revenue), style=bold, justify="right"),
            Text(number(t.newCustomers), style=bold, justify="right"),
            Text(number(t.productsSold), style=bold, justify="right"),
            Text(f"{t.missing:,} missing" if t.missing else "", style="bold yellow",
                 no_wrap=True, overflow="ellipsis"))


def _tenant_row(r: TenantDay) -> tuple[str | Text, ...]:
    name = Text(r.name, no_wrap=True, overflow="ellipsis")
    if r.missing:
        return (name, Text("missing", style="bold yellow"), "", "", "", "")
    return (name, Text(number(r.orders), justify="right"),
            Text(amount(r.revenue), justify="right"),
            Text(number(r.newCustomers), justify="right"),
            Text(number(r.productsSold), justify="right"),
            "")  # the TTL: filled in once read (DayTtlsRead)


def _ttl(seconds: int | None) -> str:
    return "no expiry" if seconds is None else span(timedelta(seconds=seconds))

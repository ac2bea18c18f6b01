"""A tenant's cached daily analytics: pick the tenant (by name or id), see each day of a
range as the dashboard would read it (missing days marked, TTL left), charted, and
recompute a day."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Header, Input, OptionList, Static
from textual.widgets.option_list import Option

from console.formatting import amount, number, plural, span, status_text
from console.tui.messages import AnalyticsLoaded, RunPurpose, TenantsFound
from console.tui.screens.base import OpsScreen
from console.tui.widgets.bar_chart import Bar, BarChart
from console.tui.widgets.footer import OpsFooter
from console.tui.widgets.run_progress import RunProgress
from console.tui.widgets.status_bar import StatusBar
from console.tui.widgets.tables import RowTable
from jobs import analytics
from jobs.analytics import DayValue
from jobs.audit import AuditAction
from jobs.records import RunParams, RunReport
from jobs.tenants import TenantRef, get_tenant, search_tenants

DEFAULT_DAYS = 14
COLUMNS = (("Day", "day", 14), ("Orders", "orders", 7), ("Revenue", "revenue", 11),
           ("New cust.", "new", 9), ("Sold", "sold", 7), ("TTL left", "ttl", 9))


class AnalyticsScreen(OpsScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", id="back", tooltip="Back to the jobs"),
        Binding("slash", "find_tenant", "Tenant", key_display="/", id="analytics-tenant",
                tooltip="Search a tenant by name or id"),
        Binding("c", "recompute", "Recompute day", id="analytics-recompute",
                tooltip="Aggregate the highlighted day again (for every tenant; asks first)"),
        Binding("r", "reload", "Reload", id="analytics-reload",
                tooltip="Read the cached values again"),
        Binding("d", "day_view", "All tenants", id="analytics-day-view",
                tooltip="Every tenant's value for the highlighted day (or yesterday)"),
    ]
    PALETTE = (("analytics: Choose tenant", "Search a tenant by name or id", "find_tenant"),
               ("analytics: Recompute day", "Aggregate the highlighted day again", "recompute"),
               ("analytics: Reload", "Read the cached values again", "reload"),
               ("analytics: All tenants for the day", "Every tenant's cached value for the "
                "highlighted day, sortable, with totals", "day_view"))

    def __init__(self, tenant_id: str | None = None, until: date | None = None) -> None:
        super().__init__()
        self.initial_tenant = tenant_id
        self.until = until  # the range's last day; yesterday when not given
        self.tenant: TenantRef | None = None
        self.days: list[DayValue] = []
        self.matches: list[TenantRef] = []

    def compose(self) -> ComposeResult:
        until = self.until or self._yesterday()
        yield Header()
        yield StatusBar(id="status")
        with Horizontal(id="analytics-controls"):
            yield Input(placeholder="Tenant name or id, then enter", id="tenant-search")
            yield Input((until - timedelta(days=DEFAULT_DAYS - 1)).isoformat(), id="date-from",
                        placeholder="from YYYY-MM-DD", max_length=10)
            yield Input(until.isoformat(), id="date-to", placeholder="to YYYY-MM-DD",
                        max_length=10)
        yield OptionList(id="tenant-matches")
        yield Static("Choose a tenant: type part of its name or id above.",
                     id="analytics-title")
        with Horizontal(id="analytics-body"):
            yield RowTable(id="days", zebra_stripes=True)
            with Vertical(id="charts"):
                yield BarChart("Revenue", lambda v: f"{v:,.2f}", id="revenue-chart")
                yield BarChart("Orders", id="orders-chart")
        yield RunProgress(id="run-progress")
        yield OpsFooter()

    def on_mount(self) -> None:
        self.sub_title = "Analytics"
        table: DataTable[str | Text] = self.query_one("#days", DataTable)
        for label, key, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        self.query_one("#tenant-matches", OptionList).display = False
        if self.initial_tenant:
            self._open_tenant(self.initial_tenant)
        else:
            self.query_one("#tenant-search", Input).focus()

    def _yesterday(self) -> date:
        return analytics.latest_day(self.session.settings, self.session.clock())

    # --- choosing a tenant -------------------------------------------------------------------

    @on(Input.Changed, "#tenant-search")
    def _typed(self, event: Input.Changed) -> None:
        if event.value.strip():
            self._search(event.value)
        else:
            self.query_one("#tenant-matches", OptionList).display = False

    @work(thread=True, exclusive=True, exit_on_error=False, group="tenant-search")
    def _search(self, text: str) -> None:
        self.post_message(TenantsFound(text, search_tenants(self.session.db(), text, limit=20)))

    def on_tenants_found(self, event: TenantsFound) -> None:
        if event.query != self.query_one("#tenant-search", Input).value:
            return  # typed on since
        self.matches = list(event.tenants)
        matches = self.query_one("#tenant-matches", OptionList)
        matches.set_options(
            Option(Text.assemble((t.name, "bold"), "  ", (t.id, "dim"), "  ", status_text(t.status)),
                   id=t.id)
            for t in self.matches
        )
        if not self.matches:
            matches.set_options([Option(Text("no tenant matches", style="dim"), disabled=True)])
        matches.display = True
        if self.matches:
            matches.highlighted = 0

    @on(Input.Submitted, "#tenant-search")
    def _submitted(self) -> None:
        matches = self.query_one("#tenant-matches", OptionList)
        index = matches.highlighted
        if self.matches:
            self._choose(self.matches[index if index is not None else 0])

    def on_key(self, event: Any) -> None:
        # Up/down in the search box move through the matches without leaving it.
        search = self.query_one("#tenant-search", Input)
        matches = self.query_one("#tenant-matches", OptionList)
        if search.has_focus and matches.display and event.key in ("down", "up"):
            (matches.action_cursor_down if event.key == "down" else matches.action_cursor_up)()
            event.stop()

    @on(OptionList.OptionSelected, "#tenant-matches")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        chosen = next((t for t in self.matches if t.id == event.option.id), None)
        if chosen is not None:
            self._choose(chosen)

    def _choose(self, tenant: TenantRef) -> None:
        self.tenant = tenant
        self.query_one("#tenant-matches", OptionList).display = False
        search = self.query_one("#tenant-search", Input)
        with search.prevent(Input.Changed):
            search.value = tenant.name
        self.query_one("#days", DataTable).focus()
        self.action_reload()

    @work(thread=True, exclusive=True, exit_on_error=False, group="tenant-open")
    def _open_tenant(self, tenant_id: str) -> None:
        tenant = get_tenant(self.session.db(), tenant_id)
        if tenant is None:
            self.app.call_from_thread(self.notify, f"No tenant with id {tenant_id!r}.",
                                      severity="warning", markup=False)
            return
        self.app.call_from_thread(self._choose, tenant)

    def action_find_tenant(self) -> None:
        self.query_one("#tenant-search", Input).focus()

    def action_back(self) -> None:
        matches = self.query_one("#tenant-matches", OptionList)
        if matches.display:
            matches.display = False
            return
        self.app.pop_screen()

    # --- the range and its values ------------------------------------------------------------

    def _range(self) -> list[date] | None:
        try:
            start = date.fromisoformat(self.query_one("#date-from", Input).value.strip())
            end = date.fromisoformat(self.query_one("#date-to", Input).value.strip())
        except ValueError:
            self.notify("Dates are YYYY-MM-DD.", severity="warning", markup=False)
            return None
        if start > end:
            self.notify("The range starts after it ends.", severity="warning", markup=False)
            return None
        count = (end - start).days + 1
        if count > analytics.MAX_RANGE_DAYS:
            self.notify(f"At most {analytics.MAX_RANGE_DAYS} days at once.", severity="warning", markup=False)
            return None
        return analytics.last_days(end, count)  # newest first, as the CLI lists them

    @on(Input.Submitted, "#date-from, #date-to")
    def _dates(self) -> None:
        self.action_reload()

    def action_reload(self) -> None:
        days = self._range()
        if self.tenant is not None and days is not None:
            self._read(self.tenant, days)

    @work(thread=True, exclusive=True, exit_on_error=False, group="analytics")
    def _read(self, tenant: TenantRef, days: list[date]) -> None:
        values = analytics.read_days(self.session.cache(), tenant.id, days)
        self.post_message(AnalyticsLoaded(tenant, values))

    def on_analytics_loaded(self, event: AnalyticsLoaded) -> None:
        if self.tenant is None or event.tenant.id != self.tenant.id:
            return
        self.days = list(event.days)
        table = self.query_one("#days", DataTable)
        row = table.cursor_row
        table.clear()
        for d in self.days:
            table.add_row(*_day_row(d), key=d.day.isoformat())
        if self.days:
            table.move_cursor(row=min(max(row, 0), len(self.days) - 1))
        chronological = list(reversed(self.days))
        self.query_one("#revenue-chart", BarChart).set_bars(
            Bar(d.day.strftime("%m-%d"), _num(d, "revenue")) for d in chronological)
        self.query_one("#orders-chart", BarChart).set_bars(
            Bar(d.day.strftime("%m-%d"), _num(d, "orders")) for d in chronological)
        missing = sum(1 for d in self.days if d.value is None)
        title = Text()
        title.append(event.tenant.name, style="bold")
        title.append("  ")
        title.append_text(status_text(event.tenant.status))
        first, last = chronological[0].day, chronological[-1].day
        title.append(f"  {first.isoformat()} … {last.isoformat()} "
                     f"({plural(len(self.days), 'day')})  ")
        if missing:
            title.append(f"{missing} missing", style="bold yellow")
        else:
            title.append("none missing", style="green")
        title.append(f"  {event.tenant.id}", style="dim")
        self.query_one("#analytics-title", Static).update(title)

    # --- recompute ----------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        allowed = super().check_action(action, parameters)
        if allowed and action == "recompute":
            return None if self.tenant is None or not self.days else True
        return allowed

    @property
    def highlighted_day(self) -> date | None:
        table = self.query_one("#days", DataTable)
        row = table.cursor_row
        return self.days[row].day if 0 <= row < len(self.days) else None

    def action_recompute(self) -> None:
        day = self.highlighted_day
        if day is None or self.tenant is None:
            self.notify("Choose a tenant and a day first.", severity="warning", markup=False)
            return
        self.ops.request_trigger(
            analytics.JOB_ID, RunParams(date=day),
            question=f"Recompute analytics for {day.isoformat()}?",
            detail=(f"The job aggregates {day.isoformat()} for every tenant, not only "
                    f"{self.tenant.name} (it works a day at a time), and overwrites their "
                    "cached values with a fresh time to live."),
            yes="Recompute", open_result=False, audit_as=AuditAction.RECOMPUTE,
        )

    def action_day_view(self) -> None:
        self.ops.open_analytics_day(self.highlighted_day if self.days else None)

    def on_job_finished(self, purpose: RunPurpose, report: RunReport) -> None:
        if purpose.job_id == analytics.JOB_ID and not report.dry_run:
            self.action_reload()

    @on(DataTable.RowHighlighted, "#days")
    def _row_moved(self) -> None:
        self.refresh_bindings()


def _num(d: DayValue, key: str) -> float | None:
    if d.value is None:
        return None
    value = d.value.get(key)
    return float(value) if isinstance(value, int | float) else None


def _day_row(d: DayValue) -> tuple[str | Text, ...]:
    day = f"{d.day.isoformat()} {d.day:%a}"
    if d.value is None:
        return (day, Text("missing", style="bold yellow"), "", "", "", "")
    v = d.value
    return (
        day,
        number(v.get("orders")),
        amount(v.get("revenue")),
        number(v.get("newCustomers")),
        number(v.get("productsSold")),
        "no expiry" if d.ttl is None else span(timedelta(seconds=d.ttl)),
    )

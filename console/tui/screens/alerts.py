"""Recent alerts (job_failing, job_recovered, job_overdue, alert_test) and, for the
highlighted one, its deliveries: target, status, attempts, last error, next attempt.

Targets show as labels only (a webhook's scheme and host, or an email address): a webhook
URL's path is its credential. The runners deliver; this screen only reads, except `t`,
which sends a test alert to every target as `storeflow-ops alerts test` does (not in
read-only mode)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import ClassVar

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Header, Label, Static

from console.formatting import ago, clip, countdown, stamp, status_text, terminal_safe
from console.tui.messages import AlertsLoaded, TestAlertSent
from console.tui.screens.base import OpsScreen
from console.tui.screens.confirm import ConfirmScreen
from console.tui.widgets.footer import OpsFooter
from console.tui.widgets.status_bar import StatusBar
from console.tui.widgets.tables import FitTable
from jobs import alerts
from jobs.alerts import AlertRecord, Delivery

LIMIT = 200
COLUMNS = (("When (UTC)", "when", 11), ("Event", "event", 13), ("Job", "job", 19),
           ("Run", "run", 6), ("Delivered", "delivered", 17), ("What", "what", 20))
EVENT_STYLES = {"job_failing": "bold red", "job_overdue": "bold yellow",
                "job_recovered": "green", "alert_test": "cyan"}


class AlertsScreen(OpsScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back", id="back", tooltip="Back to the jobs"),
        Binding("enter", "open_run", "Open run", id="alerts-open", show=False,
                tooltip="The run the highlighted alert is about"),
        Binding("t", "send_test", "Send test", id="alerts-test",
                tooltip="Send a test alert to every target now (asks first)"),
        Binding("r", "reload", "Reload", id="alerts-reload", tooltip="Read the alerts again"),
    ]
    PALETTE = (("alerts: Send test", "Send a test alert to every target now", "send_test"),
               ("alerts: Reload", "Read the alerts again", "reload"))

    def __init__(self) -> None:
        super().__init__()
        self.records: list[AlertRecord] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield StatusBar(id="status")
        yield Label(self._targets_line(), id="alert-targets", classes="screen-title")
        yield FitTable(stretch="what", id="alerts", zebra_stripes=True)
        with VerticalScroll(id="alert-view"):
            yield Static("", id="alert-detail")
        yield OpsFooter()

    def on_mount(self) -> None:
        self.sub_title = "Alerts"
        table: DataTable[Text] = self.query_one("#alerts", DataTable)
        for label, key, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        table.focus()
        self.reload()
        self.set_interval(self.ops.refresh_seconds or 5.0, self.reload, name="alerts-refresh")

    def _targets_line(self) -> Text:
        found = alerts.targets(self.session.settings.alerts)
        if not found:
            return Text("No alert targets: set [alerts] webhooks or emails in schedules.toml "
                        "(events are still recorded here).", style="bold yellow")
        return Text.assemble(("Targets ", "dim"), ", ".join(numbered(t.label for t in found)),
                             ("  delivered by the runners", "dim"))

    # --- loading -------------------------------------------------------------------------

    def reload(self) -> None:
        self._load()

    def action_reload(self) -> None:
        self.reload()

    @work(thread=True, exclusive=True, exit_on_error=False, group="alerts")
    def _load(self) -> None:
        self.post_message(AlertsLoaded(alerts.list_alerts(self.session.db(), limit=LIMIT)))

    def on_alerts_loaded(self, event: AlertsLoaded) -> None:
        table = self.query_one("#alerts", DataTable)
        selected = self.selected
        same_rows = [r.id for r in event.records] == [r.id for r in self.records]
        self.records = list(event.records)
        if same_rows:
            for r in self.records:  # only deliveries change on a known alert
                table.update_cell(str(r.id), "delivered", delivered_cell(r.deliveries))
        else:
            table.clear()
            for r in self.records:
                table.add_row(*alert_row(r), key=str(r.id))
            if selected is not None:
                index = next((i for i, r in enumerate(self.records) if r.id == selected.id), 0)
                table.move_cursor(row=index, animate=False)
        self._show()
        self.refresh_bindings()

    @property
    def selected(self) -> AlertRecord | None:
        row = self.query_one("#alerts", DataTable).cursor_row
        return self.records[row] if 0 <= row < len(self.records) else None

    @on(DataTable.RowHighlighted, "#alerts")
    def _moved(self) -> None:
        self._show()
        self.refresh_bindings()

    def _show(self) -> None:
        detail = self.query_one("#alert-detail", Static)
        r = self.selected
        if r is None:
            detail.update(Text("No alerts yet: they are raised when a job starts failing, "
                               "recovers or is overdue.", style="dim"))
            return
        detail.update(alert_detail(r, self.session.clock()))

    # --- actions -----------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        allowed = super().check_action(action, parameters)
        if allowed and action == "open_run":
            r = self.selected
            return r is not None and r.run_id is not None
        return allowed

    @on(DataTable.RowSelected, "#alerts")
    def _selected(self) -> None:
        self.action_open_run()

    def action_open_run(self) -> None:
        r = self.selected
        if r is None:
            return
        if r.run_id is None:
            self.notify("This alert is about no run.", markup=False)
            return
        self.ops.open_run(r.run_id)

    def action_send_test(self) -> None:
        if self.session.read_only:
            return
        found = alerts.targets(self.session.settings.alerts)
        if not found:
            self.notify("No alert targets: set [alerts] webhooks or emails in schedules.toml.",
                        title="Alerts", severity="warning", markup=False)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._send_test()

        self.app.push_screen(ConfirmScreen(
            f"Send a test alert to {len(found)} target{'s' if len(found) != 1 else ''}?",
            "An alert_test event, one attempt per target now: "
            + ", ".join(t.label for t in found), yes="Send"), answered)

    @work(thread=True, exit_on_error=False, group="alerts-test")
    def _send_test(self) -> None:
        session = self.session
        result = alerts.send_test(session.db(), session.settings, by=session.started_by,
                                  worker_id=f"console:{os.getpid()}:{session.started_by}"[:64])
        self.post_message(TestAlertSent(tuple(result.outcomes)))

    def on_test_alert_sent(self, event: TestAlertSent) -> None:
        failed = [o for o in event.outcomes if o[1] != "sent"]
        lines = [f"{label}: {'ok' if status == 'sent' else 'FAILED'}"
                 + (f" ({error})" if error else "") for label, status, error in event.outcomes]
        self.notify("\n".join(lines) or "no targets", title="Test alert",
                    severity="error" if failed else "information", timeout=10, markup=False)
        self.reload()


def numbered(labels: Iterable[str]) -> list[str]:
    """Labels with `#1`, `#2` after those shown more than once: two webhooks on one host
    have the same label (their paths, which tell them apart, are secret)."""
    labels = list(labels)
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(f"{label} #{seen[label]}" if labels.count(label) > 1 else label)
    return out


def delivered_cell(deliveries: Sequence[Delivery]) -> Text:
    """`2/2 sent`; what is not sent yet after it: `1/3 sent · 1 dead`, `0/1 sent · 1 wait`."""
    if not deliveries:
        return Text("no targets", style="dim")
    sent = sum(d.status == "sent" for d in deliveries)
    dead = sum(d.status == "dead" for d in deliveries)
    waiting = len(deliveries) - sent - dead
    text = Text(f"{sent}/{len(deliveries)} sent", style="green" if not dead + waiting else "")
    if dead:
        text.append(" · ")
        text.append(f"{dead} dead", style="bold red")
    if waiting:
        text.append(" · ")
        text.append(f"{waiting} wait", style="cyan")
    return text


def alert_row(r: AlertRecord) -> tuple[str | Text, ...]:
    return (f"{r.at:%m-%d %H:%M}", Text(r.event, style=EVENT_STYLES.get(r.event, "")), r.job_id or "—",
            "—" if r.run_id is None else f"#{r.run_id}", delivered_cell(r.deliveries),
            clip(terminal_safe(r.text), 300))


def alert_detail(r: AlertRecord, now: datetime) -> Group:
    head = Text()
    head.append(f"{r.event}", style=EVENT_STYLES.get(r.event, "bold"))
    head.append(f"  raised {stamp(r.at)} UTC ({ago(r.at, now)})", style="dim")
    if r.run_id is not None:
        head.append(f"  run #{r.run_id} (enter opens it)", style="dim")
    head.append("\n")
    head.append(terminal_safe(r.text))
    head.append("\n")
    table = Table(box=None, expand=True, padding=(0, 1), show_edge=False, header_style="bold")
    table.add_column("Target", no_wrap=True, max_width=40)
    table.add_column("Kind", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    table.add_column("Tries", justify="right", no_wrap=True)
    table.add_column("Next attempt", no_wrap=True)
    table.add_column("Last error", ratio=1)
    for d, label in zip(r.deliveries, numbered(d.target for d in r.deliveries), strict=True):
        following = ("—" if d.status != "pending" or d.next_attempt_at is None
                     else countdown(d.next_attempt_at, now))
        table.add_row(terminal_safe(label), d.kind, status_text(d.status), str(d.attempts),
                      following, Text(terminal_safe(d.last_error or "—"),
                                      style="red" if d.last_error else "dim"))
    if not r.deliveries:
        table.add_row(Text("no targets were configured when it was raised", style="dim"),
                      "", "", "", "", "")
    return Group(head, table)

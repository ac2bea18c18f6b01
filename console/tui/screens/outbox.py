"""The email outbox: pending, sent, failed and dead emails with counts, one email read as
it was rendered (headers and text part), and retrying a failed or dead one."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Footer, Header, Label, Select, Static

from console.formatting import ago, clip, stamp, status_text
from console.tui.messages import EmailsRetried, OutboxLoaded
from console.tui.screens.base import OpsScreen
from console.tui.widgets.status_bar import StatusBar
from console.tui.widgets.tables import FitTable
from jobs import outbox
from jobs.outbox import OutboxEntry

STATUSES = ("pending", "sent", "failed", "dead")
LIMIT = 200
COLUMNS = (("Id", "id", 6), ("Status", "status", 7), ("To", "to", 26), ("Subject", "subject", 32),
           ("Tries", "tries", 5), ("Created", "created", 11))


class OutboxScreen(OpsScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", id="back", tooltip="Back to the jobs"),
        Binding("f", "filter", "Filter", id="outbox-filter",
                tooltip="Cycle the status shown: all, pending, sent, failed, dead"),
        Binding("r", "retry", "Retry", id="outbox-retry",
                tooltip="Send the highlighted failed or dead email again (attempts reset)"),
        Binding("v", "read", "Read", id="outbox-read",
                tooltip="Move into the email to scroll it (escape: back to the list)"),
    ]
    PALETTE = (("email: Retry", "Send the highlighted failed or dead email again", "retry"),
               ("email: Filter", "Cycle the status shown", "filter"),
               ("email: Read", "Scroll the highlighted email", "read"))

    def __init__(self, status: str | None = None) -> None:
        super().__init__()
        self.entries: list[OutboxEntry] = []
        self.initial_status = status  # e.g. "dead", from the jobs screen's attention strip

    def compose(self) -> ComposeResult:
        yield Header()
        yield StatusBar(id="status")
        yield Static(self._smtp_line(), id="smtp-state")
        with Horizontal(id="outbox-bar"):
            yield Select([(s, s) for s in STATUSES], prompt="All statuses", id="status-filter",
                         allow_blank=True, value=self.initial_status or Select.NULL)
            yield Label("", id="outbox-counts")
        yield FitTable(stretch="subject", id="emails", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="email-view"):
            yield Static("", id="email-body")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "Outbox"
        table: DataTable[str | Text] = self.query_one("#emails", DataTable)
        for label, key, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        table.focus()
        self.reload()
        self.set_interval(self.ops.refresh_seconds or 5.0, self.reload, name="outbox-refresh")

    def _smtp_line(self) -> Text:
        label = self.session.smtp_label
        if label is None:
            return Text("SMTP not configured (SMTP_URL unset): emails wait here, readable below.",
                        style="bold yellow")
        every = self.session.settings.outbox.send_interval
        return Text.assemble(("SMTP ", "dim"), label,
                             (f"  a runner sends pending emails every {every}s "
                              "(or: storeflow-ops outbox send)", "dim"))

    @property
    def status_filter(self) -> str | None:
        value = self.query_one("#status-filter", Select).value
        return value if isinstance(value, str) else None

    def reload(self) -> None:
        self._load(self.status_filter)

    @work(thread=True, exclusive=True, exit_on_error=False, group="outbox")
    def _load(self, status: str | None) -> None:
        engine = self.session.db()
        entries = outbox.list_entries(engine, status=status, limit=LIMIT)
        self.post_message(OutboxLoaded(entries, outbox.counts_by_status(engine)))

    def on_outbox_loaded(self, event: OutboxLoaded) -> None:
        table = self.query_one("#emails", DataTable)
        now = self.session.clock()
        selected = self.selected
        same_rows = [e.id for e in event.entries] == [e.id for e in self.entries]
        self.entries = list(event.entries)
        if same_rows:
            for e in self.entries:
                table.update_cell(str(e.id), "status", status_text(e.status))
                table.update_cell(str(e.id), "tries", str(e.attempts))
        else:
            table.clear()
            for e in self.entries:
                table.add_row(*_row(e), key=str(e.id))
            if selected is not None:
                index = next((i for i, e in enumerate(self.entries) if e.id == selected.id), 0)
                table.move_cursor(row=index)
        counts = Text()
        for s in STATUSES:
            n = event.counts.get(s, 0)
            counts.append(f"{s} ", style="dim")
            counts.append(f"{n:,}  ", style=f"bold {'red' if s == 'dead' and n else ''}".strip())
        shown = self.status_filter or "all"
        counts.append(f"showing {len(self.entries):,} ({shown}, newest first)", style="dim")
        self.query_one("#outbox-counts", Label).update(counts)
        self._read(now)

    @property
    def selected(self) -> OutboxEntry | None:
        row = self.query_one("#emails", DataTable).cursor_row
        return self.entries[row] if 0 <= row < len(self.entries) else None

    @on(DataTable.RowHighlighted, "#emails")
    def _moved(self) -> None:
        self._read(self.session.clock())
        self.refresh_bindings()

    def _read(self, now: datetime) -> None:
        body = self.query_one("#email-body", Static)
        e = self.selected
        if e is None:
            body.update(Text("No emails" + (f" with status {self.status_filter}."
                                           if self.status_filter else " yet."), style="dim"))
            return
        text = Text()
        for name, value in (("Subject", e.subject), ("From", self.session.settings.mail_from),
                            ("To", e.recipient), ("Kind", e.kind),
                            ("Tenant", e.tenant_id or "—"), ("Key", e.idempotency_key)):
            text.append(f"{name}: ", style="bold")
            text.append(f"{value}\n")
        text.append("Status: ", style="bold")
        text.append_text(status_text(e.status))
        text.append(f"  attempts {e.attempts}  created {stamp(e.created_at)} UTC")
        if e.sent_at is not None:
            text.append(f"  sent {stamp(e.sent_at)} UTC")
        elif e.status in ("pending", "failed") and e.next_attempt_at is not None:
            if e.next_attempt_at <= now:
                text.append("  due now: the next send picks it up")
            else:
                text.append(f"  next attempt {ago(e.next_attempt_at, now)}")
        if e.last_error:
            text.append("\nLast error: ", style="bold")
            text.append(e.last_error, style="red")
        text.append("\n" + "─" * 40 + "\n", style="dim")
        text.append(e.body_text)
        body.update(text)

    @on(Select.Changed, "#status-filter")
    def _filtered(self) -> None:
        self.reload()

    def action_filter(self) -> None:
        select = self.query_one("#status-filter", Select)
        order: list[str | None] = [None, *STATUSES]
        following = order[(order.index(self.status_filter) + 1) % len(order)]
        select.value = Select.NULL if following is None else following

    def action_read(self) -> None:
        self.query_one("#email-view", VerticalScroll).focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        allowed = super().check_action(action, parameters)
        if allowed and action == "retry":
            e = self.selected
            return True if e is not None and e.status in ("failed", "dead") else None
        return allowed

    def action_retry(self) -> None:
        e = self.selected
        if self.session.read_only or e is None:
            return
        if e.status not in ("failed", "dead"):
            self.notify(f"Email {e.id} is {e.status}; only failed or dead ones are retried.",
                        severity="warning", markup=False)
            return
        self._retry([e.id])

    @work(thread=True, exit_on_error=False, group="outbox-retry")
    def _retry(self, ids: list[int]) -> None:
        from jobs.sender import retry

        done = retry(self.session.db(), ids, self.session.clock(), actor=self.session.started_by)
        self.post_message(EmailsRetried(ids, len(done)))

    def on_emails_retried(self, event: EmailsRetried) -> None:
        which = ", ".join(str(i) for i in event.ids)
        self.notify(f"Email {which} is pending again; the sender will try it next.",
                    title="Outbox", markup=False)
        self.reload()

    def action_back(self) -> None:
        view = self.query_one("#email-view", VerticalScroll)
        if view.has_focus:
            self.query_one("#emails", DataTable).focus()
        else:
            self.app.pop_screen()


def _row(e: OutboxEntry) -> tuple[str | Text, ...]:
    return (str(e.id), status_text(e.status), clip(e.recipient, 26), clip(e.subject, 200),
            str(e.attempts), f"{e.created_at:%m-%d %H:%M}")

"""The email outbox: pending, sent, failed and dead emails with counts, searched by tenant
(name or id), recipient or subject and filtered by status, paged by key however many
there are; one email read as it was rendered (headers and text part), and retrying a
failed or dead one."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Header, Input, Label, Select, Static

from console.formatting import ago, clip, stamp, status_text
from console.tui.messages import EmailsRetried, OutboxPageLoaded
from console.tui.screens.base import OpsScreen
from console.tui.widgets.footer import OpsFooter
from console.tui.widgets.status_bar import StatusBar
from console.tui.widgets.tables import FitTable
from jobs import outbox
from jobs.outbox import OutboxEntry

STATUSES = ("pending", "sent", "failed", "dead")
PAGE = 200  # emails read at a time; the next page comes as the cursor nears the end
# The subject takes what is left: recipient, tenant and attempts are in the email below.
COLUMNS = (("Id", "id", 6), ("Status", "status", 7), ("Queued", "queued", 11),
           ("Sent", "sent", 11), ("Subject", "subject", 32))


class OutboxScreen(OpsScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", id="back", tooltip="Back to the jobs"),
        Binding("f", "filter", "Filter", id="outbox-filter",
                tooltip="Cycle the status shown: all, pending, sent, failed, dead"),
        Binding("r", "retry", "Retry", id="outbox-retry",
                tooltip="Send the highlighted failed or dead email again (attempts reset)"),
        Binding("v", "read", "Read", id="outbox-read",
                tooltip="Move into the email to scroll it (escape: back to the list)"),
        Binding("slash", "search", "Search", key_display="/", id="outbox-search",
                tooltip="Search by tenant name or id, recipient or subject (escape: clear)"),
        Binding("m", "more", "More", id="outbox-more",
                tooltip=f"Load the next {PAGE} older emails (scrolling to the end does it too)"),
    ]
    PALETTE = (("email: Retry", "Send the highlighted failed or dead email again", "retry"),
               ("email: Filter", "Cycle the status shown", "filter"),
               ("email: Search", "By tenant name or id, recipient or subject", "search"),
               ("email: Read", "Scroll the highlighted email", "read"))

    def __init__(self, status: str | None = None, search: str = "") -> None:
        super().__init__()
        self.entries: list[OutboxEntry] = []
        self.initial_status = status  # e.g. "dead"
        self.initial_search = search
        self.generation = 0
        self.next_before: int | None = None  # the key of the next page; None: no more
        self._fetching = False
        self.counts: dict[str, int] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield StatusBar(id="status")
        yield Static(self._smtp_line(), id="smtp-state")
        with Horizontal(id="outbox-bar"):
            yield Input(self.initial_search,
                        placeholder="Search tenant, recipient, subject  (/)",
                        id="email-search")
            yield Select([(s, s) for s in STATUSES], prompt="All statuses", id="status-filter",
                         allow_blank=True, value=self.initial_status or Select.NULL)
        yield Label("", id="outbox-counts")
        yield FitTable(stretch="subject", id="emails", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="email-view"):
            yield Static("", id="email-body")
        yield OpsFooter()

    def on_mount(self) -> None:
        self.sub_title = "Outbox"
        table: DataTable[str | Text] = self.query_one("#emails", DataTable)
        for label, key, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        table.focus()
        self.reload(fresh=True)
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

    @property
    def search(self) -> str:
        return self.query_one("#email-search", Input).value

    def reload(self, *, fresh: bool = False) -> None:
        """Read the emails shown again from the newest (as many as are loaded, so a
        refresh keeps the place); `fresh` when the search or filter changed."""
        if fresh:
            self.generation += 1
        limit = PAGE if fresh else max(PAGE, len(self.entries))
        self._fetching = True
        self._load(self.generation, self.search, self.status_filter, None, limit)

    def load_more(self) -> None:
        if self.next_before is not None and not self._fetching:
            self._fetching = True
            self._load(self.generation, self.search, self.status_filter, self.next_before, PAGE)

    @work(thread=True, exclusive=True, exit_on_error=False, group="outbox")
    def _load(self, generation: int, search: str, status: str | None, before: int | None,
              limit: int) -> None:
        engine = self.session.db()
        try:
            page = outbox.search(engine, text=search, status=status, before=before, limit=limit)
            counts = outbox.counts_by_status(engine) if before is None else {}
        finally:
            self._fetching = False
        self.post_message(OutboxPageLoaded(page, before, generation, counts))

    def on_outbox_page_loaded(self, event: OutboxPageLoaded) -> None:
        if event.generation != self.generation:
            return  # an answer to a search or filter that has changed since
        table = self.query_one("#emails", DataTable)
        now = self.session.clock()
        entries = list(event.page.entries)
        if event.after is not None:  # the next page, below the last one shown
            if not self.entries or self.entries[-1].id != event.after:
                return
            self.entries += entries
            for e in entries:
                table.add_row(*_row(e), key=str(e.id))
        else:
            selected = self.selected
            same_rows = [e.id for e in entries] == [e.id for e in self.entries]
            self.entries = entries
            if same_rows:
                for e in self.entries:
                    table.update_cell(str(e.id), "status", status_text(e.status))
                    table.update_cell(str(e.id), "sent", _when(e.sent_at, e.created_at))
            else:
                table.clear()
                for e in self.entries:
                    table.add_row(*_row(e), key=str(e.id))
                if selected is not None:
                    index = next((i for i, e in enumerate(self.entries) if e.id == selected.id),
                                 0)
                    table.move_cursor(row=index)
            self.counts = event.counts
            if entries:  # as wide as the newest id, which is the longest
                widths = self.query_one("#emails", FitTable)
                widths.set_width("id", max(2, len(str(entries[0].id))))
        self.next_before = event.page.next_before
        self._show_counts()
        self._read(now)
        self.refresh_bindings()  # the selected email's status may have changed (Retry)

    def _show_counts(self) -> None:
        counts = Text()
        for s in STATUSES:
            n = self.counts.get(s, 0)
            counts.append(f"{s} ", style="dim")
            counts.append(f"{n:,}  ", style=f"bold {'red' if s == 'dead' and n else ''}".strip())
        shown = " ".join(filter(None, (self.status_filter, "matching " + repr(self.search)
                                       if self.search else None))) or "all"
        more = "+" if self.next_before is not None else ""
        counts.append(f"showing {len(self.entries):,}{more} ({shown}, newest first)",
                      style="dim")
        self.query_one("#outbox-counts", Label).update(counts)

    @property
    def selected(self) -> OutboxEntry | None:
        row = self.query_one("#emails", DataTable).cursor_row
        return self.entries[row] if 0 <= row < len(self.entries) else None

    @on(DataTable.RowHighlighted, "#emails")
    def _moved(self, event: DataTable.RowHighlighted) -> None:
        self._read(self.session.clock())
        self.refresh_bindings()
        if event.cursor_row >= len(self.entries) - 50:
            self.load_more()

    def _read(self, now: datetime) -> None:
        body = self.query_one("#email-body", Static)
        e = self.selected
        if e is None:
            what = " ".join(filter(None, (self.status_filter, "emails")))
            if self.search:
                body.update(Text(f"No {what} match {self.search!r}.", style="dim"))
            else:
                body.update(Text(f"No {what}" + ("." if self.status_filter else " yet."),
                                 style="dim"))
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
    @on(Input.Changed, "#email-search")
    def _filtered(self) -> None:
        self.reload(fresh=True)

    @on(Input.Submitted, "#email-search")
    def _searched(self) -> None:
        self.query_one("#emails", DataTable).focus()

    def action_search(self) -> None:
        self.query_one("#email-search", Input).focus()

    def action_more(self) -> None:
        self.load_more()

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
        search = self.query_one("#email-search", Input)
        if view.has_focus:
            self.query_one("#emails", DataTable).focus()
        elif search.has_focus and search.value:
            search.value = ""
        elif search.has_focus:
            self.query_one("#emails", DataTable).focus()
        else:
            self.app.pop_screen()


def _when(moment: datetime | None, queued: datetime | None = None) -> str:
    """`11-28 09:00`; only the time when it is the day it was queued."""
    if moment is None:
        return "—"
    if queued is not None and moment.date() == queued.date():
        return f"{moment:%H:%M}"
    return f"{moment:%m-%d %H:%M}"


def _row(e: OutboxEntry) -> tuple[str | Text, ...]:
    return (str(e.id), status_text(e.status), _when(e.created_at),
            _when(e.sent_at, e.created_at), clip(e.subject, 300))

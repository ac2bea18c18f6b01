"""Per-tenant items of a run or a preview: a search box, an errors-only filter, a paged
table, and the highlighted item in full (its error text unclipped)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.reactive import var
from textual.widgets import DataTable, Input, Label, Static
from textual.widgets.data_table import ColumnKey

from console.formatting import clip, item_note, status_text
from console.tui.messages import ItemsLoaded
from console.tui.session import Session
from console.tui.widgets.tables import FitTable
from jobs import runs
from jobs.records import ItemResult, ItemStatus

PAGE = 500  # rows fetched at a time; more follow as the cursor nears the end


class ItemSource(Protocol):
    def fetch(self, errors_only: bool, search: str, limit: int,
              offset: int) -> Sequence[ItemResult]: ...


class StoredItems:
    """A finished or running run's items, from ops_run_items."""

    def __init__(self, session: Session, run_id: int) -> None:
        self.session = session
        self.run_id = run_id

    def fetch(self, errors_only: bool, search: str, limit: int,
              offset: int) -> Sequence[ItemResult]:
        return runs.run_items(self.session.db(), self.run_id, errors_only=errors_only,
                              search=search, limit=limit, offset=offset)


class ReportItems:
    """A preview's items: they were never stored, so they are filtered here."""

    def __init__(self, items: Sequence[ItemResult]) -> None:
        self.items = tuple(items)

    def fetch(self, errors_only: bool, search: str, limit: int,
              offset: int) -> Sequence[ItemResult]:
        needle = search.strip().lower()
        chosen = [
            i for i in self.items
            if (not errors_only or i.status is ItemStatus.ERROR)
            and (not needle or needle in (i.tenant_id or "").lower()
                 or needle in (i.tenant_name or "").lower())
        ]
        return chosen[offset : offset + limit]


# The Action column grows to the longest action loaded since the view opened; it does
# not shrink on a narrower filter, so the table does not jump while one types a search.
ACTION_MIN, ACTION_MAX = 12, 24
COLUMNS = (("#", "seq", 5), ("Tenant", "tenant", 20), ("Id", "id", 10),
           ("Action", "action", ACTION_MIN), ("Status", "status", 7),
           ("Error / detail", "info", 30))


class ItemsView(Vertical):
    errors_only: var[bool] = var(False)

    def __init__(self, source: ItemSource, *, total: int | None = None,
                 errors: int | None = None, id: str | None = None) -> None:
        super().__init__(id=id)
        self.source = source
        self.total = total  # all items, when known (shown as "x of total")
        self.error_total = errors
        self.items: list[ItemResult] = []
        self.complete = False
        self._fetching = False
        self.generation = 0

    def compose(self) -> ComposeResult:
        with Horizontal(id="items-bar"):
            yield Input(placeholder="Search tenant id or name  (/)", id="item-search")
            yield Label("", id="items-count")
        table = FitTable(stretch="info", id="items", cursor_type="row", zebra_stripes=True)
        for label, key, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        yield table
        with VerticalScroll(id="item-panel"):
            yield Static("", id="item-detail")

    def on_mount(self) -> None:
        self.query_one("#items", DataTable).focus()
        self.reload()

    @property
    def search(self) -> str:
        return self.query_one("#item-search", Input).value

    def watch_errors_only(self) -> None:
        if self.is_mounted:
            self.reload()

    def reload(self) -> None:
        self.generation += 1
        self.items = []
        self.complete = False
        self.query_one("#items", DataTable).clear()
        self.query_one("#item-detail", Static).update("")
        self._fetching = True
        self._load(self.generation, 0, self.errors_only, self.search)

    def load_more(self) -> None:
        if not self.complete and not self._fetching:
            self._fetching = True
            self._load(self.generation, len(self.items), self.errors_only, self.search)

    @work(thread=True, exclusive=True, exit_on_error=False, group="items")
    def _load(self, generation: int, offset: int, errors_only: bool, search: str) -> None:
        try:
            page = self.source.fetch(errors_only, search, PAGE, offset)
            self.post_message(ItemsLoaded(page, offset, len(page) < PAGE, generation))
        finally:
            self._fetching = False

    @on(ItemsLoaded)
    def _show_items(self, event: ItemsLoaded) -> None:
        event.stop()
        if event.generation != self.generation or event.offset != len(self.items):
            return  # an answer to a filter that has changed since
        table = self.query_one("#items", FitTable)
        start = len(self.items)
        self.items.extend(event.items)
        self.complete = event.complete
        # cleanup's actions (orphaned_order_products) read as "orphaned_or…" at the width
        # that suits expiry's; the free-text column gives up what this one takes.
        width = min(max((len(item.action) for item in event.items), default=0), ACTION_MAX)
        if width > table.columns[ColumnKey("action")].width:
            table.set_width("action", width)
        table.add_rows(
            (_row(start + i, item) for i, item in enumerate(event.items)),
        )
        self._count()
        if start == 0 and self.items:
            self._detail(self.items[0])
        elif not self.items:
            what = "failed items" if self.errors_only else "items"
            match = f" matching {self.search!r}" if self.search else ""
            self.query_one("#item-detail", Static).update(
                Text(f"No {what}{match}.", style="dim"))

    def set_totals(self, total: int | None, errors: int | None) -> None:
        self.total, self.error_total = total, errors
        self._count()

    def _count(self) -> None:
        shown = len(self.items)
        known = self.error_total if self.errors_only else self.total
        if self.search or known is None:
            text = f"{shown:,}{'' if self.complete else '+'} shown"
        else:
            text = f"{shown:,} of {known:,}"
        label = "errors only" if self.errors_only else "all items"
        self.query_one("#items-count", Label).update(f"{label} · {text}")

    @on(Input.Changed, "#item-search")
    def _search_changed(self) -> None:
        self.reload()

    @on(Input.Submitted, "#item-search")
    def _search_done(self) -> None:
        self.query_one("#items", DataTable).focus()

    @on(DataTable.RowHighlighted, "#items")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        row = event.cursor_row
        if 0 <= row < len(self.items):
            self._detail(self.items[row])
        if row >= len(self.items) - 50:
            self.load_more()

    def _detail(self, item: ItemResult) -> None:
        text = Text()
        text.append("Tenant  ", style="dim")
        text.append(f"{item.tenant_name or '—'}  ")
        text.append(item.tenant_id or "(no tenant)", style="dim")
        text.append("\nAction  ", style="dim")
        text.append(f"{item.action}  ")
        text.append_text(status_text(str(item.status)))
        if item.error:
            text.append("\nError   ", style="dim")
            text.append(item.error, style="red")
        if item.detail:
            text.append("\nDetail  ", style="dim")
            text.append("  ".join(f"{k}: {json.dumps(v, default=str)}"
                                  for k, v in item.detail.items()))
        self.query_one("#item-detail", Static).update(text)

    @property
    def selected(self) -> ItemResult | None:
        row = self.query_one("#items", DataTable).cursor_row
        return self.items[row] if 0 <= row < len(self.items) else None


def _row(seq: int, item: ItemResult) -> tuple[str | Text, ...]:
    info = (Text(clip(item.error, 200), style="red") if item.error
            else Text(clip(item_note(item, skip=("key",)), 200)))
    return (
        str(seq + 1),
        clip(item.tenant_name or "—", 20),
        clip(item.tenant_id or "—", 10),
        clip(item.action, ACTION_MAX),
        status_text(str(item.status)),
        info,
    )

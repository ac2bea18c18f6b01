"""DataTables of rows: home/end go to the first/last row (DataTable's own home/end move
between columns, which a row cursor does not have), and a FitTable whose one free-text
column takes the width left over, so it fits 100 columns and still uses 200."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text, TextType
from textual import events
from textual.binding import Binding, BindingType
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowKey


class RowTable(DataTable[Any]):
    """Every table of the console. A string cell shows as written: DataTable would read it
    as markup, and cells carry data (tenant names, subjects, cached values), where
    `[/bold]` would crash the screen and `[@click=app.quit]` would become an action."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("home", "scroll_top", "First row", show=False),
        Binding("end", "scroll_bottom", "Last row", show=False),
    ]

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cursor_type", "row")
        super().__init__(**kwargs)

    def add_row(self, *cells: Any, height: int | None = 1, key: str | None = None,
                label: TextType | None = None) -> RowKey:
        wrap = height != 1
        return super().add_row(*(_literal(c, wrap) for c in cells), height=height, key=key,
                               label=_literal(label, wrap) if label is not None else None)

    def update_cell(self, row_key: RowKey | str, column_key: ColumnKey | str, value: Any, *,
                    update_width: bool = False) -> None:
        row = self.rows.get(RowKey(row_key) if isinstance(row_key, str) else row_key)
        wrap = row is not None and row.height != 1
        super().update_cell(row_key, column_key, _literal(value, wrap),
                            update_width=update_width)


def _literal(value: Any, wrap: bool) -> Any:
    """A string as DataTable would show it, but never read as markup."""
    return Text(value, no_wrap=not wrap, end="") if isinstance(value, str) else value


class FitTable(RowTable):
    def __init__(self, *, stretch: str, min_width: int = 12, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stretch = stretch
        self.min_width = min_width

    def on_resize(self, _: events.Resize) -> None:
        self.fit()

    def set_width(self, key: str, width: int) -> None:
        """Give a fixed column another width (e.g. ids that grew a digit); the free-text
        column takes up the difference."""
        column = self.columns.get(ColumnKey(key))
        if column is not None and column.width != width:
            column.width = width
            self.fit()

    def fit(self) -> None:
        columns = self.columns
        target = next((c for c in columns.values() if c.key.value == self.stretch), None)
        if target is None:
            return
        others = sum(c.get_render_width(self) for c in columns.values() if c is not target)
        # Leave room for a vertical scrollbar whether or not it shows yet.
        room = self.size.width - int(self.styles.scrollbar_size_vertical or 0)
        width = max(self.min_width, room - others - 2 * self.cell_padding)
        if width != target.width:
            target.width = width
            # DataTable has no public way to resize a column: these are what add_column
            # sets for the same purpose.
            self._require_update_dimensions = True
            self._clear_caches()
            self.refresh()

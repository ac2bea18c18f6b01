"""DataTables of rows: home/end go to the first/last row (DataTable's own home/end move
between columns, which a row cursor does not have), and a FitTable whose one free-text
column takes the width left over, so it fits 100 columns and still uses 200."""

from __future__ import annotations

from typing import Any, ClassVar

from textual import events
from textual.binding import Binding, BindingType
from textual.widgets import DataTable


class RowTable(DataTable[Any]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("home", "scroll_top", "First row", show=False),
        Binding("end", "scroll_bottom", "Last row", show=False),
    ]

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cursor_type", "row")
        super().__init__(**kwargs)


class FitTable(RowTable):
    def __init__(self, *, stretch: str, min_width: int = 12, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stretch = stretch
        self.min_width = min_width

    def on_resize(self, _: events.Resize) -> None:
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

"""The key footer of every screen: Textual's, rebuilt only when what it shows changes."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.widgets import Footer


class OpsFooter(Footer):
    """Textual's Footer rebuilds every key (new widgets, styles, layout) each time the
    screen's bindings are refreshed: on every focus change, screen switch and action-state
    check, even when the keys and their states are exactly as before. That was a large
    share of the console's CPU while an operator moves around, so this one compares what
    it would show with what it shows, and rebuilds only on a difference."""

    _shown: Any = None

    def __init__(self) -> None:
        # Compact: without the padding around each key, the jobs screen's twelve keys
        # fit in 120 columns; padded, Quit was cut and Help fell off the edge.
        super().__init__(compact=True)

    def _what_it_shows(self) -> Any:
        if not self._bindings_ready or not self.is_attached:
            return None
        bindings = tuple(
            (binding, self.app.get_key_display(binding), enabled, tooltip)
            for _, binding, enabled, tooltip in self.screen.active_bindings.values()
        )
        return (bindings, self.compact, self.show_command_palette, self.combine_groups)

    def compose(self) -> ComposeResult:
        # Read with no await in between, so it is exactly what this compose renders.
        self._shown = self._what_it_shows()
        yield from super().compose()

    async def recompose(self) -> None:
        shows = self._what_it_shows()
        if shows is not None and shows == self._shown:
            return
        await super().recompose()

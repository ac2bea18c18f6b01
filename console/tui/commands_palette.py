"""The command palette (ctrl+p): every action of the console by name, e.g. `job: Run now`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from console.tui.app import OpsApp

Entry = tuple[str, str, Callable[[], object]]  # title, help, what it does


class OpsCommands(Provider):
    def _entries(self) -> list[Entry]:
        app = cast("OpsApp", self.app)
        return app.palette_entries(self.screen)

    async def discover(self) -> Hits:
        for title, help_text, run in self._entries():
            yield DiscoveryHit(title, run, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, run in self._entries():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), run, help=help_text)


__all__ = ["Entry", "OpsCommands"]

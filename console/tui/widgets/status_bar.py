"""The two lines under the header on every screen: where the data lives, and whether
anything will fire on schedule."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static


@dataclass(frozen=True)
class StatusInfo:
    database: str
    cache: str
    read_only: bool
    connected: bool = False
    checked: bool = False  # the runners have been looked at at least once
    db_error: str | None = None
    cache_error: str | None = None
    alive_runners: tuple[str, ...] = ()  # "host (pid 123)"


NO_RUNNER = "No runner is alive: nothing will fire on schedule (start one: storeflow-ops run)"


def status_lines(info: StatusInfo) -> tuple[Text, Text]:
    where = Text(no_wrap=True, overflow="ellipsis")
    if info.read_only:  # first, so a long URL can never push it off the line
        where.append("READ-ONLY  ", style="bold yellow")
    where.append("Database ", style="dim")
    where.append(info.database)
    where.append("  Cache ", style="dim")
    if info.cache_error:
        where.append(f"{info.cache} (unreachable)", style="bold red")
    else:
        where.append(info.cache)

    state = Text(no_wrap=True, overflow="ellipsis")
    if info.db_error:
        state.append(f"⚠ Retrying every few seconds. {info.db_error}", style="bold red")
    elif not info.connected:
        state.append("Connecting to the database…", style="dim")
    elif not info.checked:
        state.append("Looking for runners…", style="dim")
    elif info.alive_runners:
        n = len(info.alive_runners)
        state.append(f"● {n} runner{'s' if n > 1 else ''} alive", style="bold green")
        state.append(": " + ", ".join(info.alive_runners), style="dim")
    else:
        state.append("⚠ " + NO_RUNNER, style="bold red")
    if info.cache_error and not info.db_error:
        state.append(f"  ⚠ {info.cache_error}", style="red")
    return where, state


class StatusBar(Static):
    """Follows the app's `status`; every screen has one."""

    def on_mount(self) -> None:
        self.watch(self.app, "status", self._show)

    def _show(self, info: StatusInfo) -> None:
        where, state = status_lines(info)
        both = Text(no_wrap=True, overflow="ellipsis")
        both.append_text(where)
        both.append("\n")
        both.append_text(state)
        self.update(both)

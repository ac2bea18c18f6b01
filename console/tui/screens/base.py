"""What every screen of the console has: the session, read-only refusal of writing
actions, and failed workers reported instead of crashing the app."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from textual import events, on
from textual.screen import Screen
from textual.worker import Worker

from console.tui.session import Session

if TYPE_CHECKING:
    from console.tui.app import OpsApp

# Every action that writes to the database or the cache; --read-only hides and refuses them.
WRITING_ACTIONS = frozenset({"run_now", "run_for_real", "pause", "resume", "retry", "recompute",
                             "stop_run", "send_test"})


class OpsScreen(Screen[Any]):
    #: what the command palette offers on this screen beside the global entries
    PALETTE: tuple[tuple[str, str, str], ...] = ()  # (title, help, action)

    @property
    def ops(self) -> OpsApp:
        return cast("OpsApp", self.app)

    @property
    def session(self) -> Session:
        return self.ops.session

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action in WRITING_ACTIONS and self.session.read_only)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        self.ops.report_worker_state(event)

    @on(events.Key)
    def _explain_read_only(self, event: events.Key) -> None:
        """A writing key in --read-only mode: check_action hides and refuses its binding,
        which alone would leave the key doing nothing without a word."""
        if not self.session.read_only:
            return
        # The screen's own bindings map, so a key remapped by a keymap is recognised too.
        writes = [b.description for b in self._bindings.key_to_bindings.get(event.key, ())
                  if b.action in WRITING_ACTIONS]
        if writes:
            self.notify(f"Read-only console: {event.key} ({'/'.join(dict.fromkeys(writes))}) "
                        "writes, so it is off (started with --read-only).", severity="warning",
                        markup=False)

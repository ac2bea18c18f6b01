"""Pausing a job: an optional reason for the audit, and the jobs screen, to show."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

REASON_MAX = 500  # a line for people, not a document


class PauseReasonScreen(ModalScreen[str | None]):
    """Dismisses with the reason ("" for none), or None when cancelled (Esc)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="pause-cancel", tooltip="Do not pause"),
    ]

    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id

    def compose(self) -> ComposeResult:
        with Vertical(id="pause-dialog"):
            yield Label(Text(f"Pause {self.job_id}?"), id="pause-question")
            yield Static("Its slots stop firing until it is resumed (manual runs still work). "
                         "Why? Optional: the audit and the jobs screen show it.",
                         id="pause-detail")
            yield Input(placeholder="reason (optional)", max_length=REASON_MAX,
                        id="pause-reason")
            with Horizontal(id="pause-buttons"):
                yield Button("Pause (enter)", variant="warning", id="pause-yes")
                yield Button("Cancel (esc)", variant="default", id="pause-no")

    def on_mount(self) -> None:
        self.query_one("#pause-reason", Input).focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted, "#pause-reason")
    def _submitted(self) -> None:
        self._pause()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "pause-yes":
            self._pause()
        else:
            self.dismiss(None)

    def _pause(self) -> None:
        self.dismiss(self.query_one("#pause-reason", Input).value.strip())

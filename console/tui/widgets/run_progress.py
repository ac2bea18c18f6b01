"""A run in progress: what runs, a bar of items done of total, and live counts."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, ProgressBar

from console.formatting import plural
from console.tui.messages import RunPurpose
from jobs.records import Progress


class RunProgress(Horizontal):
    """Hidden until a run starts; the app feeds every RunProgress on the screen stack."""

    def compose(self) -> ComposeResult:
        yield Label("", id="run-label")
        yield ProgressBar(total=None, show_eta=False, id="run-bar")
        yield Label("", id="run-counts")

    def on_mount(self) -> None:
        self.display = False

    def begin(self, purpose: RunPurpose) -> None:
        self.query_one("#run-label", Label).update(purpose.label)
        self.query_one("#run-bar", ProgressBar).update(total=None, progress=0)
        self.query_one("#run-counts", Label).update("starting…")
        self.display = True

    def relabel(self, label: str) -> None:
        self.query_one("#run-label", Label).update(label)

    def advance(self, purpose: RunPurpose, progress: Progress) -> None:
        if not self.display:
            self.begin(purpose)
        bar = self.query_one("#run-bar", ProgressBar)
        if progress.total == 0:  # nothing to do: a full bar, not a division by zero
            bar.update(total=1, progress=1)
        else:
            bar.update(total=progress.total, progress=progress.done)
        total = "?" if progress.total is None else f"{progress.total:,}"
        errors = f", {plural(progress.errors, 'error')}" if progress.errors else ""
        self.query_one("#run-counts", Label).update(f"{progress.done:,} of {total} done{errors}")

    def end(self) -> None:
        self.display = False

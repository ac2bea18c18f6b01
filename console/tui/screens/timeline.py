"""Timeline: every job's slots over the next 24 h or 7 days, in time order, in UTC and in
the job's own timezone, with each daylight-saving change in a job's zone as a line of its
own; a paused or disabled job's slots are listed as not firing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Header, Label, Static

from console.formatting import plural, state_text
from console.tui.messages import TimelineLoaded
from console.tui.screens.base import OpsScreen
from console.tui.widgets.footer import OpsFooter
from console.tui.widgets.status_bar import StatusBar
from console.tui.widgets.tables import FitTable
from jobs.problems import window_label
from jobs.timeline import MAX_SLOTS, WINDOWS, ClockChange, Slot, Timeline, load_timeline

COLUMNS = (("When (UTC)", "utc", 16), ("In the job's zone", "local", 22), ("Job", "job", 19),
           ("State", "state", 8), ("Note", "note", 20))


class TimelineScreen(OpsScreen):
    CSS_PATH = str(Path(__file__).with_name("timeline.tcss"))
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", id="back", tooltip="Back to the jobs"),
        Binding("w", "window", "24 h/7 days", id="timeline-window",
                tooltip="Show the next 24 h or the next 7 days"),
        Binding("r", "reload", "Reload", id="timeline-reload",
                tooltip="Read the schedules again and start from now"),
    ]
    PALETTE = (("timeline: 24 h / 7 days", "Show the next 24 h or the next 7 days", "window"),
               ("timeline: Reload", "Read the schedules again", "reload"))

    def __init__(self) -> None:
        super().__init__()
        self.window_index = 0
        self.timeline: Timeline | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield StatusBar(id="status")
        yield Label("", id="timeline-title", classes="screen-title")
        yield Static("", id="timeline-jobs")
        yield FitTable(stretch="note", id="timeline", zebra_stripes=True)
        yield OpsFooter()

    def on_mount(self) -> None:
        self.sub_title = "Timeline"
        table: DataTable[str | Text] = self.query_one("#timeline", DataTable)
        for label, key, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        table.focus()
        self.reload()

    def reload(self) -> None:
        self._load(WINDOWS[self.window_index])

    @work(thread=True, exclusive=True, exit_on_error=False, group="timeline")
    def _load(self, window: timedelta) -> None:
        timeline = load_timeline(self.session.db(), self.session.settings, self.session.clock(),
                                 window)
        self.post_message(TimelineLoaded(timeline))

    def on_timeline_loaded(self, event: TimelineLoaded) -> None:
        tl = self.timeline = event.timeline
        window = window_label(tl.end - tl.start)
        whose = ("the live runners' schedules" if tl.source == "runner"
                 else "local configuration (no runner alive)")
        self.query_one("#timeline-title", Label).update(Text.assemble(
            ("Next " + window, "bold"), f" from {tl.start:%a %d %b %H:%M} UTC · {whose}",
            ("  w: 24 h/7 days", "dim")))
        jobs = Text()
        for j in tl.jobs:
            if jobs:
                jobs.append("\n")
            jobs.append(f"{j.job_id:<20}", style="bold")
            jobs.append(f"{j.schedule.expression:<14} {j.schedule.timezone:<16} ")
            jobs.append_text(state_text(j.state))
            count = plural(len(j.slots), "slot") + ("+" if j.more else "")
            jobs.append(" " * (10 - len(j.state)) + count, style="dim")
            if j.state == "paused":
                jobs.append(" — paused: none fires", style="yellow")
            elif j.state == "disabled":
                jobs.append(" — enabled = false: none fires", style="dim")
            if j.more:
                jobs.append(f" — the first {MAX_SLOTS} shown", style="dim")
        self.query_one("#timeline-jobs", Static).update(jobs)
        table = self.query_one("#timeline", DataTable)
        table.clear()
        rows: list[tuple[object, Slot | ClockChange]] = [(s.at, s) for s in tl.slots()]
        rows += [(c.at, c) for c in tl.changes]
        # A change sorts before a slot at the same instant: the slot is already on the new clock.
        rows.sort(key=lambda r: (r[0], isinstance(r[1], Slot)))
        states = {j.job_id: j.state for j in tl.jobs}
        for i, (_, item) in enumerate(rows):
            if isinstance(item, ClockChange):
                table.add_row(Text(f"{item.at:%a %d %b %H:%M}", style="bold magenta"),
                              Text(item.wall_clocks, style="bold magenta"),
                              Text(item.timezone, style="bold magenta"), "",
                              Text(f"⏰ {item.describe}", style="bold magenta"), key=f"c{i}")
                continue
            state = states[item.job_id]
            fires = state == "active"
            style = "" if fires else "dim strike"
            table.add_row(Text(f"{item.at:%a %d %b %H:%M}", style=style),
                          Text(f"{item.local:%a %d %b %H:%M} {item.local.tzname()}", style=style),
                          Text(item.job_id, style=style), state_text(state),
                          Text(_note(item, fires), style="dim"), key=f"s{i}")
        if not rows:
            table.add_row("", "", Text("no slots in this window", style="dim"), "", "",
                          key="none")

    def action_window(self) -> None:
        self.window_index = (self.window_index + 1) % len(WINDOWS)
        self.reload()

    def action_reload(self) -> None:
        self.reload()

    def action_back(self) -> None:
        self.app.pop_screen()


def _note(slot: Slot, fires: bool) -> str:
    parts = [] if fires else ["will not fire"]
    if slot.in_skipped_hour:
        parts.append("in the skipped hour")
    elif slot.change is not None:
        parts.append(f"first slot on {slot.local.tzname()}")
    if slot.local.fold:
        parts.append("the repeated hour's second copy")
    return "; ".join(parts)

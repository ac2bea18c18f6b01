"""The jobs screen (the default): one row per job with its schedule, a live countdown to
its next run, its last run and whether it is paused."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Header, Label, OptionList, Static
from textual.widgets.data_table import ColumnKey

from console.formatting import (
    ago,
    clip,
    clock_time,
    countdown,
    duration,
    span,
    stamp,
    state_text,
    status_text,
)
from console.tui.screens.base import OpsScreen
from console.tui.screens.history import run_row
from console.tui.widgets.attention_strip import AttentionStrip
from console.tui.widgets.footer import OpsFooter
from console.tui.widgets.run_progress import RunProgress
from console.tui.widgets.status_bar import StatusBar
from console.tui.widgets.tables import FitTable, RowTable
from jobs.humanize import paused_note
from jobs.overview import STALE_REASON, Attention, JobView, Overview, schedule_state
from jobs.records import RunRecord
from jobs.registry import JOBS
from jobs.runner_schedules import JobSchedule
from jobs.settings import JOB_IDS

RECENT_COLUMNS = (("Run", "run", 7), ("Job", "job", 19), ("Trigger", "trigger", 8),
                  ("When (UTC)", "when", 16), ("Took", "took", 6), ("Status", "status", 11),
                  ("Done", "done", 6), ("Errors", "err", 6))
LAST_RUN_WIDTH = 22
COLUMNS = (("Job", "job", 19), ("Schedule", "schedule", 25), ("Next run", "next", 16),
           ("Last run", "last", LAST_RUN_WIDTH), ("State", "state", 8))


class JobsScreen(OpsScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("t", "run_now", "Run", id="job-run-now",
                tooltip="Run the highlighted job now (asks first)"),
        Binding("p", "preview", "Preview", id="job-preview",
                tooltip="Dry run: what the job would do now, writing nothing"),
        Binding("s", "pause", "Pause", id="job-pause",
                tooltip="Pause the job's schedule (manual runs still work)"),
        Binding("s", "resume", "Resume", id="job-resume",
                tooltip="Resume the schedule from now on (no burst of old slots)"),
        Binding("x", "stop_run", "Stop", id="job-stop",
                tooltip="Stop the run this console started, after the tenant in hand"),
        Binding("h", "history", "History", id="job-history",
                tooltip="The highlighted job's runs, newest first (also: enter)"),
        Binding("a", "analytics", "Analytics", id="view-analytics",
                tooltip="A tenant's cached daily analytics"),
        Binding("d", "analytics_day", "Day", id="view-analytics-day",
                tooltip="Analytics for a day across every tenant (yesterday first)"),
        Binding("o", "outbox", "Outbox", id="view-outbox", tooltip="The email outbox"),
        Binding("l", "alerts", "Alerts", id="view-alerts",
                tooltip="Recent alerts (failing, recovered, overdue) and their deliveries"),
        Binding("w", "attention", "Attention", id="jobs-attention", show=False,
                tooltip="Move to the attention strip (enter on a line goes to the thing)"),
        Binding("e", "problems", "Problems", id="view-problems",
                tooltip="Failed items and failed runs of every job, grouped by error"),
        Binding("n", "timeline", "Timeline", id="view-timeline",
                tooltip="Every job's slots over the next 24 h or 7 days, DST changes marked"),
        Binding("r", "refresh", "Refresh", id="refresh", show=False,
                tooltip="Read everything again now (it also refreshes every few seconds)"),
    ]
    PALETTE = (("view: Refresh", "Read the jobs, runs and runners again now", "refresh"),)

    def __init__(self) -> None:
        super().__init__()
        self.overview: Overview | None = None
        self._next: dict[str, datetime | None] = {}
        self._shown: dict[str, JobSchedule] = {}  # the schedule each row shows
        self._local: dict[str, JobSchedule] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield StatusBar(id="status")
        yield Static("", id="schedules-note")
        yield AttentionStrip(id="attention")
        # The state column takes the width left over: "failing since 3h ago" where it fits.
        yield FitTable(stretch="state", min_width=8, id="jobs", cell_padding=1)
        yield Static("", id="job-detail")
        yield Label("Recent runs of every job", id="recent-title", classes="screen-title")
        yield RowTable(id="recent", zebra_stripes=True)
        yield RunProgress(id="run-progress")
        yield OpsFooter()

    def on_mount(self) -> None:
        self.sub_title = "Jobs"
        table: DataTable[Text] = self.query_one("#jobs", DataTable)
        for label, key, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        for job_id in JOB_IDS:
            sched = self._schedule(job_id)
            self._shown[job_id] = sched
            table.add_row(
                Text.assemble((job_id, "bold"), "\n", (JOBS[job_id].title, "dim")),
                schedule_cell(sched),
                Text(""),
                Text("…", style="dim"),
                Text("…", style="dim"),
                key=job_id,
                height=2,
            )
        recent: DataTable[Text] = self.query_one("#recent", DataTable)
        for label, key, width in RECENT_COLUMNS:
            recent.add_column(label, key=key, width=width)
        self.tick()
        self.set_interval(1.0, self.tick, name="countdown")
        self._detail()
        table.focus()

    # --- what is shown -----------------------------------------------------------------------

    @property
    def job_id(self) -> str:
        table = self.query_one("#jobs", DataTable)
        row = table.cursor_row if 0 <= table.cursor_row < len(JOB_IDS) else 0
        key = table.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value
        return str(key)

    def _paused(self, job_id: str) -> bool:
        return bool(self.overview and self.overview.states[job_id].paused)

    def _schedule(self, job_id: str) -> JobSchedule:
        """The live runners' schedule for the job, or this console's until they are read."""
        if self.overview is not None and self.overview.schedules is not None:
            return self.overview.schedules.job(job_id)
        if job_id not in self._local:
            self._local[job_id] = JobSchedule.of(self.session.settings.job(job_id))
        return self._local[job_id]

    def tick(self) -> None:
        """Move each countdown on by a second; recompute a slot only once it has passed."""
        now = self.session.clock()
        table = self.query_one("#jobs", DataTable)
        for job_id in JOB_IDS:
            cfg = self._schedule(job_id)
            tz = cfg.schedule.timezone
            state = schedule_state(cfg.enabled, self._paused(job_id))
            if state == "disabled":
                cell = Text.assemble(("disabled", "dim"), "\n", ("enabled = false", "dim"))
            elif state == "paused":
                cell = Text.assemble(("paused", "yellow"), "\n", ("no slots fire", "dim"))
            else:
                slot = self._next.get(job_id)
                if slot is None or slot <= now:
                    slot = next(iter(cfg.schedule.next_slots(now, 1)), None)
                    self._next[job_id] = slot
                if slot is None:
                    cell = Text("never", style="dim")
                else:
                    cell = Text.assemble(clock_time(slot, tz), "\n",
                                         (countdown(slot, now), "cyan"))
            table.update_cell(job_id, "next", cell)

    def show_overview(self, overview: Overview) -> None:
        self.overview = overview
        table = self.query_one("#jobs", DataTable)
        now = self.session.clock()
        for job_id in JOB_IDS:
            table.update_cell(job_id, "last", self._last_cell(job_id, now))
            cfg = self._schedule(job_id)
            if cfg != self._shown.get(job_id):
                self._shown[job_id] = cfg
                self._next.pop(job_id, None)  # counted down on the old schedule
                table.update_cell(job_id, "schedule", schedule_cell(cfg))
        self._state_cells()
        self.query_one(AttentionStrip).show(overview.attention())
        self._schedules_note(overview)
        self.tick()
        self._detail()
        self._recent(overview)
        self.refresh_bindings()

    def _state_cells(self) -> None:
        if self.overview is None:
            return
        table = self.query_one("#jobs", DataTable)
        width = table.columns[ColumnKey("state")].get_render_width(table) - 2 * table.cell_padding
        now = self.session.clock()
        for job_id in JOB_IDS:
            table.update_cell(job_id, "state", state_cell(self.overview.job(job_id), now, width))

    def on_resize(self, _: events.Resize) -> None:
        self.call_after_refresh(self._state_cells)  # once the table has its new widths

    def _recent(self, overview: Overview) -> None:
        table = self.query_one("#recent", DataTable)
        keys = [str(r.run_id) for r in overview.recent]
        if keys == [k.value for k in table.rows]:
            for r in overview.recent:  # same runs: only what a running run changes
                for (_, col, _), value in zip(RECENT_COLUMNS, recent_row(r), strict=True):
                    if col in ("took", "status", "done", "err"):
                        table.update_cell(str(r.run_id), col, value)
            return
        selected = table.cursor_row
        table.clear()
        for r in overview.recent:
            table.add_row(*recent_row(r), key=str(r.run_id))
        if overview.recent:
            table.move_cursor(row=min(selected, len(overview.recent) - 1), animate=False)

    def _schedules_note(self, overview: Overview) -> None:
        note = self.query_one("#schedules-note", Static)
        lines = [] if overview.schedules is None else overview.schedules.warnings()
        note.update(Text("\n".join(f"⚠ {line[:1].upper()}{line[1:]}" for line in lines),
                         style="yellow"))
        note.display = bool(lines)

    def _last_cell(self, job_id: str, now: datetime) -> Text:
        assert self.overview is not None
        view = self.overview.job(job_id)
        running = view.running
        if running is not None and view.is_stale(running):
            # Not running any more: its process died without recording an outcome.
            return Text.assemble(("stale", "bold red"), f" run #{running.run_id}", "\n",
                                 (STALE_REASON, "dim"))
        if running is not None:
            total = "?" if running.total is None else f"{running.total:,}"
            return Text.assemble(("running", "bold cyan"), f" {running.processed:,}/{total}", "\n",
                                 (f"started {ago(running.started_at, now)}", "dim"))
        last = view.last_run
        if last is None:
            return Text("never ran", style="dim")
        when = ago(last.finished_at or last.created_at, now)
        took, done = duration(last.duration_seconds), f"{last.processed:,} done"
        if not last.errors:
            return Text.assemble(status_text(str(last.status)), f" {when}", "\n",
                                 (f"{took} · {done}", "dim"))
        # The error count is what must not be cut: the duration goes first, then the words.
        err = f"{last.errors:,} err"
        line2 = next((c for c in (f"{took} · {done} · {err}", f"{done} · {err}",
                                  f"{last.processed:,} · {err}")
                      if len(c) <= LAST_RUN_WIDTH), err)
        return Text.assemble(status_text(str(last.status)), f" {when}", "\n", (line2, "dim"))

    def _detail(self) -> None:
        job_id = self.job_id
        spec, cfg = JOBS[job_id], self.session.settings.job(job_id)
        text = Text()
        text.append(spec.title, style="bold")
        text.append(f": {spec.description}\n")
        grace = "no limit" if cfg.misfire_grace is None else duration(
            cfg.misfire_grace.total_seconds())
        text.append(f"{spec.endpoint} · {self._schedule(job_id).timezone}"
                    f" · concurrency {cfg.concurrency}"
                    f" · misfire grace {grace}", style="dim")
        if self.overview is not None:
            now = self.session.clock()
            state = self.overview.states[job_id]
            # One line, so the pause and the last run below it still fit at 30 rows.
            alert = []
            if state.failing_since is not None:
                alert.append(f"failing since {stamp(state.failing_since)} UTC "
                             f"({ago(state.failing_since, now)})")
            if state.overdue_since is not None and not state.paused:
                alert.append(f"overdue since {ago(state.overdue_since, now)}")
            if alert:
                line = " · ".join(alert)
                text.append(f"\n{line[:1].upper()}{line[1:]}",
                            style="red" if state.failing_since is not None else "yellow")
            if state.paused:
                note = paused_note(state.paused_by, state.paused_at, state.paused_reason, now)
                text.append(f"\n{note[0].upper()}{note[1:]}"
                            " — slots are not fired while paused", style="yellow")
            last = self.overview.last_runs.get(job_id)
            if last is not None:
                text.append(f"\nLast run #{last.run_id} ({last.trigger}) by {last.started_by}")
                if last.error:
                    text.append(f": {last.error}", style="red")
        self.query_one("#job-detail", Static).update(text)

    @on(DataTable.RowHighlighted, "#jobs")
    def _highlighted(self) -> None:
        self._detail()
        self.refresh_bindings()

    @on(DataTable.RowSelected, "#jobs")
    def _selected(self) -> None:
        self.action_history()

    @on(OptionList.OptionSelected, "#attention")
    def _attention_selected(self, event: OptionList.OptionSelected) -> None:
        line = self.query_one(AttentionStrip).line(event.option_index)
        if line is not None:
            self.go_to(line)

    def go_to(self, line: Attention) -> None:
        """Where a line of the attention strip leads."""
        if line.kind == "stale" and line.run_id is not None:
            self.ops.open_run(line.run_id)
        elif line.kind == "dead_emails":
            self.ops.open_outbox(status="dead")
        elif line.kind == "undelivered_alerts":
            self.ops.open_alerts()
        elif line.job_id is not None:
            self.ops.open_history(line.job_id)

    @on(DataTable.RowSelected, "#recent")
    def _run_selected(self, event: DataTable.RowSelected) -> None:
        self.ops.open_run(int(str(event.row_key.value)))

    # --- actions -------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        allowed = super().check_action(action, parameters)
        if not allowed:
            return allowed
        if action == "pause":
            return not self._paused(self.job_id)
        if action == "resume":
            return self._paused(self.job_id)
        if action == "stop_run":
            return self.ops.active_run is not None
        return True

    def action_run_now(self) -> None:
        self.ops.request_trigger(self.job_id)

    def action_preview(self) -> None:
        self.ops.request_preview(self.job_id)

    def action_pause(self) -> None:
        self.ops.request_pause(self.job_id, True)

    def action_resume(self) -> None:
        self.ops.request_pause(self.job_id, False)

    def action_stop_run(self) -> None:
        self.ops.stop_run()

    def action_history(self) -> None:
        self.ops.open_history(self.job_id)

    def action_analytics(self) -> None:
        self.ops.open_analytics()

    def action_analytics_day(self) -> None:
        self.ops.open_analytics_day()

    def action_outbox(self) -> None:
        self.ops.open_outbox()

    def action_alerts(self) -> None:
        self.ops.open_alerts()

    def action_attention(self) -> None:
        strip = self.query_one(AttentionStrip)
        if strip.display:
            strip.focus()
        else:
            self.notify("Nothing needs attention.", markup=False)

    def action_problems(self) -> None:
        self.ops.open_problems()

    def action_timeline(self) -> None:
        self.ops.open_timeline()

    def action_refresh(self) -> None:
        self.ops.refresh_data()


def state_cell(view: JobView, now: datetime, width: int) -> Text:
    """Whether the job's slots fire, and under it its alert state in the words that fit."""
    state = view.pause
    failing = state.failing_since
    overdue = state.overdue_since if view.state == "active" else None
    words: tuple[str, ...] = ()
    if failing is not None:
        words = (f"failing since {ago(failing, now)}", f"failing {span(now - failing)}",
                 "failing")
        if overdue is not None:
            words = (f"{words[0]} · overdue", f"{words[1]} · overdue", *words[1:2],
                     "failing, overdue", "failing")
    elif overdue is not None:
        words = (f"overdue since {ago(overdue, now)}", f"overdue {span(now - overdue)}",
                 "overdue")
    text = state_text(view.state)
    if words:
        chosen = next((w for w in words if len(w) <= width), words[-1])
        text.append("\n")
        text.append(chosen, style="bold red" if failing is not None else "bold yellow")
    return text


def schedule_cell(sched: JobSchedule) -> Text:
    return Text.assemble(clip(sched.expression, 25), "\n",
                         (clip(sched.schedule.describe(), 25), "dim"))


def recent_row(r: RunRecord) -> tuple[str | Text, ...]:
    run, trigger, slot, started, took, status, done, err = run_row(r)
    return (run, r.job_id, trigger, slot if r.scheduled_for else started, took, status, done, err)

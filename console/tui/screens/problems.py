"""Problems: every failed item and failed run of every job in a window (the last 24 h, 7
days or 30 days), grouped by job and error with counts; below, the highlighted group's
lines (run, tenant, action). Enter opens the run, on that tenant's items."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Header, Label, Static

from console.formatting import ago, clip, plural, stamp, status_text
from console.tui.messages import ProblemLinesLoaded, ProblemsLoaded
from console.tui.screens.base import OpsScreen
from console.tui.widgets.footer import OpsFooter
from console.tui.widgets.status_bar import StatusBar
from console.tui.widgets.tables import FitTable
from jobs import problems
from jobs.problems import Problem, ProblemGroup
from jobs.settings import JOB_IDS

LINES = 200  # lines shown per group; the CLI's --json has them all
GROUP_COLUMNS = (("Count", "count", 7), ("Job", "job", 19), ("Tenants", "tenants", 7),
                 ("Runs", "runs", 5), ("Last", "last", 11), ("Error", "error", 30))
LINE_COLUMNS = (("Run", "run", 7), ("When (UTC)", "when", 16), ("Status", "status", 11),
                ("Tenant", "tenant", 20), ("Id", "id", 14), ("Action", "action", 30))


class ProblemsScreen(OpsScreen):
    CSS_PATH = str(Path(__file__).with_name("problems.tcss"))
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", id="back", tooltip="Back to the jobs"),
        Binding("enter", "open_run", "Open run", id="problems-open",
                tooltip="The highlighted line's run, on that tenant's items (on a group: "
                        "its newest line)"),
        Binding("w", "window", "Window", id="problems-window",
                tooltip="Cycle the window: the last 24 h, 7 days, 30 days"),
        Binding("j", "job", "Job", id="problems-job",
                tooltip="Cycle the job shown: every job, then each one"),
        Binding("tab", "switch", "Groups/lines", id="problems-switch",
                tooltip="Move between the groups and the highlighted group's lines"),
        Binding("r", "reload", "Reload", id="problems-reload", tooltip="Read the problems again"),
    ]
    PALETTE = (("problems: Window", "The last 24 h, 7 days or 30 days", "window"),
               ("problems: Job", "Every job, or one", "job"),
               ("problems: Reload", "Read the problems again", "reload"))

    def __init__(self) -> None:
        super().__init__()
        self.window_index = 0
        self.job_id: str | None = None
        self.groups: list[ProblemGroup] = []
        self.lines: list[Problem] = []
        self.generation = 0
        self.loaded_at: datetime | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield StatusBar(id="status")
        yield Label("", id="problems-title", classes="screen-title")
        yield FitTable(stretch="error", id="problem-groups", zebra_stripes=True)
        yield Label("", id="lines-title", classes="screen-title")
        yield FitTable(stretch="action", id="problem-lines", zebra_stripes=True)
        yield Static("", id="problem-detail")
        yield OpsFooter()

    def on_mount(self) -> None:
        self.sub_title = "Problems"
        for table_id, columns in (("#problem-groups", GROUP_COLUMNS),
                                  ("#problem-lines", LINE_COLUMNS)):
            table: DataTable[str | Text] = self.query_one(table_id, DataTable)
            for label, key, width in columns:
                table.add_column(label, key=key, width=width)
        self.query_one("#problem-groups", DataTable).focus()
        self.reload()

    @property
    def window_label(self) -> str:
        return problems.window_label(problems.WINDOWS[self.window_index])

    def reload(self) -> None:
        self.generation += 1
        now = self.session.clock()
        self.loaded_at = now
        scope = self.job_id or "every job"
        self.query_one("#problems-title", Label).update(
            f"Problems of {scope} in the last {self.window_label}  (w: window · j: job) …")
        self._load(self.generation, now - problems.WINDOWS[self.window_index], self.job_id)

    @work(thread=True, exclusive=True, exit_on_error=False, group="problems")
    def _load(self, generation: int, since: datetime, job_id: str | None) -> None:
        found = problems.groups(self.session.db(), since=since, job_id=job_id)
        self.post_message(ProblemsLoaded(found, generation))

    def on_problems_loaded(self, event: ProblemsLoaded) -> None:
        if event.generation != self.generation:
            return
        self.groups = list(event.groups)
        now = self.loaded_at or self.session.clock()
        table = self.query_one("#problem-groups", DataTable)
        table.clear()
        for i, g in enumerate(self.groups):
            table.add_row(f"{g.count:,}", g.job_id, f"{g.tenants:,}" if g.tenants else "—",
                          f"{g.runs:,}", ago(g.last_at, now), clip(g.error, 300),
                          key=str(i))
        total = sum(g.count for g in self.groups)
        scope = self.job_id or "every job"
        title = Text.assemble(
            ("Problems", "bold"), f" of {scope} in the last {self.window_label}: ",
            (plural(total, "problem"), "bold red" if total else "green"),
            f" in {plural(len(self.groups), 'group')}", ("  (w: window · j: job)", "dim"))
        self.query_one("#problems-title", Label).update(title)
        self._lines_for(self.selected_group)

    @property
    def selected_group(self) -> ProblemGroup | None:
        row = self.query_one("#problem-groups", DataTable).cursor_row
        return self.groups[row] if 0 <= row < len(self.groups) else None

    @property
    def selected_line(self) -> Problem | None:
        row = self.query_one("#problem-lines", DataTable).cursor_row
        return self.lines[row] if 0 <= row < len(self.lines) else None

    @on(DataTable.RowHighlighted, "#problem-groups")
    def _group_moved(self) -> None:
        self._lines_for(self.selected_group)

    def _lines_for(self, group: ProblemGroup | None) -> None:
        self.lines = []
        self.query_one("#problem-lines", DataTable).clear()
        title = self.query_one("#lines-title", Label)
        if group is None:
            title.update("")
            self.query_one("#problem-detail", Static).update(
                Text(f"No failed items or runs in the last {self.window_label}.", style="green"))
            return
        title.update(Text.assemble(("Lines", "bold"), f" of this error in {group.job_id} ",
                                   (f"({group.count:,}; enter opens a line's run)", "dim")))
        self._detail(group, None)
        since = (self.loaded_at or self.session.clock()) - problems.WINDOWS[self.window_index]
        self._load_lines(self.generation, group, since)

    @work(thread=True, exclusive=True, exit_on_error=False, group="problem-lines")
    def _load_lines(self, generation: int, group: ProblemGroup, since: datetime) -> None:
        found = problems.problems(self.session.db(), since=since, job_id=group.job_id,
                                  error=group.error, limit=LINES)
        self.post_message(ProblemLinesLoaded(group, found, generation))

    def on_problem_lines_loaded(self, event: ProblemLinesLoaded) -> None:
        if event.generation != self.generation or event.group != self.selected_group:
            return
        self.lines = list(event.lines)
        table = self.query_one("#problem-lines", DataTable)
        table.clear()
        for i, p in enumerate(self.lines):
            table.add_row(f"#{p.run_id}", stamp(p.started_at or p.created_at)[:16],
                          status_text(p.status), clip(p.tenant_name or "—", 20),
                          clip(p.tenant_id or "(the run)", 14), clip(p.action or "—", 30),
                          key=str(i))
        if event.group.count > len(self.lines):
            self.query_one("#lines-title", Label).update(Text.assemble(
                ("Lines", "bold"), f" of this error in {event.group.job_id} ",
                (f"(the newest {len(self.lines):,} of {event.group.count:,}: "
                 "storeflow-ops problems --json lists all; enter opens a line's run)", "dim")))

    @on(DataTable.RowHighlighted, "#problem-lines")
    def _line_moved(self) -> None:
        group = self.selected_group
        if group is not None:
            self._detail(group, self.selected_line)

    def _detail(self, group: ProblemGroup, line: Problem | None) -> None:
        text = Text()
        if line is not None:
            text.append(f"Run #{line.run_id} ", style="bold")
            text.append(f"{line.job_id} ")
            text.append_text(status_text(line.status))
            if line.tenant_id is not None:
                text.append(f"  tenant {line.tenant_name or '—'} ")
                text.append(line.tenant_id, style="dim")
            text.append("\n")
        text.append("Error ", style="dim")
        text.append(group.error, style="red")
        self.query_one("#problem-detail", Static).update(text)

    @on(DataTable.RowSelected, "#problem-groups")
    @on(DataTable.RowSelected, "#problem-lines")
    def _selected(self) -> None:
        self.action_open_run()

    def action_open_run(self) -> None:
        lines = self.query_one("#problem-lines", DataTable)
        line = self.selected_line if lines.has_focus else (self.lines[0] if self.lines else None)
        if line is None:
            group = self.selected_group
            if group is not None:
                self.ops.open_run(group.last_run_id)
            return
        self.ops.open_run(line.run_id, search=line.tenant_id or "")

    def action_window(self) -> None:
        self.window_index = (self.window_index + 1) % len(problems.WINDOWS)
        self.reload()

    def action_job(self) -> None:
        order: list[str | None] = [None, *JOB_IDS]
        self.job_id = order[(order.index(self.job_id) + 1) % len(order)]
        self.reload()

    def action_switch(self) -> None:
        groups = self.query_one("#problem-groups", DataTable)
        (self.query_one("#problem-lines", DataTable) if groups.has_focus else groups).focus()

    def action_reload(self) -> None:
        self.reload()

    def action_back(self) -> None:
        self.app.pop_screen()


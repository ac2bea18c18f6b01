"""The console: a Textual app over the jobs API.

It reads and writes only through `jobs` (runs, outbox, presence, analytics, tenants);
every database or cache call runs in a worker thread, so the screen stays live while a
job runs or a database is slow, and an error becomes a notification or a status line.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from datetime import date
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.notifications import SeverityLevel
from textual.reactive import var
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from console.formatting import plural
from console.tui.commands_palette import Entry, OpsCommands
from console.tui.messages import (
    Connected,
    ConnectionFailed,
    JobsRefreshed,
    RefreshFailed,
    RunEnded,
    RunFinished,
    RunProgressed,
    RunPurpose,
    RunStarted,
)
from console.tui.screens.base import OpsScreen
from console.tui.screens.confirm import ConfirmScreen
from console.tui.screens.jobs import JobsScreen
from console.tui.screens.pause_reason import PauseReasonScreen
from console.tui.session import CacheFactory, Session
from console.tui.widgets.run_progress import RunProgress
from console.tui.widgets.status_bar import StatusInfo
from jobs.audit import AuditAction
from jobs.cache import Cache
from jobs.errors import OpsError, UsageError
from jobs.overview import load_overview
from jobs.presence import Presence
from jobs.records import RunnerKind, RunParams, RunStatus, Trigger
from jobs.registry import JOBS, check_run
from jobs.runs import execute, set_paused
from jobs.settings import Settings
from jobs.timeutil import Clock, utc_now

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from console.context import CliContext

REFRESH_SECONDS = 5.0


class OpsApp(App[int]):
    CSS_PATH = str(Path(__file__).with_name("app.tcss"))  # absolute: subclasses live elsewhere
    TITLE = "StoreFlow Ops"
    COMMANDS = App.COMMANDS | {OpsCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit", id="quit",
                tooltip="Leave the console (a run in progress is stopped first)"),
        Binding("question_mark", "help", "Help", key_display="?", id="help",
                tooltip="Every key on every screen"),
    ]

    status: var[StatusInfo] = var(StatusInfo("", "", False), init=False)

    def __init__(self, settings: Settings, *, read_only: bool = False, clock: Clock = utc_now,
                 engine: Engine | None = None, cache_factory: CacheFactory | None = None,
                 refresh_seconds: float = REFRESH_SECONDS) -> None:
        super().__init__()
        self.session = Session(settings, read_only=read_only, clock=clock, engine=engine,
                               cache_factory=cache_factory)
        self.refresh_seconds = refresh_seconds
        self.active_run: RunPurpose | None = None
        self._stop_run = threading.Event()
        self._db_failing = False
        self.set_reactive(OpsApp.status, StatusInfo(
            self.session.database_label, self.session.cache_label, read_only))

    # --- start, refresh, status ------------------------------------------------------------------

    def on_mount(self) -> None:
        self.push_screen(JobsScreen())
        self.connect()
        if self.refresh_seconds > 0:
            self.set_interval(self.refresh_seconds, self.refresh_data, name="refresh")

    @property
    def jobs_screen(self) -> JobsScreen:
        return next(s for s in self.screen_stack if isinstance(s, JobsScreen))

    @work(thread=True, exclusive=True, exit_on_error=False, group="connect")
    def connect(self) -> None:
        from jobs.db import require_platform_tables

        try:
            engine = self.session.connect()
        except OpsError as exc:
            self.post_message(ConnectionFailed(exc.message))
            return
        self.post_message(Connected())
        try:
            require_platform_tables(engine)
        except OpsError as exc:
            # Runs, the outbox and the cache still show; the jobs cannot run: say so now,
            # not only when a job or the tenant picker first trips over it.
            self.call_from_thread(self.notify, exc.message, title="Database",
                                  severity="warning", timeout=30, markup=False)

    def on_connected(self, _: Connected) -> None:
        self.status = self._status(connected=True, db_error=None)
        if self._db_failing:
            self.notify("The database answers again.", title="Database", markup=False)
        self._db_failing = False
        self.refresh_data()

    def on_connection_failed(self, event: ConnectionFailed) -> None:
        self._database_failed(event.error)

    def _database_failed(self, error: str) -> None:
        self.status = self._status(db_error=error)
        if not self._db_failing:
            self.notify(error, title="Database", severity="error", timeout=10, markup=False)
        self._db_failing = True

    def refresh_data(self) -> None:
        """Read the jobs' state again (or retry the connection while the database is down)."""
        if not self.session.connected or self._db_failing:
            self.connect()
        else:
            self._refresh()

    @work(thread=True, exclusive=True, exit_on_error=False, group="refresh")
    def _refresh(self) -> None:
        try:
            engine = self.session.db()
            overview = load_overview(engine, self.session.settings, self.session.cache(),
                                     self.session.clock(), with_alerts=True)
        except OpsError as exc:
            self.post_message(RefreshFailed(exc.message))
            return
        self.post_message(JobsRefreshed(overview))

    def on_jobs_refreshed(self, event: JobsRefreshed) -> None:
        ov = event.overview
        self.status = self._status(
            connected=True, checked=True, db_error=None, cache_error=ov.cache_error,
            alive_runners=tuple(f"{r.host} (pid {r.pid})" for r in ov.alive_runners),
        )
        self.jobs_screen.show_overview(ov)

    def on_refresh_failed(self, event: RefreshFailed) -> None:
        self._database_failed(event.error)

    def _status(self, **changes: Any) -> StatusInfo:
        from dataclasses import replace

        return replace(self.status, **changes)

    # --- failures ------------------------------------------------------------------------------

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        self.report_worker_state(event)

    def report_worker_state(self, event: Worker.StateChanged) -> None:
        """The one place a failed worker ends up: a notification, never a traceback."""
        if event.state is not WorkerState.ERROR:
            return
        error = event.worker.error
        if isinstance(error, OpsError):
            message = error.message
        else:
            message = f"{type(error).__name__}: {error}"
            self.log.error(f"worker {event.worker.name} failed", error)
        self.notify(message, title=_title(event.worker), severity="error", timeout=10, markup=False)

    # --- running a job -------------------------------------------------------------------------

    def request_trigger(self, job_id: str, params: RunParams | None = None, *,
                        question: str | None = None, detail: str | None = None,
                        yes: str = "Run now", open_result: bool = True,
                        on_yes: Callable[[], object] | None = None,
                        audit_as: AuditAction = AuditAction.TRIGGER) -> None:
        """Ask, then run `job_id`; `on_yes` runs first when the answer is yes (the preview
        closes itself then, and stays open on a no)."""
        if self._refuse_write("run a job"):
            return
        if not self._can_start():
            return
        try:
            # The run's own check, before the question: a request it would refuse is not
            # put to the operator.
            spec = check_run(self.session.settings, job_id, params or RunParams(),
                             self.session.clock())
        except UsageError as exc:
            self.notify(exc.message, title="Run", severity="error", timeout=10, markup=False)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                if on_yes is not None:
                    on_yes()
                self._start_run(RunPurpose(job_id, False, f"Running {job_id}", open_result,
                                           audit_as), params)

        self.push_screen(ConfirmScreen(
            question or f"Run {job_id} now?",
            detail or f"{spec.title}: {spec.description}.\nThis is a real run: it writes "
                      "to the platform tables, the outbox or the cache.",
            yes=yes,
        ), answered)

    def request_preview(self, job_id: str) -> None:
        if self._can_start():
            self._start_run(RunPurpose(job_id, True, f"Previewing {job_id}"), None)

    def _can_start(self) -> bool:
        if not self.session.connected:
            self.notify("Not connected to the database yet.", severity="warning", markup=False)
            return False
        if self.active_run is not None:
            self.notify(f"Wait for {self.active_run.job_id} to finish (or press x to stop it).",
                        severity="warning", markup=False)
            return False
        return True

    def _refuse_write(self, what: str) -> bool:
        if self.session.read_only:
            self.notify(f"Read-only console: cannot {what}.", severity="warning", markup=False)
            return True
        return False

    def _start_run(self, purpose: RunPurpose, params: RunParams | None) -> None:
        self.active_run = purpose
        self._stop_run.clear()
        self._each_progress(lambda p: p.begin(purpose))
        self.refresh_bindings()
        self._run(purpose, params)

    @work(thread=True, exclusive=True, exit_on_error=False, group="run")
    def _run(self, purpose: RunPurpose, params: RunParams | None) -> None:
        session = self.session
        presence: Presence | None = None
        try:
            engine = session.db()
            if not purpose.dry_run:
                # Registered while it runs, so a console that dies mid-run has its run
                # marked interrupted by whoever sees it stop heartbeating.
                presence = Presence(engine, RunnerKind.CONSOLE, session.clock,
                                    interval=session.settings.runner.heartbeat_interval).start()
            report = execute(
                engine, session.settings, purpose.job_id, now=session.clock(),
                started_by=session.started_by, trigger=Trigger.MANUAL, dry_run=purpose.dry_run,
                runner_id=presence.id if presence else None, params=params,
                cache=session.cache(), stop=self._stop_run,
                on_progress=lambda p: _post(self, RunProgressed(purpose, p)),
                on_started=lambda run_id: _post(self, RunStarted(purpose, run_id)),
                clock=session.clock, audit_as=purpose.audit_as,
            )
            self.post_message(RunFinished(purpose, report))
        finally:
            if presence is not None:
                presence.stop()
            self.post_message(RunEnded(purpose))

    def _each_progress(self, do: Callable[[RunProgress], None]) -> None:
        for screen in self.screen_stack:
            for panel in screen.query(RunProgress):
                do(panel)

    def on_run_started(self, event: RunStarted) -> None:
        if event.run_id is not None:
            label = f"{event.purpose.label} (run #{event.run_id})"
            self._each_progress(lambda p: p.relabel(label))

    def on_run_progressed(self, event: RunProgressed) -> None:
        self._each_progress(lambda p: p.advance(event.purpose, event.progress))

    def on_run_ended(self, event: RunEnded) -> None:
        self.active_run = None
        self._each_progress(lambda p: p.end())
        self.refresh_bindings()
        self.refresh_data()

    def on_run_finished(self, event: RunFinished) -> None:
        from console.tui.screens.preview import PreviewScreen
        from console.tui.screens.run_detail import RunDetailScreen

        report, purpose = event.report, event.purpose
        n, errors = report.processed, len(report.errors)
        failed = report.status in (RunStatus.FAILED, RunStatus.TIMED_OUT)
        severity: SeverityLevel = ("error" if failed
                    else "warning" if errors or report.status is RunStatus.INTERRUPTED
                    else "information")
        run = f"run #{report.run_id}" if report.run_id else "preview"
        # Which run in the title, so the usual notification is two lines high.
        text = f"{report.message}: {n:,} processed, {plural(errors, 'error')}"
        if report.error:
            text += f"\n{report.error}"
        self.notify(text, title=f"{purpose.job_id} · {run}", severity=severity, timeout=8,
                    markup=False)
        for screen in self.screen_stack:
            reload = getattr(screen, "on_job_finished", None)
            if reload is not None:
                reload(purpose, report)
        if not purpose.open_result:
            return
        if report.dry_run:
            self.push_screen(PreviewScreen(report))
        elif report.run_id is not None:
            self.push_screen(RunDetailScreen(report.run_id))

    def stop_run(self) -> None:
        if self.active_run is not None:
            self._stop_run.set()
            self.notify(f"Stopping {self.active_run.job_id} after the tenant in hand…", markup=False)

    # --- pause / resume -------------------------------------------------------------------------

    def request_pause(self, job_id: str, paused: bool) -> None:
        if self._refuse_write("pause or resume a job"):
            return
        if not paused:
            self._set_paused(job_id, False)
            return

        def answered(reason: str | None) -> None:
            if reason is not None:  # None: cancelled
                self._set_paused(job_id, True, reason or None)

        self.push_screen(PauseReasonScreen(job_id), answered)

    @work(thread=True, exit_on_error=False, group="pause")
    def _set_paused(self, job_id: str, paused: bool, reason: str | None = None) -> None:
        changed = set_paused(self.session.db(), job_id, paused, by=self.session.started_by,
                             now=self.session.clock(), reason=reason)
        word = "paused" if paused else "resumed"
        note = "" if changed else " (it already was)"
        self.call_from_thread(self.notify, f"{job_id} {word}{note}.", title="Schedule", markup=False)
        self.call_from_thread(self.refresh_data)

    # --- the command palette ---------------------------------------------------------------------

    def palette_entries(self, screen: Screen[Any]) -> list[Entry]:
        """Every action by name: per job, per view, then the current screen's own."""
        writable = not self.session.read_only
        overview = self.jobs_screen.overview
        entries: list[Entry] = []
        for job_id, spec in JOBS.items():
            if writable:
                entries.append((f"job: Run now · {job_id}", f"Run {spec.title} now (asks first)",
                                partial(self.request_trigger, job_id)))
            entries.append((f"job: Preview · {job_id}",
                            f"What {spec.title} would do now, writing nothing",
                            partial(self.request_preview, job_id)))
            if writable:
                paused = bool(overview and overview.states[job_id].paused)
                verb = "Resume" if paused else "Pause"
                entries.append((f"job: {verb} · {job_id}", f"{verb} the schedule of {spec.title}",
                                partial(self.request_pause, job_id, not paused)))
            entries.append((f"view: History · {job_id}", f"Runs of {spec.title}, newest first",
                            partial(self.open_history, job_id)))
        if writable and self.active_run is not None:
            entries.append(("job: Stop run", f"Stop {self.active_run.job_id} after the tenant "
                            "in hand", self.stop_run))
        entries += [
            ("view: Jobs", "The jobs, their schedules and last runs", self.show_jobs),
            ("view: Outbox", "Emails: pending, sent, failed, dead", self.open_outbox),
            ("view: Outbox · dead", "The emails every attempt failed for",
             partial(self.open_outbox, status="dead")),
            ("view: Alerts", "Recent alerts and their deliveries", self.open_alerts),
            ("view: Analytics", "A tenant's cached daily analytics", self.open_analytics),
            ("view: Analytics by day", "Every tenant's cached value for a day: sort, totals, "
             "missing; verify", self.open_analytics_day),
            ("view: Problems", "Failed items and runs of every job, by error",
             self.open_problems),
            ("view: Timeline", "Every job's slots over the next 24 h or 7 days",
             self.open_timeline),
            ("view: Help", "Every key on every screen", self.action_help),
        ]
        if isinstance(screen, OpsScreen):
            for title, help_text, action in screen.PALETTE:
                if screen.check_action(action, ()):
                    entries.append((title, help_text, partial(screen.run_action, action)))
        return entries

    # --- navigation ------------------------------------------------------------------------------

    def _push_view(self, screen: OpsScreen) -> None:
        """Views opened from the jobs screen or the palette sit right above the jobs screen."""
        while len(self.screen_stack) > 2 and not isinstance(self.screen, JobsScreen):
            self.pop_screen()
        self.push_screen(screen)

    def open_history(self, job_id: str) -> None:
        from console.tui.screens.history import HistoryScreen

        self._push_view(HistoryScreen(job_id))

    def open_outbox(self, status: str | None = None, search: str = "") -> None:
        from console.tui.screens.outbox import OutboxScreen

        self._push_view(OutboxScreen(status=status, search=search))

    def open_alerts(self) -> None:
        from console.tui.screens.alerts import AlertsScreen

        self._push_view(AlertsScreen())

    def open_analytics(self, tenant_id: str | None = None) -> None:
        from console.tui.screens.analytics import AnalyticsScreen

        self._push_view(AnalyticsScreen(tenant_id))

    def open_analytics_day(self, day: date | None = None) -> None:
        from console.tui.screens.analytics_day import AnalyticsDayScreen

        self._push_view(AnalyticsDayScreen(day))

    def open_run(self, run_id: int, *, search: str = "", errors_only: bool = False) -> None:
        from console.tui.screens.run_detail import RunDetailScreen

        self.push_screen(RunDetailScreen(run_id, search=search, errors_only=errors_only))

    def open_problems(self) -> None:
        from console.tui.screens.problems import ProblemsScreen

        self._push_view(ProblemsScreen())

    def open_timeline(self) -> None:
        from console.tui.screens.timeline import TimelineScreen

        self._push_view(TimelineScreen())

    def show_jobs(self) -> None:
        while len(self.screen_stack) > 2 and not isinstance(self.screen, JobsScreen):
            self.pop_screen()

    def action_help(self) -> None:
        from console.tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        if self.active_run is None or self.active_run.dry_run:
            self._stop_run.set()
            self.exit(0)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._stop_run.set()
                self.notify("Stopping the run, then quitting…", markup=False)
                self.run_worker(self._quit_after_run(), group="quit")

        self.push_screen(ConfirmScreen(
            f"{self.active_run.job_id} is running. Stop it and quit?",
            "The run finishes the tenant in hand and is marked interrupted.",
            yes="Stop and quit",
        ), answered)

    async def _quit_after_run(self) -> None:
        for worker in self.workers:
            if worker.group == "run":
                await worker.wait()
        self.exit(0)


def _post(app: App[Any], message: Message) -> None:
    app.post_message(message)


def _title(worker: Worker[Any]) -> str:
    return {"run": "Run", "connect": "Database", "refresh": "Refresh"}.get(worker.group,
                                                                            "Error")


def run_app(settings: Settings, read_only: bool = False, *,
            cache_factory: Callable[[Engine], Cache] | None = None) -> int:
    """Open the console on `settings.database_url`; returns the exit code."""
    app = OpsApp(settings, read_only=read_only, cache_factory=cache_factory)
    try:
        code = app.run()
    finally:
        app.session.close()
    return int(code or 0)


def cmd_tui(ctx: CliContext, args: argparse.Namespace) -> int:
    from jobs.db import make_engine

    # A SQLite file that does not exist (a mistyped path) is refused here, one line and
    # exit 2, instead of the console opening on a new, empty database.
    make_engine(ctx.settings.database_url, create=False).dispose()
    return run_app(ctx.settings, read_only=bool(getattr(args, "read_only", False)))

"""The scriptable commands. Each is `cmd_x(ctx, args) -> exit code`.

Data goes to stdout (one JSON document with --json, else compact aligned tables);
diagnostics and progress go to stderr. Expected failures are raised as OpsError and
printed by console.cli as one line.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from console.context import CliContext
from console.formatting import terminal_safe
from jobs import runs
from jobs.db import check_reachable, make_engine
from jobs.errors import ExitCode, UsageError
from jobs.humanize import (
    ago,
    amount,
    compact,
    duration,
    item_note,
    number,
    paused_note,
    plural,
    span,
    stamp,
)
from jobs.presence import Presence, who_am_i
from jobs.records import ItemStatus, Progress, RunnerKind, RunParams, RunRecord, RunReport, parse_day
from jobs.redaction import redact
from jobs.runner_schedules import EffectiveSchedules
from jobs.tenants import find_tenant
from jobs.timeutil import iso, parse_timestamp, utc_now

if TYPE_CHECKING:  # the listing commands' own module; a run never loads it
    from jobs.overview import Overview

ANALYTICS_DAYS = 14

# --- small helpers for human output ---------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; the last column is left ragged. Cells are made
    terminal-safe first, so a line break or escape in a name neither breaks the row nor
    its alignment."""
    cells = [[str(h) for h in headers]] + [
        ["" if c is None else terminal_safe(str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)




def _parse_now(text: str | None) -> datetime:
    if text is None:
        return utc_now()
    try:
        return parse_timestamp(text)
    except ValueError as exc:
        raise UsageError(f"--now: {exc}") from None


def _parse_date(flag: str, text: str | None) -> date | None:
    return None if text is None else parse_day(flag, text)


# --- jobs ------------------------------------------------------------------------------------

def _stale() -> str:
    """What a `running` run whose process is gone is shown as."""
    from jobs.overview import STALE_REASON

    return f"stale ({STALE_REASON})"


def _warn_schedules(ctx: CliContext, schedules: EffectiveSchedules) -> None:
    for line in schedules.warnings():
        ctx.err(f"storeflow-ops: warning: {line}")


def _overview(ctx: CliContext, kinds: tuple[RunnerKind, ...] = (RunnerKind.RUNNER,)) -> Overview:
    """The jobs as the console shows them, without what only its screen needs (the recent
    runs, the outbox's counts) and without the cache, which is never opened here. At the
    real time, whatever --now says: it decides which runners are alive now, and how long
    ago a run finished."""
    from jobs.overview import load_overview

    overview = load_overview(ctx.engine, ctx.settings, None, utc_now(), kinds=kinds,
                             recent=0, with_outbox=False)
    _warn_schedules(ctx, overview.schedules)
    return overview


def cmd_jobs(ctx: CliContext, args: argparse.Namespace) -> int:
    now = _parse_now(args.now)
    if args.count < 0:
        raise UsageError("--count: must not be negative")
    overview = _overview(ctx)
    rows: list[dict[str, Any]] = []
    human: list[tuple[str, ...]] = []
    for view in overview.jobs:
        job = view.schedule
        tz = job.schedule.timezone
        record = view.last_run
        # A paused or disabled job fires nothing, so it has no next run to show.
        slots = view.next_slots(now, max(args.count, 1))
        rows.append({
            "job": view.job_id,
            "schedule": job.schedule.expression,
            "timezone": job.timezone,
            "enabled": view.enabled,
            "paused": view.paused,
            # Who paused it, when and why (kept after a resume: the last pause).
            "paused_by": view.pause.paused_by if view.paused else None,
            "paused_at": iso(view.pause.paused_at) if view.paused else None,
            "paused_reason": view.pause.paused_reason if view.paused else None,
            # In the job's own zone, so the offset says which wall clock the cron reads.
            "next_runs": [s.astimezone(tz).isoformat() for s in slots[: args.count]],
            # `stale`: still `running` in history, but its process stopped heartbeating.
            "last_run": None if record is None
            else {**record.to_json(), "stale": view.is_stale(record)},
            "schedule_source": overview.schedules.source_of(view.job_id),
        })
        human.append((
            view.job_id,
            f"{job.schedule.expression}  ({job.schedule.describe()})",
            "-" if not slots
            else f"{slots[0].astimezone(tz):%Y-%m-%d %H:%M %Z} ({ago(slots[0], now)})",
            "never" if record is None
            else f"{_stale() if view.is_stale(record) else record.status} "
                 f"{ago(record.finished_at or record.created_at, overview.loaded_at)}",
            view.state,
        ))
    if ctx.json:
        ctx.emit_json(rows)
        return ExitCode.OK
    ctx.out(table(("JOB", "SCHEDULE", "NEXT RUN", "LAST RUN", "STATE"), human))
    for view in overview.jobs:
        if view.paused:
            p = view.pause
            ctx.out(f"{view.job_id}: "
                    f"{paused_note(p.paused_by, p.paused_at, p.paused_reason, overview.loaded_at)}")
    return ExitCode.OK


# --- trigger / preview -----------------------------------------------------------------------


def _run_params(args: argparse.Namespace) -> RunParams:
    """Parsed only: whether they make sense for the job is the job's own check."""
    return RunParams(date=_parse_date("--date", args.date),
                     date_from=_parse_date("--from", args.date_from),
                     date_to=_parse_date("--to", args.date_to))


class _ProgressLine:
    """At most one progress line a second on stderr, for people watching a long run."""

    def __init__(self, ctx: CliContext, job_id: str) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self.last = time.monotonic()  # quiet for runs shorter than a second

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if now - self.last < 1.0:
            return
        self.last = now
        total = "?" if p.total is None else str(p.total)
        errors = f", {p.errors} failed" if p.errors else ""
        self.ctx.err(f"{self.job_id}: {p.done}/{total} items{errors}")


@contextmanager
def _stop_on_signals(stop: threading.Event, ctx: CliContext) -> Iterator[None]:
    """Ctrl-C / SIGTERM ask the job to stop after the tenant in hand, so the run is recorded
    as interrupted instead of left `running`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        ctx.err("storeflow-ops: stopping after the tenant in hand (again to abort)")

    previous = {sig: signal.signal(sig, ask) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_trigger(ctx: CliContext, args: argparse.Namespace) -> int:
    from jobs.registry import check_run, get_job  # the jobs themselves: only a run needs them

    job_id = get_job(args.job).id
    dry_run = args.command == "preview" or bool(getattr(args, "dry_run", False))
    now = _parse_now(args.now)
    params = _run_params(args)
    # The run makes the same check; here first, so a bad request is a usage error (exit 2)
    # even when the database is down.
    check_run(ctx.settings, job_id, params, now, dry_run=dry_run, clock_now=utc_now())
    engine = ctx.engine
    stop = threading.Event()
    progress = None if ctx.json else _ProgressLine(ctx, job_id)

    def started(run_id: int | None) -> None:
        if not ctx.json:
            what = "previewing" if run_id is None else f"run {run_id}:"
            ctx.err(f"{what} {job_id} at {stamp(now, zone=True)}")

    def execute(runner_id: str | None) -> RunReport:
        with _stop_on_signals(stop, ctx):
            return runs.execute(
                engine, ctx.settings, job_id, now=now, started_by=who_am_i(),
                dry_run=dry_run, runner_id=runner_id, params=params, on_progress=progress,
                stop=stop, on_started=started, reason=getattr(args, "reason", None),
            )

    if dry_run:
        report = execute(None)
    else:
        # Registered while the run lasts, so a killed CLI leaves a run that a runner or the
        # next trigger recognises as dead (its heartbeat stops) and recovers.
        presence = Presence(engine, RunnerKind.CLI, clock=utc_now,
                            interval=ctx.settings.runner.heartbeat_interval)
        with presence:
            report = execute(presence.id)

    if ctx.json:
        _emit_report_json(ctx, report)
    else:
        _print_report(ctx, report)
    return int(report.exit_code)


def _print_report(ctx: CliContext, report: RunReport, record: RunRecord | None = None) -> None:
    run = "preview" if report.run_id is None else f"run {report.run_id}"
    ctx.out(f"{report.message}: {report.job_id} ({run}, {report.status}, {report.trigger})")
    ctx.out(f"  now:       {stamp(report.reference_time, zone=True)}")
    if report.scheduled_for is not None:
        retry = f"  (attempt {record.attempt})" if record is not None and record.attempt > 1 else ""
        ctx.out(f"  slot:      {stamp(report.scheduled_for, zone=True)}{retry}")
    if record is not None:
        ctx.out(f"  by:        {terminal_safe(record.started_by)}")
    ctx.out(f"  started:   {stamp(report.started_at, zone=True)}  "
            f"took {duration((report.finished_at - report.started_at).total_seconds())}")
    ctx.out(f"  summary:   {terminal_safe(compact(report.summary)) or '-'}")
    processed, failed = (report.processed, len(report.errors)) if record is None else (
        record.processed, record.errors)
    ctx.out(f"  items:     {processed} ({failed} failed)")
    if report.error:
        ctx.out(f"  error:     {terminal_safe(report.error)}")
    if report.items:
        ctx.out("")
        ctx.out(_items_table(report))


def _items_table(report: RunReport) -> str:
    rows = []
    for item in report.items:
        note = (item.error or "") if item.status is ItemStatus.ERROR else item_note(item)
        rows.append((item.tenant_id or "-", item.tenant_name or "", item.action,
                     str(item.status), note))
    return table(("TENANT", "NAME", "ACTION", "STATUS", "DETAIL / ERROR"), rows)


# --- history / show --------------------------------------------------------------------------


def cmd_history(ctx: CliContext, args: argparse.Namespace) -> int:
    from jobs.registry import get_job

    job_id = get_job(args.job).id if args.job else None
    if args.limit < 1:
        raise UsageError("--limit: must be at least 1")
    records = runs.history(ctx.engine, job_id, limit=args.limit)
    if ctx.json:
        ctx.emit_json([r.to_json() for r in records])
        return ExitCode.OK
    if not records:
        ctx.err("no runs yet")
        return ExitCode.OK
    rows = [
        # A retry shows which attempt of its slot it is.
        (r.run_id, r.job_id, r.trigger if r.attempt == 1 else f"{r.trigger}, attempt {r.attempt}",
         r.status,
         stamp(r.scheduled_for or r.reference_time, zone=True),
         stamp(r.started_at, zone=True, missing="-"),
         duration(r.duration_seconds, missing="-"),
         r.processed, r.errors)
        for r in records
    ]
    ctx.out(table(("RUN", "JOB", "TRIGGER", "STATUS", "SLOT / NOW", "STARTED", "TOOK",
                   "ITEMS", "ERRORS"), rows))
    return ExitCode.OK


def _emit_report_json(ctx: CliContext, report: RunReport) -> None:
    """A run's report as JSON, its items written one at a time."""
    ctx.emit_json_with_items(report.to_json(items=False), ("results", "items"),
                             (i.to_json() for i in report.items))


def cmd_show(ctx: CliContext, args: argparse.Namespace) -> int:
    record = runs.get_run(ctx.engine, args.run_id)
    if record is None:
        raise UsageError(f"no run {args.run_id}")
    report = runs.report_for(ctx.engine, record, errors_only=args.errors)
    if ctx.json:
        _emit_report_json(ctx, report)
    else:
        _print_report(ctx, report, record)
    return ExitCode.OK


# --- analytics -------------------------------------------------------------------------------


def cmd_analytics(ctx: CliContext, args: argparse.Namespace) -> int:
    from jobs.analytics import cache_key, last_days, latest_day, read_days

    if args.tenant is None:
        raise UsageError("analytics needs a TENANT (an id or part of a name), --all or verify")
    if args.csv or args.limit is not None or args.sort != "revenue":
        raise UsageError("--sort, --limit and --csv go with --all")
    the_date = _parse_date("--date", args.date)
    tenant = find_tenant(ctx.engine, args.tenant)
    tenant_id, name = tenant.id, tenant.name
    if the_date is not None:
        days = [the_date]
    else:
        days = last_days(latest_day(ctx.settings, utc_now()), ANALYTICS_DAYS)
    cache = ctx.cache()
    values = read_days(cache, tenant_id, days)
    if ctx.json:
        ctx.emit_json([
            {"date": v.day.isoformat(), "key": cache_key(tenant_id, v.day), "value": v.value,
             "ttl": v.ttl}
            for v in values
        ])
        return ExitCode.OK
    ctx.err(f"{terminal_safe(name)} ({terminal_safe(tenant_id)}), from {cache.description}")
    rows: list[tuple[object, ...]] = []
    for v in values:
        if v.value is None:
            rows.append((v.day.isoformat(), "-", "-", "-", "-", "not cached"))
            continue
        d = v.value
        rows.append((v.day.isoformat(), number(d.get("orders"), missing="-"),
                     amount(d.get("revenue"), missing="-"),
                     number(d.get("newCustomers"), missing="-"),
                     number(d.get("productsSold"), missing="-"),
                     "no expiry" if v.ttl is None else span(timedelta(seconds=v.ttl))))
    ctx.out(table(("DATE", "ORDERS", "REVENUE", "NEW CUSTOMERS", "PRODUCTS SOLD", "TTL"), rows))
    return ExitCode.OK


# --- outbox ----------------------------------------------------------------------------------


def cmd_outbox(ctx: CliContext, args: argparse.Namespace) -> int:
    from jobs.outbox import counts_by_status, search

    if args.limit < 1:
        raise UsageError("--limit: must be at least 1")
    if args.html:
        raise UsageError("--html goes with `outbox show ID`")
    tenant = find_tenant(ctx.engine, args.tenant) if args.tenant else None
    page = search(ctx.engine, text=args.search or "", status=args.status,
                  tenant_id=None if tenant is None else tenant.id, limit=args.limit)
    entries = page.entries
    if ctx.json:
        ctx.emit_json([e.to_json() for e in entries])
        return ExitCode.OK
    rows = [(e.id, e.kind, e.tenant_id or "-", e.recipient, e.status, e.attempts,
             stamp(e.created_at, zone=True), stamp(e.sent_at, zone=True, missing="-"),
             e.subject) for e in entries]
    if rows:
        ctx.out(table(("ID", "KIND", "TENANT", "TO", "STATUS", "ATTEMPTS", "QUEUED", "SENT",
                       "SUBJECT"), rows))
        if page.next_before is not None:
            ctx.err(f"the newest {len(rows):,} shown; --limit shows more")
    else:
        ctx.err("no emails match" if (args.search or tenant) else
                "the outbox is empty" if args.status is None else f"no {args.status} emails")
    pending = counts_by_status(ctx.engine).get("pending", 0)
    if pending and not ctx.settings.smtp_url:
        ctx.err(
            f"note: {plural(pending, 'pending email')} {'is' if pending == 1 else 'are'} "
            "not being sent: SMTP_URL is not set. "
            "Set SMTP_URL (smtp://user:pass@host:port) and MAIL_FROM, then run "
            "`storeflow-ops outbox send` or the runner."
        )
    return ExitCode.OK


def cmd_outbox_show(ctx: CliContext, args: argparse.Namespace) -> int:
    """One email's text body (or, with --html, its HTML body) on stdout, exactly as
    queued; its headers on stderr, so a pipe gets the body alone."""
    from jobs.outbox import get_entry

    if len(args.ids) != 1:
        raise UsageError("outbox show takes one email ID")
    entry = get_entry(ctx.engine, args.ids[0])
    if entry is None:
        raise UsageError(f"no email with id {args.ids[0]}")
    body = entry.body_html if args.html else entry.body_text
    if ctx.json:
        ctx.emit_json({**entry.to_json(), "body": body,
                       "format": "html" if args.html else "text"})
        return ExitCode.OK
    ctx.err(f"email {entry.id} · {entry.status} · to {entry.recipient} · {entry.subject}")
    ctx.out(body.rstrip("\n"))
    return ExitCode.OK


# --- pause / resume / status -----------------------------------------------------------------


def _set_paused(ctx: CliContext, args: argparse.Namespace, paused: bool) -> int:
    from jobs.registry import get_job

    job_id = get_job(args.job).id
    changed = runs.set_paused(ctx.engine, job_id, paused, by=who_am_i(), now=utc_now(),
                              reason=args.reason)
    word = "paused" if paused else "resumed"
    if changed:
        ctx.out(f"{job_id}: {word}")
    else:
        ctx.out(f"{job_id}: already {'paused' if paused else 'running on schedule'}; "
                "nothing changed")
    return ExitCode.OK


def cmd_pause(ctx: CliContext, args: argparse.Namespace) -> int:
    return _set_paused(ctx, args, True)


def cmd_resume(ctx: CliContext, args: argparse.Namespace) -> int:
    return _set_paused(ctx, args, False)


def cmd_status(ctx: CliContext, args: argparse.Namespace) -> int:
    overview = _overview(ctx, tuple(RunnerKind))
    processes, now = overview.runners, overview.loaded_at
    jobs = [
        {"job": view.job_id, "enabled": view.enabled,
         "paused": view.paused, "running": view.running is not None,
         "run_id": None if view.running is None else view.running.run_id,
         "stale": view.is_stale(view.running),
         "schedule": view.schedule.expression,
         "timezone": view.schedule.timezone,
         "schedule_source": overview.schedules.source_of(view.job_id)}
        for view in overview.jobs
    ]
    if ctx.json:
        ctx.emit_json({"runner_alive": overview.runner_alive,
                       "runners": [p.to_json() for p in processes],
                       "jobs": jobs, "database": redact(ctx.settings.database_url)})
    else:
        ctx.out(f"database: {redact(ctx.settings.database_url)}")
        if processes:
            ctx.out(table(
                ("KIND", "HOST", "PID", "STARTED", "LAST HEARTBEAT", "ALIVE"),
                [(p.kind, p.host, p.pid, stamp(p.started_at, zone=True),
                  f"{stamp(p.heartbeat_at, zone=True)} ({ago(p.heartbeat_at, now)})",
                  "yes" if p.alive else "no") for p in processes],
            ))
        ctx.out("")
        ctx.out(table(
            ("JOB", "STATE", "RUNNING", "SCHEDULE"),
            [(view.job_id, view.state,
              "-" if view.running is None else f"run {view.running.run_id}"
              + (f", {_stale()}" if view.is_stale(view.running) else ""),
              f"{view.schedule.expression} {view.schedule.timezone} "
              f"({overview.schedules.source_of(view.job_id)})") for view in overview.jobs],
        ))
    if not overview.runner_alive:
        ctx.err("storeflow-ops: no runner is alive: scheduled slots are not firing "
                "(start one with `storeflow-ops run`)")
        return ExitCode.FAILED
    return ExitCode.OK


# --- db upgrade ------------------------------------------------------------------------------


def cmd_db_upgrade(ctx: CliContext, args: argparse.Namespace) -> int:
    from jobs.db import sqlite_file
    from jobs.migrate import upgrade

    # Not ctx.engine: that one migrates on open, and this command should report the change.
    # Creating the ops_ tables is this command's purpose, so it may create a new SQLite
    # file, but only in a folder that exists: a mistyped folder is still refused.
    path = sqlite_file(ctx.settings.database_url)
    engine = make_engine(ctx.settings.database_url,
                         create=path is not None and path.parent.is_dir())
    try:
        check_reachable(engine)
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    where = redact(ctx.settings.database_url)
    if before == after:
        ctx.out(f"ops_ tables already at revision {after} ({where})")
    else:
        ctx.out(f"ops_ tables upgraded: {before or 'none'} -> {after} ({where})")
    return ExitCode.OK


# --- demo ------------------------------------------------------------------------------------


def default_demo_path() -> Path:
    from jobs.db import default_sqlite_path

    return default_sqlite_path().with_name("demo.sqlite3")


DEMO_PROGRESS_FROM = 1_000  # tenants; a smaller demo is built before a bar would help
_DEMO_STEPS = {"stores": "making stores and orders", "rows": "writing the platform tables",
               "history": "running a week of jobs"}


@contextmanager
def _demo_progress(ctx: CliContext, tenants: int) -> Iterator[Callable[[str, float], None] | None]:
    """A progress bar on stderr while a large demo builds, only when stderr is a terminal
    (a log or a pipe gets the one line that says what is being built)."""
    isatty = getattr(ctx.stderr, "isatty", None)
    if tenants < DEMO_PROGRESS_FROM or not (isatty and isatty()):
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description:<28}"), BarColumn(), TaskProgressColumn(),
                   TimeElapsedColumn(), console=Console(file=ctx.stderr), transient=True)
    task = bar.add_task(_DEMO_STEPS["stores"], total=1.0)

    def update(step: str, fraction: float) -> None:
        # Started at the first step, after the line saying where the demo goes.
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=fraction, description=_DEMO_STEPS.get(step, step))

    try:
        yield update
    finally:
        bar.stop()


def cmd_demo(ctx: CliContext, args: argparse.Namespace) -> int:
    from jobs.demo import build_demo, looks_like_url

    if args.tenants < 1:
        raise UsageError("--tenants: must be at least 1")
    if args.path and looks_like_url(args.path):
        raise UsageError(f"--path takes a SQLite file, and {redact(args.path)} looks like a "
                         "database URL; to build into a database, give it as --database-url "
                         "(or DATABASE_URL)")
    given_url = getattr(args, "database_url", None)
    if args.path and given_url:
        raise UsageError("give --path (a SQLite file) or --database-url (a database), not both")
    if not args.no_tui:
        from console.cli import require_terminal

        require_terminal("build it with `storeflow-ops demo --no-tui`, then use the commands")
    # Into the database named by --database-url or DATABASE_URL when one is given (--path
    # still wins over the environment), else a SQLite file of its own.
    target: str | Path
    if not args.path and (given_url or os.environ.get("DATABASE_URL")):
        target = url = ctx.settings.database_url
        where = redact(url)
    else:
        target = Path(args.path).expanduser().resolve() if args.path else default_demo_path()
        url = f"sqlite:///{target}"
        where = str(target)
    # The demo's own embedded cache, whatever REDIS_URL says.
    settings = replace(ctx.settings, database_url=url, cache_url=None)
    with _demo_progress(ctx, args.tenants) as progress:
        info = build_demo(target, args.tenants, utc_now(), settings=settings, progress=progress,
                          checked=lambda: ctx.err(f"building the demo database in {where} ..."))
    ctx.out(f"demo database: {where}")
    ctx.out(f"  {plural(info.tenants, 'tenant')}, {plural(info.orders, 'order')}, "
            f"{plural(info.runs, 'run')}, {plural(info.emails, 'email')}")
    ctx.out(f"  try: DATABASE_URL={redact(url)} storeflow-ops jobs")
    if args.no_tui:
        return ExitCode.OK
    from console.tui.app import run_app  # Textual, loaded only when the console opens

    return int(run_app(settings, read_only=bool(args.read_only)))

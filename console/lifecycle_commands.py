"""`audit` (who changed what) and `history prune` (retention by hand)."""

from __future__ import annotations

import argparse
import os

from console.commands import table
from console.context import CliContext
from jobs import audit, retention
from jobs.errors import ExitCode, PruneBusyError, UsageError
from jobs.humanize import plural, stamp
from jobs.presence import who_am_i
from jobs.timeutil import utc_now


def cmd_audit(ctx: CliContext, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit: must be at least 1")
    entries = audit.recent(ctx.engine, args.limit)
    if ctx.json:
        ctx.emit_json([e.as_json() for e in entries])
        return ExitCode.OK
    if not entries:
        ctx.err("nothing recorded yet")
        return ExitCode.OK
    ctx.out(table(("ID", "AT", "ACTOR", "ACTION", "JOB", "RUN", "REASON", "DETAIL"),
                  [(e.id, stamp(e.at, zone=True), e.actor, e.action, e.job or "-",
                    e.run_id or "-", e.reason or "-", e.detail or "")
                   for e in entries]))
    return ExitCode.OK


def cmd_history_prune(ctx: CliContext, args: argparse.Namespace) -> int:
    now = utc_now()
    if args.dry_run:
        result = retention.count(ctx.engine, ctx.settings, now)
    else:
        me = who_am_i()
        result = retention.prune(ctx.engine, ctx.settings, now, actor=me,
                                 holder=f"cli:{os.getpid()}:{me}"[:64])
        if result.skipped:
            raise PruneBusyError(result.skipped)
    if ctx.json:
        ctx.emit_json(result.to_json())
        return ExitCode.OK
    h = ctx.settings.history
    verb = "would delete" if result.dry_run else "deleted"
    ctx.out(f"{verb}: {plural(result.runs, 'run')}, {plural(result.run_items, 'run item')}, "
            f"{plural(result.emails, 'email')}, {plural(result.alerts, 'alert')}")
    ctx.err(f"rules: succeeded runs and alerts after {h.keep_days} days, other runs and "
            f"dead or failed email after {h.keep_failed_days}, sent email after "
            f"{ctx.settings.outbox.keep_sent_days}; each job's newest {h.keep_min_runs} "
            "runs are kept")
    return ExitCode.OK

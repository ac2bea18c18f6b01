"""`alerts [--limit N] [--json]` and `alerts test`: alert events with their deliveries, and a
test alert sent to every target now.

Targets are shown as labels only (a webhook's scheme and host, or the email address): a
webhook URL's path is its credential.

Exit codes of `alerts test`: 0 every target answered (an email target: queued in the
outbox); 1 at least one failed; 2 no target is configured.
"""

from __future__ import annotations

import argparse
import os

from console.commands import table
from console.context import CliContext
from jobs import alerts
from jobs.errors import ExitCode, UsageError
from jobs.presence import who_am_i
from jobs.timeutil import iso_z


def cmd_alerts(ctx: CliContext, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    records = alerts.list_alerts(ctx.engine, limit=args.limit)
    if ctx.json:
        ctx.emit_json([r.to_json() for r in records])
        return ExitCode.OK
    if not records:
        ctx.out("no alerts yet")
        return ExitCode.OK
    rows = []
    for r in records:
        deliveries = ", ".join(
            f"{d.target} {d.status}" + (f" ({d.attempts} attempts: {d.last_error})"
                                        if d.last_error else "")
            for d in r.deliveries) or "no targets"
        rows.append((r.id, iso_z(r.at), r.event, r.job_id or "-", r.run_id or "-", deliveries))
    ctx.out(table(("ID", "AT", "EVENT", "JOB", "RUN", "DELIVERIES"), rows))
    return ExitCode.OK


def cmd_alerts_test(ctx: CliContext, args: argparse.Namespace) -> int:
    settings = ctx.settings
    if not alerts.targets(settings.alerts):
        raise UsageError("no alert targets: set [alerts] webhooks or emails in schedules.toml, "
                         "or STOREFLOW_ALERT_WEBHOOKS")
    me = who_am_i()
    result = alerts.send_test(ctx.engine, settings, worker_id=f"cli:{os.getpid()}:{me}"[:64],
                              by=me)
    if ctx.json:
        ctx.emit_json({"sent": result.sent, "failed": result.dead,
                       "targets": [{"target": label, "status": status, "error": error}
                                   for label, status, error in result.outcomes]})
    else:
        for label, status, error in result.outcomes:
            word = "ok" if status == "sent" else "FAILED"
            ctx.out(f"{label}: {word}" + (f" ({error})" if error else ""))
    return ExitCode.FAILED if result.dead else ExitCode.OK

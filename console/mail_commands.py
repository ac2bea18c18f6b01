"""`outbox send` and `outbox retry ID...`: deliver the outbox now, or give emails another go.

Exit codes of `outbox send`:
  0  the drain ran: every due email was sent or rescheduled after a temporary failure,
     or nothing could be tried because SMTP_URL is not set (said on stderr);
  1  at least one email was rejected permanently (5xx -> failed) or went dead;
  2  SMTP_URL or MAIL_FROM is malformed;
  3  the SMTP server (or the database) could not be reached: the drain stopped and the
     emails it had in hand are rescheduled.
"""

from __future__ import annotations

import argparse
import os

from console.context import CliContext
from jobs import sender
from jobs.errors import ExitCode, UsageError
from jobs.humanize import plural
from jobs.outbox import counts_by_status
from jobs.presence import who_am_i
from jobs.timeutil import utc_now


def cmd_outbox_send(ctx: CliContext, args: argparse.Namespace) -> int:
    if args.ids:
        raise UsageError("outbox send takes no IDs (to retry emails: outbox retry ID...)")
    settings = ctx.settings
    smtp = sender.check_mail_settings(settings)
    now = utc_now()
    # The pid tells apart two `outbox send` of one user on one host: each may only send
    # and mark the emails it claimed itself.
    result = sender.drain(ctx.engine, settings, now=now, clock=utc_now, smtp=smtp,
                          sender_id=f"cli:{os.getpid()}:{who_am_i()}"[:64])
    if ctx.json:
        ctx.emit_json(result.to_json())
    if result.skipped_reason:
        pending = counts_by_status(ctx.engine).get("pending", 0)
        ctx.err(f"storeflow-ops: nothing sent: {result.skipped_reason}; "
                f"{plural(pending, 'pending email')} {'waits' if pending == 1 else 'wait'} "
                "in the outbox")
        return ExitCode.OK
    if not ctx.json:
        ctx.out(f"sent {result.sent}, retry later {result.retried}, "
                f"failed {result.failed}, dead {result.dead}")
    if result.unreachable:
        assert smtp is not None
        ctx.err(f"storeflow-ops: SMTP server unreachable at {smtp.display}: "
                f"{result.unreachable}")
        return ExitCode.UNREACHABLE
    if result.failed or result.dead:
        ctx.err("storeflow-ops: some emails could not be delivered; "
                "see `storeflow-ops outbox --status failed` and `--status dead`")
        return ExitCode.FAILED
    return ExitCode.OK


def cmd_outbox_retry(ctx: CliContext, args: argparse.Namespace) -> int:
    if not args.ids:
        raise UsageError("outbox retry needs the IDs of dead or failed emails")
    ids = sender.retry(ctx.engine, args.ids, utc_now(), actor=who_am_i())
    if ctx.json:
        ctx.emit_json({"retried": ids})
    else:
        ctx.out(f"back to pending: {', '.join(str(i) for i in ids)}")
        if not ctx.settings.smtp_url:
            ctx.err("storeflow-ops: note: SMTP_URL is not set, so nothing will be sent yet")
    return ExitCode.OK

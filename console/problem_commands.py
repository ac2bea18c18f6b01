"""`problems [--since DURATION] [--job JOB] [--json]`: what failed lately across every job.

Text output groups the problems by job and error, most frequent first, with the tenants
each one hit; `--json` lists them one by one (`{run_id, job, started_at, status,
tenant_id, action, error}`, `tenant_id` null for a failed run), newest run first.
Exit code 0 whether or not there are problems: finding them is the command's success.
"""

from __future__ import annotations

import argparse

from console.commands import table
from console.context import CliContext
from jobs import problems
from jobs.errors import ExitCode
from jobs.humanize import ago, plural, stamp
from jobs.registry import get_job
from jobs.timeutil import utc_now

TENANTS_SHOWN = 5  # per group, in text output


def cmd_problems(ctx: CliContext, args: argparse.Namespace) -> int:
    window = problems.parse_since(args.since)
    job_id = get_job(args.job).id if args.job else None
    now = utc_now()
    since = now - window
    if ctx.json:
        ctx.emit_json([p.to_json() for p in problems.iter_problems(
            ctx.engine, since=since, job_id=job_id)])
        return ExitCode.OK
    groups = problems.groups(ctx.engine, since=since, job_id=job_id)
    scope = f" of {job_id}" if job_id else " across jobs"
    if not groups:
        ctx.err(f"no problems{scope} in the last {problems.window_label(window)} "
                f"(since {stamp(since, zone=True)})")
        return ExitCode.OK
    total = sum(g.count for g in groups)
    ctx.err(f"{plural(total, 'problem')}{scope} in the last {problems.window_label(window)} "
            f"(since {stamp(since, zone=True)}), by error:")
    rows = []
    for g in groups:
        rows.append((f"{g.count:,}", g.job_id, plural(g.tenants, "tenant") if g.tenants else "-",
                     plural(g.runs, "run"), f"#{g.last_run_id} {ago(g.last_at, now)}", g.error))
    ctx.out(table(("COUNT", "JOB", "TENANTS", "RUNS", "LAST", "ERROR"), rows))
    for g in groups:
        if not g.tenants:
            continue
        lines = problems.problems(ctx.engine, since=since, job_id=g.job_id, error=g.error,
                                  limit=TENANTS_SHOWN + 1)
        names = [f"{p.tenant_name or p.tenant_id} ({p.tenant_id}, run #{p.run_id})"
                 for p in lines[:TENANTS_SHOWN]]
        more = " …" if len(lines) > TENANTS_SHOWN else ""
        ctx.out(f"\n{g.job_id}: {g.error}\n  " + "\n  ".join(names) + more)
    return ExitCode.OK

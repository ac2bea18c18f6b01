"""`storeflow-ops`: the command line. Data on stdout, diagnostics on stderr, exit codes
from jobs.errors.ExitCode, and never a traceback for an expected error.

Operators run it in scripts and loops, so it answers at once: this module imports only
what parsing the arguments needs (`--help` loads neither SQLAlchemy nor the settings),
and each command imports its own module, and what that needs, when it runs
(tests/test_cli_imports.py holds it to that; bench/cli_bench.py times it)."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from importlib import import_module
from typing import TYPE_CHECKING

from jobs.errors import ExitCode, JobRunningError, OpsError, UsageError
from jobs.job_ids import JOB_IDS
from jobs.redaction import has_secret, scrub

if TYPE_CHECKING:
    from console.context import CliContext

# command -> "module:function"; imported on demand so `storeflow-ops jobs` never pays for Textual.
HANDLERS: dict[str, str] = {
    "tui": "console.tui.app:cmd_tui",
    "demo": "console.commands:cmd_demo",
    "run": "console.runner:cmd_run",
    "jobs": "console.commands:cmd_jobs",
    "trigger": "console.commands:cmd_trigger",
    "preview": "console.commands:cmd_trigger",
    "history": "console.commands:cmd_history",
    "show": "console.commands:cmd_show",
    "analytics": "console.commands:cmd_analytics",
    "analytics --all": "console.analytics_commands:cmd_analytics_all",
    "analytics verify": "console.analytics_commands:cmd_analytics_verify",
    "outbox": "console.commands:cmd_outbox",
    "outbox send": "console.mail_commands:cmd_outbox_send",
    "outbox retry": "console.mail_commands:cmd_outbox_retry",
    "outbox show": "console.commands:cmd_outbox_show",
    "problems": "console.problem_commands:cmd_problems",
    "pause": "console.commands:cmd_pause",
    "resume": "console.commands:cmd_resume",
    "status": "console.commands:cmd_status",
    "db upgrade": "console.commands:cmd_db_upgrade",
    "import-vercel": "console.vercel_import:cmd_import_vercel",
    "alerts": "console.alert_commands:cmd_alerts",
    "alerts test": "console.alert_commands:cmd_alerts_test",
    "audit": "console.lifecycle_commands:cmd_audit",
    "history prune": "console.lifecycle_commands:cmd_history_prune",
}


# The commands that open the cache: a malformed REDIS_URL is refused before they start.
# The others never connect to it, and checking it would load redis-py for nothing. The
# demo uses its own embedded cache.
CACHE_COMMANDS = frozenset({None, "tui", "run", "trigger", "preview", "analytics"})


class _UsageExit(SystemExit):
    """argparse's refusal, with its message kept for the --json error document."""

    def __init__(self, message: str) -> None:
        super().__init__(ExitCode.USAGE)
        self.message = message


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise _UsageExit(f"{self.prog}: error: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="storeflow-ops",
                description="Run and inspect StoreFlow's recurring jobs.",
                epilog="Secrets belong in the environment (DATABASE_URL, REDIS_URL, SMTP_URL, "
                       "CRON_SECRET_TOKEN): a password given in --database-url or --cache-url "
                       "is visible to every user of the machine in `ps`.")
    # Accepted before the command and after it (`storeflow-ops run --config FILE`): after
    # it, an option only overrides when given (SUPPRESS), so one before it still counts.
    common = _Parser(add_help=False)
    for target in (p, common):
        default = None if target is p else argparse.SUPPRESS
        target.add_argument("--config", metavar="PATH", default=default,
                            help="schedules.toml to use")
        target.add_argument("--database-url", metavar="URL", default=default,
                            help="overrides DATABASE_URL; put a password in DATABASE_URL, "
                                 "not here (`ps` shows command lines)")
        target.add_argument("--cache-url", metavar="URL", default=default,
                            help="Redis URL; overrides REDIS_URL/KV_URL; a password belongs "
                                 "in REDIS_URL, not here")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    add_parser = partial(sub.add_parser, parents=[common])

    def job_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("job", metavar="JOB", help=f"one of: {', '.join(JOB_IDS)}")

    def json_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--json", action="store_true", help="print one JSON document")

    def reason_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--reason", metavar="TEXT", help="why, for the audit (`audit`)")

    sp = add_parser("tui", help="open the console (the default)")
    sp.add_argument("--read-only", action="store_true", help="hide every action that writes")

    sp = add_parser("demo", help="build a demo database (a SQLite file of its own, or the "
                    "empty database --database-url/DATABASE_URL names) and open the console")
    sp.add_argument("--tenants", type=int, default=40, metavar="N")
    sp.add_argument("--path", metavar="FILE", help="where to write the demo SQLite file "
                    "(instead of DATABASE_URL)")
    sp.add_argument("--no-tui", action="store_true", help="build the database only")
    sp.add_argument("--read-only", action="store_true")

    sp = add_parser("run", help="the headless runner: fire every slot exactly once")
    sp.add_argument("--http", metavar="HOST:PORT", help="also serve the seed's HTTP endpoints")
    sp.add_argument("--metrics", metavar="HOST:PORT",
                    help="also serve /metrics and /healthz alone (no token, no triggers)")
    sp.add_argument("--log-format", choices=("text", "json"), default="text")

    sp = add_parser("jobs", help="jobs, schedules, next runs, last runs")
    sp.add_argument("--now", metavar="TS", help="reference time (ISO 8601 with offset)")
    sp.add_argument("--count", type=int, default=3, metavar="N", help="next N slots")
    json_arg(sp)

    for name in ("trigger", "preview"):
        sp = add_parser(name, help="run a job now" if name == "trigger"
                        else "show what a run would do, writing nothing")
        job_arg(sp)
        if name == "trigger":
            sp.add_argument("--dry-run", action="store_true", help="same as preview")
        sp.add_argument("--now", metavar="TS", help="reference time (ISO 8601 with offset)")
        sp.add_argument("--date", metavar="D", help="analytics: the day to aggregate")
        sp.add_argument("--from", dest="date_from", metavar="D", help="analytics: backfill from")
        sp.add_argument("--to", dest="date_to", metavar="D", help="analytics: backfill to")
        if name == "trigger":
            reason_arg(sp)
        json_arg(sp)

    sp = add_parser("history", help="run history; `history prune` applies the retention rules")
    sp.add_argument("job", nargs="?", metavar="JOB", help="a job, or `prune`")
    sp.add_argument("--limit", type=int, default=20, metavar="N")
    sp.add_argument("--dry-run", action="store_true",
                    help="prune: count what would be deleted, deleting nothing")
    json_arg(sp)

    sp = add_parser("audit", help="who changed what: triggers, pauses, retries, prunes")
    sp.add_argument("--limit", type=int, default=50, metavar="N")
    json_arg(sp)

    sp = add_parser("show", help="one run and its items")
    sp.add_argument("run_id", type=int, metavar="RUN_ID")
    sp.add_argument("--errors", action="store_true", help="only the items that failed")
    json_arg(sp)

    sp = add_parser("analytics", help="cached daily analytics: a tenant's days, every "
                    "tenant's day (--all), or a day checked against the database (verify)")
    sp.add_argument("tenant", metavar="TENANT", nargs="?",
                    help="an id or a unique part of a name (any case); `verify` checks a day")
    sp.add_argument("--date", metavar="D", help="one day (default: a tenant's last 14 days; "
                    "with --all and verify, yesterday in the job's timezone)")
    sp.add_argument("--all", action="store_true", help="every tenant's cached value for a day")
    sp.add_argument("--sort", default="revenue", metavar="FIELD",
                    help="--all: orders, revenue, newCustomers, productsSold or name (default "
                         "revenue, highest first; names A to Z; tenants without a value last)")
    sp.add_argument("--limit", type=int, metavar="N", help="--all: the first N tenants")
    sp.add_argument("--csv", action="store_true", help="--all: CSV with a header row")
    json_arg(sp)

    sp = add_parser("outbox", help="the email outbox")
    sp.add_argument("action", nargs="?", choices=("send", "retry", "show"),
                    help="deliver now / retry / one email's body")
    sp.add_argument("ids", nargs="*", type=int, metavar="ID",
                    help="retry: the emails; show: the email")
    sp.add_argument("--status", choices=("pending", "sent", "failed", "dead"))
    sp.add_argument("--tenant", metavar="T", help="one tenant's emails: its id or name")
    sp.add_argument("--search", metavar="TEXT",
                    help="emails whose recipient, subject, tenant id or name contains TEXT")
    sp.add_argument("--limit", type=int, default=50, metavar="N")
    sp.add_argument("--html", action="store_true", help="show: the HTML body, not the text")
    json_arg(sp)

    sp = add_parser("problems", help="failed items and failed runs across jobs, by error")
    sp.add_argument("--since", metavar="DURATION", default="24h",
                    help="how far back: 24h (default), 7d, 90m, or seconds")
    sp.add_argument("--job", metavar="JOB", help=f"only this job: {', '.join(JOB_IDS)}")
    json_arg(sp)

    for name in ("pause", "resume"):
        sp = add_parser(name, help=f"{name} a job's schedule")
        job_arg(sp)
        reason_arg(sp)

    sp = add_parser("status", help="runners and jobs; exits 1 when no runner is alive")
    json_arg(sp)

    sp = add_parser("db", help="database maintenance")
    sp.add_argument("action", choices=("upgrade",))

    sp = add_parser("alerts", help="alert events and their deliveries; `alerts test` sends one")
    sp.add_argument("action", nargs="?", choices=("test",), help="send a test alert now")
    sp.add_argument("--limit", type=int, default=20, metavar="N")
    json_arg(sp)

    sp = add_parser("import-vercel", help="turn a vercel.json's crons into schedules.toml")
    sp.add_argument("path", metavar="VERCEL_JSON")
    sp.add_argument("--write", metavar="TOML", help="write to this file instead of stdout")
    return p


def _handler(args: argparse.Namespace) -> Callable[[CliContext, argparse.Namespace], int]:
    command = args.command or "tui"
    if command in ("outbox", "alerts") and args.action:
        command = f"{command} {args.action}"
    elif command == "db":
        command = f"db {args.action}"
    elif command == "history" and args.job == "prune":
        command = "history prune"
    elif command == "history" and args.dry_run:
        raise UsageError("--dry-run goes with `history prune`")
    elif command == "analytics" and args.tenant == "verify":
        command = "analytics verify"
    elif command == "analytics" and args.all:
        command = "analytics --all"
    module, _, func = HANDLERS[command].partition(":")
    handler: Callable[[CliContext, argparse.Namespace], int] = getattr(import_module(module), func)
    return handler


def require_terminal(instead: str) -> None:
    """The console reads keys from stdin and draws on stderr; without a terminal there
    (cron, systemd, a pipe) it would spin on a dead input and write escape codes to a log."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise UsageError(f"the console needs a terminal (stdin and stderr are not one); {instead}")


def _error_document(message: str, code: int, run_id: int | None = None) -> None:
    """With --json, a failure is a JSON document on stdout too, so a script reading stdout
    sees what went wrong; stderr keeps its one line."""
    doc: dict[str, object] = {"error": message, "exit_code": code}
    if run_id is not None:
        doc["run_id"] = run_id
    # A closed stdout (a reader that went away) leaves the stderr line to tell it.
    with contextlib.suppress(OSError):
        print(json.dumps(doc, indent=2), file=sys.stdout, flush=True)


def warn_secrets_in_argv(args: argparse.Namespace) -> str | None:
    """The one warning for a password given on the command line, or None: any user of
    the machine reads command lines with `ps`, and shells keep them in their history."""
    given = [flag for flag, value in (("--database-url", args.database_url),
                                      ("--cache-url", args.cache_url))
             if value and has_secret(value)]
    if not given:
        return None
    return (f"storeflow-ops: warning: {' and '.join(given)} carries a password, which other "
            "users can read in `ps`; set it in the environment instead (DATABASE_URL, "
            "REDIS_URL)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except _UsageExit as exc:
        if "--json" in argv:
            _error_document(exc.message, int(ExitCode.USAGE))
        raise
    warning = warn_secrets_in_argv(args)
    if warning:
        print(warning, file=sys.stderr)
    if args.command is None:
        args.read_only = False
    wants_json = bool(getattr(args, "json", False))
    import logging

    from console.formatting import terminal_safe

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="storeflow-ops: %(levelname)s %(name)s: %(message)s")
    try:
        if args.command in (None, "tui"):
            require_terminal("for scheduled work use `storeflow-ops run` (the headless "
                             "runner), for scripts the commands: `storeflow-ops --help`")
        from console.context import CliContext
        from jobs.settings import Overrides, load_settings

        settings = load_settings(Overrides(args.config, args.database_url, args.cache_url))
        if settings.cache_url and args.command in CACHE_COMMANDS:
            from jobs.cache import check_redis_url

            check_redis_url(settings.cache_url)
        ctx = CliContext(settings, json=wants_json)
        try:
            handler = _handler(args)
            if not gc.isenabled():
                # After the start-up imports (entry() turned the collector off): what they
                # made lives as long as the process, so it is frozen out of every later
                # pass, and the command, which may run for days (the runner, the console),
                # is collected as usual. A caller that kept it on (the tests) is left alone.
                gc.freeze()
                gc.enable()
            code = int(handler(ctx, args))
        finally:
            ctx.close()
        # Flush here, not at interpreter exit: a reader that went away must surface as
        # BrokenPipeError below, not as Python's own exit status 120.
        sys.stdout.flush()
        return code
    except OpsError as exc:
        # One line, whatever the message quotes (a name, a database's error text).
        print(f"storeflow-ops: {terminal_safe(exc.message)}", file=sys.stderr)
        if wants_json:
            _error_document(exc.message, int(exc.exit_code),
                            exc.run_id if isinstance(exc, JobRunningError) else None)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("storeflow-ops: interrupted", file=sys.stderr)
        if wants_json:
            _error_document("interrupted", int(ExitCode.INTERRUPTED))
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        # The reader went away (`storeflow-ops history --json | head`): stop quietly, as
        # Unix tools do, with the SIGPIPE convention's status. Pointing stdout at devnull
        # stops Python's own flush at exit from complaining again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13
    except Exception as exc:
        # A bug, not an operator error: one line by default, the traceback on request.
        if os.environ.get("STOREFLOW_DEBUG"):
            raise
        text = scrub(f"internal error: {type(exc).__name__}: {exc}")
        print(f"storeflow-ops: {terminal_safe(text)} (set STOREFLOW_DEBUG=1 for the traceback)",
              file=sys.stderr)
        if wants_json:
            _error_document(text, int(ExitCode.FAILED))
        return int(ExitCode.FAILED)


def entry() -> int:
    """The installed `storeflow-ops`: main, then an exit without the collector's last passes.

    At exit Python frees every module and collects cycles among ~80,000 objects, which
    took 90-120 ms after a `trigger` and ~50 ms after `jobs` (a sixth of the command).
    Freezing them first (gc.freeze) leaves that memory to the kernel, as it would be
    anyway; what must be closed is closed before (CliContext.close, stdout flushed). Only
    here: a process that calls main() and goes on, such as the tests, keeps collecting.

    The collector is also off while the command starts: its imports (SQLAlchemy, psycopg,
    the program) make ~100,000 objects and no garbage, and the passes it would run over them
    cost 20-40 ms of a 0.2-0.8 s command. main() turns it back on before the command runs."""
    gc.disable()
    try:
        return main()
    finally:
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(entry())

"""`storeflow-ops import-vercel vercel.json`: a vercel.json's `crons` as schedules.toml entries.

The four seed paths map to their jobs. Anything that cannot be imported (an unknown path,
an invalid schedule, a second cron for the same job) is reported on stderr with its
place in the file and makes the exit code 1; the rest is still written. A file that is
not JSON or has no `crons` list is a usage error (exit 2).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from console.context import CliContext
from jobs.cron import CronError, CronSchedule
from jobs.errors import ConfigError, ExitCode
from jobs.humanize import plural
from jobs.registry import job_for_endpoint

VERCEL_TZ = "UTC"  # Vercel Cron has no timezone setting: every schedule is UTC


@dataclass(frozen=True)
class Imported:
    job_id: str
    schedule: str
    where: str  # e.g. "crons[0]", for messages


def read_crons(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), "", "file not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(str(path), "", f"malformed JSON: {exc}") from None
    crons = data.get("crons") if isinstance(data, dict) else None
    if not isinstance(crons, list):
        raise ConfigError(str(path), "crons",
                          'missing; expected a list like [{"path": ..., "schedule": ...}]')
    return crons


def convert(crons: list[Any]) -> tuple[list[Imported], list[str]]:
    """The crons that map onto jobs, and one problem line for each one that does not."""
    imported: dict[str, Imported] = {}
    problems: list[str] = []
    for i, cron in enumerate(crons):
        where = f"crons[{i}]"
        if not isinstance(cron, dict):
            problems.append(f"{where}: expected an object with path and schedule")
            continue
        path, expr = cron.get("path"), cron.get("schedule")
        if not isinstance(path, str) or not isinstance(expr, str):
            problems.append(f"{where}: needs a string path and a string schedule")
            continue
        if "?" in path:
            problems.append(f"{where}: {path}: query strings have no place in schedules.toml; "
                            "not imported")
            continue
        spec = job_for_endpoint(path)
        if spec is None:
            problems.append(f"{where}: {path}: not one of the four StoreFlow jobs; not imported")
            continue
        try:
            CronSchedule.parse(expr, VERCEL_TZ)
        except CronError as exc:
            problems.append(f"{where}: {path}: schedule {expr!r}: {exc}; not imported")
            continue
        if spec.id in imported:
            first = imported[spec.id]
            problems.append(
                f"{where}: {path}: {spec.id} already has {first.schedule!r} from {first.where} "
                "(a job has one schedule here); not imported")
            continue
        imported[spec.id] = Imported(spec.id, expr, where)
    return list(imported.values()), problems


def render(entries: list[Imported], source: str) -> str:
    lines = [f"# Imported from {source} by `storeflow-ops import-vercel`."]
    for e in entries:
        # json.dumps writes a valid TOML basic string (same escapes).
        lines += ["", f"[jobs.{e.job_id}]", f"schedule = {json.dumps(e.schedule)}",
                  f'timezone = "{VERCEL_TZ}"  # Vercel Cron runs in UTC']
    return "\n".join(lines) + "\n"


def cmd_import_vercel(ctx: CliContext, args: argparse.Namespace) -> int:
    source = Path(args.path)
    entries, problems = convert(read_crons(source))
    toml = render(entries, source.name)
    if args.write:
        target = Path(args.write)
        try:
            # Never over an operator's schedules.toml: merging it is theirs to do.
            with target.open("x", encoding="utf-8") as fh:
                fh.write(toml)
        except FileExistsError:
            raise ConfigError(str(target), "", "already exists; write to a new file and merge "
                              "its [jobs.*] tables by hand") from None
        except OSError as exc:
            raise ConfigError(str(target), "", f"cannot write: {exc.strerror or exc}") from None
        ctx.out(f"wrote {plural(len(entries), 'job schedule')} to {target}")
    else:
        ctx.stdout.write(toml)
    for line in problems:
        ctx.err(f"storeflow-ops: {source}: {line}")
    return int(ExitCode.FAILED if problems else ExitCode.OK)

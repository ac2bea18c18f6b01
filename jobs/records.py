"""The records the jobs API hands out: frozen, typed, and JSON-ready."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from jobs.errors import ExitCode, UsageError
from jobs.timeutil import iso, iso_z


class Trigger(StrEnum):
    SCHEDULE = "schedule"
    MANUAL = "manual"
    HTTP = "http"


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # some items failed
    FAILED = "failed"
    TIMED_OUT = "timed_out"  # still running at its job's timeout: stopped, items so far kept
    INTERRUPTED = "interrupted"
    SKIPPED = "skipped"  # a slot that came while the job still ran (concurrency = forbid)
    MISSED = "missed"  # a slot no runner fired in time

    @property
    def finished(self) -> bool:
        return self is not RunStatus.RUNNING


class ItemStatus(StrEnum):
    OK = "ok"
    ERROR = "error"
    SKIPPED = "skipped"


class ClaimStatus(StrEnum):
    """The outcome of claiming a slot (`jobs.runs.claim_slot`)."""

    CLAIMED = "claimed"  # ours to run
    TAKEN = "taken"  # another runner claimed it first
    SKIPPED = "skipped"  # recorded as skipped: the job's previous run still holds its lock
    BUSY = "busy"  # nothing recorded: the job's lock is held; a retry waits for it


class RunnerKind(StrEnum):
    """What kind of process a row of ops_runners is (`jobs.presence`)."""

    RUNNER = "runner"  # `storeflow-ops run`: fires slots
    CLI = "cli"  # a CLI command running a job
    CONSOLE = "console"  # the console while it runs a job


@dataclass(frozen=True)
class ItemResult:
    """What a job did (or would do, in a preview) to one tenant or one group of rows."""

    tenant_id: str | None
    action: str
    status: ItemStatus
    detail: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    tenant_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "action": self.action,
            "status": str(self.status),
            "detail": dict(self.detail),
            "error": self.error,
        }


def parse_day(label: str, text: str) -> dt.date:
    """A day as an operator writes it, YYYY-MM-DD; UsageError naming `label` (`--date`,
    the query's `date`) otherwise."""
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{label}: {text!r} is not a date; write YYYY-MM-DD") from None


@dataclass(frozen=True)
class RunParams:
    """Optional arguments of a run: analytics' `--date` or `--from/--to` range."""

    date: dt.date | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None

    def to_json(self) -> dict[str, str]:
        out = {}
        for key in ("date", "date_from", "date_to"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value.isoformat()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, str] | None) -> RunParams:
        data = data or {}
        return cls(**{k: dt.date.fromisoformat(v) for k, v in data.items()})


@dataclass(frozen=True)
class RunReport:
    """The outcome of one run or preview: the JSON report the README documents, as a record."""

    job_id: str
    run_id: int | None
    trigger: Trigger
    dry_run: bool
    status: RunStatus
    reference_time: datetime
    started_at: datetime
    finished_at: datetime
    summary: Mapping[str, Any]
    items: tuple[ItemResult, ...]
    error: str | None = None
    error_exit_code: ExitCode | None = None
    scheduled_for: datetime | None = None

    @property
    def processed(self) -> int:
        return len(self.items)

    @property
    def errors(self) -> tuple[ItemResult, ...]:
        return tuple(i for i in self.items if i.status is ItemStatus.ERROR)

    @property
    def message(self) -> str:
        if self.status in (RunStatus.FAILED, RunStatus.TIMED_OUT):
            return "Job failed"  # `status` and `error` say it timed out
        if self.dry_run:
            return "Preview completed"
        if self.status is RunStatus.INTERRUPTED:
            return "Job failed"  # one of the four messages; `status` says it was interrupted
        if self.errors:
            return "Job completed with errors"
        return "Job completed"

    @property
    def exit_code(self) -> ExitCode:
        if self.status is RunStatus.FAILED:
            return self.error_exit_code or ExitCode.FAILED
        if self.status is RunStatus.TIMED_OUT:
            return ExitCode.FAILED
        if self.status is RunStatus.INTERRUPTED:
            return ExitCode.INTERRUPTED
        return ExitCode.FAILED if self.errors else ExitCode.OK

    def to_json(self, *, items: bool = True) -> dict[str, Any]:
        """The report as `trigger --json` prints it; without `items`, its items list is
        left empty for a writer that streams them (console.context.emit_json_with_items)."""
        errors: list[dict[str, Any]] = [
            {"tenant_id": i.tenant_id, "error": i.error} for i in self.errors
        ]
        if self.error:
            errors.append({"tenant_id": None, "error": self.error})
        return {
            "message": self.message,
            "job": self.job_id,
            "run_id": self.run_id,
            "trigger": str(self.trigger),
            "dry_run": self.dry_run,
            "status": str(self.status),
            "now": iso(self.reference_time),
            "scheduled_for": iso(self.scheduled_for),
            "results": {
                "processed": self.processed,
                "errors": errors,
                "summary": dict(self.summary),
                "items": [i.to_json() for i in self.items] if items else [],
            },
            "timestamp": iso_z(self.finished_at),
        }


@dataclass(frozen=True)
class RunRecord:
    """One row of run history."""

    run_id: int
    job_id: str
    trigger: Trigger
    scheduled_for: datetime | None
    attempt: int
    status: RunStatus
    started_by: str
    reference_time: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    total: int | None
    processed: int
    errors: int
    summary: Mapping[str, Any] | None
    error: str | None

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "job": self.job_id,
            "trigger": str(self.trigger),
            "scheduled_for": iso(self.scheduled_for),
            "attempt": self.attempt,
            "status": str(self.status),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "processed": self.processed,
            "errors": self.errors,
        }


@dataclass(frozen=True)
class Progress:
    """Live progress of a run, for the console's progress bar."""

    job_id: str
    run_id: int | None
    done: int
    total: int | None
    errors: int

"""Exit codes and the expected errors that map onto them.

Every error an operator can cause or meet (bad config, a database that is down,
a job that is already running) is one of these, so the faces can print one clear
line instead of a traceback.
"""

from __future__ import annotations

from enum import IntEnum

from jobs.redaction import scrub


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # completed with item errors, or the run failed
    USAGE = 2  # usage or configuration error
    UNREACHABLE = 3  # database or cache unreachable
    RUNNING = 4  # refused because the job is already running
    INTERRUPTED = 130


class OpsError(Exception):
    """An expected error: its message is what the operator reads."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str) -> None:
        # Messages quote URLs and drivers' words, which may carry a password: never shown.
        message = scrub(message)
        super().__init__(message)
        self.message = message


class UsageError(OpsError):
    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """A configuration problem, located: which file, which key, and why."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {reason}")


class UnreachableError(OpsError):
    """The database or the cache did not answer."""

    exit_code = ExitCode.UNREACHABLE

    def __init__(self, what: str, target: str, reason: str) -> None:
        self.what = what
        super().__init__(f"{what} unreachable at {target}: {reason}")


class CacheRefusedError(OpsError):
    """The cache answered but refused a command: out of memory, a read-only replica, ..."""

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"cache at {target} refused a command: {reason}")


class JobRunningError(OpsError):
    exit_code = ExitCode.RUNNING

    def __init__(self, job_id: str, run_id: int | None) -> None:
        self.job_id = job_id
        self.run_id = run_id
        which = f" (run {run_id})" if run_id is not None else ""
        super().__init__(f"{job_id} is already running{which}; refusing to start another")


class PruneBusyError(OpsError):
    """Another process is pruning the history: refused like a trigger of a running job."""

    exit_code = ExitCode.RUNNING

    def __init__(self, why: str) -> None:
        super().__init__(f"not pruning: {why}; try again once it has finished")


class UnknownJobError(UsageError):
    def __init__(self, job_id: str, known: list[str]) -> None:
        super().__init__(f"unknown job {job_id!r}; known jobs: {', '.join(known)}")


class InvalidRecipientError(OpsError):
    """A tenant's email address cannot receive mail: that tenant's item fails."""

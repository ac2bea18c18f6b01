"""What changed between two configurations: what a reload logs and audits.

Per job, the keys of its `[jobs.<id>]` table whose effective value changed (the schedule's
cron expression and its timezone count as two keys, `schedule` and `timezone`, as the
file writes them); beside the jobs, the other sections (`[outbox]`, `[runner]`, ...) that
changed. Values are quoted except secrets (URL keys): the diff goes to logs and the audit.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import timedelta

from jobs.cron import CronSchedule
from jobs.humanize import span
from jobs.settings import JOB_KEYS, JobConfig, Settings

# Settings fields that are not sections of the file: where it came from, and the
# environment's URLs and secrets (a reload re-reads the same environment).
_NOT_SECTIONS = frozenset({"source", "jobs", "database_url", "cache_url", "cache_prefix",
                           "smtp_url", "mail_from", "cron_token"})


def _values(job: JobConfig) -> dict[str, object]:
    """The job's settings by the name of the key that sets them."""
    out: dict[str, object] = {}
    for f in fields(job):
        if f.name == "job_id":
            continue
        value = getattr(job, f.name)
        if isinstance(value, CronSchedule):
            out["schedule"] = value.expression
            out["timezone"] = value.timezone.key
        else:
            out[f.name] = value
    return out


def _secret(key: str) -> bool:
    spec = JOB_KEYS.get(key)
    return (spec is not None and spec.type == "url") or "url" in key or "secret" in key


def _shown(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, timedelta):
        return span(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


@dataclass(frozen=True)
class KeyChange:
    job_id: str
    key: str
    old: object
    new: object

    def __str__(self) -> str:
        if _secret(self.key):
            return f"{self.key} changed"
        return f"{self.key} {_shown(self.old)} -> {_shown(self.new)}"


@dataclass(frozen=True)
class ConfigChanges:
    """The difference between the configuration in force and the one read again."""

    source: str  # the file read again
    keys: tuple[KeyChange, ...] = ()
    sections: tuple[str, ...] = ()  # non-job sections that changed, e.g. ("runner",)

    @property
    def empty(self) -> bool:
        return not self.keys and not self.sections

    @property
    def jobs(self) -> dict[str, list[str]]:
        """Each changed job and the names of its changed keys, in file order."""
        out: dict[str, list[str]] = {}
        for change in self.keys:
            out.setdefault(change.job_id, []).append(change.key)
        return out

    def schedule_changed(self, job_id: str) -> bool:
        return any(c.job_id == job_id and c.key in ("schedule", "timezone") for c in self.keys)

    def enabled_now(self, job_id: str) -> bool:
        """The job was disabled and is enabled by the new configuration."""
        return any(c.job_id == job_id and c.key == "enabled" and c.new is True
                   for c in self.keys)

    def describe(self) -> str:
        """One line for people: `expiry-checker: schedule @daily -> */5 * * * *; ...`."""
        parts = [f"{job}: " + ", ".join(str(c) for c in self.keys if c.job_id == job)
                 for job in self.jobs]
        parts += [f"[{name}] changed" for name in self.sections]
        return "; ".join(parts) if parts else "no changes"


def diff_settings(old: Settings, new: Settings) -> ConfigChanges:
    keys: list[KeyChange] = []
    for job_id, job in new.jobs.items():
        before = _values(old.jobs[job_id]) if job_id in old.jobs else {}
        for key, value in _values(job).items():
            if key not in before or before[key] != value:
                keys.append(KeyChange(job_id, key, before.get(key), value))
    sections = tuple(f.name for f in fields(Settings)
                     if f.name not in _NOT_SECTIONS
                     and getattr(old, f.name) != getattr(new, f.name))
    return ConfigChanges(new.source, tuple(keys), sections)


__all__ = ["ConfigChanges", "KeyChange", "diff_settings"]

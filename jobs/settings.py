"""Settings: the shipped defaults, then schedules.toml, then the seed's env vars, then CLI flags.

Any mistake is reported as one ConfigError naming the file, the key and the reason.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from jobs.db import default_sqlite_path
from jobs.errors import ConfigError
from jobs.schedule import CronError, CronSchedule

JOB_IDS = ("expiry-checker", "payment-reminders", "analytics-aggregate", "cleanup")
DEFAULTS_FILE = Path(__file__).with_name("default_schedules.toml")

Concurrency = Literal["forbid", "allow"]

# Which job settings each job takes, beside the scheduling keys every job has.
_COMMON_KEYS = {"schedule", "timezone", "enabled", "misfire_grace", "concurrency", "description"}
_JOB_KEYS: dict[str, set[str]] = {
    "expiry-checker": {"grace_period_days"},
    # The grace period is one policy: set under expiry-checker, followed by the reminders
    # (two values would have notices promise a suspension date the checker does not keep).
    "payment-reminders": {"reminder_days"},
    "analytics-aggregate": {"cache_ttl"},
    "cleanup": {"cart_retention_days", "batch_size"},
}


@dataclass(frozen=True)
class JobConfig:
    job_id: str
    schedule: CronSchedule
    enabled: bool = True
    misfire_grace: timedelta | None = None  # None: no limit
    concurrency: Concurrency = "forbid"
    grace_period_days: int = 7
    reminder_days: tuple[int, ...] = (7,)
    cache_ttl: int = 86_400
    cart_retention_days: int = 30
    batch_size: int = 5_000

    @property
    def timezone(self) -> str:
        return self.schedule.timezone.key


@dataclass(frozen=True)
class OutboxConfig:
    send_interval: int = 30  # seconds between drains inside the runner
    batch_size: int = 100
    rate_limit: float = 0.0  # messages per second; 0 = unlimited
    max_attempts: int = 8
    backoff_base: float = 30.0  # seconds before the 2nd attempt; doubles each time
    backoff_max: float = 3_600.0
    # Seconds a sender holds a claimed email; renewed before each message is sent. Longer
    # than one message can take (the SMTP timeout), or a second sender may take it mid-send.
    lease: float = 300.0


@dataclass(frozen=True)
class RunnerConfig:
    heartbeat_interval: float = 5.0
    stale_after: float = 30.0  # a runner silent this long is dead; its runs are interrupted
    shutdown_timeout: float = 25.0
    health_tick_age: float = 60.0  # /healthz is 503 once the loop has not ticked this long


@dataclass(frozen=True)
class Settings:
    source: str  # the schedules file in effect ("built-in defaults" when none)
    database_url: str
    cache_url: str | None
    cache_prefix: str
    smtp_url: str | None
    mail_from: str
    cron_token: str | None
    jobs: Mapping[str, JobConfig]
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)

    def job(self, job_id: str) -> JobConfig:
        return self.jobs[job_id]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(source: str, key: str, value: Any) -> timedelta | None:
    if value in (None, "", "none", "unlimited"):
        return None
    if isinstance(value, bool):
        raise ConfigError(source, key, "expected seconds or a duration like '15m', '2h', '1d'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ConfigError(
                source, key, f"{value!r} is not a duration (write seconds, or '15m', '2h', '1d')"
            )
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if seconds < 0:
        raise ConfigError(source, key, "must not be negative")
    return timedelta(seconds=seconds)


def _int(source: str, key: str, value: Any, *, minimum: int = 0) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(source, key, f"expected a whole number, got {value!r}")
    if value < minimum:
        what = "negative" if minimum == 0 else f"less than {minimum}"
        raise ConfigError(source, key, f"{value} is {what}; it must be at least {minimum}")
    return value


def _number(source: str, key: str, value: Any, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(source, key, f"expected a number, got {value!r}")
    if value < minimum:
        raise ConfigError(source, key, f"{value} is below the minimum {minimum}")
    return float(value)


def _reminder_days(source: str, key: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value.strip().strip("[]")) if v]
    values = value if isinstance(value, list) else [value]
    days = tuple(sorted({_int(source, key, v, minimum=1) for v in values}, reverse=True))
    if not days:
        raise ConfigError(source, key, "needs at least one day count")
    return days


def _apply_job(source: str, cfg: JobConfig, table: Mapping[str, Any]) -> JobConfig:
    jid = cfg.job_id
    allowed = _COMMON_KEYS | _JOB_KEYS[jid]
    for key in table:
        if key not in allowed:
            raise ConfigError(
                source, f"jobs.{jid}.{key}",
                f"unknown key; {jid} takes {', '.join(sorted(allowed - {'description'}))}",
            )
    changes: dict[str, Any] = {}
    expr = table.get("schedule", cfg.schedule.expression)
    tz = table.get("timezone", cfg.schedule.timezone.key)
    if "schedule" in table or "timezone" in table:
        if not isinstance(expr, str):
            raise ConfigError(source, f"jobs.{jid}.schedule", "expected a cron expression string")
        if not isinstance(tz, str):
            raise ConfigError(source, f"jobs.{jid}.timezone", "expected a timezone name")
        try:
            changes["schedule"] = CronSchedule.parse(expr, tz)
        except CronError as exc:
            key = "timezone" if "timezone" in str(exc).lower() else "schedule"
            raise ConfigError(source, f"jobs.{jid}.{key}", str(exc)) from None
    for key, value in table.items():
        k = f"jobs.{jid}.{key}"
        if key == "enabled":
            if not isinstance(value, bool):
                raise ConfigError(source, k, f"expected true or false, got {value!r}")
            changes[key] = value
        elif key == "misfire_grace":
            changes[key] = _duration(source, k, value)
        elif key == "concurrency":
            if value not in ("forbid", "allow"):
                raise ConfigError(source, k, f"expected \"forbid\" or \"allow\", got {value!r}")
            changes[key] = value
        elif key == "grace_period_days":
            changes[key] = _int(source, k, value)
        elif key == "cart_retention_days":
            # 0 would make every cart item stale, including the ones being filled right now.
            changes[key] = _int(source, k, value, minimum=1)
        elif key == "cache_ttl":
            ttl = _duration(source, k, value)
            if ttl is None or ttl.total_seconds() < 1:
                raise ConfigError(source, k, "must be at least one second")
            changes[key] = int(ttl.total_seconds())
        elif key == "batch_size":
            changes[key] = _int(source, k, value, minimum=1)
        elif key == "reminder_days":
            changes[key] = _reminder_days(source, k, value)
    return replace(cfg, **changes)


def _apply_section(source: str, section: str, obj: Any, table: Any) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(source, section, "expected a table")
    changes: dict[str, Any] = {}
    for key, value in table.items():
        if not hasattr(obj, key):
            names = ", ".join(obj.__dataclass_fields__)
            raise ConfigError(source, f"{section}.{key}", f"unknown key; {section} takes {names}")
        changes[key] = _number(source, f"{section}.{key}", value)
        if isinstance(getattr(obj, key), int) and not isinstance(getattr(obj, key), bool):
            changes[key] = _int(source, f"{section}.{key}", value, minimum=1)
    return replace(obj, **changes)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(path), "", "file not found") from None
    except IsADirectoryError:
        raise ConfigError(str(path), "", "is a directory, not a TOML file") from None
    except PermissionError:
        raise ConfigError(str(path), "", "permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "", f"malformed TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "", f"malformed TOML: not UTF-8 text ({exc.reason} "
                          f"at byte {exc.start})") from None


def _merge(source: str, data: Mapping[str, Any], jobs: dict[str, JobConfig],
           outbox: OutboxConfig, runner: RunnerConfig) -> tuple[OutboxConfig, RunnerConfig]:
    for top in data:
        if top not in ("jobs", "outbox", "runner"):
            raise ConfigError(source, top, "unknown section; expected [jobs.<id>], [outbox], [runner]")
    job_tables = data.get("jobs", {})
    if not isinstance(job_tables, dict):
        raise ConfigError(source, "jobs", "expected tables like [jobs.cleanup]")
    for jid, table in job_tables.items():
        if jid not in JOB_IDS:
            raise ConfigError(source, f"jobs.{jid}", f"unknown job; known jobs: {', '.join(JOB_IDS)}")
        if not isinstance(table, dict):
            raise ConfigError(source, f"jobs.{jid}", "expected a table")
        jobs[jid] = _apply_job(source, jobs[jid], table)
    if "outbox" in data:
        outbox = _apply_section(source, "outbox", outbox, data["outbox"])
        if outbox.lease < 1:
            # A lease of nothing is free for any other sender to take at once.
            raise ConfigError(source, "outbox.lease", f"{outbox.lease:g} is below the minimum 1 second")
    if "runner" in data:
        runner = _apply_section(source, "runner", runner, data["runner"])
        if not 0 < runner.heartbeat_interval < runner.stale_after:
            # Otherwise a live runner looks dead between two beats, and its runs get taken over.
            raise ConfigError(source, "runner", "needs 0 < heartbeat_interval < stale_after, got "
                              f"{runner.heartbeat_interval:g} and {runner.stale_after:g}")
        if runner.health_tick_age < 1:
            # The loop ticks at least every health_tick_age / 2 seconds.
            raise ConfigError(source, "runner.health_tick_age",
                              f"{runner.health_tick_age:g} is below the minimum 1 second")
    return outbox, runner


def config_path(explicit: str | None, env: Mapping[str, str], cwd: Path | None = None) -> Path | None:
    """--config, else STOREFLOW_CONFIG, else ./schedules.toml when present, else None."""
    if explicit:
        return Path(explicit)
    if env.get("STOREFLOW_CONFIG"):
        return Path(env["STOREFLOW_CONFIG"])
    local = (cwd or Path.cwd()) / "schedules.toml"
    return local if local.is_file() else None


@dataclass(frozen=True)
class Overrides:
    """What the CLI's global flags set; they beat the file and the environment."""

    config: str | None = None
    database_url: str | None = None
    cache_url: str | None = None


def load_settings(overrides: Overrides = Overrides(), env: Mapping[str, str] | None = None,
                  cwd: Path | None = None) -> Settings:
    env = os.environ if env is None else env
    builtin = str(DEFAULTS_FILE)
    jobs = {jid: JobConfig(jid, CronSchedule.parse("0 0 * * *")) for jid in JOB_IDS}
    outbox, runner = _merge(builtin, _read_toml(DEFAULTS_FILE), jobs, OutboxConfig(), RunnerConfig())
    path = config_path(overrides.config, env, cwd)
    source = "built-in defaults"
    if path is not None:
        source = str(path)
        outbox, runner = _merge(source, _read_toml(path), jobs, outbox, runner)

    grace = env.get("SUBSCRIPTION_GRACE_PERIOD_DAYS")
    if grace not in (None, ""):
        days = _int("environment", "SUBSCRIPTION_GRACE_PERIOD_DAYS", grace)
        for jid in ("expiry-checker", "payment-reminders"):
            jobs[jid] = replace(jobs[jid], grace_period_days=days)
    jobs["payment-reminders"] = replace(
        jobs["payment-reminders"], grace_period_days=jobs["expiry-checker"].grace_period_days
    )

    database_url = (
        overrides.database_url or env.get("DATABASE_URL") or f"sqlite:///{default_sqlite_path()}"
    )
    cache_url = overrides.cache_url or env.get("REDIS_URL") or env.get("KV_URL") or None
    smtp_url = env.get("SMTP_URL") or None
    token = env.get("CRON_SECRET_TOKEN") or env.get("CRON_SECRET") or None
    return Settings(
        source=source,
        database_url=database_url,
        cache_url=cache_url,
        cache_prefix=env.get("STOREFLOW_CACHE_PREFIX", ""),
        smtp_url=smtp_url,
        mail_from=env.get("MAIL_FROM") or "StoreFlow <no-reply@storeflow.invalid>",
        cron_token=token,
        jobs=jobs,
        outbox=outbox,
        runner=runner,
    )

"""Settings: the shipped defaults, then schedules.toml, then the seed's env vars, then CLI flags.

Any mistake is reported as one ConfigError naming the file, the key and the reason.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

from jobs.cron import CronError, CronSchedule
from jobs.db import default_sqlite_path
from jobs.errors import ConfigError, OpsError
from jobs.job_ids import JOB_IDS as JOB_IDS

DEFAULTS_FILE = Path(__file__).with_name("default_schedules.toml")

Concurrency = Literal["forbid", "allow"]


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
    alerts: bool = True  # False: the job's state is kept, but it raises no alert events
    overdue_after: timedelta | None = None  # None: [alerts] overdue_after
    ping_url: str | None = None  # a secret: logs show its scheme and host only
    # Runs that go badly: a run still running after `timeout` is stopped (timed_out); a
    # slot's run that ends failed, timed_out or interrupted runs again up to `retries`
    # times, `retry_backoff` seconds after it ended, doubling each time (at most an hour).
    timeout: timedelta | None = None  # None: no limit
    retries: int = 0
    retry_backoff: int = 60

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
    keep_sent_days: int = 30  # sent emails older than this are pruned (dead/failed: [history])


@dataclass(frozen=True)
class HistoryConfig:
    """Retention (`jobs.retention`): how long runs, their items, alerts and failed email stay."""

    keep_days: int = 90  # succeeded runs with their items, and alerts
    keep_failed_days: int = 365  # runs that did not succeed, and dead or failed emails
    keep_min_runs: int = 50  # each job's newest runs, kept whatever their age


@dataclass(frozen=True)
class RunnerConfig:
    heartbeat_interval: float = 5.0
    stale_after: float = 30.0  # a runner silent this long is dead; its runs are interrupted
    shutdown_timeout: float = 25.0
    health_tick_age: float = 60.0  # /healthz is 503 once the loop has not ticked this long


@dataclass(frozen=True)
class AlertsConfig:
    webhooks: tuple[str, ...] = field(default=(), repr=False)  # URLs are secrets
    emails: tuple[str, ...] = ()
    webhook_secret: str | None = field(default=None, repr=False)
    overdue_after: timedelta = timedelta(hours=1)
    timeout: float = 10.0  # seconds per POST
    backoff_base: float = 2.0  # seconds before the 2nd attempt; doubles each time
    backoff_max: float = 300.0
    max_attempts: int = 8
    lease: float = 60.0  # seconds a runner holds a delivery it is attempting
    poll_interval: float = 1.0  # seconds between the runner's looks for due deliveries


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
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)

    def job(self, job_id: str) -> JobConfig:
        return self.jobs[job_id]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(source: str, key: str, value: object) -> timedelta | None:
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


def _int(source: str, key: str, value: object, *, minimum: int = 0) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(source, key, f"expected a whole number, got {value!r}")
    if value < minimum:
        what = "negative" if minimum == 0 else f"less than {minimum}"
        raise ConfigError(source, key, f"{value} is {what}; it must be at least {minimum}")
    return value


def _number(source: str, key: str, value: object, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(source, key, f"expected a number, got {value!r}")
    if value < minimum:
        raise ConfigError(source, key, f"{value} is below the minimum {minimum}")
    return float(value)


def _days(source: str, key: str, value: object, *, minimum: int) -> tuple[int, ...]:
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value.strip().strip("[]")) if v]
    values: list[object] = value if isinstance(value, list) else [value]
    days = tuple(sorted({_int(source, key, v, minimum=minimum) for v in values}, reverse=True))
    if not days:
        raise ConfigError(source, key, "needs at least one day count")
    return days


# --- the keys of a [jobs.<id>] table ---------------------------------------------------------

# What a key holds, which says how its value is read:
#   cron, timezone  the job's schedule (read together, into JobConfig.schedule)
#   flag            true or false
#   choice          one of `choices`
#   duration        seconds or "15m", "2h", "1d" (at least `minimum` s); absent or "none": no limit
#   seconds         the same, a whole number of seconds of at least `minimum`
#   count           a whole number of at least `minimum`
#   days            one or more whole numbers of days, each at least `minimum`
#   text            anything; read by people only
#   url             an http:// or https:// URL, or "" for none; a secret, never quoted
KeyType = Literal["cron", "timezone", "flag", "choice", "duration", "seconds", "count", "days",
                  "text", "url"]


@dataclass(frozen=True)
class JobKey:
    """One key of a `[jobs.<id>]` table. The README's table of job keys is this table
    written out (a test compares them), so the doc is the README's "meaning" column."""

    name: str
    type: KeyType
    default: object  # the JobConfig value before any file (the timezone's for "timezone")
    doc: str
    jobs: tuple[str, ...] = JOB_IDS  # the jobs that take it
    minimum: int = 0  # for seconds, count and days
    choices: tuple[str, ...] = ()  # for choice
    env: str | None = None  # an environment variable that overrides the files
    shown: str | None = None  # the README's default when the value written out is not it

    def default_text(self) -> str:
        """The default as the README's table shows it."""
        if self.shown is not None:
            return self.shown
        value = self.default
        if isinstance(value, bool):
            return f"`{str(value).lower()}`"
        if isinstance(value, int):
            return str(value)
        if isinstance(value, tuple):
            return f"`[{', '.join(map(str, value))}]`"
        return f"`{value}`"

    def read(self, source: str, where: str, value: object) -> object:
        """The value as JobConfig holds it, or ConfigError naming `where`.
        Not for cron and timezone, which are read together (`_schedule`)."""
        match self.type:
            case "flag":
                if not isinstance(value, bool):
                    raise ConfigError(source, where, f"expected true or false, got {value!r}")
                return value
            case "choice":
                if value not in self.choices:
                    expected = " or ".join(f'"{c}"' for c in self.choices)
                    raise ConfigError(source, where, f"expected {expected}, got {value!r}")
                return value
            case "duration":
                span = _duration(source, where, value)
                if span is not None and span.total_seconds() < self.minimum:
                    least = "one second" if self.minimum == 1 else f"{self.minimum} seconds"
                    raise ConfigError(source, where, f"must be at least {least} (or \"none\")")
                return span
            case "seconds":
                span = _duration(source, where, value)
                if span is None or span.total_seconds() < self.minimum:
                    least = "one second" if self.minimum == 1 else f"{self.minimum} seconds"
                    raise ConfigError(source, where, f"must be at least {least}")
                return int(span.total_seconds())
            case "count":
                return _int(source, where, value, minimum=self.minimum)
            case "days":
                return _days(source, where, value, minimum=self.minimum)
            case "text":
                return value
            case "url":
                return _url(source, where, value)
            case "cron" | "timezone":
                raise AssertionError(f"{self.name} is read with the schedule")


def _url(source: str, key: str, value: object) -> str | None:
    """An http(s) URL, or None for "" (none). The message never quotes the value: a ping
    URL's path is its credential."""
    if value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(source, key, "expected a URL string")
    try:
        parts = urlsplit(value.strip())
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(source, key, "expected an http:// or https:// URL")
    return value.strip()


JOB_KEYS: dict[str, JobKey] = {
    key.name: key
    for key in (
        JobKey("schedule", "cron", None,
               "5-field cron, a nickname (`@daily`, `@hourly`, …), or 6 fields with seconds "
               "last (`* * * * * */2`: every 2 s). A last field of `*` is refused: it fires "
               "every second of each minute it matches, which is what Quartz's and Spring's "
               "seconds-first `*/5 * * * * *` means here; `*/1` is every second",
               shown="see above"),
        JobKey("timezone", "timezone", "UTC",
               "IANA name; slots follow cron's DST rules in it (below)"),
        JobKey("enabled", "flag", True,
               "a disabled job never fires on schedule (manual triggers still work)"),
        JobKey("misfire_grace", "duration", None,
               "how late a missed slot may still fire: seconds or `15m`, `2h`, `1d`",
               shown="no limit"),
        JobKey("concurrency", "choice", "forbid",
               "`forbid` records a slot as `skipped` while the previous run still runs; "
               "`allow` runs it",
               choices=("forbid", "allow")),
        JobKey("description", "text", None,
               "free text for whoever reads the file; ignored",
               shown="none"),
        # The grace period is one policy: set under expiry-checker, followed by the reminders
        # (two values would have notices promise a suspension date the checker does not keep).
        JobKey("grace_period_days", "count", 7,
               "expiry-checker; 0 allowed. One policy: payment-reminders' notices follow it",
               jobs=("expiry-checker",), env="SUBSCRIPTION_GRACE_PERIOD_DAYS"),
        JobKey("reminder_days", "days", (7,),
               "payment-reminders; e.g. `[7, 3, 1]`",
               jobs=("payment-reminders",), minimum=1),
        JobKey("cache_ttl", "seconds", 86_400,
               "analytics-aggregate; seconds or `24h`",
               jobs=("analytics-aggregate",), minimum=1),
        # 0 would make every cart item stale, including the ones being filled right now.
        JobKey("cart_retention_days", "count", 30,
               "cleanup; at least 1",
               jobs=("cleanup",), minimum=1),
        JobKey("batch_size", "count", 5_000,
               "cleanup: rows per DELETE",
               jobs=("cleanup",), minimum=1),
        JobKey("alerts", "flag", True,
               "`false`: the job raises no alert events ([Alerts](#alerts))"),
        JobKey("overdue_after", "duration", None,
               "how long past its period without a success before `job_overdue`",
               shown="`[alerts] overdue_after` (1h)"),
        JobKey("ping_url", "url", None,
               "dead-man pings for the job (see [Metrics and pings](#metrics-and-pings)); a "
               "secret, logged as scheme and host only",
               shown="none"),
        # Runs that go badly (timeouts and retries): kept together.
        JobKey("timeout", "duration", None,
               "a run still running after this is stopped at its next tenant or batch, the "
               "statement in flight cancelled, and it ends `timed_out` ([Timeouts](#timeouts))",
               minimum=1, shown="no limit"),
        JobKey("retries", "count", 0,
               "how many times a slot's run that ends `failed`, `timed_out` or `interrupted` "
               "runs again ([Retries](#retries))"),
        JobKey("retry_backoff", "seconds", 60,
               "the wait before the first retry, doubling for each next one (at most 1h)",
               minimum=1, shown="`1m`"),
    )
}


_Config = TypeVar("_Config", JobConfig, OutboxConfig, RunnerConfig, HistoryConfig)


def _replaced(obj: _Config, changes: Mapping[str, object]) -> _Config:
    """`replace` with values read from a file or the environment: each was checked against
    its key's type when it was read, which mypy cannot follow from a key's name."""
    return replace(obj, **changes)  # type: ignore[arg-type]


def _schedule(source: str, jid: str, current: CronSchedule,
              table: Mapping[str, object]) -> CronSchedule:
    expr = table.get("schedule", current.expression)
    tz = table.get("timezone", current.timezone.key)
    if not isinstance(expr, str):
        raise ConfigError(source, f"jobs.{jid}.schedule", "expected a cron expression string")
    if not isinstance(tz, str):
        raise ConfigError(source, f"jobs.{jid}.timezone", "expected a timezone name")
    try:
        return CronSchedule.parse(expr, tz)
    except CronError as exc:
        key = "timezone" if "timezone" in str(exc).lower() else "schedule"
        raise ConfigError(source, f"jobs.{jid}.{key}", str(exc)) from None


def _apply_job(source: str, cfg: JobConfig, table: Mapping[str, object]) -> JobConfig:
    jid = cfg.job_id
    allowed = {name: key for name, key in JOB_KEYS.items() if jid in key.jobs}
    for name in table:
        if name not in allowed:
            listed = sorted(n for n, key in allowed.items() if key.type != "text")
            raise ConfigError(source, f"jobs.{jid}.{name}",
                              f"unknown key; {jid} takes {', '.join(listed)}")
    changes: dict[str, object] = {}
    if "schedule" in table or "timezone" in table:
        changes["schedule"] = _schedule(source, jid, cfg.schedule, table)
    for name, value in table.items():
        key = allowed[name]
        if key.type not in ("cron", "timezone", "text"):
            changes[name] = key.read(source, f"jobs.{jid}.{name}", value)
    return _replaced(cfg, changes)


_Section = TypeVar("_Section", OutboxConfig, RunnerConfig, HistoryConfig)


def _apply_section(source: str, section: str, obj: _Section, table: object) -> _Section:
    if not isinstance(table, dict):
        raise ConfigError(source, section, "expected a table")
    names = [f.name for f in fields(obj)]
    changes: dict[str, float | int] = {}
    for key, value in cast("dict[str, object]", table).items():
        if key not in names:
            raise ConfigError(source, f"{section}.{key}",
                              f"unknown key; {section} takes {', '.join(names)}")
        changes[key] = _number(source, f"{section}.{key}", value)
        current: object = getattr(obj, key)
        if isinstance(current, int) and not isinstance(current, bool):
            changes[key] = _int(source, f"{section}.{key}", value, minimum=1)
    return _replaced(obj, changes)


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
           outbox: OutboxConfig, runner: RunnerConfig,
           history: HistoryConfig) -> tuple[OutboxConfig, RunnerConfig, HistoryConfig]:
    for top in data:
        if top not in ("jobs", "outbox", "runner", "alerts", "history"):
            raise ConfigError(source, top, "unknown section; expected [jobs.<id>], [outbox], "
                              "[runner], [alerts], [history]")
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
    if "history" in data:
        history = _apply_section(source, "history", history, data["history"])
        if history.keep_failed_days < history.keep_days:
            # Failures are what an operator comes back to look at: never gone first.
            raise ConfigError(source, "history.keep_failed_days",
                              f"{history.keep_failed_days} is less than keep_days "
                              f"({history.keep_days}); failed runs are kept at least as long")
    return outbox, runner, history


def _webhooks(source: str, key: str, value: object) -> tuple[str, ...]:
    urls = [u.strip() for u in value.split(",") if u.strip()] if isinstance(value, str) else value
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ConfigError(source, key, "expected a list of URLs")
    for i, url in enumerate(urls):
        # The URL itself is a secret: the message names its position, never its text.
        if not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError(source, f"{key}[{i}]", "not an http:// or https:// URL")
    return tuple(urls)


def _apply_alerts(source: str, table: object, cfg: AlertsConfig) -> AlertsConfig:
    if not isinstance(table, dict):
        raise ConfigError(source, "alerts", "expected a table")
    changes: dict[str, object] = {}
    for key, value in cast("dict[str, object]", table).items():
        k = f"alerts.{key}"
        if key == "webhooks":
            changes[key] = _webhooks(source, k, value)
        elif key == "emails":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(source, k, "expected a list of email addresses")
            from jobs.outbox import check_recipient

            try:
                changes[key] = tuple(check_recipient(v) for v in value)
            except OpsError as exc:
                raise ConfigError(source, k, exc.message) from None
        elif key == "webhook_secret":
            if not isinstance(value, str):
                raise ConfigError(source, k, "expected a string")
            changes[key] = value or None
        elif key == "overdue_after":
            changes[key] = _duration(source, k, value) or timedelta(0)
        elif key == "max_attempts":
            changes[key] = _int(source, k, value, minimum=1)
        elif key in ("timeout", "backoff_base", "backoff_max", "lease", "poll_interval"):
            changes[key] = _number(source, k, value, minimum=0.01)
        else:
            names = ", ".join(f.name for f in fields(AlertsConfig))
            raise ConfigError(source, k, f"unknown key; alerts takes {names}")
    return replace(cfg, **changes)  # type: ignore[arg-type]


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
    outbox, runner, history = _merge(builtin, _read_toml(DEFAULTS_FILE), jobs, OutboxConfig(),
                                     RunnerConfig(), HistoryConfig())
    path = config_path(overrides.config, env, cwd)
    source = "built-in defaults"
    alerts = AlertsConfig()
    if path is not None:
        source = str(path)
        data = _read_toml(path)
        outbox, runner, history = _merge(source, data, jobs, outbox, runner, history)
        if "alerts" in data:
            alerts = _apply_alerts(source, data["alerts"], alerts)
    if env.get("STOREFLOW_ALERT_WEBHOOKS"):
        alerts = replace(alerts, webhooks=_webhooks(
            "environment", "STOREFLOW_ALERT_WEBHOOKS", env["STOREFLOW_ALERT_WEBHOOKS"]))
    if env.get("STOREFLOW_WEBHOOK_SECRET"):
        alerts = replace(alerts, webhook_secret=env["STOREFLOW_WEBHOOK_SECRET"])

    for key in JOB_KEYS.values():
        if key.env is None or not env.get(key.env):
            continue
        value = key.read("environment", key.env, env[key.env])
        for jid in key.jobs:
            jobs[jid] = _replaced(jobs[jid], {key.name: value})
    # One policy: the reminders' notices promise the suspension date the checker keeps.
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
        alerts=alerts,
        history=history,
    )

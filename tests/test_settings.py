"""Settings: defaults < schedules.toml < the seed's env vars < CLI flags, the
file lookup, and one clear line with exit 2 for every kind of bad input."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from jobs.cron import CronSchedule
from jobs.settings import (
    DEFAULTS_FILE,
    JOB_IDS,
    JobConfig,
    OutboxConfig,
    Overrides,
    RunnerConfig,
    config_path,
    load_settings,
)
from tests.conftest import CliCall

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CRON = {"expiry-checker": "0 0 * * *", "payment-reminders": "0 9 * * *",
                "analytics-aggregate": "0 1 * * *", "cleanup": "0 2 * * 0"}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def home(tmp_path: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    # No DATABASE_URL: the embedded default under HOME, the one file created on first use.
    return {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", **(env or {})}


def test_shipped_files_are_identical_and_load_to_the_defaults(tmp_path: Path) -> None:
    repo_file = REPO / "schedules.toml"
    assert repo_file.read_bytes() == DEFAULTS_FILE.read_bytes()

    builtin = load_settings(env={}, cwd=tmp_path)
    from_repo = load_settings(Overrides(config=str(repo_file)), env={}, cwd=tmp_path)
    assert builtin.source == "built-in defaults" and from_repo.source == str(repo_file)
    expected = {jid: JobConfig(jid, CronSchedule.parse(DEFAULT_CRON[jid])) for jid in JOB_IDS}
    assert dict(builtin.jobs) == expected
    assert dict(from_repo.jobs) == expected
    assert builtin.outbox == from_repo.outbox == OutboxConfig()
    assert builtin.runner == from_repo.runner == RunnerConfig()
    assert builtin.cache_url is None and builtin.database_url.startswith("sqlite:///")


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    config = write(tmp_path / "ops.toml", "[jobs.expiry-checker]\ngrace_period_days = 3\n")
    assert load_settings(env={}, cwd=tmp_path).job("expiry-checker").grace_period_days == 7
    from_file = load_settings(Overrides(config=str(config)), env={}, cwd=tmp_path)
    assert from_file.job("expiry-checker").grace_period_days == 3
    assert from_file.job("payment-reminders").grace_period_days == 3  # one policy

    env = {"SUBSCRIPTION_GRACE_PERIOD_DAYS": "0", "DATABASE_URL": "sqlite:///from-env.db",
           "REDIS_URL": "redis://from-env:6379/0", "KV_URL": "redis://kv:6379/0"}
    from_env = load_settings(Overrides(config=str(config)), env=env, cwd=tmp_path)
    assert from_env.job("expiry-checker").grace_period_days == 0  # 0 is allowed
    assert from_env.job("payment-reminders").grace_period_days == 0
    assert from_env.database_url == "sqlite:///from-env.db"
    assert from_env.cache_url == "redis://from-env:6379/0"  # REDIS_URL before KV_URL
    kv_only = {k: v for k, v in env.items() if k != "REDIS_URL"}
    assert load_settings(env=kv_only, cwd=tmp_path).cache_url == "redis://kv:6379/0"

    flags = Overrides(config=str(config), database_url="postgresql://flag/db",
                      cache_url="redis://flag:6379/1")
    from_flags = load_settings(flags, env=env, cwd=tmp_path)
    assert from_flags.database_url == "postgresql://flag/db"
    assert from_flags.cache_url == "redis://flag:6379/1"


def test_a_partial_file_keeps_the_other_defaults(tmp_path: Path) -> None:
    config = write(tmp_path / "ops.toml",
                   '[jobs.cleanup]\nbatch_size = 100\ntimezone = "Europe/Berlin"\n'
                   "[outbox]\nmax_attempts = 3\n")
    settings = load_settings(Overrides(config=str(config)), env={}, cwd=tmp_path)
    defaults = load_settings(env={}, cwd=tmp_path)
    cleanup = settings.job("cleanup")
    assert cleanup == replace(defaults.job("cleanup"), batch_size=100,
                              schedule=CronSchedule.parse("0 2 * * 0", "Europe/Berlin"))
    assert cleanup.cart_retention_days == 30
    for jid in ("expiry-checker", "payment-reminders", "analytics-aggregate"):
        assert settings.job(jid) == defaults.job(jid)
    assert settings.outbox == replace(OutboxConfig(), max_attempts=3)
    assert settings.runner == RunnerConfig()


def test_which_file_is_read(tmp_path: Path, cli_here: CliCall) -> None:
    local = write(tmp_path / "schedules.toml", '[jobs.expiry-checker]\nschedule = "5 0 * * *"\n')
    from_env = write(tmp_path / "env.toml", '[jobs.expiry-checker]\nschedule = "10 0 * * *"\n')
    flag = write(tmp_path / "flag.toml", '[jobs.expiry-checker]\nschedule = "15 0 * * *"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    assert config_path(None, {}, elsewhere) is None
    assert config_path(None, {}, tmp_path) == local
    assert config_path(None, {"STOREFLOW_CONFIG": str(from_env)}, tmp_path) == from_env
    assert config_path(str(flag), {"STOREFLOW_CONFIG": str(from_env)}, tmp_path) == flag

    def schedule(*args: str, env: dict[str, str] | None = None, cwd: Path = tmp_path) -> str:
        proc = cli_here(home(tmp_path, env), *args, "jobs", "--json", cwd=cwd)
        assert proc.returncode == 0, proc.stderr
        return str(json.loads(proc.stdout)[0]["schedule"])

    assert schedule(cwd=elsewhere) == "0 0 * * *"
    assert schedule() == "5 0 * * *"
    assert schedule(env={"STOREFLOW_CONFIG": str(from_env)}) == "10 0 * * *"
    assert schedule("--config", str(flag), env={"STOREFLOW_CONFIG": str(from_env)}) == "15 0 * * *"


BAD_FILES = [
    pytest.param('[jobs.cleanup]\nschedule = "61 * * * *"\n', "jobs.cleanup.schedule",
                 "out of range", id="bad-cron"),
    pytest.param('[jobs.cleanup]\nschedule = "0 0 * *"\n', "jobs.cleanup.schedule",
                 "has 4 fields", id="cron-field-count"),
    pytest.param('[jobs.cleanup]\ntimezone = "Mars/Olympus"\n', "jobs.cleanup.timezone",
                 "unknown timezone", id="bad-timezone"),
    pytest.param('[jobs.backup]\nschedule = "0 0 * * *"\n', "jobs.backup",
                 "unknown job; known jobs: expiry-checker", id="unknown-job"),
    pytest.param("[jobs.cleanup]\ngrace_period_days = 3\n", "jobs.cleanup.grace_period_days",
                 "unknown key", id="unknown-key"),
    pytest.param("[jobz]\nx = 1\n", "jobz", "unknown section", id="unknown-section"),
    pytest.param("[jobs.expiry-checker]\ngrace_period_days = -1\n",
                 "jobs.expiry-checker.grace_period_days", "-1 is negative", id="negative-days"),
    pytest.param("[jobs.cleanup]\ncart_retention_days = -30\n",
                 "jobs.cleanup.cart_retention_days", "must be at least 1", id="negative-retention"),
    pytest.param("[jobs.cleanup]\ncart_retention_days = 0\n",
                 "jobs.cleanup.cart_retention_days", "0 is less than 1; it must be at least 1",
                 id="zero-retention"),
    pytest.param("[jobs.payment-reminders]\nreminder_days = [7, 0]\n",
                 "jobs.payment-reminders.reminder_days", "at least 1", id="zero-reminder"),
    pytest.param('[jobs.cleanup]\ncart_retention_days = "thirty"\n',
                 "jobs.cleanup.cart_retention_days", "whole number", id="not-a-number"),
    pytest.param("[jobs.cleanup\nschedule = \n", "", "malformed TOML", id="malformed-toml"),
    pytest.param("[runner]\nheartbeat_interval = 0\n", "runner", "heartbeat_interval",
                 id="zero-heartbeat"),
]


def assert_one_line(proc: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])


@pytest.mark.parametrize(("text", "key", "reason"), BAD_FILES)
def test_bad_file_one_line_exit_2(tmp_path: Path, text: str, key: str, reason: str,
                                  cli_here: CliCall) -> None:
    config = write(tmp_path / "bad.toml", text)
    proc = cli_here(home(tmp_path), "--config", str(config), "jobs", cwd=tmp_path)
    assert_one_line(proc, f"storeflow-ops: {config}: {key}", reason)


def test_bad_env_missing_file_and_binary_file(tmp_path: Path, cli_here: CliCall) -> None:
    proc = cli_here(home(tmp_path, {"SUBSCRIPTION_GRACE_PERIOD_DAYS": "-2"}), "jobs", cwd=tmp_path)
    assert_one_line(proc, "environment", "SUBSCRIPTION_GRACE_PERIOD_DAYS", "-2 is negative")
    proc = cli_here(home(tmp_path, {"SUBSCRIPTION_GRACE_PERIOD_DAYS": "a week"}), "jobs",
               cwd=tmp_path)
    assert_one_line(proc, "SUBSCRIPTION_GRACE_PERIOD_DAYS", "whole number")

    missing = tmp_path / "nope.toml"
    assert_one_line(cli_here(home(tmp_path), "--config", str(missing), "jobs", cwd=tmp_path),
                    str(missing), "file not found")
    assert_one_line(cli_here(home(tmp_path, {"STOREFLOW_CONFIG": str(missing)}), "jobs",
                        cwd=tmp_path), str(missing), "file not found")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[jobs]")
    assert_one_line(cli_here(home(tmp_path), "--config", str(binary), "jobs", cwd=tmp_path),
                    str(binary), "malformed TOML")


def test_the_same_error_in_process(tmp_path: Path) -> None:
    from jobs.errors import ConfigError

    config = write(tmp_path / "bad.toml", "[jobs.cleanup]\nbatch_size = 0\n")
    with pytest.raises(ConfigError) as info:
        load_settings(Overrides(config=str(config)), env={}, cwd=tmp_path)
    assert (info.value.source, info.value.key) == (str(config), "jobs.cleanup.batch_size")
    assert "at least 1" in info.value.reason


def test_retention_settings_default_and_are_checked(tmp_path: Path) -> None:
    from jobs.errors import ConfigError

    loaded = load_settings(env={}, cwd=tmp_path)
    h = loaded.history
    assert (h.keep_days, h.keep_failed_days, h.keep_min_runs,
            loaded.outbox.keep_sent_days) == (90, 365, 50, 30)
    ok = tmp_path / "ok.toml"
    ok.write_text("[history]\nkeep_days = 7\nkeep_min_runs = 5\n[outbox]\nkeep_sent_days = 3\n")
    tuned = load_settings(env={"STOREFLOW_CONFIG": str(ok)}, cwd=tmp_path)
    assert (tuned.history.keep_days, tuned.history.keep_failed_days,
            tuned.history.keep_min_runs, tuned.outbox.keep_sent_days) == (7, 365, 5, 3)
    for text, key in (("[history]\nkeep_days = 30\nkeep_failed_days = 10\n",
                       "history.keep_failed_days"),
                      ("[history]\nkeep_days = 0\n", "history.keep_days"),
                      ("[history]\nkeep_forever = true\n", "history.keep_forever")):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_settings(env={"STOREFLOW_CONFIG": str(bad)}, cwd=tmp_path)
        assert info.value.key == key, info.value.message

"""The CLI: JSON documents, human tables, exit codes 0/1/2/3/4, and never a
traceback. Exit codes and streams are checked on real `storeflow-ops` subprocesses where
the process matters (its environment, pipes, signals), else in-process through
`console.cli.main`."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.engine import Engine

from jobs import runs
from jobs.db import (
    cart_items,
    make_engine,
    ops,
    ops_email_outbox,
    ops_runner_schedules,
    ops_runners,
    ops_runs,
    order_products,
    orders,
    platform,
    tenants,
)
from jobs.migrate import head_revision
from jobs.presence import Presence
from jobs.settings import Settings
from jobs.timeutil import utc_now
from tests.conftest import EXE, cli, in_process_cli
from tests.factories import add_customer, add_order, add_product, add_tenant

NOW = datetime(2026, 11, 28, 0, 30, tzinfo=UTC)  # a Saturday
NOW_ARG = "2026-11-28T00:30:00Z"
def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("storeflow-ops")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.fixture
def run_cli(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
            capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """`storeflow-ops ARGS` in this process, with the test's environment."""
    return in_process_cli(env, monkeypatch, tmp_path, capsys)


def run_json(run_cli: Callable[..., tuple[int, str, str]], *args: str,
             expect: int = 0) -> Any:
    code, out, err = run_cli(*args, "--json")
    assert code == expect, err
    return json.loads(out)


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every platform and ops_ table."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as c:
        for table in [*platform.sorted_tables, *ops.sorted_tables]:
            rows = c.execute(select(table)).all()
            out[table.name] = sorted(tuple(map(repr, r)) for r in rows)
    return out


def expiring_tenants(engine: Engine) -> tuple[str, str]:
    """One tenant that expires at NOW's run, one that is past its grace."""
    a = add_tenant(engine, id="t-expires", expire_date=NOW - timedelta(hours=1))
    b = add_tenant(engine, id="t-past-grace", status="expired",
                   expire_date=NOW - timedelta(days=9))
    add_tenant(engine, id="t-fine", expire_date=NOW + timedelta(days=90))
    return a, b


REPORT_KEYS = {"message", "job", "run_id", "trigger", "dry_run", "results", "timestamp"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def assert_report_shape(report: dict[str, Any]) -> None:
    assert set(report) >= REPORT_KEYS
    assert set(report["results"]) == {"processed", "errors", "summary", "items"}
    assert TIMESTAMP.match(report["timestamp"]), report["timestamp"]
    assert isinstance(report["results"]["processed"], int)
    assert report["results"]["processed"] == len(report["results"]["items"])
    for item in report["results"]["items"]:
        assert set(item) == {"tenant_id", "action", "status", "detail", "error"}
        assert item["status"] in ("ok", "error", "skipped")
    for error in report["results"]["errors"]:
        assert set(error) == {"tenant_id", "error"}


# --- jobs ------------------------------------------------------------------------------------


def test_jobs_json_fields_next_runs_and_last_run(engine: Engine, run_cli: Any) -> None:
    rows = run_json(run_cli, "jobs", "--now", NOW_ARG, "--count", "3")
    assert [r["job"] for r in rows] == ["expiry-checker", "payment-reminders",
                                        "analytics-aggregate", "cleanup"]
    by_job = {r["job"]: r for r in rows}
    for row in rows:
        assert set(row) == {"job", "schedule", "timezone", "enabled", "paused", "next_runs",
                            "last_run", "schedule_source", "paused_by", "paused_at",
                            "paused_reason"}
        assert row["schedule_source"] == "local"  # no runner is alive
        assert row["timezone"] == "UTC" and row["enabled"] is True and row["paused"] is False
        assert row["last_run"] is None
    assert by_job["expiry-checker"]["schedule"] == "0 0 * * *"
    assert by_job["expiry-checker"]["next_runs"] == [
        "2026-11-29T00:00:00+00:00", "2026-11-30T00:00:00+00:00", "2026-12-01T00:00:00+00:00"]
    assert by_job["analytics-aggregate"]["next_runs"][0] == "2026-11-28T01:00:00+00:00"
    assert by_job["cleanup"]["next_runs"] == [  # Sundays at 02:00
        "2026-11-29T02:00:00+00:00", "2026-12-06T02:00:00+00:00", "2026-12-13T02:00:00+00:00"]

    expiring_tenants(engine)
    code, _, _ = run_cli("trigger", "expiry-checker", "--now", NOW_ARG)
    assert code == 0
    last = {r["job"]: r["last_run"] for r in run_json(run_cli, "jobs", "--now", NOW_ARG)}
    assert last["expiry-checker"]["status"] == "succeeded"
    assert last["expiry-checker"]["trigger"] == "manual"
    assert last["expiry-checker"]["processed"] == 2
    assert last["cleanup"] is None

    code, out, _ = run_cli("jobs", "--now", NOW_ARG)
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("expiry-checker"))
    assert "0 0 * * *" in line and "daily at 00:00" in line
    assert "2026-11-29 00:00" in line and "succeeded" in line


def test_jobs_next_runs_in_the_jobs_timezone_with_cron_dst_rules(
        engine: Engine, run_cli: Any, tmp_path: Path) -> None:
    config = tmp_path / "berlin.toml"
    config.write_text('[jobs.expiry-checker]\nschedule = "30 2 * * *"\n'
                      'timezone = "Europe/Berlin"\n')
    rows = run_json(run_cli, "--config", str(config), "jobs", "--now", "2026-03-28T12:00:00Z",
                    "--count", "3")
    row = rows[0]
    assert row["timezone"] == "Europe/Berlin"
    # 02:30 does not exist on 29 March: the slot fires once at the first valid minute.
    assert row["next_runs"] == ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00",
                                "2026-03-31T02:30:00+02:00"]


def test_jobs_does_not_need_the_cache(engine: Engine, env: dict[str, str]) -> None:
    proc = cli({**env, "REDIS_URL": "redis://127.0.0.1:1/0"}, "jobs", "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 4


def write_schedules(path: Path, expiry: str, *, others_enabled: bool = True) -> Path:
    lines = ["[jobs.expiry-checker]", f'schedule = "{expiry}"', ""]
    if not others_enabled:
        for other in ("payment-reminders", "analytics-aggregate", "cleanup"):
            lines += [f"[jobs.{other}]", "enabled = false", ""]
    path.write_text("\n".join(lines))
    return path


def start_runner(engine: Engine, config: Path, env: dict[str, str]) -> Presence:
    """A runner as `storeflow-ops run --config CONFIG` registers itself (the real runner
    process is tested in test_runner_processes.py)."""
    from jobs.runner_schedules import record_schedules
    from jobs.settings import Overrides, load_settings

    settings = load_settings(Overrides(config=str(config)), env=env)
    presence = Presence(engine, "runner", clock=utc_now, interval=3600)
    record_schedules(engine, presence.id, settings)
    return presence.start()


def test_jobs_shows_the_live_runners_schedules_and_warns_once(
        engine: Engine, run_cli: Any, env: dict[str, str], tmp_path: Path) -> None:
    slow = write_schedules(tmp_path / "slow.toml", "@daily", others_enabled=False)
    write_schedules(tmp_path / "schedules.toml", "* * * * * */5")  # the viewer's, in the cwd

    code, out, err = run_cli("jobs", "--now", NOW_ARG)  # no runner: the local configuration
    assert code == 0 and err == ""
    assert "* * * * * */5" in next(ln for ln in out.splitlines() if ln.startswith("expiry"))

    runner = start_runner(engine, slow, env)
    try:
        code, out, err = run_cli("jobs", "--now", NOW_ARG)
        assert code == 0
        line = next(ln for ln in out.splitlines() if ln.startswith("expiry-checker"))
        assert "@daily" in line and "daily at 00:00" in line and "*/5" not in line
        assert "2026-11-29 00:00" in line and "(in 23h 30m)" in line
        cleanup = next(ln for ln in out.splitlines() if ln.startswith("cleanup"))
        assert cleanup.split()[-1] == "disabled" and " - " in cleanup
        warning = err.strip().splitlines()
        assert len(warning) == 1, err
        assert warning[0].startswith("storeflow-ops: warning:")
        assert "slow.toml" in warning[0] and "schedules.toml" in warning[0]
        assert "expiry-checker (runner: @daily UTC, local: * * * * * */5 UTC)" in warning[0]

        code, out, err = run_cli("jobs", "--now", NOW_ARG, "--count", "2", "--json")
        assert code == 0 and len(err.strip().splitlines()) == 1
        by_job = {r["job"]: r for r in json.loads(out)}
        assert by_job["expiry-checker"]["schedule"] == "@daily"
        assert by_job["expiry-checker"]["next_runs"] == ["2026-11-29T00:00:00+00:00",
                                                         "2026-11-30T00:00:00+00:00"]
        assert by_job["cleanup"]["enabled"] is False and by_job["cleanup"]["next_runs"] == []
        assert {r["schedule_source"] for r in by_job.values()} == {"runner"}

        code, out, err = run_cli("status", "--json")
        assert code == 0 and len(err.strip().splitlines()) == 1 and "slow.toml" in err
        jobs = {j["job"]: j for j in json.loads(out)["jobs"]}
        assert jobs["expiry-checker"]["schedule"] == "@daily"
        assert jobs["expiry-checker"]["schedule_source"] == "runner"
        assert jobs["cleanup"]["enabled"] is False

        # The runner's own configuration, seen from anywhere: nothing to warn about.
        code, out, err = run_cli("--config", str(slow), "jobs")
        assert code == 0 and err == ""
    finally:
        runner.stop()

    code, out, err = run_cli("jobs", "--now", NOW_ARG, "--json")  # stopped: local again
    assert code == 0 and err == ""
    assert {r["schedule_source"] for r in json.loads(out)} == {"local"}
    assert json.loads(out)[0]["schedule"] == "* * * * * */5"


def test_jobs_warns_when_live_runners_disagree(
        engine: Engine, run_cli: Any, env: dict[str, str], tmp_path: Path) -> None:
    older = start_runner(engine, write_schedules(tmp_path / "a.toml", "0 6 * * *"), env)
    newer = start_runner(engine, write_schedules(tmp_path / "b.toml", "0 7 * * *"), env)
    try:
        code, out, err = run_cli("--config", str(tmp_path / "b.toml"), "jobs", "--json")
        assert code == 0
        assert json.loads(out)[0]["schedule"] == "0 7 * * *"  # the newest runner's
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "live runners disagree about expiry-checker" in lines[0]
        assert f"pid {os.getpid()}: 0 6 * * * UTC" in lines[0]
        assert f"pid {os.getpid()}: 0 7 * * * UTC" in lines[0]
    finally:
        newer.stop()
        older.stop()


def test_jobs_warns_of_a_live_runners_schedule_it_cannot_read(
        engine: Engine, run_cli: Any, env: dict[str, str], tmp_path: Path) -> None:
    """A runner of another version may fire by a schedule this one refuses (a seconds
    field of `*` last): the job is shown from another runner's or the local
    configuration, and a warning says so."""
    config = write_schedules(tmp_path / "old.toml", "0 6 * * *")
    label = f"{socket.gethostname()} pid {os.getpid()}"
    old = start_runner(engine, config, env)
    newer = None
    try:
        with engine.begin() as c:
            c.execute(ops_runner_schedules.update()
                      .where(ops_runner_schedules.c.job_id == "cleanup")
                      .values(schedule="*/5 * * * * *"))
        code, out, err = run_cli("--config", str(config), "jobs", "--json")
        assert code == 0, err
        by_job = {r["job"]: r for r in json.loads(out)}
        assert by_job["cleanup"]["schedule_source"] == "local"
        assert by_job["cleanup"]["schedule"] == "0 2 * * 0"  # the default: not the runner's
        assert by_job["expiry-checker"]["schedule_source"] == "runner"
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert "cannot read the schedule live runners recorded for cleanup " \
            f"({label}: */5 * * * * * UTC; showing the local configuration)" in lines[0]

        newer = start_runner(engine, config, env)  # one that can be read, for the same job
        code, out, err = run_cli("--config", str(config), "jobs", "--json")
        assert code == 0, err
        assert {r["job"]: r for r in json.loads(out)}["cleanup"]["schedule_source"] == "runner"
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert f"cleanup ({label}: */5 * * * * * UTC; showing {label}'s)" in lines[0]
    finally:
        if newer is not None:
            newer.stop()
        old.stop()


def test_jobs_paused_and_disabled_show_no_next_run(
        engine: Engine, run_cli: Any, tmp_path: Path) -> None:
    config = tmp_path / "off.toml"
    config.write_text("[jobs.payment-reminders]\nenabled = false\n")
    assert run_cli("pause", "cleanup")[0] == 0
    code, out, _ = run_cli("--config", str(config), "jobs", "--now", NOW_ARG)
    assert code == 0
    rows = {ln.split()[0]: ln for ln in out.splitlines()[1:]}
    for job_id, state in (("payment-reminders", "disabled"), ("cleanup", "paused")):
        assert rows[job_id].split()[-1] == state
        assert "2026-" not in rows[job_id] and " in " not in rows[job_id], rows[job_id]
    assert "2026-11-29 00:00" in rows["expiry-checker"]
    by_job = {r["job"]: r for r in run_json(run_cli, "--config", str(config), "jobs",
                                            "--now", NOW_ARG)}
    assert by_job["payment-reminders"]["next_runs"] == []
    assert by_job["cleanup"]["next_runs"] == []
    assert len(by_job["expiry-checker"]["next_runs"]) == 3  # the default --count


def test_jobs_with_a_past_now_says_how_long_ago_the_last_run_was(
        engine: Engine, run_cli: Any) -> None:
    expiring_tenants(engine)
    assert run_cli("trigger", "expiry-checker", "--now", NOW_ARG)[0] == 0
    code, out, _ = run_cli("jobs", "--now", "2026-03-01T00:00:00Z")
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("expiry-checker"))
    # The run finished moments ago on the real clock, however far back --now is.
    assert re.search(r"succeeded (\d+s ago|just now)", line), line
    assert "2026-03-02 00:00 UTC (in 1d 00h)" in line


# --- trigger / preview -----------------------------------------------------------------------


def test_trigger_json_is_the_spec_report(engine: Engine, env: dict[str, str],
                                         tmp_path: Path) -> None:
    a, b = expiring_tenants(engine)
    proc = cli(env, "trigger", "expiry-checker", "--now", NOW_ARG, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert_report_shape(report)
    assert report["message"] == "Job completed"
    assert report["job"] == "expiry-checker"
    assert report["trigger"] == "manual" and report["dry_run"] is False
    assert isinstance(report["run_id"], int)
    results = report["results"]
    assert results["processed"] == 2 and results["errors"] == []
    assert results["summary"] == {"expired": 1, "suspended": 1, "unchanged": 0,
                                  "emails_queued": 2}
    assert {(i["tenant_id"], i["action"], i["status"]) for i in results["items"]} == {
        (a, "expired", "ok"), (b, "suspended", "ok")}
    with engine.connect() as c:
        run = c.execute(select(ops_runs)).one()
        assert run.id == report["run_id"] and run.status == "succeeded"
        # The CLI registered itself for the run's duration, and signed off afterwards.
        runner = c.execute(select(ops_runners).where(ops_runners.c.id == run.runner_id)).one()
        assert runner.kind == "cli" and runner.stopped_at is not None
        assert "@" in run.started_by


def test_trigger_human_summary_and_item_error_exit_1(engine: Engine, env: dict[str, str],
                                                     tmp_path: Path) -> None:
    add_tenant(engine, id="t-bad-mail", email="owner@gmail,com",
               expire_date=NOW - timedelta(hours=2))
    add_tenant(engine, id="t-good", expire_date=NOW - timedelta(hours=2))
    # A --now with a fraction of a second: the run's line says it to the second, as the
    # report does.
    proc = cli(env, "trigger", "expiry-checker", "--now", "2026-11-28T00:30:00.250Z",
               cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert re.fullmatch(r"run \d+: expiry-checker at 2026-11-28 00:30:00 UTC",
                        proc.stderr.splitlines()[0]), proc.stderr
    assert "now:       2026-11-28 00:30:00 UTC" in proc.stdout
    assert "Job completed with errors" in proc.stdout
    assert "expired=1" in proc.stdout
    bad = next(ln for ln in proc.stdout.splitlines() if ln.startswith("t-bad-mail"))
    assert "error" in bad and "gmail,com" in bad
    with engine.connect() as c:
        status = {r.id: r.status for r in c.execute(select(tenants.c.id, tenants.c.status))}
    assert status == {"t-bad-mail": "active", "t-good": "expired"}


@pytest.mark.parametrize("how", [("preview",), ("trigger", "--dry-run")])
def test_preview_reports_the_real_run_and_writes_nothing(
        engine: Engine, run_cli: Any, how: tuple[str, ...]) -> None:
    expiring_tenants(engine)
    before = snapshot(engine)
    preview = run_json(run_cli, *how, "expiry-checker", "--now", NOW_ARG)
    assert snapshot(engine) == before
    assert_report_shape(preview)
    assert preview["message"] == "Preview completed"
    assert preview["dry_run"] is True and preview["run_id"] is None

    real = run_json(run_cli, "trigger", "expiry-checker", "--now", NOW_ARG)
    assert real["results"]["summary"] == preview["results"]["summary"]
    assert [(i["tenant_id"], i["action"]) for i in real["results"]["items"]] == [
        (i["tenant_id"], i["action"]) for i in preview["results"]["items"]]


USAGE_ERRORS: list[tuple[list[str], list[str]]] = [
    (["trigger", "nope"], ["unknown job 'nope'", "expiry-checker", "cleanup"]),
    (["preview", "nope", "--json"], ["unknown job 'nope'"]),
    (["trigger", "expiry-checker", "--now", "yesterday"], ["--now"]),
    (["trigger", "expiry-checker", "--now", "2026-11-28T00:00:00"], ["--now", "offset"]),
    (["trigger", "analytics-aggregate", "--date", "2026-13-01"], ["--date", "YYYY-MM-DD"]),
    (["trigger", "expiry-checker", "--date", "2026-11-01"], ["analytics-aggregate only"]),
    (["trigger", "analytics-aggregate", "--from", "2026-11-01"], ["--from needs --to"]),
    (["trigger", "analytics-aggregate", "--from", "2026-11-05", "--to", "2026-11-01"],
     ["after --to"]),
    (["trigger", "analytics-aggregate", "--date", "2026-11-29", "--now", NOW_ARG],
     ["--date 2026-11-29 is in the future", "today is 2026-11-28"]),
    (["preview", "analytics-aggregate", "--from", "2026-11-20", "--to", "2026-11-29",
      "--now", NOW_ARG], ["--to 2026-11-29 is in the future"]),
    (["trigger", "analytics-aggregate", "--date", "2026-11-20", "--from", "2026-11-20",
      "--to", "2026-11-21"], ["either --date or --from/--to"]),
    (["history", "nope"], ["unknown job 'nope'"]),
    (["pause", "nope"], ["unknown job 'nope'"]),
    (["show", "999"], ["no run 999"]),
    (["analytics", "no-such-tenant"], ["unknown tenant 'no-such-tenant'"]),
    (["analytics", "x", "--date", "soon"], ["--date"]),
    (["jobs", "--now", "noon"], ["--now"]),
    # A relative --path: the command runs in the test's own folder.
    (["demo", "--tenants", "0", "--no-tui", "--path", "d.sqlite3"], ["--tenants"]),
]


@pytest.mark.parametrize(("args", "words"), USAGE_ERRORS,
                         ids=[" ".join(args) for args, _words in USAGE_ERRORS])
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str],
                                           args: list[str], words: list[str]) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "HOME": str(tmp_path),
           "PATH": "/usr/bin:/bin"}
    seed = make_engine(env["DATABASE_URL"])
    platform.create_all(seed)
    seed.dispose()
    # In this process, with that environment and nothing else (as a subprocess would have).
    code, out, err = in_process_cli(env, monkeypatch, tmp_path, capsys)(*args)
    proc = subprocess.CompletedProcess(args, code, out, err)
    assert proc.returncode == 2, (args, proc.stderr)
    line = one_line_error(proc)
    for word in words:
        assert word in line, (args, line)
    # With --json the error is also a document on stdout; without, stdout stays empty.
    if "--json" in args:
        assert json.loads(proc.stdout)["exit_code"] == 2, args
    else:
        assert proc.stdout == "", args
    check = make_engine(env["DATABASE_URL"])
    with check.connect() as c:
        # Refused before anything was recorded: no run, if the ops_ tables exist at all.
        if inspect(c).has_table("ops_runs"):
            assert c.execute(select(ops_runs)).all() == []
    check.dispose()


def test_unreachable_database_exit_3(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    base = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    # PostgreSQL down, and the embedded default database's folder impossible to create.
    for where in ({"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"},
                  {"XDG_DATA_HOME": str(blocker)}):
        for args in (["jobs"], ["trigger", "expiry-checker", "--json"], ["status"]):
            proc = cli({**base, **where}, *args, cwd=tmp_path)
            assert proc.returncode == 3, (where, args, proc.stderr)
            assert "database unreachable" in one_line_error(proc)
            if "--json" in args:
                assert json.loads(proc.stdout)["exit_code"] == 3
            else:
                assert proc.stdout == ""


def test_unreachable_redis_fails_analytics_only(engine: Engine, env: dict[str, str],
                                                tmp_path: Path) -> None:
    tid = add_tenant(engine, id="t-shop", expire_date=NOW - timedelta(hours=1))
    down = {**env, "REDIS_URL": "redis://127.0.0.1:1/0"}
    proc = cli(down, "trigger", "analytics-aggregate", "--now", NOW_ARG, "--json", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    report = json.loads(proc.stdout)
    assert report["message"] == "Job failed"
    assert any("cache unreachable" in (e["error"] or "") for e in report["results"]["errors"])

    proc = cli(down, "analytics", tid, cwd=tmp_path)
    assert proc.returncode == 3
    assert "cache unreachable" in one_line_error(proc)

    proc = cli(down, "trigger", "expiry-checker", "--now", NOW_ARG, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"]["summary"]["expired"] == 1


@pytest.fixture
def held_lock(engine: Engine, settings: Settings) -> Iterator[int]:
    """expiry-checker running in another thread, paused inside its run, with a live
    presence: the job's lock is genuinely held."""
    add_tenant(engine, id="t-slow", expire_date=NOW - timedelta(hours=1))
    started = threading.Event()
    release = threading.Event()
    run_ids: list[int | None] = []

    def on_started(run_id: int | None) -> None:
        run_ids.append(run_id)
        started.set()
        release.wait(60)

    presence = Presence(engine, "cli", clock=utc_now).start()
    worker = threading.Thread(target=runs.execute, args=(engine, settings, "expiry-checker"),
                              kwargs={"now": NOW, "started_by": "test", "on_started": on_started,
                                      "runner_id": presence.id})
    worker.start()
    try:
        assert started.wait(30)
        assert run_ids[0] is not None
        yield run_ids[0]
    finally:
        release.set()
        worker.join(30)
        presence.stop()


def test_job_already_running_exit_4(engine: Engine, env: dict[str, str], held_lock: int,
                                    tmp_path: Path) -> None:
    proc = cli(env, "trigger", "expiry-checker", "--now", NOW_ARG, "--json", cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr
    line = one_line_error(proc)
    assert "already running" in line and f"run {held_lock}" in line
    with engine.connect() as c:
        assert c.execute(select(ops_runs.c.id)).scalars().all() == [held_lock]
    # A preview does not need the lock.
    proc = cli(env, "preview", "expiry-checker", "--now", NOW_ARG, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # status shows it running.
    status = json.loads(cli(env, "status", "--json", cwd=tmp_path).stdout)
    job = next(j for j in status["jobs"] if j["job"] == "expiry-checker")
    assert job["running"] is True and job["run_id"] == held_lock


# --- history / show --------------------------------------------------------------------------


def test_history_and_show(engine: Engine, run_cli: Any) -> None:
    add_tenant(engine, id="t-bad-mail", email="owner@gmail,com",
               expire_date=NOW - timedelta(hours=2))
    add_tenant(engine, id="t-good", expire_date=NOW - timedelta(hours=2))
    first = run_json(run_cli, "trigger", "expiry-checker", "--now", NOW_ARG, expect=1)
    second = run_json(run_cli, "trigger", "expiry-checker", "--now", NOW_ARG, expect=1)

    rows = run_json(run_cli, "history")
    assert [r["run_id"] for r in rows] == [second["run_id"], first["run_id"]]
    for row in rows:
        assert set(row) == {"run_id", "job", "trigger", "scheduled_for", "attempt", "status",
                            "started_at", "finished_at", "processed", "errors"}
        assert row["status"] == "partial" and row["errors"] == 1 and row["attempt"] == 1
        assert row["scheduled_for"] is None
        assert datetime.fromisoformat(row["started_at"]).utcoffset() == timedelta(0)
    assert rows[0]["processed"] == rows[1]["processed"] == 2
    assert {(i["tenant_id"], i["action"]) for i in second["results"]["items"]} == {
        ("t-bad-mail", "expired"), ("t-good", "unchanged")}
    assert run_json(run_cli, "history", "cleanup") == []
    assert len(run_json(run_cli, "history", "expiry-checker", "--limit", "1")) == 1

    shown = run_json(run_cli, "show", str(first["run_id"]))
    assert_report_shape(shown)
    assert shown["message"] == "Job completed with errors"
    assert shown["results"]["items"] == first["results"]["items"]
    assert shown["results"]["errors"] == [
        {"tenant_id": "t-bad-mail", "error": first["results"]["errors"][0]["error"]}]
    only_errors = run_json(run_cli, "show", str(first["run_id"]), "--errors")
    assert [i["tenant_id"] for i in only_errors["results"]["items"]] == ["t-bad-mail"]

    code, out, _ = run_cli("history")
    assert code == 0 and "partial" in out and out.splitlines()[0].startswith("RUN")
    code, out, _ = run_cli("show", str(first["run_id"]))
    assert code == 0 and "t-bad-mail" in out and "gmail,com" in out


# --- analytics -------------------------------------------------------------------------------


def test_analytics_command_reads_the_cache(engine: Engine, run_cli: Any) -> None:
    tid = add_tenant(engine, id="t-shop", name="Copper Fox")
    pid = add_product(engine, tid, price="10.00")
    day = date(2026, 11, 27)
    add_order(engine, tid, datetime(2026, 11, 27, 10, tzinfo=UTC), "20.00", lines=[(pid, 2)])
    add_order(engine, tid, datetime(2026, 11, 27, 11, tzinfo=UTC), "5.00", "refunded")
    add_customer(engine, tid, datetime(2026, 11, 27, 9, tzinfo=UTC))

    report = run_json(run_cli, "trigger", "analytics-aggregate", "--date", day.isoformat())
    assert report["results"]["summary"]["cache_writes"] == 1

    values = run_json(run_cli, "analytics", tid, "--date", "2026-11-27")
    assert len(values) == 1
    v = values[0]
    assert v["date"] == "2026-11-27"
    assert v["key"] == f"analytics:{tid}:overview:daily:2026-11-27"
    assert {k: v["value"][k] for k in ("orders", "revenue", "newCustomers", "productsSold")} == {
        "orders": 2, "revenue": 20, "newCustomers": 1, "productsSold": 2}
    assert 0 < v["ttl"] <= 86_400

    # By name too; the default is the 14 days before today, uncached ones with null values.
    recent = run_json(run_cli, "analytics", "Copper Fox")
    assert len(recent) == 14
    assert recent[0]["date"] == (utc_now().date() - timedelta(days=1)).isoformat()
    assert all(r["value"] is None and r["ttl"] is None for r in recent
               if r["date"] != "2026-11-27")

    run_json(run_cli, "trigger", "analytics-aggregate", "--from", "2026-11-20",
             "--to", "2026-11-21")
    days = run_json(run_cli, "analytics", tid, "--date", "2026-11-21")
    assert days[0]["value"]["orders"] == 0

    code, out, _ = run_cli("analytics", tid, "--date", "2026-11-27")
    assert code == 0 and "20.00" in out

    # The run's table shows the figures first, not the tenant id the row begins with.
    code, out, _ = run_cli("trigger", "analytics-aggregate", "--date", day.isoformat())
    row = next(line for line in out.splitlines() if line.startswith(tid))
    assert code == 0
    assert "orders=2 revenue=20 newCustomers=1 productsSold=2" in row
    assert "tenantId" not in row
    assert row.endswith(f"key=analytics:{tid}:overview:daily:2026-11-27")


# Carriage return and line feed, a colour, an OSC window title, a bell, a C1 CSI
# (\x9b2J clears the screen on terminals that take 8-bit controls) and a bidi override.
NASTY = "Evil\r\n\x1b[31mShop\x1b]0;pwned\x07\x9b2J\u202e"
NASTY_SHOWN = "Evil\\r\\n\\x1b[31mShop\\x1b]0;pwned\\x07\\x9b2J\\u202e"
CONTROLS = ("\r", "\x1b", "\x07", "\x9b", "\u202e")


def test_text_output_escapes_control_characters_and_json_stays_exact(
        engine: Engine, run_cli: Any) -> None:
    add_tenant(engine, id="t-nasty", name=NASTY, email="owner\x1b[2J@gmail,com",
               expire_date=NOW - timedelta(hours=2))
    add_tenant(engine, id="t-fine", name=NASTY, expire_date=NOW - timedelta(hours=2))
    code, out, err = run_cli("trigger", "expiry-checker", "--now", NOW_ARG)
    assert code == 1, err
    run_id = int(out.split("(run ")[1].split(",")[0])
    texts = {"trigger": (out, err)}
    for args in (("show", str(run_id)), ("history",), ("outbox",),
                 ("analytics", "t-fine", "--date", "2026-11-27")):
        code, out, err = run_cli(*args)
        assert code == 0, (args, err)
        texts[args[0]] = (out, err)
    for command, (out, err) in texts.items():
        for char in CONTROLS:
            assert char not in out + err, (command, char, out + err)
    for command in ("trigger", "show"):
        rows = [ln for ln in texts[command][0].splitlines() if ln.startswith("t-")]
        assert len(rows) == 2 and all(NASTY_SHOWN in row for row in rows), rows
        assert "owner\\x1b[2J@gmail,com" in texts[command][0]
    # The subject quotes the name (with its line break folded, as a mail header must).
    assert "Evil \\x1b[31mShop\\x1b]0;pwned\\x07\\x9b2J\\u202e has" in texts["outbox"][0]
    assert texts["analytics"][1].startswith(f"{NASTY_SHOWN} (t-fine)")

    # JSON is data, exact: the name comes back as it is stored.
    subjects = [e["subject"] for e in run_json(run_cli, "outbox")]
    assert len(subjects) == 1 and "Evil \x1b[31mShop\x1b]0;pwned\x07\x9b2J\u202e" in subjects[0]
    shown = run_json(run_cli, "show", str(run_id))
    assert [e["tenant_id"] for e in shown["results"]["errors"]] == ["t-nasty"]


def test_the_runners_text_log_escapes_control_characters() -> None:
    import io

    from console.runlog import RunLog

    text, json_ = io.StringIO(), io.StringIO()
    for stream, fmt in ((text, "text"), (json_, "json")):
        RunLog(stream, fmt, clock=lambda: NOW).warning(  # type: ignore[arg-type]
            "run-finished", error=NASTY, tenant="Shop\x1b]0;pwned\x07")  # quoted; bare
    line = text.getvalue()
    assert line.count("\n") == 1 and not any(c in line for c in CONTROLS), line
    assert "tenant=Shop\\x1b]0;pwned\\x07" in line and "\\x9b2J" in line
    assert json.loads(json_.getvalue())["error"] == NASTY  # JSON escapes them itself


# --- outbox ----------------------------------------------------------------------------------


def test_outbox_lists_emails_and_warns_without_smtp(engine: Engine, run_cli: Any) -> None:
    a, b = expiring_tenants(engine)
    run_json(run_cli, "trigger", "expiry-checker", "--now", NOW_ARG)
    entries = run_json(run_cli, "outbox")
    assert len(entries) == 2
    for e in entries:
        assert {"id", "kind", "tenant_id", "to", "subject", "status", "attempts",
                "idempotency_key"} <= set(e)
        assert e["status"] == "pending" and e["attempts"] == 0
    assert {(e["tenant_id"], e["kind"], e["to"]) for e in entries} == {
        (a, "subscription_expired", f"owner-{a}@example.com"),
        (b, "subscription_suspended", f"owner-{b}@example.com")}
    assert run_json(run_cli, "outbox", "--status", "sent") == []
    assert len(run_json(run_cli, "outbox", "--limit", "1")) == 1

    code, out, err = run_cli("outbox")
    assert code == 0 and "subscription_expired" in out
    assert "SMTP_URL" in err and "2 pending" in err


# --- pause / resume / status -----------------------------------------------------------------


def test_one_of_a_thing_is_counted_in_the_singular(engine: Engine, run_cli: Any) -> None:
    add_tenant(engine, id="t-one", expire_date=NOW - timedelta(hours=1))
    run_json(run_cli, "trigger", "expiry-checker", "--now", NOW_ARG)
    code, _, err = run_cli("outbox")
    assert code == 0 and "note: 1 pending email is not being sent" in err, err
    code, _, err = run_cli("outbox", "send")
    assert code == 0 and "1 pending email waits in the outbox" in err, err


def test_pause_resume_and_status(engine: Engine, run_cli: Any, env: dict[str, str],
                                 tmp_path: Path) -> None:
    code, out, _ = run_cli("pause", "cleanup")
    assert code == 0 and "paused" in out and "already" not in out
    code, out, _ = run_cli("pause", "cleanup")
    assert code == 0 and "already" in out
    paused = {r["job"]: r["paused"] for r in run_json(run_cli, "jobs")}
    assert paused == {"expiry-checker": False, "payment-reminders": False,
                      "analytics-aggregate": False, "cleanup": True}

    proc = cli(env, "status", "--json", cwd=tmp_path)
    assert proc.returncode == 1
    assert "no runner is alive" in proc.stderr
    status = json.loads(proc.stdout)
    assert status["runner_alive"] is False
    assert {j["job"]: j["paused"] for j in status["jobs"]}["cleanup"] is True

    with Presence(engine, "runner", clock=utc_now) as runner:
        proc = cli(env, "status", "--json", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        status = json.loads(proc.stdout)
        assert status["runner_alive"] is True
        mine = next(r for r in status["runners"] if r["id"] == runner.id)
        assert mine["alive"] is True and mine["kind"] == "runner"
        assert {"host", "pid", "started_at", "last_heartbeat"} <= set(mine)
        code, out, _ = run_cli("status")
        assert code == 0 and "runner" in out and "yes" in out

    code, out, _ = run_cli("resume", "cleanup")
    assert code == 0 and "resumed" in out
    assert all(not r["paused"] for r in run_json(run_cli, "jobs"))
    assert run_cli("status")[0] == 1  # the runner stopped


# --- db upgrade and demo ---------------------------------------------------------------------


def test_db_upgrade_reports_the_revision(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.sqlite3'}", "HOME": str(tmp_path),
           "PATH": "/usr/bin:/bin"}
    proc = cli(env, "db", "upgrade", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    head = head_revision()
    assert f"none -> {head}" in proc.stdout
    proc = cli(env, "db", "upgrade", cwd=tmp_path)
    assert proc.returncode == 0 and f"already at revision {head}" in proc.stdout
    # Only the ops_ tables: the platform's are never created by an upgrade.
    eng = make_engine(env["DATABASE_URL"])
    from sqlalchemy import inspect
    names = set(inspect(eng).get_table_names())
    eng.dispose()
    assert "ops_runs" in names and "tenants" not in names


def test_demo_builds_a_database_the_commands_read(tmp_path: Path) -> None:
    path = tmp_path / "demo" / "demo.sqlite3"
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
           "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/ignored-by-demo"}
    proc = cli(env, "demo", "--no-tui", "--tenants", "12", "--path", str(path), cwd=tmp_path,
               timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert str(path) in proc.stdout
    assert f"DATABASE_URL=sqlite:///{path} storeflow-ops jobs" in proc.stdout

    demo_env = {**env, "DATABASE_URL": f"sqlite:///{path}"}
    rows = json.loads(cli(demo_env, "jobs", "--json", cwd=tmp_path).stdout)
    last = {r["job"]: r["last_run"] for r in rows}
    assert last["expiry-checker"] is not None and last["analytics-aggregate"] is not None
    history = json.loads(cli(demo_env, "history", "--limit", "200", "--json",
                             cwd=tmp_path).stdout)
    assert {"schedule", "manual"} <= {h["trigger"] for h in history}
    assert "missed" in {h["status"] for h in history}
    assert json.loads(cli(demo_env, "outbox", "--json", cwd=tmp_path).stdout)

    # An operator previewing the expiry check sees the tenant whose address is broken.
    proc = cli(demo_env, "preview", "expiry-checker", "--json", cwd=tmp_path)
    assert proc.returncode == 1
    errors = json.loads(proc.stdout)["results"]["errors"]
    assert any("invalid recipient" in e["error"] for e in errors)

    eng = make_engine(demo_env["DATABASE_URL"])
    with eng.connect() as c:
        statuses = set(c.execute(select(tenants.c.status)).scalars())
        payment = set(c.execute(select(orders.c.payment_status)).scalars())
        n_lines = len(c.execute(select(order_products.c.id)).all())
        n_carts = len(c.execute(select(cart_items.c.id)).all())
        emails = len(c.execute(select(ops_email_outbox.c.id)).all())
    eng.dispose()
    assert {"active", "expired", "suspended", "cancelled"} <= statuses
    assert payment == {"paid", "pending", "failed", "refunded"}
    assert n_lines > 0 and n_carts > 0 and emails > 0

    # Building again overwrites the file instead of adding to it.
    proc = cli(env, "demo", "--no-tui", "--tenants", "3", "--path", str(path), cwd=tmp_path,
               timeout=180)
    assert proc.returncode == 0, proc.stderr
    eng = make_engine(demo_env["DATABASE_URL"])
    with eng.connect() as c:
        assert len(c.execute(select(tenants.c.id)).all()) == 3
    eng.dispose()


def test_demo_is_deterministic_for_a_given_today(tmp_path: Path) -> None:
    from jobs.demo import build_demo

    today = datetime(2026, 11, 28, 11, 30, tzinfo=UTC)
    built = [build_demo(tmp_path / f"{name}.sqlite3", 6, today) for name in ("a", "b")]
    assert built[0].tenants == 6 and built[0].runs > 10
    assert built[0].invalid_email_tenant is not None
    contents = []
    for info in built:
        eng = make_engine(info.url)
        # ops_cache is left out: its expiry follows the wall clock, so the values stay readable.
        contents.append({k: v for k, v in snapshot(eng).items() if k != "ops_cache"})
        eng.dispose()
    assert contents[0] == contents[1]
    assert contents[0]["orders"] and contents[0]["ops_run_items"]


def demo_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A 3-tenant demo database built at tmp_path/demo.sqlite3, and an environment that
    uses it (`extra` added)."""
    demo = tmp_path / "demo.sqlite3"
    env = {"DATABASE_URL": f"sqlite:///{demo}", "HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
           **extra}
    built = cli(env, "demo", "--no-tui", "--tenants", "3", "--path", str(demo), cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    return env


def demo_files(tmp_path: Path) -> list[str]:
    """The demo database's files: the database alone once it is closed (no -wal, -shm)."""
    return sorted(p.name for p in tmp_path.glob("demo.sqlite3*"))


def test_a_closed_pipe_is_not_an_error(tmp_path: Path) -> None:
    env = demo_env(tmp_path)
    # `storeflow-ops jobs --json --count 5000 | head -c 10`: the reader stops after 10 bytes,
    # long before the output (far more than a pipe buffer) is written.
    proc = subprocess.Popen([EXE, "jobs", "--json", "--count", "5000"], env=env, cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == 141
    assert err == ""


def test_the_installed_command_collects_garbage_while_its_command_runs(tmp_path: Path) -> None:
    # entry() starts with the collector off, for the imports; the command itself (a runner
    # may run for days) must run with it on, the start-up's objects frozen out of its passes.
    probe = ("import gc, sys\n"
             "import console.cli as c\n"
             "def report(ctx, args):\n"
             "    print(gc.isenabled(), gc.get_freeze_count() > 0)\n"
             "    return 0\n"
             "c._handler = lambda args: report\n"
             "raise SystemExit(c.entry())\n")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'ops.sqlite3'}"}
    proc = subprocess.run([sys.executable, "-c", probe, "jobs"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]


def test_the_installed_command_closes_its_database_before_it_exits(tmp_path: Path) -> None:
    """The entry point skips Python's last collection at exit, so the database must be
    closed before: SQLite's last connection then folds its WAL into the file and removes
    the -wal and -shm files, which a process that only exits leaves behind."""
    env = demo_env(tmp_path)
    for args in (["jobs"], ["trigger", "cleanup", "--json"], ["history"]):
        proc = subprocess.run([EXE, *args], env=env, cwd=tmp_path, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=60)
        assert proc.returncode == 0, (args, proc.stderr)
        assert demo_files(tmp_path) == ["demo.sqlite3"], args


def test_global_options_also_after_the_command(engine: Engine, run_cli: Any,
                                                tmp_path: Path) -> None:
    """`storeflow-ops run --config FILE` is how people type it; before or after the command,
    the option counts, and one given after overrides one given before."""
    hourly = tmp_path / "hourly.toml"
    hourly.write_text('[jobs.cleanup]\nschedule = "@hourly"\n')
    weekly = tmp_path / "weekly.toml"
    weekly.write_text('[jobs.cleanup]\nschedule = "0 3 * * 0"\n')

    def cleanup_schedule(*args: str) -> str:
        listed = run_json(run_cli, *args)
        return next(j["schedule"] for j in listed if j["job"] == "cleanup")

    assert cleanup_schedule("jobs", "--config", str(hourly)) == "@hourly"
    assert cleanup_schedule("--config", str(hourly), "jobs") == "@hourly"
    assert cleanup_schedule("--config", str(hourly), "jobs", "--config", str(weekly)) == "0 3 * * 0"

    bad = tmp_path / "bad.toml"
    bad.write_text('[jobs.cleanup]\nschedule = "61 * * * *"\n')
    code, out, err = run_cli("jobs", "--config", str(bad))
    assert code == 2 and out == ""
    assert err.strip().startswith(f"storeflow-ops: {bad}") and "schedule" in err


def test_item_note_leaves_out_only_what_the_row_shows() -> None:
    from console.formatting import item_note
    from jobs.records import ItemResult, ItemStatus

    cached = ItemResult("t-1", "cached", ItemStatus.OK,
                        {"tenantId": "t-1", "orders": 2, "key": "analytics:t-1:x"})
    assert item_note(cached) == "orders=2 key=analytics:t-1:x"
    assert item_note(cached, skip=("key",)) == "orders=2"
    rows = ItemResult(None, "orphaned_order_products", ItemStatus.OK,
                      {"deleted": 3, "tenant": None, "nested": {"a": 1}})
    assert item_note(rows) == "deleted=3 tenant=None"


def test_item_note_cuts_moments_to_the_second_in_utc(engine: Engine, env: dict[str, str],
                                                     tmp_path: Path) -> None:
    from console.formatting import item_note
    from jobs.records import ItemResult, ItemStatus

    item = ItemResult("t-1", "expired", ItemStatus.OK, {
        "expire_date": "2026-11-30T15:06:01.625064+00:00", "grace_end": "2026-12-07T17:06:01+02:00",
        "day": "2026-11-30", "note": "at 2026-11-30T15:06:01+00:00 or so",
        "odd": "2026-02-30T00:00:00+00:00", "last": "9999-12-31T23:59:59-05:00"})
    assert item_note(item) == ("expire_date=2026-11-30T15:06:01Z grace_end=2026-12-07T15:06:01Z "
                               "day=2026-11-30 note=at 2026-11-30T15:06:01+00:00 or so "
                               "odd=2026-02-30T00:00:00+00:00 last=9999-12-31T23:59:59-05:00")
    # As the trigger's table shows it, while its JSON keeps the moment whole.
    add_tenant(engine, id="t-late", expire_date=datetime(2026, 11, 27, 9, 15, 30, 250_000,
                                                         tzinfo=UTC))
    human = cli(env, "trigger", "expiry-checker", "--now", NOW_ARG, cwd=tmp_path)
    assert human.returncode == 0, human.stderr
    row = next(ln for ln in human.stdout.splitlines() if ln.startswith("t-late"))
    assert "expire_date=2026-11-27T09:15:30Z grace_end=2026-12-04T09:15:30Z" in row, row
    shown = json.loads(cli(env, "show", "1", "--json", cwd=tmp_path).stdout)
    assert shown["results"]["items"][0]["detail"]["expire_date"] == (
        "2026-11-27T09:15:30.250000+00:00")

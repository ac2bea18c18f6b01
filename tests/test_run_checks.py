"""A run request is checked once, by jobs.registry.check_run: the job, its parameters and
a real run's reference time. The run path makes the check before it writes anything; the
CLI and the HTTP face make the same check before the database is opened, the console
before it asks for a confirmation."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from console.cli import main
from console.tui.screens.jobs import JobsScreen
from jobs import runs
from jobs.db import ops_runs
from jobs.errors import UsageError
from jobs.records import RunParams
from jobs.registry import check_run
from jobs.settings import Settings, load_settings
from tests.test_tui import SIZE, make_app, notes, screen_of, settle

NOW = datetime(2026, 11, 28, 0, 30, tzinfo=UTC)
ANALYTICS = "analytics-aggregate"

REFUSED = [
    pytest.param("nope", RunParams(), "unknown job 'nope'; known jobs: expiry-checker",
                 id="unknown-job"),
    pytest.param("cleanup", RunParams(date=date(2026, 11, 1)),
                 "apply to analytics-aggregate only, not cleanup", id="dates-for-another-job"),
    pytest.param(ANALYTICS, RunParams(date=date(2026, 11, 20), date_from=date(2026, 11, 20),
                                      date_to=date(2026, 11, 21)),
                 "give either --date or --from/--to, not both", id="date-and-range"),
    pytest.param(ANALYTICS, RunParams(date_from=date(2026, 11, 1)), "--from needs --to",
                 id="half-a-range"),
    pytest.param(ANALYTICS, RunParams(date_from=date(2026, 11, 5), date_to=date(2026, 11, 1)),
                 "--from 2026-11-05 is after --to 2026-11-01", id="backwards"),
    pytest.param(ANALYTICS, RunParams(date_from=date(2025, 1, 1), date_to=date(2026, 1, 2)),
                 "a backfill covers at most 366 days; 2025-01-01..2026-01-02 is 367",
                 id="over-366-days"),
    pytest.param(ANALYTICS, RunParams(date=date(2026, 11, 29)),
                 "--date 2026-11-29 is in the future (today is 2026-11-28 in UTC)",
                 id="future-day"),
]


@pytest.mark.parametrize(("job_id", "params", "says"), REFUSED)
def test_check_run_refuses_with_one_message(job_id: str, params: RunParams, says: str,
                                            tmp_path: Path) -> None:
    settings = load_settings(env={}, cwd=tmp_path)
    with pytest.raises(UsageError) as info:
        check_run(settings, job_id, params, NOW)
    assert info.value.exit_code == 2 and says in info.value.message


@pytest.mark.parametrize(("job_id", "params", "says"), REFUSED)
def test_the_run_path_makes_the_same_check_before_writing(
        engine: Engine, settings: Settings, job_id: str, params: RunParams, says: str) -> None:
    with pytest.raises(UsageError) as info:
        runs.execute(engine, settings, job_id, now=NOW, started_by="test", params=params,
                     clock=lambda: NOW)
    assert says in info.value.message
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(ops_runs)).scalar_one() == 0


def test_a_real_run_in_the_future_is_refused_given_the_clock(tmp_path: Path) -> None:
    settings = load_settings(env={}, cwd=tmp_path)
    later = NOW + timedelta(days=1)
    with pytest.raises(UsageError) as info:
        check_run(settings, "cleanup", RunParams(), later, dry_run=False, clock_now=NOW)
    assert "later than the clock" in info.value.message
    check_run(settings, "cleanup", RunParams(), later, dry_run=True, clock_now=NOW)
    check_run(settings, "cleanup", RunParams(), NOW + timedelta(minutes=4), dry_run=False,
              clock_now=NOW)


CLI_REFUSED = [
    (["trigger", "nope"], "unknown job 'nope'"),
    (["history", "nope"], "unknown job 'nope'"),
    (["pause", "nope"], "unknown job 'nope'"),
    (["trigger", "cleanup", "--date", "2026-11-01"], "analytics-aggregate only"),
    (["trigger", ANALYTICS, "--date", "2026-11-01", "--from", "2026-11-01", "--to",
      "2026-11-02"], "either --date or --from/--to"),
    (["preview", ANALYTICS, "--from", "2025-01-01", "--to", "2026-01-02"], "at most 366 days"),
    (["trigger", ANALYTICS, "--date", "2999-01-01"], "is in the future"),
    (["trigger", "cleanup", "--now", "2999-01-01T00:00:00Z"], "later than the clock"),
]


def test_the_cli_refuses_before_it_opens_the_database(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """With the database down, a bad request is still a usage error (exit 2, one line),
    and a good one meets the database (exit 3): the check came first."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", "postgresql://ops@127.0.0.1:1/none")
    for name in ("REDIS_URL", "KV_URL", "STOREFLOW_CONFIG", "SMTP_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)

    def call(*args: str) -> tuple[int, list[str]]:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        assert out == ""
        return code, err.splitlines()

    for args, says in CLI_REFUSED:
        code, lines = call(*args)
        assert code == 2, (args, lines)
        assert len(lines) == 1 and says in lines[0], (args, lines)
    code, lines = call("preview", ANALYTICS, "--from", "2025-01-01", "--to", "2026-01-01")
    assert code == 3 and "database unreachable" in lines[-1], lines


async def test_the_console_refuses_before_it_asks(engine: Engine, settings: Settings) -> None:
    app = make_app(settings, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        app.request_trigger(ANALYTICS, RunParams(date=date(2026, 11, 29)))
        await settle(app, pilot)
        assert isinstance(screen_of(app), JobsScreen)  # no confirmation asked
        assert any("--date 2026-11-29 is in the future" in n for n in notes(app)), notes(app)
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(ops_runs)).scalar_one() == 0

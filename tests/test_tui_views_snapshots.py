"""Snapshots of the problems and timeline views (pytest-textual-snapshot), on the fixed
data and clock of tests/test_tui_snapshots.py; the timeline's on a Berlin configuration
the day before the spring DST change. `--snapshot-update` accepts a change."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from console.tui.app import OpsApp
from jobs.cache import TableCache
from jobs.db import make_engine, platform
from jobs.migrate import upgrade
from jobs.settings import Overrides, load_settings
from tests.test_tui_snapshots import SIZE, _then, snap_app  # noqa: F401  (the fixture)


def test_problems_screen(snap_compare: Any, snap_app: Callable[..., OpsApp]) -> None:  # noqa: F811
    # seven days: the partial expiry run's failed tenant and last week's missed cleanup slot
    assert snap_compare(snap_app(), terminal_size=SIZE, run_before=_then("e", "w"))


def test_timeline_screen(snap_compare: Any, tmp_path: Path) -> None:
    now = datetime(2027, 3, 27, 18, 0, tzinfo=UTC)  # Berlin: CET -> CEST at 02:00 tomorrow
    engine = make_engine(f"sqlite:///{tmp_path / 'snap.sqlite3'}")
    platform.create_all(engine)
    upgrade(engine)
    config = tmp_path / "schedules.toml"
    config.write_text(
        '[jobs.expiry-checker]\nschedule = "30 2 * * *"\ntimezone = "Europe/Berlin"\n'
        '[jobs.payment-reminders]\nschedule = "0 9 * * *"\ntimezone = "Europe/Berlin"\n'
        '[jobs.analytics-aggregate]\nschedule = "0 */4 * * *"\ntimezone = "Europe/Berlin"\n'
        '[jobs.cleanup]\nenabled = false\n')
    settings = load_settings(Overrides(config=str(config),
                                       database_url="sqlite:///storeflow.sqlite3"),
                             env={}, cwd=tmp_path)
    app = OpsApp(settings, clock=lambda: now, engine=engine, refresh_seconds=0,
                 cache_factory=lambda e: TableCache(e, clock=now.timestamp))
    assert snap_compare(app, terminal_size=SIZE, run_before=_then("n"))

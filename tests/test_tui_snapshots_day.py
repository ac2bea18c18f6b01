"""Snapshots of the analytics day view and its verification, on the fixed data of
tests/test_tui_snapshots.py (`--snapshot-update` accepts a change)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from typing import Any

from textual.pilot import Pilot

from console.tui.app import OpsApp
from jobs.analytics import cache_key
from jobs.cache import TableCache
from tests.test_tui_snapshots import NOW, SIZE, TENANTS, _settle, snap_app

__all__ = ["snap_app"]  # the fixture, used by name

DAY = date(2026, 11, 27)


def _then_day_view(*keys: str) -> Callable[[Pilot[Any]], Any]:
    """Two more tenants cached for the day (Nordic Candles already is; two stay missing),
    then the day view from the jobs screen."""
    async def run_before(pilot: Pilot[Any]) -> None:
        await _settle(pilot)
        app = pilot.app
        assert isinstance(app, OpsApp)
        cache = TableCache(app.session.db(), clock=NOW.timestamp)
        for (tid, _, _), orders, revenue in ((TENANTS[0], 4, 310.0), (TENANTS[2], 9, 87.35)):
            value = {"tenantId": tid, "date": DAY.isoformat(), "orders": orders,
                     "revenue": revenue, "newCustomers": 1, "productsSold": orders * 3,
                     "generatedAt": "2026-11-28T01:00:00.000Z"}
            cache.set_many({cache_key(tid, DAY): json.dumps(value)}, ttl=33_000)
        for key in ("d", *keys):
            await pilot.press(key)
            await _settle(pilot)

    return run_before


def test_analytics_day_screen(snap_compare: Any, snap_app: Callable[..., OpsApp]) -> None:
    assert snap_compare(snap_app(), terminal_size=SIZE, run_before=_then_day_view())


def test_verify_screen(snap_compare: Any, snap_app: Callable[..., OpsApp]) -> None:
    assert snap_compare(snap_app(), terminal_size=SIZE, run_before=_then_day_view("v"))

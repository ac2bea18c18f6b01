"""Make the README's screenshots from the app itself, on the demo database at a fixed
moment:

    python docs/screenshots.py        # writes docs/jobs.svg, analytics.svg, analytics-day.svg,
                                      # verify.svg, problems.svg and timeline.svg
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from console.tui.app import OpsApp
from jobs.cache import TableCache
from jobs.db import make_engine
from jobs.demo import build_demo
from jobs.settings import Overrides, load_settings
from jobs.tenants import search_tenants
from jobs.timeutil import utc_now

HERE = Path(__file__).resolve().parent
# The demo's cached values expire a day after the run that wrote them (before now), so the
# screenshots read them at the time the demo was built for.
NOW = utc_now().replace(second=0, microsecond=0)
SIZE = (110, 34)
TENANT = "Sunny Bookshop"


async def settle(app: OpsApp, pilot: Pilot[Any]) -> None:
    for _ in range(50):
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        if not any(w.is_running for w in app.workers):
            return


async def main() -> None:
    path = Path(tempfile.mkdtemp(prefix="storeflow-shots-")) / "demo.sqlite3"
    build_demo(path, 40, NOW)
    engine = make_engine(f"sqlite:///{path}")
    # What `storeflow-ops demo` shows in its status bar, not the temporary file's name.
    settings = replace(load_settings(Overrides(), env={}),
                       database_url="sqlite:///~/.local/share/storeflow-ops/demo.sqlite3")
    app = OpsApp(settings, clock=lambda: NOW, engine=engine, refresh_seconds=0,
                 cache_factory=lambda e: TableCache(e, clock=NOW.timestamp))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        app.save_screenshot(str(HERE / "jobs.svg"))
        tenant = search_tenants(engine, TENANT, limit=1)[0]
        app.open_analytics(tenant.id)
        await settle(app, pilot)
        app.save_screenshot(str(HERE / "analytics.svg"))
        app.open_problems()
        await settle(app, pilot)
        await pilot.press("w")  # the last 7 days
        await settle(app, pilot)
        app.save_screenshot(str(HERE / "problems.svg"))
        app.open_timeline()
        await settle(app, pilot)
        app.save_screenshot(str(HERE / "timeline.svg"))

        # Every tenant's yesterday; then verified after an order changed and a value was lost.
        app.open_analytics_day()
        await settle(app, pilot)
        app.save_screenshot(str(HERE / "analytics-day.svg"))
        day = app.screen.day  # type: ignore[attr-defined]
        _disturb(engine, day, tenant.id)
        await pilot.press("v")
        await settle(app, pilot)
        app.save_screenshot(str(HERE / "verify.svg"))


def _disturb(engine: Any, day: Any, tenant_id: str) -> None:
    """One of the tenant's paid orders of `day` refunded, another tenant's value deleted."""
    from sqlalchemy import delete, select, update

    from jobs.analytics import cache_key, day_bounds
    from jobs.db import ops_cache, orders, tenants
    from jobs.settings import DEFAULTS_FILE

    tz = load_settings(Overrides(config=str(DEFAULTS_FILE)), env={}).job(
        "analytics-aggregate").schedule.timezone
    start, end = day_bounds(day, tz)
    with engine.begin() as conn:
        order = conn.execute(select(orders.c.id).where(
            orders.c.tenant_id == tenant_id, orders.c.payment_status == "paid",
            orders.c.created_at >= start, orders.c.created_at < end).limit(1)).scalar()
        conn.execute(update(orders).where(orders.c.id == order).values(payment_status="refunded"))
        other = conn.execute(select(tenants.c.id).where(tenants.c.id != tenant_id)
                             .order_by(tenants.c.name).limit(1)).scalar_one()
        conn.execute(delete(ops_cache).where(ops_cache.c.key == cache_key(other, day)))


if __name__ == "__main__":
    asyncio.run(main())

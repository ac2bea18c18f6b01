"""Make the README's screenshots from the app itself, on the demo database at a fixed
moment:

    python docs/screenshots.py   # writes docs/jobs.svg, analytics.svg, problems.svg, timeline.svg
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
# The demo writes its cache with the wall clock, so the screenshots are taken at it too.
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


if __name__ == "__main__":
    asyncio.run(main())

"""How fast the console opens, headless (Textual's test driver), on the demo database.

    python bench/tui_bench.py [--runs 7] [--items 10000] [--out bench/results-tui.txt]

1. First screen: a fresh Python process per run (so imports count) opens the console on
   the demo database; timed from before `import console.tui.app` to (a) the jobs screen with
   its four rows mounted and (b) its data shown (last runs, runner state read).
2. Run detail: a run with --items items inserted directly; timed from `open_run` to the
   screen showing the run's summary and the first page of items; then the errors-only
   filter over all of them.

Medians of --runs. Targets: first screen < 1 s, run detail < 1 s. Not a test: the figures
depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from results_file import append  # bench/, the script's own folder

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import asyncio, json, sys, time
t0 = time.perf_counter()
from console.tui.app import OpsApp
from jobs.settings import Overrides, load_settings
t_import = time.perf_counter() - t0

async def main():
    settings = load_settings(Overrides(database_url=sys.argv[1]), env={})
    app = OpsApp(settings, refresh_seconds=0)
    async with app.run_test(size=(120, 36)) as pilot:
        from console.tui.screens.jobs import JobsScreen
        mounted = None
        while True:
            screens = [s for s in app.screen_stack if isinstance(s, JobsScreen)]
            if screens and screens[0].is_mounted and mounted is None:
                mounted = time.perf_counter() - t0
            if screens and screens[0].overview is not None:
                break
            await asyncio.sleep(0.002)
        await pilot.pause()
        shown = time.perf_counter() - t0
    print(json.dumps({"import": t_import, "mounted": mounted, "data": shown}))

asyncio.run(main())
"""


def first_screen(url: str, runs: int) -> list[dict[str, float]]:
    out = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-c", CHILD, url], capture_output=True,
                              text=True, cwd=ROOT, check=True)
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def add_big_run(url: str, items: int) -> int:
    from sqlalchemy import insert

    from jobs.db import make_engine, ops_run_items, ops_runs

    engine = make_engine(url)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        run_id = int(conn.execute(insert(ops_runs).values(
            job_id="expiry-checker", trigger="manual", status="partial", started_by="bench@host",
            reference_time=now, created_at=now, started_at=now,
            finished_at=now + timedelta(seconds=42), processed=items, errors=items // 10,
            params={}, summary={"expired": items},
        )).inserted_primary_key[0])  # type: ignore[index]
        rows = [
            {"run_id": run_id, "seq": i, "tenant_id": f"{i:08d}-0000-4000-8000-000000000000",
             "tenant_name": f"Bench Shop {i}", "action": "expired",
             "status": "error" if i % 10 == 0 else "ok",
             "detail": {"from": "active", "to": "expired", "email": "queued"},
             "error": "invalid recipient: no @-sign" if i % 10 == 0 else None}
            for i in range(items)
        ]
        for start in range(0, items, 2_000):
            conn.execute(insert(ops_run_items), rows[start : start + 2_000])
    engine.dispose()
    return run_id


async def run_detail(url: str, run_id: int, runs: int) -> tuple[list[float], list[float]]:
    from textual.widgets import DataTable

    from console.tui.app import OpsApp
    from console.tui.screens.run_detail import RunDetailScreen
    from console.tui.widgets.items_view import ItemsView
    from jobs.settings import Overrides, load_settings

    settings = load_settings(Overrides(database_url=url), env={})
    app = OpsApp(settings, refresh_seconds=0)
    opened: list[float] = []
    filtered: list[float] = []
    async with app.run_test(size=(120, 36)) as pilot:
        while not app.session.connected:
            await asyncio.sleep(0.01)
        await app.workers.wait_for_complete()
        for _ in range(runs):
            t0 = time.perf_counter()
            app.open_run(run_id)
            while True:
                screen = app.screen
                if (isinstance(screen, RunDetailScreen) and screen.record is not None
                        and screen.query_one("#items", DataTable).row_count > 0):
                    break
                await asyncio.sleep(0.002)
            await pilot.pause()
            opened.append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            view = screen.query_one(ItemsView)
            view.errors_only = True
            table = screen.query_one("#items", DataTable)
            while not (view.errors_only and view.items and
                       all(i.error for i in view.items[:5]) and table.row_count > 0):
                await asyncio.sleep(0.002)
            await pilot.pause()
            filtered.append(time.perf_counter() - t0)
            app.pop_screen()
            await pilot.pause()
    return opened, filtered


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--tenants", type=int, default=40)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results-tui.txt"))
    args = ap.parse_args()

    from jobs.demo import build_demo

    tmp = Path(tempfile.mkdtemp(prefix="tui-bench-"))
    path = tmp / "demo.sqlite3"
    t0 = time.perf_counter()
    info = build_demo(path, args.tenants, datetime.now(UTC))
    built = time.perf_counter() - t0
    url = f"sqlite:///{path}"

    firsts = first_screen(url, args.runs)
    run_id = add_big_run(url, args.items)
    opened, filtered = asyncio.run(run_detail(url, run_id, args.runs))

    def med(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.0f} ms"

    def spread(values: list[float]) -> str:
        return f"(min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f})"

    lines = [
        f"tui_bench {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  python {platform.python_version()}"
        f"  {os.cpu_count()} cpus  load {os.getloadavg()[0]:.2f}",
        f"demo database: {info.tenants} tenants, {info.orders} orders, {info.runs} runs "
        f"(built in {built:.1f} s); medians of {args.runs} runs",
        "",
        "first screen (fresh process, imports included)",
        f"  import console.tui.app            {med([f['import'] for f in firsts])} "
        f"{spread([f['import'] for f in firsts])}",
        f"  jobs screen mounted           {med([f['mounted'] for f in firsts])} "
        f"{spread([f['mounted'] for f in firsts])}",
        f"  jobs screen with its data     {med([f['data'] for f in firsts])} "
        f"{spread([f['data'] for f in firsts])}   target < 1000 ms",
        "",
        f"run detail of a run with {args.items:,} items",
        f"  summary + first page shown    {med(opened)} {spread(opened)}   target < 1000 ms",
        f"  errors-only filter applied    {med(filtered)} {spread(filtered)}",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    append(Path(args.out), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

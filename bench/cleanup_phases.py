"""Where a cleanup run's time goes: each phase's start, end and length, at one or more
scales of bench/jobs_bench.py's data (built by that script; PostgreSQL only).

    python bench/cleanup_phases.py --scale 1,4              # phases side by side, as the job runs
    python bench/cleanup_phases.py --scale 1,4 --in-turn    # every phase after the other
    python bench/cleanup_phases.py --scale 1,4 --both --repeat 2 --out bench/results-jobs.txt

Before each run the two tables cleanup changes are restored as jobs_bench.py does
(rebuilt from templates, vacuumed, analysed, checkpointed). The job runs in this process
through `storeflow-ops trigger cleanup`, with each phase function timed from outside;
`--in-turn` runs the phases one after the other in one thread instead of grouping them by
table side by side, to tell the phases' own growth from what running them at once gains.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "bench"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import jobs_bench  # noqa: E402  (bench/, after the path above)
from results_file import append  # noqa: E402

import jobs.cleanup as cleanup  # noqa: E402

Phase = tuple[str, str, float, float]  # kind, thread, start, end (s from the run's start)


def timed(fn: Callable[..., None], phases: list[Phase], t0: list[float]) -> Callable[..., None]:
    def run(ctx: Any, kind: Any, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        try:
            fn(ctx, kind, *args, **kwargs)
        finally:
            phases.append((kind.action, threading.current_thread().name,
                           start - t0[0], time.perf_counter() - t0[0]))
    return run


def built(url: str, scale: float) -> bool:
    """Whether jobs_bench.py has built this scale's data (and the database exists)."""
    try:
        sizes = jobs_bench.built_sizes(url, jobs_bench.schema_for(scale))
    except psycopg.OperationalError:
        return False
    return sizes == repr(jobs_bench.Sizes.at(scale))


def in_turn(ctx: Any, groups: list[list[Any]], ledger: Any) -> None:
    for group in groups:
        cleanup._run_in_turn(ctx, group, ledger)


def one_run(url: str, schema: str, turn: bool) -> tuple[float, list[Phase]]:
    jobs_bench.restore(url, schema)
    os.environ["DATABASE_URL"] = jobs_bench.schema_url(url, schema)
    phases: list[Phase] = []
    t0 = [0.0]
    saved = {name: getattr(cleanup, name)
             for name in ("_delete_by_key", "_delete_found", "_run_side_by_side")}
    cleanup._delete_by_key = timed(saved["_delete_by_key"], phases, t0)
    cleanup._delete_found = timed(saved["_delete_found"], phases, t0)
    if turn:
        cleanup._run_side_by_side = in_turn
    from console import cli

    _, now = jobs_bench.PROCESS_VARIANTS["cleanup-job-process"]
    argv = ["trigger", "cleanup", "--json", "--now", now.isoformat()]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            t0[0] = time.perf_counter()
            code = cli.main(argv)
            total = time.perf_counter() - t0[0]
    finally:
        for name, fn in saved.items():
            setattr(cleanup, name, fn)
    if code != 0:
        raise SystemExit(f"cleanup exited {code} at {schema}")
    return total, sorted(phases, key=lambda p: p[2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="1", help="e.g. 1,4 (the data must be built)")
    parser.add_argument("--in-turn", action="store_true", help="phases one after the other")
    parser.add_argument("--both", action="store_true", help="side by side, then in turn")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--url", default=os.environ.get("BENCH_PG_URL", jobs_bench.DEFAULT_URL))
    parser.add_argument("--out", type=Path, help="also append the report to this file")
    args = parser.parse_args()
    modes = [False, True] if args.both else [args.in_turn]
    lines = [f"cleanup_phases  scales {args.scale}  repeat {args.repeat}  "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  {os.cpu_count()} cpus"]

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    # As an operator runs it, with the defaults: no schedules.toml from the folder it is
    # started in, nor a config file from the environment.
    os.environ.pop("STOREFLOW_CONFIG", None)
    out = args.out.resolve() if args.out else None
    os.chdir(tempfile.mkdtemp(prefix="cleanup-phases-"))
    totals: dict[tuple[str, bool], list[float]] = {}
    for scale in args.scale.split(","):
        schema = jobs_bench.schema_for(float(scale))
        if not built(args.url, float(scale)):
            raise SystemExit(f"no data for {scale}x: build it with "
                             f"`python bench/jobs_bench.py --scale {scale} --build-only`")
        for turn in modes:
            for n in range(1, args.repeat + 1):
                total, phases = one_run(args.url, schema, turn)
                totals.setdefault((scale, turn), []).append(total)
                say(f"{scale}x {'in turn' if turn else 'side by side'} run {n}: {total:.2f} s")
                for kind, thread, start, end in phases:
                    say(f"  {kind:<24} {thread:<11} {start:6.2f} -> {end:6.2f}  {end - start:6.2f} s")
    say("medians: " + ", ".join(
        f"{scale}x {'in turn' if turn else 'side by side'} {statistics.median(v):.2f} s"
        for (scale, turn), v in totals.items()))
    if out:
        append(out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

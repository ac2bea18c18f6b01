"""How fast `storeflow-ops` answers: whole processes on the demo database, side by side.

    python bench/cli_bench.py [--runs 10] [--baseline DIR] [--out bench/results-cli.txt]

The report is printed and appended to --out (by default bench/results-cli.txt).

Each command runs as a fresh Python process, as an operator's script runs it: interpreter
start, imports, argument parsing, opening the database, the query and the output. `--help`,
`jobs`, `status` and `history` are timed --runs times each (wall clock, and the CPU time
the process used, from wait4, which the machine's other load disturbs less).

With --baseline DIR (a checkout of another commit, e.g. `git archive main | tar -x -C DIR`),
the same commands run from that tree too, in one run, the two trees alternating which goes
first; the console's first screen (bench/tui_bench.py's child: a fresh process opens the
console headless and waits for the jobs screen with its data) is timed for both as well.
Both trees use this one demo database, built once by this tree.

Targets (medians): --help < 150 ms; jobs, status, history < 350 ms; first screen no slower
than the baseline's. Not a test: figures depend on the machine and its load, recorded with
them.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from launch import LAUNCH  # noqa: E402
from results_file import append  # noqa: E402
from tui_bench import CHILD as FIRST_SCREEN  # noqa: E402  (the console's first-screen probe)

WHERE = "import sys; sys.path.insert(0, sys.argv[1]); import console.cli; print(console.cli.__file__)"

COMMANDS: dict[str, tuple[list[str], float]] = {  # name -> (arguments, target in seconds)
    "--help": (["--help"], 0.150),
    "jobs": (["jobs"], 0.350),
    "status": (["status"], 0.350),
    "history": (["history"], 0.350),
    "jobs --json": (["jobs", "--json"], 0.350),
}


@dataclass
class Timing:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    codes: set[int] = field(default_factory=set)


def run_once(root: Path, args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, exit code) of one whole process."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(root), *args], env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    return wall, usage.ru_utime + usage.ru_stime, os.waitstatus_to_exitcode(status)


def first_screen(root: Path, url: str, cwd: Path) -> dict[str, float] | None:
    """The probe's timings, or None when it did not finish within a minute."""
    code = f"import sys; sys.path.insert(0, {str(root)!r})\n" + FIRST_SCREEN
    try:
        proc = subprocess.run([sys.executable, "-c", code, url], capture_output=True,
                              text=True, cwd=cwd, check=True, timeout=60)
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError):
        return None
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def machine_speed() -> float:
    """Milliseconds this machine takes for a fixed piece of pure Python (median of 9), so
    figures from machines of different speed can be compared."""
    times = []
    for _ in range(9):
        started = time.perf_counter()
        sum(range(10_000_000))
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f}" if values else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--screens", type=int, default=5, help="first-screen runs per tree")
    ap.add_argument("--baseline", metavar="DIR", help="another tree to time side by side")
    ap.add_argument("--tenants", type=int, default=40)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results-cli.txt"),
                    help="append the report to this file (the results kept run after run)")
    args = ap.parse_args()

    trees = {"this tree": ROOT}
    if args.baseline:
        trees["baseline"] = Path(args.baseline).resolve()
    for name, root in trees.items():
        where = subprocess.run([sys.executable, "-c", WHERE, str(root)], capture_output=True,
                               text=True, check=True, cwd=tempfile.gettempdir()).stdout.strip()
        if not where.startswith(str(root)):
            raise SystemExit(f"{name}: console.cli comes from {where}, not {root}")

    for root in trees.values():
        # As `pip install .` leaves them: with PYTHONDONTWRITEBYTECODE set (as on CI) a tree
        # without bytecode would compile every module in every process it starts.
        for package in ("jobs", "console"):
            compileall.compile_dir(root / package, quiet=1)
    calibration = machine_speed()

    tmp = Path(tempfile.mkdtemp(prefix="cli-bench-"))
    path = tmp / "demo.sqlite3"
    subprocess.run([sys.executable, "-c", LAUNCH, str(ROOT), "demo", "--no-tui", "--path",
                    str(path), "--tenants", str(args.tenants)], check=True, cwd=tmp,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"sqlite:///{path}"
    # No REDIS_URL: the commands timed here never open the cache; the demo's settings.
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KV_URL")}
    env["DATABASE_URL"] = url
    load_before = os.getloadavg()

    timings = {(c, t): Timing() for c in COMMANDS for t in trees}
    order = list(trees)
    for rep in range(args.runs):
        for command, (argv, _) in COMMANDS.items():
            for tree in (order if rep % 2 == 0 else order[::-1]):
                wall, cpu, code = run_once(trees[tree], argv, env, tmp)
                t = timings[(command, tree)]
                t.wall.append(wall)
                t.cpu.append(cpu)
                t.codes.add(code)
    screens: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
    failed = dict.fromkeys(trees, 0)
    for rep in range(args.screens):
        for tree in (order if rep % 2 == 0 else order[::-1]):
            shown = first_screen(trees[tree], url, tmp)
            if shown is None:
                failed[tree] += 1
            else:
                screens[tree].append(shown)
    load_after = os.getloadavg()

    lines = [
        f"cli_bench {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  python {platform.python_version()}  "
        f"{os.cpu_count()} cpus  load average {load_before[0]:.2f} {load_before[1]:.2f} "
        f"{load_before[2]:.2f} before, {load_after[0]:.2f} {load_after[1]:.2f} "
        f"{load_after[2]:.2f} after",
        f"machine speed: sum(range(10**7)) takes {calibration:.0f} ms (median of 9); every "
        f"tree's jobs/ and console/ compiled to bytecode first",
        f"demo database: {args.tenants} tenants (storeflow-ops demo --no-tui); "
        f"medians of {args.runs} whole-process runs, trees alternating",
        *[f"  {name}: {'this checkout' if root == ROOT else root}" for name, root in trees.items()],
        "",
    ]
    header = ["command", "tree", "wall ms", "min", "max", "CPU ms", "exit", "target ms", ""]
    rows = [header]
    for command, (_, target) in COMMANDS.items():
        for tree in trees:
            t = timings[(command, tree)]
            ok = statistics.median(t.wall) < target
            rows.append([command, tree, median_ms(t.wall), f"{min(t.wall) * 1000:.0f}",
                         f"{max(t.wall) * 1000:.0f}", median_ms(t.cpu),
                         ",".join(map(str, sorted(t.codes))), f"{target * 1000:.0f}",
                         ("met" if ok else "MISSED") if tree == "this tree" else ""])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += ["", f"console first screen (fresh process, headless; medians of {args.screens})"]
    for tree in trees:
        s = screens[tree]
        lines.append(f"  {tree:<10} import {median_ms([x['import'] for x in s])} ms, "
                     f"jobs screen mounted {median_ms([x['mounted'] for x in s])} ms, "
                     f"with its data {median_ms([x['data'] for x in s])} ms"
                     + (f"  ({failed[tree]} runs did not finish in 60 s)" if failed[tree] else ""))
    if "baseline" in trees and all(screens.values()):
        mine = statistics.median(x["data"] for x in screens["this tree"])
        base = statistics.median(x["data"] for x in screens["baseline"])
        lines.append(f"  first screen with data vs baseline: {mine / base:.2f}x "
                     f"({'unchanged or better' if mine <= base * 1.05 else 'SLOWER'})")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    append(Path(args.out), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

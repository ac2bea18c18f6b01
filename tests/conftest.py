"""Fixtures: every database test runs on SQLite and on PostgreSQL, every cache test on
Redis and on the embedded table. Each test gets its own PostgreSQL schema and its own
Redis key prefix, so runs never see each other's data.

A missing PostgreSQL or Redis skips its tests locally; with STOREFLOW_REQUIRE_SERVICES=1
(set by .ci/run) it fails them instead.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import itertools
import json
import locale
import logging
import os
import select as selectmodule
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

import pytest
import redis
import sqlalchemy as sa
import textual._wait
from sqlalchemy.engine import Engine

from jobs.cache import Cache, RedisCache, TableCache
from jobs.db import make_engine, platform
from jobs.migrate import upgrade
from jobs.settings import Overrides, Settings, load_settings
from tests.fork_server import exit_status

PG_URL = os.environ.get("STOREFLOW_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
PG_DRIVER_URL = PG_URL.replace("postgresql://", "postgresql+psycopg://")  # SQLAlchemy's form
REDIS_URL = os.environ.get("STOREFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE = os.environ.get("STOREFLOW_REQUIRE_SERVICES") == "1"
RUN_TAG = uuid.uuid4().hex[:8]
# This venv's own script: whichever `storeflow-ops` comes first on PATH may be another install.
EXE = str(Path(sys.executable).with_name("storeflow-ops"))


# Textual's Pilot, after every key it presses and every pause, waits for the process to go
# idle: it sleeps in slices of SLEEP_GRANULARITY (20 ms) until one passes in which the
# process used under SLEEP_IDLE (1 ms) of CPU, so every key costs at least 40 ms, most of
# it asleep: 1,052 such waits were 48.7 s of test_tui.py's 62 s, its CPU 29 s. What a test
# sees is decided by event-based waits (Pilot waits for the screen's message queues to
# drain, `settle` for the workers and what they posted); the idle check only gives timers
# and threads a turn, which a 2 ms slice with the same bar (5% of it) does as well.
IDLE_SLICE = 0.002
for _name in ("SLEEP_GRANULARITY", "SLEEP_IDLE"):
    # A Textual that renamed them would wait 20 ms slices again, silently slower: say so.
    assert hasattr(textual._wait, _name), f"textual._wait.{_name} is gone: see IDLE_SLICE"
textual._wait.SLEEP_GRANULARITY = IDLE_SLICE
textual._wait.SLEEP_IDLE = IDLE_SLICE / 20


def cli(env: dict[str, str], *args: str, cwd: Path | None = None,
        timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """`storeflow-ops ARGS` as a real process of its own (`start`): exactly the environment
    given (nothing inherited from the caller's), stdin closed, and never a traceback."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = start(list(args), env, cwd, stdout=out, stderr=err)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise

        def text(f: IO[bytes]) -> str:  # as subprocess.run(text=True) decodes
            f.seek(0)
            return f.read().decode(locale.getpreferredencoding(False)).replace(
                "\r\n", "\n").replace("\r", "\n")

        result = subprocess.CompletedProcess([EXE, *args], code, text(out), text(err))
    assert "Traceback" not in result.stderr, result.stderr
    assert "internal error" not in result.stderr, result.stderr
    return result


class Started(Protocol):
    """What tests use of a started process: `subprocess.Popen`'s own names."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


def start(args: list[str], env: dict[str, str], cwd: Path | None = None,
          stdout: IO[Any] | None = None, stderr: IO[Any] | None = None) -> Started:
    """`storeflow-ops ARGS` started as a process of its own, stdin closed, its stdout and
    stderr into the files given (None: discarded).

    The process is forked from one that has imported the program already
    (tests/fork_server.py), which saves ~0.4 s of CPU each; it then runs the entry point
    (`console.cli.entry`) and exits as the script would. This venv's script is started
    instead with STOREFLOW_TEST_CLI=exec (for comparison), or when `env` sets what only a
    new interpreter reads (PYTHON* or locale variables). Tests of the script itself (imports
    at start-up, a closed pipe) start it themselves."""
    fresh = any(k.startswith(("PYTHON", "LC_")) or k == "LANG" for k in env)
    if fresh or os.environ.get("STOREFLOW_TEST_CLI") == "exec":
        return subprocess.Popen([EXE, *args], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=stdout or subprocess.DEVNULL,
                                stderr=stderr or subprocess.DEVNULL)
    return Forked(args, env, cwd or Path.cwd(), stdout, stderr)


class Forked:
    """A process the fork server started for this test: its pid and a pidfd now, its exit
    code (as `subprocess` gives it: negative for a signal) as a line when it ends."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path,
                 stdout: IO[Any] | None, stderr: IO[Any] | None) -> None:
        self.args = [EXE, *args]
        self.returncode: int | None = None
        umask = os.umask(0o022)
        os.umask(umask)
        request = json.dumps({"exe": EXE, "args": args, "env": env, "cwd": str(cwd),
                              "umask": umask})
        with open(os.devnull, "r+b") as null:
            fds = [null.fileno()] + [(f or null).fileno() for f in (stdout, stderr)]
            self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._conn.connect(_fork_server())
            socket.send_fds(self._conn, [request.encode()], fds)
            self._conn.shutdown(socket.SHUT_WR)
        data, pidfds, _, _ = socket.recv_fds(self._conn, 64, 1)
        if not pidfds:
            raise RuntimeError(f"the fork server did not start {self.args}{_server_log()}")
        self._pidfd = pidfds[0]
        self._buffer = data
        self.pid = int(self._line(None))

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.wait(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = int(self._line(timeout))
            self._conn.close()
            os.close(self._pidfd)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            # By pidfd: the process itself even if it has ended and its pid is taken since.
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _line(self, timeout: float | None) -> str:
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not selectmodule.select([self._conn], [], [], left)[0]:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            chunk = self._conn.recv(64)
            if not chunk:
                if timeout is not None and not selectmodule.select([self._pidfd], [], [], 0)[0]:
                    raise subprocess.TimeoutExpired(self.args, timeout)  # still running
                raise RuntimeError(f"the fork server went away; {self.args} is pid "
                                   f"{getattr(self, 'pid', '?')}{_server_log()}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()


_server: tuple[subprocess.Popen[bytes], str] | None = None


def _fork_server() -> str:
    """The socket of this worker's fork server, started on first use; its stderr goes to a
    file beside the socket (`_server_log`)."""
    global _server
    if _server is None or _server[0].poll() is not None:
        folder = tempfile.mkdtemp(prefix="sfo-fork-")
        path = os.path.join(folder, "socket")
        script = Path(__file__).with_name("fork_server.py")
        base = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root")}
        with open(os.path.join(folder, "log"), "wb") as log:
            proc = subprocess.Popen([sys.executable, str(script), path], env=base,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=log)
        assert proc.stdout is not None
        if proc.stdout.readline() != b"ready\n":
            raise RuntimeError(f"the fork server did not start (exit {proc.wait()})"
                               f"{_server_log(path)}")
        proc.stdout.close()
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        atexit.register(proc.kill)
        _server = (proc, path)
    return _server[1]


def _server_log(path: str | None = None) -> str:
    where = path or (_server[1] if _server else None)
    if where is None:
        return ""
    try:
        text = Path(where).with_name("log").read_text(errors="replace")
    except OSError:
        return ""
    return f"\nfork server's stderr:\n{text[-4000:]}" if text else ""


def wait_until(what: str, check: Callable[[], Any], timeout: float = 30,
               every: float = 0.05) -> Any:
    """Poll `check` every `every` seconds until it returns something true, and return that;
    fail after `timeout` seconds. How tests wait for an event in another process: never a
    fixed sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def in_process_cli(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """`storeflow-ops ARGS` in this process, with exactly `env` and in `tmp_path` (as
    `cli_here`): returns a call giving (exit code, stdout, stderr), never a traceback."""

    def call(*args: str) -> tuple[int, str, str]:
        return _main_here(args, env, tmp_path, monkeypatch, capsys)

    return call


CliCall = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli_here(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
             ) -> CliCall:
    """`cli` without the process: the same call and result, `console.cli.main` run in this
    process with exactly the environment given (every other variable removed for the call)
    and in `cwd`. For tests of what a command says and does; a test of the process (its
    exit code, what it writes anywhere, signals, what it leaves behind) uses `cli` or
    `start`, and one of the script itself (start-up cost, a closed pipe) starts `EXE`.

    What it sees is what the command writes to sys.stdout and sys.stderr while it runs,
    its logged warnings included; a process's other channels (Python's `warnings`, threads
    outliving the command, writes to file descriptor 2, atexit's output) are not, which is
    why the secrets and exit-code contracts are tested with `cli`."""

    def call(env: dict[str, str], *args: str, cwd: Path | None = None,
             timeout: float = 90) -> subprocess.CompletedProcess[str]:
        code, out, err = _main_here(args, env, cwd or tmp_path, monkeypatch, capsys, timeout)
        return subprocess.CompletedProcess([EXE, *args], code, out, err)

    return call


def _main_here(args: Sequence[str], env: dict[str, str], cwd: Path,
               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
               timeout: float = 90) -> tuple[int, str, str]:
    """`console.cli.main(args)` in this process, in `cwd` with exactly `env` as the process
    environment (every other variable removed until it returns): its exit code, stdout and
    stderr.

    The root logger is as a new process has it (no handlers) while the command runs, so the
    command's own logging setup sends its warnings to this stderr, where a process would;
    pytest's capture handlers would otherwise take them. Then pytest's are put back. A
    command still running after `timeout` seconds fails the test, as `cli`'s would."""
    from console.cli import main

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"`storeflow-ops {' '.join(args)}` still running after {timeout:g} s")

    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    capsys.readouterr()
    with monkeypatch.context() as m:
        for key in list(os.environ):
            if key not in env:
                m.delenv(key)
        for key, value in env.items():
            m.setenv(key, value)
        m.chdir(cwd)
        root.handlers = []
        previous = signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            code = main(list(args))
        except SystemExit as exc:  # what the entry point would exit with
            code = exit_status(exc.code)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            for handler in root.handlers:
                handler.close()
            root.handlers = saved
            root.setLevel(level)
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    assert "internal error" not in err, err
    return code, out, err


def _unavailable(what: str, reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"{what} is required (STOREFLOW_REQUIRE_SERVICES=1) but unavailable: {reason}")
    pytest.skip(f"{what} unavailable: {reason}")


_pg_admin: Engine | None = None
_pg_error: str | None = None


def _pg() -> Engine:
    global _pg_admin, _pg_error
    if _pg_admin is None and _pg_error is None:
        try:
            eng = sa.create_engine(PG_DRIVER_URL, isolation_level="AUTOCOMMIT",
                                   connect_args={"connect_timeout": 3})
            with eng.connect() as c:
                c.exec_driver_sql("SELECT 1")
            _pg_admin = eng
        except Exception as exc:
            _pg_error = str(exc).splitlines()[0]
    if _pg_admin is None:
        _unavailable("PostgreSQL", _pg_error or "")
    assert _pg_admin is not None
    return _pg_admin


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database URL: a SQLite file or a PostgreSQL schema of its own, empty, or with
    the tables where the test also asks for `engine`."""
    kind = getattr(request, "param", "sqlite")
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'storeflow.sqlite3'}"
        return
    admin = _pg()
    if "engine" in request.fixturenames:
        schemas = _built_schemas()
        schema = schemas.take()
        yield _schema_url(schema)
        schemas.give_back(schema)
        return
    schema = f"t_{RUN_TAG}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    yield _schema_url(schema)
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


def _schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_DRIVER_URL else "?"
    return f"{PG_DRIVER_URL}{sep}options=-csearch_path%3D{schema}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On several workers (pytest -n), the `slow` tests are spread evenly over the workers
    and over the first part of each one's run (`spread_slow`): each is mostly a real process
    waiting, and started early it overlaps with the many short tests instead of finishing
    alone at the end. The order is the same on every worker, as xdist requires."""
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers:
        order = spread_slow(items, int(workers))
        assert sorted(map(id, order)) == sorted(map(id, items)), "a test lost or doubled"
        items[:] = order


def pytest_collection_finish(session: pytest.Session) -> None:
    """What the collection imported (Textual, SQLAlchemy, the program, the test modules and
    their items, ~100,000 objects) lives as long as the process: frozen out of the garbage
    collector's passes (gc.freeze), which otherwise walk all of it again and again during
    the run and five times more at its end (pytest's last look for unraisable
    exceptions)."""
    gc.collect()
    gc.freeze()


# During a test the collector runs only past a million new objects (a bound on memory,
# not a schedule): the console's tests make and drop objects by the million (widgets,
# styles, the segments of every frame), and collecting them every 700 allocations, each
# pass walking everything the earlier tests left in caches, took 15-30% of their CPU.
# After each test one full collection finds everything the test left unreachable (and
# its `__del__`s run, as they would have), and what is still alive then is frozen, so
# that no later pass walks it again.
GC_THRESHOLD_IN_TEST = 1_000_000


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD_IN_TEST, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.collect()
        gc.freeze()


def _slow_seconds(item: pytest.Item) -> float | None:
    """About how long a `slow` test takes (its marker's `seconds`, else 1); None if not slow."""
    marker = item.get_closest_marker("slow")
    return None if marker is None else float(marker.kwargs.get("seconds", 1))


SPREAD = 0.6  # the part of a worker's short tests that its slow ones are spaced over


def spread_slow(items: Sequence[pytest.Item], workers: int) -> list[pytest.Item]:
    """The items in the order that keeps both the workers and the CPUs busy to the end.

    xdist's worksteal deals the list out as contiguous runs, one per worker, each
    len(left) // workers_left long, and later moves tests only from the ends of those runs.
    So each run gets slow tests whose seconds add up about evenly (longest first, each to
    the run with the fewest seconds so far), and the short tests dealt out in turn, each
    file's spread over the whole order, so that every run has its share of each file at
    every stage: the console's tests, which keep a CPU busy for a second or two each, are
    not left together at the end while the slow tests wait on processes at the start.
    Each run's slow tests are spaced over the first SPREAD of its short tests, the runs'
    spacings staggered by 1/workers of a gap: at any moment about as many workers wait on
    a process as at any other, instead of all of them at the start and none later. Half
    the runs start with the shorter half of their slow tests, so that the longest waits do
    not all fall together.
    """
    sizes: list[int] = []
    left = len(items)
    for remaining in range(workers, 0, -1):
        sizes.append(left // remaining)
        left -= sizes[-1]
    timed = [(s, i) for i in items if (s := _slow_seconds(i)) is not None]
    timed.sort(key=lambda pair: -pair[0])  # stable: equal ones keep their collected order
    runs: list[list[pytest.Item]] = [[] for _ in sizes]
    seconds = [0.0] * len(sizes)
    for s, item in timed:
        room = [k for k in range(len(sizes)) if len(runs[k]) < sizes[k]]
        k = min(room, key=lambda k: seconds[k])
        runs[k].append(item)
        seconds[k] += s
    short = [i for i in items if _slow_seconds(i) is None]
    in_file: dict[Path, list[pytest.Item]] = {}
    for item in short:
        in_file.setdefault(item.path, []).append(item)
    at = {id(item): (j + 0.5) / len(same) for same in in_file.values()
          for j, item in enumerate(same)}
    short.sort(key=lambda item: at[id(item)])  # each file's tests spread over the whole run
    fills: list[list[pytest.Item]] = [[] for _ in sizes]
    dealing = itertools.cycle(range(len(sizes)))
    for item in short:
        k = next(k for k in dealing if len(fills[k]) + len(runs[k]) < sizes[k])
        fills[k].append(item)
    order: list[pytest.Item] = []
    for k, (run, fill) in enumerate(zip(runs, fills, strict=True)):
        if k % 2:
            run[:] = run[len(run) // 2:] + run[:len(run) // 2]
        gap = len(fill) * SPREAD / max(len(run), 1)
        taken = 0
        for j, item in enumerate(run):
            upto = round((j + k / len(runs)) * gap)
            order.extend(fill[taken:upto])
            taken = max(taken, upto)
            order.append(item)
        order.extend(fill[taken:])
    return order


# The catalogs each test's PostgreSQL schema writes rows to. Where autovacuum is off (as on
# this project's CI machine), the rows of dropped schemas stay as dead rows and every later
# catalog query reads past them: after a dozen runs pg_attribute held 450 MB, and a query
# for a schema's tables (SQLAlchemy's inspector, `_SCHEMA_PRINT`) took 30-40 ms instead of
# 1-2 ms. A plain VACUUM at the end of each run makes their space reusable by the next one.
_CATALOGS = ("pg_attribute", "pg_class", "pg_depend", "pg_type", "pg_index", "pg_constraint",
             "pg_attrdef", "pg_sequence", "pg_namespace", "pg_statistic")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Each process drops the schemas it kept; the controller, whose session ends after its
    workers' have, then vacuums the catalogs."""
    if _built_schemas.cache_info().currsize:
        _built_schemas().drop_free()
    if hasattr(session.config, "workerinput"):
        return
    with contextlib.suppress(sa.exc.SQLAlchemyError):
        eng = sa.create_engine(PG_DRIVER_URL, isolation_level="AUTOCOMMIT",
                               connect_args={"connect_timeout": 3})
        try:
            with eng.connect() as c:  # a user who may not vacuum them gets a warning, no error
                c.exec_driver_sql("VACUUM " + ", ".join(f"pg_catalog.{t}" for t in _CATALOGS))
        finally:
            eng.dispose()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_url" in metafunc.fixturenames:
        metafunc.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
    if "cache_kind" in metafunc.fixturenames:
        metafunc.parametrize("cache_kind", ["embedded", "redis"])


@pytest.fixture
def engine(db_url: str, tmp_path: Path) -> Iterator[Engine]:
    """The database with the platform tables (as StoreFlow has them) and the ops_ tables."""
    if db_url.startswith("sqlite:///"):
        shutil.copyfile(_sqlite_template(tmp_path), db_url.removeprefix("sqlite:///"))
    eng = make_engine(db_url)  # a PostgreSQL schema comes with its tables (db_url)
    yield eng
    eng.dispose()


# The tables every database test starts with are made by the migrations once per process
# (per xdist worker) and then copied, not migrated again for each test: Alembic's upgrade
# is most of a test's setup (on PostgreSQL 81 of 128 ms, against 36 ms for the copy).
# tests/test_migrate.py runs the migrations themselves on empty databases, and checks that
# they build exactly the tables the code declares.
_TEMPLATE = f"sfops_template_{RUN_TAG}_{uuid.uuid4().hex[:8]}"
_sqlite_file: Path | None = None


def _migrated(url: str) -> None:
    eng = make_engine(url)
    try:
        platform.create_all(eng)
        upgrade(eng)
    finally:
        eng.dispose()


def _sqlite_template(tmp_path: Path) -> Path:
    """A SQLite file as the migrations leave a new one (in WAL mode, checkpointed)."""
    global _sqlite_file
    if _sqlite_file is None:
        folder = tmp_path.parent / _TEMPLATE  # in this process's basetemp
        folder.mkdir(exist_ok=True)
        path = folder / "template.sqlite3"
        _migrated(f"sqlite:///{path}")
        with contextlib.closing(sqlite3.connect(path)) as conn:  # all of it in the one file
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _sqlite_file = path
    return _sqlite_file


@functools.cache
def _pg_schema_script() -> str | None:
    """The DDL and rows of a PostgreSQL schema as the migrations leave a new one (pg_dump of
    one migrated once), its names unqualified, so it builds in the schema of the session's
    search_path; None where pg_dump is missing or fails, and each test migrates its own
    schema instead."""
    admin = _pg()
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{_TEMPLATE}"')
    try:
        _migrated(_schema_url(_TEMPLATE))
        url = sa.make_url(PG_DRIVER_URL)
        dump = subprocess.run(
            ["pg_dump", "--no-owner", "--no-privileges", "--inserts", "--schema", _TEMPLATE,
             "--host", url.host or "127.0.0.1", "--port", str(url.port or 5432),
             "--username", url.username or "postgres", url.database or "test"],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, **({"PGPASSWORD": url.password} if url.password else {})},
        )
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP SCHEMA "{_TEMPLATE}" CASCADE')
    if dump.returncode != 0 or f"CREATE TABLE {_TEMPLATE}.ops_runs" not in dump.stdout:
        return None
    # Session settings, psql's commands and the schema itself (the test's exists) go.
    kept = [line for line in dump.stdout.splitlines()
            if not line.startswith(("--", "\\", "SET ", "SELECT pg_catalog.set_config",
                                    "CREATE SCHEMA"))]
    return "\n".join(kept).replace(f"{_TEMPLATE}.", "")


# What a schema's tables are made of, as one value: any DDL (a table, column, index,
# constraint, default, trigger, type, function or sequence added, dropped or altered) adds,
# removes or rewrites catalog rows, which changes their count or their xmin; statistics
# (ANALYZE, VACUUM) add pg_statistic rows or set reltuples. ~1.5 ms on vacuumed catalogs.
_OF_RELATIONS = (("pg_attribute", "attrelid"), ("pg_attrdef", "adrelid"),
                 ("pg_index", "indrelid"), ("pg_trigger", "tgrelid"),
                 ("pg_rewrite", "ev_class"), ("pg_sequence", "seqrelid"))
_OF_SCHEMA = (("pg_constraint", "connamespace"), ("pg_type", "typnamespace"),
              ("pg_proc", "pronamespace"))


def _rows_print(catalog: str, where: str) -> str:
    return f"(SELECT count(*) || '/' || sum(xmin::text::bigint) FROM {catalog} WHERE {where})"


_SCHEMA_PRINT = sa.text(
    "WITH rels AS (SELECT oid, xmin, reltuples FROM pg_class"
    " WHERE relnamespace = CAST(:schema AS regnamespace))"
    " SELECT concat_ws(' ', " + ", ".join([
        "(SELECT count(*) || '/' || sum(xmin::text::bigint) || '/'"
        " || count(*) FILTER (WHERE reltuples >= 0) FROM rels)",
        *(_rows_print(c, f"{col} IN (SELECT oid FROM rels)") for c, col in _OF_RELATIONS),
        *(_rows_print(c, f"{col} = CAST(:schema AS regnamespace)") for c, col in _OF_SCHEMA),
        "(SELECT count(*) FROM pg_statistic WHERE starelid IN (SELECT oid FROM rels))",
    ]) + ")")


class _BuiltSchemas:
    """This process's PostgreSQL schemas with the tables, reused from test to test.

    Building the tables costs PostgreSQL ~55 ms of CPU and dropping them ~10 ms, for each
    of ~540 tests. A schema a test gives back with its tables as they were built (the same
    catalog rows, no statistics: `_SCHEMA_PRINT`) is emptied instead, in one statement (a
    DELETE of every table's rows; the sequences and the migrations' own rows put back,
    ~2 ms) and handed to the next test as new. One whose tables changed, or that has held
    more than MAX_ROWS rows over its life (with autovacuum off, deleted rows stay in the
    tables' pages), is dropped, as every schema was before.
    """

    MAX_ROWS = 5_000

    def __init__(self) -> None:
        self._free: list[str] = []
        self._print: dict[str, str] = {}
        self._rows: dict[str, int] = {}
        self._empty_sql = ""
        self._seed_sql = ""

    def take(self) -> str:
        if self._free:
            return self._free.pop()
        schema = f"t_{RUN_TAG}_{uuid.uuid4().hex[:10]}"
        admin = _pg()
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        script = _pg_schema_script()
        if script is None:
            _migrated(_schema_url(schema))
        else:
            eng = make_engine(_schema_url(schema))
            try:
                with eng.begin() as conn:  # into the schema first on the URL's search_path
                    conn.exec_driver_sql(script)
            finally:
                eng.dispose()
        with admin.connect() as c:
            self._print[schema] = c.execute(_SCHEMA_PRINT, {"schema": schema}).scalar_one()
            if not self._empty_sql:
                self._learn(c, schema, script)
        self._rows[schema] = 0
        return schema

    def _learn(self, c: sa.Connection, schema: str, script: str | None) -> None:
        """The statements that empty a schema (its tables and sequences, read from the
        catalog) and put back the rows and sequence values the tables start with."""
        tables = c.exec_driver_sql(
            "SELECT relname FROM pg_class WHERE relnamespace = %(s)s::regnamespace"
            " AND relkind = 'r' ORDER BY relname", {"s": schema}).scalars().all()
        deletes = ", ".join(f'd{i} AS (DELETE FROM "{t}" RETURNING 1)'
                            for i, t in enumerate(tables))
        counts = " + ".join(f"(SELECT count(*) FROM d{i})" for i in range(len(tables)))
        self._empty_sql = f"WITH {deletes} SELECT {counts}"
        if script is not None:
            seed = [line for line in script.splitlines()
                    if line.startswith(("INSERT INTO ", "SELECT pg_catalog.setval("))]
        else:  # as the migrations leave it: its version row, every sequence at its start
            version = c.exec_driver_sql(
                f'SELECT version_num FROM "{schema}".ops_alembic_version').scalars().all()
            seqs = c.exec_driver_sql(
                "SELECT relname FROM pg_class WHERE relnamespace = %(s)s::regnamespace"
                " AND relkind = 'S'", {"s": schema}).scalars().all()
            seed = [f"INSERT INTO ops_alembic_version VALUES ('{v}');" for v in version]
            seed += [f"SELECT pg_catalog.setval('{q}', 1, false);" for q in seqs]
        self._seed_sql = "\n".join(seed)

    def give_back(self, schema: str) -> None:
        admin = _pg()
        try:
            with admin.connect() as c, c.execution_options(
                    isolation_level="READ COMMITTED").begin():  # one transaction, not autocommit
                c.exec_driver_sql(f"SET LOCAL search_path = \"{schema}\"")
                c.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
                if c.execute(_SCHEMA_PRINT, {"schema": schema}).scalar_one() != self._print[schema]:
                    raise LookupError("its tables changed")
                self._rows[schema] += c.exec_driver_sql(self._empty_sql).scalar_one()
                if self._rows[schema] > self.MAX_ROWS:
                    raise LookupError("too many deleted rows")
                if self._seed_sql:
                    c.exec_driver_sql(self._seed_sql)
        except (LookupError, sa.exc.DBAPIError):
            self._print.pop(schema)
            with admin.connect() as c:
                c.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
            return
        self._free.append(schema)

    def drop_free(self) -> None:
        if self._free and _pg_admin is not None:
            with contextlib.suppress(sa.exc.DBAPIError), _pg_admin.connect() as c:
                while self._free:
                    c.exec_driver_sql(f'DROP SCHEMA "{self._free.pop()}" CASCADE')


@functools.cache
def _built_schemas() -> _BuiltSchemas:
    return _BuiltSchemas()


@pytest.fixture
def env(db_url: str, redis_prefix: str) -> dict[str, str]:
    """Environment for settings and subprocesses: this test's database, no Redis by default."""
    return {
        "DATABASE_URL": db_url,
        "STOREFLOW_CACHE_PREFIX": redis_prefix,
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/root"),
    }


@pytest.fixture
def settings(engine: Engine, env: dict[str, str], tmp_path: Path) -> Settings:
    return load_settings(Overrides(), env=env, cwd=tmp_path)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"sfops-test:{RUN_TAG}:{uuid.uuid4().hex[:8]}:"
    yield prefix
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass


@pytest.fixture
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        _unavailable("Redis", str(exc))
    return REDIS_URL


@pytest.fixture
def clock_value() -> list[float]:
    """A fake wall clock for the embedded cache's expiry: tests move it by hand."""
    return [datetime(2026, 11, 28, 1, 0, tzinfo=UTC).timestamp()]


@pytest.fixture
def cache(cache_kind: str, engine: Engine, redis_prefix: str,
          request: pytest.FixtureRequest, clock_value: list[float]) -> Cache:
    if cache_kind == "redis":
        url = request.getfixturevalue("redis_url")
        return RedisCache(url, prefix=redis_prefix)
    return TableCache(engine, clock=lambda: clock_value[0])

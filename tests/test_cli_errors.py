"""How the CLI fails: a bad cache URL, a server that is not Redis, a SQLite path that does
not exist, a database that is not StoreFlow's, the console without a terminal, and
--json errors. Every case is a real `storeflow-ops` subprocess: its exit code, its one
line on stderr, and what it leaves behind."""

from __future__ import annotations

import json
import os
import pty
import select as selectmodule
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from jobs.db import make_engine, ops_runs, require_platform_tables
from jobs.errors import UsageError
from jobs.tenants import search_tenants
from tests.conftest import EXE, cli
from tests.factories import add_tenant
from tests.test_cli import NOW_ARG, demo_env, demo_files, held_lock, one_line_error

__all__ = ["held_lock"]  # a fixture of tests.test_cli, used here too


def run_count(engine: Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(ops_runs)).scalar_one())


# --- a bad cache URL, a server that is not Redis ---------------------------------------------


@pytest.mark.parametrize("url", [
    "http://ops:s3cret@127.0.0.1:6379/9",  # not a Redis scheme
    "redis://ops:s3cret@127.0.0.1:63a9/0",  # the port is not a number
    "redis://ops:s3cret@127.0.0.1:6379/nine",  # nor is the database
])
def test_a_malformed_cache_url_is_exit_2_in_one_line(engine: Engine, env: dict[str, str],
                                                     tmp_path: Path, url: str) -> None:
    tid = add_tenant(engine, id="t-shop")
    for args in (["trigger", "analytics-aggregate", "--now", NOW_ARG], ["analytics", tid]):
        proc = cli({**env, "REDIS_URL": url}, *args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        line = one_line_error(proc)
        assert "cache URL" in line and "not a valid Redis URL" in line, line
        assert "127.0.0.1" in line and "s3cret" not in proc.stderr
        assert proc.stdout == ""
    # Refused before the run started: nothing recorded.
    assert run_count(engine) == 0


class _NotRedis(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # pragma: no cover - Redis clients never send GET
        self.send_error(400)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    """A real HTTP server: a port that answers, but not in Redis's protocol."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotRedis)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_is_not_redis_is_exit_3_naming_the_url(
        engine: Engine, env: dict[str, str], tmp_path: Path, http_port: int) -> None:
    tid = add_tenant(engine, id="t-shop")
    url = f"redis://ops:s3cret@127.0.0.1:{http_port}/0"
    masked = f"redis://ops:***@127.0.0.1:{http_port}/0"

    proc = cli({**env, "REDIS_URL": url}, "analytics", tid, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    line = one_line_error(proc)
    assert f"cache unreachable at {masked}" in line and "not Redis" in line, line
    assert "s3cret" not in proc.stderr

    proc = cli({**env, "REDIS_URL": url}, "trigger", "analytics-aggregate", "--now", NOW_ARG,
               "--json", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    report = json.loads(proc.stdout)
    assert report["message"] == "Job failed"
    [error] = report["results"]["errors"]
    assert error["error"].startswith(f"cache unreachable at {masked}: the server there is not Redis")
    assert "s3cret" not in proc.stdout + proc.stderr


# --- SQLite paths and databases that are not StoreFlow's ----------------------------------


def test_a_sqlite_path_that_does_not_exist_is_exit_2_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "dir" / "x.sqlite3"
    env = {"HOME": str(tmp_path), "PATH": os.environ.get("PATH", ""),
           "DATABASE_URL": f"sqlite:///{missing}"}
    for args in (["jobs"], ["status", "--json"], ["history"], ["trigger", "expiry-checker"],
                 ["run"], ["db", "upgrade"]):
        proc = cli(env, *args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        line = one_line_error(proc)
        assert f"database file {missing} does not exist" in line, line
    assert not (tmp_path / "nonexistent").exists()

    # A relative path is named as the absolute one it would have been.
    proc = cli({**env, "DATABASE_URL": "sqlite:///typo/x.sqlite3"}, "jobs", cwd=tmp_path)
    assert proc.returncode == 2
    assert f"database file {tmp_path / 'typo' / 'x.sqlite3'} does not exist" in proc.stderr
    assert not (tmp_path / "typo").exists()


def test_the_embedded_default_database_is_still_created_on_first_use(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "PATH": os.environ.get("PATH", ""),
           "XDG_DATA_HOME": str(tmp_path / "xdg")}
    proc = cli(env, "jobs", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 4
    assert (tmp_path / "xdg" / "storeflow-ops" / "storeflow.sqlite3").is_file()


def test_db_upgrade_creates_a_new_file_only_in_a_folder_that_exists(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "PATH": os.environ.get("PATH", "")}
    new = tmp_path / "new.sqlite3"
    proc = cli({**env, "DATABASE_URL": f"sqlite:///{new}"}, "db", "upgrade", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert new.is_file()


def test_the_console_refuses_a_missing_sqlite_file_before_it_opens(tmp_path: Path) -> None:
    """On a real terminal (a pty), so it is the path that is refused, not the terminal."""
    missing = tmp_path / "nonexistent" / "x.sqlite3"
    env = {"HOME": str(tmp_path), "PATH": os.environ.get("PATH", ""), "TERM": "xterm",
           "DATABASE_URL": f"sqlite:///{missing}"}
    master, slave = pty.openpty()
    proc = subprocess.Popen([EXE], stdin=slave, stdout=subprocess.PIPE, stderr=slave, env=env,
                            cwd=tmp_path)
    os.close(slave)
    output = b""
    try:
        code = proc.wait(timeout=60)
        while selectmodule.select([master], [], [], 0.5)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            output += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        assert proc.stdout is not None
        proc.stdout.close()
    text = output.decode(errors="replace")
    assert code == 2, text
    assert f"database file {missing} does not exist" in text
    assert "\x1b[" not in text  # the console never started drawing
    assert not missing.parent.exists()


def test_the_console_closes_its_database_when_it_quits(tmp_path: Path) -> None:
    """The console on a real terminal (a pty), quit with q: its SQLite database is closed
    before the process exits (no -wal or -shm file left), as the commands' is."""
    env = demo_env(tmp_path, PATH=os.environ.get("PATH", ""), TERM="xterm")
    master, slave = pty.openpty()
    proc = subprocess.Popen([EXE], stdin=slave, stdout=slave, stderr=slave, env=env,
                            cwd=tmp_path)
    os.close(slave)
    wal = tmp_path / "demo.sqlite3-wal"
    try:
        # The jobs screen drawn and the database open (its WAL file there): a worker thread
        # opens it after the screen mounts.
        deadline = time.monotonic() + 60
        output = _read_pty(master, proc, deadline,
                           until=lambda out: b"expiry-checker" in out and wal.exists())
        assert b"expiry-checker" in output and wal.exists(), output.decode(errors="replace")[-500:]
        os.write(master, b"q")
        _read_pty(master, proc, deadline)  # what it draws on the way out, until it ends
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert code == 0
    assert demo_files(tmp_path) == ["demo.sqlite3"]


def _read_pty(master: int, proc: subprocess.Popen[bytes], deadline: float,
              until: Callable[[bytes], bool] = lambda out: False) -> bytes:
    """What the console writes to its terminal, until `until(all of it so far)` holds, it
    ends, or the deadline passes."""
    output = b""
    while not until(output) and proc.poll() is None and time.monotonic() < deadline:
        if selectmodule.select([master], [], [], 0.2)[0]:
            try:
                output += os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
    return output


def test_a_database_without_platform_tables_says_so_on_every_command_that_reads_them(
        db_url: str, env: dict[str, str], tmp_path: Path) -> None:
    # Only the console's own tables: what `db upgrade` makes of an empty database.
    assert cli(env, "db", "upgrade", cwd=tmp_path).returncode == 0
    for args in (["analytics", "t-any"], ["analytics", "t-any", "--json"],
                 ["trigger", "expiry-checker"], ["preview", "cleanup"]):
        proc = cli(env, *args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "has no StoreFlow platform tables" in one_line_error(proc), args
    # The console's tenant picker reads them too.
    engine = make_engine(db_url)
    try:
        with pytest.raises(UsageError, match="has no StoreFlow platform tables"):
            search_tenants(engine, "shop")
    finally:
        engine.dispose()


def test_a_new_engine_on_the_same_url_looks_at_the_platform_tables_again(
        engine: Engine, db_url: str) -> None:
    require_platform_tables(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE cart_items")
    require_platform_tables(engine)  # this engine has seen them: it does not ask again
    fresh = make_engine(db_url)
    try:
        with pytest.raises(UsageError, match=r"has no StoreFlow platform tables \(cart_items\)"):
            require_platform_tables(fresh)
    finally:
        fresh.dispose()


# --- the console without a terminal ------------------------------------------------------------


@pytest.mark.parametrize("args", [[], ["tui"], ["tui", "--read-only"]])
def test_the_console_without_a_terminal_refuses_in_one_line(
        engine: Engine, env: dict[str, str], tmp_path: Path, args: list[str]) -> None:
    # As cron or systemd start it: stdin from /dev/null, output to pipes.
    proc = cli({**env, "TERM": "xterm"}, *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc)
    assert "needs a terminal" in line and "storeflow-ops run" in line, line
    assert "\x1b" not in proc.stderr and proc.stdout == ""


def test_demo_without_a_terminal_refuses_before_building(tmp_path: Path) -> None:
    path = tmp_path / "demo.sqlite3"
    env = {"HOME": str(tmp_path), "PATH": os.environ.get("PATH", ""), "TERM": "xterm"}
    proc = cli(env, "demo", "--tenants", "2", "--path", str(path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "--no-tui" in one_line_error(proc)
    assert "\x1b" not in proc.stderr
    assert not path.exists()


# --- --json errors -------------------------------------------------------------------------------


def test_json_errors_are_a_document_on_stdout_too(tmp_path: Path) -> None:
    base = {"HOME": str(tmp_path), "PATH": os.environ.get("PATH", "")}
    down = {**base, "DATABASE_URL": "postgresql://ops:s3cret@127.0.0.1:1/x"}
    cases: list[tuple[dict[str, str], list[str], int, str]] = [
        (down, ["status", "--json"], 3, "database unreachable at"),
        (down, ["trigger", "expiry-checker", "--json"], 3, "database unreachable at"),
        (base | {"DATABASE_URL": f"sqlite:///{tmp_path / 'no' / 'x.sqlite3'}"},
         ["jobs", "--json"], 2, "does not exist"),
        (base, ["trigger", "nope", "--json"], 2, "unknown job 'nope'"),
        (base, ["history", "--json", "--limit", "many"], 2, "invalid int value"),
    ]
    for env, args, code, says in cases:
        proc = cli(env, *args, cwd=tmp_path)
        assert proc.returncode == code, (args, proc.stderr)
        doc = json.loads(proc.stdout)
        assert set(doc) == {"error", "exit_code"}, doc
        assert doc["exit_code"] == code and says in doc["error"], (args, doc)
        assert "s3cret" not in proc.stdout + proc.stderr
        # stderr keeps its line, with the same words.
        assert says in proc.stderr and "Traceback" not in proc.stderr


def test_json_refusal_of_a_running_job_names_the_run(engine: Engine, env: dict[str, str],
                                                     held_lock: int, tmp_path: Path) -> None:
    proc = cli(env, "trigger", "expiry-checker", "--now", NOW_ARG, "--json", cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc == {"error": doc["error"], "exit_code": 4, "run_id": held_lock}
    assert "already running" in doc["error"]
    assert "already running" in one_line_error(proc)


# --- the console on a database that is not StoreFlow's ----------------------------------------


async def test_the_console_says_when_the_database_has_no_platform_tables(
        db_url: str, tmp_path: Path) -> None:
    from console.tui.app import OpsApp
    from jobs.migrate import upgrade
    from jobs.settings import Overrides, load_settings

    engine = make_engine(db_url)
    upgrade(engine)  # the console's own tables only
    settings = load_settings(Overrides(database_url=db_url), env={}, cwd=tmp_path)
    app = OpsApp(settings, engine=engine, refresh_seconds=0)
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            for _ in range(20):
                await pilot.pause()
                await app.workers.wait_for_complete()
            notes = [n.message for n in app._notifications]
            assert any("has no StoreFlow platform tables" in n for n in notes), notes
    finally:
        engine.dispose()

"""Secrets stay secret: one redaction for every URL (userinfo and query parameters), in
`status`, `status --json`, the runner's log and connection errors; a password on the
command line is warned about; the embedded database is readable by its owner only."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from console.cli import build_parser
from jobs.db import make_engine, platform
from jobs.errors import ConfigError
from jobs.migrate import upgrade
from jobs.redaction import has_secret, redact, scrub
from jobs.sender import parse_smtp_url
from tests.conftest import PG_URL, RUN_TAG, _pg, cli, start
from tests.factories import add_tenant

SECRETS = ("userinfo-S3cr3t", "query-S3cr3t", "redis-S3cr3t")


# --- one redaction for every URL -------------------------------------------------------------


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
    ("postgres://u:pw@h:5432/db?sslmode=require", "postgres://u:***@h:5432/db?sslmode=require"),
    ("postgresql+psycopg://u@h/db?password=pw&sslmode=require",
     "postgresql+psycopg://u@h/db?password=***&sslmode=require"),
    ("postgresql://h/db?PASSWORD=pw&Token=t&sslpassword=x&options=-csearch_path%3Ds",
     "postgresql://h/db?PASSWORD=***&Token=***&sslpassword=***&options=-csearch_path%3Ds"),
    ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),  # an encoded "@"
    ("postgresql://u:p@ss/w?rd#x@h/db", "postgresql://u:***@h/db"),  # unencoded "@ / ? #"
    ("postgresql://h/db?user=me@corp.example&password=pw",
     "postgresql://h/db?user=me@corp.example&password=***"),  # an "@" in the query
    ("redis://:pw@r:6379/0", "redis://:***@r:6379/0"),
    ("rediss://default:pw@r:6380/1?ssl_cert_reqs=none",
     "rediss://default:***@r:6380/1?ssl_cert_reqs=none"),
    ("redis://r:6379/0?password=pw", "redis://r:6379/0?password=***"),
    ("smtp://u:p@host:notaport", "smtp://u:***@host:notaport"),  # was host:nota***ort
    ("smtps://mailer:pw@mail.example:465?timeout=10", "smtps://mailer:***@mail.example:465?timeout=10"),
    ("https://api.example/x?api_key=k&x=1#frag", "https://api.example/x?api_key=***&x=1#frag"),
    ("https://h/x?secret=s&auth=a&access_token=t", "https://h/x?secret=***&auth=***&access_token=***"),
    ("sqlite:////srv/a@b/x.sqlite3", "sqlite:////srv/a@b/x.sqlite3"),
    ("sqlite:///relative.sqlite3", "sqlite:///relative.sqlite3"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
    ("postgresql://u:@h/db", "postgresql://u:@h/db"),  # an empty password hides nothing
    ("host=db user=u password=pw dbname=x", "host=db user=u password=*** dbname=x"),
    ("host=db password='p w' dbname=x", "host=db password=*** dbname=x"),
    ("not a url", "not a url"),
])
def test_redact_hides_userinfo_passwords_and_secret_parameters(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert has_secret(url) is (shown != url)
    assert redact(shown) == shown  # idempotent: safe to apply twice


def test_scrub_redacts_every_url_and_pair_inside_text() -> None:
    message = ('connection to "postgresql://u:pw1@h/db?password=pw2" failed; '
               "retry redis://:pw3@r/0 later, password=pw4 token = pw5, Key (id)=(7)")
    assert scrub(message) == ('connection to "postgresql://u:***@h/db?password=***" failed; '
                              "retry redis://:***@r/0 later, password=*** token = ***, "
                              "Key (id)=(7)")


def test_a_bad_smtp_url_is_shown_whole_but_its_password() -> None:
    with pytest.raises(ConfigError) as err:
        parse_smtp_url("smtp://mailer:p@host:notaport")
    assert "'smtp://mailer:***@host:notaport': the port must be a number" in err.value.message


# --- end to end, on PostgreSQL: passwords in the URL's userinfo and query ---------------------


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A PostgreSQL URL of a schema of its own with the platform and ops_ tables."""
    admin = _pg()
    schema = f"t_{RUN_TAG}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    eng = make_engine(url)
    platform.create_all(eng)
    upgrade(eng)
    eng.dispose()
    yield url
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


def secret_url(url: str) -> str:
    """The same database with a password in the userinfo and another in the query (trust
    authentication ignores both)."""
    assert url.startswith("postgresql://postgres@")
    url = url.replace("postgres@", f"postgres:{SECRETS[0]}@", 1)
    return f"{url}&password={SECRETS[1]}"


def home(cwd: Path, env: dict[str, str]) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "HOME": str(cwd), **env}


def assert_no_secret(*texts: str) -> None:
    for t in texts:
        for secret in SECRETS:
            assert secret not in t, t


def test_status_and_status_json_hide_both_passwords(pg_schema: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": secret_url(pg_schema)}
    proc = cli(home(tmp_path, env), "status", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # no runner alive
    assert_no_secret(proc.stdout, proc.stderr)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("database: "))
    assert line == f"database: {pg_schema.replace('postgres@', 'postgres:***@')}&password=***"

    proc = cli(home(tmp_path, env), "status", "--json", cwd=tmp_path)
    assert proc.returncode == 1
    assert_no_secret(proc.stdout, proc.stderr)
    assert json.loads(proc.stdout)["database"].endswith("&password=***")


def test_the_runner_start_line_hides_both_passwords(pg_schema: str, tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "DATABASE_URL": secret_url(pg_schema)}
    log = tmp_path / "runner.log"
    with log.open("w") as err:
        proc = start(["run", "--log-format", "json"], env, tmp_path, stderr=err)
        try:
            deadline = time.monotonic() + 60
            while "runner-started" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    lines = log.read_text().splitlines()
    assert_no_secret(*lines)
    started = next(json.loads(ln) for ln in lines if '"runner-started"' in ln)
    assert started["database"].startswith("postgresql://postgres:***@")
    assert started["database"].endswith("&password=***")


def test_connection_errors_hide_the_passwords(tmp_path: Path) -> None:
    for url in (f"postgresql://postgres:{SECRETS[0]}@127.0.0.1:1/x?password={SECRETS[1]}",
                f"postgresql://postgres@127.0.0.1:5432/no_such_db_here?password={SECRETS[1]}",
                f"postgresql://postgres@127.0.0.1:5432/test?password={SECRETS[1]}&bogus=1"):
        for args in (["status"], ["status", "--json"], ["jobs"], ["run"]):
            proc = cli(home(tmp_path, {"DATABASE_URL": url}), *args, cwd=tmp_path)
            assert proc.returncode == 3, (url, args, proc.stderr)
            assert "database unreachable at postgresql" in proc.stderr
            assert "password=***" in proc.stderr
            assert_no_secret(proc.stdout, proc.stderr)
    # A URL too broken to connect with is a usage error, still without its password.
    for url in (f"postgresql://postgres:{SECRETS[0]}@127.0.0.1:notaport/x",
                f"postgresql://postgres@127.0.0.1/x?password={SECRETS[1]}&port=abc"):
        proc = cli(home(tmp_path, {"DATABASE_URL": url}), "status", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "internal error" not in proc.stderr
        assert_no_secret(proc.stdout, proc.stderr)


def test_a_redis_password_in_the_query_is_hidden_in_cache_errors(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'ops.sqlite3'}"
    eng = make_engine(db)
    platform.create_all(eng)
    upgrade(eng)
    tenant = add_tenant(eng)
    eng.dispose()
    env = {"DATABASE_URL": db, "REDIS_URL": f"redis://127.0.0.1:1/0?password={SECRETS[2]}"}
    proc = cli(home(tmp_path, env), "analytics", tenant, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "cache unreachable at redis://127.0.0.1:1/0?password=***" in proc.stderr
    assert_no_secret(proc.stdout, proc.stderr)


# --- a password on the command line ------------------------------------------------------------


def test_a_password_on_the_command_line_is_warned_about_once(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'ops.sqlite3'}"
    eng = make_engine(db)
    platform.create_all(eng)
    upgrade(eng)
    eng.dispose()
    cache = "redis://:cache-pw@127.0.0.1:6379/0"
    pg = "postgresql://postgres:pg-pw@127.0.0.1:1/x"
    for args, warned in (
        (["--database-url", db, "jobs"], None),
        (["--database-url", pg, "jobs"], "--database-url"),
        (["--database-url", db, "--cache-url", cache, "jobs"], "--cache-url"),
        (["jobs", "--database-url", pg, "--cache-url", cache], "--database-url and --cache-url"),
    ):
        proc = cli(home(tmp_path, {}), *args, cwd=tmp_path)
        warnings = [ln for ln in proc.stderr.splitlines() if "warning" in ln]
        if warned is None:
            assert warnings == [], proc.stderr
            continue
        assert len(warnings) == 1, proc.stderr
        assert warnings[0].startswith(f"storeflow-ops: warning: {warned} carries a password")
        assert "`ps`" in warnings[0] and "environment" in warnings[0]
        assert "cache-pw" not in proc.stderr and "pg-pw" not in proc.stderr
    # The same URLs from the environment: no warning.
    proc = cli(home(tmp_path, {"DATABASE_URL": db, "REDIS_URL": cache}), "jobs", cwd=tmp_path)
    assert proc.returncode == 0 and "warning" not in proc.stderr


def test_help_says_secrets_belong_in_the_environment() -> None:
    helptext = " ".join(build_parser().format_help().split())
    assert "put a password in DATABASE_URL, not here" in helptext
    assert "Secrets belong in the environment" in helptext


# --- the embedded database is its owner's ------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_the_embedded_database_is_created_0700_and_0600(tmp_path: Path, umask_022: None) -> None:
    folder = tmp_path / "data" / "storeflow-ops"
    path = folder / "storeflow.sqlite3"
    eng = make_engine(f"sqlite:///{path}")
    upgrade(eng)
    with eng.connect() as c:  # an open connection in WAL mode: -wal and -shm exist
        c.execute(text("SELECT count(*) FROM ops_runs"))
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        files = sorted(p.name for p in folder.iterdir())
        assert files == ["storeflow.sqlite3", "storeflow.sqlite3-shm", "storeflow.sqlite3-wal"]
        assert {name: mode(folder / name) for name in files} == dict.fromkeys(files, 0o600)
    eng.dispose()
    assert mode(folder) == 0o700


def test_the_default_location_and_the_demo_are_private(tmp_path: Path, umask_022: None) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg")}
    proc = cli(home(tmp_path, env), "db", "upgrade", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "xdg" / "storeflow-ops"
    assert mode(folder) == 0o700
    assert mode(folder / "storeflow.sqlite3") == 0o600

    proc = cli(home(tmp_path, env), "demo", "--no-tui", "--tenants", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    demo = folder / "demo.sqlite3"
    assert mode(demo) == 0o600
    left = [p.name for p in folder.iterdir() if mode(p) & 0o077]
    assert left == []

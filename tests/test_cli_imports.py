"""The command line answers at once: `--help` loads no database layer, and the commands
that list (jobs, status, history) load neither Alembic (when the ops_ tables are current),
nor the console, nor what only a run needs (Redis, Jinja2). Each is a real process whose
sys.modules is read at its end; bench/cli_bench.py measures what that saves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from jobs.db import make_engine
from jobs.migrate import current_revision, ensure_schema, head_revision, scripted_head

# Runs the CLI as its entry point does, then writes the top-level packages it loaded.
PROBE = """
import json, sys
from console.cli import main
out = sys.argv.pop(1)
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
with open(out, "w") as f:
    json.dump({"code": code, "loaded": sorted(sys.modules)}, f)
"""

HEAVY = {"sqlalchemy", "alembic", "textual", "rich", "jinja2", "redis", "email_validator"}
ONLY_TO_RUN = {"alembic", "textual", "jinja2", "redis", "email_validator"}


def probe_modules(env: dict[str, str], tmp_path: Path, *args: str) -> tuple[int, set[str]]:
    """(exit code, every module the command loaded)."""
    out = tmp_path / "loaded.json"
    proc = subprocess.run([sys.executable, "-c", PROBE, str(out), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert out.exists(), proc.stderr
    found = json.loads(out.read_text())
    return int(found["code"] or 0), set(found["loaded"])


def probe(env: dict[str, str], tmp_path: Path, *args: str) -> tuple[int, set[str]]:
    """(exit code, the top-level packages the command loaded)."""
    code, modules = probe_modules(env, tmp_path, *args)
    return code, {m.partition(".")[0] for m in modules}


def test_help_loads_no_database_layer_nor_the_console(tmp_path: Path) -> None:
    env = {"PATH": "", "HOME": str(tmp_path)}
    code, loaded = probe(env, tmp_path, "--help")
    assert code == 0
    assert "console" in loaded and "argparse" in loaded  # the probe sees what ran
    assert loaded & HEAVY == set()


@pytest.mark.parametrize("command", ["jobs", "status", "history"])
def test_listing_commands_load_only_what_they_need(engine: Engine, env: dict[str, str],
                                                   tmp_path: Path, command: str) -> None:
    code, loaded = probe(env, tmp_path, command, "--json")
    assert code in (0, 1)  # status: 1 when no runner is alive
    assert "sqlalchemy" in loaded  # it did read the database
    assert loaded & ONLY_TO_RUN == set()


def test_a_command_loads_the_dialect_of_its_database_only(engine: Engine, env: dict[str, str],
                                                          tmp_path: Path) -> None:
    """Declaring the tables loads no dialect (jobs.db.PartialIndex): a command on SQLite
    never pays for PostgreSQL's package, nor one on PostgreSQL for SQLite's."""
    code, modules = probe_modules(env, tmp_path, "jobs", "--json")
    assert code == 0
    mine = engine.dialect.name
    other = {"sqlite": "postgresql", "postgresql": "sqlite"}[mine]
    assert f"sqlalchemy.dialects.{mine}" in modules  # the probe sees the dialect it used
    assert {m for m in modules if m.startswith(f"sqlalchemy.dialects.{other}")} == set()


def test_the_scripts_name_the_head_alembic_finds() -> None:
    assert scripted_head() is not None
    assert scripted_head() == head_revision()


def test_a_database_behind_the_scripts_is_still_upgraded(db_url: str) -> None:
    from alembic import command

    from jobs.migrate import _config

    engine = make_engine(db_url)
    ensure_schema(engine)  # no version table at all
    assert current_revision(engine) == head_revision()
    with engine.begin() as conn:
        command.downgrade(_config(conn), "0003")
    assert current_revision(engine) == "0003"
    ensure_schema(engine)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_a_run_does_not_load_the_listing_commands_overview(engine: Engine, env: dict[str, str],
                                                           tmp_path: Path) -> None:
    """`trigger` starts its job's work sooner without the overview (the jobs screen and the
    listing commands' module): every run pays its import otherwise."""
    code, modules = probe_modules(env, tmp_path, "preview", "cleanup", "--json")
    assert code == 0
    assert "jobs.cleanup" in modules  # the probe sees the job that ran
    assert "jobs.overview" not in modules

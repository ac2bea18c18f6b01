"""`jobs/` never imports Textual: every module under jobs/ is imported in a fresh
interpreter, and the first one that brings `textual` into sys.modules is named.

`console/` holds faces and no SQL: no module under console/ takes a table, a metadata, a
connection or a SQL construct (select, update, insert, func...) from jobs/ or SQLAlchemy.
Each console module's imports are read (those inside functions too) and each imported
name is resolved to its object, so a table re-exported by another jobs module
(`from jobs.runs import ops_runs`) or reached through a module (`runs.ops_runs`) is
caught as well as `from jobs.db import ops_runs`. A face may hold an `Engine` (to hand
to jobs/) and call jobs/ functions that open or check a database."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import Table
from sqlalchemy.engine import Engine

import console
import jobs
import jobs.db

# Alembic runs these itself, inside a migration context; importing them alone fails.
NOT_IMPORTABLE_ALONE = {"jobs.migrations.env"}

CHECK = """
import importlib, importlib.util, json, sys
culprits = []
for name in sys.argv[1:]:
    if name.endswith(".py"):  # a migration script: a file, not an importable name
        spec = importlib.util.spec_from_file_location("migration", name)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    else:
        importlib.import_module(name)
    if "textual" in sys.modules and not culprits:
        culprits.append(name)
print(json.dumps(culprits))
"""


def jobs_modules() -> list[str]:
    names = sorted(
        m.name
        for m in pkgutil.walk_packages(jobs.__path__, prefix="jobs.")
        if m.name not in NOT_IMPORTABLE_ALONE
    )
    versions = Path(jobs.__path__[0]) / "migrations" / "versions"
    return names + sorted(str(p) for p in versions.glob("*.py"))


def first_textual_importer(modules: list[str]) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", CHECK, *modules], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    culprits: list[str] = json.loads(proc.stdout)
    return culprits


def test_jobs_package_does_not_import_textual() -> None:
    modules = jobs_modules()
    assert {"jobs.runs", "jobs.expiry", "jobs.demo", "jobs.settings"} <= set(modules)
    assert any(m.endswith("0001_ops_tables.py") for m in modules)
    assert first_textual_importer(modules) == []


def test_the_check_names_a_module_that_does() -> None:
    assert first_textual_importer(["jobs.runs", "textual.app"]) == ["textual.app"]


# --- console/ takes no SQL from anywhere -----------------------------------------------------

CONSOLE = Path(console.__path__[0])
# They hand out a Connection: whoever holds one can run any statement.
CONNECTIONS = (jobs.db.transaction, jobs.db.connection)


def why_not_a_face(obj: object) -> str | None:
    """Why a face may not hold `obj` (a table, a connection, a SQL construct), or None."""
    if obj is Engine:
        return None
    if isinstance(obj, ModuleType):
        name = obj.__name__
        if name == "jobs.db" or name.partition(".")[0] == "sqlalchemy":
            return f"the module {name}"
        return None
    if isinstance(obj, Table):
        return f"the table {obj.name}"
    if any(obj is c for c in CONNECTIONS):
        return "a database connection"
    module = getattr(obj, "__module__", None)
    if isinstance(module, str) and module.partition(".")[0] == "sqlalchemy":
        return f"SQLAlchemy's {type(obj).__name__} from {module}"
    return None


_MISSING = object()


def _module(name: str) -> object:
    try:
        return importlib.import_module(name)
    except ImportError:
        return _MISSING


def _imported(module: str, name: str) -> object:
    """What `from module import name` binds: an attribute, or else a submodule."""
    mod = _module(module)
    value = getattr(mod, name, _MISSING)
    return _module(f"{module}.{name}") if value is _MISSING else value


def sql_in_face(source: str, filename: str, package: str = "console") -> list[str]:
    """`file:line: what` for each table, connection or SQL construct the source imports,
    or reaches through an imported module (`runs.ops_runs`)."""
    tree = ast.parse(source, filename)
    found: list[str] = []
    bound: dict[str, object] = {}  # local name -> the object it was imported as

    def check(node: ast.AST, what: str, obj: object) -> None:
        why = why_not_a_face(obj)
        if why is not None:
            found.append(f"{filename}:{getattr(node, 'lineno', 0)}: {what} is {why}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check(node, f"import {alias.name}", _module(alias.name))
                local = alias.asname or alias.name.partition(".")[0]
                bound[local] = _module(alias.name if alias.asname else local)
        elif isinstance(node, ast.ImportFrom):
            module = importlib.util.resolve_name("." * node.level + (node.module or ""),
                                                 package) if node.level else node.module or ""
            for alias in node.names:
                obj = _imported(module, alias.name)
                check(node, f"{module}.{alias.name}", obj)
                bound[alias.asname or alias.name] = obj
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute)
              and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
              in ("import_module", "__import__")
              and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            check(node, f"import_module({node.args[0].value!r})", _module(node.args[0].value))

    def resolve(node: ast.expr) -> object:
        if isinstance(node, ast.Name):
            return bound.get(node.id, _MISSING)
        if isinstance(node, ast.Attribute):
            base = resolve(node.value)
            if isinstance(base, ModuleType):
                return getattr(base, node.attr, _MISSING)
        return _MISSING

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(resolve(node.value), ModuleType):
            check(node, ast.unparse(node), resolve(node))
    return found


def console_files() -> list[Path]:
    return sorted(CONSOLE.rglob("*.py"))


def test_console_takes_no_sql_from_anywhere() -> None:
    files = console_files()
    assert {"runner.py", "http.py", "commands.py", "history.py"} <= {f.name for f in files}
    found: list[str] = []
    for path in files:
        package = ".".join(("console", *path.relative_to(CONSOLE).parent.parts))
        found += sql_in_face(path.read_text(encoding="utf-8"),
                             str(path.relative_to(CONSOLE.parent)), package)
    assert found == []


@pytest.mark.parametrize("source", [
    "from jobs.db import ops_runs",
    "from jobs.db import tenants as shops",
    "from jobs.db import platform",
    "from jobs.db import transaction",
    "from jobs import db",
    "import jobs.db",
    "from jobs.runs import ops_runners",  # a table another jobs module imported
    "from jobs.runs import select",
    "from jobs import runs\nq = runs.ops_runs.c.id",
    "import jobs.presence\nrows = jobs.presence.ops_runners",
    "from sqlalchemy import select",
    "from sqlalchemy import func",
    "from sqlalchemy.sql import update",
    "import sqlalchemy",
    "import sqlalchemy as sa",
    "from sqlalchemy.engine import Connection",
    "from importlib import import_module\ndb = import_module('jobs.db')",
    "def later() -> None:\n    from jobs.db import insert_rows, ops_runs",
])
def test_the_check_names_a_console_module_that_takes_sql(source: str) -> None:
    found = sql_in_face(source, "console/example.py")
    assert found and all(f.startswith("console/example.py:") for f in found), found


def test_the_check_lets_a_face_hold_an_engine_and_call_jobs() -> None:
    source = ("from sqlalchemy.engine import Engine\n"
              "from jobs import runs\n"
              "from jobs.db import check_reachable, make_engine, require_platform_tables\n"
              "from jobs.tenants import find_tenant\n"
              "rows = runs.history\n")
    assert sql_in_face(source, "console/example.py") == []


# --- Textual lives in console/tui/ only ------------------------------------------------------


def textual_imports(source: str, filename: str) -> list[str]:
    """`file:line` for each import of textual in the source, inside functions too."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                 else [])
        if any(n == "textual" or n.startswith("textual.") for n in names):
            found.append(f"{filename}:{node.lineno}")
    return found


def test_textual_is_imported_only_by_the_tui_package() -> None:
    """The CLI, runner and HTTP faces run on servers with no terminal: they reach the
    console only through console.tui, never Textual directly."""
    tui = CONSOLE / "tui"
    outside = [p for p in console_files() if tui not in p.parents]
    assert {"cli.py", "runner.py", "http.py"} <= {p.name for p in outside}
    found = [hit for p in outside
             for hit in textual_imports(p.read_text(encoding="utf-8"), p.name)]
    assert found == []
    assert textual_imports("def f():\n    from textual.app import App\n", "x.py") == ["x.py:2"]
    assert textual_imports("import textual\n", "y.py") == ["y.py:1"]

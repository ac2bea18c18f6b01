"""`jobs/` never imports Textual (SPEC 1): every module under jobs/ is imported in a fresh
interpreter, and the first one that brings `textual` into sys.modules is named."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import jobs

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

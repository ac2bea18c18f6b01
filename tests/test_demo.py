"""`storeflow-ops demo` without --no-tui builds the database, then opens the console on it
(the console itself is stood in for: tests/test_tui.py drives the real one)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import pytest

import console.cli
import console.tui.app
from console.commands import cmd_demo
from console.context import CliContext
from jobs.settings import Overrides, load_settings


def test_demo_opens_the_console_on_the_database_it_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[tuple[str, bool]] = []

    def run_app(settings: Any, read_only: bool = False, **_: Any) -> int:
        opened.append((settings.database_url, read_only))
        return 0

    monkeypatch.setattr(console.cli, "require_terminal", lambda instead: None)
    monkeypatch.setattr(console.tui.app, "run_app", run_app)
    path = tmp_path / "demo.sqlite3"
    settings = load_settings(Overrides(), env={"HOME": str(tmp_path)}, cwd=tmp_path)
    err = io.StringIO()
    ctx = CliContext(settings, stdout=io.StringIO(), stderr=err)
    args = argparse.Namespace(tenants=2, path=str(path), no_tui=False, read_only=True)
    assert cmd_demo(ctx, args) == 0
    assert opened == [(f"sqlite:///{path.resolve()}", True)]
    assert path.is_file()
    assert "cannot open" not in err.getvalue()

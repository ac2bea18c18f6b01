"""`storeflow-ops import-vercel`: the seed's vercel.json gives back the shipped schedules;
whatever cannot be imported is reported, never dropped silently."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from jobs.settings import DEFAULTS_FILE, JOB_IDS, Overrides, load_settings
from tests.conftest import CliCall

REPO = Path(__file__).resolve().parents[1]
SEED_VERCEL = Path(__file__).resolve().parent / "data" / "vercel.json"  # the seed's, verbatim
SEED_CRONS = [
    {"path": "/api/admin/subscriptions/expiry-checker", "schedule": "0 0 * * *"},
    {"path": "/api/admin/subscriptions/payment-reminders", "schedule": "0 9 * * *"},
    {"path": "/api/admin/analytics/aggregate", "schedule": "0 1 * * *"},
    {"path": "/api/admin/cleanup", "schedule": "0 2 * * 0"},
]


def home(cwd: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "HOME": str(cwd)}


def schedules(config: Path | None) -> dict[str, tuple[str, str]]:
    settings = load_settings(Overrides(config=str(config) if config else None), env={},
                             cwd=config.parent if config else Path("/"))
    return {j: (settings.job(j).schedule.expression, settings.job(j).timezone) for j in JOB_IDS}


@pytest.fixture
def seed_vercel() -> Path:
    assert json.loads(SEED_VERCEL.read_text()) == {"crons": SEED_CRONS}
    return SEED_VERCEL


def write_vercel(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "vercel.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_the_seed_vercel_json_gives_back_the_default_schedules(seed_vercel: Path,
                                                                tmp_path: Path, cli_here: CliCall) -> None:
    out = tmp_path / "imported.toml"
    proc = cli_here(home(tmp_path), "import-vercel", str(seed_vercel), "--write", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and "wrote 4" in proc.stdout

    # Loaded over the built-in defaults, so compare with a neutral starting point too:
    # every job's table must be in the file, not just inherited.
    text = out.read_text()
    assert [line for line in text.splitlines() if line.startswith("[jobs.")] \
        == [f"[jobs.{j}]" for j in JOB_IDS]
    imported = schedules(out)
    assert imported == schedules(REPO / "schedules.toml") == schedules(DEFAULTS_FILE)
    assert imported["cleanup"] == ("0 2 * * 0", "UTC")

    printed = cli_here(home(tmp_path), "import-vercel", str(seed_vercel), cwd=tmp_path)
    assert printed.returncode == 0 and printed.stdout == text


def test_unknown_paths_and_bad_entries_are_reported_and_the_rest_imported(
        tmp_path: Path, cli_here: CliCall) -> None:
    crons = [
        *SEED_CRONS[:2],
        {"path": "/api/admin/reports/weekly", "schedule": "0 3 * * 1"},
        {"path": "/api/admin/analytics/aggregate", "schedule": "61 1 * * *"},
        {"path": "/api/admin/cleanup", "schedule": "0 2 * * 0"},
        {"path": "/api/admin/cleanup/", "schedule": "0 4 * * *"},  # a second cleanup
        {"path": "/api/admin/analytics/aggregate?days=2", "schedule": "0 5 * * *"},
        {"schedule": "0 6 * * *"},
        "not an object",
    ]
    path = write_vercel(tmp_path, {"crons": crons})
    proc = cli_here(home(tmp_path), "import-vercel", str(path), cwd=tmp_path)
    assert proc.returncode == 1
    problems = proc.stderr.splitlines()
    assert len(problems) == 6, proc.stderr
    assert all(line.startswith(f"storeflow-ops: {path}: crons[") for line in problems)
    assert "crons[2]: /api/admin/reports/weekly: not one of the four" in problems[0]
    assert "crons[3]: /api/admin/analytics/aggregate: schedule '61 1 * * *'" in problems[1]
    assert "crons[5]: /api/admin/cleanup/: cleanup already has '0 2 * * 0' from crons[4]" \
        in problems[2]
    assert "crons[6]: /api/admin/analytics/aggregate?days=2: query strings" in problems[3]
    assert "crons[7]" in problems[4] and "crons[8]" in problems[5]
    assert "Traceback" not in proc.stderr

    out = tmp_path / "partial.toml"
    out.write_text(proc.stdout)
    got = schedules(out)
    assert got["expiry-checker"] == ("0 0 * * *", "UTC")
    assert got["payment-reminders"] == ("0 9 * * *", "UTC")
    assert got["cleanup"] == ("0 2 * * 0", "UTC")
    assert "[jobs.analytics-aggregate]" not in proc.stdout


@pytest.mark.parametrize(("content", "says"), [
    ("{not json", "malformed JSON"),
    ("[]", "crons: missing"),
    ({"functions": {}}, "crons: missing"),
    ({"crons": {"path": "/api/admin/cleanup"}}, "crons: missing"),
])
def test_a_file_without_a_crons_list_is_exit_2_in_one_line(tmp_path: Path, content: Any,
                                                          says: str, cli_here: CliCall) -> None:
    path = write_vercel(tmp_path, content)
    proc = cli_here(home(tmp_path), "import-vercel", str(path), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and says in proc.stderr


def test_missing_file_and_existing_target(seed_vercel: Path, tmp_path: Path, cli_here: CliCall) -> None:
    proc = cli_here(home(tmp_path), "import-vercel", str(tmp_path / "nope.json"), cwd=tmp_path)
    assert proc.returncode == 2 and "file not found" in proc.stderr

    target = tmp_path / "schedules.toml"
    target.write_text("# mine\n")
    proc = cli_here(home(tmp_path), "import-vercel", str(seed_vercel), "--write", str(target), cwd=tmp_path)
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert target.read_text() == "# mine\n"


def test_an_empty_crons_list_imports_nothing(tmp_path: Path, cli_here: CliCall) -> None:
    proc = cli_here(home(tmp_path), "import-vercel", str(write_vercel(tmp_path, {"crons": []})), cwd=tmp_path)
    assert proc.returncode == 0 and "[jobs." not in proc.stdout

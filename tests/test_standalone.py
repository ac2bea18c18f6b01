"""The repo stands on its own: no code, comment, test, doc or benchmark cites a document or
a file that lives outside it. What a reader needs is in the README and docs/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ["README.md", "pyproject.toml", "schedules.toml", ".ci", "bench", "console", "deploy",
           "docs", "jobs", "tests"]
TEXT = {".py", ".md", ".sql", ".toml", ".txt", ".json", ".tcss", ".html", ".svg", ".sh", "",
        ".service"}
OUTSIDE = [
    (re.compile(r"\bSPEC\b"), "a specification the repo does not hold"),
    (re.compile(r"/work/|\.\./shared\b"), "a path outside the repo"),
    (re.compile(r"storeflow-schema\.sql"), "a schema file the repo does not hold"),
]


def files() -> list[Path]:
    out: list[Path] = []
    for name in SCANNED:
        top = ROOT / name
        for path in [top] if top.is_file() else sorted(top.rglob("*")):
            if (path.is_file() and path.suffix in TEXT and "__pycache__" not in path.parts
                    and path != Path(__file__).resolve()):
                out.append(path)
    return out


def test_nothing_cites_what_the_repo_does_not_hold() -> None:
    found = []
    scanned = files()
    for path in scanned:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for pattern, what in OUTSIDE:
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()}")
    assert len(scanned) > 50  # the scan did see the repo
    assert found == []

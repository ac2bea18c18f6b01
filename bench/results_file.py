"""The results files in bench/ keep every run, on every day and machine: a run's report is
added after the earlier ones, never written over them."""

from __future__ import annotations

from pathlib import Path


def append(path: Path, text: str) -> None:
    earlier = path.read_text() if path.exists() else ""
    path.write_text(earlier + ("\n" if earlier.strip() else "") + text.rstrip("\n") + "\n")

"""Placeholder until the job lands."""

from __future__ import annotations

from typing import Any

from jobs.context import RunContext


def run(ctx: RunContext) -> dict[str, Any]:
    raise NotImplementedError("reminders")

"""Dates and counts in plain words for emails, logs and screens."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo


def long_date(value: datetime, tz: ZoneInfo) -> str:
    """`Saturday 5 December 2026, 00:00 UTC` in the job's timezone."""
    local = value.astimezone(tz)
    return f"{local:%A} {local.day} {local:%B %Y, %H:%M} {local.tzname()}"


def plural(n: int, word: str) -> str:
    """`1 error`, `2 errors`, `1,000 emails`."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"

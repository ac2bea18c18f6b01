"""Time helpers. The clock is read only at the edges (the CLI, the runner)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

# What reads the wall clock: `utc_now`, or a fixed or simulated time in tests and demos.
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The wall clock, for the faces only; jobs receive `now` as an argument."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def iso_z(value: datetime) -> str:
    """The seed's timestamp format: `2024-01-01T00:00:00.000Z`."""
    v = as_utc(value)
    return v.strftime("%Y-%m-%dT%H:%M:%S.") + f"{v.microsecond // 1000:03d}Z"


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with an explicit offset, for JSON output."""
    return None if value is None else as_utc(value).isoformat()


def parse_timestamp(text: str) -> datetime:
    """Parse `--now`: ISO 8601 with an offset (or `Z`); a bare date means midnight UTC."""
    raw = text.strip()
    if raw.endswith(("Z", "z")):
        raw = raw[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO 8601 time; write e.g. 2026-11-28T09:00:00Z or 2026-11-28"
        ) from None
    if len(raw) == 10:  # a bare date
        return value.replace(tzinfo=UTC)
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset; write e.g. {text}Z or {text}+00:00")
    return value.astimezone(UTC)

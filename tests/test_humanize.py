"""The shared words for times and counts (jobs.humanize): what the CLI and the console
both print. The CLI's whole text is pinned by the golden files (test_golden_output.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

import console.formatting
from jobs.humanize import ago, amount, compact, countdown, duration, number, span, stamp

NOW = datetime(2026, 11, 28, 10, 30, tzinfo=UTC)


@pytest.mark.parametrize(("seconds", "words"), [
    (0, "0s"), (45, "45s"), (65, "1m 05s"), (650, "10m 50s"), (3_600, "1h 00m"),
    (11_100, "3h 05m"), (86_400, "1d 00h"), (187_200, "2d 04h"),
])
def test_span_keeps_two_units(seconds: int, words: str) -> None:
    assert span(timedelta(seconds=seconds)) == words


def test_durations_show_tenths_under_ten_seconds() -> None:
    assert [duration(s) for s in (0.3, 2.44, 650)] == ["0.3s", "2.4s", "10m 50s"]
    assert duration(None) == "—" and duration(None, missing="-") == "-"


def test_ago_reads_both_ways() -> None:
    assert ago(NOW - timedelta(seconds=650), NOW) == "10m 50s ago"
    assert ago(NOW + timedelta(hours=13, minutes=30), NOW) == "in 13h 30m"
    assert ago(NOW - timedelta(milliseconds=300), NOW) == "just now"
    assert ago(None, NOW) == "—" and ago(None, NOW, missing="-") == "-"


def test_countdown_adds_the_seconds() -> None:
    assert countdown(NOW + timedelta(seconds=650), NOW) == "in 10m 50s"
    assert countdown(NOW + timedelta(hours=3, minutes=12, seconds=5), NOW) == "in 3h 12m 05s"
    assert countdown(NOW, NOW) == "due now"


def test_stamps_are_utc_unless_a_zone_is_given() -> None:
    moment = datetime(2026, 11, 28, 0, 0, 5, tzinfo=UTC)
    assert stamp(moment) == "2026-11-28 00:00:05"
    assert stamp(moment, zone=True) == "2026-11-28 00:00:05 UTC"
    assert stamp(moment.replace(tzinfo=None), zone=True) == "2026-11-28 00:00:05 UTC"
    assert stamp(moment, ZoneInfo("Europe/Helsinki"), zone=True) == "2026-11-28 02:00:05 EET"
    assert stamp(None) == "—" and stamp(None, zone=True, missing="-") == "-"


def test_a_summary_is_one_line_of_pairs() -> None:
    assert compact({"expired": 1, "suspended": 0}) == "expired=1 suspended=0"


def test_figures_and_money() -> None:
    assert [number(v) for v in (1234, 2411.4, True, "n/a")] == ["1,234", "2,411.40", "true", "n/a"]
    assert [amount(v) for v in (20, 2411.4, "n/a")] == ["20.00", "2,411.40", "n/a"]
    assert number(None) == amount(None) == "—" and amount(None, missing="-") == "-"


def test_the_console_uses_the_same_functions() -> None:
    """The console colours them; it has no wording of its own for times or counts."""
    for name in ("ago", "amount", "clock_time", "compact", "countdown", "duration", "item_note",
                 "number", "plural", "span", "stamp"):
        assert getattr(console.formatting, name).__module__ == "jobs.humanize", name

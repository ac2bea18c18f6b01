"""CronSchedule slots across DST changes, in the spirit of croniter's
tests/test_croniter_dst_repetition.py: fixed starts, exact expected instants.

2026 changes: Europe/London 2026-03-29 01:00 GMT -> 02:00 BST and
2026-10-25 02:00 BST -> 01:00 GMT (both at 01:00Z); America/New_York
2026-03-08 02:00 EST -> 03:00 EDT (07:00Z) and 2026-11-01 02:00 EDT -> 01:00 EST
(06:00Z).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from jobs.cron import CronError, CronSchedule

LONDON = "Europe/London"
NEW_YORK = "America/New_York"


def utc(
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    microsecond: int = 0,
) -> datetime:
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)


def slots(expression: str, tz: str, after: datetime, count: int) -> list[datetime]:
    return CronSchedule.parse(expression, tz).next_slots(after, count)


# --- Europe/London ----------------------------------------------------------


def test_london_fixed_time_in_spring_gap_fires_at_gap_end() -> None:
    # 01:30 does not exist on 2026-03-29; it fires at 02:00 BST = 01:00Z.
    assert slots("30 1 * * *", LONDON, utc(2026, 3, 28), 3) == [
        utc(2026, 3, 28, 1, 30),  # 01:30 GMT
        utc(2026, 3, 29, 1, 0),  # gap end, 02:00 BST
        utc(2026, 3, 30, 0, 30),  # 01:30 BST
    ]


def test_london_fixed_time_in_fall_fold_fires_once_in_first_copy() -> None:
    assert slots("30 1 * * *", LONDON, utc(2026, 10, 24), 3) == [
        utc(2026, 10, 24, 0, 30),  # 01:30 BST
        utc(2026, 10, 25, 0, 30),  # 01:30 BST, fold=0 only
        utc(2026, 10, 26, 1, 30),  # 01:30 GMT
    ]


def test_london_fixed_time_after_first_copy_does_not_fire_second_copy() -> None:
    # 2026-10-25 01:45 BST: the 01:30 GMT copy still to come is not a slot.
    assert slots("30 1 * * *", LONDON, utc(2026, 10, 25, 0, 45), 1) == [utc(2026, 10, 26, 1, 30)]


def test_london_fixed_time_at_gap_start_and_end_is_one_slot() -> None:
    # 01:00, 01:30 (in the gap) and 02:00 BST all land on 01:00Z.
    assert slots("0,30 1,2 * * *", LONDON, utc(2026, 3, 29), 3) == [
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 29, 1, 30),  # 02:30 BST
        utc(2026, 3, 30, 0, 0),  # 01:00 BST next day
    ]


def test_london_every_30_minutes_spring_collapses_gap() -> None:
    assert slots("*/30 * * * *", LONDON, utc(2026, 3, 29), 4) == [
        utc(2026, 3, 29, 0, 30),  # 00:30 GMT
        utc(2026, 3, 29, 1, 0),  # 01:00, 01:30 (gap) and 02:00 BST
        utc(2026, 3, 29, 1, 30),  # 02:30 BST
        utc(2026, 3, 29, 2, 0),
    ]


def test_london_every_30_minutes_fall_fires_in_both_copies() -> None:
    assert slots("*/30 * * * *", LONDON, utc(2026, 10, 24, 23), 6) == [
        utc(2026, 10, 24, 23, 30),  # 00:30 BST
        utc(2026, 10, 25, 0, 0),  # 01:00 BST
        utc(2026, 10, 25, 0, 30),  # 01:30 BST
        utc(2026, 10, 25, 1, 0),  # 01:00 GMT
        utc(2026, 10, 25, 1, 30),  # 01:30 GMT
        utc(2026, 10, 25, 2, 0),  # 02:00 GMT
    ]


def test_london_interval_starting_inside_first_copy_keeps_second_copy() -> None:
    # After 01:15 BST, the 01:00 GMT copy (wall time before 01:15) is still ahead.
    assert slots("*/30 * * * *", LONDON, utc(2026, 10, 25, 0, 15), 4) == [
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 25, 1, 0),
        utc(2026, 10, 25, 1, 30),
        utc(2026, 10, 25, 2, 0),
    ]


def test_london_interval_starting_inside_second_copy() -> None:
    assert slots("*/30 * * * *", LONDON, utc(2026, 10, 25, 1, 15), 2) == [
        utc(2026, 10, 25, 1, 30),
        utc(2026, 10, 25, 2, 0),
    ]


def test_london_hourly_spring() -> None:
    assert slots("0 * * * *", LONDON, utc(2026, 3, 28, 23, 30), 3) == [
        utc(2026, 3, 29, 0, 0),  # 00:00 GMT
        utc(2026, 3, 29, 1, 0),  # 01:00 (gap) and 02:00 BST
        utc(2026, 3, 29, 2, 0),  # 03:00 BST
    ]


def test_london_hourly_fall() -> None:
    assert slots("0 * * * *", LONDON, utc(2026, 10, 24, 22, 30), 4) == [
        utc(2026, 10, 24, 23, 0),  # 00:00 BST
        utc(2026, 10, 25, 0, 0),  # 01:00 BST
        utc(2026, 10, 25, 1, 0),  # 01:00 GMT
        utc(2026, 10, 25, 2, 0),  # 02:00 GMT
    ]


# --- America/New_York -------------------------------------------------------


def test_new_york_fixed_time_in_spring_gap_fires_at_gap_end() -> None:
    assert slots("30 2 * * *", NEW_YORK, utc(2026, 3, 7), 3) == [
        utc(2026, 3, 7, 7, 30),  # 02:30 EST
        utc(2026, 3, 8, 7, 0),  # gap end, 03:00 EDT
        utc(2026, 3, 9, 6, 30),  # 02:30 EDT
    ]


def test_new_york_fixed_time_in_fall_fold_fires_once_in_first_copy() -> None:
    assert slots("30 1 * * *", NEW_YORK, utc(2026, 10, 31), 3) == [
        utc(2026, 10, 31, 5, 30),  # 01:30 EDT
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT, fold=0 only
        utc(2026, 11, 2, 6, 30),  # 01:30 EST
    ]


def test_new_york_every_30_minutes_spring_collapses_gap() -> None:
    assert slots("*/30 * * * *", NEW_YORK, utc(2026, 3, 8, 6), 3) == [
        utc(2026, 3, 8, 6, 30),  # 01:30 EST
        utc(2026, 3, 8, 7, 0),  # 02:00, 02:30 (gap) and 03:00 EDT
        utc(2026, 3, 8, 7, 30),  # 03:30 EDT
    ]


def test_new_york_every_30_minutes_fall_fires_in_both_copies() -> None:
    assert slots("*/30 * * * *", NEW_YORK, utc(2026, 11, 1, 4), 6) == [
        utc(2026, 11, 1, 4, 30),  # 00:30 EDT
        utc(2026, 11, 1, 5, 0),  # 01:00 EDT
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT
        utc(2026, 11, 1, 6, 0),  # 01:00 EST
        utc(2026, 11, 1, 6, 30),  # 01:30 EST
        utc(2026, 11, 1, 7, 0),  # 02:00 EST
    ]


def test_new_york_hourly_spring() -> None:
    assert slots("0 * * * *", NEW_YORK, utc(2026, 3, 8, 5, 30), 3) == [
        utc(2026, 3, 8, 6, 0),  # 01:00 EST
        utc(2026, 3, 8, 7, 0),  # 02:00 (gap) and 03:00 EDT
        utc(2026, 3, 8, 8, 0),  # 04:00 EDT
    ]


def test_new_york_hourly_fall() -> None:
    assert slots("0 * * * *", NEW_YORK, utc(2026, 11, 1, 4, 30), 3) == [
        utc(2026, 11, 1, 5, 0),  # 01:00 EDT
        utc(2026, 11, 1, 6, 0),  # 01:00 EST
        utc(2026, 11, 1, 7, 0),  # 02:00 EST
    ]


# --- UTC, seconds, nicknames ------------------------------------------------


def test_utc_job_ignores_other_zones_dst() -> None:
    assert slots("0 2 * * *", "UTC", utc(2026, 3, 7, 12), 3) == [
        utc(2026, 3, 8, 2),
        utc(2026, 3, 9, 2),
        utc(2026, 3, 10, 2),
    ]


def test_default_timezone_is_utc() -> None:
    schedule = CronSchedule.parse("0 0 * * *")
    assert schedule.timezone == ZoneInfo("UTC")
    assert schedule.next_slots(utc(2026, 1, 1), 1) == [utc(2026, 1, 2)]


def test_slots_are_strictly_after_and_returned_in_utc() -> None:
    after = datetime(2026, 1, 1, 9, tzinfo=timezone(timedelta(hours=9)))  # 00:00Z
    result = slots("0 0 * * *", "UTC", after, 2)
    assert result == [utc(2026, 1, 2), utc(2026, 1, 3)]
    assert all(slot.tzinfo is UTC for slot in result)


def test_seconds_field_is_last() -> None:
    schedule = CronSchedule.parse("* * * * * */2")
    assert schedule.next_slots(utc(2026, 1, 1, 0, 0, 0, 500_000), 3) == [
        utc(2026, 1, 1, 0, 0, 2),
        utc(2026, 1, 1, 0, 0, 4),
        utc(2026, 1, 1, 0, 0, 6),
    ]


def test_seconds_in_spring_gap_collapse_to_gap_end() -> None:
    assert slots("* * * * * */20", LONDON, utc(2026, 3, 29, 0, 59, 30), 3) == [
        utc(2026, 3, 29, 0, 59, 40),
        utc(2026, 3, 29, 1, 0, 0),  # every second of the gap, and 02:00:00 BST
        utc(2026, 3, 29, 1, 0, 20),
    ]


def test_seconds_fixed_hour_in_fall_fires_first_copy_only() -> None:
    assert slots("0 1 * * * */30", LONDON, utc(2026, 10, 24, 23), 3) == [
        utc(2026, 10, 25, 0, 0, 0),
        utc(2026, 10, 25, 0, 0, 30),
        utc(2026, 10, 26, 1, 0, 0),
    ]


@pytest.mark.parametrize(
    ("nickname", "expected"),
    [
        ("@hourly", [utc(2026, 1, 1, 11), utc(2026, 1, 1, 12)]),
        ("@daily", [utc(2026, 1, 2), utc(2026, 1, 3)]),
        ("@midnight", [utc(2026, 1, 2), utc(2026, 1, 3)]),
        ("@weekly", [utc(2026, 1, 4), utc(2026, 1, 11)]),  # Sundays
        ("@monthly", [utc(2026, 2, 1), utc(2026, 3, 1)]),
        ("@yearly", [utc(2027, 1, 1), utc(2028, 1, 1)]),
        ("@annually", [utc(2027, 1, 1), utc(2028, 1, 1)]),
        ("@DAILY", [utc(2026, 1, 2), utc(2026, 1, 3)]),
    ],
)
def test_nicknames(nickname: str, expected: list[datetime]) -> None:
    assert slots(nickname, "UTC", utc(2026, 1, 1, 10, 30), 2) == expected


def test_daily_nickname_across_london_spring_change() -> None:
    assert slots("@daily", LONDON, utc(2026, 3, 28, 12), 2) == [
        utc(2026, 3, 29, 0, 0),  # 00:00 GMT
        utc(2026, 3, 29, 23, 0),  # 00:00 BST
    ]


@pytest.mark.parametrize(
    ("expression", "interval"),
    [
        ("*/30 * * * *", True),
        ("0 * * * *", True),
        ("0 */2 * * *", True),
        ("@hourly", True),
        ("* * * * * */2", True),
        ("0 0 * * *", False),
        ("30 1 * * *", False),
        ("0 1-3 * * *", False),
        ("@daily", False),
        ("0 1 * * * */30", False),
    ],
)
def test_is_interval(expression: str, interval: bool) -> None:
    assert CronSchedule.parse(expression).is_interval is interval


# --- previous_slots ---------------------------------------------------------


def test_previous_slots_window_excludes_since_and_includes_end() -> None:
    schedule = CronSchedule.parse("0 * * * *")
    assert schedule.previous_slots(utc(2026, 1, 1, 10), utc(2026, 1, 1, 7)) == [
        utc(2026, 1, 1, 8),
        utc(2026, 1, 1, 9),
        utc(2026, 1, 1, 10),
    ]


def test_previous_slots_empty_window() -> None:
    schedule = CronSchedule.parse("0 * * * *")
    assert schedule.previous_slots(utc(2026, 1, 1, 7), utc(2026, 1, 1, 7)) == []
    assert schedule.previous_slots(utc(2026, 1, 1, 7, 59), utc(2026, 1, 1, 7)) == []
    assert schedule.previous_slots(utc(2026, 1, 1, 6), utc(2026, 1, 1, 7)) == []


def test_previous_slots_across_new_york_fall_fold() -> None:
    schedule = CronSchedule.parse("0 * * * *", NEW_YORK)
    assert schedule.previous_slots(utc(2026, 11, 1, 7), utc(2026, 11, 1, 4)) == [
        utc(2026, 11, 1, 5),
        utc(2026, 11, 1, 6),
        utc(2026, 11, 1, 7),
    ]


def test_previous_slots_across_london_spring_gap_for_fixed_job() -> None:
    schedule = CronSchedule.parse("30 1 * * *", LONDON)
    assert schedule.previous_slots(utc(2026, 3, 31), utc(2026, 3, 27)) == [
        utc(2026, 3, 27, 1, 30),
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 30, 0, 30),
    ]


def test_interval_job_over_a_year_is_the_utc_half_hour_grid() -> None:
    # London's offsets are whole hours, so the spring gap (two slots lost) and
    # the autumn fold (two slots repeated) leave exactly every half hour in UTC,
    # strictly ascending and without duplicates.
    schedule = CronSchedule.parse("*/30 * * * *", LONDON)
    result = schedule.previous_slots(utc(2027, 1, 1), utc(2026, 1, 1))
    step = timedelta(minutes=30)
    assert result == [utc(2026, 1, 1) + step * n for n in range(1, 365 * 48 + 1)]


# --- describe ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "tz", "text"),
    [
        ("0 0 * * *", "UTC", "daily at 00:00 UTC"),
        ("@daily", "UTC", "daily at 00:00 UTC"),
        ("30 1 * * *", LONDON, "daily at 01:30 Europe/London"),
        ("0 2 * * 0", "UTC", "every Sunday at 02:00 UTC"),
        ("@weekly", NEW_YORK, "every Sunday at 00:00 America/New_York"),
        ("* * * * * */2", "UTC", "every 2 seconds UTC"),
        ("*/30 * * * *", LONDON, "every 30 minutes Europe/London"),
        ("@hourly", "UTC", "every hour UTC"),
        ("0 9 * * mon-fri", "UTC", "at 09:00, Monday through Friday UTC"),
    ],
)
def test_describe(expression: str, tz: str, text: str) -> None:
    assert CronSchedule.parse(expression, tz).describe() == text


# --- errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("", "has 0 fields"),
        ("garbage", "has 1 field;"),
        ("* * * *", "has 4 fields"),
        ("* * * * * * *", "has 7 fields"),
        ("60 * * * *", "minute field '60': out of range"),
        ("* 24 * * *", "hour field '24': out of range"),
        ("* * 32 * *", "day-of-month field '32': out of range"),
        ("* * * 13 *", "month field '13': out of range"),
        ("* * * * 8", "day-of-week field '8': out of range"),
        ("* * * * * 60", "second field '60': out of range"),
        ("*/0 * * * *", "minute field '*/0'"),
        ("1,,2 * * * *", "minute field '1,,2'"),
        ("@reboot", "unknown cron nickname '@reboot'"),
        ("H * * * *", "hashed or random"),
        ("R * * * *", "hashed or random"),
        ("0 0 30 2 *", "never matches a real date"),
        # Seconds first, as Quartz and Spring write them: here every second of a minute.
        ("*/5 * * * * *", "seconds field (the last here) is '*', which fires every second "
                          "of each minute it matches; with the seconds first (as Quartz "
                          "and Spring write them) it is '* * * * * */5' here"),
        ("0 */5 * * * *", "it is '*/5 * * * * 0' here"),
        ("* * * * * *", "is '*', which fires every second of each minute it matches; "
                        "write '*/1' in it for every second"),
        # Fields that are no schedule once moved: no rewrite offered.
        ("0 0 25 * * *", "each minute it matches; write '*/1' in it for every second"),
        # Other faults are named first.
        ("*/5 61 * * * *", "hour field '61': out of range"),
        ("H * * * * *", "hashed or random"),
    ],
)
def test_bad_expression_raises_cron_error(expression: str, reason: str) -> None:
    with pytest.raises(CronError) as caught:
        CronSchedule.parse(expression)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)
    assert "timezone" not in str(caught.value)


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", "../etc/passwd", "/etc/localtime"])
def test_unknown_timezone_raises_cron_error(tz: str) -> None:
    with pytest.raises(CronError, match="unknown timezone"):
        CronSchedule.parse("0 0 * * *", tz)


def test_cron_error_is_a_value_error() -> None:
    assert issubclass(CronError, ValueError)


def test_direct_construction_validates_too() -> None:
    with pytest.raises(CronError):
        CronSchedule("61 * * * *", ZoneInfo("UTC"))


def test_parse_accepts_zoneinfo_and_keeps_expression_as_written() -> None:
    schedule = CronSchedule.parse("@Daily", ZoneInfo(LONDON))
    assert schedule.expression == "@Daily"
    assert schedule.timezone is ZoneInfo(LONDON)
    assert schedule == CronSchedule.parse("@Daily", LONDON)


def test_naive_datetimes_are_rejected() -> None:
    schedule = CronSchedule.parse("0 0 * * *")
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.slots_after(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.next_slots(datetime(2026, 1, 1), 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.previous_slots(datetime(2026, 1, 2), utc(2026, 1, 1))

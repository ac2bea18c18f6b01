"""Cron schedules evaluated on a job's local wall clock, with cron's DST rules.

croniter is run over naive local datetimes, because on aware datetimes it would
apply its own DST handling, which differs from the product contract. Each
naive slot is then mapped to UTC here:

* a wall time skipped by a spring-forward gap fires once, at the end of the gap;
* a wall time repeated by a fall-back fold fires in its first occurrence only,
  unless the job is an interval job (hour field ``*`` or ``*/n``), which fires
  in both occurrences.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice, takewhile
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from jobs.humanize import plural

__all__ = ["CronError", "CronSchedule"]


class CronError(ValueError):
    """A cron expression or timezone that cannot be scheduled."""


_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_FIELD_NAMES = ("minute", "hour", "day-of-month", "month", "day-of-week", "second")
_HOUR = 1

# croniter accepts "H" only with a hash_id and silently picks a fresh random
# value per croniter instance for "R", so a job would fire at different times
# from one call to the next; neither belongs in a stored schedule.
_HASH_OR_RANDOM = re.compile(r"^[hr](\(|/|$)", re.IGNORECASE)

# What is left of croniter's messages once the expression is cut out starts
# with filler such as "is not acceptable," that says nothing specific.
_CRONITER_NOISE = re.compile(r"^\W*(is not acceptable\W*)?(is )?")

# A date croniter always accepts, used to check once that a valid expression
# can fire at all ("0 0 30 2 *" expands fine but never matches).
_PROBE_START = datetime(2000, 1, 1)


@dataclass(frozen=True)
class CronSchedule:
    expression: str
    timezone: ZoneInfo
    _fields: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Validating here as well as in parse() means a directly constructed
        # schedule cannot hold an expression that fails later in a generator.
        object.__setattr__(self, "_fields", _parse_fields(self.expression))

    @classmethod
    def parse(cls, expression: str, timezone: str | ZoneInfo = "UTC") -> CronSchedule:
        return cls(expression, _resolve_timezone(timezone))

    @property
    def is_interval(self) -> bool:
        return self._fields[_HOUR].startswith("*")

    def slots_after(self, after: datetime) -> Iterator[datetime]:
        # Checked here, not in the generator, so a naive datetime fails at the
        # call rather than at the first next().
        _require_aware(after, "after")
        return self._slots_after(after)

    def _slots_after(self, after: datetime) -> Iterator[datetime]:
        tz = self.timezone
        local = after.astimezone(tz)
        start = local.replace(tzinfo=None)
        fold_size = _fold_size(start, tz)
        if local.fold == 0 and fold_size > timedelta(0):
            # `after` lies in the first copy of a repeated hour: wall times
            # earlier than its own come round again (fold=1) after it.
            start -= fold_size

        naive_slots = croniter(self._croniter_expression, start, ret_type=datetime)
        pending: list[datetime] = []
        last = after
        while True:
            try:
                naive = naive_slots.get_next()
            except CroniterBadDateError:
                # Only reachable for schedules with decades between slots
                # past croniter's search horizon; nothing more can be produced.
                break
            instants = self._instants(naive, tz)
            # instants[0] never decreases as naive time advances, and every
            # later instant is >= it, so whatever is pending at or below it
            # can no longer be preceded by anything still to come.
            while pending and pending[0] <= instants[0]:
                slot = heapq.heappop(pending)
                if slot > last:
                    yield slot
                    last = slot
            for instant in instants:
                heapq.heappush(pending, instant)
        while pending:
            slot = heapq.heappop(pending)
            if slot > last:
                yield slot
                last = slot

    def next_slots(self, after: datetime, count: int) -> list[datetime]:
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        return list(islice(self.slots_after(after), count))

    def previous_slots(self, before_or_at: datetime, since: datetime) -> list[datetime]:
        _require_aware(before_or_at, "before_or_at")
        _require_aware(since, "since")
        if since >= before_or_at:
            return []
        return list(takewhile(lambda slot: slot <= before_or_at, self.slots_after(since)))

    def describe(self) -> str:
        # Imported here: only the human listings describe a schedule.
        from cron_descriptor import CasingTypeEnum, ExpressionDescriptor, Options

        fields = list(self._fields)
        if len(fields) == len(_FIELD_NAMES):
            # cron-descriptor reads a 6-field expression with seconds first
            # (Quartz order); croniter has them last.
            fields.insert(0, fields.pop())
        options = Options(
            CasingTypeEnum.Sentence,
            locale_code="en_US",
            use_24hour_time_format=True,
        )
        text = str(ExpressionDescriptor(" ".join(fields), options).get_description())
        return f"{_plainer(text)} {self.timezone}"

    @property
    def _croniter_expression(self) -> str:
        return " ".join(self._fields)

    def _instants(self, naive: datetime, tz: ZoneInfo) -> tuple[datetime, ...]:
        """UTC instants for one naive local slot, earliest first."""
        first = naive.replace(tzinfo=tz, fold=0)
        first_utc = first.astimezone(UTC)
        if first_utc.astimezone(tz).replace(tzinfo=None) != naive:
            return (_gap_end(naive, tz),)
        second = naive.replace(tzinfo=tz, fold=1)
        if second.utcoffset() != first.utcoffset() and self.is_interval:
            return first_utc, second.astimezone(UTC)
        return (first_utc,)


def _parse_fields(expression: str) -> tuple[str, ...]:
    if not isinstance(expression, str):
        raise CronError(f"cron expression must be a string, not {type(expression).__name__}")
    text = expression.strip()
    if text.startswith("@"):
        try:
            text = _NICKNAMES[text.lower()]
        except KeyError:
            known = ", ".join(_NICKNAMES)
            raise CronError(f"unknown cron nickname {expression!r}; use one of {known}") from None
    fields = tuple(text.split())
    if len(fields) not in (5, 6):
        raise CronError(
            f"cron expression {expression!r} has {plural(len(fields), 'field')}; "
            "expected 5 (minute hour day-of-month month day-of-week) or 6 with seconds last"
        )
    for index, value in enumerate(fields):
        if any(_HASH_OR_RANDOM.match(part) for part in value.split(",")):
            raise CronError(
                f"cron expression {expression!r}: {_FIELD_NAMES[index]} field {value!r} "
                "uses H/R hashed or random values, which are not supported"
            )
    joined = " ".join(fields)
    try:
        croniter.expand(joined)
    except CroniterError as exc:
        raise CronError(f"cron expression {expression!r}: {_explain(fields, exc)}") from None
    try:
        croniter(joined, _PROBE_START, ret_type=datetime).get_next()
    except CroniterBadDateError:
        raise CronError(f"cron expression {expression!r} never matches a real date") from None
    if len(fields) == 6 and fields[5] == "*":
        raise CronError(f"cron expression {expression!r}: {_every_second(fields)}")
    return fields


def _every_second(fields: tuple[str, ...]) -> str:
    """Why a last (seconds) field of `*` is refused. Quartz and Spring put the seconds
    first: their "*/5 * * * * *" (every 5 s) is here every second of every fifth minute,
    sixty runs in a row. The same fields with the first moved last are offered when they
    make a schedule here."""
    why = ("the seconds field (the last here) is '*', which fires every second of each "
           "minute it matches")
    moved = " ".join((*fields[1:], fields[0]))
    if fields[0] != "*":
        try:
            _parse_fields(moved)
        except CronError:
            pass
        else:
            why += (f"; with the seconds first (as Quartz and Spring write them) it is "
                    f"{moved!r} here")
    return why + "; write '*/1' in it for every second"


def _explain(fields: tuple[str, ...], exc: CroniterError) -> str:
    """One-line reason, naming the offending field when it fails on its own."""
    for index, value in enumerate(fields):
        alone = ["*"] * len(fields)
        alone[index] = value
        probe = " ".join(alone)
        try:
            croniter.expand(probe)
        except CroniterError as field_exc:
            return f"{_FIELD_NAMES[index]} field {value!r}: {_reason(field_exc, probe)}"
    return _reason(exc, " ".join(fields))


def _reason(exc: CroniterError, probe: str) -> str:
    # croniter wraps some errors with a full traceback (its last line says
    # it), and repeats the expression, which the caller already has, in
    # most messages.
    lines = str(exc).strip().splitlines() or [""]
    reason = lines[-1].split(" Cron:")[0].replace(f"[{probe}]", "").replace(probe, "")
    reason = _CRONITER_NOISE.sub("", " ".join(reason.split())).strip(" .,")
    return reason or "not a valid value"


def _resolve_timezone(timezone: str | ZoneInfo) -> ZoneInfo:
    if isinstance(timezone, ZoneInfo):
        return timezone
    if not isinstance(timezone, str):
        raise CronError(f"timezone must be a name or ZoneInfo, not {type(timezone).__name__}")
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        # ValueError covers keys zoneinfo refuses outright, e.g. absolute paths.
        raise CronError(f"unknown timezone {timezone!r}") from None


def _require_aware(moment: datetime, name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {moment.isoformat()}")


def _fold_size(naive: datetime, tz: ZoneInfo) -> timedelta:
    """How far the clock went back if `naive` is a repeated wall time, else <= 0."""
    first = naive.replace(tzinfo=tz, fold=0).utcoffset()
    second = naive.replace(tzinfo=tz, fold=1).utcoffset()
    assert first is not None and second is not None  # ZoneInfo always has an offset
    return first - second


def _gap_end(naive: datetime, tz: ZoneInfo) -> datetime:
    """The transition instant of the spring-forward gap containing `naive`."""
    # In a gap, fold=1 reads the wall time with the new offset, which lands
    # before the transition, and fold=0 with the old one, which lands after it.
    # tzdata transitions fall on whole seconds, so a binary search over whole
    # seconds finds the first instant carrying the new offset.
    before = int(naive.replace(tzinfo=tz, fold=1).timestamp())
    after = int(naive.replace(tzinfo=tz, fold=0).timestamp())
    new_offset = datetime.fromtimestamp(after, tz).utcoffset()
    while after - before > 1:
        middle = (before + after) // 2
        if datetime.fromtimestamp(middle, tz).utcoffset() == new_offset:
            after = middle
        else:
            before = middle
    return datetime.fromtimestamp(after, UTC)


_AT_TIME = re.compile(r"^At (\d\d:\d\d)$")
_AT_TIME_ON_DAY = re.compile(r"^At (\d\d:\d\d), only on (\w+)$")


def _plainer(text: str) -> str:
    # cron-descriptor leaves "every day" implicit ("At 00:00") and puts a
    # single weekday last; these two shapes are the common ones and read
    # better said the way people say them.
    if match := _AT_TIME.match(text):
        return f"daily at {match[1]}"
    if match := _AT_TIME_ON_DAY.match(text):
        return f"every {match[2]} at {match[1]}"
    return text[:1].lower() + text[1:]

"""Every job's slots over a coming window (the next 24 h or 7 days), in each job's
timezone and in UTC, with the daylight-saving changes that fall in it: for the console's
timeline view.

The slots come from the same cron code the runner fires (jobs.cron), on the live
runners' schedules (jobs.runner_schedules.live_schedules), so what is shown is what will
fire; a paused or disabled job's slots are listed as slots that will not fire.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice, takewhile
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Engine

from jobs.overview import ScheduleState, schedule_state
from jobs.runner_schedules import JobSchedule, ScheduleSource, live_schedules
from jobs.runs import job_states
from jobs.settings import JOB_IDS, Settings

WINDOWS = (timedelta(hours=24), timedelta(days=7))
MAX_SLOTS = 200  # per job and window: an every-2-seconds job has 43,200 a day


@dataclass(frozen=True)
class ClockChange:
    """A zone's offset changing at `at` (UTC): daylight saving starts or ends."""

    timezone: str
    at: datetime
    before: timedelta
    after: timedelta
    before_name: str  # CEST
    after_name: str  # CET

    @property
    def wall_clocks(self) -> str:
        """`03:00 CEST → 02:00 CET`: the local time before and after the change."""
        tz = ZoneInfo(self.timezone)
        new = self.at.astimezone(tz)
        old = (new - (self.after - self.before)).replace(tzinfo=None)
        return f"{old:%H:%M} {self.before_name} → {new:%H:%M} {self.after_name}"

    @property
    def describe(self) -> str:
        """`clocks go back 1 h`, `clocks go forward 30 min`."""
        shift = self.after - self.before
        minutes = abs(int(shift.total_seconds())) // 60
        amount = f"{minutes / 60:g} h" if minutes >= 60 else f"{minutes} min"
        return f"clocks go {'back' if shift < timedelta(0) else 'forward'} {amount}"


@dataclass(frozen=True)
class Slot:
    job_id: str
    at: datetime  # UTC
    local: datetime  # in the job's zone (its tzname says CET or CEST)
    change: ClockChange | None = None  # the first slot after a change of its zone's offset

    @property
    def in_skipped_hour(self) -> bool:
        """Due in the hour the clocks skipped: cron fires it as they change."""
        return (self.change is not None and self.change.at == self.at
                and self.change.after > self.change.before)


@dataclass(frozen=True)
class JobTimeline:
    job_id: str
    schedule: JobSchedule
    state: ScheduleState
    slots: tuple[Slot, ...]
    more: bool  # the window holds more than MAX_SLOTS slots

    @property
    def fires(self) -> bool:
        return self.state == "active"


@dataclass(frozen=True)
class Timeline:
    start: datetime
    end: datetime
    jobs: tuple[JobTimeline, ...]
    changes: tuple[ClockChange, ...]  # in every zone a job uses, in time order
    source: ScheduleSource  # `runner`: the live runners' schedules; `local`: this config's

    def slots(self) -> list[Slot]:
        """Every job's slots in time order (ties in job order)."""
        order = {j.job_id: i for i, j in enumerate(self.jobs)}
        return sorted((s for j in self.jobs for s in j.slots),
                      key=lambda s: (s.at, order[s.job_id]))


def clock_changes(tz: ZoneInfo, start: datetime, end: datetime) -> list[ClockChange]:
    """The offset changes of `tz` in (start, end], each to the second."""
    found: list[ClockChange] = []
    step = timedelta(hours=1)
    t = start
    offset = start.astimezone(tz).utcoffset()
    while t < end:
        nxt = min(t + step, end)
        new = nxt.astimezone(tz).utcoffset()
        if new != offset:
            lo, hi = int(t.timestamp()), int(nxt.timestamp())
            while hi - lo > 1:  # transitions fall on whole seconds
                mid = (lo + hi) // 2
                if datetime.fromtimestamp(mid, tz).utcoffset() == new:
                    hi = mid
                else:
                    lo = mid
            at = datetime.fromtimestamp(hi, UTC)
            before_local = datetime.fromtimestamp(lo, tz)
            after_local = at.astimezone(tz)
            assert offset is not None and new is not None
            found.append(ClockChange(tz.key, at, offset, new, before_local.tzname() or "",
                                     after_local.tzname() or ""))
            offset = new
        t = nxt
    return found


def build_timeline(schedules: Mapping[str, JobSchedule], states: Mapping[str, ScheduleState],
                   now: datetime, window: timedelta,
                   source: ScheduleSource = "local") -> Timeline:
    end = now + window
    zones = {s.schedule.timezone.key: s.schedule.timezone for s in schedules.values()}
    changes = sorted((c for tz in zones.values() for c in clock_changes(tz, now, end)),
                     key=lambda c: (c.at, c.timezone))
    jobs: list[JobTimeline] = []
    for job_id in JOB_IDS:
        sched = schedules[job_id]
        tz = sched.schedule.timezone
        zone_changes = [c for c in changes if c.timezone == tz.key]
        taken = list(islice(takewhile(lambda s: s <= end, sched.schedule.slots_after(now)),
                            MAX_SLOTS + 1))
        slots: list[Slot] = []
        previous = now
        for at in taken[:MAX_SLOTS]:
            change = next((c for c in zone_changes if previous < c.at <= at), None)
            slots.append(Slot(job_id, at, at.astimezone(tz), change))
            previous = at
        jobs.append(JobTimeline(job_id, sched, states[job_id], tuple(slots),
                                len(taken) > MAX_SLOTS))
    return Timeline(now, end, tuple(jobs), tuple(changes), source)


def load_timeline(engine: Engine, settings: Settings, now: datetime,
                  window: timedelta) -> Timeline:
    """The timeline on the live runners' schedules (this configuration's when none is
    alive), with each job paused or not as the database says. `now` is the real time:
    it also decides which runners are alive."""
    schedules = live_schedules(engine, settings, now)
    paused = job_states(engine)
    states = {job_id: schedule_state(schedules.job(job_id).enabled, paused[job_id].paused)
              for job_id in JOB_IDS}
    return build_timeline({j: schedules.job(j) for j in JOB_IDS}, states, now, window,
                          schedules.source)


__all__ = ["WINDOWS", "ClockChange", "JobTimeline", "Slot", "Timeline", "build_timeline",
           "clock_changes", "load_timeline"]

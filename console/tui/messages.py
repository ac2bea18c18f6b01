"""Messages the console's workers post back to the UI, named as things that happened."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from textual.message import Message

from jobs.alerts import AlertRecord
from jobs.analytics import DayValue
from jobs.analytics_day import AnalyticsDay, Verification
from jobs.audit import AuditAction
from jobs.outbox import OutboxPage
from jobs.overview import Overview
from jobs.problems import Problem, ProblemGroup
from jobs.records import ItemResult, Progress, RunRecord, RunReport
from jobs.tenants import TenantRef
from jobs.timeline import Timeline


class Connected(Message):
    """The database answered and its ops_ tables are current."""


class ConnectionFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class JobsRefreshed(Message):
    def __init__(self, overview: Overview) -> None:
        super().__init__()
        self.overview = overview


class RefreshFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


@dataclass(frozen=True)
class RunPurpose:
    """Why the console started a run, so its end can open the right thing."""

    job_id: str
    dry_run: bool
    label: str  # what the progress line says, e.g. "Running expiry-checker"
    open_result: bool = True  # open the run detail (or the preview) when it ends
    audit_as: AuditAction = AuditAction.TRIGGER  # what the audit calls it (a recompute...)


class RunStarted(Message):
    def __init__(self, purpose: RunPurpose, run_id: int | None) -> None:
        super().__init__()
        self.purpose = purpose
        self.run_id = run_id


class RunProgressed(Message):
    """Posted for every item a job reports; a newer one replaces an older one still queued,
    so a job with 10,000 tenants cannot flood the UI."""

    def __init__(self, purpose: RunPurpose, progress: Progress) -> None:
        super().__init__()
        self.purpose = purpose
        self.progress = progress

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunProgressed) and message.purpose == self.purpose


class RunFinished(Message):
    def __init__(self, purpose: RunPurpose, report: RunReport) -> None:
        super().__init__()
        self.purpose = purpose
        self.report = report


class RunEnded(Message):
    """The run worker stopped, whatever happened (finished, refused, failed to start)."""

    def __init__(self, purpose: RunPurpose) -> None:
        super().__init__()
        self.purpose = purpose


class HistoryLoaded(Message):
    def __init__(self, records: Sequence[RunRecord], append: bool, complete: bool) -> None:
        super().__init__()
        self.records = records
        self.append = append
        self.complete = complete  # no older runs left to page in


class RunLoaded(Message):
    def __init__(self, record: RunRecord | None) -> None:
        super().__init__()
        self.record = record


class ItemsLoaded(Message):
    def __init__(self, items: Sequence[ItemResult], offset: int, complete: bool,
                 generation: int) -> None:
        super().__init__()
        self.items = items
        self.offset = offset
        self.complete = complete
        self.generation = generation  # which filter they answer; older answers are dropped


class TenantsFound(Message):
    def __init__(self, query: str, tenants: Sequence[TenantRef]) -> None:
        super().__init__()
        self.query = query
        self.tenants = tenants


class AnalyticsLoaded(Message):
    def __init__(self, tenant: TenantRef, days: Sequence[DayValue]) -> None:
        super().__init__()
        self.tenant = tenant
        self.days = days


class EmailsRetried(Message):
    def __init__(self, ids: Sequence[int], changed: int) -> None:
        super().__init__()
        self.ids = ids
        self.changed = changed


class AlertsLoaded(Message):
    def __init__(self, records: Sequence[AlertRecord]) -> None:
        super().__init__()
        self.records = records


class TestAlertSent(Message):
    def __init__(self, outcomes: Sequence[tuple[str, str, str | None]]) -> None:
        super().__init__()
        self.outcomes = outcomes  # per target: label, status (sent | dead), error


class DayLoaded(Message):
    """Every tenant's cached value for one day (the analytics day view)."""

    def __init__(self, day: AnalyticsDay) -> None:
        super().__init__()
        self.day = day


class DayTtlsRead(Message):
    """The TTLs left on the values of the day view's rows on screen (by tenant id; a
    tenant whose value has gone since is absent)."""

    def __init__(self, day: date, ttls: dict[str, int | None]) -> None:
        super().__init__()
        self.day = day
        self.ttls = ttls


class DayVerified(Message):
    def __init__(self, result: Verification) -> None:
        super().__init__()
        self.result = result


class OutboxPageLoaded(Message):
    """A page of an outbox search; `after` is the key it started below (None: the first)."""

    def __init__(self, page: OutboxPage, after: int | None, generation: int,
                 counts: dict[str, int]) -> None:
        super().__init__()
        self.page = page
        self.after = after
        self.generation = generation  # which search it answers; older answers are dropped
        self.counts = counts


class ProblemsLoaded(Message):
    def __init__(self, groups: Sequence[ProblemGroup], generation: int) -> None:
        super().__init__()
        self.groups = groups
        self.generation = generation


class ProblemLinesLoaded(Message):
    def __init__(self, group: ProblemGroup, lines: Sequence[Problem], generation: int) -> None:
        super().__init__()
        self.group = group
        self.lines = lines
        self.generation = generation


class TimelineLoaded(Message):
    def __init__(self, timeline: Timeline) -> None:
        super().__init__()
        self.timeline = timeline

"""`storeflow-ops run`: the headless runner, which is the scheduler.

One asyncio loop sleeps until the earliest next slot of any enabled job (or the next
maintenance tick), claims the slots that are due and hands each claimed run to a worker
thread, so the loop keeps sleeping and serving while jobs run. Every runner computes the
same slots and claims them through `jobs.runs.claim_slot`; the unique (job, slot,
attempt) row makes each slot run exactly once however many runners share the database.

SIGHUP reloads the configuration (`SlotRunner.reload`, from the loop: the handler only
sets a flag), and under systemd the loop reports through `console.sd_notify` (READY,
WATCHDOG, RELOADING, STOPPING).

The decisions (which slots fire, which are missed, which interrupted runs are retried)
are pure and live in `jobs.slots`; `SlotRunner` applies them to the database and can
be driven synchronously with an injected clock; `serve` is the loop around it.

Contract with the HTTP face (console/http.py), which runs on the same loop::

    handle = await console.http.start_http(state, host, port)   # state: RunnerState
    ...
    await handle.cleanup()                                      # on shutdown

`RunnerState` gives the face what it needs and nothing it could break:

- `engine`, `settings`: the runner's database and settings. A reload (SIGHUP) replaces
  `settings` whole, between two passes of the loop: read `state.settings` when a request
  needs it rather than keeping a copy (`[runner]` and the environment never change);
- `runner_id`: this process's ops_runners id; pass it as `runner_id=` to `runs.execute`
  so an HTTP run is recovered by another runner if this process dies;
- `started_by`: `runner@host` (HTTP runs record the client address instead);
- `in_flight`: run id -> job id of every run this process is executing. The orphan sweep
  interrupts this runner's `running` runs that are not in it, so a face that starts a run
  registers it from `runs.execute(on_created=...)` (called before the run's row commits)
  and removes it once `execute` has returned or raised, in the thread that ran it;
- `stop`: a threading.Event set on SIGTERM/SIGINT; pass it as `stop=` to `runs.execute`
  (the job stops between two tenants) and refuse new triggers once it is set;
- `clock`: the wall clock (UTC), the one time source of this process;
- `alive` (bool) and `health()` (a JSON-ready dict) for `/healthz`'s details, and
  `last_loop_at`: `/healthz` is 503 once the loop has not ticked for
  `[runner] health_tick_age` seconds (the loop wakes at least twice in that time);
- `ping(job_id, kind, run_id)`: queue the job's dead-man ping (`start` when a real run
  has started, then `success` or `fail`); returns at once, a no-op without `ping_url`.

`start_http` may raise an OpsError (bad token, port in use): the runner then stops and
exits with that error's code. `run --metrics` serves the same face with
`metrics_only=True`: /metrics and /healthz alone, no token.

The face logs through the standard `logging` module, not through `RunnerState.log`: to
`storeflow.http`, `storeflow.http.access` (one `http-request` event per request; /healthz
at debug level, so not written) and `storeflow.http.server` (aiohttp's own errors).
`console.runlog.install` sends every record of the process into the runner's RunLog, so
they are lines in the runner's format (the face's messages as `log` events), and the
face's filter on those three loggers keeps the token out of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, ParamSpec, Protocol, TypeVar

from sqlalchemy.engine import Engine

from console.context import CliContext
from console.runlog import Level, RunLog, install
from console.sd_notify import Notifier
from jobs import alerts, retention, sender
from jobs.config_diff import ConfigChanges, diff_settings
from jobs.errors import ConfigError, OpsError
from jobs.humanize import plural
from jobs.pings import Pinger, PingKind, outcome
from jobs.presence import Presence
from jobs.records import ClaimStatus, RunnerKind, RunReport, RunStatus, Trigger
from jobs.redaction import redact
from jobs.runner_schedules import record_reload, record_schedules
from jobs.runs import (
    abandon_run,
    claim_slot,
    execute,
    get_run,
    job_states,
    newest_slots,
    note_schedules,
    record_missed,
    recover_stale_runs,
    release_orphaned_runs,
    retry_candidates,
    skipped_behind,
)
from jobs.sender import check_mail_settings
from jobs.settings import Overrides, Settings, load_settings
from jobs.slots import JobFacts, Scheduler, SlotPlan, retry_at, retry_refusal
from jobs.timeutil import Clock, utc_now

P = ParamSpec("P")
T = TypeVar("T")

ERROR_BACKOFF_MAX = 30.0  # seconds between attempts while the database is down
# Sections a reload reads but does not apply: the heartbeat and the alert deliverer are
# set up once, at start. A change to them is logged as needing a restart.
RESTART_SECTIONS = ("runner", "alerts")

# How often a runner asks whether history is due for pruning; the prune lease makes the
# pruning itself hourly between all the runners sharing the database.
PRUNE_CHECK = timedelta(minutes=5)
# How soon a retry that found its job's lock held asks again (sooner when a run of this
# runner ends: that may have been the holder).
RETRY_LOCK_POLL = timedelta(seconds=2)
# A finished run's log level: failed is an error; partial, interrupted and the rest warn.
_FINISHED_LEVELS: dict[RunStatus, Level] = {RunStatus.SUCCEEDED: "info", RunStatus.FAILED: "error",
                                            RunStatus.TIMED_OUT: "error"}


# --- what the faces share ----------------------------------------------------------------------


class ReloadRequest:
    """Set by SIGHUP, taken by the loop: the signal handler does nothing else."""

    def __init__(self) -> None:
        self.wanted = False

    def ask(self) -> None:
        self.wanted = True

    def take(self) -> bool:
        wanted, self.wanted = self.wanted, False
        return wanted


@dataclass
class RunnerState:
    """The running runner, as the HTTP face and the loop see it (see the module docstring)."""

    engine: Engine
    settings: Settings
    runner_id: str
    started_by: str
    log: RunLog
    clock: Clock = utc_now
    stop: threading.Event = field(default_factory=threading.Event)
    started_at: datetime = field(default_factory=utc_now)
    presence: Presence | None = None
    in_flight: dict[int, str] = field(default_factory=dict)  # run_id -> job_id
    last_loop_at: datetime | None = None
    next_wake: datetime | None = None
    pinger: Pinger | None = None
    notifier: Notifier = field(default_factory=lambda: Notifier(None))
    reload: ReloadRequest = field(default_factory=ReloadRequest)
    # Reads the configuration again as the runner first read it (same flags, same
    # environment); None: this runner cannot reload.
    load_settings: Callable[[], Settings] | None = None

    @property
    def alive(self) -> bool:
        """Not stopping, and the last heartbeat reached the database."""
        heartbeat_ok = self.presence is None or self.presence.last_error is None
        return not self.stop.is_set() and heartbeat_ok

    def ping(self, job_id: str, kind: PingKind, run_id: int | None = None) -> None:
        job = self.settings.jobs.get(job_id)
        if self.pinger is not None and job is not None:
            self.pinger.ping(job_id, job.ping_url, kind, run_id)

    def health(self) -> dict[str, Any]:
        from jobs.timeutil import iso

        return {
            "alive": self.alive,
            "runner_id": self.runner_id,
            "started_at": iso(self.started_at),
            "stopping": self.stop.is_set(),
            "heartbeat_error": None if self.presence is None else self.presence.last_error,
            "last_loop_at": iso(self.last_loop_at),
            "next_wake": iso(self.next_wake),
            "running": [{"run_id": r, "job": j} for r, j in sorted(self.in_flight.copy().items())],
        }


class HttpHandle(Protocol):
    async def cleanup(self) -> None: ...


@dataclass(frozen=True)
class ClaimedRun:
    """A run this runner claimed and must execute."""

    run_id: int
    job_id: str
    slot: datetime
    attempt: int = 1


@dataclass(frozen=True)
class Tick:
    claims: list[ClaimedRun]
    errors: int = 0


# --- the synchronous core ----------------------------------------------------------------------


class SlotRunner:
    """Applies the scheduler's decisions to the database. Synchronous, clock injected."""

    def __init__(self, state: RunnerState, scheduler: Scheduler | None = None) -> None:
        self.state = state
        self.scheduler = scheduler or Scheduler(state.settings.jobs, state.started_at)
        self._settled: set[int] = set()  # ended runs whose retry is decided (none, or refused)
        # When the earliest known retry is due (the loop wakes then); dues this runner's
        # own runs planned since the last look at the database.
        self._retry_lock = threading.Lock()
        self._retry_wake: datetime | None = None
        self._planned: list[datetime] = []
        self._waiting: set[int] = set()  # ended runs whose retry waits for the job's lock
        self.wake: Callable[[], None] = lambda: None  # the loop's: a retry was planned

    @property
    def retry_wake(self) -> datetime | None:
        with self._retry_lock:
            return self._retry_wake

    def _note_retries(self, dues: list[datetime], now: datetime | None = None) -> None:
        """Merge retry due times into the wake-up time; with `now`, `dues` is the whole
        list read from the database at `now` (planned dues up to then are in it)."""
        with self._retry_lock:
            if now is not None:
                self._planned = [d for d in self._planned if d > now]
            else:
                self._planned += dues
            self._retry_wake = min([*dues, *self._planned], default=None)

    @property
    def log(self) -> RunLog:
        return self.state.log

    def facts(self) -> dict[str, JobFacts]:
        """Each job's newest handled slot and pause state, in two queries."""
        last = newest_slots(self.state.engine)
        states = job_states(self.state.engine)
        return {
            job_id: JobFacts(last.get(job_id), st.paused if st else False,
                             st.counts_from if st else None)
            for job_id in self.state.settings.jobs
            for st in [states.get(job_id)]
        }

    def tick(self, now: datetime, *, all_jobs: bool = False, recover: bool = True) -> Tick:
        """Decide and claim the slots due at `now` (every job's, with all_jobs: at start-up,
        which is when missed slots are found). `recover=False`: the caller has just run
        `recover` (the maintenance tick of the same loop pass), so it is not run twice."""
        job_ids = self.scheduler.job_ids if all_jobs else self.scheduler.due(now)
        if not job_ids:
            return Tick([])
        # Stale runs first: their retry must not lose the job's lock to a newer slot.
        claims = self.recover(now) if recover else []
        facts = self.facts()
        errors = 0
        for job_id in job_ids:
            try:
                if facts[job_id].paused and not all_jobs:
                    self.log.info("slot-paused", job=job_id, slot=self.scheduler.next_slot(job_id))
                plan = self.scheduler.plan(job_id, facts[job_id], now)
                claimed = self._apply(plan, now)
            except OpsError as exc:
                errors += 1
                self.log.error("tick-failed", job=job_id, error=exc.message)
                continue
            self.scheduler.advance(job_id, plan.through)
            if claimed is not None:
                claims.append(claimed)
        self._hold(claims)
        return Tick(claims, errors)

    def _hold(self, claims: list[ClaimedRun]) -> None:
        # In flight from the claim on, not from when a worker thread starts: the orphan
        # sweep must never take a claimed run that is about to start for abandoned.
        for c in claims:
            self.state.in_flight[c.run_id] = c.job_id

    def _apply(self, plan: SlotPlan, now: datetime) -> ClaimedRun | None:
        st, job = self.state, self.state.settings.job(plan.job_id)
        if plan.missed:
            self._record_missed(plan.job_id, list(plan.missed), now,
                                "no runner fired it in time; only the most recent missed "
                                "slot fires")
        if plan.too_late is not None:
            self._record_missed(plan.job_id, [plan.too_late], now,
                                f"no runner fired it within misfire_grace "
                                f"({job.misfire_grace})")
        if plan.dropped:
            self.log.warning("missed-not-recorded", job=plan.job_id,
                             count=plan.dropped if plan.dropped_exact else f">={plan.dropped}",
                             reason=f"only the newest {self.scheduler.cap} missed slots "
                                    "are recorded")
        if plan.fire is None:
            return None
        claim = claim_slot(st.engine, st.settings, plan.job_id, plan.fire,
                           runner_id=st.runner_id, started_by=st.started_by, clock=st.clock)
        late = (st.clock() - plan.fire).total_seconds()
        if claim.status is ClaimStatus.CLAIMED:
            assert claim.run_id is not None
            self.log.info("slot-claimed", job=plan.job_id, slot=plan.fire, run_id=claim.run_id,
                          late_s=round(late, 3))
            return ClaimedRun(claim.run_id, plan.job_id, plan.fire)
        if claim.status is ClaimStatus.SKIPPED:
            self.log.info("slot-skipped", job=plan.job_id, slot=plan.fire,
                          reason=f"run {claim.holder_run_id} is still running "
                                 "(concurrency = forbid)")
        else:
            self.log.info("slot-taken", job=plan.job_id, slot=plan.fire,
                          reason="another runner claimed it")
        return None

    def _record_missed(self, job_id: str, slots: list[datetime], now: datetime,
                       reason: str) -> None:
        st = self.state
        n = record_missed(st.engine, job_id, slots, runner_id=st.runner_id,
                          started_by=st.started_by, clock=st.clock, reason=reason,
                          settings=st.settings)
        if n:
            self.log.warning("slots-missed", job=job_id, count=n, first=slots[0],
                             last=slots[-1], reason=reason)

    def recover(self, now: datetime) -> list[ClaimedRun]:
        """Interrupt the runs of runners that stopped heartbeating and this runner's own
        orphans; claim the retries that are due (`jobs.slots.retry_at`: a slot's first
        interruption, and with `retries` a failed, timed-out or interrupted attempt after
        its backoff) and still wanted. The unique (job, slot, attempt) makes each attempt
        run once, whichever runner claims it."""
        st = self.state
        for run in recover_stale_runs(st.engine, now, st.settings.runner.stale_after,
                                      spare=st.runner_id, settings=st.settings):
            self.log.warning("run-interrupted", job=run.job_id, run_id=run.run_id,
                             slot=run.scheduled_for, attempt=run.attempt,
                             reason="its runner stopped heartbeating")
        # The registry itself, not a snapshot: a run the HTTP face starts while the sweep
        # reads is registered before its row can be read (see release_orphaned_runs).
        for run_id in release_orphaned_runs(st.engine, st.runner_id, st.in_flight, now,
                                            st.settings):
            self.log.warning("run-interrupted", run_id=run_id,
                             reason="its worker ended without recording an outcome")
        # Endings of the last day: a bounded look-back, wide enough for a fleet that was
        # down overnight (recover_stale_runs stamps the ones it finds with `now`).
        candidates = retry_candidates(st.engine, st.settings,
                                      min(st.started_at, now) - timedelta(days=1))
        facts = self.facts() if candidates else {}
        claims: list[ClaimedRun] = []
        pending: list[datetime] = []
        for run in candidates:
            job = st.settings.jobs.get(run.job_id)
            if run.run_id in self._settled or job is None or run.scheduled_for is None:
                continue
            due = retry_at(run, job)
            if due is None:  # final when it ended, and judged so then
                self._settled.add(run.run_id)
                continue
            if due > now:
                pending.append(due)
                continue
            attempt = run.attempt + 1
            refusal = retry_refusal(run, job, facts.get(run.job_id, JobFacts()), now)
            if refusal is not None:
                self.log.info("retry-not-wanted", job=run.job_id, slot=run.scheduled_for,
                              attempt=attempt, run_id=run.run_id, reason=refusal)
                # Not asked again on every tick: the slot keeps the outcome it has.
                self._settled.add(run.run_id)
                self._waiting.discard(run.run_id)
                alerts.run_ended(st.engine, st.settings, run.run_id, retry_left=False, now=now)
                continue
            claim = claim_slot(st.engine, st.settings, run.job_id, run.scheduled_for,
                               runner_id=st.runner_id, started_by=st.started_by,
                               clock=st.clock, attempt=attempt, wait_for_lock=True)
            if claim.status is ClaimStatus.BUSY:
                # Another run of the job holds its lock (a newer slot, or a dead run not yet
                # stale): the retry waits for it rather than ending `skipped`, which would
                # lose the slot's work.
                if run.run_id not in self._waiting:
                    self._waiting.add(run.run_id)
                    self.log.info("retry-waiting", job=run.job_id, slot=run.scheduled_for,
                                  attempt=attempt, reason=f"run {claim.holder_run_id} holds "
                                  "the job's lock (concurrency = forbid)")
                pending.append(now + RETRY_LOCK_POLL)
                continue
            self._waiting.discard(run.run_id)
            if claim.status is ClaimStatus.CLAIMED:
                assert claim.run_id is not None
                self.log.info("retry-claimed", job=run.job_id, slot=run.scheduled_for,
                              run_id=claim.run_id, attempt=attempt, retried_run=run.run_id,
                              retried_status=str(run.status))
                claims.append(ClaimedRun(claim.run_id, run.job_id, run.scheduled_for, attempt))
            else:
                self.log.info(f"retry-{claim.status}", job=run.job_id, slot=run.scheduled_for,
                              attempt=attempt)
        self._note_retries(pending, now)
        self._hold(claims)
        return claims

    def maintain(self, now: datetime) -> list[ClaimedRun]:
        """The periodic tick: recover stale runs, retry their slots, look for overdue jobs."""
        claims = self.recover(now)
        try:
            for job_id in alerts.check_overdue(self.state.engine, self.state.settings, now):
                self.log.warning("job-overdue", job=job_id)
        except Exception as exc:  # alerting must not stop the maintenance pass
            reason = exc.message if isinstance(exc, OpsError) else f"{type(exc).__name__}: {exc}"
            self.log.error("overdue-check-failed", error=reason)
        return claims

    def reload(self, now: datetime) -> ConfigChanges | None:
        """Read the configuration again; apply it from the next slot if it is valid.

        A bad file is refused with one line naming the file, the key and the reason, and
        the configuration in force stays. A good one is recorded (the schedules the faces
        show, each changed schedule counted from `now`, the audit entry) before it is
        applied, so what is on record is what runs. Returns the changes, or None when
        nothing was applied. Never raises: the loop must outlive a bad file.
        """
        st = self.state
        if st.load_settings is None:
            return None
        old = st.settings
        try:
            new = st.load_settings()
        except ConfigError as exc:
            self.log.error("reload-refused", file=exc.source, key=exc.key or None,
                           reason=exc.reason, kept=old.source)
            return None
        except Exception as exc:  # whatever it is, the configuration in force stays
            reason = exc.message if isinstance(exc, OpsError) else f"{type(exc).__name__}: {exc}"
            self.log.error("reload-refused", file=old.source, key=None, reason=reason,
                           kept=old.source)
            return None
        changes = diff_settings(old, new)
        restart = [name for name in changes.sections if name in RESTART_SECTIONS]
        new = replace(new, **{name: getattr(old, name) for name in RESTART_SECTIONS})
        detail = f"{new.source}: {changes.describe()}"
        if restart:
            detail += f" (needs a restart: {', '.join(f'[{n}]' for n in restart)})"
        try:
            record_reload(st.engine, st.runner_id, new, now, detail=detail)
        except Exception as exc:  # not applied: what runs must be what is on record
            reason = exc.message if isinstance(exc, OpsError) else f"{type(exc).__name__}: {exc}"
            self.log.error("reload-failed", file=new.source, error=reason, kept=old.source)
            return None
        self.scheduler = self._rescheduled(new, changes, now)
        st.settings = new
        if st.pinger is None and any(j.ping_url for j in new.jobs.values()):
            st.pinger = Pinger()
        self.log.event(
            "config-reloaded", "warning" if restart else "info", file=new.source,
            changed=changes.jobs, sections=list(changes.sections), detail=changes.describe(),
            jobs={j: f"{c.schedule.expression} {c.timezone}"
                  for j, c in self.scheduler.jobs.items()},
            restart_needed=restart or None,
        )
        return changes

    def _rescheduled(self, new: Settings, changes: ConfigChanges, now: datetime) -> Scheduler:
        """A scheduler for the new configuration that carries each job's cursor over. A job
        whose schedule changed, or that was just enabled, counts from `now`: the slots its
        new schedule would have had before are nobody's misfires."""
        old = self.scheduler
        fresh = Scheduler(new.jobs, old.started_at, old.cap)
        for job_id in fresh.job_ids:
            cursor = old.cursor(job_id)
            if changes.schedule_changed(job_id) or changes.enabled_now(job_id):
                cursor = now if cursor is None else max(cursor, now)
            if cursor is not None:
                fresh.advance(job_id, cursor)
        return fresh

    def run(self, claimed: ClaimedRun) -> RunReport | None:
        """Execute a claimed run through the one run path; never raises."""
        st = self.state
        st.in_flight[claimed.run_id] = claimed.job_id
        self.log.info("run-started", job=claimed.job_id, run_id=claimed.run_id,
                      slot=claimed.slot, attempt=claimed.attempt)
        try:
            report = execute(
                st.engine, st.settings, claimed.job_id, now=claimed.slot,
                started_by=st.started_by, trigger=Trigger.SCHEDULE, runner_id=st.runner_id,
                claimed_run_id=claimed.run_id, scheduled_for=claimed.slot, stop=st.stop,
                clock=st.clock,
                on_started=lambda run_id: st.ping(claimed.job_id, "start", run_id),
            )
        except Exception as exc:  # a worker thread must report, not vanish
            reason = exc.message if isinstance(exc, OpsError) else f"{type(exc).__name__}: {exc}"
            self.log.error("run-error", job=claimed.job_id, run_id=claimed.run_id, error=reason)
            self._abandon(claimed, reason)
            st.ping(claimed.job_id, "fail", claimed.run_id)
            self._plan_retry(claimed)
            return None
        finally:
            st.in_flight.pop(claimed.run_id, None)
        st.ping(claimed.job_id, outcome(report.status), claimed.run_id)
        self._log_finished(claimed, report)
        if self._waiting:  # this run may have held the lock a retry waits for
            self._note_retries([st.clock()])
            self.wake()
        self._plan_retry(claimed)
        if claimed.attempt >= 2:
            self._refire_skipped(claimed)
        return report

    def _plan_retry(self, claimed: ClaimedRun) -> None:
        """A run of ours that will run again: say when, and wake the loop for it. (Any
        runner's maintenance finds it too, should this one stop meanwhile.)"""
        st = self.state
        try:
            record = get_run(st.engine, claimed.run_id)
        except OpsError as exc:
            self.log.error("retry-planning-failed", run_id=claimed.run_id, error=exc.message)
            return
        job = st.settings.jobs.get(claimed.job_id)
        due = None if record is None or job is None else retry_at(record, job)
        if record is None or due is None or record.status is RunStatus.INTERRUPTED:
            return  # an interruption's retry is planned by whoever recovers it
        self.log.info("retry-planned", job=claimed.job_id, slot=claimed.slot,
                      run_id=claimed.run_id, status=str(record.status),
                      attempt=claimed.attempt + 1, at=due)
        self._note_retries([due])
        self.wake()

    def _refire_skipped(self, retried: ClaimedRun) -> None:
        """After a retry, fire once the newest slot that was `skipped` behind it (or behind
        the run it retried): that slot passed while its job was locked, and without this
        it would be lost (an outage's newest slot, e.g. the next day's analytics)."""
        st = self.state
        held: list[ClaimedRun] = []

        def hold(run_id: int) -> None:
            assert slot is not None
            held.append(ClaimedRun(run_id, retried.job_id, slot, 2))
            self._hold(held)

        try:
            slot = skipped_behind(st.engine, retried.job_id, retried.slot)
            job = st.settings.job(retried.job_id)
            if slot is None or (job.misfire_grace is not None
                                and st.clock() - slot > job.misfire_grace):
                return
            # Held from before the claim commits: this runs in a worker thread, beside the
            # loop's orphan sweep.
            claim = claim_slot(st.engine, st.settings, retried.job_id, slot,
                               runner_id=st.runner_id, started_by=st.started_by,
                               clock=st.clock, attempt=2, on_claimed=hold)
        except OpsError as exc:
            for c in held:  # its commit failed: there is no run to hold
                st.in_flight.pop(c.run_id, None)
            self.log.error("refire-failed", job=retried.job_id, error=exc.message)
            return
        if claim.status is not ClaimStatus.CLAIMED or claim.run_id is None:
            return
        self.log.info("slot-refired", job=retried.job_id, slot=slot, run_id=claim.run_id,
                      attempt=2, reason=f"it was skipped while the retry of {retried.slot} ran")
        self.run(ClaimedRun(claim.run_id, retried.job_id, slot, 2))

    def _log_finished(self, claimed: ClaimedRun, report: RunReport) -> None:
        self.log.event(
            "run-finished", _FINISHED_LEVELS.get(report.status, "warning"),
            job=claimed.job_id, run_id=claimed.run_id, slot=claimed.slot,
            status=str(report.status), processed=report.processed,
            errors=len(report.errors),
            duration_s=round((report.finished_at - report.started_at).total_seconds(), 3),
            summary=dict(report.summary), error=report.error,
        )

    def _abandon(self, claimed: ClaimedRun, reason: str) -> None:
        """Mark a run that raised failed and free its lock; if even that cannot be
        written, the orphan sweep of a later tick does it."""
        try:
            abandon_run(self.state.engine, claimed.job_id, claimed.run_id, self.state.clock(),
                        reason, self.state.settings)
        except OpsError as exc:
            self.log.error("run-abandon-failed", run_id=claimed.run_id, error=exc.message)

    def drain_outbox(self, now: datetime) -> None:
        """Deliver the emails due at `now`, when SMTP is configured."""
        st = self.state
        if not st.settings.smtp_url:
            return
        result = sender.drain(st.engine, st.settings, now=now, sender_id=st.runner_id,
                              stop=st.stop, clock=st.clock)
        counts = result.to_json()
        if any(v for v in counts.values()):
            self.log.info("outbox-drained", **counts)

    def prune_history(self, now: datetime) -> None:
        """Apply the retention rules at `now`, when no runner has done so within the hour
        and none is doing it (the prune lease)."""
        st = self.state
        started = st.clock()
        result = retention.prune(st.engine, st.settings, now, actor=f"runner:{st.runner_id}",
                                 holder=st.runner_id, every=retention.EVERY, stop=st.stop,
                                 clock=st.clock)
        if result.skipped is None and (result.total or not result.complete):
            self.log.info("history-pruned", **result.deleted(), statements=result.statements,
                          complete=result.complete,
                          duration_s=round((st.clock() - started).total_seconds(), 3))


# --- the loop ---------------------------------------------------------------------------------


def _in_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[T]:
    """Run `fn` in a daemon thread and await it from the loop.

    Not asyncio.to_thread: its pool's threads are joined at interpreter exit, so one job
    that ignores the stop request would keep the process past its shutdown deadline.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def target() -> None:
        try:
            result: Any = fn(*args, **kwargs)
            ok = True
        except BaseException as exc:  # handed to the awaiting coroutine
            result, ok = exc, False
        # RuntimeError: the loop closed while we ran, so nobody is waiting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, ok, result)

    threading.Thread(target=target, name=getattr(fn, "__name__", "worker"), daemon=True).start()
    return fut


async def serve(state: RunnerState, core: SlotRunner,
                http: tuple[str, int] | None = None,
                metrics: tuple[str, int] | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code (0 after a clean stop). SIGHUP
    reloads the configuration between two passes of the loop."""
    loop = asyncio.get_running_loop()
    cfg = state.settings.runner
    wake = asyncio.Event()
    hurry = asyncio.Event()
    signals: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        if signals:
            state.log.warning("runner-hurry", signal=sig.name,
                              reason="second signal: not waiting for running runs")
            hurry.set()
        else:
            state.log.info("runner-stopping", signal=sig.name,
                           running=sorted(state.in_flight.copy().items()))
        signals.append(sig.name)
        state.stop.set()  # jobs see it between two tenants; no new claims after this
        wake.set()

    def on_hup() -> None:
        state.reload.ask()
        wake.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    hup_before = signal.getsignal(signal.SIGHUP)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    notifier = state.notifier

    # A worker thread whose run will be retried wakes the loop for it.
    def wake_soon() -> None:
        loop.call_soon_threadsafe(wake.set)

    core.wake = wake_soon

    runs: set[asyncio.Future[Any]] = set()
    drain: asyncio.Future[None] | None = None
    prune: asyncio.Future[None] | None = None
    handle: HttpHandle | None = None
    metrics_handle: HttpHandle | None = None
    interval = timedelta(seconds=cfg.heartbeat_interval)
    deliverer: alerts.Deliverer | None = None
    if alerts.targets(state.settings.alerts):
        # A thread of its own, not a turn of this loop: a target that takes its whole
        # timeout must never delay a slot.
        deliverer = alerts.Deliverer(state.engine, state.settings, state.runner_id,
                                     stop=state.stop, on_event=state.log.event,
                                     clock=state.clock)
        deliverer.start()
    try:
        if http is not None:
            from console.http import start_http  # aiohttp only for a runner that serves

            handle = await start_http(state, http[0], http[1])
            state.log.info("http-listening", host=http[0], port=http[1])
        if metrics is not None:
            from console.http import start_http

            metrics_handle = await start_http(state, metrics[0], metrics[1], metrics_only=True)
            state.log.info("metrics-listening", host=metrics[0],
                           port=getattr(metrics_handle, "port", metrics[1]))

        maintenance_at = state.clock()
        drain_at = state.clock()
        prune_at = state.clock()
        startup = True
        ready = False  # READY=1 sent: after the first pass, whatever its outcome
        failures = 0
        while not state.stop.is_set():
            notifier.watchdog()
            # Between two passes, never during one: a pass plans with one configuration.
            # Not before the first pass either: READY=1 comes before any RELOADING=1.
            if ready and state.reload.take():
                notifier.reloading("reloading the configuration")
                await _in_thread(core.reload, state.clock())
                notifier.ready(_scheduling(core))
            now = state.clock()
            state.last_loop_at = now
            claims: list[ClaimedRun] = []
            errors = 0
            try:
                retry_due = core.retry_wake is not None and now >= core.retry_wake
                maintained = now >= maintenance_at or retry_due
                if maintained:
                    if now >= maintenance_at:
                        maintenance_at = now + interval
                    claims += await _in_thread(core.maintain, now)
                # The maintenance just recovered stale runs and retried their slots (before
                # any new slot is claimed, as tick would): once per pass is enough.
                tick = await _in_thread(core.tick, state.clock(), all_jobs=startup,
                                        recover=not maintained)
                startup = False
                claims += tick.claims
                errors = tick.errors
            except OpsError as exc:
                errors = 1
                state.log.error("tick-failed", error=exc.message)
            except Exception as exc:  # the loop must outlive a bad tick
                errors = 1
                state.log.error("tick-failed", error=f"{type(exc).__name__}: {exc}")
            if not ready:
                ready = True
                if notifier.ready(_scheduling(core)):
                    state.log.info("systemd-notified", state="READY=1",
                                   watchdog_s=notifier.watchdog_interval)
                elif notifier.last_error:
                    state.log.warning("systemd-notify-failed", error=notifier.last_error)
            for claimed in claims:
                fut = _in_thread(core.run, claimed)
                runs.add(fut)
                fut.add_done_callback(runs.discard)
            if now >= drain_at and (drain is None or drain.done()):
                drain_at = now + timedelta(seconds=state.settings.outbox.send_interval)
                drain = _in_thread(_logged, core, "outbox-drain-failed", core.drain_outbox, now)
            if now >= prune_at and (prune is None or prune.done()):
                # In a thread of its own, like the drain: slots never wait for it. Asked
                # often; the lease makes it hourly between all the runners.
                prune_at = now + PRUNE_CHECK
                prune = _in_thread(_logged, core, "history-prune-failed", core.prune_history, now)

            failures = failures + 1 if errors else 0
            now = state.clock()
            state.next_wake = core.scheduler.next_wake()
            deadline = min(t for t in (state.next_wake, maintenance_at, core.retry_wake)
                           if t is not None)
            delay = (deadline - now).total_seconds()
            if failures:  # the database is down: do not spin on it
                delay = min(ERROR_BACKOFF_MAX, 0.5 * 2 ** min(failures, 8))
            # Tick often enough for /healthz to tell a sleeping loop from a wedged one, and
            # for systemd's watchdog (every half of WatchdogSec) to see that it ticks.
            delay = min(delay, cfg.health_tick_age / 2)
            if notifier.watchdog_interval is not None:
                delay = min(delay, notifier.watchdog_interval)
            wake.clear()
            if state.stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=max(0.0, delay))
    finally:
        state.stop.set()
        notifier.stopping("stopping: finishing the runs in hand")
        pending = {f for f in runs if not f.done()}
        if drain is not None and not drain.done():
            pending.add(drain)
        if prune is not None and not prune.done():
            pending.add(prune)  # it stops at its next statement
        if pending:
            waiter = asyncio.ensure_future(asyncio.wait(pending, timeout=cfg.shutdown_timeout))
            hurried = asyncio.ensure_future(hurry.wait())
            await asyncio.wait({waiter, hurried}, return_when=asyncio.FIRST_COMPLETED)
            hurried.cancel()
            left = sorted(state.in_flight.copy().items())
            if left:
                state.log.warning("shutdown-timeout", running=left,
                                  reason="runs did not stop in time; another runner will "
                                         "mark them interrupted")
        for face in (handle, metrics_handle):
            if face is None:
                continue
            try:
                await face.cleanup()
            except Exception as exc:  # shutting down regardless
                state.log.error("http-cleanup-failed", error=str(exc))
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        # Back to cmd_run's handler (a flag nobody reads any more): SIGHUP's default action
        # would end the process before it has recorded its runs and deregistered.
        signal.signal(signal.SIGHUP, hup_before)
    return 0


def _scheduling(core: SlotRunner) -> str:
    """systemd's STATUS= line while scheduling."""
    jobs = core.scheduler.job_ids
    return f"scheduling {plural(len(jobs), 'job')}" + (f": {', '.join(jobs)}" if jobs else "")


def _logged(core: SlotRunner, event: str, work: Callable[[datetime], object],
            now: datetime) -> None:
    """The runner's side work (pruning history, draining the outbox), with a failure logged
    as `event` instead of raised: neither may stop the runner."""
    try:
        work(now)
    except OpsError as exc:
        core.log.error(event, error=exc.message)
    except Exception as exc:
        core.log.error(event, error=f"{type(exc).__name__}: {exc}")


# --- the command ------------------------------------------------------------------------------


def cmd_run(ctx: CliContext, args: argparse.Namespace) -> int:
    settings = ctx.settings
    # From the first moment: SIGHUP's default action ends the process, and a reload asked
    # for during start-up (the migration check can take a while) is done once serving.
    reload = ReloadRequest()
    signal.signal(signal.SIGHUP, lambda _sig, _frame: reload.ask())
    overrides = Overrides(getattr(args, "config", None), getattr(args, "database_url", None),
                          getattr(args, "cache_url", None))
    http = None
    # All before the database is touched: a runner that cannot serve what it was asked to
    # serve, or send the mail it drains, should fail at once, with nothing registered.
    if args.http:
        from console.http import check_token, parse_listen

        http = parse_listen(args.http)  # HOST:PORT, :PORT or PORT (host 127.0.0.1)
        check_token(settings)
    metrics = None
    if getattr(args, "metrics", None):
        from console.http import parse_listen

        metrics = parse_listen(args.metrics, flag="--metrics")
    check_mail_settings(settings)  # SMTP_URL and MAIL_FROM, when SMTP_URL is set
    runlog = RunLog(ctx.stderr, args.log_format)
    engine = ctx.engine  # reachable and migrated, or exit 3
    install(runlog)
    clock = utc_now
    presence = Presence(engine, RunnerKind.RUNNER, clock, settings.runner.heartbeat_interval)
    # Before it registers: the faces show a live runner's schedules, so it never looks
    # alive without them on record.
    record_schedules(engine, presence.id, settings)
    presence.start()
    pinger = Pinger() if any(j.ping_url for j in settings.jobs.values()) else None
    state = RunnerState(
        engine=engine, settings=settings, runner_id=presence.id,
        started_by=f"runner@{socket.gethostname()}", log=runlog, clock=clock,
        started_at=clock(), presence=presence, pinger=pinger, notifier=Notifier.from_env(),
        reload=reload, load_settings=lambda: load_settings(overrides),
    )
    for job_id in note_schedules(engine, settings, state.started_at):
        runlog.info("schedule-changed", job=job_id,
                    schedule=settings.job(job_id).schedule.expression,
                    reason="slots of the old schedule are not counted as missed")
    core = SlotRunner(state)
    runlog.info(
        "runner-started", runner_id=presence.id, pid=os.getpid(),
        database=redact(settings.database_url), config=settings.source,
        jobs={j: f"{c.schedule.expression} {c.timezone}" for j, c in core.scheduler.jobs.items()},
        disabled=[j for j, c in settings.jobs.items() if not c.enabled],
        http=None if http is None else f"{http[0]}:{http[1]}",
        metrics=None if metrics is None else f"{metrics[0]}:{metrics[1]}",
    )
    if not settings.smtp_url:  # once, here: the outbox fills up quietly otherwise
        runlog.warning("smtp-not-configured",
                       reason="SMTP_URL is not set: emails the jobs queue wait in the outbox "
                              "until it is, then this runner (or `storeflow-ops outbox send`) "
                              "delivers them")
    code = 1
    try:
        code = asyncio.run(serve(state, core, http, metrics))
        return code
    except OpsError as exc:
        code = int(exc.exit_code)
        raise
    finally:
        if state.pinger is not None:  # a reload may have started one
            state.pinger.close()  # the outcomes of the last runs, for up to 2 s
        presence.stop()
        state.notifier.close()
        runlog.info("runner-stopped", runner_id=presence.id, exit_code=code)

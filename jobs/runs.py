"""The one run path. A manual trigger, a scheduled slot, an HTTP call and a preview all
come through `execute`; they differ only in their arguments.

Bookkeeping:
- a real run is a row in ops_runs; a preview writes nothing anywhere and has no row;
- a slot is claimed by inserting its run under the unique (job, scheduled_for, attempt);
- a job's overlap lock is ops_job_state.active_run_id, taken with a conditional UPDATE,
  so two processes can never both hold it; a holder whose process stopped
  heartbeating is marked `interrupted` and its lock taken over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, and_, func, or_, select, text, update
from sqlalchemy.engine import Connection, Engine

from jobs import audit
from jobs.db import (
    insert_ignore,
    ops_job_state,
    ops_run_items,
    ops_runners,
    ops_runs,
    require_platform_tables,
    transaction,
)
from jobs.errors import ExitCode, JobRunningError, OpsError
from jobs.log_events import event_extra
from jobs.presence import is_alive, silent_or_stopped
from jobs.records import (
    ClaimStatus,
    ItemResult,
    ItemStatus,
    RunParams,
    RunRecord,
    RunReport,
    RunStatus,
    Trigger,
)
from jobs.settings import JOB_IDS, Settings
from jobs.slots import RETRIED_STATUSES
from jobs.timeouts import RunDeadline, timeout_text
from jobs.timeutil import Clock, utc_now

# What only running a job needs (the jobs themselves, the cache, the alerts) is imported
# where a run starts or ends: reading the history or the jobs' state, as the commands and
# the console's first screen do, loads none of it.
if TYPE_CHECKING:
    from jobs.cache import Cache
    from jobs.context import ItemSink, ProgressCallback

log = logging.getLogger("storeflow.runs")


def _run_ended(engine: Engine, settings: Settings | None, run_id: int, *, now: datetime
               ) -> None:
    from jobs import alerts

    alerts.run_ended(engine, settings, run_id, now=now)


# --- locks and staleness ---------------------------------------------------------------------


def _ensure_state(conn: Connection, job_id: str) -> None:
    insert_ignore(conn, ops_job_state, [{"job_id": job_id, "paused": False}], ["job_id"])


def _run_is_dead(conn: Connection, run_id: int, now: datetime, stale_after: float,
                 owner: str | None) -> bool:
    """Whether the run holding a lock is gone. `owner` is the process asking: a run of its
    own is in its hands, whatever its heartbeat looks like from the database (a busy
    machine delays heartbeats), so only another process may declare it dead."""
    row = conn.execute(
        select(ops_runs.c.status, ops_runs.c.runner_id, ops_runners.c.heartbeat_at,
               ops_runners.c.stopped_at)
        .select_from(ops_runs.outerjoin(ops_runners, ops_runners.c.id == ops_runs.c.runner_id))
        .where(ops_runs.c.id == run_id)
    ).first()
    if row is None or row.status != RunStatus.RUNNING:
        return True  # finished (or gone) but its lock was never released
    if owner is not None and row.runner_id == owner:
        return False
    if row.heartbeat_at is None:
        return row.runner_id is not None  # its process row vanished
    return not is_alive(row.heartbeat_at, row.stopped_at, now, stale_after)


# The runs counter (ops_run_counts): bumped in the transaction that writes a final status,
# once per row actually changed, so pruning history never lowers what /metrics reports.
_COUNT_RUNS = text(
    "INSERT INTO ops_run_counts (job_id, status, count) VALUES (:job_id, :status, :n) "
    "ON CONFLICT (job_id, status) DO UPDATE SET count = ops_run_counts.count + excluded.count"
)


def _count_runs(conn: Connection, job_id: str, status: RunStatus, n: int = 1) -> None:
    if n > 0:
        conn.execute(_COUNT_RUNS, {"job_id": job_id, "status": str(status), "n": n})


def _interrupt(conn: Connection, job_id: str, run_id: int, now: datetime, reason: str) -> bool:
    res = conn.execute(
        update(ops_runs)
        .where(ops_runs.c.id == run_id, ops_runs.c.status == RunStatus.RUNNING)
        .values(status=RunStatus.INTERRUPTED, finished_at=now, error=reason)
    )
    _count_runs(conn, job_id, RunStatus.INTERRUPTED, res.rowcount)
    return bool(res.rowcount)


def _try_lock(conn: Connection, job_id: str, run_id: int, now: datetime,
              stale_after: float, owner: str | None) -> int | None:
    """Take the job's overlap lock for run_id; returns the holder's run id when refused."""
    _ensure_state(conn, job_id)
    got = conn.execute(
        update(ops_job_state)
        .where(ops_job_state.c.job_id == job_id, ops_job_state.c.active_run_id.is_(None))
        .values(active_run_id=run_id)
    ).rowcount
    if got:
        return None
    holder = conn.execute(
        select(ops_job_state.c.active_run_id).where(ops_job_state.c.job_id == job_id)
    ).scalar_one_or_none()
    if holder is None:  # released between our two statements
        return _try_lock(conn, job_id, run_id, now, stale_after, owner)
    if _run_is_dead(conn, holder, now, stale_after, owner):
        _interrupt(conn, job_id, holder, now, "its process stopped heartbeating")
        took = conn.execute(
            update(ops_job_state)
            .where(ops_job_state.c.job_id == job_id, ops_job_state.c.active_run_id == holder)
            .values(active_run_id=run_id)
        ).rowcount
        if took:  # the same event as a runner's sweep writes for a dead run it ends
            log.warning("job %s: took over the lock of dead run %s", job_id, holder,
                        extra=event_extra("run-interrupted", job=job_id, run_id=int(holder),
                                          reason="its runner stopped heartbeating"))
            return None
    return int(holder)


def _release_lock(conn: Connection, job_id: str, run_id: int) -> None:
    conn.execute(
        update(ops_job_state)
        .where(ops_job_state.c.job_id == job_id, ops_job_state.c.active_run_id == run_id)
        .values(active_run_id=None)
    )


def _new_run(conn: Connection, *, job_id: str, trigger: Trigger, status: RunStatus,
             started_by: str, runner_id: str | None, reference_time: datetime, created: datetime,
             params: RunParams, scheduled_for: datetime | None = None, attempt: int = 1,
             ) -> int | None:
    """Insert a run; None when its (job, slot, attempt) is already claimed."""
    row: dict[str, Any] = {
        "job_id": job_id, "trigger": str(trigger), "scheduled_for": scheduled_for,
        "attempt": attempt, "status": str(status), "started_by": started_by,
        "runner_id": runner_id, "reference_time": reference_time, "params": params.to_json(),
        "created_at": created,
        "started_at": created if status is RunStatus.RUNNING else None,
        "finished_at": None if status is RunStatus.RUNNING else created,
    }
    if scheduled_for is None:
        pk = conn.execute(ops_runs.insert().values(**row)).inserted_primary_key
        assert pk is not None
        return int(pk[0])
    inserted = insert_ignore(conn, ops_runs, [row], ["job_id", "scheduled_for", "attempt"])
    if not inserted:
        return None
    return int(conn.execute(
        select(ops_runs.c.id).where(
            ops_runs.c.job_id == job_id, ops_runs.c.scheduled_for == scheduled_for,
            ops_runs.c.attempt == attempt,
        )
    ).scalar_one())


# --- claiming ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming a slot."""

    run_id: int | None  # the run to execute; None when not ours to run
    status: ClaimStatus
    holder_run_id: int | None = None


def claim_slot(engine: Engine, settings: Settings, job_id: str, scheduled_for: datetime, *,
               runner_id: str, started_by: str, clock: Clock = utc_now,
               attempt: int = 1, on_claimed: Callable[[int], None] | None = None,
               wait_for_lock: bool = False) -> Claim:
    """Claim one slot for this runner: exactly one runner ever gets `claimed` for it.

    When the job's lock is held (concurrency = forbid), the slot is recorded `skipped`; with
    `wait_for_lock` (a retry, whose slot must still be done) nothing is recorded and the
    claim is `busy`, to be asked again once the holder may have ended.

    `on_claimed(run_id)` is called before the claim commits, like `execute`'s `on_created`,
    for a caller whose orphan sweep runs in another thread."""
    job = settings.job(job_id)
    now = clock()
    with transaction(engine) as conn:
        run_id = _new_run(
            conn, job_id=job_id, trigger=Trigger.SCHEDULE, status=RunStatus.RUNNING,
            started_by=started_by, runner_id=runner_id, reference_time=scheduled_for,
            created=now, params=RunParams(), scheduled_for=scheduled_for, attempt=attempt,
        )
        if run_id is None:
            return Claim(None, ClaimStatus.TAKEN)
        if job.concurrency == "forbid":
            holder = _try_lock(conn, job_id, run_id, now, settings.runner.stale_after,
                               runner_id)
            if holder is not None and wait_for_lock:
                conn.rollback()  # the attempt's row goes: nothing is recorded
                return Claim(None, ClaimStatus.BUSY, holder)
            if holder is not None:
                conn.execute(
                    update(ops_runs).where(ops_runs.c.id == run_id).values(
                        status=RunStatus.SKIPPED, finished_at=now, started_at=None,
                        error=_skipped_reason(holder),
                    )
                )
                _count_runs(conn, job_id, RunStatus.SKIPPED)
                return Claim(None, ClaimStatus.SKIPPED, holder)
        if on_claimed is not None:
            on_claimed(run_id)
    return Claim(run_id, ClaimStatus.CLAIMED)


def record_missed(engine: Engine, job_id: str, slots: list[datetime], *, runner_id: str,
                  started_by: str, clock: Clock = utc_now, reason: str,
                  settings: Settings | None = None) -> int:
    """Record slots that will not fire as `missed`, unless some runner has them already."""
    if not slots:
        return 0
    now = clock()
    rows: list[dict[str, Any]] = [
        {
            "job_id": job_id, "trigger": str(Trigger.SCHEDULE), "scheduled_for": s,
            "attempt": 1, "status": str(RunStatus.MISSED), "started_by": started_by,
            "runner_id": runner_id, "reference_time": s, "params": {}, "created_at": now,
            "started_at": None, "finished_at": now, "error": reason,
        }
        for s in slots
    ]
    with transaction(engine) as conn:
        n = insert_ignore(conn, ops_runs, rows, ["job_id", "scheduled_for", "attempt"])
        _count_runs(conn, job_id, RunStatus.MISSED, n)
    if n:
        from jobs import alerts

        alerts.slots_missed(engine, settings, job_id, slots)
    return n


def _stale_runs(now: datetime, stale_after: float) -> Select[int, str]:
    """`running` runs (id, job id) whose process stopped heartbeating (or stopped, or
    vanished)."""
    return (
        select(ops_runs.c.id, ops_runs.c.job_id)
        .select_from(ops_runs.outerjoin(ops_runners, ops_runners.c.id == ops_runs.c.runner_id))
        .where(
            ops_runs.c.status == RunStatus.RUNNING,
            or_(
                # A run with no runner_id (a CLI without presence) has no heartbeat to lose.
                and_(ops_runs.c.runner_id.is_not(None), ops_runners.c.id.is_(None)),
                silent_or_stopped(now, stale_after),
            ),
        )
    )


def stale_run_ids(engine: Engine, now: datetime, stale_after: float) -> set[int]:
    """The `running` runs that are not running any more: their process stopped
    heartbeating. Faces show them as stale until some process marks them `interrupted`."""
    with transaction(engine) as conn:
        return set(conn.execute(_stale_runs(now, stale_after)).scalars().all())


def recover_stale_runs(engine: Engine, now: datetime, stale_after: float, *,
                       spare: str | None = None,
                       settings: Settings | None = None) -> list[RunRecord]:
    """Mark `running` runs of dead processes `interrupted` and free their locks.

    `spare` is the calling runner's own id: a runner whose heartbeat could not get through
    (a busy database) is still running its runs, so only another process may end them."""
    dead = _stale_runs(now, stale_after)
    if spare is not None:
        dead = dead.where(ops_runs.c.runner_id != spare)
    recovered: list[int] = []
    with transaction(engine) as conn:
        for run_id, job_id in conn.execute(dead).all():
            if _interrupt(conn, job_id, run_id, now, "its process stopped heartbeating"):
                recovered.append(run_id)
                conn.execute(
                    update(ops_job_state).where(ops_job_state.c.active_run_id == run_id)
                    .values(active_run_id=None)
                )
    for run_id in recovered:
        _run_ended(engine, settings, run_id, now=now)
    return [r for r in (get_run(engine, i) for i in recovered) if r is not None]


def abandon_run(engine: Engine, job_id: str, run_id: int, now: datetime, reason: str,
                settings: Settings | None = None) -> bool:
    """A claimed run whose execution raised before its outcome was written: mark it failed
    and free the job's lock, so the next slot is not skipped because of it."""
    with transaction(engine) as conn:
        changed = conn.execute(
            update(ops_runs)
            .where(ops_runs.c.id == run_id, ops_runs.c.status == RunStatus.RUNNING)
            .values(status=RunStatus.FAILED, finished_at=now, error=reason)
        ).rowcount
        _count_runs(conn, job_id, RunStatus.FAILED, changed)
        _release_lock(conn, job_id, run_id)
    if changed:
        _run_ended(engine, settings, run_id, now=now)
    return bool(changed)


def release_orphaned_runs(engine: Engine, runner_id: str, live: Container[int],
                          now: datetime, settings: Settings | None = None) -> list[int]:
    """This runner's `running` runs that none of its workers is executing (their outcome
    could not be written, e.g. the database was down at the end): interrupt them and free
    their locks. Its heartbeat is fine, so staleness would never catch them.

    `live` is the runner's own in-flight registry, not a copy: it is consulted after the
    rows are read, and every run is registered before its row is committed (see
    `execute(on_created=...)`), so a run that started meanwhile is never taken for an orphan."""
    q = select(ops_runs.c.id, ops_runs.c.job_id).where(
        ops_runs.c.status == RunStatus.RUNNING, ops_runs.c.runner_id == runner_id
    )
    released: list[int] = []
    with transaction(engine) as conn:
        for run_id, job_id in conn.execute(q).all():
            if run_id in live:
                continue
            if _interrupt(conn, job_id, run_id, now,
                          "its worker ended without recording an outcome"):
                _release_lock(conn, job_id, run_id)
                released.append(run_id)
    for run_id in released:
        _run_ended(engine, settings, run_id, now=now)
    return released


def retry_candidates(engine: Engine, settings: Settings, since: datetime) -> list[RunRecord]:
    """Slot runs that ended since `since` with no next attempt yet and that may still have
    one (`jobs.slots.retry_at` decides): a slot's first interruption, and for a job with
    `retries` a failed, timed-out or interrupted attempt up to the last, of its newest
    slot (once a later slot has a run, that slot does the work). So an every-second job
    that fails all day is not read back thousands of times on each maintenance pass."""
    retry, later = ops_runs.alias("retry"), ops_runs.alias("later")
    r = ops_runs.c
    wanted = []
    for job_id, job in settings.jobs.items():
        if job.retries == 0:
            wanted.append(and_(r.job_id == job_id, r.status == RunStatus.INTERRUPTED,
                               r.attempt == 1))
            continue
        wanted.append(and_(
            r.job_id == job_id, r.status.in_([str(s) for s in RETRIED_STATUSES]),
            r.attempt <= job.retries,
            ~select(later.c.id).where(later.c.job_id == r.job_id,
                                      later.c.scheduled_for > r.scheduled_for).exists(),
        ))
    q = (
        select(ops_runs)
        .where(
            r.finished_at >= since,
            r.trigger == Trigger.SCHEDULE,
            or_(*wanted),
            ~select(retry.c.id).where(
                retry.c.job_id == r.job_id,
                retry.c.scheduled_for == r.scheduled_for,
                retry.c.attempt == r.attempt + 1,
            ).exists(),
        )
        .order_by(r.id)
    )
    with transaction(engine) as conn:
        return [_record(r) for r in conn.execute(q)]


def skipped_behind(engine: Engine, job_id: str, slot: datetime) -> datetime | None:
    """The newest later slot of a job recorded `skipped` because a run of `slot` (the
    interrupted one or its retry) held the lock, and not fired since."""
    with transaction(engine) as conn:
        holders = conn.execute(
            select(ops_runs.c.id).where(ops_runs.c.job_id == job_id,
                                        ops_runs.c.scheduled_for == slot)
        ).scalars().all()
        if not holders:
            return None
        refired = ops_runs.alias("refired")
        return conn.execute(
            select(func.max(ops_runs.c.scheduled_for)).where(
                ops_runs.c.job_id == job_id,
                ops_runs.c.scheduled_for > slot,
                ops_runs.c.status == RunStatus.SKIPPED,
                ops_runs.c.attempt == 1,
                ops_runs.c.error.in_([_skipped_reason(h) for h in holders]),
                ~select(refired.c.id).where(
                    refired.c.job_id == ops_runs.c.job_id,
                    refired.c.scheduled_for == ops_runs.c.scheduled_for,
                    refired.c.attempt == 2,
                ).exists(),
            )
        ).scalar_one_or_none()


def _skipped_reason(holder: int) -> str:
    return f"previous run {holder} was still running"


# --- executing ---------------------------------------------------------------------------------


def execute(
    engine: Engine,
    settings: Settings,
    job_id: str,
    *,
    now: datetime,
    started_by: str,
    trigger: Trigger = Trigger.MANUAL,
    dry_run: bool = False,
    runner_id: str | None = None,
    params: RunParams | None = None,
    claimed_run_id: int | None = None,
    scheduled_for: datetime | None = None,
    cache: Cache | None = None,
    on_progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    on_started: Callable[[int | None], None] | None = None,
    on_created: Callable[[int], None] | None = None,
    clock: Clock = utc_now,
    actor: str | None = None,
    reason: str | None = None,
    audit_as: audit.AuditAction = audit.AuditAction.TRIGGER,
) -> RunReport:
    """Run (or preview) one job at reference time `now` and return its report.

    Raises JobRunningError (exit 4) when a real manual run finds the job running, and
    OpsError for problems before the run starts (database unreachable). Once started,
    failures are recorded in the run and returned in the report, never raised.

    `on_started(run_id)` is called once the run has started (None for a preview).
    `on_created(run_id)` is called when this call creates the run's row, inside its
    transaction, before any other process can see the row: it must be quick and must
    not touch the database. A runner registers its HTTP runs with it.

    A run this call creates (a manual or HTTP trigger, not a claimed slot nor a preview)
    is audited in the transaction that creates it: `audit_as` (a trigger, or an analytics
    recompute) by `actor` (default `started_by`) for `reason`.
    """
    from jobs.cache import open_cache
    from jobs.context import ItemSink, RunContext
    from jobs.registry import check_reference_time, check_run

    params = params or RunParams()
    spec = check_run(settings, job_id, params, now)
    job = settings.job(job_id)
    require_platform_tables(engine)
    started = clock()
    check_reference_time(now, started, dry_run)
    run_id = claimed_run_id
    if not dry_run and run_id is None:
        with transaction(engine) as conn:
            run_id = _new_run(
                conn, job_id=job_id, trigger=trigger, status=RunStatus.RUNNING,
                started_by=started_by, runner_id=runner_id, reference_time=now,
                created=started, params=params,
            )
            assert run_id is not None
            holder = _try_lock(conn, job_id, run_id, started, settings.runner.stale_after,
                               runner_id)
            if holder is not None:
                # Roll the whole transaction back: a refused trigger leaves no trace.
                raise JobRunningError(job_id, holder)
            audit.record(conn, at=started, actor=actor or started_by, action=audit_as,
                         job=job_id, run_id=run_id, reason=reason,
                         detail=_audit_detail(trigger, params))
            if on_created is not None:
                # Before the commit: the process registers its run (a runner's in-flight
                # set) before any other connection can see the row, so its own orphan
                # sweep has no window in which the run looks abandoned.
                on_created(run_id)
    if on_started is not None:
        on_started(run_id)

    sink = ItemSink(engine, job_id, None if dry_run else run_id, on_progress)
    # Armed once the run has started: claiming and locking are not the job's time.
    deadline = RunDeadline(job.timeout).start(engine)
    ctx = RunContext(
        engine=engine, settings=settings, job=job, now=now, dry_run=dry_run, params=params,
        run_id=run_id, sink=sink,
        cache_factory=(lambda: cache) if cache is not None else (
            lambda: open_cache(settings.cache_url, engine, settings.cache_prefix)
        ),
        stop_event=stop or threading.Event(),
        started_at=started, deadline=deadline,
    )
    status = RunStatus.SUCCEEDED
    summary: dict[str, Any] | None = None
    error: str | None = None
    error_code: ExitCode | None = None
    try:
        with deadline.guard():
            summary = spec.run(ctx)
        # A stop that arrives after the last tenant interrupted nothing.
        if ctx.stop_event.is_set() and (sink.total is None or len(sink.items) < sink.total):
            status = RunStatus.INTERRUPTED
            error = "stopped by a shutdown request"
    except OpsError as exc:
        status, error, error_code = RunStatus.FAILED, exc.message, exc.exit_code
    except Exception as exc:
        if not deadline.expired:  # past it, the error is the cancelled statement's
            log.exception("job %s failed", job_id)
        status, error = RunStatus.FAILED, f"{type(exc).__name__}: {exc}"
    finally:
        timed_out = deadline.finish()
    if timed_out and job.timeout is not None:
        # Still running at its deadline: whatever it managed since (a cancelled statement's
        # error, a tenant given up) is the timeout's doing. The items so far are kept.
        cause = f" ({error.splitlines()[0]})" if error and status is RunStatus.FAILED else ""
        status, error_code = RunStatus.TIMED_OUT, None
        error = f"timed out after {timeout_text(job.timeout)}{cause}"
    if summary is None:
        # The job raised: the summary it wrote as it went says what its committed work
        # did (cleanup's batches); the run's row holds it already and keeps it.
        summary = sink.noted_summary or {}
    if status is RunStatus.SUCCEEDED and sink.errors:
        status = RunStatus.PARTIAL

    finished = clock()
    if run_id is not None and not dry_run:
        _finish(engine, job_id, run_id, sink, status, summary, error, finished)
        _run_ended(engine, settings, run_id, now=finished)
    return RunReport(
        job_id=job_id, run_id=None if dry_run else run_id, trigger=trigger, dry_run=dry_run,
        status=status, reference_time=now, started_at=started, finished_at=finished,
        summary=summary, items=tuple(sink.items), error=error, error_exit_code=error_code,
        scheduled_for=scheduled_for,
    )


def _audit_detail(trigger: Trigger, params: RunParams) -> str:
    """What the audit says about a run beside its job: how it was started, with which dates."""
    dates = " ".join(f"{k}={v}" for k, v in params.to_json().items())
    return f"{trigger}" + (f" {dates}" if dates else "")


def _finish(engine: Engine, job_id: str, run_id: int, sink: ItemSink, status: RunStatus,
            summary: dict[str, Any], error: str | None, finished: datetime) -> None:
    """Write the outcome, retrying for about 15 s: losing the outcome of a finished run
    is worse than a short wait, and a run left `running` keeps the job's lock for as long
    as its process lives."""
    delays = (0.5, 1.0, 2.0, 4.0, 8.0)
    for attempt in range(len(delays) + 1):
        try:
            sink.flush()
            with transaction(engine) as conn:
                written = conn.execute(
                    update(ops_runs)
                    .where(ops_runs.c.id == run_id, ops_runs.c.status == RunStatus.RUNNING)
                    .values(
                        status=str(status), finished_at=finished, summary=summary,
                        processed=len(sink.items), errors=sink.errors, error=error,
                    )
                ).rowcount
                _count_runs(conn, job_id, status, written)
                _release_lock(conn, job_id, run_id)
            if not written:
                # Another runner took this run for dead (a long database outage) and may
                # have retried its slot: its verdict stands; ours goes to the log.
                log.warning("run %s was no longer running when it finished %s; kept as it was",
                            run_id, status)
            return
        except OpsError as exc:
            if attempt == len(delays):
                raise
            log.warning("run %s: could not record its outcome (%s); retrying", run_id, exc.message)
            time.sleep(delays[attempt])


# --- reading history -----------------------------------------------------------------------


def _record(row: Any) -> RunRecord:
    return RunRecord(
        run_id=row.id, job_id=row.job_id, trigger=Trigger(row.trigger),
        scheduled_for=row.scheduled_for, attempt=row.attempt, status=RunStatus(row.status),
        started_by=row.started_by, reference_time=row.reference_time, created_at=row.created_at,
        started_at=row.started_at, finished_at=row.finished_at, total=row.total,
        processed=row.processed, errors=row.errors, summary=row.summary, error=row.error,
    )


def get_run(engine: Engine, run_id: int) -> RunRecord | None:
    with transaction(engine) as conn:
        row = conn.execute(select(ops_runs).where(ops_runs.c.id == run_id)).first()
    return None if row is None else _record(row)


def history(engine: Engine, job_id: str | None = None, *, limit: int = 50,
            before_id: int | None = None, statuses: tuple[str, ...] = ()) -> list[RunRecord]:
    """Runs newest first; page with `before_id` (keyset, so deep pages stay fast)."""
    q = select(ops_runs).order_by(ops_runs.c.id.desc()).limit(limit)
    if job_id:
        q = q.where(ops_runs.c.job_id == job_id)
    if before_id is not None:
        q = q.where(ops_runs.c.id < before_id)
    if statuses:
        q = q.where(ops_runs.c.status.in_(statuses))
    with transaction(engine) as conn:
        return [_record(r) for r in conn.execute(q)]


def last_runs(engine: Engine) -> dict[str, RunRecord]:
    """Each job's most recent run that actually ran (not missed or skipped)."""
    latest = (
        select(func.max(ops_runs.c.id))
        .where(ops_runs.c.status.not_in([RunStatus.MISSED, RunStatus.SKIPPED]))
        .group_by(ops_runs.c.job_id)
    )
    with transaction(engine) as conn:
        rows = conn.execute(select(ops_runs).where(ops_runs.c.id.in_(latest))).all()
    return {row.job_id: _record(row) for row in rows}


def run_items(engine: Engine, run_id: int, *, errors_only: bool = False, search: str = "",
              limit: int | None = None, offset: int = 0) -> list[ItemResult]:
    q = select(ops_run_items).where(ops_run_items.c.run_id == run_id).order_by(
        ops_run_items.c.seq
    )
    if errors_only:
        q = q.where(ops_run_items.c.status == ItemStatus.ERROR)
    if search:
        like = f"%{search.lower()}%"
        q = q.where(or_(func.lower(ops_run_items.c.tenant_id).like(like),
                        func.lower(ops_run_items.c.tenant_name).like(like)))
    if limit is not None:
        q = q.limit(limit).offset(offset)
    with transaction(engine) as conn:
        return [
            ItemResult(
                tenant_id=r.tenant_id, action=r.action, status=ItemStatus(r.status),
                detail=r.detail or {}, error=r.error, tenant_name=r.tenant_name,
            )
            for r in conn.execute(q)
        ]


def report_for(engine: Engine, record: RunRecord, *, errors_only: bool = False) -> RunReport:
    """The report of a stored run (what `show` prints)."""
    items = tuple(run_items(engine, record.run_id, errors_only=errors_only))
    return RunReport(
        job_id=record.job_id, run_id=record.run_id, trigger=record.trigger, dry_run=False,
        status=record.status, reference_time=record.reference_time,
        started_at=record.started_at or record.created_at,
        finished_at=record.finished_at or record.created_at,
        summary=record.summary or {}, items=items, error=record.error,
        scheduled_for=record.scheduled_for,
    )


def newest_slots(engine: Engine) -> dict[str, datetime]:
    """Each job's newest slot that has a run of any status (fired, missed, skipped...):
    the runner plans the next slots from it."""
    with transaction(engine) as conn:
        return {
            job_id: newest for job_id, newest in conn.execute(
                select(ops_runs.c.job_id, func.max(ops_runs.c.scheduled_for))
                .where(ops_runs.c.scheduled_for.is_not(None))
                .group_by(ops_runs.c.job_id)
            )
        }


def running_runs(engine: Engine, job_id: str | None = None) -> list[RunRecord]:
    q = select(ops_runs).where(ops_runs.c.status == RunStatus.RUNNING)
    if job_id:
        q = q.where(ops_runs.c.job_id == job_id)
    with transaction(engine) as conn:
        return [_record(r) for r in conn.execute(q)]


# --- pause / resume ------------------------------------------------------------------------


def set_paused(engine: Engine, job_id: str, paused: bool, *, by: str, now: datetime,
               reason: str | None = None) -> bool:
    """Pause or resume; returns whether the state changed. Resuming records `resumed_at`,
    from which the runner counts slots, so no burst of old slots follows. A change is
    audited in its own transaction; a pause of a paused job changes and records nothing."""
    from jobs.registry import get_job

    get_job(job_id)
    with transaction(engine) as conn:
        _ensure_state(conn, job_id)
        values: dict[str, Any] = {"paused": paused}
        if paused:
            values.update(paused_at=now, paused_by=by, paused_reason=reason or None)
        else:
            values.update(resumed_at=now)
        res = conn.execute(
            update(ops_job_state)
            .where(ops_job_state.c.job_id == job_id, ops_job_state.c.paused == (not paused))
            .values(**values)
        )
        changed = bool(res.rowcount)
        if changed:
            audit.record(conn, at=now, actor=by, job=job_id, reason=reason,
                         action=audit.AuditAction.PAUSE if paused else audit.AuditAction.RESUME)
        return changed


@dataclass(frozen=True)
class JobState:
    job_id: str
    paused: bool
    paused_at: datetime | None
    paused_by: str | None
    resumed_at: datetime | None
    active_run_id: int | None
    schedule_since: datetime | None = None
    paused_reason: str | None = None
    # Alert state (jobs.alerts): set while the job is failing, and while an overdue
    # episode is open.
    failing_since: datetime | None = None
    overdue_since: datetime | None = None

    @property
    def counts_from(self) -> datetime | None:
        """Slots at or before this are not to be fired or counted missed: the job was
        resumed, or its schedule changed, then."""
        marks = [t for t in (self.resumed_at, self.schedule_since) if t is not None]
        return max(marks) if marks else None


def job_states(engine: Engine) -> dict[str, JobState]:
    with transaction(engine) as conn:
        rows = conn.execute(select(ops_job_state)).all()
    out = {
        r.job_id: JobState(r.job_id, bool(r.paused), r.paused_at, r.paused_by, r.resumed_at,
                           r.active_run_id, r.schedule_since, r.paused_reason,
                           r.failing_since if r.alert_state == "failing" else None,
                           r.overdue_since)
        for r in rows
    }
    for job_id in JOB_IDS:
        out.setdefault(job_id, JobState(job_id, False, None, None, None, None))
    return out


def note_schedules(engine: Engine, settings: Settings, now: datetime) -> list[str]:
    """Record each job's schedule; returns the jobs whose schedule changed since the last
    runner planned them. Their counting restarts at `now`: going from daily to every
    minute must not turn the hours since the last daily run into a thousand missed slots."""
    with transaction(engine) as conn:
        return note_schedules_on(conn, settings, now)


def note_schedules_on(conn: Connection, settings: Settings, now: datetime) -> list[str]:
    """`note_schedules` inside the caller's transaction (a reload commits it together with
    its audit entry)."""
    changed: list[str] = []
    for job_id, job in settings.jobs.items():
        key = f"{job.schedule.expression} {job.timezone}"
        _ensure_state(conn, job_id)
        # The first schedule ever noted is not a change: misfires of a runner that was
        # down keep firing as before.
        conn.execute(
            update(ops_job_state)
            .where(ops_job_state.c.job_id == job_id, ops_job_state.c.schedule_key.is_(None))
            .values(schedule_key=key)
        )
        res = conn.execute(
            update(ops_job_state)
            .where(ops_job_state.c.job_id == job_id, ops_job_state.c.schedule_key != key)
            .values(schedule_key=key, schedule_since=now)
        )
        if res.rowcount:
            changed.append(job_id)
    return changed

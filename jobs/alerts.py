"""Alerts: a job's alert state, the events raised when it changes, and their delivery.

State. Each job is `ok` or `failing` (ops_job_state.alert_state, shared by every runner),
and may have an open overdue episode (overdue_since). Events fire on changes only:

- `job_failing`: a run ends partial, or failed, timed_out or interrupted with no retry
  left (`jobs.slots.retry_at`: a run that will run again raises nothing), or a slot is
  recorded missed, while the job is ok;
- `job_recovered`: a run ends succeeded while the job is failing (a success also ends an
  overdue episode);
- `job_overdue`: no successful run for longer than the job's period (the gap between its
  last two slots) plus `overdue_after`, while it is enabled and not paused; once per
  episode;
- `alert_test`: `storeflow-ops alerts test`.

Exactly once across runners: the change is a conditional UPDATE of ops_job_state (e.g.
`WHERE alert_state = 'ok'`) and the event row is inserted in the same transaction under a
unique key derived from the run (`job_failing:<job>:<run_id>`). Of two runners judging
two failing runs at once, one UPDATE changes the row and the other matches nothing (on
PostgreSQL it waits for the first and re-reads; SQLite has one writer at a time); a key
that exists already rolls the change back. A verdict older than the job's newest one (a
run that ends after a later run has ended) changes nothing.

Delivery. Each event gets one ops_alert_deliveries row per target, written with it. Any
live runner delivers them in a thread of its own (`Deliverer`), so a slow or broken
target never delays a slot: it claims due rows with a lease (`claimed_by`,
`claimed_until`), so a runner that dies mid-delivery leaves them to the next; POSTs with
a timeout; retries connection errors, timeouts, 5xx and 429 after about 2 s, 4 s, 8 s ...
(at most `backoff_max` apart) up to `max_attempts`, then the delivery is `dead`; any
other answer that is not 2xx is `dead` at once. A delivery is at least once: a runner
that dies after the target answered and before the row is marked leaves it to be sent
again. Email targets are queued in the outbox (kind `alert`), which the SMTP sender
delivers; their delivery row is `sent` once the email is queued.

A webhook URL is a secret (its path is the credential): only `target_label` (scheme and
host) reaches a log line, a screen, `alerts --json` or an error message.

HTTP is the standard library's http.client (what urllib is built on): delivery runs in a
synchronous thread of its own that also talks to the database, so a blocking client with
a timeout is the simplest correct one there (aiohttp would need an event loop in that
thread for one request at a time). Not urllib itself: it rewrites header names
(`X-storeflow-signature`) and follows redirects by turning the POST into a GET; here a
redirect is an answer like any other that is not 2xx. Proxies from the environment are
not used.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.engine import Connection, Engine

from jobs.db import (
    insert_ignore,
    is_sqlite,
    ops_alert_deliveries,
    ops_alerts,
    ops_job_state,
    ops_run_items,
    ops_runs,
    transaction,
)
from jobs.errors import OpsError
from jobs.records import RunStatus
from jobs.redaction import origin
from jobs.settings import AlertsConfig, Settings
from jobs.slots import RETRIED_STATUSES, retry_at
from jobs.timeutil import Clock, iso, iso_z, utc_now

log = logging.getLogger("storeflow.alerts")
T = TypeVar("T")

FAILING_STATUSES = frozenset({"failed", "partial", "timed_out", "missed"})
# A run status that is a verdict on the job (skipped and running are not).
VERDICTS = ("succeeded", "partial", "failed", "timed_out", "interrupted", "missed")
FIRST_ERRORS = 5
USER_AGENT = "storeflow-ops-alerts"
PARALLEL = 4  # targets served at once by one runner (each target's deliveries in order)


# --- targets and their labels ------------------------------------------------------------


def target_label(url: str) -> str:
    """What may be shown of a webhook URL: scheme and host (with its port), never the path,
    query or credentials."""
    return origin(url)


def scrub(text: str, url: str) -> str:
    """`text` with `url`, and its path and query, replaced by its label (belt and braces
    for error text a library might build)."""
    label = target_label(url)
    text = text.replace(url, label)
    parts = urlsplit(url)
    secret = parts.path + (f"?{parts.query}" if parts.query else "")
    for piece in (secret, parts.path, parts.query):
        if len(piece) > 1:
            text = text.replace(piece, "[redacted]")
    return text


@dataclass(frozen=True)
class Target:
    kind: str  # webhook | email
    target: str = field(repr=False)
    label: str = ""


def targets(cfg: AlertsConfig) -> list[Target]:
    out = [Target("webhook", url, target_label(url)) for url in cfg.webhooks]
    out += [Target("email", address, address) for address in cfg.emails]
    return out


def is_slack(url: str) -> bool:
    return (urlsplit(url).hostname or "").lower() == "hooks.slack.com"


# --- recording events ------------------------------------------------------------------


class _Duplicate(Exception):
    """The event's key exists: roll the state change back."""


def _ensure_state(conn: Connection, job_id: str) -> None:
    insert_ignore(conn, ops_job_state, [{"job_id": job_id, "paused": False}], ["job_id"])


def _record(conn: Connection, settings: Settings, *, event: str, key: str,
            job_id: str | None, run_id: int | None, payload: dict[str, Any],
            now: datetime) -> int:
    """Insert the event and a delivery row per target; _Duplicate when the key exists."""
    if not insert_ignore(conn, ops_alerts, [{
        "key": key[:255], "event": event, "job_id": job_id, "run_id": run_id, "at": now,
        "payload": payload,
    }], ["key"]):
        raise _Duplicate(key)
    alert_id = int(conn.execute(
        select(ops_alerts.c.id).where(ops_alerts.c.key == key[:255])).scalar_one())
    rows = [
        {"alert_id": alert_id, "kind": t.kind, "target": t.target, "target_label": t.label,
         "status": "pending", "attempts": 0, "next_attempt_at": now}
        for t in targets(settings.alerts)
    ]
    if rows:
        conn.execute(ops_alert_deliveries.insert(), rows)
    return alert_id


def _first_errors(conn: Connection, run_id: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(ops_run_items.c.tenant_id, ops_run_items.c.error)
        .where(ops_run_items.c.run_id == run_id, ops_run_items.c.status == "error")
        .order_by(ops_run_items.c.seq).limit(FIRST_ERRORS)
    ).all()
    return [{"tenant_id": r.tenant_id, "error": r.error} for r in rows]


def _payload(conn: Connection, event: str, job_id: str, run: Any, now: datetime,
             text: str | None = None) -> dict[str, Any]:
    first = _first_errors(conn, run.id) if run is not None else []
    body: dict[str, Any] = {
        "event": event,
        "job": job_id,
        "run_id": None if run is None else run.id,
        "status": None if run is None else run.status,
        "scheduled_for": None if run is None else iso(run.scheduled_for),
        "errors": 0 if run is None else int(run.errors or 0),
        "error": None if run is None else run.error,
        "first_errors": first,
        "summary": {} if run is None else dict(run.summary or {}),
        "at": iso_z(now),
    }
    body["text"] = text or _text(body)
    return body


def _text(p: dict[str, Any]) -> str:
    job, run = p["job"], p["run_id"]
    if p["event"] == "job_recovered":
        return f"{job} recovered: run {run} succeeded"
    if p["status"] == "missed":
        return f"{job} is failing: its slot {p['scheduled_for']} was missed ({p['error']})"
    words = f"{job} is failing: run {run} ended {p['status']}"
    if p["errors"]:
        tenants = "; ".join(f"{e['tenant_id']}: {e['error']}" for e in p["first_errors"])
        more = "" if p["errors"] <= len(p["first_errors"]) else ", ..."
        words += f" with {p['errors']} failed item{'s' if p['errors'] != 1 else ''} ({tenants}{more})"
    if p["error"]:
        words += f": {p['error']}"
    return words


def _newer_verdict(conn: Connection, job_id: str, run_id: int) -> bool:
    return conn.execute(
        select(ops_runs.c.id).where(ops_runs.c.job_id == job_id, ops_runs.c.id > run_id,
                                    ops_runs.c.status.in_(VERDICTS)).limit(1)
    ).first() is not None


def _verdict(run: Any, retry_left: bool | None, settings: Settings) -> str | None:
    status = run.status
    if status == RunStatus.SUCCEEDED:
        return "ok"
    if status in RETRIED_STATUSES:
        if retry_left is None:
            # Whether the slot runs again (a slot's first interruption, or `retries`):
            # the runner that then decides not to retry after all (paused, past grace)
            # reports it here with retry_left=False. Manual and HTTP runs have none.
            job = settings.jobs.get(run.job_id)
            retry_left = job is not None and retry_at(run, job) is not None
        return None if retry_left else "failing"
    if status in FAILING_STATUSES:
        return "failing"
    return None  # running, skipped


def _judge(engine: Engine, settings: Settings, run_id: int, retry_left: bool | None,
           now: datetime) -> str | None:
    try:
        with transaction(engine) as conn:
            run = conn.execute(select(ops_runs).where(ops_runs.c.id == run_id)).first()
            if run is None:
                return None
            verdict = _verdict(run, retry_left, settings)
            if verdict is None or _newer_verdict(conn, run.job_id, run.id):
                return None
            job_id = run.job_id
            _ensure_state(conn, job_id)
            state = ops_job_state.c
            if verdict == "failing":
                changed = conn.execute(
                    update(ops_job_state).where(state.job_id == job_id, state.alert_state == "ok")
                    .values(alert_state="failing", failing_since=now)
                ).rowcount
                event = "job_failing"
            else:
                conn.execute(
                    update(ops_job_state)
                    .where(state.job_id == job_id, state.overdue_since.is_not(None))
                    .values(overdue_since=None)
                )
                changed = conn.execute(
                    update(ops_job_state)
                    .where(state.job_id == job_id, state.alert_state == "failing")
                    .values(alert_state="ok", failing_since=None)
                ).rowcount
                event = "job_recovered"
            job = settings.jobs.get(job_id)
            if not changed or (job is not None and not job.alerts):
                return None
            _record(conn, settings, event=event, key=f"{event}:{job_id}:{run.id}",
                    job_id=job_id, run_id=run.id, payload=_payload(conn, event, job_id, run, now),
                    now=now)
            return event
    except _Duplicate:
        return None


def run_ended(engine: Engine, settings: Settings | None, run_id: int, *,
              retry_left: bool | None = None, now: datetime | None = None) -> str | None:
    """Judge a run whose outcome is committed; raise `job_failing` or `job_recovered` when
    the job's state changes. Returns the event raised, if any. Never raises: alerting must
    not fail a run, so a problem is logged and the run goes on."""
    if settings is None:
        return None
    try:
        event = _judge(engine, settings, run_id, retry_left, now or utc_now())
    except Exception as exc:
        reason = exc.message if isinstance(exc, OpsError) else f"{type(exc).__name__}: {exc}"
        log.error("alert state of run %s not updated: %s", run_id, reason)
        return None
    if event is not None:
        # An expected event, not a problem of this process: the runner's log shows it (it
        # logs at info), while a CLI command or the demo's simulated history stays quiet.
        log.info("%s raised by run %s", event, run_id)
    return event


def slots_missed(engine: Engine, settings: Settings | None, job_id: str,
                 slots: Sequence[datetime]) -> str | None:
    """Slots of `job_id` were just recorded missed: judge the newest of them."""
    if settings is None or not slots:
        return None
    try:
        with transaction(engine) as conn:
            run_id = conn.execute(
                select(ops_runs.c.id).where(
                    ops_runs.c.job_id == job_id, ops_runs.c.scheduled_for.in_(list(slots)),
                    ops_runs.c.status == RunStatus.MISSED,
                ).order_by(ops_runs.c.id.desc()).limit(1)
            ).scalar_one_or_none()
    except Exception as exc:
        log.error("alert state of %s not updated: %s", job_id, exc)
        return None
    return None if run_id is None else run_ended(engine, settings, int(run_id))


# --- overdue ---------------------------------------------------------------------------


def period(schedule: Any, now: datetime) -> timedelta:
    """The gap between a schedule's last two slots at or before `now`."""
    for window in (timedelta(minutes=2), timedelta(hours=3), timedelta(days=3),
                   timedelta(days=16), timedelta(days=64), timedelta(days=400)):
        slots = schedule.previous_slots(now, now - window)
        if len(slots) >= 2:
            gap: timedelta = slots[-1] - slots[-2]
            return gap
    ahead = schedule.next_slots(now, 2)
    return ahead[1] - ahead[0] if len(ahead) == 2 else timedelta(days=366)


def check_overdue(engine: Engine, settings: Settings, now: datetime) -> list[str]:
    """Open an overdue episode (and raise `job_overdue`) for each enabled, unpaused job
    with no successful run for longer than its period plus `overdue_after`. Returns the
    jobs for which this call raised it."""
    raised: list[str] = []
    for job_id, job in settings.jobs.items():
        if not job.enabled:
            continue
        try:
            with transaction(engine) as conn:
                if _overdue_one(conn, settings, job_id, now):
                    raised.append(job_id)
        except _Duplicate:
            continue
    for job_id in raised:
        log.warning("job_overdue raised for %s", job_id)
    return raised


def _overdue_one(conn: Connection, settings: Settings, job_id: str, now: datetime) -> bool:
    job = settings.job(job_id)
    state = conn.execute(select(ops_job_state).where(ops_job_state.c.job_id == job_id)).first()
    if state is None or state.paused or state.overdue_since is not None:
        return False
    runs = ops_runs.c
    last_ok = conn.execute(
        select(runs.id, runs.finished_at).where(runs.job_id == job_id, runs.status == "succeeded")
        .order_by(runs.id.desc()).limit(1)
    ).first()
    if last_ok is not None:
        since = last_ok.finished_at
    else:  # never succeeded: counted from the job's first run
        since = conn.execute(
            select(runs.created_at).where(runs.job_id == job_id).order_by(runs.id).limit(1)
        ).scalar_one_or_none()
        if since is None:
            return False
    marks = [t for t in (since, state.resumed_at, state.schedule_since) if t is not None]
    since = max(marks)
    after = job.overdue_after if job.overdue_after is not None else settings.alerts.overdue_after
    due_by = since + period(job.schedule, now) + after
    if now <= due_by:
        return False
    # The episode starts when the job became overdue, not when a runner noticed: a runner
    # started a day later must not show "overdue since 20s ago". (The period is the one at
    # `now`; for a schedule with uneven gaps, e.g. weekdays only, the moment is approximate.)
    changed = conn.execute(
        update(ops_job_state)
        .where(ops_job_state.c.job_id == job_id, ops_job_state.c.overdue_since.is_(None))
        .values(overdue_since=due_by)
    ).rowcount
    if not changed or not job.alerts:
        return False
    newest = conn.execute(
        select(ops_runs).where(runs.job_id == job_id).order_by(runs.id.desc()).limit(1)
    ).first()
    text = (f"{job_id} is overdue: no successful run since {iso_z(since)}"
            if last_ok is not None else f"{job_id} is overdue: no successful run since "
            f"{iso_z(since)}, when it was first scheduled")
    episode = "never" if last_ok is None else str(last_ok.id)
    _record(conn, settings, event="job_overdue", key=f"job_overdue:{job_id}:{episode}",
            job_id=job_id, run_id=None if newest is None else newest.id,
            payload=_payload(conn, "job_overdue", job_id, newest, now, text), now=now)
    return True


# --- delivering -------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    ok: bool
    retry: bool = False  # a temporary failure: try again later
    error: str | None = None


def webhook_body(url: str, payload: dict[str, Any]) -> bytes:
    doc = {"text": payload.get("text", "")} if is_slack(url) else payload
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(url: str, payload: dict[str, Any], *, secret: str | None,
         timeout: float) -> Outcome:
    """POST one event to one webhook. Never raises; errors never quote the URL."""
    import ssl  # here, with http.client: only a run that alerts needs them
    from http.client import HTTPConnection, HTTPException, HTTPSConnection

    body = webhook_body(url, payload)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if secret:
        headers["X-StoreFlow-Signature"] = signature(secret, body)
        headers["X-StoreFlow-Event"] = str(payload.get("event", ""))
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
        if parts.scheme not in ("http", "https") or not host:
            return Outcome(False, False, "not an http:// or https:// URL")
        conn: HTTPConnection = (
            HTTPSConnection(host, port, timeout=timeout, context=ssl.create_default_context())
            if parts.scheme == "https" else HTTPConnection(host, port, timeout=timeout))
        try:
            conn.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                         body=body, headers=headers)
            resp = conn.getresponse()
            resp.read(65536)
            code = resp.status
        finally:
            conn.close()
    except TimeoutError:
        return Outcome(False, True, f"timed out after {timeout:g} s")
    except (OSError, HTTPException) as exc:
        reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
        return Outcome(False, True, scrub(f"connection failed: {reason}", url))
    except ValueError as exc:  # a port that is not a number, a bad character
        return Outcome(False, False, scrub(f"bad URL: {type(exc).__name__}", url))
    if 200 <= code < 300:
        return Outcome(True)
    # A redirect is not followed (it would turn the POST into a GET): it is an answer.
    return Outcome(False, code == 429 or code >= 500, f"HTTP {code}")


def queue_email(conn: Connection, alert_id: int, address: str, payload: dict[str, Any],
                now: datetime) -> None:
    from jobs import outbox

    context = {"event": payload.get("event"), "job": payload.get("job"),
               "text": payload.get("text", ""), "run_id": payload.get("run_id"),
               "status": payload.get("status"), "at": payload.get("at"),
               "first_errors": payload.get("first_errors") or []}
    email = outbox.render(outbox.ALERT_KIND, idempotency_key=f"alert:{alert_id}:{address}",
                          tenant_id=None, recipient=address, context=context)
    run_id = payload.get("run_id")
    outbox.queue(conn, email, now=now, run_id=run_id if isinstance(run_id, int) else None)


def backoff(cfg: AlertsConfig, attempts: int) -> timedelta:
    """The wait after the `attempts`-th failed attempt: 2 s, 4 s, 8 s ... at most backoff_max."""
    return timedelta(seconds=min(cfg.backoff_max, cfg.backoff_base * 2 ** max(0, attempts - 1)))


@dataclass
class DeliveryResult:
    sent: int = 0
    retried: int = 0
    dead: int = 0
    outcomes: list[tuple[str, str, str | None]] = field(default_factory=list)  # label, status, error

    def to_json(self) -> dict[str, int]:
        return {"sent": self.sent, "retried": self.retried, "dead": self.dead}


@dataclass(frozen=True)
class _Row:
    id: int
    alert_id: int
    kind: str
    target: str = field(repr=False)
    label: str = ""
    attempts: int = 0
    payload: dict[str, Any] = field(default_factory=dict)


def _claim(engine: Engine, worker_id: str, now: datetime, lease: timedelta, size: int,
           after_id: int, alert_id: int | None = None) -> list[_Row]:
    d, a = ops_alert_deliveries.c, ops_alerts.c
    with transaction(engine) as conn:
        q = (
            select(d.id).where(d.status == "pending", d.id > after_id,
                               or_(d.claimed_until.is_(None), d.claimed_until <= now))
            .order_by(d.id).limit(size)
        )
        q = q.where(d.alert_id == alert_id) if alert_id is not None else q.where(
            d.next_attempt_at <= now)
        if not is_sqlite(conn):
            q = q.with_for_update(skip_locked=True)
        ids = list(conn.execute(q).scalars())
        if not ids:
            return []
        conn.execute(update(ops_alert_deliveries).where(d.id.in_(ids))
                     .values(claimed_by=worker_id, claimed_until=now + lease))
        rows = conn.execute(
            select(d.id, d.alert_id, d.kind, d.target, d.target_label, d.attempts, a.payload)
            .select_from(ops_alert_deliveries.join(ops_alerts, ops_alerts.c.id == d.alert_id))
            .where(d.id.in_(ids)).order_by(d.id)
        ).all()
    return [_Row(r.id, r.alert_id, r.kind, r.target, r.target_label, r.attempts,
                 dict(r.payload or {})) for r in rows]


def _mark(engine: Engine, marks: Sequence[tuple[_Row, dict[str, Any]]],
          worker_id: str, untried: Sequence[int] = ()) -> set[int]:
    """Write the outcomes of a batch in one transaction (one commit, not one per delivery),
    each on the condition that the row is still ours, and hand back the rows not tried;
    returns the ids written."""
    d = ops_alert_deliveries.c
    written: set[int] = set()
    with transaction(engine) as conn:
        if untried:
            conn.execute(update(ops_alert_deliveries)
                         .where(d.id.in_(list(untried)), d.claimed_by == worker_id)
                         .values(claimed_by=None, claimed_until=None))
        for row, values in marks:
            if conn.execute(
                update(ops_alert_deliveries)
                .where(d.id == row.id, d.status == "pending", d.claimed_by == worker_id)
                .values(claimed_by=None, claimed_until=None, **values)
            ).rowcount:
                written.add(row.id)
    return written


def _renew(engine: Engine, rows: Sequence[_Row], worker_id: str, until: datetime) -> set[int]:
    d = ops_alert_deliveries.c
    ids = [r.id for r in rows]
    with transaction(engine) as conn:
        conn.execute(update(ops_alert_deliveries)
                     .where(d.id.in_(ids), d.status == "pending", d.claimed_by == worker_id)
                     .values(claimed_until=until))
        return set(conn.execute(select(d.id).where(d.id.in_(ids), d.claimed_by == worker_id))
                   .scalars())


def _attempt(engine: Engine, cfg: AlertsConfig, row: _Row, now: datetime) -> Outcome:
    if row.kind == "email":
        try:
            with transaction(engine) as conn:
                queue_email(conn, row.alert_id, row.target, row.payload, now)
        except OpsError as exc:
            return Outcome(False, False, exc.message)
        return Outcome(True)
    return post(row.target, row.payload, secret=cfg.webhook_secret, timeout=cfg.timeout)


def deliver_due(engine: Engine, settings: Settings, *, worker_id: str, clock: Clock = utc_now,
                stop: threading.Event | None = None, alert_id: int | None = None,
                retries: bool = True, batch_size: int = 50,
                parallel: int = PARALLEL) -> DeliveryResult:
    """Attempt every delivery due now (or those of one alert). With retries=False a failed
    attempt is final (`alerts test`). Up to `parallel` targets are served at once, so one
    that takes its whole timeout does not hold up the others."""
    cfg = settings.alerts
    lease = timedelta(seconds=max(cfg.lease, 2 * cfg.timeout))
    result = DeliveryResult()
    after_id = 0

    def one(row: _Row, claimed_at: datetime) -> tuple[_Row, Outcome, dict[str, Any]] | None:
        if stop is not None and stop.is_set():
            return None
        now = clock()
        # A slow batch: renew the lease of a row before its attempt, or leave it if lost.
        if now - claimed_at > lease / 2 and not _renew(engine, [row], worker_id, now + lease):
            return None
        outcome = _attempt(engine, cfg, row, now)
        attempts = row.attempts + 1
        done = clock()
        if outcome.ok:
            values: dict[str, Any] = {"status": "sent", "attempts": attempts, "sent_at": done,
                                      "last_error": None}
        elif outcome.retry and retries and attempts < cfg.max_attempts:
            values = {"attempts": attempts, "last_error": outcome.error,
                      "next_attempt_at": done + backoff(cfg, attempts)}
        else:
            values = {"status": "dead", "attempts": attempts, "last_error": outcome.error}
        return row, outcome, values

    while not (stop is not None and stop.is_set()):
        claimed_at = clock()
        batch = _claim(engine, worker_id, claimed_at, lease, batch_size, after_id, alert_id)
        if not batch:
            break
        after_id = batch[-1].id
        # A target that failed for now (down, timing out, 5xx) gets no more of this batch:
        # its other rows are handed back untried, for the next pass, in order.
        tried = [t for t in _in_threads(partial(one, claimed_at=claimed_at), batch, parallel,
                                        give_up=lambda t: t is None or not t[1].ok)
                 if t is not None]
        untried = sorted({r.id for r in batch} - {row.id for row, _, _ in tried})
        # Marked once the batch is through: a runner that dies before leaves the batch to
        # be sent again when its lease ends (at least once, never lost).
        written = _mark(engine, [(row, values) for row, _, values in tried], worker_id, untried)
        for row, outcome, values in tried:
            if row.id not in written:
                continue
            status = values.get("status", "retry")
            result.outcomes.append((row.label, status, outcome.error))
            name = "retried" if status == "retry" else status
            setattr(result, name, getattr(result, name) + 1)
    return result


def _in_threads(fn: Callable[[_Row], T], rows: Sequence[_Row], n: int,
                give_up: Callable[[T | None], bool] = lambda _: False) -> list[T | None]:
    """fn over rows, results in rows' order: one target's rows one after the other, in
    order (a receiver sees `job_failing` before `job_recovered`), up to n targets at once;
    a target's remaining rows are left (None) once `give_up` says so of one's result.
    Daemon threads, not a ThreadPoolExecutor (whose threads are joined at interpreter
    exit): a POST hanging until its timeout must not hold up a runner that shuts down."""
    results: list[T | None] = [None] * len(rows)
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.target, []).append(i)

    def run(indexes: list[int]) -> None:
        for i in indexes:
            try:
                results[i] = fn(rows[i])
            except Exception as exc:  # one delivery's bug must not lose the others
                log.error("alert delivery %s failed: %s", rows[i].id, type(exc).__name__)
            if give_up(results[i]):
                return

    if n <= 1 or len(groups) <= 1:
        for indexes in groups.values():
            run(indexes)
        return results
    feed = iter(list(groups.values()))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                indexes = next(feed, None)
            if indexes is None:
                return
            run(indexes)

    threads = [threading.Thread(target=work, name="alert-delivery", daemon=True)
               for _ in range(min(n, len(groups)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


EventSink = Callable[..., None]  # (event, level, **fields), like the runner's log


class Deliverer:
    """The runner's delivery thread: drains due deliveries, sleeps, again, until stopped.
    Its own thread, so a target that takes its full timeout never delays a slot."""

    def __init__(self, engine: Engine, settings: Settings, worker_id: str, *,
                 stop: threading.Event, on_event: EventSink | None = None,
                 clock: Clock = utc_now) -> None:
        self.engine, self.settings, self.worker_id = engine, settings, worker_id
        self.stop_event, self.on_event, self.clock = stop, on_event, clock
        self.thread = threading.Thread(target=self._loop, name="alert-delivery", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def _say(self, event: str, level: str, **fields: Any) -> None:
        if self.on_event is not None:
            self.on_event(event, level, **fields)

    def _loop(self) -> None:
        interval = self.settings.alerts.poll_interval
        while not self.stop_event.is_set():
            try:
                result = deliver_due(self.engine, self.settings, worker_id=self.worker_id,
                                     clock=self.clock, stop=self.stop_event)
                for label, status, error in result.outcomes:
                    level = {"sent": "info", "retry": "warning"}.get(status, "error")
                    self._say(f"alert-{'delivered' if status == 'sent' else status}", level,
                              target=label, error=error)
            except Exception as exc:  # a delivery problem must not end the thread
                reason = exc.message if isinstance(exc, OpsError) else f"{type(exc).__name__}: {exc}"
                self._say("alert-delivery-failed", "error", error=reason)
            self.stop_event.wait(interval)


# --- alerts test ----------------------------------------------------------------------------


def send_test(engine: Engine, settings: Settings, *, worker_id: str, by: str,
              now: datetime | None = None) -> DeliveryResult:
    """Record an `alert_test` event and attempt each of its deliveries once, here."""
    now = now or utc_now()
    payload: dict[str, Any] = {
        "event": "alert_test", "job": None, "run_id": None, "status": None,
        "scheduled_for": None, "errors": 0, "error": None, "first_errors": [], "summary": {},
        "at": iso_z(now), "text": f"StoreFlow Ops test alert, sent by {by}",
    }
    with transaction(engine) as conn:
        alert_id = _record(conn, settings, event="alert_test",
                           key=f"alert_test:{iso_z(now)}:{worker_id}", job_id=None,
                           run_id=None, payload=payload, now=now)
    return deliver_due(engine, settings, worker_id=worker_id, clock=utc_now,
                       alert_id=alert_id, retries=False)


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    target: str  # the label: scheme and host, or the email address
    kind: str
    status: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None = None  # while pending

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "status": self.status, "attempts": self.attempts,
                "last_error": self.last_error}


@dataclass(frozen=True)
class AlertRecord:
    id: int
    event: str
    job_id: str | None
    run_id: int | None
    at: datetime
    text: str
    deliveries: tuple[Delivery, ...]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "event": self.event, "job": self.job_id, "run_id": self.run_id,
                "at": iso(self.at), "deliveries": [d.to_json() for d in self.deliveries]}


def list_alerts(engine: Engine, *, limit: int = 50) -> list[AlertRecord]:
    """Events newest first, each with its deliveries (targets as labels only)."""
    a, d = ops_alerts.c, ops_alert_deliveries.c
    with transaction(engine) as conn:
        alerts = conn.execute(select(ops_alerts).order_by(a.id.desc()).limit(limit)).all()
        ids = [r.id for r in alerts]
        by_alert: dict[int, list[Delivery]] = {}
        if ids:
            for r in conn.execute(select(d.alert_id, d.target_label, d.kind, d.status,
                                         d.attempts, d.last_error, d.next_attempt_at)
                                  .where(d.alert_id.in_(ids)).order_by(d.id)):
                by_alert.setdefault(r.alert_id, []).append(
                    Delivery(r.target_label, r.kind, r.status, r.attempts, r.last_error,
                             r.next_attempt_at if r.status == "pending" else None))
    return [AlertRecord(r.id, r.event, r.job_id, r.run_id, r.at,
                        str((r.payload or {}).get("text", "")), tuple(by_alert.get(r.id, ())))
            for r in alerts]


# Deliveries that need a person: `dead` ones of events raised within UNDELIVERED_WINDOW
# (older ones are history, still listed by `alerts`), and `pending` ones older than
# PENDING_TOO_LONG (no runner delivers them, or the target keeps failing).
UNDELIVERED_WINDOW = timedelta(days=1)
PENDING_TOO_LONG = timedelta(minutes=10)


@dataclass(frozen=True)
class Undelivered:
    dead: int = 0
    waiting: int = 0  # pending for longer than PENDING_TOO_LONG
    oldest: datetime | None = None  # when the oldest of these events was raised

    @property
    def total(self) -> int:
        return self.dead + self.waiting


def undelivered(engine: Engine, now: datetime) -> Undelivered:
    """The alert deliveries that did not reach their target (one query: the jobs screen
    reads it on every refresh)."""
    a, d = ops_alerts.c, ops_alert_deliveries.c
    q = (
        select(d.status, func.count(), func.min(a.at))
        .select_from(ops_alert_deliveries.join(ops_alerts, a.id == d.alert_id))
        .where(or_(and_(d.status == "dead", a.at >= now - UNDELIVERED_WINDOW),
                   and_(d.status == "pending", a.at < now - PENDING_TOO_LONG)))
        .group_by(d.status)
    )
    with transaction(engine) as conn:
        rows = conn.execute(q).all()
    counts = {str(r[0]): int(r[1]) for r in rows}
    oldest = min((r[2] for r in rows if r[2] is not None), default=None)
    return Undelivered(counts.get("dead", 0), counts.get("pending", 0), oldest)

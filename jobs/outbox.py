"""Queueing emails: render a template, validate the recipient, insert one outbox row.

Jobs never talk SMTP. They write into ops_email_outbox inside the same
transaction as the status change the email announces, keyed by an idempotency
key so a second run queues nothing twice. The sender drains it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, literal, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import Select

from jobs.db import insert_ignore, ops_email_outbox, ops_email_search, transaction
from jobs.errors import InvalidRecipientError, UsageError
from jobs.text import one_line
from jobs.timeutil import iso

if TYPE_CHECKING:
    from jinja2 import Environment

KINDS = ("subscription_expired", "subscription_suspended", "renewal_reminder", "payment_due")
ALERT_KIND = "alert"  # an alert event to an operator (jobs.alerts), not a tenant email


@dataclass(frozen=True)
class Email:
    """A rendered email, ready to queue."""

    idempotency_key: str
    tenant_id: str | None
    kind: str
    recipient: str
    subject: str
    body_text: str
    body_html: str


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    idempotency_key: str
    tenant_id: str | None
    kind: str
    recipient: str
    subject: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    body_text: str
    body_html: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "tenant_id": self.tenant_id,
            "to": self.recipient,
            "subject": self.subject,
            "status": self.status,
            "attempts": self.attempts,
            "idempotency_key": self.idempotency_key,
            "created_at": iso(self.created_at),
            "sent_at": iso(self.sent_at),
            "last_error": self.last_error,
        }


@dataclass(frozen=True)
class OutboxPage:
    """One page of a search, newest first; `next_before` asks for the page after it."""

    entries: tuple[OutboxEntry, ...]
    next_before: int | None  # None: this is the last page


@cache
def _env() -> Environment:
    """The templates, loaded when the first email is rendered: Jinja2 and the address
    checker cost the commands that only list runs or the outbox a few hundredths of a
    second of imports."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(
        loader=PackageLoader("jobs", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def check_recipient(address: str) -> str:
    """The normalised address, or InvalidRecipientError with the reason."""
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise InvalidRecipientError(f"invalid recipient {address!r}: {exc}") from None


def render(kind: str, *, idempotency_key: str, tenant_id: str | None, recipient: str,
           context: Mapping[str, Any]) -> Email:
    if kind not in KINDS and kind != ALERT_KIND:
        raise ValueError(f"unknown email kind {kind!r}")
    to = check_recipient(recipient)
    # Subjects become headers: no CR, LF or other line breaks from tenant data may reach them.
    subject = one_line(_env().get_template(f"{kind}.subject.txt").render(**context))
    text = _env().get_template(f"{kind}.txt").render(**context)
    html = _env().get_template(f"{kind}.html").render(subject=subject, **context)
    return Email(idempotency_key, tenant_id, kind, to, subject, text, html)


def search_text(recipient: str, subject: str, tenant_id: str | None) -> str:
    """What the outbox search matches an email on (ops_email_search)."""
    return f"{recipient} {subject} {tenant_id or ''}".lower()


def queue(conn: Connection, email: Email, *, now: datetime, run_id: int | None) -> bool:
    """Insert the email unless its key exists; True when it was queued now."""
    queued = bool(
        insert_ignore(
            conn,
            ops_email_outbox,
            [
                {
                    "idempotency_key": email.idempotency_key,
                    "tenant_id": email.tenant_id,
                    "kind": email.kind,
                    "recipient": email.recipient,
                    "subject": email.subject,
                    "body_text": email.body_text,
                    "body_html": email.body_html,
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                    "run_id": run_id,
                }
            ],
            ["idempotency_key"],
        )
    )
    if queued:
        text = search_text(email.recipient, email.subject, email.tenant_id)
        conn.execute(ops_email_search.insert().from_select(
            ["email_id", "text"],
            select(ops_email_outbox.c.id, literal(text)).where(
                ops_email_outbox.c.idempotency_key == email.idempotency_key)))
    return queued


def existing_keys(conn: Connection, keys: Iterable[str]) -> set[str]:
    """Which of these idempotency keys are already in the outbox (one query per 500 keys)."""
    keys = list(dict.fromkeys(keys))
    found: set[str] = set()
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        found.update(
            conn.execute(
                select(ops_email_outbox.c.idempotency_key).where(
                    ops_email_outbox.c.idempotency_key.in_(chunk)
                )
            ).scalars()
        )
    return found


def _entry(row: Any) -> OutboxEntry:
    return OutboxEntry(
        id=row.id,
        idempotency_key=row.idempotency_key,
        tenant_id=row.tenant_id,
        kind=row.kind,
        recipient=row.recipient,
        subject=row.subject,
        status=row.status,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        created_at=row.created_at,
        sent_at=row.sent_at,
        body_text=row.body_text,
        body_html=row.body_html,
    )


def list_entries(engine: Engine, *, status: str | None = None, tenant_id: str | None = None,
                 limit: int = 200, offset: int = 0) -> list[OutboxEntry]:
    q = select(ops_email_outbox).order_by(ops_email_outbox.c.id.desc()).limit(limit).offset(offset)
    if status:
        q = q.where(ops_email_outbox.c.status == status)
    if tenant_id:
        q = q.where(ops_email_outbox.c.tenant_id == tenant_id)
    with transaction(engine) as conn:
        return [_entry(r) for r in conn.execute(q)]


# A search by a part of a tenant's name looks at this many matching tenants at most.
TENANT_MATCHES = 200


def search(engine: Engine, *, text: str = "", status: str | None = None,
           tenant_id: str | None = None, before: int | None = None,
           limit: int = 100) -> OutboxPage:
    """The newest emails (below id `before`) of `status` and `tenant_id`, whose recipient,
    subject, tenant id or tenant name contains `text` (any case).

    Paged by key, never by OFFSET: each page starts below the last id shown, so page 500
    costs what page 1 costs. A tenant's and a status's emails are read in id order from
    their indexes; a text search reads ops_email_search, a narrow lower-case copy of
    each email's recipient, subject and tenant id, plus the ids of the tenants whose
    name matches."""
    o, s = ops_email_outbox, ops_email_search
    needle = text.strip().lower()

    def page(q: Select[Any], key: Any) -> Select[Any]:
        q = q.order_by(key.desc()).limit(limit + 1)
        if before is not None:
            q = q.where(key < before)
        if status:
            q = q.where(o.c.status == status)
        if tenant_id:
            q = q.where(o.c.tenant_id == tenant_id)
        return q

    if not needle:
        queries = [page(select(o), o.c.id)]
    else:
        # Two reads, each in key order from its own index, merged here: one OR over both
        # would make the database read every match of both before the first page.
        queries = [page(select(o).select_from(s.join(o, o.c.id == s.c.email_id))
                        .where(s.c.text.contains(needle, autoescape=True)), s.c.email_id)]
        named = _tenants_named(engine, needle)
        if named:
            queries.append(page(select(o).where(o.c.tenant_id.in_(named)), o.c.id))
    with transaction(engine) as conn:
        found = {r.id: r for q in queries for r in conn.execute(q)}
    rows = [_entry(found[i]) for i in sorted(found, reverse=True)[: limit + 1]]
    more = len(rows) > limit
    rows = rows[:limit]
    return OutboxPage(tuple(rows), rows[-1].id if more and rows else None)


def _tenants_named(engine: Engine, needle: str) -> list[str]:
    """Ids of tenants whose name contains `needle`; none when the database has no
    platform tables (the outbox is still readable there)."""
    from jobs.tenants import search_tenants

    try:
        return [t.id for t in search_tenants(engine, needle, limit=TENANT_MATCHES)]
    except UsageError:
        return []


def get_entry(engine: Engine, email_id: int) -> OutboxEntry | None:
    with transaction(engine) as conn:
        row = conn.execute(select(ops_email_outbox).where(ops_email_outbox.c.id == email_id)
                           ).first()
    return None if row is None else _entry(row)


def counts_by_status(engine: Engine) -> dict[str, int]:
    with transaction(engine) as conn:
        rows = conn.execute(
            select(ops_email_outbox.c.status, func.count()).group_by(ops_email_outbox.c.status)
        ).all()
    return {status: int(n) for status, n in rows}

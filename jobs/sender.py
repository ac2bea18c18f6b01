"""The sender: drains ops_email_outbox over SMTP.

Jobs only queue emails (jobs.outbox). `drain()` delivers the due ones:

- It claims due rows (`status = 'pending' AND next_attempt_at <= now`, lease free or
  expired) in batches of `outbox.batch_size`. A claim writes `claimed_by` and
  `claimed_until` (a lease of `outbox.lease` seconds) and COMMITS before a single byte
  goes to the SMTP server.
  On PostgreSQL the ids are picked with `SELECT ... FOR UPDATE SKIP LOCKED`, so two
  senders never pick the same row and never wait for each other; on SQLite the claim
  runs in a BEGIN IMMEDIATE transaction (what jobs.db.transaction does there), which
  makes it single-writer. Either way a row is held by one sender until its lease ends.
- A batch can outlast its lease (a slow server), and then another sender may claim
  the rows not sent yet. So right before each message the sender renews that row's
  lease, on the condition that the row is still pending and still claimed by this
  sender; a row it lost is skipped, not sent. Every mark and hand-back carries the same
  condition, so a sender never overwrites the outcome of a row another sender holds.
  `sender_id` must therefore be unique among live senders.
- Each batch goes over one SMTP connection, paced by `outbox.rate_limit` messages per
  second (0: unlimited). Each message is marked the moment the server answers: `sent`
  (sent_at, message_id); a temporary failure (4xx, connection refused or lost, timeout)
  counts an attempt and waits `min(backoff_max, backoff_base * 2**(attempts-1))`, less
  up to 20 % jitter so a crowd of failures does not come back in one burst; the email
  is `dead` once attempts reach `outbox.max_attempts`; a permanent rejection (5xx) is
  `failed` at once, with the server's answer in last_error.
- When the server cannot be reached (connect, TLS or login fails) the batch in hand
  counts that attempt and the drain stops: no point knocking on a closed door 100 rows
  at a time. `DrainResult.unreachable` says why.

Delivery is at-least-once. If the process dies after the server accepted a message
and before the row is marked sent, the row is still `pending` with a lease; when the
lease runs out another drain claims it and sends it again. That is the least bad
outcome: the other choice, marking before sending, turns the same crash into a lost
email, and a suspension notice that never arrives costs a store owner far more than a
second copy. The copy carries the same `Message-ID` (derived from the idempotency key),
so mail clients and most servers fold the two into one. Nothing else sends twice: a
row is only sent by the sender holding its lease, checked right before sending, and a
row whose mark failed is the only one that can come back. (The check covers the send
that follows as long as one message takes less than the lease. Marks are committed
without waiting for the disk, so a crash of the database server itself can also forget
the last marks: the same resend, never a loss.)

The password in SMTP_URL never reaches a message or a log line (jobs.redaction.redact).
"""

from __future__ import annotations

import hashlib
import logging
import random
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from jobs import audit
from jobs.db import first_line, is_sqlite, ops_email_outbox, transaction
from jobs.errors import ConfigError, UnreachableError, UsageError
from jobs.humanize import plural
from jobs.redaction import redact
from jobs.settings import OutboxConfig, Settings
from jobs.text import one_line, parse_flag

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=OutboxConfig.lease)  # the default `outbox.lease`
NO_SMTP = "SMTP_URL is not set"
MESSAGE_ID_DOMAIN = "storeflow-ops"


class _HeaderClasses(HeaderRegistry):
    """The stdlib registry builds a new class each time it makes a header; at thousands
    of messages a drain that adds up. The classes hold no state: build each once."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


# 7-bit bodies (quoted-printable or base64 when needed) pass every relay, 8BITMIME or not.
POLICY = SMTP.clone(cte_type="7bit", header_factory=_HeaderClasses())

Security = Literal["plain", "starttls", "ssl"]
_DEFAULT_PORT: dict[Security, int] = {"plain": 25, "starttls": 587, "ssl": 465}


# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    security: Security = "plain"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 30.0

    @property
    def display(self) -> str:
        """Where mail goes, fit for a log line: never the password."""
        scheme = "smtps" if self.security == "ssl" else "smtp"
        user = f"{quote(self.username, safe='')}@" if self.username else ""
        tls = "?starttls=1" if self.security == "starttls" else ""
        return f"{scheme}://{user}{self.host}:{self.port}{tls}"


def parse_smtp_url(url: str) -> SmtpConfig:
    """`smtp://user:pass@host:port`, `smtps://…` (implicit TLS), `smtp://…?starttls=1`.

    User and password are URL-decoded. Default ports: 25 plain, 587 with STARTTLS,
    465 for smtps. `?timeout=SECONDS` sets the socket timeout (default 30).
    """

    def bad(reason: str) -> ConfigError:
        return ConfigError("environment", "SMTP_URL", f"{redact(url)!r}: {reason}")

    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:
        raise bad(f"not a URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("smtp", "smtps"):
        raise bad("expected smtp://user:pass@host:port or smtps://…")
    if not parts.hostname:
        raise bad("no host")
    if parts.path not in ("", "/") or parts.fragment:
        raise bad("unexpected path; write smtp://user:pass@host:port")
    try:
        port = parts.port
    except ValueError:
        raise bad("the port must be a number from 1 to 65535") from None
    security: Security = "ssl" if scheme == "smtps" else "plain"
    timeout = 30.0
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "starttls":
            flag = parse_flag(value)
            if flag is None:
                raise bad(f"starttls={value!r}: expected 1 or 0")
            if flag:
                if security == "ssl":
                    raise bad("smtps:// is already TLS; drop ?starttls=1")
                security = "starttls"
        elif key == "timeout":
            try:
                timeout = float(value)
            except ValueError:
                raise bad(f"timeout={value!r}: expected seconds") from None
            if not timeout > 0:
                raise bad("timeout must be more than 0 seconds")
        else:
            raise bad(f"unknown option {key!r}; known: starttls, timeout")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password is not None and not username:
        raise bad("a password without a user name")
    return SmtpConfig(
        host=parts.hostname,
        port=port or _DEFAULT_PORT[security],
        security=security,
        username=username,
        password=password,
        timeout=timeout,
    )


def _envelope_sender(mail_from: str) -> str:
    _name, addr = parseaddr(mail_from)
    if "\r" in mail_from or "\n" in mail_from or "@" not in addr:
        raise ConfigError("environment", "MAIL_FROM",
                          f"{mail_from!r} is not an address like 'StoreFlow <no-reply@example.com>'")
    return addr


def check_mail_settings(settings: Settings) -> SmtpConfig | None:
    """The SMTP server delivery will use, with SMTP_URL and MAIL_FROM checked: ConfigError
    (exit 2) naming the variable and the reason, never the password. None when SMTP_URL
    is not set: nothing is sent then, and MAIL_FROM is not used.

    The runner and `outbox send` call it at start, so a typo stops them there instead of
    failing every drain."""
    if not settings.smtp_url:
        return None
    smtp = parse_smtp_url(settings.smtp_url)
    _envelope_sender(settings.mail_from)
    return smtp


# --- messages -------------------------------------------------------------------------------


def message_id(idempotency_key: str) -> str:
    """The same key always gives the same Message-ID, so a resent copy is recognisable."""
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()
    return f"<{digest}@{MESSAGE_ID_DOMAIN}>"


@dataclass(frozen=True)
class ClaimedEmail:
    """An outbox row in the hands of this sender."""

    id: int
    idempotency_key: str
    recipient: str
    subject: str
    body_text: str
    body_html: str
    attempts: int


def build_message(row: ClaimedEmail, *, mail_from: str, date: datetime) -> EmailMessage:
    """multipart/alternative, text then HTML. Every header value is one line: data that
    slipped a CR or LF past jobs.outbox is folded here rather than raising and losing
    the email."""
    msg = EmailMessage(policy=POLICY)
    msg["From"] = one_line(mail_from)
    msg["To"] = one_line(row.recipient)
    msg["Subject"] = one_line(row.subject)
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id(row.idempotency_key)
    msg["X-StoreFlow-Idempotency-Key"] = one_line(row.idempotency_key)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies, please
    msg.set_content(row.body_text)
    msg.add_alternative(row.body_html, subtype="html")
    return msg


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrainResult:
    sent: int = 0
    failed: int = 0  # permanently rejected (5xx) in this drain
    retried: int = 0  # temporary failure; pending again later
    dead: int = 0  # reached max_attempts in this drain
    skipped_reason: str | None = None  # nothing was tried (no SMTP_URL)
    unreachable: str | None = None  # the drain stopped: the server could not be reached

    def to_json(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "failed": self.failed,
            "retried": self.retried,
            "dead": self.dead,
            "skipped_reason": self.skipped_reason,
            "unreachable": self.unreachable,
        }


@dataclass
class _Tally:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0

    def result(self, unreachable: str | None = None) -> DrainResult:
        return DrainResult(self.sent, self.failed, self.retried, self.dead, None, unreachable)


class _Unreachable(Exception):
    """Connecting, TLS or login failed: the batch cannot be sent now."""


# --- the drain ------------------------------------------------------------------------------


def drain(
    engine: Engine,
    settings: Settings,
    *,
    now: datetime,
    sender_id: str,
    clock: Callable[[], datetime] | None = None,
    limit: int | None = None,
    smtp: SmtpConfig | None = None,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    jitter: Callable[[], float] = random.random,
    stop: threading.Event | None = None,
    on_accepted: Callable[[int], None] | None = None,
) -> DrainResult:
    """Send the emails due at `now`; return what happened to them.

    `clock` gives the time for leases, Date headers and `sent_at` as the drain goes on
    (default: `now` throughout). `sleep`/`monotonic` pace the rate limit, `jitter`
    returns a float in [0, 1) for the backoff, `stop` ends the drain between two
    messages, and `on_accepted(row_id)` runs after the server accepted a message and
    before it is marked (tests use it to crash there).
    """
    if smtp is None:
        if not settings.smtp_url:
            return DrainResult(skipped_reason=NO_SMTP)
        smtp = parse_smtp_url(settings.smtp_url)
    envelope_from = _envelope_sender(settings.mail_from)
    cfg = settings.outbox
    clock = clock or (lambda: now)
    pacer = _Pacer(cfg.rate_limit, sleep, monotonic)
    lease = _lease_for(cfg)
    tally = _Tally()
    after_id = 0  # each row at most once per drain, even with zero backoff
    remaining = limit
    while remaining is None or remaining > 0:
        if stop is not None and stop.is_set():
            break
        size = cfg.batch_size if remaining is None else min(cfg.batch_size, remaining)
        batch = _claim(engine, sender_id=sender_id, due=now, at=clock(), lease=lease,
                       size=size, after_id=after_id)
        if not batch:
            break
        after_id = batch[-1].id
        if remaining is not None:
            remaining -= len(batch)
        try:
            _send_batch(engine, smtp, cfg, batch, sender_id=sender_id, lease=lease,
                        envelope_from=envelope_from,
                        mail_from=settings.mail_from, clock=clock, pacer=pacer,
                        jitter=jitter, tally=tally, stop=stop, on_accepted=on_accepted)
        except _Unreachable as exc:
            reason = str(exc)
            log.warning("SMTP server unreachable (%s): %s; %s wait", smtp.display,
                        reason, plural(len(batch), "email"))
            return tally.result(reason)
    return tally.result()


def _lease_for(cfg: OutboxConfig) -> timedelta:
    # A slow rate limit can make one batch outlast the configured lease; a lease that
    # ends mid-batch lets a second sender take the rows not sent yet (each is then sent
    # by one of the two, but the batch is scattered).
    lease = timedelta(seconds=cfg.lease)
    if cfg.rate_limit > 0:
        return max(lease, timedelta(seconds=2 * cfg.batch_size / cfg.rate_limit + 60))
    return lease


def _claim(engine: Engine, *, sender_id: str, due: datetime, at: datetime, lease: timedelta,
           size: int, after_id: int) -> list[ClaimedEmail]:
    t = ops_email_outbox
    with transaction(engine) as conn:
        q = (
            select(t.c.id, t.c.idempotency_key, t.c.recipient, t.c.subject, t.c.body_text,
                   t.c.body_html, t.c.attempts)
            .where(
                t.c.status == "pending",
                t.c.next_attempt_at <= due,
                t.c.id > after_id,
                or_(t.c.claimed_until.is_(None), t.c.claimed_until <= at),
            )
            .order_by(t.c.id)
            .limit(size)
        )
        if not is_sqlite(conn):
            q = q.with_for_update(skip_locked=True)
        rows = [ClaimedEmail(*r) for r in conn.execute(q)]
        if rows:
            conn.execute(
                update(t)
                .where(t.c.id.in_([r.id for r in rows]))
                .values(claimed_by=sender_id, claimed_until=at + lease)
            )
    return rows


class _Pacer:
    """One message every 1/rate seconds, on a fixed schedule.

    A message that comes late (a slow answer, a new batch's claim and connection) is
    made up for by the following ones not waiting, so the average is the configured
    rate and not less; but never more than SLACK seconds of delay are made up: after a
    longer stall the schedule starts afresh instead of bursting. Over any second the
    pace is at most rate * (1 + SLACK) + 1 messages.
    """

    SLACK = 0.1

    def __init__(self, rate: float, sleep: Callable[[float], None],
                 monotonic: Callable[[], float]) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.sleep = sleep
        self.monotonic = monotonic
        self.next_at: float | None = None

    def wait(self) -> None:
        if not self.interval:
            return
        t = self.monotonic()
        if self.next_at is None or t - self.next_at > self.SLACK:
            self.next_at = t
        elif t < self.next_at:
            self.sleep(self.next_at - t)
        self.next_at += self.interval


def _connect(smtp: SmtpConfig) -> smtplib.SMTP:
    conn: smtplib.SMTP | None = None
    try:
        if smtp.security == "ssl":
            conn = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout,
                                    context=_tls_context())
        else:
            conn = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout)
        conn.ehlo()
        if smtp.security == "starttls":
            conn.starttls(context=_tls_context())
            conn.ehlo()
        if smtp.username:
            conn.login(smtp.username, smtp.password or "")
        return conn
    except smtplib.SMTPAuthenticationError as exc:
        _close(conn)
        raise _Unreachable(f"login as {smtp.username!r} refused: {_answer(exc)}") from None
    except smtplib.SMTPResponseException as exc:
        _close(conn)
        raise _Unreachable(_answer(exc)) from None
    except (smtplib.SMTPException, OSError) as exc:
        _close(conn)
        raise _Unreachable(_os_reason(exc)) from None


def _tls_context() -> ssl.SSLContext:
    # Certificates and host names verified against the system's CAs (SSL_CERT_FILE
    # points elsewhere for a private relay).
    return ssl.create_default_context()


def _close(conn: smtplib.SMTP | None) -> None:
    if conn is None:
        return
    try:
        conn.quit()
    except (smtplib.SMTPException, OSError):
        conn.close()


def _answer(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return one_line(f"{exc.smtp_code} {text}")


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return one_line(str(exc)) or type(exc).__name__


Outcome = tuple[Literal["sent", "temporary", "permanent", "broken"], str | None]


def _send_one(conn: smtplib.SMTP, msg: EmailMessage, envelope_from: str,
              recipient: str) -> Outcome:
    """Send one message; classify the answer. `broken`: the connection is gone."""
    try:
        conn.send_message(msg, from_addr=envelope_from, to_addrs=[recipient])
        return "sent", None
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = next(iter(exc.recipients.values()))
        answer = one_line(f"{code} {text.decode('utf-8', 'replace')}")
        return ("permanent" if 500 <= code < 600 else "temporary"), answer
    except smtplib.SMTPNotSupportedError as exc:
        # e.g. a non-ASCII address and a server without SMTPUTF8: resending will not help.
        return "permanent", one_line(str(exc))
    except smtplib.SMTPServerDisconnected as exc:
        return "broken", f"connection lost: {_os_reason(exc)}"
    except smtplib.SMTPResponseException as exc:
        code = exc.smtp_code
        if code == 421:  # the server is closing the connection
            return "broken", _answer(exc)
        return ("permanent" if 500 <= code < 600 else "temporary"), _answer(exc)
    except (smtplib.SMTPException, OSError) as exc:
        return "broken", _os_reason(exc)


def backoff(cfg: OutboxConfig, attempts: int, r: float) -> timedelta:
    """Delay after the `attempts`-th failed attempt: doubling from backoff_base, capped at
    backoff_max, shortened by up to 20 % (r in [0, 1))."""
    exp = min(attempts - 1, 62)
    capped = min(cfg.backoff_max, cfg.backoff_base * 2.0**exp)
    return timedelta(seconds=capped * (1.0 - 0.2 * r))


class _Marks:
    """Writes each outcome the moment it is known, in its own transaction, on one database
    connection held for the batch (no pool checkout and ping per message).

    Every write here (renewal, mark, hand-back) applies only to a row still pending and
    still claimed by `sender_id`: a row whose lease ran out and that another sender
    claimed is that sender's to send and mark.

    These commits do not wait for the disk (PostgreSQL: synchronous_commit off; SQLite:
    synchronous NORMAL under WAL; for this connection only, restored after). A crash of
    the database server or the machine can then forget the last fraction of a second of
    marks: those emails are sent again, exactly as after a sender crash, and nothing is
    lost. A crash of the sender alone forgets nothing. Claims stay fully synchronous.
    """

    def __init__(self, engine: Engine, cfg: OutboxConfig, clock: Callable[[], datetime],
                 jitter: Callable[[], float], tally: _Tally, *, sender_id: str,
                 lease: timedelta) -> None:
        self.engine = engine
        self.cfg = cfg
        self.sender_id = sender_id
        self.lease = lease
        self.clock = clock
        self.jitter = jitter
        self.tally = tally
        self.conn: Connection | None = None
        self.sqlite_sync = 2

    def __enter__(self) -> _Marks:
        with self._unreachable():
            if is_sqlite(self.engine):
                self.conn = self.engine.connect()
                raw = self._raw_sqlite()
                self.sqlite_sync = raw.execute("PRAGMA synchronous").fetchone()[0]
                raw.execute("PRAGMA synchronous = NORMAL")
            else:
                # One round trip per mark: no BEGIN/COMMIT around a single UPDATE.
                self.conn = self.engine.connect().execution_options(
                    isolation_level="AUTOCOMMIT")
                self.conn.exec_driver_sql("SET synchronous_commit TO OFF")
                self.conn.commit()
        return self

    def _raw_sqlite(self) -> Any:
        # The driver's own connection: a PRAGMA must run outside the BEGIN IMMEDIATE
        # that SQLAlchemy's begin event would open around it.
        assert self.conn is not None
        return self.conn.connection.driver_connection

    def __exit__(self, *exc: object) -> None:
        conn = self.conn
        if conn is None:
            return
        try:
            if not conn.invalidated:
                conn.rollback()
                if is_sqlite(conn):
                    self._raw_sqlite().execute(f"PRAGMA synchronous = {int(self.sqlite_sync)}")
                else:
                    conn.exec_driver_sql("RESET synchronous_commit")
        finally:
            self.conn = None
            conn.close()

    @contextmanager
    def _unreachable(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as exc:
            if exc.connection_invalidated or (self.conn is not None and self.conn.invalidated):
                raise UnreachableError("database", redact(str(self.engine.url)),
                                       first_line(exc)) from None
            raise

    def _held(self, ids: Sequence[int]) -> ColumnElement[bool]:
        t = ops_email_outbox
        return and_(t.c.id.in_(ids), t.c.status == "pending", t.c.claimed_by == self.sender_id)

    def _write(self, row: ClaimedEmail, values: dict[str, Any]) -> bool:
        """Apply `values` if the row is still ours; False when another sender took it."""
        assert self.conn is not None
        t = ops_email_outbox
        with self._unreachable(), self.conn.begin():
            done = self.conn.execute(update(t).where(self._held([row.id]))
                                     .values(claimed_by=None, claimed_until=None, **values))
        if done.rowcount == 1:
            return True
        log.warning("email %d to %s: claim lost (its lease ran out and another sender "
                    "took it); its outcome here is not recorded", row.id, row.recipient)
        return False

    def renew(self, row: ClaimedEmail) -> bool:
        """Extend the lease of the row about to be sent: True if it is still ours to send.

        Checked in the database right before the send, so a row claimed by another
        sender after our lease ran out (a batch slower than the lease) is skipped."""
        assert self.conn is not None
        t = ops_email_outbox
        with self._unreachable(), self.conn.begin():
            done = self.conn.execute(update(t).where(self._held([row.id]))
                                     .values(claimed_until=self.clock() + self.lease))
        if done.rowcount == 1:
            return True
        log.info("email %d skipped: another sender claimed it after this one's lease ran out",
                 row.id)
        return False

    def sent(self, row: ClaimedEmail) -> None:
        t = ops_email_outbox
        # Counted even if the mark finds the row taken: the message did go out.
        self._write(row, {"status": "sent", "sent_at": self.clock(),
                          "message_id": message_id(row.idempotency_key),
                          "attempts": t.c.attempts + 1})
        self.tally.sent += 1

    def permanent(self, row: ClaimedEmail, answer: str) -> None:
        t = ops_email_outbox
        if not self._write(row, {"status": "failed", "last_error": answer,
                                 "attempts": t.c.attempts + 1}):
            return
        log.warning("email %d to %s rejected: %s", row.id, row.recipient, answer)
        self.tally.failed += 1

    def temporary(self, row: ClaimedEmail, reason: str) -> None:
        attempts = row.attempts + 1
        values: dict[str, Any] = {"attempts": attempts, "last_error": reason}
        if attempts >= self.cfg.max_attempts:
            values["status"] = "dead"
            log.warning("email %d to %s is dead after %d attempts: %s", row.id,
                        row.recipient, attempts, reason)
        else:
            values["next_attempt_at"] = self.clock() + backoff(self.cfg, attempts,
                                                               self.jitter())
        if not self._write(row, values):
            return
        if attempts >= self.cfg.max_attempts:
            self.tally.dead += 1
        else:
            self.tally.retried += 1

    def release(self, rows: Sequence[ClaimedEmail]) -> None:
        """Hand rows back untried: no attempt counted, claimable again at once."""
        if not rows or self.conn is None or self.conn.invalidated:
            return
        t = ops_email_outbox
        with self._unreachable(), self.conn.begin():
            self.conn.execute(update(t).where(self._held([r.id for r in rows]))
                              .values(claimed_by=None, claimed_until=None))


def _send_batch(engine: Engine, smtp: SmtpConfig, cfg: OutboxConfig, batch: Sequence[ClaimedEmail],
                *, sender_id: str, lease: timedelta, envelope_from: str, mail_from: str,
                clock: Callable[[], datetime],
                pacer: _Pacer, jitter: Callable[[], float], tally: _Tally,
                stop: threading.Event | None,
                on_accepted: Callable[[int], None] | None) -> None:
    with _Marks(engine, cfg, clock, jitter, tally, sender_id=sender_id, lease=lease) as marks:
        try:
            conn: smtplib.SMTP | None = _connect(smtp)
        except _Unreachable as exc:
            for row in batch:
                marks.temporary(row, f"SMTP server unreachable: {exc}")
            raise
        done = 0  # rows of the batch fully handled (marked)
        in_hand = False  # batch[done] went to the server and may have been accepted
        try:
            for row in batch:
                if stop is not None and stop.is_set():
                    break
                try:
                    msg = build_message(row, mail_from=mail_from, date=clock())
                except (ValueError, TypeError) as exc:
                    marks.permanent(row, f"cannot build the message: {exc}")
                    done += 1
                    continue
                if conn is None:
                    conn = _connect(smtp)  # after a lost connection; _Unreachable ends it
                pacer.wait()
                # Last thing before the send: a lease renewed earlier (or the claim's,
                # for a slow batch) may have run out since. A lost row still used its
                # pacing slot: slower, never faster than the rate limit.
                if not marks.renew(row):
                    done += 1
                    continue
                in_hand = True
                outcome, answer = _send_one(conn, msg, envelope_from, row.recipient)
                if outcome == "sent":
                    if on_accepted is not None:
                        on_accepted(row.id)
                    marks.sent(row)
                elif outcome == "permanent":
                    marks.permanent(row, answer or "rejected")
                else:
                    marks.temporary(row, answer or "temporary failure")
                    if outcome == "broken":
                        _close(conn)
                        conn = None
                in_hand = False
                done += 1
        except _Unreachable as exc:
            for row in batch[done:]:
                marks.temporary(row, f"SMTP server unreachable: {exc}")
            done = len(batch)
            raise
        finally:
            _close(conn)
            # Rows not reached (a stop request, an exception) go back at once rather than
            # at lease end. The row in hand keeps its lease: the server may have accepted
            # it, and only the lease running out may make it sendable again.
            rest = batch[done + 1 :] if in_hand else batch[done:]
            try:
                marks.release(rest)
            except Exception:  # their leases run out anyway
                log.warning("could not hand back %d claimed emails", len(rest))


# --- operator actions -----------------------------------------------------------------------


def retry(engine: Engine, ids: Sequence[int], now: datetime, *, actor: str,
          reason: str | None = None) -> list[int]:
    """Put dead or failed emails back to pending, due at `now` with attempts 0, audited
    as `actor` in the same transaction.

    All or nothing: an unknown id, or one that is pending or sent, raises UsageError
    naming each and changes nothing.
    """
    wanted = list(dict.fromkeys(ids))
    t = ops_email_outbox
    with transaction(engine) as conn:
        found = dict(conn.execute(select(t.c.id, t.c.status).where(t.c.id.in_(wanted))).all())
        problems = []
        for i in wanted:
            status = found.get(i)
            if status is None:
                problems.append(f"no email {i}")
            elif status not in ("dead", "failed"):
                problems.append(f"email {i} is {status}")
        if problems:
            raise UsageError("; ".join(problems) + " (only dead or failed emails can be retried)")
        conn.execute(
            update(t)
            .where(and_(t.c.id.in_(wanted), t.c.status.in_(("dead", "failed"))))
            .values(status="pending", attempts=0, next_attempt_at=now,
                    claimed_by=None, claimed_until=None)
        )
        audit.record(conn, at=now, actor=actor, action=audit.AuditAction.EMAIL_RETRY,
                     reason=reason, detail=f"emails {', '.join(map(str, wanted))}")
    return wanted

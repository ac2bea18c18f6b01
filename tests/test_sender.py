"""The sender against a real SMTP server on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from jobs import outbox, runs, sender
from jobs.audit import recent
from jobs.db import is_sqlite, ops_email_outbox, transaction
from jobs.errors import ConfigError, UsageError
from jobs.sender import SmtpConfig, parse_smtp_url
from jobs.settings import Overrides, Settings, load_settings
from tests.conftest import CliCall
from tests.factories import add_tenant
from tests.smtp_sink import Sink, SlowSink, free_port, smtp_server

NOW = datetime(2026, 11, 28, 0, 0, tzinfo=UTC)
FROM = "StoreFlow Billing <billing@storeflow.example>"


def tuned(settings: Settings, **outbox_kw: Any) -> Settings:
    return replace(settings, mail_from=FROM, outbox=replace(settings.outbox, **outbox_kw))


def local(port: int, **kw: Any) -> SmtpConfig:
    # No test here waits for this timeout to strike; it is a bound on a server in this same
    # process, which a loaded machine (or the suite's other workers) can keep off the CPU
    # for more than 5 s: the two-sender race failed so under load.
    return SmtpConfig("127.0.0.1", port, timeout=30, **kw)


def drain(engine: Engine, settings: Settings, port: int, now: datetime = NOW,
          **kw: Any) -> sender.DrainResult:
    kw.setdefault("jitter", lambda: 0.0)
    kw.setdefault("sender_id", "test-sender")
    return sender.drain(engine, settings, now=now, smtp=local(port), **kw)


def queue(engine: Engine, n: int, *, now: datetime = NOW, first: int = 1) -> list[str]:
    """n pending emails, recipients owner-1@…, owner-2@…; returns their keys in id order."""
    keys = []
    with transaction(engine) as conn:
        for i in range(first, first + n):
            key = f"subscription_expired:t-{i}:2026-11-28"
            email = outbox.render(
                "subscription_expired", idempotency_key=key, tenant_id=f"t-{i}",
                recipient=f"owner-{i}@example.com",
                context={"tenant_name": f"Store {i}", "expire_date": "Saturday 28 November 2026",
                         "grace_end": "Saturday 5 December 2026", "grace_days": 7},
            )
            assert outbox.queue(conn, email, now=now, run_id=None)
            keys.append(key)
    return keys


def rows(engine: Engine) -> list[Any]:
    with engine.connect() as c:
        return list(c.execute(select(ops_email_outbox).order_by(ops_email_outbox.c.id)))


def by_recipient(engine: Engine) -> dict[str, Any]:
    return {r.recipient: r for r in rows(engine)}


def header(msg: Any, name: str) -> str | None:
    """A header as a mail client shows it: a value folded onto its own line (legal, and
    what the SMTP policy does with a long one) loses the fold's leading space."""
    value = msg[name]
    return None if value is None else str(value).strip()


def parts(msg: Any) -> dict[str, str]:
    # Line ends as sent (CRLF in quoted-printable bodies) are not the text: compare with LF.
    return {p.get_content_type(): p.get_content().replace("\r\n", "\n")
            for p in msg.iter_parts()}


# --- SMTP_URL --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example.com", SmtpConfig("mail.example.com", 25)),
        ("smtp://mail.example.com?starttls=1", SmtpConfig("mail.example.com", 587, "starttls")),
        ("smtps://mail.example.com", SmtpConfig("mail.example.com", 465, "ssl")),
        ("smtp://u:p@mail.example.com:2525?starttls=true&timeout=7.5",
         SmtpConfig("mail.example.com", 2525, "starttls", "u", "p", 7.5)),
        ("SMTPS://apikey:s%40cr%3At%2F%23@smtp.example.com:4650",
         SmtpConfig("smtp.example.com", 4650, "ssl", "apikey", "s@cr:t/#")),
        ("smtp://user%40example.com:pw@[::1]:25?starttls=0",
         SmtpConfig("::1", 25, "plain", "user@example.com", "pw")),
    ],
)
def test_smtp_url_parses(url: str, expected: SmtpConfig) -> None:
    assert parse_smtp_url(url) == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://user:hunter2@mail.example.com", "expected smtp://"),
        ("smtp://user:hunter2@", "no host"),
        ("smtp://user:hunter2@mail.example.com:http", "port must be a number"),
        ("smtp://user:hunter2@mail.example.com:99999", "port must be a number"),
        ("smtps://user:hunter2@mail.example.com?starttls=1", "already TLS"),
        ("smtp://user:hunter2@mail.example.com?tls=1", "unknown option 'tls'"),
        ("smtp://user:hunter2@mail.example.com?starttls=maybe", "expected 1 or 0"),
        ("smtp://user:hunter2@mail.example.com?timeout=0", "more than 0"),
        ("smtp://:hunter2@mail.example.com", "password without a user"),
        ("smtp://user:hunter2@mail.example.com/inbox", "unexpected path"),
    ],
)
def test_bad_smtp_url_is_a_config_error_without_the_password(url: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_smtp_url(url)
    err = info.value
    assert (err.source, err.key) == ("environment", "SMTP_URL")
    assert reason in err.message
    assert "hunter2" not in err.message
    assert err.exit_code == 2


def test_password_is_not_in_repr_or_display() -> None:
    cfg = parse_smtp_url("smtp://u:hunter2@mail.example.com?starttls=1")
    assert "hunter2" not in repr(cfg) and "hunter2" not in cfg.display
    assert cfg.display == "smtp://u@mail.example.com:587?starttls=1"


# --- delivery --------------------------------------------------------------------------------


def test_delivers_each_email_once_with_headers_and_both_parts(engine: Engine,
                                                              settings: Settings) -> None:
    for i in (1, 2, 3):
        add_tenant(engine, id=f"shop-{i}", name=f"Shop Nº{i}",
                   email=f"owner{i}@example.com", expire_date=NOW - timedelta(days=i * 4))
    report = runs.execute(engine, settings, "expiry-checker", now=NOW, started_by="test",
                          clock=lambda: NOW)
    assert report.summary["emails_queued"] == 3
    settings = tuned(settings)
    sink = Sink()
    with smtp_server(sink) as port:
        result = drain(engine, settings, port)
        again = drain(engine, settings, port)
    assert result == sender.DrainResult(sent=3)
    assert again == sender.DrainResult()  # nothing twice

    queued = by_recipient(engine)
    assert len(sink.received) == 3
    assert sorted(r.rcpt_tos for r in sink.received) == [
        ("owner1@example.com",), ("owner2@example.com",), ("owner3@example.com",)]
    assert {r.mail_from for r in sink.received} == {"billing@storeflow.example"}
    for received in sink.received:
        msg = received.message
        row = queued[received.rcpt_tos[0]]
        assert msg["From"] == FROM
        assert msg["To"] == row.recipient
        assert header(msg, "Subject") == row.subject
        assert msg["Message-ID"] == sender.message_id(row.idempotency_key)
        assert msg["Message-ID"].endswith("@storeflow-ops>")
        assert header(msg, "X-StoreFlow-Idempotency-Key") == row.idempotency_key
        assert msg["Date"] is not None and msg["Date"].datetime == NOW
        assert msg.get_content_type() == "multipart/alternative"
        body = parts(msg)
        assert list(body) == ["text/plain", "text/html"]
        assert body["text/plain"] == row.body_text.replace("\r\n", "\n")
        assert body["text/html"] == row.body_html.replace("\r\n", "\n")
    shop1 = next(m for m in sink.messages() if m["To"] == "owner1@example.com")
    assert header(shop1, "Subject") == "Your StoreFlow subscription for Shop Nº1 has expired"
    text = parts(shop1)["text/plain"]
    assert "Hello Shop Nº1," in text
    assert "Tuesday 24 November 2026, 00:00 UTC" in text  # expire_date in plain words
    assert "Tuesday 1 December 2026, 00:00 UTC" in text  # grace_end
    shop3 = next(m for m in sink.messages() if m["To"] == "owner3@example.com")
    assert header(shop3, "Subject") == "Your StoreFlow store Shop Nº3 has been suspended"

    for row in rows(engine):
        assert row.status == "sent" and row.attempts == 1
        assert row.sent_at == NOW
        assert row.message_id == sender.message_id(row.idempotency_key)
        assert row.claimed_by is None and row.claimed_until is None


def test_one_connection_per_batch(engine: Engine, settings: Settings) -> None:
    queue(engine, 7)
    sink = Sink()
    with smtp_server(sink) as port:
        result = drain(engine, tuned(settings, batch_size=3), port)
    assert result.sent == 7
    per_connection = Counter(r.peer for r in sink.received)
    assert sorted(per_connection.values()) == [1, 3, 3]


def test_limit_sends_only_that_many(engine: Engine, settings: Settings) -> None:
    queue(engine, 5)
    sink = Sink()
    with smtp_server(sink) as port:
        assert drain(engine, tuned(settings, batch_size=2), port, limit=3).sent == 3
    assert [r.status for r in rows(engine)] == ["sent"] * 3 + ["pending"] * 2
    assert all(r.claimed_by is None for r in rows(engine))


def test_only_due_emails_are_sent(engine: Engine, settings: Settings) -> None:
    queue(engine, 1, now=NOW)
    queue(engine, 1, now=NOW + timedelta(seconds=1), first=2)
    sink = Sink()
    with smtp_server(sink) as port:
        assert drain(engine, tuned(settings), port).sent == 1
    assert [m["To"] for m in sink.messages()] == ["owner-1@example.com"]


def test_without_smtp_url_nothing_is_sent(engine: Engine, settings: Settings) -> None:
    queue(engine, 2)
    assert settings.smtp_url is None
    result = sender.drain(engine, settings, now=NOW, sender_id="test")
    assert result == sender.DrainResult(skipped_reason="SMTP_URL is not set")
    assert [(r.status, r.attempts, r.claimed_by) for r in rows(engine)] == [
        ("pending", 0, None)] * 2


def test_smtp_url_from_settings_is_used(engine: Engine, settings: Settings) -> None:
    queue(engine, 1)
    sink = Sink()
    with smtp_server(sink) as port:
        s = replace(tuned(settings), smtp_url=f"smtp://127.0.0.1:{port}?timeout=5")
        assert sender.drain(engine, s, now=NOW, sender_id="test").sent == 1
    assert len(sink.received) == 1


# --- failures ----------------------------------------------------------------------------------


def test_server_down_records_backoff_then_delivers_when_back(engine: Engine,
                                                             settings: Settings) -> None:
    queue(engine, 5)
    settings = tuned(settings, batch_size=2, backoff_base=30, backoff_max=3600)
    port = free_port()  # nothing listens here

    down = drain(engine, settings, port)
    assert (down.sent, down.retried) == (0, 2)
    assert down.unreachable and "refused" in down.unreachable.lower()
    first, second, *rest = rows(engine)
    for row in (first, second):  # the batch in hand counts the attempt...
        assert (row.status, row.attempts) == ("pending", 1)
        assert row.next_attempt_at == NOW + timedelta(seconds=30)
        assert row.last_error.startswith("SMTP server unreachable")
        assert row.claimed_by is None
    for row in rest:  # ...the drain stops rather than knocking 2 rows at a time
        assert (row.status, row.attempts, row.next_attempt_at) == ("pending", 0, NOW)

    sink = Sink()
    with smtp_server(sink, port=port):
        early = drain(engine, settings, port, now=NOW + timedelta(seconds=29))
        assert early.sent == 3  # the untried ones; the failed two wait out their backoff
        later = drain(engine, settings, port, now=NOW + timedelta(seconds=30))
        assert later.sent == 2
    assert len(sink.received) == 5
    assert len({m["Message-ID"] for m in sink.messages()}) == 5
    assert [r.attempts for r in rows(engine)] == [2, 2, 1, 1, 1]
    assert all(r.status == "sent" for r in rows(engine))


def test_permanent_rejection_fails_at_once_with_the_answer(engine: Engine,
                                                           settings: Settings) -> None:
    queue(engine, 3)

    def answer(stage: str, address: str) -> str | None:
        if stage == "RCPT" and address == "owner-1@example.com":
            return "550 5.1.1 <owner-1@example.com>: mailbox unknown"
        if stage == "DATA" and address == "owner-2@example.com":
            return "554 5.7.1 message refused as spam"
        return None

    sink = Sink(answer)
    with smtp_server(sink) as port:
        result = drain(engine, tuned(settings), port)
    assert (result.sent, result.failed, result.retried) == (1, 2, 0)
    mail = by_recipient(engine)
    assert mail["owner-1@example.com"].status == "failed"
    assert mail["owner-1@example.com"].last_error == (
        "550 5.1.1 <owner-1@example.com>: mailbox unknown")
    assert mail["owner-2@example.com"].status == "failed"
    assert mail["owner-2@example.com"].last_error == "554 5.7.1 message refused as spam"
    assert mail["owner-3@example.com"].status == "sent"  # the connection went on after a 5xx
    assert [m["To"] for m in sink.messages()] == ["owner-3@example.com"]


def test_temporary_rejection_is_retried_later(engine: Engine, settings: Settings) -> None:
    queue(engine, 2)
    refusals = {"owner-1@example.com": 1}

    def answer(stage: str, address: str) -> str | None:
        if stage == "RCPT" and refusals.get(address, 0) > 0:
            refusals[address] -= 1
            return "451 4.7.1 greylisted, try again later"
        return None

    sink = Sink(answer)
    settings = tuned(settings, backoff_base=60)
    with smtp_server(sink) as port:
        first = drain(engine, settings, port)
        assert (first.sent, first.retried) == (1, 1)
        row = by_recipient(engine)["owner-1@example.com"]
        assert (row.status, row.attempts) == ("pending", 1)
        assert row.last_error == "451 4.7.1 greylisted, try again later"
        assert row.next_attempt_at == NOW + timedelta(seconds=60)
        assert drain(engine, settings, port, now=NOW + timedelta(seconds=59)).sent == 0
        assert drain(engine, settings, port, now=NOW + timedelta(seconds=60)).sent == 1
    assert sorted(m["To"] for m in sink.messages()) == ["owner-1@example.com",
                                                      "owner-2@example.com"]
    assert by_recipient(engine)["owner-1@example.com"].status == "sent"


def test_backoff_doubles_is_capped_and_ends_dead(engine: Engine, settings: Settings) -> None:
    queue(engine, 1)
    sink = Sink(lambda stage, addr: "452 4.2.2 mailbox full")
    settings = tuned(settings, max_attempts=4, backoff_base=10, backoff_max=25)
    seen = []
    with smtp_server(sink) as port:
        now = NOW
        for _ in range(3):
            result = drain(engine, settings, port, now=now, jitter=lambda: 0.5)
            assert result.retried == 1
            (row,) = rows(engine)
            seen.append((row.attempts, row.next_attempt_at - now))
            now = row.next_attempt_at
        result = drain(engine, settings, port, now=now)
    # 10 s, 20 s, then capped at 25 s; jitter 0.5 takes 10 % off each.
    assert seen == [(1, timedelta(seconds=9)), (2, timedelta(seconds=18)),
                    (3, timedelta(seconds=22.5))]
    assert result == sender.DrainResult(dead=1)
    (row,) = rows(engine)
    assert (row.status, row.attempts, row.last_error) == ("dead", 4, "452 4.2.2 mailbox full")
    assert sink.received == []


def test_retry_puts_dead_and_failed_back(engine: Engine, settings: Settings) -> None:
    queue(engine, 3)
    reject = {"owner-1@example.com": "550 5.1.1 no such user",
              "owner-2@example.com": "451 4.3.0 later"}
    sink = Sink(lambda stage, addr: reject.get(addr) if stage == "RCPT" else None)
    settings = tuned(settings, max_attempts=1)
    later = NOW + timedelta(hours=1)
    with smtp_server(sink) as port:
        assert drain(engine, settings, port) == sender.DrainResult(sent=1, failed=1, dead=1)
        failed_id, dead_id, sent_id = (r.id for r in rows(engine))

        with pytest.raises(UsageError) as info:
            sender.retry(engine, [failed_id, sent_id, 999_999], later, actor="ops@desk")
        assert info.value.message == (
            f"email {sent_id} is sent; no email 999999 (only dead or failed emails can be retried)")
        assert [r.status for r in rows(engine)] == ["failed", "dead", "sent"]  # all or nothing

        assert sender.retry(engine, [failed_id, dead_id, dead_id], later,
                            actor="ops@desk") == [failed_id, dead_id]
        # Audited with the change; the refused retry above left no entry.
        assert [(e.action, e.actor, e.detail) for e in recent(engine)] == [
            ("email_retry", "ops@desk", f"emails {failed_id}, {dead_id}")]
        for row in rows(engine)[:2]:
            assert (row.status, row.attempts, row.next_attempt_at) == ("pending", 0, later)
        reject.clear()
        assert drain(engine, settings, port, now=later).sent == 2
    assert sorted(m["To"] for m in sink.messages()) == [
        "owner-1@example.com", "owner-2@example.com", "owner-3@example.com"]


# --- concurrency and crashes ---------------------------------------------------------------


def test_two_senders_racing_send_every_email_exactly_once(engine: Engine,
                                                          settings: Settings) -> None:
    # PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: claims serialised by BEGIN IMMEDIATE.
    keys = queue(engine, 200)
    settings = tuned(settings, batch_size=10)
    sink = Sink()
    results: dict[str, sender.DrainResult] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(sender_id: str, port: int) -> None:
        try:
            start.wait()
            results[sender_id] = drain(engine, settings, port, sender_id=sender_id)
        except BaseException as exc:
            errors.append(exc)

    with smtp_server(sink) as port:
        threads = [threading.Thread(target=run, args=(name, port)) for name in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == []
    assert results["a"].sent + results["b"].sent == 200
    ids = Counter(m["Message-ID"] for m in sink.messages())
    assert len(sink.received) == 200
    assert set(ids.values()) == {1}
    assert set(ids) == {sender.message_id(k) for k in keys}
    assert {r.status for r in rows(engine)} == {"sent"}


def test_rows_claimed_by_another_sender_are_left_alone(engine: Engine,
                                                       settings: Settings) -> None:
    queue(engine, 4)
    settings = tuned(settings)
    # Sender "other" claims the first two (and, for this test, never sends them).
    held = sender._claim(engine, sender_id="other", due=NOW, at=NOW, lease=sender.LEASE,
                         size=2, after_id=0)
    assert [r.recipient for r in held] == ["owner-1@example.com", "owner-2@example.com"]
    sink = Sink()
    with smtp_server(sink) as port:
        assert drain(engine, settings, port).sent == 2
        assert sorted(m["To"] for m in sink.messages()) == ["owner-3@example.com",
                                                          "owner-4@example.com"]
        # Its lease runs out (the sender died): the rows can be claimed again.
        assert drain(engine, settings, port, now=NOW + sender.LEASE).sent == 2
    assert len(sink.received) == 4


def test_skip_locked_does_not_wait_for_a_claim_in_progress(engine: Engine,
                                                           settings: Settings) -> None:
    if is_sqlite(engine):
        pytest.skip("SQLite claims are single-writer: there is no row lock to skip")
    queue(engine, 3)
    t = ops_email_outbox
    sink = Sink()
    with smtp_server(sink) as port, engine.connect() as other:
        # Another sender is mid-claim: it holds row 1 locked and has not committed yet.
        tx = other.begin()
        other.execute(select(t.c.id).where(t.c.recipient == "owner-1@example.com")
                      .with_for_update())
        assert drain(engine, tuned(settings), port).sent == 2
        tx.rollback()
    assert sorted(m["To"] for m in sink.messages()) == ["owner-2@example.com",
                                                      "owner-3@example.com"]


class Crash(Exception):
    pass


def crash(row_id: int) -> None:
    raise Crash(f"died after the server accepted email {row_id}")


def test_crash_between_accepted_and_marked_sends_again_once(engine: Engine,
                                                            settings: Settings) -> None:
    """At-least-once: an email the server accepted but the sender never marked is sent
    again when its lease runs out, with the same Message-ID, and then marked sent."""
    keys = queue(engine, 2)
    settings = tuned(settings)
    sink = Sink()
    with smtp_server(sink) as port:
        with pytest.raises(Crash):
            drain(engine, settings, port, on_accepted=crash)
        assert len(sink.received) == 1
        first, second = rows(engine)
        assert (first.status, first.claimed_by) == ("pending", "test-sender")
        assert first.claimed_until == NOW + sender.LEASE
        assert (second.status, second.claimed_by) == ("pending", None)  # handed back

        # Within the lease nobody touches the row in doubt; the other one goes out.
        assert drain(engine, settings, port, now=NOW + timedelta(minutes=4)).sent == 1
        # Lease over: sent again, exactly once more, then marked.
        assert drain(engine, settings, port, now=NOW + sender.LEASE).sent == 1
        assert drain(engine, settings, port, now=NOW + 2 * sender.LEASE).sent == 0
    ids = Counter(m["Message-ID"] for m in sink.messages())
    assert ids == {sender.message_id(keys[0]): 2, sender.message_id(keys[1]): 1}
    assert [r.status for r in rows(engine)] == ["sent", "sent"]


def test_stop_hands_unsent_claims_back(engine: Engine, settings: Settings) -> None:
    queue(engine, 4)
    stop = threading.Event()
    sink = Sink()
    with smtp_server(sink) as port:
        result = drain(engine, tuned(settings), port, stop=stop,
                       on_accepted=lambda row_id: stop.set())
    assert result.sent == 1
    assert [(r.status, r.claimed_by) for r in rows(engine)] == [("sent", None)] + [
        ("pending", None)] * 3


def test_a_claim_taken_over_mid_batch_is_neither_sent_nor_marked(engine: Engine,
                                                                 settings: Settings) -> None:
    """A sender checks its claim right before each message and on every write: rows
    another sender claimed meanwhile (after this one's lease ran out) are that
    sender's to send, mark and hand back."""
    queue(engine, 4)
    t = ops_email_outbox
    stop = threading.Event()

    def meanwhile(row_id: int) -> None:
        if row_id == 1:  # "other" claims rows 1, 2 and 4, as if our lease had run out
            with transaction(engine) as conn:
                conn.execute(t.update().where(t.c.id.in_([1, 2, 4])).values(
                    claimed_by="other", claimed_until=NOW + timedelta(minutes=10)))
        elif row_id == 3:
            stop.set()  # row 4 would be handed back: it is not ours any more

    sink = Sink()
    with smtp_server(sink) as port:
        result = drain(engine, tuned(settings), port, stop=stop, on_accepted=meanwhile)
    # Row 1 was in flight when it was taken: it went out (and counts), row 2 did not.
    assert [m["To"] for m in sink.messages()] == ["owner-1@example.com", "owner-3@example.com"]
    assert result.sent == 2
    assert [(r.id, r.status, r.claimed_by) for r in rows(engine)] == [
        (1, "pending", "other"), (2, "pending", "other"), (3, "sent", None),
        (4, "pending", "other")]
    assert [r.attempts for r in rows(engine)] == [0, 0, 1, 0]


RACER = """
import io, json, sys, time
from console.cli import build_parser
from console.context import CliContext
from console.mail_commands import cmd_outbox_send
from jobs.outbox import counts_by_status
from jobs.settings import Overrides, load_settings

# `storeflow-ops outbox send --json`, again and again until nothing is pending: the
# command's own code (and sender id), on one database engine.
ctx = CliContext(load_settings(Overrides()), json=True, stdout=io.StringIO())
args = build_parser().parse_args(["outbox", "send", "--json"])
sent, deadline = 0, time.monotonic() + 60
while time.monotonic() < deadline:
    ctx.stdout.seek(0)
    ctx.stdout.truncate()
    code = cmd_outbox_send(ctx, args)
    if code != 0:
        sys.exit(code)
    sent += json.loads(ctx.stdout.getvalue())["sent"]
    if not counts_by_status(ctx.engine).get("pending"):
        break
    time.sleep(0.05)
print(json.dumps({"sent": sent}))
"""


@pytest.mark.slow(seconds=7)
def test_batches_outlasting_their_lease_send_each_email_once(engine: Engine,
                                                             cli_env: dict[str, str],
                                                             tmp_path: Path) -> None:
    """Two `outbox send` processes against a slow server (0.5 s a message) with a 2 s
    lease: a batch of 12 takes 6 s, so the other process claims the rows whose lease
    ran out while the first is still sending. Each email still goes out exactly once."""
    n = 12
    keys = queue(engine, n, now=datetime.now(UTC) - timedelta(seconds=1))
    config = tmp_path / "schedules.toml"
    config.write_text(f"[outbox]\nbatch_size = {n}\nlease = 2\n")
    sink = SlowSink(0.5)
    with smtp_server(sink) as port:
        env = {**cli_env, "MAIL_FROM": FROM, "SMTP_URL": f"smtp://127.0.0.1:{port}",
               "STOREFLOW_CONFIG": str(config)}
        procs = [subprocess.Popen([sys.executable, "-c", RACER], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  cwd=Path(__file__).resolve().parents[1])
                 for _ in range(2)]
        outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    sent = [json.loads(out)["sent"] for out, _err in outputs]
    ids = Counter(m["Message-ID"] for m in sink.messages())
    assert ids == {sender.message_id(k): 1 for k in keys}
    assert len(sink.received) == n
    assert sum(sent) == n and min(sent) > 0  # both sent: the takeover did happen
    assert {r.status for r in rows(engine)} == {"sent"}


def test_lease_setting(engine: Engine, settings: Settings, env: dict[str, str],
                       tmp_path: Path) -> None:
    config = tmp_path / "lease.toml"
    config.write_text("[outbox]\nlease = 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_settings(Overrides(config=str(config)), env=env, cwd=tmp_path)
    assert info.value.key == "outbox.lease" and "minimum 1 second" in info.value.message
    config.write_text("[outbox]\nlease = 90\n")
    loaded = load_settings(Overrides(config=str(config)), env=env, cwd=tmp_path)
    assert loaded.outbox.lease == 90
    queue(engine, 1)
    sink = Sink()
    with smtp_server(sink) as port, pytest.raises(Crash):
        drain(engine, tuned(loaded), port, on_accepted=crash)
    (row,) = rows(engine)
    assert row.claimed_until == NOW + timedelta(seconds=90)


# --- rate limit ------------------------------------------------------------------------------


def test_rate_limit_paces_messages(engine: Engine, settings: Settings) -> None:
    queue(engine, 6)
    clock = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    sink = Sink()
    with smtp_server(sink) as port:
        result = drain(engine, tuned(settings, rate_limit=4, batch_size=4), port,
                       sleep=sleep, monotonic=lambda: clock[0])
    assert result.sent == 6
    # Six messages at 4 a second: five gaps of 0.25 s, across the batch boundary too.
    assert slept == [0.25] * 5
    assert clock[0] == pytest.approx(101.25)


@pytest.mark.parametrize(("stall", "finish"), [
    (0.15, 100.5),  # late by less than the slack: made up, the schedule holds
    (0.5, 100.9),  # a long stall: the schedule starts afresh, no burst to catch up
])
def test_rate_limit_makes_up_small_delays_only(engine: Engine, settings: Settings,
                                               stall: float, finish: float) -> None:
    queue(engine, 6)
    clock = [100.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    def slow_answer(row_id: int) -> None:
        if row_id == 2:
            clock[0] += stall

    sink = Sink()
    with smtp_server(sink) as port:
        result = drain(engine, tuned(settings, rate_limit=10), port, sleep=sleep,
                       monotonic=lambda: clock[0], on_accepted=slow_answer)
    assert result.sent == 6
    assert clock[0] == pytest.approx(finish)  # when the 6th message went out


def test_slow_rate_lengthens_the_lease(engine: Engine, settings: Settings) -> None:
    queue(engine, 1)
    sink = Sink()
    with smtp_server(sink) as port, pytest.raises(Crash):
        drain(engine, tuned(settings, rate_limit=0.1, batch_size=100), port,
              on_accepted=crash)
    # 100 messages at 0.1/s take 1000 s: a 5-minute lease would end mid-batch.
    (row,) = rows(engine)
    assert row.claimed_until == NOW + timedelta(seconds=2 * 100 / 0.1 + 60)


# --- hostile data ----------------------------------------------------------------------------


def test_script_and_newline_in_tenant_names(engine: Engine, settings: Settings) -> None:
    add_tenant(engine, id="t-script", name="<script>alert('x')</script> & Sons",
               email="script@example.com", expire_date=NOW - timedelta(days=1))
    add_tenant(engine, id="t-newline", name="Line one\r\nBcc: victim@example.com",
               email="newline@example.com", expire_date=NOW - timedelta(days=1))
    runs.execute(engine, settings, "expiry-checker", now=NOW, started_by="test", clock=lambda: NOW)
    sink = Sink()
    with smtp_server(sink) as port:
        assert drain(engine, tuned(settings), port).sent == 2
    assert sorted(r.rcpt_tos for r in sink.received) == [("newline@example.com",),
                                                          ("script@example.com",)]
    script = next(m for m in sink.messages() if m["To"] == "script@example.com")
    body = parts(script)
    assert "Hello <script>alert('x')</script> & Sons," in body["text/plain"]
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; Sons" in body["text/html"]
    assert "<script>" not in body["text/html"]
    assert header(script, "Subject") == (
        "Your StoreFlow subscription for <script>alert('x')</script> & Sons has expired")

    raw = next(r.data for r in sink.received if r.rcpt_tos == ("newline@example.com",))
    newline = next(m for m in sink.messages() if m["To"] == "newline@example.com")
    assert header(newline, "Subject") == (
        "Your StoreFlow subscription for Line one Bcc: victim@example.com has expired")
    assert newline["Bcc"] is None
    assert b"\nBcc:" not in raw.split(b"\r\n\r\n", 1)[0]
    assert "Line one" in parts(newline)["text/plain"]


def test_newlines_in_stored_headers_are_folded_not_fatal(engine: Engine,
                                                         settings: Settings) -> None:
    # Rows written by something other than jobs.outbox (an older version, a hand fix).
    with transaction(engine) as conn:
        conn.execute(insert(ops_email_outbox).values(
            idempotency_key="manual:1\nX-Evil: 1", tenant_id="t", kind="payment_due",
            recipient="owner@example.com", subject="Payment due\r\nBcc: evil@example.com",
            body_text="text", body_html="<p>html</p>", status="pending", attempts=0,
            next_attempt_at=NOW, created_at=NOW))
    sink = Sink()
    with smtp_server(sink) as port:
        assert drain(engine, tuned(settings), port).sent == 1
    (received,) = sink.received
    msg = received.message
    assert received.rcpt_tos == ("owner@example.com",)
    assert header(msg, "Subject") == "Payment due Bcc: evil@example.com"
    assert header(msg, "X-StoreFlow-Idempotency-Key") == "manual:1 X-Evil: 1"
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert msg["Message-ID"] == sender.message_id("manual:1\nX-Evil: 1")


# --- TLS and login ---------------------------------------------------------------------------


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server certificate for 127.0.0.1 from a throwaway CA that the client trusts."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    return server_ctx


def _auth(server: Any, session: Any, envelope: Any, mechanism: str,
          data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        b"mailer@storeflow.example", b"p@ss:w/rd")
    return AuthResult(success=ok, handled=False)


@pytest.mark.parametrize("mode", ["starttls", "smtps"])
def test_tls_and_login(engine: Engine, settings: Settings, tls: ssl.SSLContext,
                       mode: str) -> None:
    queue(engine, 2)
    sink = Sink()
    if mode == "starttls":
        kw: dict[str, Any] = {"tls_context": tls, "require_starttls": True}
        query = "?starttls=1"
    else:
        # aiosmtpd only counts STARTTLS as TLS for auth_require_tls; smtps is TLS anyway.
        kw = {"ssl_context": tls, "auth_require_tls": False}
        query = ""
    scheme = "smtps" if mode == "smtps" else "smtp"
    kw.setdefault("auth_require_tls", True)
    with smtp_server(sink, authenticator=_auth, **kw) as port:
        good = parse_smtp_url(
            f"{scheme}://mailer%40storeflow.example:p%40ss%3Aw%2Frd@127.0.0.1:{port}{query}")
        bad = replace(good, password="wrong-secret")
        refused = sender.drain(engine, tuned(settings), now=NOW, sender_id="t", smtp=bad,
                               jitter=lambda: 0.0)
        assert refused.sent == 0 and refused.unreachable
        assert "535" in refused.unreachable and "wrong-secret" not in refused.unreachable
        assert all("wrong-secret" not in r.last_error for r in rows(engine))
        ok = sender.drain(engine, tuned(settings), now=NOW + timedelta(minutes=1),
                          sender_id="t", smtp=good)
    assert ok.sent == 2
    assert len(sink.received) == 2


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def cli_env(env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    yield {**env, "PYTHONPATH": os.pathsep.join(sys.path), "STOREFLOW_CONFIG": "",
           "XDG_DATA_HOME": str(tmp_path), "MAIL_FROM": FROM}


def test_cli_outbox_send_and_retry(engine: Engine, cli_env: dict[str, str],
                                   tmp_path: Path, cli_here: CliCall) -> None:
    # Emails are due at queue time (now, on the wall clock of this test).
    real_now = datetime.now(UTC)
    queue(engine, 3, now=real_now - timedelta(seconds=1))

    unset = cli_here(cli_env, "outbox", "send", cwd=tmp_path)
    assert unset.returncode == 0, unset.stderr
    assert "SMTP_URL is not set" in unset.stderr and "3 pending" in unset.stderr
    assert unset.stdout == ""

    bad = cli_here({**cli_env, "SMTP_URL": "smtp://u:hunter2@127.0.0.1:notaport"}, "outbox", "send",
              cwd=tmp_path)
    assert bad.returncode == 2
    assert "SMTP_URL" in bad.stderr and "hunter2" not in bad.stderr

    down_port = free_port()
    down = cli_here({**cli_env, "SMTP_URL": f"smtp://127.0.0.1:{down_port}"}, "outbox", "send",
               cwd=tmp_path)
    assert down.returncode == 3, down.stderr
    assert "unreachable" in down.stderr and "Traceback" not in down.stderr

    sink = Sink(lambda stage, addr: "550 5.1.1 unknown user"
                if addr == "owner-1@example.com" else None)
    with smtp_server(sink) as port:
        smtp_env = {**cli_env, "SMTP_URL": f"smtp://127.0.0.1:{port}"}
        with transaction(engine) as conn:  # skip the backoff of the failed attempt above
            conn.execute(ops_email_outbox.update().values(next_attempt_at=real_now))
        sent = cli_here(smtp_env, "outbox", "send", "--json", cwd=tmp_path)
        assert sent.returncode == 1, sent.stderr  # one email rejected permanently
        assert json.loads(sent.stdout) == {"sent": 2, "failed": 1, "retried": 0, "dead": 0,
                                           "skipped_reason": None, "unreachable": None}
        failed_id, sent_id = rows(engine)[0].id, rows(engine)[1].id

        wrong = cli_here(smtp_env, "outbox", "retry", str(sent_id), cwd=tmp_path)
        assert wrong.returncode == 2
        assert f"email {sent_id} is sent" in wrong.stderr

        retried = cli_here(smtp_env, "outbox", "retry", str(failed_id), cwd=tmp_path)
        assert retried.returncode == 0, retried.stderr
        assert f"back to pending: {failed_id}" in retried.stdout
        sink.answer = None
        again = cli_here(smtp_env, "outbox", "send", cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == "sent 1, retry later 0, failed 0, dead 0"
    assert len(sink.received) == 3

"""The four email templates: the contexts the jobs pass, plain-word dates, escaping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any, ClassVar

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from jobs import outbox, runs
from jobs.db import ops_email_outbox
from jobs.settings import Settings
from tests.factories import add_tenant

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
EXPIRE = "Tuesday 24 November 2026, 00:00 UTC"
GRACE_END = "Tuesday 1 December 2026, 00:00 UTC"

# Exactly the keys jobs/expiry.py and jobs/reminders.py pass (StrictUndefined: a template
# that used anything else would raise).
CONTEXTS: dict[str, dict[str, Any]] = {
    "subscription_expired": {"tenant_name": "Corner Shop", "expire_date": EXPIRE,
                             "grace_end": GRACE_END, "grace_days": 7},
    "subscription_suspended": {"tenant_name": "Corner Shop", "expire_date": EXPIRE,
                               "grace_end": GRACE_END, "grace_days": 7},
    "renewal_reminder": {"tenant_name": "Corner Shop", "expire_date": EXPIRE,
                         "days_left": 3, "threshold": 7},
    "payment_due": {"tenant_name": "Corner Shop", "expire_date": EXPIRE,
                    "grace_end": GRACE_END},
}

SUBJECTS = {
    "subscription_expired": "Your StoreFlow subscription for Corner Shop has expired",
    "subscription_suspended": "Your StoreFlow store Corner Shop has been suspended",
    "renewal_reminder": "Your StoreFlow subscription for Corner Shop ends in 3 days",
    "payment_due": f"Payment overdue for Corner Shop: your store will be suspended on {GRACE_END}",
}

# The sentence of each email that carries its dates.
KEY_SENTENCES = {
    "subscription_expired": [f"ended on {EXPIRE}", f"until {GRACE_END}"],
    "subscription_suspended": [f"ended on {EXPIRE}", f"ended on {GRACE_END}"],
    "renewal_reminder": [f"ends on {EXPIRE}, in 3 days"],
    "payment_due": [f"ended on {EXPIRE}", f"suspended on {GRACE_END}"],
}


def render(kind: str, **changes: Any) -> outbox.Email:
    return outbox.render(kind, idempotency_key=f"{kind}:t-1", tenant_id="t-1",
                         recipient="owner@example.com", context={**CONTEXTS[kind], **changes})


def one_line_text(text: str) -> str:
    return " ".join(text.split())


class _Balance(HTMLParser):
    """Every opened element is closed, in order (void elements aside)."""

    VOID: ClassVar[set[str]] = {"meta", "br", "img", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


@pytest.mark.parametrize("kind", outbox.KINDS)
def test_each_kind_renders_subject_text_and_html(kind: str) -> None:
    email = render(kind)
    assert email.subject == SUBJECTS[kind]
    text = one_line_text(email.body_text)
    html = one_line_text(email.body_html)
    assert email.body_text.startswith("Hello Corner Shop,\n\n")
    assert "The StoreFlow team" in text
    for sentence in KEY_SENTENCES[kind]:
        assert sentence in text
        assert sentence.replace(EXPIRE, f"<strong>{EXPIRE}</strong>").replace(
            GRACE_END, f"<strong>{GRACE_END}</strong>") in html or sentence in html
    assert "Hello Corner Shop," in html
    assert f"<title>{SUBJECTS[kind]}</title>" in html
    assert "you own the store Corner Shop on StoreFlow" in text
    assert "you own the store Corner Shop on StoreFlow" in html
    assert "{{" not in email.body_text + email.body_html + email.subject
    checker = _Balance()
    checker.feed(email.body_html)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    assert email.body_html.lstrip().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("kind", outbox.KINDS)
def test_hostile_tenant_names(kind: str) -> None:
    name = "<script>alert(\"x\")</script> & Sons\r\nBcc: victim@example.com"
    email = render(kind, tenant_name=name)
    assert "\n" not in email.subject and "\r" not in email.subject
    assert "<script>alert(\"x\")</script> & Sons Bcc: victim@example.com" in email.subject
    assert "Hello <script>alert(\"x\")</script> & Sons" in email.body_text  # text: literal
    assert "<script" not in email.body_html  # HTML: escaped everywhere, <title> included
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; Sons" in email.body_html


def test_plurals_in_plain_words() -> None:
    one_day = render("renewal_reminder", days_left=1, threshold=1)
    assert one_day.subject.endswith("ends in 1 day")
    assert "in 1 day." in one_day.body_text
    assert "1 days" not in one_day.body_text + one_day.body_html
    short_grace = render("subscription_expired", grace_days=1)
    assert "grace period of 1 day," in one_line_text(short_grace.body_text)
    assert "grace period of 7 days," in one_line_text(render("subscription_expired").body_text)


def test_the_jobs_queue_all_four_kinds_with_their_dates(engine: Engine,
                                                        settings: Settings) -> None:
    add_tenant(engine, id="renews", name="Renews Soon", status="active",
               expire_date=NOW + timedelta(days=3))
    add_tenant(engine, id="overdue", name="Pays Late", status="expired",
               expire_date=NOW - timedelta(days=2))
    add_tenant(engine, id="lapses", name="Just Lapsed", status="active",
               expire_date=NOW - timedelta(hours=1))
    add_tenant(engine, id="gone", name="Long Gone", status="active",
               expire_date=NOW - timedelta(days=10))
    runs.execute(engine, settings, "expiry-checker", now=NOW, started_by="test")
    runs.execute(engine, settings, "payment-reminders", now=NOW, started_by="test")
    with engine.connect() as c:
        rows = {(r.tenant_id, r.kind): r for r in c.execute(select(ops_email_outbox))}

    renew = rows[("renews", "renewal_reminder")]
    assert renew.subject == "Your StoreFlow subscription for Renews Soon ends in 3 days"
    assert "ends on Tuesday 1 December 2026, 09:00 UTC, in 3 days" in renew.body_text

    due = rows[("overdue", "payment_due")]
    assert "suspended on Thursday 3 December 2026, 09:00 UTC" in one_line_text(due.body_text)

    lapsed = rows[("lapses", "subscription_expired")]
    assert "until Saturday 5 December 2026, 08:00 UTC" in one_line_text(lapsed.body_text)
    assert "<strong>Saturday 5 December 2026, 08:00 UTC</strong>" in lapsed.body_html

    gone = rows[("gone", "subscription_suspended")]
    assert gone.subject == "Your StoreFlow store Long Gone has been suspended"
    assert "grace period ended on Wednesday 25 November 2026, 09:00 UTC" in one_line_text(
        gone.body_text)

"""`problems` and the outbox's search, paging and `outbox show`, on SQLite and PostgreSQL:
the JSON documents, the text tables and the exit codes."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Engine

from jobs.timeutil import utc_now
from tests.conftest import CliCall
from tests.factories import add_email, add_run, add_tenant
from tests.test_cli import run_cli, run_json  # noqa: F401  (the in-process CLI fixture)

BAD = "invalid recipient 'x@mail,co': invalid characters"


def seed_problems(engine: Engine) -> dict[str, int]:
    """Runs of the last 40 days, problems in some, relative to the real clock (the CLI's)."""
    now = utc_now()
    return {
        "recent": add_run(engine, "expiry-checker", "partial", now - timedelta(hours=2), items=[
            ("t-a", "expired", "ok", None), ("t-b", "expired", "error", BAD),
            ("t-c", "suspended", "error", BAD), ("t-d", "expired", "error", "deadlock")]),
        "failed": add_run(engine, "cleanup", "failed", now - timedelta(hours=5),
                          error="database unreachable"),
        "missed": add_run(engine, "payment-reminders", "missed", now - timedelta(hours=6),
                          error="no runner was alive within the misfire grace"),
        "fine": add_run(engine, "analytics-aggregate", "succeeded", now - timedelta(hours=1),
                        items=[("t-a", "cached", "ok", None)]),
        "older": add_run(engine, "expiry-checker", "partial", now - timedelta(days=3), items=[
            ("t-e", "expired", "error", BAD)]),
        "timed": add_run(engine, "analytics-aggregate", "timed_out", now - timedelta(days=2),
                         error="timed out after 30m"),
        "oldest": add_run(engine, "expiry-checker", "partial", now - timedelta(days=40), items=[
            ("t-f", "expired", "error", BAD)]),
    }


def test_problems_json_lists_failed_items_and_runs_of_the_window(
        engine: Engine, run_cli: Any) -> None:  # noqa: F811
    runs = seed_problems(engine)
    rows = run_json(run_cli, "problems")
    assert all(set(r) == {"run_id", "job", "started_at", "status", "tenant_id", "action",
                          "error"} for r in rows)
    assert [(r["run_id"], r["tenant_id"], r["error"]) for r in rows] == [
        (runs["recent"], "t-b", BAD), (runs["recent"], "t-c", BAD),
        (runs["recent"], "t-d", "deadlock"),
        (runs["failed"], None, "database unreachable"),
        (runs["missed"], None, "no runner was alive within the misfire grace")]
    missed = rows[4]
    assert missed["job"] == "payment-reminders" and missed["status"] == "missed"
    assert missed["started_at"] is None and missed["action"] is None
    assert rows[0]["status"] == "partial" and rows[0]["action"] == "expired"
    assert rows[0]["started_at"].endswith("+00:00")

    week = run_json(run_cli, "problems", "--since", "7d", "--job", "expiry-checker")
    assert [(r["run_id"], r["tenant_id"]) for r in week] == [
        (runs["recent"], "t-b"), (runs["recent"], "t-c"), (runs["recent"], "t-d"),
        (runs["older"], "t-e")]
    assert len(run_json(run_cli, "problems", "--since", "60d")) == 8
    timed = run_json(run_cli, "problems", "--since", "7d", "--job", "analytics-aggregate")
    assert [(r["run_id"], r["status"], r["error"]) for r in timed] == [
        (runs["timed"], "timed_out", "timed out after 30m")]


def test_problems_text_groups_by_error_with_counts(engine: Engine, run_cli: Any) -> None:  # noqa: F811
    seed_problems(engine)
    code, out, err = run_cli("problems", "--since", "7d")
    assert code == 0, err
    assert "7 problems across jobs in the last 7 days" in err
    lines = out.splitlines()
    assert lines[0].split() == ["COUNT", "JOB", "TENANTS", "RUNS", "LAST", "ERROR"]
    first = lines[1].split()
    assert first[:6] == ["3", "expiry-checker", "3", "tenants", "2", "runs"]
    assert lines[1].endswith(BAD)
    assert "Store t-b (t-b, run #" in out and "Store t-e (t-e, run #" in out


def test_problems_refuses_a_bad_window_or_job(engine: Engine, run_cli: Any) -> None:  # noqa: F811
    assert run_json(run_cli, "problems", "--since", "soon", expect=2)["exit_code"] == 2
    code, _, err = run_cli("problems", "--job", "nope")
    assert code == 2 and "unknown job 'nope'" in err
    code, _, err = run_cli("problems")
    assert code == 0 and "no problems across jobs in the last 24 h" in err


# --- the outbox --------------------------------------------------------------------------------


def seed_outbox(engine: Engine) -> dict[str, int]:
    now = utc_now()
    add_tenant(engine, id="t-acme", name="Acme Outdoor")
    add_tenant(engine, id="t-blue", name="Blue Harbor Books")
    ids = {}
    for n in range(5):
        ids[f"acme{n}"] = add_email(engine, "t-acme", at=now - timedelta(hours=10 - n),
                                    status="sent" if n < 3 else "pending")
    ids["blue"] = add_email(engine, "t-blue", at=now - timedelta(hours=3), status="dead",
                            recipient="books@blueharbor.example", attempts=8,
                            subject="Your payment for Blue Harbor Books is due",
                            last_error="550 mailbox unknown")
    return ids


def test_outbox_filters_by_tenant_search_and_limit(engine: Engine, run_cli: Any) -> None:  # noqa: F811
    ids = seed_outbox(engine)
    rows = run_json(run_cli, "outbox")
    assert [r["id"] for r in rows] == [ids["blue"], *(ids[f"acme{n}"] for n in (4, 3, 2, 1, 0))]
    for r in rows:
        assert set(r) == {"id", "kind", "tenant_id", "to", "subject", "status", "attempts",
                          "idempotency_key", "created_at", "sent_at", "last_error"}
    sent = next(r for r in rows if r["id"] == ids["acme0"])
    assert sent["status"] == "sent" and sent["sent_at"].endswith("+00:00")
    assert sent["created_at"] < sent["sent_at"]
    assert rows[0]["sent_at"] is None and rows[0]["last_error"] == "550 mailbox unknown"

    by_id = run_json(run_cli, "outbox", "--tenant", "t-blue")
    by_name = run_json(run_cli, "outbox", "--tenant", "Acme Outdoor", "--status", "sent")
    assert [r["id"] for r in by_id] == [ids["blue"]]
    assert [r["id"] for r in by_name] == [ids["acme2"], ids["acme1"], ids["acme0"]]
    assert run_json(run_cli, "outbox", "--tenant", "nobody", expect=2)["exit_code"] == 2

    # --search: a part of the recipient, the subject, or the tenant's name, in any case
    for text, expected in (("BLUEHARBOR", [ids["blue"]]), ("payment for", [ids["blue"]]),
                           ("harbor books", [ids["blue"]]), ("zzz", [])):
        assert [r["id"] for r in run_json(run_cli, "outbox", "--search", text)] == expected
    assert [r["id"] for r in run_json(run_cli, "outbox", "--search", "acme", "--limit", "2")
            ] == [ids["acme4"], ids["acme3"]]

    code, out, err = run_cli("outbox", "--search", "acme", "--limit", "2")
    assert code == 0 and "the newest 2 shown; --limit shows more" in err
    header = out.splitlines()[0].split()
    assert header == ["ID", "KIND", "TENANT", "TO", "STATUS", "ATTEMPTS", "QUEUED", "SENT",
                      "SUBJECT"]
    code, out, err = run_cli("outbox", "--search", "zzz")
    assert code == 0 and out == "" and "no emails match" in err


def test_outbox_show_prints_one_body(engine: Engine, env: dict[str, str], cli_here: CliCall) -> None:
    ids = seed_outbox(engine)
    text = cli_here(env, "outbox", "show", str(ids["blue"]))
    assert text.returncode == 0, text.stderr
    assert text.stdout == "Hello Store t-blue,\n\nyour subscription has expired.\n"
    assert f"email {ids['blue']} · dead · to books@blueharbor.example" in text.stderr
    html = cli_here(env, "outbox", "show", str(ids["blue"]), "--html")
    assert html.stdout.startswith("<p>Hello <b>Store t-blue</b>,</p>")
    doc = json.loads(cli_here(env, "outbox", "show", str(ids["blue"]), "--html", "--json").stdout)
    assert doc["id"] == ids["blue"] and doc["format"] == "html"
    assert doc["body"].startswith("<p>Hello") and doc["status"] == "dead"
    missing = cli_here(env, "outbox", "show", "999999")
    assert missing.returncode == 2 and "no email with id 999999" in missing.stderr
    assert cli_here(env, "outbox", "show").returncode == 2

"""Retention: what a prune deletes and keeps, that its dry run counts exactly that, and that
one process prunes at a time. Old history is made by inserting rows with old timestamps
into the ops_ tables (tests/factories.py), the way the run path and the outbox write them."""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from jobs import outbox, retention
from jobs.audit import recent
from jobs.db import (
    ops_alert_deliveries,
    ops_alerts,
    ops_email_outbox,
    ops_email_search,
    ops_leases,
    ops_run_counts,
    ops_run_items,
    ops_runs,
    transaction,
)
from jobs.presence import who_am_i
from jobs.settings import JOB_IDS, HistoryConfig, Settings
from tests.conftest import CliCall, start
from tests.factories import add_alert, add_email, add_old_email, add_old_run

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)




def kept(settings: Settings) -> Settings:
    """The defaults, but the newest 3 runs of a job kept, so a few rows show the rule."""
    return replace(settings, history=HistoryConfig(keep_days=90, keep_failed_days=365,
                                                   keep_min_runs=3))


def history(engine: Engine) -> dict[str, Any]:
    """Every id of every table retention touches, and the runs' items by run."""
    with transaction(engine) as c:
        def ids(table: Any) -> list[int]:
            return list(c.execute(select(table.c.id).order_by(table.c.id)).scalars())
        items = c.execute(select(ops_run_items.c.run_id, func.count())
                          .group_by(ops_run_items.c.run_id)).all()
        return {"runs": ids(ops_runs), "items": dict(items), "emails": ids(ops_email_outbox),
                "alerts": ids(ops_alerts),
                "deliveries": sorted(c.execute(select(ops_alert_deliveries.c.alert_id))
                                     .scalars()),
                "counts": c.execute(select(ops_run_counts.c.count)).scalars().all()}


def seed(engine: Engine, now: datetime = NOW) -> dict[str, Any]:
    """Old and new history at `now`; returns what the rules (keep 90 days, failures 365, the
    newest 3 runs of each job, sent email 30 days) say must go."""

    def days(n: float) -> datetime:
        return now - timedelta(days=n)

    r = {
        # expiry-checker, oldest first: ids grow with age going down.
        "failed_400": add_old_run(engine, "expiry-checker", "failed", days(400), items=2),
        "partial_380": add_old_run(engine, "expiry-checker", "partial", days(380), items=1),
        "missed_370": add_old_run(engine, "expiry-checker", "missed", days(370)),
        "running_369": add_old_run(engine, "expiry-checker", "running", days(369), items=1),
        "ok_100": add_old_run(engine, "expiry-checker", "succeeded", days(100), items=3),
        "failed_100": add_old_run(engine, "expiry-checker", "failed", days(100.2), items=1),
        "skipped_200": add_old_run(engine, "expiry-checker", "skipped", days(200)),
        # The newest three, however old: kept.
        "ok_99": add_old_run(engine, "expiry-checker", "succeeded", days(99), items=1),
        "ok_98": add_old_run(engine, "expiry-checker", "succeeded", days(98), items=1),
        "ok_89": add_old_run(engine, "expiry-checker", "succeeded", days(89), items=1),
        # cleanup has only two runs, both old: the newest three are all it has.
        "cleanup_1": add_old_run(engine, "cleanup", "succeeded", days(500), items=1),
        "cleanup_2": add_old_run(engine, "cleanup", "failed", days(400), items=1),
        # payment-reminders: a manual run past 90 days goes like a slot's.
        "manual_91": add_old_run(engine, "payment-reminders", "succeeded", days(91), items=2,
                             trigger="manual"),
        "pr_ok_1": add_old_run(engine, "payment-reminders", "succeeded", days(1)),
        "pr_ok_2": add_old_run(engine, "payment-reminders", "succeeded", days(0.5)),
        "pr_ok_3": add_old_run(engine, "payment-reminders", "succeeded", days(0)),
    }
    gone_runs = [r["failed_400"], r["partial_380"], r["missed_370"], r["ok_100"],
                 r["manual_91"]]
    e = {
        "sent_31": add_old_email(engine, "sent", days(31.5), sent_at=days(31)),
        "sent_29": add_old_email(engine, "sent", days(40), sent_at=days(29)),  # sent late: kept
        "dead_366": add_old_email(engine, "dead", days(366)),
        "failed_200": add_old_email(engine, "failed", days(200)),
        "pending_400": add_old_email(engine, "pending", days(400)),
    }
    a = {"old": add_alert(engine, days(91), deliveries=2), "new": add_alert(engine, days(89))}
    with transaction(engine) as c:
        c.execute(ops_run_counts.insert().values(job_id="expiry-checker", status="succeeded",
                                                 count=1234))
    return {"runs": r, "gone_runs": gone_runs, "emails": e,
            "gone_emails": [e["sent_31"], e["dead_366"]], "alerts": a}


def test_prune_keeps_exactly_what_the_rules_say_and_its_dry_run_counts_it(
        engine: Engine, settings: Settings) -> None:
    settings = kept(settings)
    s = seed(engine)
    before = history(engine)
    gone_items = sum(before["items"].get(i, 0) for i in s["gone_runs"])
    assert gone_items == 2 + 1 + 3 + 2

    dry = retention.count(engine, settings, NOW)
    assert dry.to_json() == {"dry_run": True, "deleted": {
        "runs": 5, "run_items": gone_items, "emails": 2, "alerts": 1}}
    assert history(engine) == before  # counting deletes nothing

    # A batch of 2 rows per statement, so every table takes several statements.
    done = retention.prune(engine, settings, NOW, actor="ops@laptop", holder="test", batch=2,
                           clock=lambda: NOW)
    assert done.deleted() == dry.deleted() and done.complete and done.skipped is None
    assert done.largest_statement == 2 and done.statements > 5

    after = history(engine)
    assert after["runs"] == [i for i in before["runs"] if i not in s["gone_runs"]]
    assert after["items"] == {k: v for k, v in before["items"].items() if k not in s["gone_runs"]}
    assert after["emails"] == [i for i in before["emails"] if i not in s["gone_emails"]]
    assert after["alerts"] == [s["alerts"]["new"]]
    assert after["deliveries"] == [s["alerts"]["new"]]
    assert after["counts"] == [1234]  # the metrics counter never goes down

    entry = recent(engine)[0]
    assert (entry.action, entry.actor, entry.at) == ("prune", "ops@laptop", NOW)
    assert json.loads(entry.detail or "") == {"deleted": dry.deleted()}

    # Nothing left to do: a second prune deletes nothing and records nothing.
    again = retention.prune(engine, settings, NOW, actor="ops@laptop", holder="test")
    assert again.total == 0 and retention.count(engine, settings, NOW).total == 0
    assert len(recent(engine)) == 1


def test_a_pruned_email_leaves_no_search_line_behind(engine: Engine, settings: Settings) -> None:
    """The outbox search reads its own copy of each email's words: pruning an email must
    take that copy too, or a search would count emails that are gone."""
    old = add_email(engine, "t-old", at=NOW - timedelta(days=40), status="sent",
                    subject="Renewal for t-old")
    new = add_email(engine, "t-new", at=NOW - timedelta(days=1), status="sent",
                    subject="Renewal for t-new")
    assert {e.id for e in outbox.search(engine, text="renewal").entries} == {old, new}

    done = retention.prune(engine, settings, NOW, actor="ops@laptop", holder="test", batch=1,
                           clock=lambda: NOW)
    assert done.deleted()["emails"] == 1
    with transaction(engine) as c:
        lines = c.execute(select(ops_email_search.c.email_id)).scalars().all()
    assert lines == [new]
    assert [e.id for e in outbox.search(engine, text="renewal").entries] == [new]


def test_two_runners_pruning_at_once_one_prunes_the_other_skips(
        engine: Engine, settings: Settings) -> None:
    settings = kept(settings)
    s = seed(engine)
    start = threading.Barrier(2)
    results: dict[str, retention.PruneResult] = {}

    def runner(name: str) -> None:
        start.wait()
        results[name] = retention.prune(engine, settings, NOW, actor=f"runner:{name}",
                                        holder=name, every=retention.EVERY, batch=2)

    threads = [threading.Thread(target=runner, args=(n,)) for n in ("r1", "r2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    pruned = [n for n, res in results.items() if res.skipped is None]
    skipped = [n for n, res in results.items() if res.skipped is not None]
    assert len(pruned) == 1 and len(skipped) == 1, results
    assert results[pruned[0]].runs == len(s["gone_runs"])
    assert results[skipped[0]].total == 0
    assert [e.actor for e in recent(engine)] == [f"runner:{pruned[0]}"]
    # Within the hour, no runner prunes again; a person may (by hand, without `every`).
    later = retention.prune(engine, settings, NOW, actor="runner:r3", holder="r3",
                            every=retention.EVERY, clock=lambda: NOW + timedelta(minutes=59))
    assert later.skipped == "pruned less than an hour ago"


def test_the_cli_prunes_by_hand_its_dry_run_first_and_refuses_while_a_runner_prunes(
        engine: Engine, env: dict[str, str], tmp_path: Path, cli_here: CliCall) -> None:
    # The CLI reads the real clock: the seed is made relative to it.
    s = seed(engine, datetime.now(UTC))
    toml = tmp_path / "schedules.toml"
    toml.write_text("[history]\nkeep_min_runs = 3\n")
    config = {**env, "STOREFLOW_CONFIG": str(toml)}
    assert retention.take_lease(engine, "runner-elsewhere", datetime.now(UTC))
    busy = cli_here(config, "history", "prune", "--json")
    assert busy.returncode == 4, busy.stderr
    assert "runner-elsewhere is pruning" in busy.stderr
    assert json.loads(busy.stdout)["exit_code"] == 4
    with transaction(engine) as c:  # that runner died: its lease runs out
        c.execute(ops_leases.update().values(until=datetime.now(UTC) - timedelta(hours=1)))

    dry = cli_here(config, "history", "prune", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    real = cli_here(config, "history", "prune", "--json")
    assert real.returncode == 0, real.stderr
    expected = {"runs": 5, "run_items": 8, "emails": 2, "alerts": 1}
    assert json.loads(dry.stdout) == {"dry_run": True, "deleted": expected}
    assert json.loads(real.stdout) == {"dry_run": False, "deleted": expected}
    assert not set(s["gone_runs"]) & set(history(engine)["runs"])
    assert [(e.action, e.actor) for e in recent(engine)] == [("prune", who_am_i())]
    text = cli_here(config, "history", "prune")
    assert text.returncode == 0 and text.stdout.startswith("deleted: 0 runs, 0 run items")
    assert cli_here(config, "history", "--dry-run").returncode == 2


def test_a_runner_prunes_on_its_own_and_audits_it_as_the_runner(
        engine: Engine, env: dict[str, str], tmp_path: Path) -> None:
    s = seed(engine, datetime.now(UTC))
    toml = tmp_path / "schedules.toml"
    # No job fires: the runner's only work here is the prune it starts with.
    toml.write_text("".join(f"[jobs.{j}]\nenabled = false\n" for j in JOB_IDS)
                    + "[history]\nkeep_min_runs = 3\n[runner]\nheartbeat_interval = 0.5\n")
    log = (tmp_path / "runner.log").open("w")
    runner = start(["--config", str(toml), "run", "--log-format", "json"], env, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while not recent(engine) and time.monotonic() < deadline and runner.poll() is None:
            time.sleep(0.1)
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(30) == 0
    finally:
        if runner.poll() is None:
            runner.kill()
        log.close()
    entries = recent(engine)
    assert [e.action for e in entries] == ["prune"], (tmp_path / "runner.log").read_text()
    assert entries[0].actor.startswith("runner:")
    assert not set(s["gone_runs"]) & set(history(engine)["runs"])
    events = [json.loads(line) for line in (tmp_path / "runner.log").read_text().splitlines()]
    pruned = [e for e in events if e["event"] == "history-pruned"]
    assert [(e["runs"], e["run_items"], e["emails"], e["alerts"]) for e in pruned] == [
        (5, 8, 2, 1)]

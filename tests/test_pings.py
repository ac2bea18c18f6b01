"""Dead-man pings against a real local HTTP receiver: `/start` then success or `/fail` for
every run the runner executes (slots and HTTP triggers), never delaying the job, and the
ping URL (a secret) never in a log line."""

from __future__ import annotations

import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from console.runlog import RunLog
from console.runner import RunnerState
from jobs.db import ops_runs
from jobs.errors import ConfigError
from jobs.pings import Pinger, ping_target
from jobs.presence import Presence
from jobs.redaction import origin
from jobs.registry import JOBS
from jobs.settings import Overrides, Settings, load_settings
from jobs.timeutil import utc_now
from tests.conftest import start
from tests.factories import add_tenant
from tests.test_http import TOKEN, Served, State, bearer, request

SECRET = "c0ffee-ping-secret-4b1d"


@dataclass
class Hit:
    path: str
    at: float


class Receiver:
    """A real HTTP server recording every GET; `delay` makes it slow to answer."""

    def __init__(self, delay: float = 0.0) -> None:
        self.hits: list[Hit] = []
        self.delay = delay
        hits, receiver = self.hits, self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(Hit(self.path, time.monotonic()))
                time.sleep(receiver.delay)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def paths(self, prefix: str) -> list[str]:
        return [h.path for h in self.hits if h.path.startswith(prefix)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def expected(prefix: str, statuses: list[str]) -> list[str]:
    out = []
    for status in statuses:
        out += [prefix + "/start", prefix if status == "succeeded" else prefix + "/fail"]
    return out


def wait_until(what: str, check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# --- the pieces --------------------------------------------------------------------------------


def test_ping_targets_follow_the_healthchecks_convention() -> None:
    url = "https://hc-ping.com/" + SECRET
    assert ping_target(url, "start") == url + "/start"
    assert ping_target(url, "success") == url
    assert ping_target(url + "/", "fail") == url + "/fail"
    assert ping_target("https://x.io/p/" + SECRET + "?k=1", "fail") == \
        "https://x.io/p/" + SECRET + "/fail?k=1"
    assert origin(url) == "https://hc-ping.com"
    shown = origin("https://user:pw@host.example:8443/" + SECRET)
    assert shown.startswith("https://host.example") and SECRET not in shown and "pw" not in shown


def test_ping_url_is_checked_and_never_quoted(tmp_path: Path) -> None:
    config = tmp_path / "schedules.toml"
    config.write_text(f'[jobs.cleanup]\nping_url = "ftp://hc-ping.com/{SECRET}"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(Overrides(config=str(config)), env={}, cwd=tmp_path)
    assert "jobs.cleanup.ping_url" in str(err.value) and SECRET not in str(err.value)
    config.write_text(f'[jobs.cleanup]\nping_url = "https://hc-ping.com/{SECRET}"\n')
    settings = load_settings(Overrides(config=str(config)), env={}, cwd=tmp_path)
    assert settings.job("cleanup").ping_url == f"https://hc-ping.com/{SECRET}"
    assert settings.job("expiry-checker").ping_url is None


def test_a_receiver_that_never_answers_does_not_delay_the_caller(
        caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/{SECRET}"
        pinger = Pinger(timeout=1.0)
        caplog.set_level(logging.DEBUG, "storeflow.pings")
        started = time.monotonic()
        for _ in range(20):
            pinger.ping("cleanup", url, "start", 1)
            pinger.ping("cleanup", url, "fail", 1)
        assert time.monotonic() - started < 0.1  # queued, not sent
        assert pinger.flush(timeout=0.5) is False  # still waiting on the silent host
        wait_until("the first ping to time out", lambda: pinger.failed >= 1, timeout=10)
        pinger.close(timeout=0.1)
    assert caplog.records, "a failed ping is logged"
    assert all(SECRET not in r.getMessage() for r in caplog.records)


# --- HTTP-triggered runs -----------------------------------------------------------------------


@dataclass
class PingingState(State):
    """The test's HTTP host, with the runner's pings."""

    pinger: Pinger = field(default_factory=Pinger)

    def ping(self, job_id: str, kind: str, run_id: int | None = None) -> None:
        RunnerState.ping(self, job_id, kind, run_id)  # type: ignore[arg-type]


def test_http_triggered_runs_ping_start_and_their_outcome(
        engine: Engine, settings: Settings, receiver: Receiver) -> None:
    base = f"{receiver.url}/{SECRET}"
    jobs = {j: replace(c, ping_url=f"{base}/{j}") for j, c in settings.jobs.items()}
    state = PingingState(engine, replace(settings, cron_token=TOKEN, jobs=jobs), "r-http",
                         threading.Event())
    with Presence(engine, "runner", clock=utc_now, interval=1.0) as p:
        state.runner_id = p.id
        served = Served(state)
        try:
            endpoint = JOBS["expiry-checker"].endpoint
            assert request(served.url + endpoint, headers=bearer()).status == 200
            add_tenant(engine, email="not an address", expire_date=utc_now() - timedelta(days=9))
            assert request(served.url + endpoint, headers=bearer()).status == 200  # partial
            # a preview is not a run: no ping
            assert request(served.url + endpoint + "?dry_run=1", headers=bearer()).status == 200
            assert state.pinger.flush(10)
        finally:
            served.close()
            state.pinger.close()
    prefix = f"/{SECRET}/expiry-checker"
    assert receiver.paths(prefix) == expected(prefix, ["succeeded", "partial"])


# --- a real runner -----------------------------------------------------------------------------


@pytest.mark.slow(seconds=4)
def test_a_runner_pings_start_and_success_or_fail_for_each_run(
        engine: Engine, env: dict[str, str], tmp_path: Path, receiver: Receiver) -> None:
    ok, bad = f"/{SECRET}/ok", f"/{SECRET}/bad"
    config = tmp_path / "schedules.toml"
    config.write_text("\n".join([
        "[jobs.expiry-checker]", 'schedule = "* * * * * */2"', f'ping_url = "{receiver.url}{ok}"',
        "[jobs.analytics-aggregate]", 'schedule = "* * * * * */2"',
        f'ping_url = "{receiver.url}{bad}"',
        "[jobs.payment-reminders]", "enabled = false",
        "[jobs.cleanup]", "enabled = false",
        "[runner]", "heartbeat_interval = 0.5", "stale_after = 3", "",
    ]))
    # analytics-aggregate fails: its cache does not answer.
    env = {**env, "REDIS_URL": "redis://127.0.0.1:1/0"}
    add_tenant(engine)
    log_path = tmp_path / "runner.log"
    with log_path.open("w") as log_file:
        proc = start(["--config", str(config), "run", "--log-format", "json"], env, tmp_path,
                     stderr=log_file)
        try:
            wait_until("two outcomes of each job", lambda: (
                (receiver.paths(ok).count(ok) >= 2
                 and receiver.paths(bad).count(bad + "/fail") >= 2)
                or proc.poll() is not None))
            assert proc.poll() is None, log_path.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
    with engine.connect() as c:
        rows = c.execute(select(ops_runs.c.job_id, ops_runs.c.status)
                         .where(ops_runs.c.status.not_in(["skipped", "missed"]))
                         .order_by(ops_runs.c.id)).all()
    statuses = {j: [s for jj, s in rows if jj == j] for j in ("expiry-checker",
                                                             "analytics-aggregate")}
    assert "failed" in statuses["analytics-aggregate"]
    assert set(statuses["analytics-aggregate"]) <= {"failed", "interrupted"}
    assert receiver.paths(ok) == expected(ok, statuses["expiry-checker"])
    assert receiver.paths(bad) == expected(bad, statuses["analytics-aggregate"])
    text = log_path.read_text()
    assert SECRET not in text
    for line in text.splitlines():
        json.loads(line)


def test_runner_state_without_a_pinger_or_a_url_sends_nothing(
        engine: Engine, settings: Settings, receiver: Receiver) -> None:
    import io

    state = RunnerState(engine, settings, "r", "t", RunLog(io.StringIO(), "json"))
    state.ping("cleanup", "start", 1)  # no pinger: nothing, no error
    state.pinger = Pinger()
    state.ping("cleanup", "start", 1)  # no ping_url: nothing
    state.ping("no-such-job", "start", 1)
    assert state.pinger.flush(5)
    state.pinger.close()
    assert receiver.hits == []

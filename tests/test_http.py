"""The HTTP face over real HTTP: curl and raw sockets against a served app, on
SQLite and PostgreSQL. The server runs on its own event loop in a thread, as inside the
runner, so these tests can use blocking clients."""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine

from console.http import HttpHost, HttpServer, check_token, parse_listen, start_http
from console.runlog import RunLog
from console.runner import RunnerState
from jobs import runs
from jobs.analytics import cache_key
from jobs.audit import recent
from jobs.cache import TableCache
from jobs.db import make_engine, ops_email_outbox, ops_runs, tenants
from jobs.errors import ConfigError
from jobs.migrate import upgrade
from jobs.presence import Presence
from jobs.registry import JOBS
from jobs.settings import Overrides, Settings, load_settings
from jobs.timeutil import utc_now
from tests.conftest import cli, start
from tests.factories import add_order, add_tenant

TOKEN = "sf-ops-Token-0123456789abcdef"  # mixed case, so a case change is a different token


@dataclass
class State:
    engine: Engine
    settings: Settings
    runner_id: str
    stop: threading.Event
    in_flight: dict[int, str] = field(default_factory=dict)
    last_loop_at: datetime | None = field(default_factory=utc_now)  # a loop that just ticked

    def health(self) -> dict[str, Any]:
        return {}  # no loop of its own to report on


class Served:
    """start_http on an event loop of its own, like the runner's."""

    def __init__(self, state: HttpHost) -> None:
        self.state = state
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        try:
            self.server: HttpServer = self._call(start_http(state, "127.0.0.1", 0))
        except BaseException:
            self._close_loop()
            raise
        self.url = self.server.url
        self.port = self.server.port

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def _close_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def close(self) -> None:
        self._call(self.server.cleanup())
        self._close_loop()


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


def request(url: str, method: str = "GET", headers: dict[str, str] | None = None,
            data: bytes | None = None) -> Reply:
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw, status, hdrs = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw, status, hdrs = exc.read(), exc.code, dict(exc.headers)
    return Reply(status, json.loads(raw) if raw else None, hdrs)


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def seed_curl(url: str, token: str = TOKEN) -> Reply:
    """The seed's manual test, verbatim: `curl -X GET -H "Authorization: Bearer
    ${CRON_SECRET_TOKEN}" URL` (urllib when curl is missing)."""
    if shutil.which("curl") is None:
        return request(url, headers=bearer(token))
    proc = subprocess.run(
        ["bash", "-c", 'curl -sS -X GET -H "Authorization: Bearer ${CRON_SECRET_TOKEN}" '
                       '-w "\\n%{http_code}" "$URL"'],
        env={**os.environ, "CRON_SECRET_TOKEN": token, "URL": url},
        capture_output=True, text=True, timeout=120, check=True,
    )
    body, _, status = proc.stdout.rpartition("\n")
    return Reply(int(status), json.loads(body), {})


def raw_request(port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Bytes on a socket, for what well-behaved clients refuse to send."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    return int(raw.split(b" ", 2)[1]), raw


class LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(autouse=True)
def logs() -> Iterator[LogLines]:
    """Every log line of every test, at DEBUG; none may carry the token."""
    handler = LogLines()
    root = logging.getLogger()
    loggers = [logging.getLogger(n) for n in ("storeflow", "aiohttp", "asyncio", "jobs")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(level)
    leaked = [line for line in handler.lines if TOKEN in line or TOKEN.lower() in line]
    assert not leaked, f"the token reached a log line: {leaked[0][:300]}"


@pytest.fixture
def presence(engine: Engine) -> Iterator[Presence]:
    with Presence(engine, "runner", clock=utc_now, interval=1.0) as p:
        yield p


@pytest.fixture
def state(engine: Engine, settings: Settings, presence: Presence) -> State:
    return State(engine, replace(settings, cron_token=TOKEN), presence.id, threading.Event())


@pytest.fixture
def served(state: State) -> Iterator[Served]:
    s = Served(state)
    yield s
    s.close()


# --- the seed's manual tests ------------------------------------------------------------------


def test_seed_curl_commands_get_the_seed_response_shape(served: Served, engine: Engine) -> None:
    expired = add_tenant(engine, expire_date=utc_now() - timedelta(days=1))
    for job_id, spec in JOBS.items():
        reply = seed_curl(served.url + spec.endpoint)
        body = reply.body
        assert {"message", "results", "timestamp"} <= set(body), body
        assert isinstance(body["results"]["processed"], int)
        assert isinstance(body["results"]["errors"], list)
        assert body["timestamp"].endswith("Z") and len(body["timestamp"]) == 24
        assert body["job"] == job_id and body["trigger"] == "http" and body["dry_run"] is False
        assert isinstance(body["run_id"], int)
        # A run that failed is a 500 with its report; everything else is a 200.
        assert reply.status == (500 if body["status"] == "failed" else 200), body
        if job_id in ("expiry-checker", "payment-reminders"):
            assert reply.status == 200 and body["message"] == "Job completed", body
        with engine.connect() as c:
            row = c.execute(select(ops_runs).where(ops_runs.c.id == body["run_id"])).one()
        assert row.trigger == "http" and row.started_by == "http:127.0.0.1"
        assert row.runner_id == served.state.runner_id and row.status == body["status"]

    with engine.connect() as c:
        assert c.execute(select(tenants.c.status).where(tenants.c.id == expired)).scalar() \
            == "expired"


def test_item_errors_are_a_200_with_the_errors_in_the_body(served: Served, engine: Engine,
                                                           logs: LogLines) -> None:
    bad = add_tenant(engine, email="not an address", expire_date=utc_now() - timedelta(days=1))
    reply = request(served.url + JOBS["expiry-checker"].endpoint, headers=bearer())
    assert reply.status == 200
    assert reply.body["message"] == "Job completed with errors"
    assert [e["tenant_id"] for e in reply.body["results"]["errors"]] == [bad]
    assert reply.body["results"]["items"][0]["status"] == "error"
    assert any(line.endswith("partial (1 item, 1 error)") for line in logs.lines), logs.lines


def test_post_works_and_its_body_is_ignored(served: Served, engine: Engine) -> None:
    reply = request(served.url + JOBS["expiry-checker"].endpoint, "POST", bearer(),
                    data=b'{"dry_run": true}')
    assert reply.status == 200 and reply.body["dry_run"] is False
    assert reply.body["message"] == "Job completed"


def test_dry_run_previews_and_writes_nothing(served: Served, engine: Engine) -> None:
    tid = add_tenant(engine, expire_date=utc_now() - timedelta(days=30))
    reply = request(served.url + JOBS["expiry-checker"].endpoint + "?dry_run=1",
                    headers=bearer())
    assert reply.status == 200
    assert reply.body["message"] == "Preview completed" and reply.body["dry_run"] is True
    assert reply.body["run_id"] is None
    assert [(i["tenant_id"], i["action"]) for i in reply.body["results"]["items"]] \
        == [(tid, "suspended")]
    with engine.connect() as c:
        assert c.execute(select(tenants.c.status).where(tenants.c.id == tid)).scalar() \
            == "active"
        assert c.execute(select(func.count()).select_from(ops_runs)).scalar() == 0
        assert c.execute(select(func.count()).select_from(ops_email_outbox)).scalar() == 0
    bad = request(served.url + JOBS["expiry-checker"].endpoint + "?dry_run=maybe",
                  headers=bearer())
    assert bad.status == 400


def test_an_http_trigger_is_audited_with_the_client_address_a_preview_is_not(
        served: Served, engine: Engine) -> None:
    url = served.url + JOBS["expiry-checker"].endpoint
    assert request(url + "?dry_run=1", headers=bearer()).status == 200
    reply = request(url, headers=bearer())
    assert reply.status == 200
    assert [(e.action, e.actor, e.job, e.run_id, e.detail) for e in recent(engine)] == [
        ("trigger", "127.0.0.1", "expiry-checker", reply.body["run_id"], "http")]


def test_dates_in_the_query_are_the_clis_and_anything_else_is_a_400(served: Served,
                                                                    engine: Engine) -> None:
    tid = add_tenant(engine)
    add_order(engine, tid, datetime(2026, 11, 20, 12, tzinfo=UTC), "12.50")
    url = served.url + JOBS["analytics-aggregate"].endpoint
    cache = TableCache(engine)

    one = request(url + "?date=2026-11-20", headers=bearer())
    assert one.status == 200, one.body
    assert one.body["results"]["summary"]["date"] == "2026-11-20"
    assert json.loads(cache.get(cache_key(tid, date(2026, 11, 20))).value)["revenue"] == 12.5
    back = request(url + "?from=2026-11-19&to=2026-11-20&dry_run=1", headers=bearer())
    assert back.status == 200 and back.body["results"]["summary"]["date"] \
        == "2026-11-19..2026-11-20"

    tomorrow = (utc_now() + timedelta(days=2)).date().isoformat()
    refused = {
        url + "?dat=2026-11-21": "unknown query parameter 'dat'",
        url + "?date=soon": "date: 'soon' is not a date",
        url + "?date=2026-11-21&date=2026-11-22": "'date' given more than once",
        url + "?from=2026-11-21": "--from needs --to",
        url + "?date=2026-11-20&from=2026-11-20&to=2026-11-21": "either --date or --from/--to",
        url + "?from=2025-01-01&to=2026-01-02&dry_run=1": "at most 366 days",
        url + f"?date={tomorrow}": f"--date {tomorrow} is in the future",
        url + f"?date={tomorrow}&dry_run=1": "is in the future",
        served.url + JOBS["cleanup"].endpoint + "?date=2026-11-21":
            "analytics-aggregate only",
    }
    for bad, says in refused.items():
        reply = request(bad, headers=bearer())
        assert reply.status == 400, (bad, reply.body)
        assert reply.body["message"] == "Bad request" and says in reply.body["error"], reply.body
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(ops_runs)).scalar() == 1  # the first
    assert cache.get(cache_key(tid, date(2026, 11, 21))) is None


# --- authentication ------------------------------------------------------------------------


def _settings_with(env: dict[str, str], tmp_path: Path, **extra: str) -> Settings:
    return load_settings(Overrides(), env={**env, **extra}, cwd=tmp_path)


@pytest.mark.parametrize(("extra", "reason"), [
    ({}, "not set"),
    ({"CRON_SECRET_TOKEN": ""}, "not set"),
    ({"CRON_SECRET_TOKEN": "short-token-15c"}, "is 15 characters long"),
    ({"CRON_SECRET": "abc"}, "is 3 characters long"),
    ({"CRON_SECRET_TOKEN": TOKEN + " "}, "whitespace"),
])
def test_start_is_refused_without_a_usable_token(env: dict[str, str], tmp_path: Path,
                                                 extra: dict[str, str], reason: str) -> None:
    settings = _settings_with(env, tmp_path, **extra)
    with pytest.raises(ConfigError) as err:
        check_token(settings)
    assert err.value.key == "CRON_SECRET_TOKEN" and reason in err.value.reason
    assert "\n" not in err.value.message
    state = State(make_engine(settings.database_url), settings, "runner-x", threading.Event())
    with pytest.raises(ConfigError):
        asyncio.run(start_http(state, "127.0.0.1", 0))
    for value in extra.values():
        if value:
            assert value.strip() not in err.value.message  # never echo the secret


def test_vercel_name_for_the_token_is_accepted(env: dict[str, str], tmp_path: Path) -> None:
    assert check_token(_settings_with(env, tmp_path, CRON_SECRET=TOKEN)) == TOKEN


@pytest.mark.parametrize("header", [
    None,
    f"Bearer {TOKEN[:-1]}x",  # wrong token
    f"Bearer {TOKEN.upper()}",  # different case
    f"Bearer {TOKEN.lower()}",
    f"Bearer {TOKEN} x",  # a space, then more, inside the value
    f"Bearer {TOKEN}\u00a0",  # a trailing no-break space (copied from a web page)
    f"Bearer  {TOKEN}",  # two spaces: the credentials start with a space
    f"Bearer {TOKEN}{TOKEN}",
    f"Bearer{TOKEN}",
    TOKEN,  # no scheme
    "Bearer ",
    f"Basic {TOKEN}",
    "Basic " + base64.b64encode(f"user:{TOKEN}".encode()).decode(),
    f"Token {TOKEN}",
])
def test_wrong_or_missing_credentials_are_401(served: Served, engine: Engine,
                                              header: str | None) -> None:
    tid = add_tenant(engine, expire_date=utc_now() - timedelta(days=1))
    headers = {} if header is None else {"Authorization": header}
    if header is not None and not header.isascii():
        status, raw = raw_request(
            served.port,
            b"GET " + JOBS["expiry-checker"].endpoint.encode() + b" HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: " + header.encode() + b"\r\nConnection: close\r\n\r\n")
        body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    else:
        reply = request(served.url + JOBS["expiry-checker"].endpoint, headers=headers)
        status, body = reply.status, reply.body
        assert reply.headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert status == 401 and body == {"message": "Unauthorized"}
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(ops_runs)).scalar() == 0
        assert c.execute(select(tenants.c.status).where(tenants.c.id == tid)).scalar() \
            == "active"


def test_whitespace_around_a_header_value_is_not_part_of_it(served: Served) -> None:
    # RFC 9110 5.5: the parser strips it before any handler sees the header, so
    # "Bearer <token> " on the wire is the token itself. The scheme is case-insensitive.
    for value in (f"Bearer {TOKEN} ", f"Bearer {TOKEN}\t", f"bearer {TOKEN}"):
        status, raw = raw_request(
            served.port,
            b"GET " + JOBS["expiry-checker"].endpoint.encode() + b" HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: " + value.encode() + b"\r\nConnection: close\r\n\r\n")
        assert status == 200, raw[:200]


def test_the_token_never_reaches_a_log(served: Served, logs: LogLines) -> None:
    path = JOBS["cleanup"].endpoint.encode()
    # aiohttp quotes the start of a malformed header line in its error log: both of these
    # would print the token there without the redaction.
    too_long = b"Authorization: Bearer " + TOKEN.encode() + b"x" * 20_000
    bad_char = b"Authorization: Bearer " + TOKEN.encode() + b"\x01"
    for header in (too_long, bad_char):
        status, _ = raw_request(served.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n"
                                  + header + b"\r\nConnection: close\r\n\r\n")
        assert status in (400, 431)
    wrong = bearer(TOKEN[:-1] + "y")
    assert request(served.url + "/api/admin/cleanup?note=q1", headers=wrong).status == 401
    assert request(served.url + "/api/admin/cleanup", headers=bearer()).status in (200, 500)
    text_ = "\n".join(logs.lines)
    assert "storeflow.http.server WARNING" in text_ and "LineTooLong" in text_
    assert "wrong token" in text_ and "GET /api/admin/cleanup 401" in text_
    assert "note=q1" not in text_  # no query strings either
    # (the autouse fixture asserts no line holds the token)


# --- malformed and oversized requests ------------------------------------------------------


def test_a_huge_header_is_refused_and_the_server_goes_on(served: Served) -> None:
    head = (b"GET " + JOBS["expiry-checker"].endpoint.encode() + b" HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"X-Padding: " + b"p" * 100_000 + b"\r\nConnection: close\r\n\r\n")
    status, _ = raw_request(served.port, head)
    assert status in (400, 431)
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(500))
    status, _ = raw_request(served.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many
                            + b"Connection: close\r\n\r\n")
    assert status in (400, 431)
    assert request(served.url + "/healthz").status == 200


def test_a_huge_body_is_413(served: Served, engine: Engine) -> None:
    url = served.url + JOBS["expiry-checker"].endpoint
    big = b"x" * (2 * 1024 * 1024)
    reply = request(url, "POST", bearer(), data=big)
    assert reply.status == 413 and reply.body["message"] == "Request Entity Too Large"
    # chunked, so no Content-Length warns the server: it stops reading at the limit
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    conn.request("POST", JOBS["expiry-checker"].endpoint,
                 body=iter([b"y" * 65536] * 32), headers=bearer(), encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413
    conn.close()
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(ops_runs)).scalar() == 0
    small = request(url, "POST", bearer(), data=b"z" * 1000)
    assert small.status == 200


def test_unknown_path_and_other_methods(served: Served) -> None:
    reply = request(served.url + "/api/admin/nope", headers=bearer())
    assert reply.status == 404 and reply.body == {"message": "Not Found"}
    assert request(served.url + "/", headers=bearer()).status == 404
    for method in ("PUT", "DELETE", "PATCH", "HEAD"):
        reply = request(served.url + JOBS["cleanup"].endpoint, method, bearer())
        assert reply.status == 405, method
        assert set(reply.headers["Allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    assert request(served.url + "/healthz", "POST").status == 405


# --- one run at a time ---------------------------------------------------------------------


def test_a_second_trigger_while_the_job_runs_is_409(served: Served, engine: Engine,
                                                    presence: Presence) -> None:
    # The job's lock is held by a running run of a live runner (another process's slot).
    claim = runs.claim_slot(engine, served.state.settings, "expiry-checker",
                            utc_now().replace(second=0, microsecond=0),
                            runner_id=presence.id, started_by="runner@elsewhere")
    assert claim.run_id is not None
    reply = seed_curl(served.url + JOBS["expiry-checker"].endpoint)
    assert reply.status == 409
    assert reply.body == {"message": "Job already running", "job": "expiry-checker",
                          "run_id": claim.run_id}
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(ops_runs)).scalar() == 1
    # A preview is not a run: it goes through while the job runs.
    assert request(served.url + JOBS["expiry-checker"].endpoint + "?dry_run=1",
                   headers=bearer()).status == 200


def test_concurrent_triggers_one_runs_the_other_is_409(served: Served, engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("needs row locks to hold a run inside the job; SQLite locks the whole file")
    tid = add_tenant(engine, expire_date=utc_now() - timedelta(days=1))
    url = served.url + JOBS["expiry-checker"].endpoint
    blocker = engine.connect()
    tx = blocker.begin()
    blocker.execute(text("SELECT 1 FROM tenants WHERE id = :id FOR UPDATE"), {"id": tid})
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(request, url, "GET", bearer())
        try:
            deadline = time.monotonic() + 30
            while True:  # the first run is inside the job, waiting on the tenant's row
                with engine.connect() as c:
                    running = c.execute(select(ops_runs.c.id).where(
                        ops_runs.c.status == "running")).scalars().all()
                if running or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert len(running) == 1
            second = seed_curl(url)
            assert second.status == 409 and second.body["run_id"] == running[0]
        finally:
            tx.rollback()
            blocker.close()
        reply = first.result(60)
    assert reply.status == 200 and reply.body["run_id"] == running[0]
    assert reply.body["results"]["items"][0]["action"] == "expired"


# --- /healthz ------------------------------------------------------------------------------


def test_healthz_reports_database_and_runner(served: Served, presence: Presence) -> None:
    reply = request(served.url + "/healthz")
    assert reply.status == 200
    assert reply.body["status"] == "ok" and reply.body["runner_id"] == presence.id
    assert set(reply.body) == {"status", "runner_id", "last_tick_age_s"}  # nothing more
    reply = request(served.url + "/healthz", headers=bearer())
    assert reply.body["status"] == "ok" and reply.body["database"]["reachable"] is True
    assert reply.body["runner"] == {"id": presence.id, "alive": True, "stopping": False}
    assert reply.body["version"]
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda _: request(served.url + "/healthz").status, range(64)))
    assert statuses == [200] * 64


def test_healthz_details_carry_the_runners_own_view(engine: Engine, settings: Settings,
                                                   presence: Presence) -> None:
    """The runner's RunnerState is the host: its health() adds the loop's details."""
    state = RunnerState(engine=engine, settings=replace(settings, cron_token=TOKEN),
                        runner_id=presence.id, started_by="runner@test",
                        log=RunLog(io.StringIO()), presence=presence, last_loop_at=utc_now())
    state.in_flight[7] = "cleanup"
    s = Served(state)
    try:
        assert set(request(s.url + "/healthz").body) == {"status", "runner_id",
                                                        "last_tick_age_s"}
        runner = request(s.url + "/healthz", headers=bearer()).body["runner"]
    finally:
        s.close()
    assert runner["id"] == presence.id and runner["alive"] is True
    assert runner["running"] == [{"run_id": 7, "job": "cleanup"}]
    assert runner["started_at"] and runner["last_loop_at"] and runner["heartbeat_error"] is None
    assert set(runner) == {"id", "alive", "stopping", "started_at", "last_loop_at",
                           "next_wake", "running", "heartbeat_error"}


def test_healthz_tells_only_the_token_that_the_database_is_down(env: dict[str, str],
                                                                 tmp_path: Path) -> None:
    dead = "postgresql://postgres@127.0.0.1:1/x"
    settings = _settings_with(env, tmp_path, DATABASE_URL=dead, CRON_SECRET_TOKEN=TOKEN)
    s = Served(State(make_engine(dead), settings, "runner-gone", threading.Event()))
    try:
        # The loop ticks (it backs off while the database is down): healthy, and silent
        # about the database without the token.
        public = request(s.url + "/healthz")
        assert public.status == 200 and "127.0.0.1:1" not in json.dumps(public.body)
        reply = request(s.url + "/healthz", headers=bearer())
        assert reply.status == 200
        assert reply.body["database"]["reachable"] is False
        assert "127.0.0.1:1" in reply.body["database"]["error"]
        assert reply.body["runner"]["alive"] is None
        trigger = request(s.url + JOBS["cleanup"].endpoint, headers=bearer())
        assert trigger.status == 503 and trigger.body["message"] == "Database unreachable"
    finally:
        s.close()


def test_a_run_that_cannot_start_is_a_500_with_the_reason(env: dict[str, str],
                                                         tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ops-only.sqlite3'}"
    eng = make_engine(url)
    upgrade(eng)  # ops_ tables, but none of StoreFlow's
    settings = _settings_with(env, tmp_path, DATABASE_URL=url, CRON_SECRET_TOKEN=TOKEN)
    s = Served(State(eng, settings, "runner-x", threading.Event()))
    try:
        reply = request(s.url + JOBS["cleanup"].endpoint, headers=bearer())
    finally:
        s.close()
    assert reply.status == 500
    assert reply.body["message"] == "Job not started" and reply.body["job"] == "cleanup"
    assert "platform tables" in reply.body["error"]


def test_a_stopping_runner_refuses_new_triggers(served: Served, engine: Engine) -> None:
    served.state.stop.set()
    reply = request(served.url + JOBS["expiry-checker"].endpoint, headers=bearer())
    assert reply.status == 503 and reply.body["message"] == "Runner is shutting down"
    health = request(served.url + "/healthz")
    assert health.status == 503 and health.body["status"] == "stopping"
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(ops_runs)).scalar() == 0


def test_address_in_use_is_a_config_error(served: Served) -> None:
    with pytest.raises(ConfigError) as err:
        asyncio.run(start_http(served.state, "127.0.0.1", served.port))
    assert "cannot listen" in err.value.message


@pytest.mark.parametrize(("text_", "expected"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    (":9000", ("127.0.0.1", 9000)),
    ("9000", ("127.0.0.1", 9000)),
    ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("[::1]:8080", ("::1", 8080)),
])
def test_parse_listen(text_: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text_) == expected


@pytest.mark.parametrize("bad", ["", "host:", "host:http", "1.2.3.4:70000"])
def test_parse_listen_refuses(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen(bad)


# --- a real runner process -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_a_real_runner_answers_the_seed_curl_commands(env: dict[str, str], engine: Engine,
                                                      tmp_path: Path) -> None:
    expired = add_tenant(engine, expire_date=utc_now() - timedelta(days=1))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out_file, err_file = tmp_path / "runner.out", tmp_path / "runner.err"
    with out_file.open("w") as out_w, err_file.open("w") as err_w:
        proc = start(["run", "--http", f"127.0.0.1:{port}"],
                     {**env, "CRON_SECRET_TOKEN": TOKEN}, tmp_path, stdout=out_w, stderr=err_w)
    try:
        deadline = time.monotonic() + 60
        health: Reply | None = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = request(url + "/healthz")
                break
            except OSError:
                time.sleep(0.1)
        assert health is not None, (proc.poll(), err_file.read_text())
        assert health.status == 200 and health.body["status"] == "ok"
        runner_id = health.body["runner_id"]

        for job_id, spec in JOBS.items():
            reply = seed_curl(url + spec.endpoint)
            assert {"message", "results", "timestamp"} <= set(reply.body)
            assert reply.body["job"] == job_id and reply.body["trigger"] == "http"
            assert reply.status == (500 if reply.body["status"] == "failed" else 200)
            with engine.connect() as c:
                row = c.execute(select(ops_runs).where(
                    ops_runs.c.id == reply.body["run_id"])).one()
            assert row.runner_id == runner_id and row.started_by == "http:127.0.0.1"
        assert seed_curl(url + JOBS["cleanup"].endpoint, TOKEN.lower()).status == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    out, err = out_file.read_text(), err_file.read_text()
    assert proc.returncode == 0, err
    assert TOKEN not in out + err and TOKEN.lower() not in out + err
    # the access log, via the runner
    assert "path=/api/admin/subscriptions/expiry-checker status=200" in err
    with engine.connect() as c:
        assert c.execute(select(tenants.c.status).where(tenants.c.id == expired)).scalar() \
            == "expired"


@pytest.mark.slow
def test_a_real_runners_json_log_has_request_fields_and_warns_once_without_smtp(
        env: dict[str, str], engine: Engine, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    err_file = tmp_path / "runner.err"
    with err_file.open("w") as err_w:
        proc = start(["run", "--http", f"127.0.0.1:{port}", "--log-format", "json"],
                     {**env, "CRON_SECRET_TOKEN": TOKEN}, tmp_path, stderr=err_w)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                request(url + "/healthz")
                break
            except OSError:
                time.sleep(0.1)
        endpoint = JOBS["cleanup"].endpoint
        assert request(url + endpoint + "?dry_run=1", headers=bearer()).status == 200
        assert request(url + endpoint, "POST").status == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    err = err_file.read_text()
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in err.splitlines()]
    served = [{k: e[k] for k in ("level", "method", "path", "status", "client")}
              for e in events if e["event"] == "http-request"]
    assert served == [
        {"level": "info", "method": "GET", "path": endpoint, "status": 200, "client": "127.0.0.1"},
        {"level": "info", "method": "POST", "path": endpoint, "status": 401,
         "client": "127.0.0.1"},
    ]
    assert all(isinstance(e["duration_ms"], float) for e in events
               if e["event"] == "http-request")
    assert not [e for e in events if e.get("logger") == "storeflow.http.access"]
    smtp = [e for e in events if e["event"] == "smtp-not-configured"]
    assert len(smtp) == 1 and smtp[0]["level"] == "warning" and "SMTP_URL" in smtp[0]["reason"]


@pytest.mark.slow
@pytest.mark.parametrize("token", [None, "0123456789abcde"])
def test_a_real_runner_refuses_http_without_a_usable_token(env: dict[str, str], engine: Engine,
                                                           tmp_path: Path,
                                                           token: str | None) -> None:
    port = free_port()
    run_env = dict(env) if token is None else {**env, "CRON_SECRET_TOKEN": token}
    proc = cli(run_env, "run", "--http", f"127.0.0.1:{port}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("storeflow-ops: ")]
    assert len(lines) == 1 and lines[0].startswith(
        "storeflow-ops: environment: CRON_SECRET_TOKEN: "), proc.stderr
    assert "Traceback" not in proc.stderr
    if token:
        assert token not in proc.stderr
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_an_http_run_past_its_timeout_is_a_500_with_its_report(
        state: State, engine: Engine) -> None:
    if engine.dialect.name == "sqlite":
        pytest.skip("holds one row's lock the way PostgreSQL does; SQLite locks the whole file")
    job = state.settings.job("expiry-checker")
    state.settings = replace(state.settings, jobs={
        **state.settings.jobs, "expiry-checker": replace(job, timeout=timedelta(seconds=1))})
    locked = add_tenant(engine, expire_date=utc_now() - timedelta(days=1))
    served = Served(state)
    try:
        with engine.connect() as holder:
            holder.execute(text("SELECT id FROM tenants WHERE id = :id FOR UPDATE"),
                           {"id": locked})
            started = time.monotonic()
            reply = request(served.url + JOBS["expiry-checker"].endpoint, headers=bearer())
            took = time.monotonic() - started
            holder.rollback()
    finally:
        served.close()
    assert reply.status == 500 and took < 5, (reply.status, took)
    assert reply.body["status"] == "timed_out" and reply.body["message"] == "Job failed"
    assert reply.body["results"]["items"][0]["tenant_id"] == locked

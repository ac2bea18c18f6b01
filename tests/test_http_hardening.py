"""The HTTP face against slow, idle and too many clients, and what /healthz tells a
stranger: real sockets against a served app and against real `storeflow-ops run --http`
processes (one with a low file limit, one whose loop is wedged on a database lock)."""

from __future__ import annotations

import io
import json
import logging
import re
import resource
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

import console.http
from console.runlog import RunLog, RunLogHandler
from jobs.presence import Presence
from jobs.registry import JOBS
from jobs.settings import Settings
from jobs.timeutil import utc_now
from tests.conftest import EXE
from tests.test_http import TOKEN, Reply, Served, State, bearer, free_port

SLACK = 3.0  # seconds a loaded machine may add to a server-side timeout
# The server's limits in the slow-client tests: the shipped ones (5 s idle, 10 s for a
# body, console/http.py) scaled down, the same mechanisms and order (idle < body), so
# the test waits 6 s instead of 12. The server reads them when it starts and each time it
# waits for a body; the tests read them as served (console.http.X, not a copy).
QUICK_IDLE_TIMEOUT = 2.0
QUICK_BODY_TIMEOUT = 4.0


@pytest.fixture
def host(engine: Engine, settings: Settings) -> Iterator[State]:
    """What the runner gives the HTTP face, with a live presence and a loop that ticked."""
    with Presence(engine, "runner", clock=utc_now, interval=1.0) as p:
        yield State(engine, replace(settings, cron_token=TOKEN), p.id, threading.Event())


def _serving(host: State) -> Iterator[Served]:
    """Served for a fixture's lifetime: what the fixtures below share."""
    s = Served(host)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def served(host: State) -> Iterator[Served]:
    yield from _serving(host)


@pytest.fixture
def served_quick(host: State, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """Served with the limits scaled down (QUICK_*), for the tests that wait them out."""
    assert QUICK_IDLE_TIMEOUT < console.http.IDLE_TIMEOUT
    assert QUICK_BODY_TIMEOUT < console.http.BODY_TIMEOUT
    monkeypatch.setattr(console.http, "IDLE_TIMEOUT", QUICK_IDLE_TIMEOUT)
    monkeypatch.setattr(console.http, "BODY_TIMEOUT", QUICK_BODY_TIMEOUT)
    yield from _serving(host)


def request(url: str, method: str = "GET", headers: dict[str, str] | None = None,
            timeout: float = 10) -> Reply:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw, status, hdrs = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw, status, hdrs = exc.read(), exc.code, dict(exc.headers)
    return Reply(status, json.loads(raw) if raw else None, hdrs)


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed (monotonic)."""
    sock.settimeout(limit)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks), time.monotonic()


def server_header(raw: bytes) -> str | None:
    m = re.search(rb"(?im)^server:[ \t]*([^\r\n]*)", raw.split(b"\r\n\r\n", 1)[0])
    return None if m is None else m.group(1).decode()


# --- /healthz without a token ---------------------------------------------------------------


def test_healthz_without_a_token_says_ok_and_the_tick_age_only(served: Served) -> None:
    reply = request(served.url + "/healthz")
    assert reply.status == 200
    assert set(reply.body) == {"status", "runner_id", "last_tick_age_s"}
    assert reply.body["status"] == "ok" and 0 <= reply.body["last_tick_age_s"] < 60
    # The runner's id is opaque: no host name, no pid.
    assert re.fullmatch(r"runner-[0-9a-f]{16}", reply.body["runner_id"])
    wrong = request(served.url + "/healthz", headers=bearer(TOKEN.lower()))
    assert set(wrong.body) == {"status", "runner_id", "last_tick_age_s"}
    detailed = request(served.url + "/healthz", headers=bearer())
    assert detailed.body["database"] == {"reachable": True, "error": None}


def test_no_answer_names_aiohttp_or_python(served: Served) -> None:
    answers = {
        "healthz": b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "401": (b"GET " + JOBS["cleanup"].endpoint.encode()
                + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        "404": b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "405": b"DELETE /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "400": b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    }
    for name, head in answers.items():
        with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
            sock.sendall(head)
            raw, _ = read_until_closed(sock, 30)
        assert raw.startswith(b"HTTP/1."), (name, raw[:200])
        shown = server_header(raw)
        assert shown == "storeflow-ops", (name, shown)
        assert b"aiohttp" not in raw.lower() and b"python" not in raw.lower(), (name, raw[:300])


# --- slow and idle clients ---------------------------------------------------------------------


def _idle(port: int) -> tuple[bytes, float]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        start = time.monotonic()
        raw, closed = read_until_closed(sock, console.http.IDLE_TIMEOUT + 30)
    return raw, closed - start


def _trickled_head(port: int) -> tuple[bytes, float]:
    """A request head sent a byte every 0.25 s, never finished while the server listens."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 400
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        start = time.monotonic()
        sock.settimeout(0.25)
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(65536) == b"":
                    return b"", time.monotonic() - start
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                return b"", time.monotonic() - start
        return b"the head was sent in full", time.monotonic() - start


def _kept_alive(port: int) -> tuple[bytes, float]:
    """One answered request, then silence on the keep-alive connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        start = time.monotonic()
        raw, closed = read_until_closed(sock, console.http.IDLE_TIMEOUT + 30)
    return raw, closed - start


def _trickled_body(port: int) -> tuple[bytes, float, float]:
    """An authorised trigger whose body comes a byte every 0.25 s: the answer, when it
    came and when the connection closed."""
    head = (b"POST " + JOBS["cleanup"].endpoint.encode() + b"?dry_run=1 HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 1000\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        start = time.monotonic()
        sock.settimeout(0.25)
        answer = b""
        answered = None
        for _ in range(1000):
            try:
                sock.sendall(b"x")
                chunk = sock.recv(65536)
                if chunk and answered is None:
                    answered = time.monotonic() - start
                answer += chunk
                if chunk == b"":
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        return answer, -1.0 if answered is None else answered, time.monotonic() - start


@pytest.mark.slow(seconds=6)
def test_idle_and_trickling_connections_are_closed(served_quick: Served) -> None:
    served = served_quick
    idle_timeout, body_timeout = console.http.IDLE_TIMEOUT, console.http.BODY_TIMEOUT
    with ThreadPoolExecutor(4) as pool:
        idle, head, kept, body = (pool.submit(fn, served.port) for fn in (
            _idle, _trickled_head, _kept_alive, _trickled_body))
        for name, fut in (("idle", idle), ("trickled head", head), ("keep-alive", kept)):
            raw, took = fut.result(120)
            assert raw == b"", (name, raw[:200])  # closed without an answer
            assert idle_timeout - 0.5 <= took <= idle_timeout + SLACK, (name, took)
        raw, answered, closed = body.result(120)
        assert raw.startswith(b"HTTP/1.1 408 "), raw[:200]
        assert b'"Request Timeout"' in raw
        assert body_timeout - 0.5 <= answered <= body_timeout + SLACK, answered
        assert closed <= body_timeout + console.http.LINGER + SLACK, closed
    assert request(served.url + "/healthz").status == 200


@pytest.fixture
def four_connections(monkeypatch: pytest.MonkeyPatch, host: State) -> Iterator[Served]:
    monkeypatch.setattr(console.http, "MAX_CONNECTIONS", 4)
    yield from _serving(host)


def test_at_the_limit_an_idle_connection_makes_room_and_busy_ones_refuse(
        four_connections: Served) -> None:
    served = four_connections
    port = served.port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(4)]
    try:
        time.sleep(0.3)  # let the server accept them all
        assert request(served.url + "/healthz").status == 200
        raw, _ = read_until_closed(idle[0], 2)  # the oldest idle one made room, at once
        assert raw == b""
    finally:
        for s in idle:
            s.close()

    # Four requests in hand (bodies still arriving): the fifth connection is refused at
    # once with a 503 instead of waiting behind them.
    busy = []
    head = (b"POST " + JOBS["cleanup"].endpoint.encode() + b"?dry_run=1 HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 10\r\n\r\nx")
    time.sleep(0.5)  # the server drops the closed ones
    try:
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(head)
            busy.append(s)
            # Until its head is read, a connection has no request in hand: it is idle.
            time.sleep(0.3)
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as extra:
            raw, closed = read_until_closed(extra, 10)
        assert raw.startswith(b"HTTP/1.1 503 "), raw[:200]
        assert json.loads(raw.split(b"\r\n\r\n", 1)[1]) == {"message": "Too many connections"}
        assert closed - start < 2
    finally:
        for s in busy:
            s.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the server notices the closed ones
        try:
            if request(served.url + "/healthz").status == 200:
                break
        except OSError:
            pass
        time.sleep(0.2)
    else:
        raise AssertionError("the server never took a connection again")


# --- repeated log lines ------------------------------------------------------------------------


def test_repeated_identical_log_lines_are_counted_not_written() -> None:
    out = io.StringIO()
    now = [100.0]
    handler = RunLogHandler(RunLog(out, "json"), clock=lambda: now[0])
    logger = logging.getLogger("test.flood")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for _ in range(8000):
            try:
                raise OSError(24, "Too many open files")
            except OSError:
                logger.exception("socket.accept() out of system resource")
        logger.error("something else")
        now[0] += handler.REPEAT_WINDOW + 0.1
        logger.exception("socket.accept() out of system resource",
                         exc_info=OSError(24, "Too many open files"))
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(ln["message"], ln.get("repeated")) for ln in lines] == [
        ("socket.accept() out of system resource", None),
        ("something else", None),
        ("socket.accept() out of system resource", 7999),
    ]


# --- real runners ------------------------------------------------------------------------------


class HttpRunner:
    """`storeflow-ops run --http` with its stderr in a file."""

    def __init__(self, tmp_path: Path, env: dict[str, str], config: str,
                 preexec: Callable[[], None] | None = None) -> None:
        (tmp_path / "schedules.toml").write_text(config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "runner.log"
        self._log: IO[str] = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [EXE, "run", "--http", f"127.0.0.1:{self.port}", "--log-format", "json"],
            cwd=tmp_path, env={**env, "CRON_SECRET_TOKEN": TOKEN}, stdout=subprocess.DEVNULL,
            stderr=self._log, preexec_fn=preexec,
        )

    def health(self, timeout: float = 10) -> Any:
        return request(self.url + "/healthz", timeout=timeout)

    def wait_healthy(self) -> Any:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                reply = self.health()
                if reply.status == 200:
                    return reply
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(self.log_path.read_text())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            self._log.close()


@pytest.fixture
def http_runner(tmp_path: Path) -> Iterator[Callable[..., HttpRunner]]:
    started: list[HttpRunner] = []

    def start(env: dict[str, str], config: str,
              preexec: Callable[[], None] | None = None) -> HttpRunner:
        r = HttpRunner(tmp_path, env, config, preexec)
        started.append(r)
        return r

    yield start
    for r in started:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()


CONFIG = """
[runner]
heartbeat_interval = 0.5
stale_after = 3
health_tick_age = 2
"""


@pytest.mark.slow(seconds=3)
def test_healthz_is_503_while_the_runners_loop_is_wedged(
        engine: Engine, env: dict[str, str], http_runner: Callable[..., HttpRunner]) -> None:
    """The loop is wedged for real: this test holds a lock the loop's next tick needs
    (PostgreSQL: ACCESS EXCLUSIVE on ops_runs; SQLite: the database's write lock), so the
    tick's query waits in its thread while the HTTP face, on the loop, still answers."""
    runner = http_runner(env, CONFIG)
    ok = runner.wait_healthy()
    assert ok.body["status"] == "ok" and ok.body["last_tick_age_s"] < 2
    with engine.connect() as conn:
        conn.begin()  # BEGIN IMMEDIATE on SQLite: the write lock
        if engine.dialect.name == "postgresql":
            conn.execute(text("LOCK TABLE ops_runs IN ACCESS EXCLUSIVE MODE"))
        deadline = time.monotonic() + 20
        reply = runner.health()
        while reply.status == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            reply = runner.health()
        assert reply.status == 503, reply.body
        assert reply.body["status"] == "unavailable" and reply.body["last_tick_age_s"] > 2
        assert set(reply.body) == {"status", "runner_id", "last_tick_age_s"}
        conn.rollback()
    again = runner.wait_healthy()
    assert again.body["runner_id"] == ok.body["runner_id"]
    assert runner.stop() == 0


@pytest.mark.slow(seconds=3)
def test_a_flood_of_idle_sockets_under_a_low_file_limit_starves_nothing(
        engine: Engine, env: dict[str, str], http_runner: Callable[..., HttpRunner]) -> None:
    def low_file_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    runner = http_runner(env, CONFIG, preexec=low_file_limit)
    runner.wait_healthy()
    flood = []
    try:
        for _ in range(200):  # more than the file limit allows
            flood.append(socket.create_connection(("127.0.0.1", runner.port), timeout=10))
        time.sleep(0.5)
        start = time.monotonic()
        assert runner.health().status == 200
        preview = request(runner.url + JOBS["cleanup"].endpoint + "?dry_run=1", "POST",
                          headers=bearer(), timeout=30)
        assert preview.status == 200 and preview.body["dry_run"] is True
        assert time.monotonic() - start < 10
        time.sleep(2)  # time for a flood of accept() errors to show, if there were one
    finally:
        for s in flood:
            s.close()
    assert runner.stop() == 0
    lines = runner.log_path.read_text().splitlines()
    assert len(lines) < 100, lines[:5]
    assert not [ln for ln in lines if "out of system resource" in ln]

"""The runner's optional HTTP face: the seed's four trigger paths, /healthz and /metrics;
and the metrics face of `run --metrics`, which serves /metrics and /healthz alone.

Teams leaving Vercel Cron keep their URLs, their curl scripts and their token. Every
trigger goes through `jobs.runs.execute` (trigger `http`), in a worker thread so the
runner's event loop keeps firing slots while a job runs.

Status codes of a trigger:
- 200: the run finished (`succeeded` or `partial`: item errors are in the body) or,
  with `?dry_run=1`, the preview;
- 400 `{"message": "Bad request", "error": ...}`: a query parameter other than `dry_run`,
  `date`, `from` and `to` (the CLI's `--date`, `--from`, `--to`), one given twice or not a
  date, or dates the job refuses (a day after today, a range that runs backwards, dates
  on a job other than analytics-aggregate); nothing is written;
- 401 `{"message": "Unauthorized"}`: no, malformed or wrong `Authorization: Bearer`;
- 409: the job is already running (the holder's run id is in the body);
- 500: the run started and failed or timed out (its report is the body, with the
  error), or it
  could not start (`{"message": "Job not started", "error": ...}`, e.g. a database
  without StoreFlow's platform tables);
- 503: the database did not answer before the run could start, the runner is shutting
  down, or the run was interrupted by the shutdown (its report is the body);
- 404 unknown path, 405 other methods, 413 a body over MAX_BODY (bodies are ignored),
  408 a body that does not arrive within BODY_TIMEOUT.

`/healthz` needs no token and says only whether the runner's loop is ticking: 200
`{"status": "ok", "runner_id": ..., "last_tick_age_s": 0.4}` while it has ticked within
`[runner] health_tick_age` seconds (60), 503 otherwise (and while shutting down). With the
Bearer token it adds details: the database probe, the runner's own view, the version.
Nothing about the database (URL, user, host, name, error text) or any version is shown
without the token, and no answer carries a `Server` header naming aiohttp or Python.

Slow or idle clients cannot hold the server: a connection that sends no complete request
head within IDLE_TIMEOUT (at the start, or after an answer on a keep-alive connection) is
closed; a body must arrive within BODY_TIMEOUT; at most `connection_limit()` connections
are open, and at that limit a new one replaces the oldest idle connection, or is refused
with a 503 when every connection is busy. The limit stays well under the process's file
limit, so a flood of sockets cannot starve the database connections or /healthz.

The token never reaches a log: the access log has no headers and no query string, and
aiohttp's own error log (which quotes the start of a malformed header line) is redacted.

/metrics needs no token (it holds no tenant data): the Prometheus text format of
`jobs.metrics`, read from the database at each scrape in a thread of its own; 503 when the
database does not answer within HEALTH_TIMEOUT, with nothing about the database in the body.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import resource
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

from aiohttp import web, web_response
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from sqlalchemy.engine import Engine

from jobs.db import first_line
from jobs.errors import ConfigError, JobRunningError, OpsError, UnreachableError, UsageError
from jobs.humanize import plural
from jobs.log_events import FIELDS_ATTR, event_extra
from jobs.metrics import CONTENT_TYPE, exposition, registry
from jobs.presence import runner_alive
from jobs.records import RunParams, RunReport, RunStatus, Trigger, parse_day
from jobs.registry import JOBS, check_run
from jobs.runs import execute
from jobs.settings import Settings
from jobs.text import parse_flag
from jobs.timeutil import iso_z, utc_now

log = logging.getLogger("storeflow.http")
server_log = logging.getLogger("storeflow.http.server")
access_log = logging.getLogger("storeflow.http.access")

MIN_TOKEN_LENGTH = 16
MAX_BODY = 64 * 1024  # trigger bodies are ignored; anything bigger is refused with 413
HEALTH_TIMEOUT = 5.0  # seconds /healthz (with the token) waits for the database probe
IDLE_TIMEOUT = 5.0  # seconds a connection may sit without a complete request head
BODY_TIMEOUT = 10.0  # seconds for a request body to arrive
LINGER = 2.0  # seconds unread body bytes are still read and dropped after an answer
MAX_CONNECTIONS = 256
FD_RESERVE = 64  # file descriptors kept for the database, logs and the process itself
BACKLOG = 1024  # a burst of health checks queues instead of waiting for SYN retries
ACCEPT_BATCH = 16  # connections accepted at once, before the limit is applied to them
SERVER_NAME = "storeflow-ops"
TOKEN_ENV = "CRON_SECRET_TOKEN"


class HttpHost(Protocol):
    """What the HTTP face needs from the runner that hosts it."""

    @property
    def engine(self) -> Engine: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def runner_id(self) -> str: ...  # the runner's Presence id: runs are tied to its heartbeat

    @property
    def stop(self) -> threading.Event: ...  # set on shutdown: runs finish the tenant in hand

    @property
    def in_flight(self) -> MutableMapping[int, str]: ...  # run id -> job id, while it runs

    @property
    def last_loop_at(self) -> datetime | None: ...  # when the runner's loop last ticked

    def health(self) -> dict[str, Any]: ...  # the runner's own view, for /healthz's details


def check_token(settings: Settings) -> str:
    """The token, or ConfigError: the HTTP face fails closed (the seed let everyone in
    when its token was unset)."""
    token = settings.cron_token
    if not token:
        raise ConfigError(
            "environment", TOKEN_ENV,
            f"not set; the HTTP endpoints need a token of at least {MIN_TOKEN_LENGTH} "
            "characters in CRON_SECRET_TOKEN (or CRON_SECRET)",
        )
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            "environment", TOKEN_ENV,
            f"is {plural(len(token), 'character')} long; the HTTP endpoints need at least "
            f"{MIN_TOKEN_LENGTH}",
        )
    if token != token.strip():
        # HTTP strips whitespace around a header value, so no client could ever send it.
        raise ConfigError("environment", TOKEN_ENV,
                          "has leading or trailing whitespace; remove it")
    if not token.isprintable():
        raise ConfigError("environment", TOKEN_ENV,
                          "contains control characters, which no HTTP header can carry")
    return token


def parse_listen(text: str, default_host: str = "127.0.0.1", flag: str = "--http",
                 ) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT`, `PORT` or `[::1]:PORT` -> (host, port); UsageError otherwise."""
    raw = text.strip()
    host, sep, port_text = raw.rpartition(":")
    if not sep:
        host, port_text = "", raw
    host = host.strip("[]") or default_host
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(flag, text, "expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port_text)


# --- logging without secrets -----------------------------------------------------------------

_CREDENTIALS = re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s'\"\\]+")


class _Redact(logging.Filter):
    """Keeps the token (and any credentials a client sent) out of log records."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def redact(self, text: str) -> str:
        if self.secret:  # the metrics face runs without a token
            text = text.replace(self.secret, "[redacted]")
        return _CREDENTIALS.sub(r"\1\2[redacted]", text)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            # A malformed request: aiohttp quotes the offending bytes, which may be an
            # Authorization header. Its type and status are all an operator needs.
            text = f"{record.getMessage()}: {type(exc).__name__} ({exc.code})"
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        else:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = self.redact(text), ()
        record.exc_info, record.exc_text = None, None
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, dict):
            setattr(record, FIELDS_ATTR, {k: self.redact(v) if isinstance(v, str) else v
                                          for k, v in fields.items()})
        return True


class _AccessLogger(AbstractAccessLogger):
    """One line per request: client, method, path (no query, no headers), status, time.
    In the runner's log it is an `http-request` event with those as fields."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        level = logging.DEBUG if request.path in ("/healthz", "/metrics") else logging.INFO
        client, ms = request.remote or "-", round(time * 1000, 1)
        self.logger.log(level, "%s %s %s %s %.1fms", client, request.method, request.path,
                        response.status, ms,
                        extra=event_extra("http-request", method=request.method,
                                          path=request.path, status=response.status,
                                          duration_ms=ms, client=client))


# --- the application -------------------------------------------------------------------------

def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None,
          ) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def _unauthorized() -> web.Response:
    return _json(401, {"message": "Unauthorized"}, {"WWW-Authenticate": 'Bearer realm="storeflow-ops"'})


def _auth_failure(header: str | None, token: bytes) -> str | None:
    """Why a request is not authorised, or None when it is. Constant time in the token."""
    if header is None:
        return "no Authorization header"
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer":  # the scheme is case-insensitive (RFC 9110), the token not
        return "not a Bearer token"
    if not hmac.compare_digest(credentials.encode("utf-8", "surrogateescape"), token):
        return "wrong token"
    return None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, 413) as JSON, like every other answer; size first,
    so a large body is refused before anyone reads it."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        return _json(413, {"message": "Request Entity Too Large", "max_bytes": MAX_BODY})
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return _json(exc.status, {"message": exc.reason}, headers)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _json(500, {"message": "Internal Server Error"})


class _HealthProbe:
    """One database probe at a time: concurrent /healthz calls share its answer, so a burst
    of health checks costs one query, not one thread and one connection each."""

    def __init__(self, host: HttpHost) -> None:
        self.host = host
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="http-health")
        self._inflight: asyncio.Future[dict[str, Any]] | None = None

    def _probe(self) -> dict[str, Any]:
        now = utc_now()
        try:
            alive = runner_alive(self.host.engine, self.host.runner_id, now,
                                 self.host.settings.runner.stale_after)
        except UnreachableError as exc:
            return {"reachable": False, "error": exc.message, "alive": None}
        except Exception as exc:  # any database failure makes us unhealthy
            return {"reachable": False, "error": first_line(exc), "alive": None}
        return {"reachable": True, "error": None, "alive": alive}

    async def check(self) -> dict[str, Any]:
        if self._inflight is None:
            loop = asyncio.get_running_loop()
            fut = asyncio.ensure_future(loop.run_in_executor(self.pool, self._probe))
            self._inflight = fut

            def done(_: object) -> None:
                self._inflight = None

            fut.add_done_callback(done)
        try:
            return await asyncio.wait_for(asyncio.shield(self._inflight), HEALTH_TIMEOUT)
        except TimeoutError:
            return {"reachable": False, "alive": None,
                    "error": f"no answer within {HEALTH_TIMEOUT:g} s"}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class _MetricsScrape:
    """Scrapes one at a time in a thread of their own: a slow database never blocks the
    loop, and a burst of scrapes queues instead of opening a connection each."""

    def __init__(self, host: HttpHost) -> None:
        self.registry = registry(host.engine, host.settings)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="http-metrics")

    async def scrape(self) -> bytes:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(
            loop.run_in_executor(self.pool, exposition, self.registry), HEALTH_TIMEOUT)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


_HOST = web.AppKey("host", HttpHost)
_TOKEN = web.AppKey("token", bytes)
_RUNS = web.AppKey("runs", ThreadPoolExecutor)
_HEALTH = web.AppKey("health", _HealthProbe)
_METRICS = web.AppKey("metrics", _MetricsScrape)


def _version() -> str:
    try:
        return version("storeflow-ops")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


_RUNNER_DETAILS = ("started_at", "last_loop_at", "next_wake", "running", "heartbeat_error")


async def _healthz(request: web.Request) -> web.Response:
    """Ticking or not, for anyone; the details only for the token's holder (whoever can
    reach the port must not learn the database's user, host or errors, or versions)."""
    host = request.app[_HOST]
    now = utc_now()
    age = None if host.last_loop_at is None else (now - host.last_loop_at).total_seconds()
    if host.stop.is_set():
        status = "stopping"
    elif age is not None and age <= host.settings.runner.health_tick_age:
        status = "ok"
    else:
        status = "unavailable"  # the loop is wedged (or has not ticked yet)
    body: dict[str, Any] = {"status": status, "runner_id": host.runner_id,
                            "last_tick_age_s": None if age is None else round(max(age, 0.0), 3)}
    token = request.app.get(_TOKEN)  # none on the metrics face: never the details
    if token is not None and _auth_failure(request.headers.get("Authorization"), token) is None:
        state = await request.app[_HEALTH].check()
        runner: dict[str, Any] = {"id": host.runner_id, "alive": state["alive"],
                                  "stopping": host.stop.is_set()}
        details = host.health()
        runner.update({k: details[k] for k in _RUNNER_DETAILS if k in details})
        body.update({
            "version": _version(),
            "runner": runner,
            "database": {"reachable": state["reachable"], "error": state["error"]},
            "timestamp": iso_z(now),
        })
    return _json(200 if status == "ok" else 503, body)


async def _metrics(request: web.Request) -> web.Response:
    try:
        body = await request.app[_METRICS].scrape()
    except TimeoutError:
        return _json(503, {"message": "Database unavailable"})
    except OpsError as exc:  # logged; the body says nothing about the database
        log.warning("metrics: %s", exc.message)
        return _json(503, {"message": "Database unavailable"})
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _dry_run(request: web.Request) -> bool | None:
    return parse_flag(request.query.get("dry_run", "").strip())


# The query parameters a trigger takes: the CLI's `--date`, `--from` and `--to`, and
# `dry_run`. Any other is refused, so a misspelt `?dat=` cannot quietly run another day.
_DATE_PARAMS = {"date": "date", "from": "date_from", "to": "date_to"}
_QUERY_PARAMS = ("dry_run", *_DATE_PARAMS)


def _run_params(request: web.Request) -> RunParams:
    """The run's dates from the query; UsageError (a 400) when unknown, repeated or not a
    date. Whether they fit the job is the run's check (`jobs.registry.check_run`)."""
    unknown = sorted(set(request.query) - set(_QUERY_PARAMS))
    if unknown:
        raise UsageError(f"unknown query parameter {', '.join(map(repr, unknown))}; "
                         f"a trigger takes {', '.join(_QUERY_PARAMS)}")
    repeated = sorted(k for k in _QUERY_PARAMS if len(request.query.getall(k, ())) > 1)
    if repeated:
        raise UsageError(f"query parameter {', '.join(map(repr, repeated))} given more than once")
    days: dict[str, date] = {}
    for name, field in _DATE_PARAMS.items():
        text = request.query.get(name)
        if text is None:
            continue
        days[field] = parse_day(name, text)
    return RunParams(**days)


def _report_status(report: RunReport) -> int:
    if report.status in (RunStatus.FAILED, RunStatus.TIMED_OUT):
        return 500
    if report.status is RunStatus.INTERRUPTED:
        return 503
    return 200


def _run_held(host: HttpHost, job_id: str, client: str, dry_run: bool, now: datetime,
              params: RunParams) -> RunReport:
    """One HTTP run, held in the runner's in-flight registry from before its row commits
    until it has ended (in this worker thread, so a client that hangs up does not end it
    early): the runner's orphan sweep leaves it alone, its lock stays held, and a second
    trigger gets 409."""
    held: list[int] = []

    def created(run_id: int) -> None:
        host.in_flight[run_id] = job_id
        held.append(run_id)

    # The job's dead-man pings, when the host sends them (the runner does): a preview is
    # not a run, and a refused trigger (409) never starts.
    ping: Callable[[str, str, int | None], None] | None = (
        None if dry_run else getattr(host, "ping", None))
    try:
        report = execute(
            host.engine, host.settings, job_id, now=now, trigger=Trigger.HTTP,
            started_by=f"http:{client}", actor=client, runner_id=host.runner_id, dry_run=dry_run,
            params=params, stop=host.stop, on_created=created,
            on_started=None if ping is None else partial(ping, job_id, "start"),
        )
    finally:
        for run_id in held:
            host.in_flight.pop(run_id, None)
    if ping is not None:
        ping(job_id, "success" if report.status is RunStatus.SUCCEEDED else "fail",
             report.run_id)
    return report


def _trigger_handler(job_id: str) -> Handler:
    async def trigger(request: web.Request) -> web.StreamResponse:
        host = request.app[_HOST]
        client = request.remote or "unknown"
        why = _auth_failure(request.headers.get("Authorization"), request.app[_TOKEN])
        if why is not None:
            log.warning("refused %s %s from %s: %s", request.method, request.path, client, why)
            return _unauthorized()
        try:
            async with asyncio.timeout(BODY_TIMEOUT):  # a trickled body must not hold us
                await request.read()  # ignored, but read: a chunked body over the limit is a 413
        except TimeoutError:
            slow = _json(408, {"message": "Request Timeout", "job": job_id})
            slow.force_close()
            return slow
        dry_run = _dry_run(request)
        if dry_run is None:
            return _json(400, {"message": "dry_run must be 1 or 0", "job": job_id})
        now = utc_now()
        try:
            params = _run_params(request)
            # The run's own check (the run makes it again), here so that a refusal is a
            # 400 and not a run that could not start.
            check_run(host.settings, job_id, params, now)
        except UsageError as exc:
            log.info("http %s from %s: refused: %s", job_id, client, exc.message)
            return _json(400, {"message": "Bad request", "job": job_id, "error": exc.message})
        if host.stop.is_set():
            return _json(503, {"message": "Runner is shutting down", "job": job_id})
        run = partial(_run_held, host, job_id, client, dry_run, now, params)
        loop = asyncio.get_running_loop()
        try:
            report = await loop.run_in_executor(request.app[_RUNS], run)
        except JobRunningError as exc:
            log.info("http %s from %s: refused, run %s is running", job_id, client, exc.run_id)
            return _json(409, {"message": "Job already running", "job": job_id,
                               "run_id": exc.run_id})
        except UnreachableError as exc:
            log.warning("http %s from %s: %s", job_id, client, exc.message)
            return _json(503, {"message": "Database unreachable", "job": job_id,
                               "error": exc.message})
        except OpsError as exc:  # refused before it started, e.g. no platform tables
            log.error("http %s from %s: not started: %s", job_id, client, exc.message)
            return _json(500, {"message": "Job not started", "job": job_id,
                               "error": exc.message})
        log.info("http %s from %s: %s %s (%s, %s)", job_id, client,
                 "preview" if report.dry_run else f"run {report.run_id}", report.status,
                 plural(report.processed, "item"), plural(len(report.errors), "error"))
        return _json(_report_status(report), report.to_json())

    return trigger


def build_app(state: HttpHost) -> web.Application:
    """The application; `start_http` serves it. Checks the token (fail closed)."""
    token = check_token(state.settings).encode("utf-8")
    # aiohttp names itself and Python, with their versions, in every answer's Server
    # header, its own 400s included; it reads this module global for each answer.
    setattr(web_response, "SERVER_SOFTWARE", SERVER_NAME)  # noqa: B010 (not exported)
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_json_errors])
    app[_HOST] = state
    app[_TOKEN] = token
    # Runs get threads of their own, so a long job never starves /healthz or the runner.
    app[_RUNS] = ThreadPoolExecutor(max_workers=2 * len(JOBS), thread_name_prefix="http-run")
    for spec in JOBS.values():
        handler = _trigger_handler(spec.id)
        app.router.add_route("GET", spec.endpoint, handler, name=spec.id)
        app.router.add_route("POST", spec.endpoint, handler)
    _add_monitoring(app, state)

    async def close_runs(app: web.Application) -> None:
        app[_RUNS].shutdown(wait=False)

    app.on_cleanup.append(close_runs)
    return app


def build_metrics_app(state: HttpHost) -> web.Application:
    """The face of `run --metrics`: /metrics and /healthz alone, no token, no trigger."""
    setattr(web_response, "SERVER_SOFTWARE", SERVER_NAME)  # noqa: B010 (as in build_app)
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_json_errors])
    app[_HOST] = state
    _add_monitoring(app, state)
    return app


def _add_monitoring(app: web.Application, state: HttpHost) -> None:
    app[_HEALTH] = _HealthProbe(state)
    app[_METRICS] = _MetricsScrape(state)
    app.router.add_get("/healthz", _healthz, name="healthz")
    app.router.add_get("/metrics", _metrics, name="metrics")

    async def close_pools(app: web.Application) -> None:
        app[_HEALTH].close()
        app[_METRICS].close()

    app.on_cleanup.append(close_pools)


# --- serving ---------------------------------------------------------------------------------


def connection_limit() -> int:
    """MAX_CONNECTIONS, or fewer under a low file limit: an HTTP flood must never take the
    file descriptors the database connections need (nor make accept() fail)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return min(MAX_CONNECTIONS, max(8, soft - FD_RESERVE - 2 * ACCEPT_BATCH))


_BUSY = json.dumps({"message": "Too many connections"}).encode()


class _Refused(asyncio.Protocol):
    """A connection over the limit: one 503 and closed, without reading a byte."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY), _BUSY))
        transport.close()


class _Gate:
    """The protocol factory of the listening socket: aiohttp's, behind the connection limit.
    At the limit the oldest idle connection (no request in hand: a keep-alive client, or
    one still sending its request head) is closed to make room; when none is idle the new
    connection is refused."""

    def __init__(self, server: web.Server, limit: int) -> None:
        self.server = server
        self.limit = limit

    def __call__(self) -> asyncio.Protocol:
        live = [h for h in self.server.connections if h.transport is not None]
        if len(live) >= self.limit:
            # `_request_in_progress` is aiohttp's own flag; without it nobody is evicted.
            idle = next((h for h in live if not getattr(h, "_request_in_progress", True)), None)
            if idle is None:
                server_log.warning("http: %d connections open, all busy: refused one", len(live))
                return _Refused()
            idle.force_close()
        return self.server()


class _Site(web.TCPSite):
    """TCPSite whose connections pass through _Gate (aiohttp has no connection limit)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, limit: int) -> None:
        super().__init__(runner, host, port, backlog=BACKLOG)
        self.limit = limit

    async def start(self) -> None:
        await web.BaseSite.start(self)  # what TCPSite.start does, with the gate
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(_Gate(server, self.limit), self._host,
                                                self._port, backlog=ACCEPT_BATCH)
        sockets = self._server.sockets
        # asyncio's backlog is both the kernel's queue and how many connections it accepts
        # at each wake-up, before the gate sees any of them. Keep the queue deep (a burst of
        # health checks waits there instead of retrying SYNs) and the batch small (each
        # accepted socket is a file descriptor until the gate closes it).
        for listening in sockets:
            with listening.dup() as same_socket:
                same_socket.listen(self._backlog)
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


@dataclass
class HttpServer:
    """A listening HTTP face; `await cleanup()` stops it."""

    runner: web.AppRunner
    host: str
    port: int
    redact: _Redact

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def cleanup(self) -> None:
        try:
            await self.runner.cleanup()
        finally:
            for logger in (log, server_log, access_log):
                logger.removeFilter(self.redact)


async def start_http(state: HttpHost, host: str, port: int, *,
                     metrics_only: bool = False) -> HttpServer:
    """Serve the HTTP face on host:port (0 = any free port); ConfigError (exit 2) when
    no usable token is set or the address cannot be bound. With `metrics_only`, the face
    of `run --metrics` (no token needed)."""
    app = build_metrics_app(state) if metrics_only else build_app(state)
    redact = _Redact(state.settings.cron_token or "")
    for logger in (log, server_log, access_log):
        logger.addFilter(redact)
    runner = web.AppRunner(
        app, handle_signals=False, access_log_class=_AccessLogger, access_log=access_log,
        logger=server_log, shutdown_timeout=state.settings.runner.shutdown_timeout,
        # aiohttp's keep-alive timer runs from the connection's start and after each answer,
        # and closes a connection still waiting for a complete request head: it is both the
        # idle limit and the header timeout.
        keepalive_timeout=IDLE_TIMEOUT, lingering_time=LINGER,
    )
    await runner.setup()
    try:
        await _Site(runner, host, port, connection_limit()).start()
    except OSError as exc:
        await runner.cleanup()
        for logger in (log, server_log, access_log):
            logger.removeFilter(redact)
        raise ConfigError("--metrics" if metrics_only else "--http", f"{host}:{port}",
                          f"cannot listen: {exc.strerror or exc}") from None
    bound = runner.addresses[0][1] if runner.addresses else port
    paths = [] if metrics_only else [j.endpoint for j in JOBS.values()]
    log.info("http: serving %s on %s:%s", ", ".join([*paths, "/healthz", "/metrics"]),
             host, bound)
    return HttpServer(runner, host, bound, redact)

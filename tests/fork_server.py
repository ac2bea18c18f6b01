"""Starts `storeflow-ops` processes for the tests without paying their start-up each time.

A test's `cli(...)` wants a real process: its own exit code, its file descriptors, its
exit (atexit, threads still running, the final flush), nothing shared with the test.
Starting one costs ~0.4 s of CPU, nearly all of it importing SQLAlchemy, psycopg, redis
and the program, and the suite starts hundreds. This server imports the program once
(per test worker) and forks a child per call: the child is a separate process that takes
the caller's stdin, stdout and stderr (passed over the socket), environment, folder and
arguments, runs the entry point (`console.cli.entry`) and exits as the script would
(`finish`). A call costs ~40 ms of CPU.

Protocol, one Unix-socket connection per call: the client sends a JSON request
`{"exe": ..., "args": [...], "env": {...}, "cwd": ..., "umask": ...}` with three file
descriptors (stdin, stdout, stderr), then shuts down its writing; the server answers the
child's pid on one line, with a pidfd to signal it by, then, when the child ends, its exit
code on another line (negative: the signal that ended it), as `subprocess` reports it.

Run as a script (`python tests/fork_server.py SOCKET`); each child puts the script's folder
first on `sys.path`, as the script has it. The server stops when its parent does. What a
child does not share with a process started afresh: the server's start (its hash seed,
its stdio's encoding, environment read only at interpreter start or import, none of which
the program uses; `cli` starts the script for an environment with PYTHON* or locale
variables) and the teardown of modules at exit (`finish`).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import json
import os
import pkgutil
import selectors
import signal
import socket
import sys
import threading
import time
from typing import Any, NoReturn

# What a command may import when it runs; not the console (Textual), which needs a terminal.
PRELOAD = ("sqlalchemy.dialects.postgresql.psycopg", "sqlalchemy.dialects.sqlite",
           "alembic.command", "alembic.config", "psycopg", "redis", "jinja2", "aiohttp",
           "prometheus_client", "email_validator")


def preload() -> None:
    for name in PRELOAD:
        importlib.import_module(name)
    for package in ("jobs", "console"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            if ".migrations" in info.name or info.name.startswith("console.tui"):
                continue
            importlib.import_module(info.name)


def child(request: dict[str, Any], fds: list[int], closing: list[int]) -> NoReturn:
    """In the forked child: become the caller's `storeflow-ops ARGS` process, then end as
    the script does, with what its entry point (`console.cli.entry`: main, then the frozen
    exit) returns or exits with. Never returns into the server's loop, whatever happens."""
    interrupted = False
    try:
        for fd in closing:
            os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        time.tzset()
        os.umask(request["umask"])
        os.chdir(request["cwd"])
        sys.argv = [request["exe"], *request["args"]]
        sys.path[0] = os.path.dirname(request["exe"])
        from console.cli import entry

        try:
            status = exit_status(entry())
        except SystemExit as exc:
            status = exit_status(exc.code)
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        status, interrupted = 1, True
    except BaseException:
        sys.excepthook(*sys.exc_info())
        status = 1
    finish(status, interrupted)


def exit_status(code: object) -> int:
    """The exit status `sys.exit(code)` gives, as CPython computes it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF if -(2**63) <= code < 2**63 else 255
    print(code, file=sys.stderr)
    return 1


def finish(status: int, interrupted: bool = False) -> NoReturn:
    """The interpreter's exit, in its order: wait for the threads still running, atexit's
    functions, flush stdout and stderr, collect what the run left and did not freeze (its
    `__del__`s and their messages), flush again. Then out, without tearing down every
    module the server loaded: with all of them that costs ~250 ms of CPU. What that teardown would still do
    (finalizers of objects that modules hold) is not done. An uncaught KeyboardInterrupt
    ends the process by SIGINT, as CPython does."""
    for step in (threading._shutdown, atexit._run_exitfuncs):  # type: ignore[attr-defined]
        try:
            step()
        except BaseException:
            print(f"Exception ignored in: {step!r}", file=sys.stderr)
            sys.excepthook(*sys.exc_info())
    for collect in (False, True):
        if collect:
            gc.collect()
        for stream in (sys.stdout, sys.stderr):
            if stream is None or stream.closed:
                continue
            try:
                stream.flush()
            except (OSError, ValueError) as exc:
                # What Python prints when it cannot flush at exit, and its exit code then.
                with contextlib.suppress(OSError, ValueError):
                    print(f"Exception ignored in: {stream!r}\n{type(exc).__name__}: {exc}",
                          file=sys.__stderr__, flush=True)
                status = 120
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status)


def receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """A request: JSON up to the caller's end of writing, and its three descriptors."""
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    while chunk := conn.recv(1 << 16):
        data += chunk
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError(f"expected 3 file descriptors, got {len(fds)}")
    return json.loads(data), fds


def serve(path: str) -> None:
    """Until the test worker that started it is gone: a child per connection, and its exit
    code to that connection when it ends. A broken request or a caller that left is
    logged to stderr and costs only its own connection."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    parent = os.getppid()
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    waiting: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, connection)
    print("ready", flush=True)
    while os.getppid() == parent:
        for key, _ in sel.select(timeout=1.0):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                try:
                    request, fds = receive(conn)
                    pid = os.fork()
                except (OSError, ValueError) as exc:
                    print(f"fork server: request refused: {exc!r}", file=sys.stderr, flush=True)
                    conn.close()
                    continue
                if pid == 0:
                    busy = [listener.fileno(), sel.fileno(), conn.fileno()]
                    busy += [c.fileno() for _, c in waiting.values()] + list(waiting)
                    child(request, fds, busy)
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                waiting[pidfd] = (pid, conn)
                sel.register(pidfd, selectors.EVENT_READ)
                # The pid, and a pidfd to signal it by: a pid alone may be reused once
                # the child is reaped, before its caller hears of it.
                try:
                    socket.send_fds(conn, [f"{pid}\n".encode()], [pidfd])
                except OSError as exc:
                    print(f"fork server: caller of {pid} left: {exc!r}", file=sys.stderr,
                          flush=True)
            else:
                pidfd = int(key.fd)
                pid, conn = waiting.pop(pidfd)
                sel.unregister(pidfd)
                os.close(pidfd)
                _, status = os.waitpid(pid, 0)
                with contextlib.suppress(OSError):  # the caller gave up on it (a timeout)
                    conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                conn.close()


if __name__ == "__main__":
    preload()
    gc.freeze()  # the children's collections leave the preloaded objects (and pages) alone
    serve(sys.argv[1])

"""Starts `storeflow-ops` processes for the tests without paying their start-up each time.

A test's `cli(...)` wants a real process: its own exit code, its file descriptors, its
exit (atexit, threads still running, the final flush), nothing shared with the test.
Starting one costs ~0.4 s of CPU, nearly all of it importing SQLAlchemy, psycopg, redis
and the program, and the suite starts hundreds. This server imports the program once
(per test worker) and forks a child per call: the child is a separate process that takes
the caller's stdin, stdout and stderr (passed over the socket), environment, folder and
arguments, runs the entry point's `main()` and exits as the script would (`finish`). A
call costs ~40 ms of CPU.

Protocol, one Unix-socket connection per call: the client sends a JSON request
`{"args": [...], "env": {...}, "cwd": "..."}` with three file descriptors (stdin, stdout,
stderr); the server answers the child's pid on one line, then, when the child ends, its
exit code on another (negative: the signal that ended it), as `subprocess` reports it.

Run as a script (`python tests/fork_server.py SOCKET`), so the children's `sys.path` is the
program's installed one, not the repository's folder. It stops when its parent does.
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
import socket
import sys
import threading

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


def child(request: dict[str, object], fds: list[int], closing: list[int]) -> None:
    """In the forked child: become the caller's `storeflow-ops ARGS` process, then end as
    the script does, with what `main()` returns or exits with."""
    for fd in closing:
        os.close(fd)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    env = request["env"]
    assert isinstance(env, dict)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(str(request["cwd"]))
    args = request["args"]
    assert isinstance(args, list)
    sys.argv = [str(request["exe"]), *args]
    from console.cli import main

    code: object
    try:
        code = main()
    except SystemExit as exc:
        code = exc.code
    finish(code)


def finish(code: object) -> None:
    """The interpreter's exit, in its order: the exit code from `sys.exit`'s argument, wait
    for the threads still running, atexit's functions, flush stdout and stderr. Then out,
    without tearing down every module the server loaded: with all of them that teardown
    costs ~250 ms of CPU, and a process that ends shows nothing of it."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError) as exc:
            # What Python prints when it cannot flush at exit, and its exit code then.
            print(f"Exception ignored in: {stream!r}\n{type(exc).__name__}: {exc}",
                  file=sys.__stderr__)
            status = 120
    os._exit(status & 0xFF)


def serve(path: str) -> None:
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
                data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
                request = json.loads(data)
                pid = os.fork()
                if pid == 0:
                    busy = [listener.fileno(), sel.fileno(), conn.fileno()]
                    busy += [c.fileno() for _, c in waiting.values()] + list(waiting)
                    child(request, fds, busy)
                for fd in fds:
                    os.close(fd)
                conn.sendall(f"{pid}\n".encode())
                pidfd = os.pidfd_open(pid)
                waiting[pidfd] = (pid, conn)
                sel.register(pidfd, selectors.EVENT_READ)
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

"""A real HTTP receiver on loopback (http.server in a thread) that keeps every POST it
gets, for the alert tests: answers can be scripted (500, 503, then 200) or held back (a
target that never answers)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Hit:
    at: float  # time.monotonic() when it arrived
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    answers: list[int] = field(default_factory=list)  # per request; 200 once used up
    hang: float = 0.0  # seconds to wait before answering
    hits: list[Hit] = field(default_factory=list)
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hooks/storeflow/s3cr3t-path-token") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _answer(self) -> int:
        with self.lock:
            return self.answers.pop(0) if self.answers else 200


@contextmanager
def receiver(answers: list[int] | None = None, hang: float = 0.0) -> Iterator[Receiver]:
    rec = Receiver(list(answers or []), hang)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            size = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(size)
            with rec.lock:
                rec.hits.append(Hit(time.monotonic(), self.path, dict(self.headers.items()),
                                    body))
            if rec.hang:
                time.sleep(rec.hang)
            code = rec._answer()
            try:
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:
                pass

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the default 5 drops parallel connects (a 1 s SYN retry)

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    rec.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()

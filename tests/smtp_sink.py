"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives, for tests and
benchmarks. Answers can be scripted per recipient to play a server that rejects."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    """A loopback port nothing listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    peer: tuple[str, int]  # the client's address: one per SMTP connection

    @property
    def message(self) -> EmailMessage:
        msg = message_from_bytes(self.data, policy=default_policy)
        assert isinstance(msg, EmailMessage)
        return msg


# answer(stage, address) -> an SMTP reply such as "451 4.3.0 try later", or None to accept
Answer = Callable[[str, str], str | None]


class Sink:
    """aiosmtpd handler: accepts everything unless `answer` says otherwise."""

    def __init__(self, answer: Answer | None = None) -> None:
        self.answer = answer
        self.received: list[Received] = []
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        reply = self.answer("RCPT", address) if self.answer else None
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        for rcpt in envelope.rcpt_tos:
            reply = self.answer("DATA", rcpt) if self.answer else None
            if reply:
                return reply
        with self.lock:
            self.received.append(Received(envelope.mail_from, tuple(envelope.rcpt_tos),
                                          bytes(envelope.original_content or envelope.content),
                                          tuple(session.peer[:2])))
        return "250 2.0.0 queued"

    # A method, not a property: aiosmtpd reads every attribute of its handler
    # (inspect.getmembers) for each connection it accepts, which would parse every message
    # received so far each time (seen: most of a 200-email test's CPU).
    def messages(self) -> list[EmailMessage]:
        with self.lock:
            return [r.message for r in self.received]


class SlowSink(Sink):
    """A server that takes `delay` seconds to answer each message (a slow relay). One
    event loop serves all connections, so two clients are slowed down side by side."""

    def __init__(self, delay: float, answer: Answer | None = None) -> None:
        super().__init__(answer)
        self.delay = delay

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


@contextmanager
def smtp_server(sink: Sink, port: int | None = None, **controller_kw: Any) -> Iterator[int]:
    """Serve `sink` on 127.0.0.1; yields the port."""
    port = port or free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, **controller_kw)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()

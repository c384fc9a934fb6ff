"""The telnet line protocol: SQL in, the text rendering out.

Lines collect until the statement ends in ``;``; each statement is answered
in order. A statement may not grow past ``max_statement_bytes``: the client
is told and disconnected, and nobody else notices.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet import protocol
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

from qasino.ops import Dispatcher

log = Logger(namespace="qasino.line")

DEFAULT_MAX_STATEMENT_BYTES = 1024 * 1024
QUIT_WORDS = frozenset({"quit", "exit", "logout"})
# Ctrl-C / Ctrl-D as typed, and the telnet IAC sequences a client sends for them.
_BREAK_BYTES = frozenset(b"\x03\x04\xff\xf4\xfd\x06\xec")


def is_break_line(line: bytes) -> bool:
    stripped = line.strip()
    return bool(stripped) and all(b in _BREAK_BYTES for b in stripped)


class LineSQLProtocol(LineReceiver):
    delimiter = b"\n"

    def __init__(self, dispatcher: Dispatcher, max_statement_bytes: int) -> None:
        self.dispatcher = dispatcher
        self.max_statement_bytes = max_statement_bytes
        self.MAX_LENGTH = max_statement_bytes
        self._parts: list[str] = []
        self._size = 0
        self._tail: Deferred[None] = succeed(None)
        self._closing = False  # no more statements accepted (quit or error)
        self._lost = False  # the connection is gone: write nothing more

    def dataReceived(self, data: bytes) -> None:
        # A telnet client sends Ctrl-C / Ctrl-D (IAC IP, IAC BRK, ...) at
        # once, without a newline: at the start of a line, that is a break.
        if not self._closing and not self._buffer and is_break_line(data):
            self._bye()
            return
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._closing:
            return
        if is_break_line(line):
            self._bye()
            return
        text = line.decode("utf-8", "replace").rstrip("\r")
        if not self._parts and not text.strip():
            return
        self._size += len(line) + 1
        if self._size > self.max_statement_bytes:
            self._too_long()
            return
        self._parts.append(text)
        if not text.rstrip().endswith(";"):
            return
        statement = "\n".join(self._parts).strip()
        self._parts, self._size = [], 0
        if statement.rstrip(";").strip().lower() in QUIT_WORDS:
            self._bye()
            return
        self._run(statement)

    def _run(self, statement: str) -> None:
        def run(_: object) -> Deferred[str]:
            return self.dispatcher.query_text(statement, transport="line")

        def write(text: str) -> None:
            if self.transport is not None and not self._lost:
                self.transport.write(text.encode("utf-8"))

        # Chain on the previous statement so answers come back in order.
        d: Deferred[None] = self._tail.addCallback(run).addCallback(write)
        d.addErrback(lambda f: log.failure("line protocol reply failed", f))
        self._tail = d

    def _bye(self) -> None:
        def bye(_: object) -> None:
            if self.transport is not None and not self._lost:
                self.transport.write(b"Bye!\n")
                self.transport.loseConnection()

        self._closing = True
        self._tail.addCallback(bye)

    def _too_long(self) -> None:
        log.info("line client sent a statement over {limit} bytes", limit=self.max_statement_bytes)
        self._parts, self._size = [], 0
        if self.transport is not None:
            self.transport.write(
                f"SQL error: statement longer than {self.max_statement_bytes} bytes\n".encode()
            )
            self.transport.loseConnection()
        self._closing = True

    def lineLengthExceeded(self, line: bytes) -> None:
        self._too_long()

    def connectionLost(self, reason: object = None) -> None:
        self._closing = True
        self._lost = True


class LineSQLFactory(protocol.ServerFactory):
    noisy = False

    def __init__(self, dispatcher: Dispatcher, max_statement_bytes: Optional[int] = None) -> None:
        self.dispatcher = dispatcher
        self.max_statement_bytes = max_statement_bytes or DEFAULT_MAX_STATEMENT_BYTES

    def buildProtocol(self, addr: object) -> LineSQLProtocol:
        p = LineSQLProtocol(self.dispatcher, self.max_statement_bytes)
        p.factory = self
        return p

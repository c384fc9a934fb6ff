"""The telnet line protocol: SQL in, the text rendering out (CRLF line ends).

Lines collect until the statement ends in ``;``; each statement is answered
in order. A statement may not grow past ``max_statement_bytes``: the client
is told and disconnected, and nobody else notices.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet import protocol
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from qasino.ops import Dispatcher

log = Logger(namespace="qasino.line")

DEFAULT_MAX_STATEMENT_BYTES = 1024 * 1024
QUIT_WORDS = frozenset({"quit", "exit", "logout"})
UNFINISHED_TEXT = "SQL error: the input ended inside a statement (end each statement with ';')\n"
HELP_WORDS = frozenset({"help", "?", "\\h", "\\?"})
HELP_TEXT = """\
Qasino line protocol: type one SQL statement, end it with ';' (it may span lines).
  SELECT ... ;                       any read-only query (WITH ... SELECT too)
  SHOW tables;                       every table, its rows, updates and last update
  SHOW tables LIKE 'pat%';           the same, filtered
  SHOW connections;                  who published this generation
  SHOW info;                         the generation being served
  SHOW views;                        the views and whether they loaded
  SHOW identities;                   every publisher heard from, stale ones first
  SHOW alerts;                       alert instances and rules in error
  DESC tablename;                    a table's columns and types
  DESC VIEW viewname;                a view's definition
  help;                              this text
  quit;  (or exit; logout; Ctrl-D)   close the connection
Internal tables: qasino_server_info, qasino_server_tables, qasino_server_connections,
qasino_server_views, qasino_server_sql_stats, qasino_server_update_stats,
qasino_server_identities, qasino_server_table_identities, qasino_server_alerts.
With --history N: history.TABLE holds the last N snapshots of TABLE.
Only reading statements run; anything that would change state is refused.
"""
# Ctrl-C / Ctrl-D as typed, and the telnet IAC sequences a client sends for them.
_BREAK_BYTES = frozenset(b"\x03\x04\xff\xf4\xfd\x06\xec")


def crlf(text: str) -> bytes:
    """A reply as sent: every line ends in CRLF, as the original's (Twisted
    LineReceiver's) sendLine wrote it."""
    return text.replace("\n", "\r\n").encode("utf-8")


def is_break_line(line: bytes) -> bool:
    stripped = line.strip()
    return bool(stripped) and all(b in _BREAK_BYTES for b in stripped)


@implementer(IHalfCloseableProtocol)
class LineSQLProtocol(LineReceiver):
    """A client that half-closes (``printf 'SELECT 1;' | nc -N``) gets the
    answer to every complete statement it sent, then the connection closes."""

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
        word = statement.rstrip(";").strip().lower()
        if word in QUIT_WORDS:
            self._bye()
            return
        if word in HELP_WORDS:
            self._reply(HELP_TEXT)
            return
        self._run(statement)

    def _run(self, statement: str) -> None:
        def run(_: object) -> Deferred[str]:
            return self.dispatcher.query_text(statement, transport="line")

        def write(text: str) -> None:
            if self.transport is not None and not self._lost:
                self.transport.write(crlf(text))

        # Chain on the previous statement so answers come back in order.
        d: Deferred[None] = self._tail.addCallback(run).addCallback(write)
        d.addErrback(lambda f: log.failure("line protocol reply failed", f))
        self._tail = d

    def _reply(self, text: str) -> None:
        """A fixed answer, in turn with the statements before it."""

        def write(_: object) -> None:
            if self.transport is not None and not self._lost:
                self.transport.write(crlf(text))

        self._tail.addCallback(write)

    def _bye(self) -> None:
        def bye(_: object) -> None:
            if self.transport is not None and not self._lost:
                self.transport.write(b"Bye!\r\n")
                self.transport.loseConnection()

        self._closing = True
        self._tail.addCallback(bye)

    def _too_long(self) -> None:
        log.info("line client sent a statement over {limit} bytes", limit=self.max_statement_bytes)
        self._parts, self._size = [], 0
        if self.transport is not None:
            self.transport.write(
                crlf(f"SQL error: statement longer than {self.max_statement_bytes} bytes\n")
            )
            self.transport.loseConnection()
        self._closing = True

    def lineLengthExceeded(self, line: bytes) -> None:
        self._too_long()

    def readConnectionLost(self) -> None:
        """The client sent all it will send: a last line without a newline
        still counts; answer everything, then close."""
        if not self._closing and self._buffer.strip():
            last, self._buffer = self._buffer, b""
            if len(last) > self.MAX_LENGTH:
                self.lineLengthExceeded(last)
            else:
                self.lineReceived(last)
        if not self._closing and self._parts:
            # A script that forgot the ';' would otherwise get nothing back.
            self._parts, self._size = [], 0
            self._reply(UNFINISHED_TEXT)
        self._closing = True

        def close(_: object) -> None:
            if self.transport is not None and not self._lost:
                self.transport.loseConnection()

        self._tail.addCallback(close)

    def writeConnectionLost(self) -> None:
        """The client no longer reads: nothing more to do for it."""
        self._closing = True
        if self.transport is not None:
            self.transport.loseConnection()

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

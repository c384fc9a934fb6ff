"""A lean HTTP/1.1 path for ``POST /request`` publishes on the plain HTTP port.

twisted.web builds a Request object, header dicts and a resource lookup for
every request; at thousands of small publishes a second that alone cost
about as much as the publish itself (docs/performance.md, "Multi-core
ingest"). :class:`ApiChannel` reads the requests a publisher sends - HTTP/1.1
``POST /request`` with a Content-Length body, keep-alive or not - itself and
answers them with the same reply bytes, through the same
:meth:`RequestResource.post_reply`. Anything else on the connection (the web
UI, GET, queries, chunked bodies, ``Expect: 100-continue``, HTTP/1.0, a
malformed head) is handed, with every byte not yet answered, to the site's
own twisted.web channel, which serves the rest of the connection as before.

Replies go out in request order: while one publish waits for the writer
thread, reading stops (as twisted.web does with pipelined requests).
"""

from __future__ import annotations

import time
from typing import Any, Optional

from twisted.internet.defer import fail
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from twisted.web import http, server

log = Logger(namespace="qasino.http")

# twisted.web's own limit on a request head; longer ones are its to refuse.
MAX_HEAD_BYTES = 16384

_REQUEST_PATH = b"/request"

# What a factory's ``answer`` may fire with instead of a reply: the request
# is not one this path answers after all; the site serves it (and the rest
# of the connection).
HAND_OFF = object()


class _DateCache:
    """The Date header's value, formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._value = http.datetimeToString(second)
        return self._value


_DATE = _DateCache()


def response_bytes(status: bytes, content_type: bytes, body: bytes, close: bool) -> bytes:
    """One whole HTTP/1.1 response."""
    return b"".join(
        (
            b"HTTP/1.1 ",
            status,
            b"\r\nContent-Type: ",
            content_type,
            b"\r\nContent-Length: ",
            str(len(body)).encode(),
            b"\r\nDate: ",
            _DATE.now(),
            b"\r\nConnection: close\r\n\r\n" if close else b"\r\n\r\n",
            body,
        )
    )


def parse_head(head: bytes) -> Optional[tuple[bytes, int, bool]]:
    """(query string, Content-Length, close after the reply) of a request
    this path answers, or None for one twisted.web must see."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1":
        return None
    path, _, query = parts[1].partition(b"?")
    if path != _REQUEST_PATH:
        return None
    length: Optional[int] = None
    close = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name[-1:].isspace() or name[:1].isspace():
            return None  # malformed or folded: twisted.web answers 400
        name = name.lower()
        if name == b"content-length":
            value = value.strip()
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        elif name in (b"transfer-encoding", b"expect"):
            return None
        elif name == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            if b"close" in tokens:
                close = True
            if b"upgrade" in tokens:
                return None
    if length is None:
        return None
    return query, length, close


def query_string_args(query: bytes) -> dict[str, str]:
    """The query string's arguments, first value of each, as text (what
    twisted.web's ``request.args`` gives the resource)."""
    if not query:
        return {}
    parsed = http.parse_qs(query, 1)  # as twisted.web parses it
    return {
        key.decode("utf-8", "replace"): values[0].decode("utf-8", "replace")
        for key, values in parsed.items()
        if values
    }


class ApiChannel(Protocol, TimeoutMixin):
    """One HTTP connection: publishes answered here, the rest by twisted.web."""

    def __init__(self, factory: ApiFastFactory) -> None:
        self.factory = factory
        self._buffer = b""
        self._busy = False  # a reply is pending
        self._paused = False
        self._closing = False
        self._gone = False
        self._inner: Optional[Protocol] = None
        self._peer: Optional[str] = None
        self._serving = False  # in _serve's loop (a reply fired at once returns to it)
        # The buffer the pending request starts, and where it ends there.
        self._asked: Optional[tuple[bytes, int]] = None
        # A body still arriving: its pieces, kept apart until the request is
        # whole (joining once, not copying the buffer at every read).
        self._pieces: list[bytes] = []
        self._have = 0
        self._want = 0

    # -- connection

    def connectionMade(self) -> None:
        assert self.transport is not None
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)
        host = getattr(self.transport.getPeer(), "host", None)
        self._peer = host if isinstance(host, str) else None
        self.setTimeout(self.factory.site.timeOut)

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        if self._closing:
            return
        self.resetTimeout()
        if self._want:
            self._pieces.append(data)
            self._have += len(data)
            if self._have < self._want:
                return
            self._buffer = b"".join(self._pieces)
            self._pieces, self._have, self._want = [], 0, 0
        else:
            self._buffer += data
        if not self._busy:
            self._serve()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._gone = True
        self.setTimeout(None)
        if self._inner is not None:
            self._inner.connectionLost(reason)

    def timeoutConnection(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    # -- requests

    def _serve(self) -> None:
        """Answer every whole request in the buffer, in order, until one's
        reply is pending or a request is twisted.web's."""
        self._serving = True
        try:
            self._serve_loop()
        finally:
            self._serving = False

    def _serve_loop(self) -> None:
        while not self._busy and self._inner is None and not self._closing and self._buffer:
            buffer = self._buffer
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    self._hand_off()
                return
            parsed = parse_head(buffer[:end])
            if parsed is None:
                self._hand_off()
                return
            query, length, close = parsed
            if length > self.factory.max_body_bytes:
                self._hand_off()  # twisted.web answers 413 and closes
                return
            start = end + 4
            if len(buffer) - start < length:
                # The rest of the body is still on its way: collect it.
                self._pieces, self._have, self._want = [buffer], len(buffer), start + length
                self._buffer = b""
                return
            body = buffer[start : start + length]
            try:
                d = self.factory.answer(query, body, self._peer)
            except Exception:
                d = fail()  # answered 500 and logged, as twisted.web would
            if isinstance(d, dict):
                self._hand_off()  # op=query: the shapes and streaming live there
                return
            # Kept until the reply: a late HAND_OFF gives the request to the site.
            self._asked = (buffer, start + length)
            self._buffer = buffer[start + length :]
            self._busy = True
            if close:
                self._closing = True
            d.addBoth(self._reply, close)
            if self._busy and not self._gone and not self._closing:
                # Waits for the writer thread: read nothing more meanwhile.
                self._pause()

    def _reply(self, result: Any, close: bool) -> None:
        self._busy = False
        asked, self._asked = self._asked, None
        if result is HAND_OFF and asked is not None:
            # Not a publish after all (--workers: op=query came back).
            if not self._gone:
                self._closing = False
                self._buffer = asked[0][: asked[1]] + self._buffer
                self._hand_off()
            return
        if self._gone:
            if isinstance(result, Failure):
                log.failure("request failed", result)
            return
        status, body = self.factory.api.reply_body(result)
        assert self.transport is not None
        self.transport.write(response_bytes(status, self.factory.api.reply_type, body, close))
        if close:
            self.transport.loseConnection()
            return
        self._resume()
        if self._buffer and not self._serving:
            self._serve()

    def _pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def _resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def _hand_off(self) -> None:
        """Let twisted.web's channel serve the rest of this connection,
        starting with the bytes not answered yet."""
        self.setTimeout(None)
        self._resume()
        inner = self.factory.site.buildProtocol(self.transport.getPeer())  # type: ignore[union-attr]
        assert inner is not None
        self._inner = inner
        inner.makeConnection(self.transport)
        data, self._buffer = self._buffer, b""
        if data:
            inner.dataReceived(data)


class ApiFastFactory(Factory):
    """The plain HTTP listener's factory: :class:`ApiChannel` in front of
    ``site`` (whose ``/request`` resource answers what it reads)."""

    def __init__(self, site: server.Site, api: Any, max_body_bytes: int) -> None:
        self.site = site
        self.api = api  # a RequestResource
        self.max_body_bytes = max_body_bytes
        self.noisy = False

    def buildProtocol(self, addr: Any) -> ApiChannel:
        return ApiChannel(self)

    def answer(self, query: bytes, body: bytes, peer: Optional[str]) -> Any:
        """The reply to ``POST /request?QUERY`` with ``body``: what
        :meth:`RequestResource.post_reply` gives (a worker process's
        factory forwards it to the store process instead)."""
        return self.api.post_reply(query_string_args(query), body, peer)

    # The listener starts and stops the site along with this factory.
    def doStart(self) -> None:
        self.site.doStart()

    def doStop(self) -> None:
        self.site.doStop()

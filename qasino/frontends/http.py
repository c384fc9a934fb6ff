"""HTTP front end: ``/request`` (the JSON API) on twisted.web.

Thin: decode the request, call the shared :class:`~qasino.ops.Dispatcher`,
encode the reply. Every Deferred ends in a write + finish, and a client
that went away is noticed so nothing is written to a closed request.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from qasino.core import shapes
from qasino.core.model import Result
from qasino.frontends.stream import DEFAULT_MAX_STREAM_ROWS, run_stream
from qasino.frontends.web import install_web_ui, query_args
from qasino.ops import MISSING_SQL, Dispatcher, encode_json, is_true, merge_request

log = Logger(namespace="qasino.http")

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
JSON_TYPE = b"application/json"
TEXT_TYPE = b"text/plain; charset=utf-8"
CSV_TYPE = b"text/csv; charset=utf-8"
CSV_DISPOSITION = b'attachment; filename="qasino_query.csv"'


class _Discard(io.RawIOBase):
    """A request body sink that keeps nothing."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return 0

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def tell(self) -> int:
        return 0


class LimitedRequest(server.Request):
    """A Request that refuses bodies over ``site.max_body_bytes`` with 413.

    The refusal happens as soon as the Content-Length is known (or, for a
    chunked body, as soon as the limit is passed): the body is never
    buffered whole, and the connection is closed.
    """

    _refused = False
    _received = 0

    def _site_setting(self, name: str, default: Any) -> Any:
        return getattr(getattr(self.channel, "site", None), name, default)

    def _limit(self) -> int:
        return int(self._site_setting("max_body_bytes", DEFAULT_MAX_BODY_BYTES))

    def gotLength(self, length: Optional[int]) -> None:
        if length is not None and length > self._limit():
            self._refuse()
            return
        try:
            super().gotLength(length)  # a temporary file for large bodies
        except OSError as e:
            self._refuse_storage(e)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused or self._storage_error is not None:
            return
        self._received += len(data)
        if self._received > self._limit():
            self._refuse()
            return
        try:
            super().handleContentChunk(data)
        except OSError as e:  # the body's temporary file: disk full, ...
            self._refuse_storage(e)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        log.info("refused a request body over {limit} bytes", limit=self._limit())
        self._answer_and_close(
            b"413 Request Entity Too Large",
            f"Request body too large (limit {self._limit()} bytes)",
        )

    _storage_error: Optional[str] = None

    def _refuse_storage(self, error: OSError) -> None:
        """The body's temporary file failed (disk full): read the rest of the
        body into nothing, then answer 507 (a client still sending would not
        see an answer given before its body is read)."""
        log.error("cannot buffer a request body: {error}", error=error)
        self._storage_error = f"storage error: cannot buffer the request body: {error}"
        old = self.content
        self.content = _Discard()
        if old is not None:
            try:
                old.close()
            except OSError:
                pass

    def process(self) -> None:
        if self._storage_error is None:
            super().process()
            return
        identity = self._site_setting("identity", "")
        body = encode_json(
            {"response_op": "error", "identity": identity, "error_message": self._storage_error}
        )
        self.setResponseCode(507)
        self.setHeader(b"Content-Type", JSON_TYPE)
        self.setHeader(b"Content-Length", str(len(body)).encode())
        self.write(body)
        self.finish()

    def _answer_and_close(self, status: bytes, message: str) -> None:
        """Reply at once, before the body, and close the connection."""
        self._refused = True
        # The channel answers "Expect: 100-continue" right after gotLength;
        # a refused request must not invite the body.
        self.requestHeaders.removeHeader(b"Expect")
        old = self.content
        self.content = io.BytesIO()
        if old is not None:
            try:
                old.close()
            except OSError:
                pass
        identity = self._site_setting("identity", "")
        body = encode_json({"response_op": "error", "identity": identity, "error_message": message})
        transport = self.channel.transport
        assert transport is not None
        transport.write(
            b"HTTP/1.1 " + status + b"\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            b"Connection: close\r\n\r\n" + body
        )
        transport.loseConnection()


def _peer(request: server.Request) -> Optional[str]:
    """The client's IP address (qasino_server_identities.remote_addr)."""
    host = getattr(request.getClientAddress(), "host", None)
    return host if isinstance(host, str) else None


class RequestResource(Resource):
    """``/request?op=...``: every op of the protocol, GET and POST."""

    isLeaf = True

    def __init__(
        self,
        dispatcher: Dispatcher,
        transport: str = "http",
        max_stream_rows: int = DEFAULT_MAX_STREAM_ROWS,
        call_in_reactor: Optional[Callable[..., Any]] = None,
    ) -> None:
        super().__init__()
        self.dispatcher = dispatcher
        self.transport = transport  # the label of the requests in /metrics
        self.max_stream_rows = max_stream_rows
        # How a reader thread hands streamed rows to the reactor (None: a
        # plain call, for tests whose store calls run on the reactor thread).
        self.call_in_reactor = call_in_reactor or (lambda fn, *args: fn(*args))

    def render_GET(self, request: server.Request) -> Any:
        args = query_args(request)
        if args.get("op") == "query":
            return self._query(request, args)
        return self._reply(
            request,
            self.dispatcher.dispatch(args, self.transport, remote_addr=_peer(request)),
        )

    def render_POST(self, request: server.Request) -> Any:
        body = request.content.read() if request.content is not None else b""
        outcome = self.post_reply(query_args(request), body, _peer(request))
        if isinstance(outcome, dict):
            return self._query(request, outcome)
        return self._reply(request, outcome)

    # What a POST /request answers, shared with the lean publish path
    # (qasino/frontends/fastpath.py), which sends the same bytes.
    reply_type = JSON_TYPE

    def post_reply(
        self, args: dict[str, str], body: bytes, peer: Optional[str]
    ) -> Deferred[Any] | dict[str, Any]:
        """The reply to ``POST /request`` with query-string ``args`` and
        ``body``: a Deferred of the reply (a dict, or a Failure for a 500),
        or, for ``op=query``, the merged arguments to answer it with
        :meth:`_query`."""
        if args.get("op") == "add_csv_table_data":
            return self.dispatcher.add_csv_table_data(
                body, args.get("identity"), self.transport, peer
            )
        try:
            payload, plain_bytes = merge_request(args, body)
        except (ValueError, UnicodeDecodeError) as e:
            if args.get("op") == "add_table_data":
                self.dispatcher.engine.count_publish_error()
                self.dispatcher.stats.publish_done(self.transport, False)
            return succeed(self.dispatcher.error(f"Could not parse POST body: {e}"))
        if not isinstance(payload, dict):
            return succeed(self.dispatcher.error("Could not parse POST body: not a JSON object"))
        if payload.get("op") == "query":
            return payload
        return self.dispatcher.dispatch(payload, self.transport, plain_bytes, remote_addr=peer)

    def reply_body(self, result: Any) -> tuple[bytes, bytes]:
        """(status line, body) of a :meth:`post_reply` outcome for the lean
        path: what :meth:`_answer` sends."""
        if not isinstance(result, Failure):
            try:
                return b"200 OK", result if isinstance(result, bytes) else encode_json(result)
            except Exception:
                result = Failure()
        log.failure("request failed", result)
        return b"500 Internal Server Error", encode_json(self.dispatcher.error("Internal error"))

    def _query(self, request: server.Request, args: dict[str, Any]) -> Any:
        """``op=query`` with a ``format``: the legacy ``json`` and ``text``,
        or a typed shape (400 with ``{"ok": false, "error": MSG}`` on an
        error, an unknown format included); ``stream=1`` for csv/ndjson."""
        raw = args.get("format")
        sql, use_write_db = args.get("sql"), is_true(args.get("use_write_db"))
        try:
            fmt = shapes.parse_format(raw if isinstance(raw, str) or raw is None else repr(raw))
            streaming = is_true(args.get("stream"))
            if streaming and fmt not in shapes.STREAM_FORMATS:
                raise shapes.UnknownFormat(
                    f"stream=1 works with format=csv or format=ndjson, not {fmt!r}"
                )
        except shapes.UnknownFormat as e:
            self.dispatcher.engine.count_query_error()
            log.info("refused a query: {message}", message=e.message)
            request.setResponseCode(400)
            return self._send(request, shapes.error_body(e.message))
        if fmt == "text":
            return self._text_query(request, sql, use_write_db)
        if fmt == "json":
            legacy = {key: value for key, value in args.items() if key != "format"}
            return self._reply(request, self.dispatcher.query_encoded(legacy, self.transport))
        if streaming:
            if not isinstance(sql, str) or not sql.strip():
                self.dispatcher.engine.count_query_error()
                request.setResponseCode(400)
                return self._send(request, shapes.error_body(MISSING_SQL))
            stats, started = self.dispatcher.stats, time.perf_counter()
            run_stream(
                self.dispatcher.engine,
                request,
                sql,
                fmt,
                use_write_db,
                self.max_stream_rows,
                self.call_in_reactor,
                lambda ok: stats.query_done(self.transport, ok, time.perf_counter() - started),
            )
            return server.NOT_DONE_YET
        d = self.dispatcher.query_shaped(sql, use_write_db, fmt, self.transport)
        content_type = shapes.CONTENT_TYPES[fmt]

        def shaped(status_body: tuple[int, bytes]) -> bytes:
            status, body = status_body
            request.setResponseCode(status)
            if status != 200:
                request.setHeader(b"Content-Type", shapes.ERROR_CONTENT_TYPE)
            else:
                request.setHeader(b"Content-Type", content_type)
                if fmt == "csv":
                    request.setHeader(b"Content-Disposition", CSV_DISPOSITION)
            return body

        return self._reply(request, d.addCallback(shaped), content_type=None)

    def _text_query(self, request: server.Request, sql: object, use_write_db: bool) -> Any:
        d = self.dispatcher.query_text(
            sql if isinstance(sql, str) else None, use_write_db, self.transport
        )
        d.addCallback(lambda text: text.encode("utf-8"))
        return self._reply(request, d, TEXT_TYPE)

    def _reply(
        self, request: server.Request, d: Deferred[Any], content_type: Optional[bytes] = JSON_TYPE
    ) -> Any:
        """Answer with what ``d`` fires (a reply dict or bytes); a failure is
        logged and answered 500. Most publishes have fired already and are
        answered in this call; otherwise once ``d`` fires, unless the client
        went away meanwhile."""
        outcome: list[Any] = []
        d.addBoth(outcome.append)
        if outcome:
            return self._answer(request, outcome[0], content_type, finish=False)
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def fired(_: object) -> None:
            if not gone:
                self._answer(request, outcome[0], content_type, finish=True)
            elif isinstance(outcome[0], Failure):
                log.failure("request failed", outcome[0])

        d.addCallback(fired)
        return server.NOT_DONE_YET

    def _answer(
        self,
        request: server.Request,
        result: Any,
        content_type: Optional[bytes],
        finish: bool,
    ) -> Any:
        if not isinstance(result, Failure):
            try:
                body = result if isinstance(result, bytes) else encode_json(result)
            except Exception:
                result = Failure()
            else:
                return self._send(request, body, content_type, finish)
        log.failure("request failed", result)
        request.setResponseCode(500)
        return self._send(
            request, encode_json(self.dispatcher.error("Internal error")), JSON_TYPE, finish
        )

    @staticmethod
    def _send(
        request: server.Request,
        body: bytes,
        content_type: Optional[bytes] = JSON_TYPE,
        finish: bool = False,
    ) -> Any:
        if content_type is not None:  # None: the caller has set it
            request.setHeader(b"Content-Type", content_type)
        request.setHeader(b"Content-Length", str(len(body)).encode())
        if not finish:
            return body
        request.write(body)
        request.finish()
        return None


class ListenerDispatcher:
    """The dispatcher as the web UI of one listener uses it: its queries are
    counted (``/metrics``) under that listener's transport."""

    def __init__(self, dispatcher: Dispatcher, transport: str) -> None:
        self._dispatcher = dispatcher
        self._transport = transport

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dispatcher, name)

    def query_result(self, sql: str, use_write_db: bool = False) -> Deferred[Result]:
        return self._dispatcher.query_result(sql, use_write_db, self._transport)


class RootResource(Resource):
    """``/request`` (the API) and the web UI (``/``, ``/tables``, ``/desc``,
    ``/query``, ``/connections``, ``/views``, ``/static/``); anything else 404."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        transport: str = "http",
        max_stream_rows: int = DEFAULT_MAX_STREAM_ROWS,
        call_in_reactor: Optional[Callable[..., Any]] = None,
    ) -> None:
        super().__init__()
        self.api = RequestResource(dispatcher, transport, max_stream_rows, call_in_reactor)
        self.putChild(b"request", self.api)
        ui_dispatcher: Any = ListenerDispatcher(dispatcher, transport)
        self.not_found = install_web_ui(self, ui_dispatcher)

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        return self.not_found


class QuietSite(server.Site):
    """A Site without the per-request access log line: at thousands of
    publishes a second it cost a sixth of the reactor's time (bench/)."""

    def log(self, request: Any) -> None:
        pass


def make_site(
    dispatcher: Dispatcher,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    transport: str = "http",
    max_stream_rows: int = DEFAULT_MAX_STREAM_ROWS,
    reactor: Any = None,
) -> server.Site:
    """The API and web UI. ``reactor``: where streamed rows are handed from
    the reader threads (``callFromThread``); None only where store calls run
    on the reactor thread (tests)."""
    call = getattr(reactor, "callFromThread", None)
    site = QuietSite(
        RootResource(dispatcher, transport, max_stream_rows, call), parsePOSTFormSubmission=False
    )
    site.requestFactory = LimitedRequest
    site.max_body_bytes = max_body_bytes  # type: ignore[attr-defined]
    site.identity = dispatcher.identity  # type: ignore[attr-defined]
    site.displayTracebacks = False
    site.noisy = False
    return site

"""The one dispatch of protocol ops, shared by the HTTP and ZeroMQ front ends.

A front end decodes its request into a dict (or CSV text), calls
:meth:`Dispatcher.dispatch` and encodes the reply dict it gets back. Errors
never escape as exceptions: every failure becomes the protocol's error
shape, so no request can be left without a reply.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Optional, Protocol, TypeVar, cast

import orjson
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from qasino.core import shapes
from qasino.core.errors import InvalidInput, QasinoError
from qasino.core.model import Publish, Result
from qasino.core.render import (
    LegacyRenderer,
    error_shape,
    render_error_text,
    render_result_text,
    result_shape,
)
from qasino.core.tables import (
    DEFAULT_MAX_CELL_BYTES,
    DEFAULT_MAX_COLUMNS,
    DEFAULT_MAX_ROWS,
    parse_csv_publish,
    parse_json_publish,
)
from qasino.engine import Engine

log = Logger(namespace="qasino.ops")

Reply = dict[str, Any]
T = TypeVar("T")

# The texts old clients know; the ZeroMQ one names the op.
NO_OP = "No op specified"
UNKNOWN_OP_HTTP = "Unrecognized operation"
MISSING_SQL = "Must specify 'sql' param"
# The identity of a name_value_update that names none (the original's).
UNKNOWN_IDENTITY = "unknown"


def is_true(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def encode_json(obj: object) -> bytes:
    """Compact UTF-8 JSON (orjson: >10x faster than the stdlib encoder)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        # Integers beyond 64 bits and the like: the stdlib copes.
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode_json(data: bytes | str) -> Any:
    """Parse JSON; raises ValueError (with the stdlib's message) on bad input.

    orjson first (2-3x faster); on its refusal the stdlib parser decides, so
    what old publishers send (NaN, Infinity) keeps working and error
    messages keep their familiar form.
    """
    return decode_body(data)[0]


def decode_body(data: bytes | str) -> tuple[Any, Optional[int]]:
    """:func:`decode_json`, and the body's length if orjson read it.

    orjson yields only plain JSON values: no NaN or infinity, no lone
    surrogate, no integer beyond 64 bits. That length is what
    :meth:`Dispatcher.dispatch` takes as ``body_bytes``; a body only the
    stdlib could read gets None, and its cells the full check.
    """
    try:
        return orjson.loads(data), len(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data), None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def merge_request(args: dict[str, str], body: bytes) -> tuple[Any, Optional[int]]:
    """A ``POST /request``'s request object: the JSON body (``{}`` when
    blank) with the query-string ``args`` filled in where the body lacks
    them, and :func:`decode_body`'s length. Raises ValueError or
    UnicodeDecodeError for a body that is not JSON; a body that is JSON but
    not an object is returned as it is."""
    payload, plain_bytes = decode_body(body) if body.strip() else ({}, None)
    if isinstance(payload, dict):
        for key, value in args.items():
            payload.setdefault(key, value)
    return payload, plain_bytes


PUBLISH_OPS = frozenset({"add_table_data", "add_csv_table_data", "name_value_update"})


class RequestStats:
    """Publishes and queries answered, by transport (``http``, ``https``,
    ``zmq``, ``line``) and outcome (``ok``, ``error``): plain counts that
    ``/metrics`` reads when it is scraped. Reactor thread only."""

    def __init__(self) -> None:
        self.publishes: Counter[tuple[str, str]] = Counter()
        self.queries: Counter[tuple[str, str]] = Counter()
        # Called with (transport, seconds) for each query answered.
        self.query_timers: list[Callable[[str, float], None]] = []

    def publish_done(self, transport: str, ok: bool) -> None:
        self.publishes[(transport, "ok" if ok else "error")] += 1

    def query_done(self, transport: str, ok: bool, seconds: float) -> None:
        self.queries[(transport, "ok" if ok else "error")] += 1
        for timer in self.query_timers:
            timer(transport, seconds)

    def count(self, op: object, transport: str, started: float, reply: T) -> T:
        """A callback: count ``reply`` (a reply dict, text or a Failure) of ``op``."""
        if not isinstance(op, str):
            return reply
        if isinstance(reply, Failure):
            ok = False
        elif isinstance(reply, dict):
            ok = reply.get("response_op") != "error"
        elif isinstance(reply, str):
            ok = not reply.startswith("SQL error: ")
        else:
            ok = True
        if op == "query":
            self.query_done(transport, ok, time.perf_counter() - started)
        elif op in PUBLISH_OPS:
            self.publish_done(transport, ok)
        return reply


class PublishForwarder(Protocol):
    """Where checked publishes go instead of the engine (NATS mode: into the
    stream; the reply waits for the stream's acknowledgement)."""

    def forward_json(self, identity: str, request: dict[str, Any]) -> Deferred[None]: ...

    def forward_csv(self, identity: str, body: bytes) -> Deferred[None]: ...


class Dispatcher:
    """Turns protocol requests into engine calls and engine results into replies."""

    # Set by the NATS service (qasino/nats) when the server runs with --nats.
    forwarder: Optional[PublishForwarder] = None

    def __init__(
        self,
        engine: Engine,
        max_table_rows: int = DEFAULT_MAX_ROWS,
        max_table_columns: int = DEFAULT_MAX_COLUMNS,
        max_cell_bytes: int = DEFAULT_MAX_CELL_BYTES,
    ) -> None:
        self.engine = engine
        self.limits = {
            "max_rows": max_table_rows,
            "max_columns": max_table_columns,
            "max_cell_bytes": max_cell_bytes,
        }
        self.ops: dict[str, Callable[[dict[str, Any]], Deferred[Reply]]] = {
            "add_table_data": self.add_table_data,
            "query": self.query,
            "get_table_list": self.get_table_list,
            "name_value_update": self.name_value_update,
        }
        self.stats = RequestStats()

    @property
    def identity(self) -> str:
        return self.engine.identity

    def error(self, message: str) -> Reply:
        return error_shape(message, self.identity)

    def ok(self) -> Reply:
        return {"identity": self.identity, "response_op": "ok"}

    def dispatch(
        self,
        request: object,
        source: str = "http",
        body_bytes: Optional[int] = None,
        remote_addr: Optional[str] = None,
    ) -> Deferred[Reply]:
        """Run one request dict; always fires with a reply dict, never errbacks.

        ``body_bytes``: ``request`` was decoded by orjson from a body that
        long (see :func:`decode_body`); it lets a publish leave the checks
        of its cells to SQLite. ``remote_addr``: the sender's address, if
        known (kept per identity, docs/fleet.md)."""
        op = request.get("op") if isinstance(request, dict) else None
        started = time.perf_counter()
        d = self._dispatch(request, source, body_bytes, remote_addr)
        return d.addCallback(lambda reply: self.stats.count(op, source, started, reply))

    def _dispatch(
        self,
        request: object,
        source: str,
        body_bytes: Optional[int],
        remote_addr: Optional[str] = None,
    ) -> Deferred[Reply]:
        if not isinstance(request, dict):
            return succeed(self.error("Request must be a JSON object"))
        op = request.get("op")
        if op is None or op == "":
            return succeed(self.error(NO_OP))
        handler = self.ops.get(op) if isinstance(op, str) else None
        if handler is None:
            if source == "zmq":
                return succeed(self.error(f"Unrecognized op {op!r}"))
            return succeed(self.error(UNKNOWN_OP_HTTP))
        try:
            if handler == self.add_table_data:
                d = self.add_table_data(request, body_bytes, remote_addr)
            else:
                d = handler(request)
        except Exception:
            return succeed(self._failed(Failure(), op))
        d.addErrback(self._failed, op)
        return d

    def _failed(self, failure: Failure, op: object) -> Reply:
        error = failure.value
        if isinstance(error, InvalidInput):
            message = "Invalid input format: " + error.message
            log.info("refused {op}: {message}", op=op, message=message)
            return self.error(message)
        if isinstance(error, QasinoError):
            log.info("{op} failed: {message}", op=op, message=error.message)
            return self.error(error.message)
        log.failure("unexpected error in {op}", failure, op=op)
        return self.error(f"Internal error: {failure.getErrorMessage()}")

    # ------------------------------------------------------------------ ops

    def add_table_data(
        self,
        request: dict[str, Any],
        body_bytes: Optional[int] = None,
        remote_addr: Optional[str] = None,
    ) -> Deferred[Reply]:
        try:
            publish = parse_json_publish(request, **self.limits, decoded_from_bytes=body_bytes)
        except InvalidInput:
            table = request.get("table")
            rows = table.get("rows") if isinstance(table, dict) else None
            self.engine.count_publish_error(len(rows) if isinstance(rows, list) else 0)
            raise
        if self.forwarder is not None:
            d = self.forwarder.forward_json(publish.options.identity, request)
            return d.addCallback(lambda _: self.ok())
        return self.engine.publish(publish, remote_addr).addCallback(lambda _: self.ok())

    def add_checked_tables(
        self, items: Sequence[tuple[Publish, Optional[str]]], transport: str
    ) -> Deferred[list[Reply]]:
        """``add_table_data`` requests that worker processes
        (qasino/workers.py) already decoded and checked with
        :func:`parse_json_publish`, as (publish, remote_addr) pairs: applied
        in order with as few commits as can be (``Engine.publish_group``),
        then answered and counted each as :meth:`dispatch` would the request
        itself. Fires with the replies, never errbacks. Not with ``--nats``,
        whose forwarder wants the requests as sent."""
        started = time.perf_counter()

        def answered(outcome: object) -> list[Reply]:
            errors = (
                [outcome] * len(items)
                if isinstance(outcome, Failure)
                else cast(list[Optional[QasinoError]], outcome)
            )
            replies = []
            for error in errors:
                if error is None:
                    reply = self.ok()
                else:
                    failure = error if isinstance(error, Failure) else Failure(error)
                    reply = self._failed(failure, "add_table_data")
                replies.append(self.stats.count("add_table_data", transport, started, reply))
            return replies

        try:
            d = self.engine.publish_group(items)
        except Exception:
            d = fail()
        return d.addBoth(answered)

    def add_csv_table_data(
        self,
        body: bytes,
        identity: Optional[str] = None,
        transport: str = "http",
        remote_addr: Optional[str] = None,
    ) -> Deferred[Reply]:
        """The CSV publish format (HTTP op add_csv_table_data)."""
        d = self._add_csv_table_data(body, identity, remote_addr)
        return d.addCallback(lambda r: self.stats.count("add_csv_table_data", transport, 0, r))

    def _add_csv_table_data(
        self, body: bytes, identity: Optional[str], remote_addr: Optional[str] = None
    ) -> Deferred[Reply]:
        try:
            publish = parse_csv_publish(
                body,
                identity,
                max_rows=self.limits["max_rows"],
                max_columns=self.limits["max_columns"],
                max_cell_bytes=self.limits["max_cell_bytes"],
            )
        except InvalidInput as e:
            self.engine.count_publish_error()
            return succeed(self._failed(Failure(e), "add_csv_table_data"))
        if self.forwarder is not None:
            raw = body if isinstance(body, bytes) else str(body).encode("utf-8")
            d = self.forwarder.forward_csv(publish.options.identity, raw)
        else:
            d = self.engine.publish(publish, remote_addr)
        reply = d.addCallback(lambda _: self.ok())
        reply.addErrback(self._failed, "add_csv_table_data")
        return reply

    def name_value_update(self, request: dict[str, Any]) -> Deferred[Reply]:
        name, value, identity = request.get("name"), request.get("value"), request.get("identity")
        if not isinstance(name, str) or name.count(".") != 1:
            raise InvalidInput("'name' must be TABLE.COLUMN")
        if value is None or not isinstance(value, (str, int, float)):
            raise InvalidInput("'value' is required")
        if identity is None or identity == "":
            identity = UNKNOWN_IDENTITY  # as the original server did
        if not isinstance(identity, str):
            raise InvalidInput("'identity' must be text")
        tablename, column = name.split(".")
        if self.forwarder is not None:
            forwarded = {"op": "name_value_update", "name": name, "value": str(value)}
            forwarded["identity"] = identity
            sent: Deferred[Any] = self.forwarder.forward_json(identity, forwarded)
            return sent.addCallback(lambda _: self.ok())
        d = self.engine.name_value_update(tablename, column, str(value), identity)
        return d.addCallback(lambda _: self.ok())

    def get_table_list(self, request: dict[str, Any]) -> Deferred[Reply]:
        return succeed(
            {
                "response_op": "tables_list",
                "identity": self.identity,
                "tables": self.engine.table_list(),
            }
        )

    def query(self, request: dict[str, Any]) -> Deferred[Reply]:
        sql = request.get("sql")
        if not isinstance(sql, str) or not sql.strip():
            self.engine.count_query_error()
            return succeed(self.error(MISSING_SQL))
        use_write_db = is_true(request.get("use_write_db", False))
        if request.get("format") is not None:
            # A typed shape is encoded bytes, not a reply dict.
            return self._query_encoded(request, [])  # type: ignore[return-value]
        identity = self.identity
        return self.engine.query_then(
            sql, use_write_db, lambda result: result_shape(result, identity)
        )

    def query_encoded(self, request: dict[str, Any], transport: str = "http") -> Deferred[bytes]:
        """:meth:`query` as the encoded reply the front ends send, rendered
        and encoded on the reader thread as the rows are read, so a big
        result never holds up the reactor. Never errbacks; counted in
        ``stats`` under ``transport``."""
        started = time.perf_counter()
        outcome: list[bool] = []

        def counted(body: bytes) -> bytes:
            ok = outcome[0] if outcome else True
            self.stats.query_done(transport, ok, time.perf_counter() - started)
            return body

        return self._query_encoded(request, outcome).addCallback(counted)

    def _query_encoded(self, request: dict[str, Any], outcome: list[bool]) -> Deferred[bytes]:
        sql = request.get("sql")
        use_write_db = is_true(request.get("use_write_db", False))
        fmt = request.get("format")
        if fmt is not None:  # ZeroMQ: "objects" or "arrays" (or "json")
            try:
                name = shapes.parse_format(
                    fmt if isinstance(fmt, str) else repr(fmt), shapes.ZMQ_FORMATS
                )
            except shapes.UnknownFormat as e:
                self.engine.count_query_error()
                outcome.append(False)
                return succeed(shapes.error_body(e.message))
            if name != "json":
                d = self._query_shaped(sql, use_write_db, name)

                def body_of(status_body: tuple[int, bytes]) -> bytes:
                    outcome.append(status_body[0] == 200)
                    return status_body[1]

                return d.addCallback(body_of)
        if not isinstance(sql, str) or not sql.strip():
            self.engine.count_query_error()
            outcome.append(False)
            return succeed(encode_json(self.error(MISSING_SQL)))
        renderer = LegacyRenderer(self.identity)

        def failed(failure: Failure) -> bytes:
            outcome.append(False)
            return encode_json(self._failed(failure, "query"))

        rendered = self.engine.query_into(
            sql, use_write_db, renderer.feed, lambda result, _ms: renderer.finish(result)
        )
        return rendered.addErrback(failed)

    def query_shaped(
        self, sql: object, use_write_db: bool, fmt: str, transport: str = "http"
    ) -> Deferred[tuple[int, bytes]]:
        """A query in one of the typed shapes (objects, arrays, ndjson, csv):
        fires with (HTTP status, body), the body ``{"ok": false, "error":
        MSG}`` on an error (status 400, 500 for an internal error); never
        errbacks. Counted in ``stats`` under ``transport``."""
        started = time.perf_counter()

        def counted(status_body: tuple[int, bytes]) -> tuple[int, bytes]:
            ok = status_body[0] == 200
            self.stats.query_done(transport, ok, time.perf_counter() - started)
            return status_body

        return self._query_shaped(sql, use_write_db, fmt).addCallback(counted)

    def _query_shaped(
        self, sql: object, use_write_db: bool, fmt: str
    ) -> Deferred[tuple[int, bytes]]:
        if not isinstance(sql, str) or not sql.strip():
            self.engine.count_query_error()
            return succeed((400, shapes.error_body(MISSING_SQL)))

        def encode(result: Result, query_ms: float) -> tuple[int, bytes]:
            body = shapes.table_body(
                fmt,
                result.column_names,
                result.rows,
                result.generation_number,
                result.truncated,
                query_ms,
            )
            return 200, body

        def failed(failure: Failure) -> tuple[int, bytes]:
            internal = not failure.check(QasinoError)
            message = self._failed(failure, "query")["error_message"]
            return (500 if internal else 400), shapes.error_body(message)

        if fmt == "arrays":  # encoded chunk by chunk as the rows are read
            renderer = shapes.ShapeRenderer(fmt)

            def finish(result: Result, query_ms: float) -> tuple[int, bytes]:
                body = renderer.finish(
                    result.column_names,
                    result.rows,
                    result.generation_number,
                    result.truncated,
                    query_ms,
                )
                return 200, body

            d = self.engine.query_into(sql, use_write_db, renderer.feed, finish)
            return d.addErrback(failed)
        return self.engine.query_timed(sql, use_write_db, encode).addErrback(failed)

    def query_text(
        self, sql: Optional[str], use_write_db: bool = False, transport: str = "http"
    ) -> Deferred[str]:
        """The text rendering of a query, or ``SQL error: ...`` (never errbacks)."""
        started = time.perf_counter()
        if not isinstance(sql, str) or not sql.strip():
            d = succeed(render_error_text(MISSING_SQL))
        else:
            d = self.engine.query_then(sql, use_write_db, render_result_text)

            def failed(failure: Failure) -> str:
                return render_error_text(self._failed(failure, "query")["error_message"])

            d.addErrback(failed)
        return d.addCallback(lambda text: self.stats.count("query", transport, started, text))

    def query_result(
        self, sql: str, use_write_db: bool = False, transport: str = "http"
    ) -> Deferred[Result]:
        """The raw Result (errbacks with QasinoError); for the web UI."""
        started = time.perf_counter()
        d = self.engine.query(sql, use_write_db)
        return d.addBoth(lambda r: self.stats.count("query", transport, started, r))

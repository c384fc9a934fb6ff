"""``stream=1``: a query's rows sent as they are read, in flat memory.

A reader thread reads the rows a slice at a time (:class:`RowStream`),
encodes each slice (CSV or NDJSON, :mod:`qasino.core.shapes`) and hands it
to the reactor, which writes it to the request. Two things bound what is
held in memory at any time:

* at most ``window`` encoded slices are on their way from the thread to the
  reactor (a semaphore the reactor releases as it writes each one);
* the streamer is the request's push producer: when the connection's send
  buffer fills, twisted.web pauses it and the thread waits before handing
  over the next slice, so a slow client slows the query instead of making
  the server buffer the result.

A client that goes away stops the producer: the thread notices at its next
slice (or SQLite's next progress check) and the query ends with
:class:`~qasino.core.errors.QueryCancelled`, logged. The whole stream stays
under the query time limit (the time it waits for the client does not
count; a client that takes nothing for a minute is dropped); an error after
the first bytes were sent cannot
become a 400 any more: an NDJSON stream gets a last line
``{"ok": false, "error": MSG}``, and the connection is closed without the
final chunk, so the client sees an incomplete body rather than a short one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from zope.interface import implementer

from qasino.core import shapes
from qasino.core.errors import QasinoError, QueryCancelled, QueryError
from qasino.store.query import RowStream

log = Logger(namespace="qasino.stream")

SLICE_ROWS = 2000  # rows per slice at most
SLICE_BYTES = 128 * 1024  # and about this many bytes once the row size is known
WINDOW = 4
WAIT_SLICE_S = 0.25
# A client that accepts no data for this long is dropped (its stream would
# otherwise hold a reader thread and a snapshot forever).
STALL_TIMEOUT_S = 60.0
DEFAULT_MAX_STREAM_ROWS = 10_000_000


@dataclass(frozen=True)
class StreamDone:
    rows: int
    cut: bool


@implementer(IPushProducer)
class ResultStreamer:
    """Streams one query's result into one request (see the module doc).

    ``call_in_reactor`` runs a function on the reactor thread
    (``reactor.callFromThread``; tests that run the job on the reactor
    thread itself pass a plain call).
    """

    def __init__(
        self,
        request: server.Request,
        fmt: str,
        call_in_reactor: Callable[..., Any],
        window: int = WINDOW,
        slice_rows: int = SLICE_ROWS,
        stall_timeout_s: float = STALL_TIMEOUT_S,
    ) -> None:
        assert fmt in shapes.STREAM_FORMATS
        self.request = request
        self.fmt = fmt
        self.call_in_reactor = call_in_reactor
        self.slice_rows = slice_rows
        self.stall_timeout_s = stall_timeout_s
        self._credits = threading.Semaphore(window)
        self._may_send = threading.Event()
        self._may_send.set()
        self._cancelled = threading.Event()
        self.started = False  # reactor side: headers sent
        self.gone = False  # reactor side: the client went away
        self.began = time.monotonic()
        self.bytes_sent = 0
        request.notifyFinish().addErrback(self._client_gone)

    # ------------------------------------------------------- reactor side

    def pauseProducing(self) -> None:
        self._may_send.clear()

    def resumeProducing(self) -> None:
        self._may_send.set()

    def stopProducing(self) -> None:
        self._cancel()

    def cancelled(self) -> bool:
        """For SQLite's progress handler (any thread)."""
        return self._cancelled.is_set()

    def _client_gone(self, failure: Failure) -> None:
        self.gone = True
        self._cancel()

    def _cancel(self) -> None:
        self._cancelled.set()
        self._may_send.set()
        self._credits.release()  # wake a waiting thread

    def _start(self, generation_number: Optional[int], head: bytes) -> None:
        if self.gone:
            return
        self.started = True
        request = self.request
        request.setHeader(b"Content-Type", shapes.CONTENT_TYPES[self.fmt])
        if self.fmt == "csv":
            request.setHeader(b"Content-Disposition", b'attachment; filename="qasino_query.csv"')
        if generation_number is not None:
            request.setHeader(b"X-Qasino-Generation", str(generation_number).encode())
        request.registerProducer(self, True)
        self._write(head)

    def _write(self, data: bytes) -> None:
        try:
            if data and not self.gone:
                self.request.write(data)
                self.bytes_sent += len(data)
        finally:
            self._credits.release()

    def finish(self, result: StreamDone | Failure, sql: str) -> None:
        """The thread's job ended (reactor side): end the response."""
        request = self.request
        elapsed = time.monotonic() - self.began
        if isinstance(result, StreamDone):
            log.info(
                "streamed {rows} rows ({nbytes} bytes) as {fmt} in {elapsed:.2f}s{cut}",
                rows=result.rows,
                nbytes=self.bytes_sent,
                fmt=self.fmt,
                elapsed=elapsed,
                cut=" (cut at --max-stream-rows)" if result.cut else "",
            )
            if not self.gone:
                request.unregisterProducer()
                request.finish()
            return
        error = result.value
        if isinstance(error, QueryCancelled) or self.gone:
            log.info(
                "stream cancelled: the client went away after {nbytes} bytes "
                "({elapsed:.2f}s); query stopped: {sql}",
                nbytes=self.bytes_sent,
                elapsed=elapsed,
                sql=sql[:200],
            )
            return
        if not isinstance(error, QasinoError):
            log.failure("stream failed", result)
            message = "Internal error"
        else:
            message = error.message
            log.info("stream failed: {message}", message=message)
        if not request.startedWriting:
            if self.started:
                request.unregisterProducer()
            request.setResponseCode(500 if message == "Internal error" else 400)
            body = shapes.error_body(message)
            request.setHeader(b"Content-Type", shapes.ERROR_CONTENT_TYPE)
            request.setHeader(b"Content-Length", str(len(body)).encode())
            request.responseHeaders.removeHeader(b"Content-Disposition")
            request.write(body)
            request.finish()
            return
        # Headers and rows are out: say so (NDJSON) and cut the body short.
        if self.fmt == "ndjson":
            request.write(shapes.dumps({"ok": False, "error": message}, newline=True))
        request.unregisterProducer()
        transport = request.channel.transport if request.channel is not None else None
        if transport is not None:
            transport.loseConnection()

    # -------------------------------------------------------- thread side

    def consume(self, stream: RowStream) -> StreamDone:
        """Read and hand over every slice (on the reader thread)."""
        head = shapes.csv_header(stream.column_names) if self.fmt == "csv" else b""
        self._hand_over(stream, self._start, stream.generation_number, head)
        names = stream.column_names
        size = min(self.slice_rows, 64)  # a first small slice measures the rows
        while rows := stream.next_chunk(size):
            if self.fmt == "csv":
                data = shapes.csv_rows(rows)
            else:
                data = shapes.ndjson_rows(names, rows)
            per_row = max(1, len(data) // len(rows))
            size = max(1, min(self.slice_rows, SLICE_BYTES // per_row))
            self._hand_over(stream, self._write, data)
        return StreamDone(stream.nr_rows, stream.cut)

    def _hand_over(self, stream: RowStream, fn: Callable[..., None], *args: Any) -> None:
        """Wait for room (a credit, and not paused), then run ``fn`` on the
        reactor. The wait does not count against the time limit, but a
        client that takes nothing for ``stall_timeout_s`` is given up on."""
        started = time.monotonic()
        while not self._credits.acquire(timeout=self._wait_s(stream, started)):
            pass
        while not self._may_send.wait(self._wait_s(stream, started)):
            pass
        self._check(stream)
        stream.waited(time.monotonic() - started)
        self.call_in_reactor(fn, *args)

    def _wait_s(self, stream: RowStream, started: float) -> float:
        self._check(stream)
        if time.monotonic() - started > self.stall_timeout_s:
            raise QueryError(
                f"the client read nothing for {self.stall_timeout_s:g} seconds; stream stopped"
            )
        return WAIT_SLICE_S

    def _check(self, stream: RowStream) -> None:
        if self._cancelled.is_set():
            raise QueryCancelled("the client went away; query stopped")
        if stream.time_left() < 0:
            raise stream.timeout_error()


def run_stream(
    engine: Any,
    request: server.Request,
    sql: str,
    fmt: str,
    use_write_db: bool,
    max_rows: int,
    call_in_reactor: Callable[..., Any],
    on_done: Callable[[bool], None] = lambda ok: None,
) -> Deferred[None]:
    """Stream ``sql``'s rows into ``request``; fires once the request is
    ended (never errbacks). ``on_done(ok)`` is called then (for metrics)."""
    streamer = ResultStreamer(request, fmt, call_in_reactor)
    d = engine.stream(sql, use_write_db, max_rows, streamer.consume, streamer.cancelled)

    def done(result: StreamDone | Failure) -> StreamDone | Failure:
        on_done(isinstance(result, StreamDone))
        return result

    d.addBoth(done)
    d.addBoth(streamer.finish, sql)
    d.addErrback(lambda f: log.failure("could not end a stream", f))
    return d

"""The streaming producer's thread side: waiting for room, giving up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.logger import globalLogPublisher
from twisted.web.test.requesthelper import DummyRequest

from qasino.core.errors import QueryCancelled, QueryError
from qasino.frontends.stream import ResultStreamer
from qasino.store.query import RowStream


@pytest.fixture
def logged_events() -> Iterator[list[dict[str, object]]]:
    events: list[dict[str, object]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def rows_stream(timeout_s: float = 5.0) -> RowStream:
    return RowStream(("a",), iter([(1,), (2,)]), 1e9, lambda: 0.0, timeout_s, 100)


def test_a_paused_request_that_never_resumes_is_given_up_after_the_stall_timeout() -> None:
    streamer = ResultStreamer(
        DummyRequest([b""]), "csv", lambda fn, *a: fn(*a), stall_timeout_s=0.01
    )
    streamer.pauseProducing()  # the connection's buffer is full and stays so
    with pytest.raises(QueryError, match="read nothing for 0.01 seconds"):
        streamer.consume(rows_stream())


def test_a_client_gone_while_paused_stops_the_stream() -> None:
    streamer = ResultStreamer(DummyRequest([b""]), "ndjson", lambda fn, *a: fn(*a))
    streamer.pauseProducing()
    streamer.stopProducing()  # the connection was lost
    with pytest.raises(QueryCancelled):
        streamer.consume(rows_stream())


def test_handing_over_respects_the_window_and_resumes() -> None:
    written: list[object] = []
    request = DummyRequest([b""])
    streamer = ResultStreamer(request, "csv", lambda fn, *a: written.append((fn, a)), window=2)
    stream = rows_stream()
    streamer._hand_over(stream, lambda: None)
    streamer._hand_over(stream, lambda: None)
    streamer.stall_timeout_s = 0.01
    with pytest.raises(QueryError, match="read nothing"):  # two slices out, none written
        streamer._hand_over(stream, lambda: None)
    assert len(written) == 2


class ProducerRequest(DummyRequest):
    """A DummyRequest that takes a push producer as a real request does."""

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None


def test_a_stream_cut_at_max_rows_ends_cleanly_and_logs_the_cut(
    logged_events: list[dict[str, object]],
) -> None:
    request = ProducerRequest([b""])
    streamer = ResultStreamer(request, "csv", lambda fn, *a: fn(*a))
    rows = RowStream(("a", "b"), iter([(i, None) for i in range(5)]), 1e9, lambda: 0.0, 5.0, 3)
    done = streamer.consume(rows)
    assert (done.rows, done.cut) == (3, True)
    streamer.finish(done, "SELECT ...")
    assert request.finished == 1 and request.producer is None
    assert b"".join(request.written) == b"a,b\r\n0,\r\n1,\r\n2,\r\n"
    assert any("cut at --max-stream-rows" in str(e.get("cut")) for e in logged_events)

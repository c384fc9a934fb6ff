"""HTTP front end (PROTOCOL.md "HTTP"): RequestResource and the 413 limit.

RequestResource is driven with twisted.web's DummyRequest; the body limit
with the real Site built by ``make_site``, fed raw bytes over a
StringTransport. No reactor runs: the store answers through SyncRunner, or
through ManualRunner when a test needs the reply to come later.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.test.requesthelper import DummyRequest

from qasino.engine import Engine
from qasino.frontends.http import LimitedRequest, RequestResource, make_site
from qasino.ops import Dispatcher
from qasino.store.store import Store
from tests.helpers import IDENTITY, ManualRunner

T1 = {
    "tablename": "t1",
    "column_names": ["a", "name"],
    "column_types": ["int", "text"],
    "rows": [[1, "alpha"], [22, None]],
}


@pytest.fixture
def resource(dispatcher: Dispatcher) -> RequestResource:
    return RequestResource(dispatcher)


def make_request(method: bytes, args: dict[str, str], body: bytes = b"") -> DummyRequest:
    request = DummyRequest([])
    request.method = method
    request.args = {k.encode(): [v.encode()] for k, v in args.items()}
    request.content = io.BytesIO(body)
    return request


def render(resource: RequestResource, request: DummyRequest) -> bytes:
    """Render and return the whole body; the request must be finished."""
    request.render(resource)
    assert request.finished == 1
    return b"".join(request.written)


def header(request: DummyRequest, name: bytes) -> bytes:
    values = request.responseHeaders.getRawHeaders(name)
    assert values is not None and len(values) == 1, values
    return values[0]


def json_reply(resource: RequestResource, request: DummyRequest) -> Any:
    body = render(resource, request)
    assert header(request, b"content-type") == b"application/json"
    assert header(request, b"content-length") == str(len(body)).encode()
    return json.loads(body)


def error(message: str) -> dict[str, Any]:
    return {"response_op": "error", "identity": IDENTITY, "error_message": message}


OK = {"identity": IDENTITY, "response_op": "ok"}


def post_table(resource: RequestResource, table: dict[str, Any], identity: str = "h1") -> Any:
    body = json.dumps({"op": "add_table_data", "identity": identity, "table": table}).encode()
    return json_reply(resource, make_request(b"POST", {"op": "add_table_data"}, body))


def rotate(engine: Engine, clock: Clock) -> None:
    clock.advance(30)
    done: list[object] = []
    engine.rotate().addBoth(done.append)
    assert done and not isinstance(done[0], Failure), done


# ---------------------------------------------------------------- GET


def test_get_query_replies_with_the_json_result_shape(resource: RequestResource) -> None:
    reply = json_reply(
        resource, make_request(b"GET", {"op": "query", "sql": "SELECT 1 AS one, 'x' AS two"})
    )
    assert reply == {
        "response_op": "result_table",
        "identity": IDENTITY,
        "table": {"column_names": ["one", "two"], "rows": [["1", "x"]]},
        "max_widths": {"0": 3, "1": 3},
    }


def test_get_query_format_text_replies_text_plain_rendering(resource: RequestResource) -> None:
    request = make_request(
        b"GET", {"op": "query", "format": "text", "sql": "SELECT 1382105093 AS generation_number"}
    )
    body = render(resource, request)
    assert header(request, b"content-type") == b"text/plain; charset=utf-8"
    assert header(request, b"content-length") == str(len(body)).encode()
    assert body == (
        b"generation_number\n"
        b"=================\n"
        b"       1382105093\n"
        b"1 rows returned\n"
    )  # fmt: skip


def test_get_query_format_text_of_a_sql_error_is_sql_error_line(
    resource: RequestResource,
) -> None:
    request = make_request(b"GET", {"op": "query", "format": "text", "sql": "SELECT * FROM nope"})
    body = render(resource, request)
    assert header(request, b"content-type") == b"text/plain; charset=utf-8"
    assert body.startswith(b"SQL error: ") and body.endswith(b"\n")
    assert b"nope" in body


def test_get_query_format_text_without_sql_is_sql_error(resource: RequestResource) -> None:
    body = render(resource, make_request(b"GET", {"op": "query", "format": "text"}))
    assert body == b"SQL error: Must specify 'sql' param\n"


def test_get_use_write_db_queries_the_generation_being_written(
    resource: RequestResource,
) -> None:
    assert post_table(resource, T1) == OK
    snapshot = json_reply(
        resource, make_request(b"GET", {"op": "query", "sql": "SELECT a FROM t1"})
    )
    assert snapshot["response_op"] == "error"
    writer = json_reply(
        resource,
        make_request(
            b"GET", {"op": "query", "sql": "SELECT a FROM t1 ORDER BY a", "use_write_db": "true"}
        ),
    )
    assert writer["table"]["rows"] == [["1"], ["22"]]


def test_get_without_op_is_no_op_specified(resource: RequestResource) -> None:
    assert json_reply(resource, make_request(b"GET", {})) == error("No op specified")


def test_get_unknown_op_is_unrecognized_operation(resource: RequestResource) -> None:
    assert json_reply(resource, make_request(b"GET", {"op": "bogus"})) == error(
        "Unrecognized operation"
    )


def test_get_query_without_sql_is_must_specify_sql(resource: RequestResource) -> None:
    assert json_reply(resource, make_request(b"GET", {"op": "query"})) == error(
        "Must specify 'sql' param"
    )


def test_get_name_value_update_upserts_row_keyed_by_identity(resource: RequestResource) -> None:
    args = {"op": "name_value_update", "name": "nv.temp", "value": "42", "identity": "h1"}
    assert json_reply(resource, make_request(b"GET", args)) == OK
    reply = json_reply(
        resource,
        make_request(
            b"GET", {"op": "query", "sql": "SELECT identity, temp FROM nv", "use_write_db": "1"}
        ),
    )
    assert reply["table"]["rows"] == [["h1", "42"]]


def test_get_name_value_update_without_identity_is_stored_as_unknown(
    resource: RequestResource,
) -> None:
    """As the original server did."""
    reply = json_reply(
        resource, make_request(b"GET", {"op": "name_value_update", "name": "nv.t", "value": "01"})
    )
    assert reply == OK
    reply = json_reply(
        resource,
        make_request(
            b"GET", {"op": "query", "sql": "SELECT identity, t FROM nv", "use_write_db": "1"}
        ),
    )
    assert reply["table"]["rows"] == [["unknown", "01"]]


# ---------------------------------------------------------------- POST


def test_post_add_table_data_replies_ok_and_stores_the_rows(resource: RequestResource) -> None:
    assert post_table(resource, T1) == OK
    body = json.dumps({"sql": "SELECT a, name FROM t1 ORDER BY a", "use_write_db": True}).encode()
    reply = json_reply(resource, make_request(b"POST", {"op": "query"}, body))
    assert reply["table"]["rows"] == [["1", "alpha"], ["22", ""]]


def test_post_duplicate_publish_gets_error_reply(resource: RequestResource) -> None:
    assert post_table(resource, T1) == OK
    reply = post_table(resource, T1)
    assert reply["response_op"] == "error"
    assert "already published" in reply["error_message"]


def test_post_malformed_table_is_invalid_input_format(resource: RequestResource) -> None:
    reply = post_table(resource, {**T1, "tablename": "1bad"})
    assert reply["response_op"] == "error"
    assert reply["error_message"].startswith("Invalid input format: ")


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe\x00", b'{"op": "query"'])
def test_post_body_that_is_not_json_is_could_not_parse(
    resource: RequestResource, body: bytes
) -> None:
    reply = json_reply(resource, make_request(b"POST", {"op": "add_table_data"}, body))
    assert reply["response_op"] == "error"
    assert reply["identity"] == IDENTITY
    assert reply["error_message"].startswith("Could not parse POST body: ")


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_post_json_body_that_is_not_an_object_is_could_not_parse(
    resource: RequestResource, body: bytes
) -> None:
    reply = json_reply(resource, make_request(b"POST", {"op": "query"}, body))
    assert reply == error("Could not parse POST body: not a JSON object")


def test_post_unparsable_publish_counts_as_update_error(
    resource: RequestResource, engine: Engine, clock: Clock
) -> None:
    json_reply(resource, make_request(b"POST", {"op": "add_table_data"}, b"{oops"))
    rotate(engine, clock)
    reply = json_reply(
        resource,
        make_request(
            b"GET",
            {
                "op": "query",
                "sql": "SELECT updates_received, update_errors FROM qasino_server_update_stats",
            },
        ),
    )
    assert reply["table"]["rows"] == [["1", "1"]]


def test_post_query_with_sql_in_body(resource: RequestResource) -> None:
    reply = json_reply(
        resource, make_request(b"POST", {"op": "query"}, b'{"sql": "SELECT 7 AS seven"}')
    )
    assert reply["table"] == {"column_names": ["seven"], "rows": [["7"]]}


def test_post_query_with_sql_in_query_string_and_empty_body(resource: RequestResource) -> None:
    reply = json_reply(resource, make_request(b"POST", {"op": "query", "sql": "SELECT 7 AS seven"}))
    assert reply["table"]["rows"] == [["7"]]


def test_post_op_in_body_is_used_when_query_string_has_none(resource: RequestResource) -> None:
    reply = json_reply(
        resource, make_request(b"POST", {}, b'{"op": "query", "sql": "SELECT 7 AS seven"}')
    )
    assert reply["table"]["rows"] == [["7"]]


def test_post_query_format_text_replies_text_plain(resource: RequestResource) -> None:
    request = make_request(b"POST", {"op": "query", "format": "text"}, b'{"sql": "SELECT 7 AS n"}')
    body = render(resource, request)
    assert header(request, b"content-type") == b"text/plain; charset=utf-8"
    assert body == b"n\n=\n7\n1 rows returned\n"


def test_post_without_op_is_no_op_specified(resource: RequestResource) -> None:
    assert json_reply(resource, make_request(b"POST", {}, b"{}")) == error("No op specified")


def test_post_get_table_list_lists_the_served_snapshot(
    resource: RequestResource, engine: Engine, clock: Clock
) -> None:
    assert post_table(resource, T1) == OK
    rotate(engine, clock)
    reply = json_reply(resource, make_request(b"POST", {"op": "get_table_list"}, b"{}"))
    assert reply["response_op"] == "tables_list"
    assert reply["identity"] == IDENTITY
    assert reply["tables"]["t1"] == {"nr_rows": 2, "updates": 1, "last_update_epoch": 1000.0}


def test_post_csv_publish_with_identity_in_query_string(resource: RequestResource) -> None:
    csv = b"1\nt3\na,b\nint,text\nA,B\n1,x\n"
    reply = json_reply(
        resource, make_request(b"POST", {"op": "add_csv_table_data", "identity": "h3"}, csv)
    )
    assert reply == OK
    rows = json_reply(
        resource,
        make_request(b"GET", {"op": "query", "sql": "SELECT a, b FROM t3", "use_write_db": "1"}),
    )
    assert rows["table"]["rows"] == [["1", "x"]]


def test_post_bad_csv_is_invalid_input_format(resource: RequestResource) -> None:
    reply = json_reply(
        resource, make_request(b"POST", {"op": "add_csv_table_data"}, b"1\nt3\na\nint\nA\n1\n")
    )
    assert reply["response_op"] == "error"
    assert reply["error_message"].startswith("Invalid input format: ")


# ---------------------------------------------------------------- client gone


def test_reply_is_not_written_to_a_request_whose_client_went_away(
    slow_dispatcher: Dispatcher,
    manual_runner: ManualRunner,
    logged_failures: list[dict[str, Any]],
) -> None:
    resource = RequestResource(slow_dispatcher)
    request = make_request(b"GET", {"op": "query", "sql": "SELECT 1"})
    assert resource.render(request) is server.NOT_DONE_YET
    assert manual_runner.pending, "the query should still be running"
    request.processingFailed(Failure(ConnectionDone()))
    manual_runner.run_pending()
    assert request.written == []
    assert request.finished == 0
    assert logged_failures == []


def test_slow_reply_is_written_when_the_client_stays(
    slow_dispatcher: Dispatcher, manual_runner: ManualRunner
) -> None:
    resource = RequestResource(slow_dispatcher)
    request = make_request(b"GET", {"op": "query", "sql": "SELECT 1 AS a"})
    assert resource.render(request) is server.NOT_DONE_YET
    assert request.written == []
    manual_runner.run_pending()
    assert request.finished == 1
    assert json.loads(b"".join(request.written))["table"]["rows"] == [["1"]]


# ---------------------------------------------------------------- the real Site


class RecordingRequest(LimitedRequest):
    """LimitedRequest that remembers its instances, to look at what it buffered."""

    made: list[RecordingRequest] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        RecordingRequest.made.append(self)


@pytest.fixture
def site(dispatcher: Dispatcher) -> server.Site:
    site = make_site(dispatcher, max_body_bytes=100)
    site.reactor = Clock()  # the channel's timeouts must not go to the global reactor
    RecordingRequest.made = []
    site.requestFactory = RecordingRequest
    return site


def connect(site: server.Site) -> tuple[Any, StringTransport]:
    protocol = site.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def post_head(length: int, extra: bytes = b"") -> bytes:
    return (
        b"POST /request?op=query HTTP/1.1\r\nHost: qasino\r\n"
        b"Content-Type: application/json\r\n"
        + extra
        + b"Content-Length: "
        + str(length).encode()
        + b"\r\n\r\n"
    )


def status_line(data: bytes) -> bytes:
    return data.split(b"\r\n", 1)[0]


def body_of(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[1]


def test_make_site_uses_limited_request(dispatcher: Dispatcher) -> None:
    site = make_site(dispatcher, max_body_bytes=100)
    assert site.requestFactory is LimitedRequest


def test_content_length_over_limit_gets_413_and_disconnect_without_buffering(
    site: server.Site, store: Store
) -> None:
    protocol, transport = connect(site)
    protocol.dataReceived(post_head(1000))
    response = transport.value()
    assert status_line(response) == b"HTTP/1.1 413 Request Entity Too Large"
    assert transport.disconnecting
    reply = json.loads(body_of(response))
    assert reply == error("Request body too large (limit 100 bytes)")

    protocol.dataReceived(b'{"sql": "SELECT 1"}' + b" " * 981)  # the body arrives anyway
    assert transport.value() == response, "nothing more may be written"
    (request,) = RecordingRequest.made
    assert request.content.getvalue() == b""
    assert store.counters.peek()["sql_received"] == 0, "the request must not be dispatched"
    protocol.connectionLost(Failure(ConnectionDone()))


def test_chunked_body_growing_over_limit_gets_413_and_disconnect(
    site: server.Site, store: Store
) -> None:
    protocol, transport = connect(site)
    protocol.dataReceived(
        b"POST /request?op=query HTTP/1.1\r\nHost: qasino\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"28\r\n" + b" " * 40 + b"\r\n"
    protocol.dataReceived(chunk + chunk)  # 80 bytes: under the limit
    assert transport.value() == b""
    assert not transport.disconnecting
    protocol.dataReceived(chunk)  # 120 bytes
    response = transport.value()
    assert status_line(response) == b"HTTP/1.1 413 Request Entity Too Large"
    assert transport.disconnecting
    protocol.dataReceived(chunk + b"0\r\n\r\n")
    assert transport.value() == response
    (request,) = RecordingRequest.made
    assert len(request.content.getvalue()) <= 100
    assert store.counters.peek()["sql_received"] == 0
    protocol.connectionLost(Failure(ConnectionDone()))


def test_body_at_the_limit_is_served_normally(site: server.Site) -> None:
    body = b'{"sql": "SELECT 5 AS five"}'
    body = body + b" " * (100 - len(body))
    assert len(body) == 100
    protocol, transport = connect(site)
    protocol.dataReceived(post_head(len(body)) + body)
    response = transport.value()
    assert status_line(response) == b"HTTP/1.1 200 OK"
    assert not transport.disconnecting
    reply = json.loads(body_of(response))
    assert reply["table"] == {"column_names": ["five"], "rows": [["5"]]}


def test_chunked_body_under_the_limit_is_served_normally(site: server.Site) -> None:
    body = b'{"sql": "SELECT 5 AS five"}'
    protocol, transport = connect(site)
    protocol.dataReceived(
        b"POST /request?op=query HTTP/1.1\r\nHost: qasino\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n"
    )
    response = transport.value()
    assert status_line(response) == b"HTTP/1.1 200 OK"
    assert json.loads(body_of(response))["table"]["rows"] == [["5"]]


def test_refused_body_with_expect_continue_gets_only_the_413(site: server.Site) -> None:
    protocol, transport = connect(site)
    protocol.dataReceived(post_head(1000, b"Expect: 100-continue\r\n"))
    response = transport.value()
    assert status_line(response) == b"HTTP/1.1 413 Request Entity Too Large"
    assert b"100 Continue" not in response


def test_get_on_the_real_site_is_served(site: server.Site) -> None:
    protocol, transport = connect(site)
    protocol.dataReceived(
        b"GET /request?op=query&format=text&sql=SELECT+1+AS+a HTTP/1.1\r\nHost: qasino\r\n\r\n"
    )
    response = transport.value()
    assert status_line(response) == b"HTTP/1.1 200 OK"
    assert b"Content-Type: text/plain; charset=utf-8\r\n" in response
    assert body_of(response) == b"a\n=\n1\n1 rows returned\n"


def test_client_that_disconnects_before_the_reply_causes_no_error(
    dispatcher: Dispatcher,
    slow_dispatcher: Dispatcher,
    manual_runner: ManualRunner,
    logged_failures: list[dict[str, Any]],
) -> None:
    site = make_site(slow_dispatcher, max_body_bytes=100)
    site.reactor = Clock()
    protocol, transport = connect(site)
    protocol.dataReceived(b"GET /request?op=query&sql=SELECT+1 HTTP/1.1\r\nHost: qasino\r\n\r\n")
    assert manual_runner.pending
    protocol.connectionLost(Failure(ConnectionDone()))
    manual_runner.run_pending()
    assert transport.value() == b""
    assert logged_failures == []


# ---------------------------------------------------------------- _reply outcomes


@pytest.mark.parametrize("already", [True, False], ids=["fired", "later"])
@pytest.mark.parametrize(
    "outcome",
    [lambda: Failure(RuntimeError("boom")), lambda: {"bad": object()}],
    ids=["failure", "unencodable"],
)
def test_a_reply_that_fails_is_logged_and_answered_500(
    resource: RequestResource,
    logged_failures: list[dict[str, Any]],
    already: bool,
    outcome: Any,
) -> None:
    request = make_request(b"POST", {"op": "add_table_data"})
    d: Deferred[Any] = Deferred()
    if already:
        d.callback(outcome())
    returned = resource._reply(request, d)
    if already:
        assert returned is not server.NOT_DONE_YET
        request.write(returned)
        request.finish()
    else:
        assert returned is server.NOT_DONE_YET and request.written == []
        d.callback(outcome())
    assert request.responseCode == 500
    assert request.finished == 1
    assert json.loads(b"".join(request.written)) == error("Internal error")
    assert len(logged_failures) == 1


def test_a_reply_already_fired_is_returned_at_once(resource: RequestResource) -> None:
    request = make_request(b"POST", {"op": "add_table_data"})
    assert resource._reply(request, succeed(OK)) == json.dumps(OK, separators=(",", ":")).encode()
    assert header(request, b"content-type") == b"application/json"


def test_a_failure_after_the_client_went_away_is_logged_not_written(
    resource: RequestResource, logged_failures: list[dict[str, Any]]
) -> None:
    request = make_request(b"POST", {"op": "add_table_data"})
    d: Deferred[Any] = Deferred()
    assert resource._reply(request, d) is server.NOT_DONE_YET
    request.processingFailed(Failure(ConnectionDone()))
    d.errback(Failure(RuntimeError("boom")))
    assert request.written == [] and request.finished == 0
    assert len(logged_failures) == 1

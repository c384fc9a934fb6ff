"""ZeroMQ front ends (PROTOCOL.md "ZeroMQ REP", "ZeroMQ PUB") without sockets.

RPCConnection is built without its __init__ (which would open a socket on a
reactor); its ``send`` is replaced by a recorder, so the real txzmq ``reply``
still builds the envelope. The PUB side gets a fake connection.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from qasino.engine import Engine
from qasino.frontends.zmq import GENSIG_TAG, RPCConnection, ZmqServices, zmq_address
from qasino.ops import Dispatcher
from qasino.store.store import Store
from tests.helpers import IDENTITY, ManualRunner

ROUTING = b"\x00peer-1"
MSG_ID = b"msg-0001"
T1 = {
    "tablename": "t1",
    "column_names": ["a", "name"],
    "column_types": ["int", "text"],
    "rows": [[1, "alpha"], [22, None]],
}


class Connection:
    """An RPCConnection with no socket behind it, and what it sent."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        conn = RPCConnection.__new__(RPCConnection)
        conn.dispatcher = dispatcher
        conn._inflight = {}
        conn.socket = object()  # any non-None value: "open"
        self.sent: list[list[bytes]] = []
        conn.send = self.sent.append  # type: ignore[method-assign]
        self.conn = conn

    def request(self, *body: bytes, routing: bytes = ROUTING, msg_id: bytes = MSG_ID) -> None:
        self.conn.messageReceived([routing, msg_id, b"", *body])

    def reply_frames(self) -> list[bytes]:
        """The body frames of the one reply sent, after checking its envelope."""
        assert len(self.sent) == 1, self.sent
        message = self.sent[0]
        assert message[:3] == [ROUTING, MSG_ID, b""]
        return message[3:]

    def reply(self) -> Any:
        frames = self.reply_frames()
        assert len(frames) == 1, frames
        return json.loads(frames[0])


@pytest.fixture
def connection(dispatcher: Dispatcher) -> Connection:
    return Connection(dispatcher)


def error(message: str) -> dict[str, Any]:
    return {"response_op": "error", "identity": IDENTITY, "error_message": message}


# ---------------------------------------------------------------- REP


def test_query_gets_one_result_frame_in_the_request_envelope(connection: Connection) -> None:
    connection.request(json.dumps({"op": "query", "sql": "SELECT 1 AS one"}).encode())
    assert connection.reply() == {
        "response_op": "result_table",
        "identity": IDENTITY,
        "table": {"column_names": ["one"], "rows": [["1"]]},
        "max_widths": {"0": 3},
    }
    assert connection.conn._inflight == {}, "routing info must not leak"


def test_reply_goes_back_through_every_routing_frame(connection: Connection) -> None:
    connection.conn.messageReceived([b"hop1", b"hop2", MSG_ID, b"", b'{"op": "nope"}'])
    (message,) = connection.sent
    assert message[:4] == [b"hop1", b"hop2", MSG_ID, b""]
    assert len(message) == 5
    assert json.loads(message[4]) == error("Unrecognized op 'nope'")


def test_plain_req_client_envelope_without_request_id_is_answered(
    connection: Connection,
) -> None:
    """A zmq REQ socket sends [routing, '', body]: the routing id serves as request id."""
    connection.conn.messageReceived([ROUTING, b"", b'{"op": "query", "sql": "SELECT 2 AS b"}'])
    (message,) = connection.sent
    assert message[:2] == [ROUTING, b""]
    assert json.loads(message[2])["table"]["rows"] == [["2"]]


def test_add_table_data_replies_ok(connection: Connection) -> None:
    body = {"op": "add_table_data", "identity": "h1", "table": T1}
    connection.request(json.dumps(body).encode())
    assert connection.reply() == {"identity": IDENTITY, "response_op": "ok"}


def test_query_with_use_write_db_sees_the_generation_being_written(
    connection: Connection,
) -> None:
    connection.request(
        json.dumps({"op": "add_table_data", "identity": "h1", "table": T1}).encode(),
        msg_id=b"m1",
    )
    connection.request(
        json.dumps(
            {"op": "query", "sql": "SELECT a FROM t1 ORDER BY a", "use_write_db": True}
        ).encode(),
        msg_id=b"m2",
    )
    assert [m[1] for m in connection.sent] == [b"m1", b"m2"]
    assert json.loads(connection.sent[1][3])["table"]["rows"] == [["1"], ["22"]]


@pytest.mark.parametrize("body", [b"not json", b"{", b"\xff\xfe\x00", b"{'op': 'query'}"])
def test_body_that_is_not_json_is_failed_to_parse(connection: Connection, body: bytes) -> None:
    connection.request(body)
    reply = connection.reply()
    assert set(reply) == {"response_op", "identity", "error_message"}
    assert reply["response_op"] == "error"
    assert reply["error_message"].startswith("Failed to parse JSON message: ")


def test_empty_body_frame_is_failed_to_parse(connection: Connection) -> None:
    connection.request(b"")
    reply = connection.reply()
    assert reply["response_op"] == "error"
    assert reply["error_message"].startswith("Failed to parse JSON message: ")


def test_no_body_frame_is_failed_to_parse(connection: Connection) -> None:
    connection.request()
    assert connection.reply() == error("Failed to parse JSON message: expected one frame, got 0")


def test_several_body_frames_are_failed_to_parse(connection: Connection) -> None:
    connection.request(b'{"op": "query", "sql": "SELECT 1"}', b"{}")
    assert connection.reply() == error("Failed to parse JSON message: expected one frame, got 2")


@pytest.mark.parametrize("body", [b"[]", b'[{"op": "query"}]', b'"query"', b"42", b"null"])
def test_json_that_is_not_an_object_gets_an_error_reply(
    connection: Connection, body: bytes
) -> None:
    connection.request(body)
    assert connection.reply() == error("Request must be a JSON object")


def test_unknown_op_names_the_op(connection: Connection) -> None:
    connection.request(b'{"op": "frobnicate"}')
    assert connection.reply() == error("Unrecognized op 'frobnicate'")


def test_missing_op_is_no_op_specified(connection: Connection) -> None:
    connection.request(b'{"sql": "SELECT 1"}')
    assert connection.reply() == error("No op specified")


def test_query_without_sql_is_must_specify_sql(connection: Connection) -> None:
    connection.request(b'{"op": "query"}')
    assert connection.reply() == error("Must specify 'sql' param")


def test_get_table_list_gives_meta_frame_then_tables_frame(
    connection: Connection, engine: Engine, clock: Clock
) -> None:
    connection.request(
        json.dumps({"op": "add_table_data", "identity": "h1", "table": T1}).encode(),
        msg_id=b"m0",
    )
    connection.sent.clear()
    clock.advance(30)
    rotated: list[object] = []
    engine.rotate().addBoth(rotated.append)
    assert rotated and not isinstance(rotated[0], Failure), rotated
    connection.request(b'{"op": "get_table_list"}')
    meta, tables = connection.reply_frames()
    assert json.loads(meta) == {"response_op": "tables_list", "identity": IDENTITY}
    assert json.loads(tables)["t1"] == {"nr_rows": 2, "updates": 1, "last_update_epoch": 1000.0}


@pytest.mark.parametrize(
    "message",
    [
        [ROUTING, MSG_ID, b'{"op": "query"}'],
        [b'{"op": "query"}'],
        [b"", b'{"op": "query"}'],
        [],
    ],
)
def test_message_without_a_usable_envelope_is_dropped(
    connection: Connection, message: list[bytes], logged_failures: list[dict[str, Any]]
) -> None:
    connection.conn.messageReceived(message)
    assert connection.sent == []
    assert connection.conn._inflight == {}
    assert logged_failures == []


def test_reply_after_the_socket_closed_is_dropped(
    store: Store, clock: Clock, logged_failures: list[dict[str, Any]]
) -> None:
    runner = ManualRunner()
    connection = Connection(Dispatcher(Engine(store, runner, clock, IDENTITY)))
    connection.request(b'{"op": "query", "sql": "SELECT 1"}')
    assert runner.pending and connection.sent == []
    connection.conn.socket = None  # the service stopped while the query ran
    runner.run_pending()
    assert connection.sent == []
    assert connection.conn._inflight == {}
    assert logged_failures == []


def test_send_with_no_socket_does_not_raise(connection: Connection) -> None:
    connection.conn.socket = None
    key = ((ROUTING,), MSG_ID)
    connection.conn._inflight[key] = 1
    connection.conn._send(key, {"response_op": "ok"})
    connection.conn._send(((ROUTING,), b"unknown-id"), b"{}")
    assert connection.sent == []
    assert connection.conn._inflight == {}


def test_failing_send_is_logged_not_raised(
    connection: Connection, logged_failures: list[dict[str, Any]]
) -> None:
    def broken(message: list[bytes]) -> None:
        raise OSError("socket gone")

    connection.conn.send = broken  # type: ignore[method-assign]
    connection.request(b'{"op": "query", "sql": "SELECT 1"}')
    assert len(logged_failures) == 1
    assert connection.conn._inflight == {}


def test_slow_replies_may_come_back_out_of_order(store: Store, clock: Clock) -> None:
    runner = ManualRunner()
    connection = Connection(Dispatcher(Engine(store, runner, clock, IDENTITY)))
    connection.request(b'{"op": "query", "sql": "SELECT 1 AS a"}', msg_id=b"slow")
    connection.request(b'{"op": "nope"}', msg_id=b"fast")
    assert [m[1] for m in connection.sent] == [b"fast"]
    runner.run_pending()
    assert [m[1] for m in connection.sent] == [b"fast", b"slow"]
    assert json.loads(connection.sent[1][3])["table"]["rows"] == [["1"]]


# ---------------------------------------------------------------- PUB


class FakePub:
    def __init__(self) -> None:
        self.socket: object = object()
        self.published: list[tuple[bytes, bytes]] = []

    def publish(self, message: bytes, tag: bytes = b"") -> None:
        self.published.append((message, tag))


@pytest.fixture
def services(dispatcher: Dispatcher) -> ZmqServices:
    return ZmqServices(dispatcher, reactor=None, bind="127.0.0.1", rpc_port=None, pub_port=None)


def test_generation_signal_is_tagged_gensig_with_exact_json_keys(services: ZmqServices) -> None:
    pub = FakePub()
    services.pub = pub  # type: ignore[assignment]
    services.publish_generation(1382105093, 30.0)
    ((message, tag),) = pub.published
    assert tag == b"GENSIG" == GENSIG_TAG
    assert (tag + b"\x00" + message).startswith(b"GENSIG\x00{")
    signal = json.loads(message)
    assert signal == {
        "op": "generation_signal",
        "identity": IDENTITY,
        "generation_number": 1382105093,
        "generation_duration_s": 30,
    }
    assert type(signal["generation_duration_s"]) is int


def test_generation_signal_keeps_a_fractional_duration(services: ZmqServices) -> None:
    pub = FakePub()
    services.pub = pub  # type: ignore[assignment]
    services.publish_generation(1000, 2.5)
    assert json.loads(pub.published[0][0])["generation_duration_s"] == 2.5


def test_generation_signal_without_pub_socket_is_skipped(services: ZmqServices) -> None:
    services.publish_generation(1000, 30)  # no pub at all
    pub = FakePub()
    pub.socket = None
    services.pub = pub  # type: ignore[assignment]
    services.publish_generation(1000, 30)
    assert pub.published == []


@pytest.mark.parametrize(
    ("host", "port", "address"),
    [("127.0.0.1", 15598, "tcp://127.0.0.1:15598"), ("0.0.0.0", 0, "tcp://0.0.0.0:*")],
)
def test_zmq_address_uses_star_for_port_zero(host: str, port: int, address: str) -> None:
    assert zmq_address(host, port) == address


def test_pipelined_requests_reusing_one_id_each_get_a_reply(store: Store, clock: Clock) -> None:
    """A raw DEALER that sends no request id pipelines with one id: no reply is lost."""
    runner = ManualRunner()
    connection = Connection(Dispatcher(Engine(store, runner, clock, IDENTITY)))
    for n in range(3):
        connection.request(f'{{"op": "query", "sql": "SELECT {n} AS n"}}'.encode())
    runner.run_pending()
    assert [json.loads(m[3])["table"]["rows"] for m in connection.sent] == [
        [["0"]],
        [["1"]],
        [["2"]],
    ]
    assert all(m[:3] == [ROUTING, MSG_ID, b""] for m in connection.sent)
    assert connection.conn._inflight == {}

"""The lean HTTP path for publishes (qasino/frontends/fastpath.py).

Driven with raw bytes over a StringTransport in front of the real site from
``make_site``: publishes must get the bytes twisted.web's path gives them,
and everything else must reach twisted.web unchanged.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from qasino.engine import Engine
from qasino.frontends.fastpath import ApiChannel, ApiFastFactory, parse_head
from qasino.frontends.http import make_site
from qasino.ops import Dispatcher
from qasino.store.store import Store
from tests.helpers import IDENTITY, ManualRunner

LIMIT = 4096


def table(name: str, n: int = 2) -> dict[str, Any]:
    return {
        "tablename": name,
        "column_names": ["a", "name"],
        "column_types": ["int", "text"],
        "rows": [[i, f"row{i}"] for i in range(n)],
    }


def publish_body(name: str, identity: str = "h1") -> bytes:
    return json.dumps({"op": "add_table_data", "identity": identity, "table": table(name)}).encode()


def post(body: bytes, target: bytes = b"/request", extra: bytes = b"") -> bytes:
    return (
        b"POST " + target + b" HTTP/1.1\r\nHost: q\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body
    )


def connect(dispatcher: Dispatcher) -> tuple[ApiChannel, StringTransport]:
    site = make_site(dispatcher, max_body_bytes=LIMIT)
    factory = ApiFastFactory(site, site.resource.api, LIMIT)  # type: ignore[attr-defined]
    channel = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.5", 40000))
    channel.makeConnection(transport)
    return channel, transport


def responses(raw: bytes) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """Split what was written into (status line, headers, body), in order."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers[b"content-length"])
        out.append((lines[0], headers, rest[:length]))
        raw = rest[length:]
    return out


def rows(store: Store, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in store.query(sql, use_write_db=True).rows]


OK = {"identity": IDENTITY, "response_op": "ok"}


def test_pipelined_publishes_are_answered_in_order_and_stored(
    dispatcher: Dispatcher, store: Store
) -> None:
    channel, transport = connect(dispatcher)
    channel.dataReceived(post(publish_body("fa")) + post(publish_body("fb")))
    replies = responses(transport.value())
    assert [r[0] for r in replies] == [b"HTTP/1.1 200 OK"] * 2
    assert [json.loads(r[2]) for r in replies] == [OK, OK]
    assert all(r[1][b"content-type"] == b"application/json" for r in replies)
    assert all(b"date" in r[1] for r in replies)
    assert rows(store, "SELECT count(*) FROM fa") == [(2,)]
    assert rows(store, "SELECT count(*) FROM fb") == [(2,)]
    assert not transport.disconnecting


def test_a_request_arriving_byte_by_byte_is_answered_once_whole(
    dispatcher: Dispatcher, store: Store
) -> None:
    channel, transport = connect(dispatcher)
    data = post(publish_body("bytewise"))
    for i in range(len(data) - 1):
        channel.dataReceived(data[i : i + 1])
    assert transport.value() == b""
    channel.dataReceived(data[-1:])
    assert json.loads(responses(transport.value())[0][2]) == OK
    assert rows(store, "SELECT count(*) FROM bytewise") == [(2,)]


def test_errors_are_the_same_replies_as_on_twisted_web(dispatcher: Dispatcher) -> None:
    bad_bodies = [
        b"not json",
        b"[1, 2]",
        json.dumps({"op": "add_table_data", "identity": "h1", "table": {"x": 1}}).encode(),
        json.dumps({"op": "no_such_op"}).encode(),
        b"",
    ]
    channel, transport = connect(dispatcher)
    for body in bad_bodies:
        channel.dataReceived(post(body, b"/request?op=add_table_data"))
    fast = [r[2] for r in responses(transport.value())]
    # The same requests through twisted.web (chunked: the lean path hands
    # those over whole).
    channel, transport = connect(dispatcher)
    for body in bad_bodies:
        chunk = (hex(len(body))[2:].encode() + b"\r\n" + body + b"\r\n") if body else b""
        channel.dataReceived(
            b"POST /request?op=add_table_data HTTP/1.1\r\nHost: q\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunk + b"0\r\n\r\n"
        )
    slow = responses(transport.value())
    assert all(r[1].get(b"server", b"").startswith(b"TwistedWeb") for r in slow)
    assert fast == [r[2] for r in slow]
    assert all(json.loads(body)["response_op"] == "error" for body in fast)


def test_the_web_ui_and_everything_after_it_go_to_twisted_web(
    dispatcher: Dispatcher, store: Store
) -> None:
    channel, transport = connect(dispatcher)
    channel.dataReceived(post(publish_body("before")))
    channel.dataReceived(
        b"GET /no-such-page HTTP/1.1\r\nHost: q\r\n\r\n" + post(publish_body("after"))
    )
    replies = responses(transport.value())
    assert replies[0][0] == b"HTTP/1.1 200 OK" and b"server" not in replies[0][1]
    assert replies[1][0] == b"HTTP/1.1 404 Not Found"
    assert replies[2][1][b"server"].startswith(b"TwistedWeb")
    assert json.loads(replies[2][2]) == OK
    assert rows(store, "SELECT count(*) FROM after") == [(2,)]


def test_a_posted_query_is_answered_by_twisted_web(dispatcher: Dispatcher, store: Store) -> None:
    channel, transport = connect(dispatcher)
    channel.dataReceived(post(publish_body("q1")))
    store.rotate(1001.0)
    body = json.dumps({"op": "query", "sql": "SELECT count(*) AS n FROM q1"}).encode()
    channel.dataReceived(post(body))
    reply = json.loads(responses(transport.value())[1][2])
    assert reply["response_op"] == "result_table"
    assert reply["table"]["rows"] == [["2"]]


@pytest.mark.parametrize(
    "head",
    [
        b"POST /request HTTP/1.0\r\nContent-Length: 2",
        b"GET /request?op=query HTTP/1.1\r\nHost: q",
        b"POST /request/x HTTP/1.1\r\nContent-Length: 2",
        b"POST /request HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2",
        b"POST /request HTTP/1.1\r\nContent-Length: +2",
        b"POST /request HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2",
        b"POST /request HTTP/1.1\r\nTransfer-Encoding: chunked",
        b"POST /request HTTP/1.1\r\nContent-Length : 2",
        b"POST /request HTTP/1.1\r\nX-A: b\r\n folded\r\nContent-Length: 2",
        b"POST /request HTTP/1.1",
        b"POST  /request HTTP/1.1\r\nContent-Length: 2",
    ],
)
def test_requests_the_lean_path_does_not_read_are_twisted_webs(head: bytes) -> None:
    assert parse_head(head) is None


def test_the_heads_it_reads() -> None:
    assert parse_head(b"POST /request?op=x HTTP/1.1\r\ncontent-length: 12") == (b"op=x", 12, False)
    assert parse_head(b"POST /request HTTP/1.1\r\nContent-Length: 0\r\nConnection: Close") == (
        b"",
        0,
        True,
    )


def test_a_malformed_head_gets_twisted_webs_400(dispatcher: Dispatcher) -> None:
    channel, transport = connect(dispatcher)
    channel.dataReceived(b"POST /request HTTP/1.1\r\nno colon here\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400")


def test_a_body_over_the_limit_gets_413_and_the_connection_closes(
    dispatcher: Dispatcher, store: Store
) -> None:
    channel, transport = connect(dispatcher)
    channel.dataReceived(
        b"POST /request HTTP/1.1\r\nHost: q\r\nContent-Length: "
        + str(LIMIT + 1).encode()
        + b"\r\n\r\n"
    )
    assert transport.value().startswith(b"HTTP/1.1 413")
    assert transport.disconnecting


def test_connection_close_is_honoured_after_the_reply(dispatcher: Dispatcher) -> None:
    channel, transport = connect(dispatcher)
    channel.dataReceived(
        post(publish_body("c1"), extra=b"Connection: close\r\n") + post(publish_body("c2"))
    )
    replies = responses(transport.value())
    assert len(replies) == 1 and replies[0][1][b"connection"] == b"close"
    assert transport.disconnecting


@pytest.fixture
def writer_dispatcher(store: Store, clock: Clock, manual_runner: ManualRunner) -> Dispatcher:
    """Every publish goes to the (manual) writer thread."""
    return Dispatcher(Engine(store, manual_runner, clock, IDENTITY, inline_max_cells=0))


def test_a_pending_publish_holds_back_the_next_reply_and_reading(
    writer_dispatcher: Dispatcher, manual_runner: ManualRunner, store: Store
) -> None:
    channel, transport = connect(writer_dispatcher)
    channel.dataReceived(post(publish_body("p1")) + post(publish_body("p2")))
    assert transport.value() == b""
    assert transport.producerState == "paused"
    manual_runner.run_one()  # p1 applied: its reply, then p2 is read
    assert len(responses(transport.value())) == 1
    manual_runner.run_one()
    assert [json.loads(r[2]) for r in responses(transport.value())] == [OK, OK]
    assert transport.producerState == "producing"
    assert rows(store, "SELECT count(*) FROM p2") == [(2,)]


def test_a_client_gone_before_its_reply_gets_nothing_written(
    writer_dispatcher: Dispatcher, manual_runner: ManualRunner, store: Store
) -> None:
    channel, transport = connect(writer_dispatcher)
    channel.dataReceived(post(publish_body("gone")))
    channel.connectionLost(Failure(ConnectionDone()))
    manual_runner.run_pending()
    assert transport.value() == b""
    # Applied all the same: the client may have been acknowledged by TCP.
    assert rows(store, "SELECT count(*) FROM gone") == [(2,)]


def test_the_publishers_address_is_kept_for_its_identity(
    dispatcher: Dispatcher, store: Store
) -> None:
    channel, _ = connect(dispatcher)
    channel.dataReceived(post(publish_body("addr", identity="host-a")))
    assert store.identities["host-a"].remote_addr == "127.0.0.5"


def test_an_idle_connection_times_out(dispatcher: Dispatcher) -> None:
    site = make_site(dispatcher, max_body_bytes=LIMIT)
    site.timeOut = 10
    channel = ApiFastFactory(site, site.resource.api, LIMIT).buildProtocol(None)  # type: ignore[attr-defined]
    clock = Clock()
    channel.callLater = clock.callLater  # type: ignore[method-assign]
    transport = StringTransport()
    channel.makeConnection(transport)
    clock.advance(9)
    channel.dataReceived(post(publish_body("idle"))[:10])  # activity restarts the clock
    clock.advance(9)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting


def test_query_string_arguments_are_read_as_twisted_web_reads_them(
    dispatcher: Dispatcher, store: Store
) -> None:
    channel, transport = connect(dispatcher)
    csv = b"1\nt_csv\nk,v\ntext,int\n\xc3\xbc,1\n"
    channel.dataReceived(post(csv, b"/request?op=add_csv_table_data&identity=h%C3%BC%F0%9D%94%98"))
    assert json.loads(responses(transport.value())[0][2])["response_op"] == "ok"
    assert "h\u00fc\U0001d518" in store.identities
    # Bytes that are not UTF-8 are replaced, never an error.
    channel.dataReceived(post(csv, b"/request?op=add_csv_table_data&identity=%FF%FE"))
    assert "\ufffd\ufffd" in store.identities


def test_an_unexpected_exception_is_logged_and_answered_500(dispatcher: Dispatcher) -> None:
    channel, transport = connect(dispatcher)

    def broken(*args: Any) -> Any:
        raise RuntimeError("bug")

    channel.factory.api.post_reply = broken
    channel.dataReceived(post(publish_body("x")))
    status, _, body = responses(transport.value())[0]
    assert status == b"HTTP/1.1 500 Internal Server Error"
    assert json.loads(body)["error_message"] == "Internal error"
    assert not transport.disconnecting


def test_a_body_arriving_in_many_pieces_is_read_whole_with_what_follows(
    dispatcher: Dispatcher, store: Store
) -> None:
    channel, transport = connect(dispatcher)
    big = {
        "op": "add_table_data",
        "identity": "h1",
        "table": {**table("big", 0), "rows": [[i, "x" * 20] for i in range(100)]},
    }
    data = post(json.dumps(big).encode()) + post(publish_body("next"))
    head_end = data.index(b"\r\n\r\n") + 4
    channel.dataReceived(data[: head_end + 5])
    for i in range(head_end + 5, len(data), 97):
        channel.dataReceived(data[i : i + 97])
    assert [json.loads(r[2]) for r in responses(transport.value())] == [OK, OK]
    assert rows(store, "SELECT count(*) FROM big") == [(100,)]
    assert rows(store, "SELECT count(*) FROM next") == [(2,)]

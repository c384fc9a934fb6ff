"""The worker channel's framing and its two ends, without processes."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from twisted.internet.defer import succeed
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from qasino.core.model import Publish, PublishOptions, Table
from qasino.core.tables import parse_json_publish
from qasino.frontends.fastpath import HAND_OFF, query_string_args
from qasino.ops import merge_request
from qasino.workers import (
    CHECKED,
    RAW,
    RESTART_RESET_S,
    STORE_GONE,
    Backoff,
    ForwardingApi,
    FrameReader,
    StoreChannel,
    StoreLink,
    decode_publish,
    encode_publish,
    pack_reply,
    pack_request,
    unpack_reply,
    unpack_request,
)


def test_frames_come_out_whole_however_the_bytes_are_split() -> None:
    rng = random.Random(7)
    sent = [
        (
            i,
            rng.choice([RAW, CHECKED]),
            rng.choice([None, "10.0.0.1", "é"]),
            b"op=x" * rng.randint(0, 3),
            rng.randbytes(i * 37),
        )
        for i in range(50)
    ]
    stream = b"".join(pack_request(seq, peer, q, b, kind) for seq, kind, peer, q, b in sent)
    reader = FrameReader()
    got = []
    at = 0
    while at < len(stream):
        step = rng.randint(1, 300)
        got += [unpack_request(f) for f in reader.feed(stream[at : at + step])]
        at += step
    assert got == sent


def test_a_reply_round_trips_and_an_empty_status_means_hand_off() -> None:
    (frame,) = FrameReader().feed(pack_reply(9, b"200 OK", b"{}"))
    assert unpack_reply(frame) == (9, b"200 OK", b"{}")
    (frame,) = FrameReader().feed(pack_reply(10, b"", b""))
    assert unpack_reply(frame) == (10, b"", b"")


def test_an_impossible_frame_length_is_refused() -> None:
    with pytest.raises(ValueError):
        FrameReader().feed(b"\xff\xff\xff\xff")


class FakeApi:
    reply_type = b"application/json"

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes, Any]] = []

    def post_reply(self, args: dict[str, str], body: bytes, peer: Any) -> Any:
        self.calls.append((args, body, peer))
        if args.get("op") == "query":
            return {"op": "query"}
        return succeed({"ok": body.decode()})

    def reply_body(self, result: Any) -> tuple[bytes, bytes]:
        return b"200 OK", repr(result).encode()


def test_the_store_end_answers_each_request_by_its_seq() -> None:
    api = FakeApi()
    channel = StoreChannel(api)
    transport = StringTransport()
    channel.makeConnection(transport)
    data = pack_request(1, "1.2.3.4", b"op=add", b"A") + pack_request(2, None, b"op=query", b"")
    channel.dataReceived(data[:5])
    channel.dataReceived(data[5:])
    assert api.calls == [({"op": "add"}, b"A", "1.2.3.4"), ({"op": "query"}, b"", None)]
    replies = [unpack_reply(f) for f in FrameReader().feed(transport.value())]
    assert replies == [(1, b"200 OK", repr({"ok": "A"}).encode()), (2, b"", b"")]


def test_the_worker_end_matches_replies_and_fails_what_waits_when_the_store_goes() -> None:
    lost: list[bool] = []
    link = StoreLink(lambda: lost.append(True))
    transport = StringTransport()
    link.makeConnection(transport)
    results: list[Any] = []
    for body in (b"a", b"b", b"c"):
        link.forward(b"", body, None).addBoth(results.append)
    sent = [unpack_request(f) for f in FrameReader().feed(transport.value())]
    assert [s[4] for s in sent] == [b"a", b"b", b"c"]
    # Replies may come in any order; the second is a hand-off.
    link.dataReceived(pack_reply(sent[1][0], b"", b"") + pack_reply(sent[0][0], b"200 OK", b"x"))
    assert results == [HAND_OFF, (b"200 OK", b"x")]
    link.connectionLost(Failure(ConnectionError("gone")))
    assert lost == [True]
    assert isinstance(results[2], Failure) and results[2].check(ConnectionError)
    status, body = ForwardingApi(link).reply_body(results[2])
    assert status == b"503 Service Unavailable" and STORE_GONE.encode() in body
    # After the loss, a new publish fails at once.
    late: list[Any] = []
    link.forward(b"", b"d", None).addBoth(late.append)
    assert isinstance(late[0], Failure)


def test_restarts_back_off_while_a_child_dies_quickly_and_reset_after_a_long_run() -> None:
    backoff = Backoff()
    assert [backoff.after(1.0) for _ in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff.after(RESTART_RESET_S) == 0.25
    assert backoff.after(0.1) == 0.5


@pytest.mark.parametrize("end", ["store", "worker"])
def test_a_garbled_channel_is_closed(end: str) -> None:
    protocol = StoreChannel(FakeApi()) if end == "store" else StoreLink(list)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"\xff\xff\xff\xff")
    assert transport.disconnecting


LIMITS = {"max_rows": 100, "max_columns": 10, "max_cell_bytes": 1000}


def checker() -> ForwardingApi:
    return ForwardingApi(StoreLink(list), dict(LIMITS))


def body(**request: Any) -> bytes:
    return orjson.dumps(request)


TABLE = {"tablename": "t", "column_names": ["a", "b"], "column_types": ["int", "text"]}


@pytest.mark.parametrize(
    "query, sent",
    [
        (b"", {"op": "add_table_data", "identity": "h1", "table": {**TABLE, "rows": [[1, "x"]]}}),
        # Options from the query string, as the store process merges them.
        (
            b"op=add_table_data&identity=h2&persist=1&update=1&keycols=a",
            {"table": {**TABLE, "rows": [[1, "x"], [2, None]]}},
        ),
        # Cells left for SQLite to refuse travel as they are.
        (b"op=add_table_data&identity=h3", {"table": {**TABLE, "rows": [[{"k": [1]}, True]]}}),
        # A body only the stdlib reads (NaN) gets the full cell check.
        (b"op=add_table_data&identity=h4", None),
    ],
)
def test_a_worker_sends_a_valid_publish_as_the_table_the_store_would_check(
    query: bytes, sent: Any
) -> None:
    raw = (
        b'{"table": {"tablename": "t", "column_names": ["a"], "column_types": ["real"],'
        b' "rows": [[NaN]]}}'
        if sent is None
        else body(**sent)
    )
    compact = checker().checked(query, raw)
    assert compact is not None
    merged, plain = merge_request(query_string_args(query), raw)
    expected = parse_json_publish(merged, **LIMITS, decoded_from_bytes=plain)
    assert decode_publish(compact) == expected


@pytest.mark.parametrize(
    "query, raw",
    [
        (b"op=add_table_data", b'{"identity": "h1"'),  # not JSON
        (b"", b"[1]"),  # not an object
        (b"", body(op="query", sql="SELECT 1")),
        (b"", body(op="name_value_update", identity="h", tablename="t", name="a", value="1")),
        (b"op=add_csv_table_data&identity=h", b"tablename\nt\na\nint\n1\n"),
        (b"", body(op="add_table_data", table={**TABLE, "rows": [[1, "x"]]})),  # no identity
        (b"", body(op="add_table_data", identity="h", table={**TABLE, "rows": [[1]]})),
        (b"", body(op="add_table_data", identity="h", table={**TABLE, "rows": [[1, "x" * 2000]]})),
        (b"", body(op="add_table_data", identity="h", table={**TABLE, "rows": [[1, "x"]] * 101})),
    ],
)
def test_anything_but_a_valid_publish_goes_to_the_store_process_as_received(
    query: bytes, raw: bytes
) -> None:
    assert checker().checked(query, raw) is None


def test_without_limits_a_worker_checks_nothing() -> None:
    raw = body(op="add_table_data", identity="h", table={**TABLE, "rows": [[1, "x"]]})
    assert ForwardingApi(StoreLink(list)).checked(b"", raw) is None
    assert checker().checked(b"", raw) is not None


class CheckedApi(FakeApi):
    transport = "http"

    def __init__(self) -> None:
        super().__init__()
        self.dispatcher = self
        self.checked: list[tuple[list[tuple[Publish, Any]], str]] = []

    def add_checked_tables(self, items: list[tuple[Publish, Any]], transport: str) -> Any:
        self.checked.append((items, transport))
        return succeed([{"ok": publish.options.identity} for publish, _ in items])


def test_the_store_end_applies_checked_publishes_of_one_read_as_groups() -> None:
    api = CheckedApi()
    channel = StoreChannel(api)
    transport = StringTransport()
    channel.makeConnection(transport)
    publish = Publish(
        Table("t", ("a",), ("INTEGER",), [[1], [2]], False),
        PublishOptions("h9", persist=True, update=True, keycols=("a",)),
    )
    other = Publish(publish.table, PublishOptions("h10"))
    checked = [encode_publish(publish), encode_publish(other), encode_publish(publish)]
    channel.dataReceived(
        pack_request(5, "10.1.1.1", b"", checked[0], CHECKED)
        + pack_request(6, None, b"", checked[1], CHECKED)
        + pack_request(7, None, b"op=x", b"raw")
        + pack_request(8, "10.1.1.2", b"", checked[2], CHECKED)
    )
    # One group per run of checked frames, in the order sent.
    assert api.checked == [
        ([(publish, "10.1.1.1"), (other, None)], "http"),
        ([(publish, "10.1.1.2")], "http"),
    ]
    assert api.calls == [({"op": "x"}, b"raw", None)]
    replies = [unpack_reply(f) for f in FrameReader().feed(transport.value())]
    assert replies == [
        (5, b"200 OK", repr({"ok": "h9"}).encode()),
        (6, b"200 OK", repr({"ok": "h10"}).encode()),
        (7, b"200 OK", repr({"ok": "raw"}).encode()),
        (8, b"200 OK", repr({"ok": "h9"}).encode()),
    ]

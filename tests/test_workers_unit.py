"""The worker channel's framing and its two ends, without processes."""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet.defer import succeed
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from qasino.frontends.fastpath import HAND_OFF
from qasino.workers import (
    RESTART_RESET_S,
    STORE_GONE,
    Backoff,
    ForwardingApi,
    FrameReader,
    StoreChannel,
    StoreLink,
    pack_reply,
    pack_request,
    unpack_reply,
    unpack_request,
)


def test_frames_come_out_whole_however_the_bytes_are_split() -> None:
    rng = random.Random(7)
    sent = [
        (i, rng.choice([None, "10.0.0.1", "é"]), b"op=x" * rng.randint(0, 3), rng.randbytes(i * 37))
        for i in range(50)
    ]
    stream = b"".join(pack_request(*s) for s in sent)
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
    assert [s[3] for s in sent] == [b"a", b"b", b"c"]
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

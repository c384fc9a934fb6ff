"""The NATS reader process's frames and the server's side of them, with no
NATS and no processes: what the reader decodes reaches the store exactly
as if the server had decoded it; batches are applied in order, one credit
each; garbage stops the reader. And the bridge's connect, which waited its
whole timeout before saying it was connected."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any

import nats
import pytest
from twisted.internet.task import Clock

from qasino.core.errors import InvalidInput
from qasino.core.tables import DEFAULT_MAX_CELL_BYTES, DEFAULT_MAX_COLUMNS, DEFAULT_MAX_ROWS
from qasino.engine import Engine
from qasino.nats import reader
from qasino.nats import service as service_module
from qasino.nats.bridge import NatsBridge
from qasino.nats.messages import (
    CSV_TYPE,
    IDENTITY_HEADER,
    TICK_SUBJECT,
    StreamMessage,
    decode,
)
from qasino.nats.service import NatsService, ReaderProcess
from qasino.ops import Dispatcher
from qasino.store.store import Store

LIMITS = {
    "max_rows": DEFAULT_MAX_ROWS,
    "max_columns": DEFAULT_MAX_COLUMNS,
    "max_cell_bytes": DEFAULT_MAX_CELL_BYTES,
}
TS = 1_700_000_000.0
CSV = b"1\ncsvt\nhost,count\nstring,int\nHost,Count\nh6,5\n"


def publish_body(identity: str, rows: list[list[Any]], **opts: Any) -> bytes:
    table = {
        "tablename": "t",
        "column_names": ["host", "n"],
        "column_types": ["text", "int"],
        "rows": rows,
    }
    return json.dumps(
        {"op": "add_table_data", "identity": identity, "table": table, **opts}
    ).encode()


def msg(seq: int, data: bytes, subject: str = "qasino.publish.h1", **kw: Any) -> StreamMessage:
    return StreamMessage(subject, data, kw.get("headers"), seq, int((TS + seq) * 1e9), 100 - seq)


def every_kind() -> list[StreamMessage]:
    return [
        msg(1, publish_body("h1", [["h1", 1], ["h1", 2**62], ["h1", 0.1]])),
        msg(2, b"", subject=TICK_SUBJECT),
        msg(3, publish_body("h2", [["h2", None]], persist=1), subject="qasino.publish.h2"),
        msg(4, publish_body("h3", [["h3", "x"]], static=1), subject="qasino.publish.h3"),
        msg(5, publish_body("h4", [["h4", 1]], update=1, keycols="host")),
        msg(6, json.dumps({"op": "name_value_update", "name": "v.c", "value": "01"}).encode()),
        msg(7, b"{not json"),
        msg(8, publish_body("h5", [["h5", 1, 2]])),  # a row longer than the columns
        msg(9, CSV, headers={"Content-Type": CSV_TYPE, IDENTITY_HEADER: "h6"}),
        msg(11, b"a,b\n1,2\n", headers={"Content-Type": CSV_TYPE, IDENTITY_HEADER: "h7"}),
        msg(10, publish_body("", [["x", 1]]), subject="qasino.publish.fromsubject"),
    ]


def expected(m: StreamMessage) -> Any:
    try:
        return decode(m, LIMITS)
    except InvalidInput as e:
        return ("refused", e.message)


def as_compared(decoded: Any) -> Any:
    if isinstance(decoded, InvalidInput):
        return ("refused", decoded.message)
    return decoded


def decode_frame(frame: bytes) -> Any:
    """What the server makes of a frame: None (idle), or (messages, decoded)."""
    entries = reader.load_frame(frame)
    return None if entries is None else reader.messages_of(entries, LIMITS)


def frame_body(data: bytes) -> bytes:
    size = reader._LEN.unpack_from(data)[0]
    assert len(data) == reader._LEN.size + size
    return data[reader._LEN.size :]


def test_a_batch_frame_gives_what_decoding_each_message_gives() -> None:
    msgs = every_kind()
    got = decode_frame(frame_body(reader.encode_batch(msgs, LIMITS)))
    assert got is not None
    out_msgs, decoded = got
    assert [as_compared(d) for d in decoded] == [expected(m) for m in msgs]
    assert [(m.seq, m.ts_ns, m.pending, m.subject) for m in out_msgs] == [
        (m.seq, m.ts_ns, m.pending, m.subject) for m in msgs
    ]
    # The bytes travel only where the server copies them to QASINO_KEEP
    # (persist, static, name/value), with their headers.
    carried = {m.seq: (m.data, m.headers) for m in out_msgs if m.data}
    assert carried == {
        3: (msgs[2].data, None),
        4: (msgs[3].data, None),
        6: (msgs[5].data, None),
    }


def test_an_idle_frame_and_garbage() -> None:
    assert decode_frame(frame_body(reader.idle_frame())) is None
    for garbage in (b"", b"\x00\x01", b"\xe9" * 10):
        with pytest.raises(ValueError):
            decode_frame(garbage)
    import marshal

    with pytest.raises(ValueError):
        decode_frame(marshal.dumps(("X", [])))


def test_an_entry_sent_undecoded_is_decoded_by_the_server() -> None:
    import marshal

    m = msg(1, publish_body("h1", [["h1", 1]]))
    entry = (m.seq, m.ts_ns, m.pending, m.subject, reader.UNDECODED, None, m.data, m.headers)
    got = decode_frame(marshal.dumps((reader.BATCH, [entry])))
    assert got is not None
    assert got[1] == [decode(m, LIMITS)]


def test_in_order_drops_what_was_handed_and_cuts_at_a_gap() -> None:
    msgs = [msg(s, b"") for s in (3, 4, 5, 7, 8)]
    kept, gap = reader.in_order(msgs, 4)
    assert [m.seq for m in kept] == [4, 5] and gap
    kept, gap = reader.in_order(msgs[:3], None)  # a fresh consumer: from its first
    assert [m.seq for m in kept] == [3, 4, 5] and not gap
    kept, gap = reader.in_order(msgs[:3], 6)
    assert kept == [] and not gap


# ---------------------------------------------------------------- server side


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.signals: list[str] = []
        self.pid = 4242

    def write(self, data: bytes) -> None:
        self.written += data

    def signalProcess(self, name: str) -> None:  # noqa: N802 - Twisted's name
        self.signals.append(name)


@pytest.fixture
def nats_service(engine: Engine, clock: Clock) -> NatsService:
    clock.advance(TS + 1000)
    return NatsService(engine, Dispatcher(engine), clock, "nats://127.0.0.1:1")


def attached(service: NatsService) -> tuple[ReaderProcess, FakeTransport]:
    proc = ReaderProcess(service)
    transport = FakeTransport()
    proc.makeConnection(transport)  # type: ignore[arg-type]
    return proc, transport


def test_batches_are_applied_in_order_with_one_credit_each(
    nats_service: NatsService, store: Store, clock: Clock
) -> None:
    proc, transport = attached(nats_service)
    first = [msg(s, publish_body(f"h{s}", [[f"h{s}", s]]), f"qasino.publish.h{s}") for s in (1, 2)]
    second = [msg(3, publish_body("h3", [["h3", 3]]), "qasino.publish.h3")]
    data = reader.encode_batch(first, LIMITS) + reader.encode_batch(second, LIMITS)
    proc.childDataReceived(1, data[:7])  # frames arrive in pieces
    assert transport.written == b""
    proc.childDataReceived(1, data[7:])
    assert transport.written == b"", "a credit only once its batch is applied"
    clock.advance(0)  # written from the next reactor turn on
    assert transport.written == b"\x01\x01"
    assert nats_service.applied == 3
    assert nats_service._next_seq == 4
    rows = store.query("SELECT host, n FROM t ORDER BY n", use_write_db=True).rows
    assert [tuple(r) for r in rows] == [("h1", 1), ("h2", 2), ("h3", 3)]


def test_a_frame_is_fed_a_piece_per_turn_and_credited_once_all_is_applied(
    nats_service: NatsService, store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "FEED_ENTRIES", 2)
    proc, transport = attached(nats_service)
    msgs = [
        msg(s, publish_body(f"h{s}", [[f"h{s}", s]]), f"qasino.publish.h{s}") for s in range(1, 6)
    ]
    feeds: list[int] = []
    real_feed = nats_service._feed

    def feed() -> None:
        feeds.append(len(nats_service._frames[0][1]) if nats_service._frames else 0)
        real_feed()

    nats_service._feed = feed  # type: ignore[method-assign]
    proc.childDataReceived(1, reader.encode_batch(msgs, LIMITS))
    assert feeds == [] and transport.written == b"", "nothing in the turn the frame came in"
    clock.advance(0)
    assert feeds == [5, 3, 1], "two entries a turn"
    assert transport.written == b"\x01"
    rows = store.query("SELECT n FROM t ORDER BY rowid", use_write_db=True).rows
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    assert nats_service._frames == deque() and nats_service._handed == 0


def test_an_entry_with_a_broken_payload_is_refused_and_the_rest_applied(
    nats_service: NatsService, store: Store, clock: Clock
) -> None:
    import marshal

    good = reader.encode_batch([msg(2, publish_body("h2", [["h2", 2]]))], LIMITS)
    entry = marshal.loads(frame_body(good))[1][0]
    broken = (1, entry[1], 0, "qasino.publish.h1", reader.PUBLISH, ("t", 5), b"", None)
    body = marshal.dumps((reader.BATCH, [broken, entry]))
    proc, transport = attached(nats_service)
    proc.childDataReceived(1, reader._LEN.pack(len(body)) + body)
    clock.advance(0)
    assert transport.written == b"\x01"
    assert store.counters.peek()["update_errors"] == 1  # counted as a refused publish
    rows = store.query("SELECT host FROM t", use_write_db=True).rows
    assert [r[0] for r in rows] == ["h2"]


def test_an_entry_of_the_wrong_shape_is_garbage() -> None:
    import marshal

    for entry in [
        (1, 2, 3),
        ("1", 0, 0, "s", 0, None, b"", None),
        (1, 0, 0, "s", 0, None, "x", None),
    ]:
        with pytest.raises(ValueError):
            reader.load_frame(marshal.dumps((reader.BATCH, [entry])))


def test_an_idle_frame_says_caught_up_once_nothing_is_waiting(
    nats_service: NatsService,
) -> None:
    proc, _ = attached(nats_service)
    nats_service._handed = 1  # a batch still being applied
    proc.childDataReceived(1, reader.idle_frame())
    assert not nats_service.caught_up
    nats_service._handed = 0
    proc.childDataReceived(1, reader.idle_frame())
    assert nats_service.caught_up


def test_garbage_from_the_reader_kills_it_and_nothing_after_is_applied(
    nats_service: NatsService, store: Store
) -> None:
    proc, transport = attached(nats_service)
    good = reader.encode_batch([msg(1, publish_body("h1", [["h1", 1]]))], LIMITS)
    proc.childDataReceived(1, reader._LEN.pack(3) + b"bad" + good)
    assert transport.signals == ["KILL"]
    assert nats_service.applied == 0
    names = store.query("SELECT name FROM sqlite_master", use_write_db=True).rows
    assert "t" not in {str(r[0]) for r in names}


def test_reader_log_lines_are_logged_by_level(nats_service: NatsService) -> None:
    from twisted.logger import globalLogPublisher

    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        proc, _ = attached(nats_service)
        proc.childDataReceived(2, b"info reader: connected\nwarn NATS consu")
        proc.childDataReceived(2, b"mer: boom; retrying\nstray line\n")
    finally:
        globalLogPublisher.removeObserver(seen.append)
    logged = [(e["log_level"].name, e.get("text")) for e in seen if e.get("text")]
    assert logged == [
        ("info", "reader: connected"),
        ("warn", "NATS consumer: boom; retrying"),
        ("warn", "stray line"),
    ]


# ---------------------------------------------------------------- bridge


def test_connect_says_connected_at_once_not_after_its_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """nats.connect answering at once: one state, 'connected'. (It used to
    wait the whole 3 s for a stop that never came, and say first that NATS
    could not be reached.)"""

    class FakeNC:
        connected_url = None

        def jetstream(self) -> object:
            return object()

    async def fake_connect(**_: Any) -> FakeNC:
        return FakeNC()

    monkeypatch.setattr(nats, "connect", fake_connect)
    states: list[tuple[bool, str]] = []

    async def run() -> bool:
        bridge = NatsBridge(reader._Now(), ["nats://127.0.0.1:1"], "t", own_loop=False)
        bridge.on_state = lambda up, why: states.append((up, why))
        return await asyncio.wait_for(bridge.connect(asyncio.Event()), 2.0)

    assert asyncio.run(run())
    assert states == [(True, "connected to NATS at ?")]

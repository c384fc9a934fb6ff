"""Applying stream messages to the store, with no NATS and no reactor:
generations cut by stream time, batches in one transaction, merge rules."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock

from qasino.core.errors import PublishRejected
from qasino.core.model import Publish, PublishOptions, Table
from qasino.engine import Engine
from qasino.nats.messages import TICK_SUBJECT, StreamMessage
from qasino.nats.service import NatsService
from qasino.ops import Dispatcher
from qasino.store.store import Store

D = 10


def message(
    seq: int, ts: float, identity: str, rows: list[list[Any]], **opts: Any
) -> StreamMessage:
    body = {
        "op": "add_table_data",
        "identity": identity,
        "table": {
            "tablename": "t",
            "column_names": ["host", "n"],
            "column_types": ["text", "int"],
            "rows": rows,
        },
        **opts,
    }
    return StreamMessage(
        f"qasino.publish.{identity}", json.dumps(body).encode(), None, seq, int(ts * 1e9)
    )


def tick(seq: int, ts: float) -> StreamMessage:
    return StreamMessage(TICK_SUBJECT, b"", None, seq, int(ts * 1e9))


def service(engine: Engine) -> NatsService:
    return NatsService(
        engine, Dispatcher(engine), Clock(), "nats://127.0.0.1:1", generation_duration_s=D
    )


def served(store: Store, sql: str) -> list[tuple[object, ...]]:
    return store.query(sql).rows


def test_generations_are_cut_by_stream_time_with_aligned_numbers(
    engine: Engine, store: Store, clock: Clock
) -> None:
    nats = service(engine)
    nats.apply_batch(
        [
            message(1, 2001.5, "h1", [["h1", 1]]),
            message(2, 2003.0, "h2", [["h2", 2]]),
            tick(3, 2010.2),  # past the end of generation 2000: cut
            message(4, 2012.0, "h1", [["h1", 3]]),
        ]
    )
    clock.advance(0)  # batches are written from the next reactor turn on
    assert served(store, "SELECT generation_number FROM qasino_server_info") == [(2000,)]
    assert served(store, "SELECT host, n FROM t ORDER BY host") == [("h1", 1), ("h2", 2)]
    nats.apply_batch([tick(5, 2031.0)])  # idle generations are skipped
    clock.advance(0)
    assert served(store, "SELECT generation_number FROM qasino_server_info") == [(2010,)]
    assert served(store, "SELECT host, n FROM t") == [("h1", 3)]


def test_second_publish_in_a_generation_is_refused_within_a_batch(
    engine: Engine, store: Store, clock: Clock
) -> None:
    nats = service(engine)
    nats.apply_batch(
        [
            message(1, 2001.0, "h1", [["h1", 1]]),
            message(2, 2002.0, "h1", [["h1", 99]]),
            message(3, 2003.0, "h2", [["h2", 2]], persist=1),
            tick(4, 2011.0),
            tick(5, 2021.0),
        ]
    )
    clock.advance(0)
    # h1's second publish was refused; h2's persisted table is carried.
    assert served(store, "SELECT host, n FROM t ORDER BY host") == [("h2", 2)]
    assert store.counters.peek()["update_errors"] == 0  # counters of generation 2020


def test_write_batch_keeps_each_call_atomic_and_reports_its_error(store: Store) -> None:
    table = Table("w", ("a",), ("INTEGER",), [[1]])
    p = Publish(table, PublishOptions(identity="x"))
    errors = store.write_batch([(store.publish, (p, 1.0)), (store.publish, (p, 2.0))])
    assert errors[0] is None and isinstance(errors[1], PublishRejected)
    store.rotate(3.0)
    assert store.query("SELECT a FROM w").rows == [(1,)]

"""Qasino servers on a real 3-node NATS JetStream cluster."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from tests.e2e.conftest import (
    http_publish,
    http_query,
    http_request,
    make_table,
    publish_request,
    request_target,
    zmq_call,
)
from tests.e2e.test_metrics import scrape, value
from tests.nats.cluster import NatsCluster, NatsNode
from tests.server_process import QasinoProcess, free_port, poll_until

COLUMNS = [("host", "text"), ("n", "integer")]


def table(name: str, rows: list[list[Any]]) -> dict[str, Any]:
    return make_table(name, COLUMNS, rows)


def ok(reply: dict[str, Any]) -> None:
    assert reply.get("response_op") == "ok", reply


def served(server: QasinoProcess, sql: str) -> tuple[int, list[list[str]]]:
    """(generation_number, rows) of one query, both from one snapshot."""
    reply = http_query(
        server.ports["http"],
        "SELECT (SELECT generation_number FROM qasino_server_info) AS g, * FROM (" + sql + ")",
    )
    if reply.get("response_op") != "result_table":
        return -1, []
    rows = reply["table"]["rows"]
    gen = int(rows[0][0]) if rows else -1
    return gen, [r[1:] for r in rows]


def same_generation(a: QasinoProcess, b: QasinoProcess, sql: str, timeout: float = 10) -> Any:
    """(generation, rows of a, rows of b) once both serve the same generation."""

    def check() -> Any:
        ga, ra = served(a, sql)
        gb, rb = served(b, sql)
        return ga == gb and ga > 0 and (ga, ra, rb)

    return poll_until(check, timeout, "both servers on one generation")


def test_two_servers_on_one_stream_serve_identical_generations(
    pair: tuple[QasinoProcess, QasinoProcess],
) -> None:
    a, b = pair
    for i in range(20):
        target = a if i % 2 else b
        ok(
            http_publish(
                target.ports["http"],
                publish_request(f"h{i}", table("p", [[f"h{i}", i]]), persist=1),
            )
        )
        ok(http_publish(target.ports["http"], publish_request(f"h{i}", table("t", [[f"h{i}", i]]))))
    sql = "SELECT host, n FROM p ORDER BY host"
    poll_until(lambda: len(served(a, sql)[1]) == 20, 20, "all 20 persisted rows on a")
    g, ra, rb = same_generation(a, b, sql)
    assert ra == rb and len(ra) == 20
    # Every generation both serve holds the same rows of t, whatever
    # generation each publish fell in (stream time, not each server's clock).
    seen: dict[int, list[list[str]]] = {}
    for _ in range(3):
        g, ra, rb = same_generation(a, b, "SELECT host, n FROM t ORDER BY host")
        assert ra == rb, g
        seen[g] = ra
    g, ia, ib = same_generation(
        a, b, "SELECT generation_number, generation_start_epoch FROM qasino_server_info"
    )
    assert ia == ib
    # /metrics: both applied all 40 publishes (and ticks) and lag behind by nothing.
    for server in (a, b):
        samples = scrape(server.ports["http"])
        assert value(samples, "qasino_nats_up") == 1
        assert value(samples, "qasino_nats_caught_up") == 1
        assert value(samples, "qasino_nats_applied_messages_total") >= 40
        assert value(samples, "qasino_nats_pending_messages") == 0


def static_table(rows: list[list[Any]]) -> dict[str, Any]:
    return table("s", rows)


def ctable(rows: list[list[Any]]) -> dict[str, Any]:
    return table("cs", rows)


def test_merge_rules_hold_through_the_stream(
    pair: tuple[QasinoProcess, QasinoProcess],
) -> None:
    """Once per identity per generation, static, update/keycols and
    name/value, applied from the stream, alike on two servers."""
    a, b = pair
    port = a.ports["http"]
    ok(http_publish(port, publish_request("h1", static_table([["x", 1]]), static=1)))
    ok(http_publish(port, publish_request("h1", table("u", [["k", 1]]), update=1, keycols="host")))
    ok(http_publish(port, publish_request("h1", table("u", [["k", 2]]), update=1, keycols="host")))
    reply = http_request(
        port,
        "GET",
        request_target(op="name_value_update", name="nv.load", value="7", identity="h9"),
    )
    assert reply.json()["response_op"] == "ok"
    for ident, row in (("h1", ["k", 1]), ("h2", ["k", 2]), ("h2", ["j", 3])):
        ok(
            http_publish(
                port, publish_request(ident, table("su", [row]), static=1, update=1, keycols="host")
            )
        )
    for sql, expected in [
        ("SELECT host, n FROM s", [["x", "1"]]),
        ("SELECT identity, load FROM nv", [["h9", "7"]]),
        ("SELECT host, n FROM su ORDER BY host", [["j", "3"], ["k", "2"]]),
    ]:
        for server in (a, b):
            poll_until(
                lambda sql=sql, server=server, expected=expected: (
                    served(server, sql)[1] == expected
                ),
                15,
                f"{sql} on {server.workdir.name}",
            )
        g, ra, rb = same_generation(a, b, sql)
        assert ra == rb == expected, (sql, g)
    # Two publishes of one table by one identity in one generation: the
    # stream acks both, the second is not applied (logged), on every server.
    # (Two tries: a pair may straddle a generation boundary.)
    for attempt in range(3):
        ident = f"dup{attempt}"
        ok(http_publish(port, publish_request(ident, table("d", [["first", 1]]))))
        ok(http_publish(port, publish_request(ident, table("d", [["second", 2]]))))
        refused = f"already published by identity {ident} in this generation"
        try:
            a.wait_log(refused, timeout=5)
        except AssertionError:
            continue
        b.wait_log(refused, timeout=5)
        break
    else:
        raise AssertionError("the second publish was never refused")


def nats_publish(url: str, subject: str, body: bytes, headers: dict[str, str] | None) -> int:
    """Publish straight into the stream as a third-party publisher would."""
    import asyncio

    import nats

    async def go() -> int:
        nc = await nats.connect(servers=url.split(","))
        try:
            ack = await nc.jetstream().publish(subject, body, headers=headers, timeout=10)
            return int(ack.seq)
        finally:
            await nc.close()

    return asyncio.run(go())


def test_every_way_in_reaches_the_stream(
    pair: tuple[QasinoProcess, QasinoProcess], cluster: NatsCluster
) -> None:
    """JSON and CSV straight to qasino.publish.IDENTITY, ZeroMQ and HTTP CSV
    publishes forwarded by a server: all applied, on both servers."""
    a, b = pair
    body = {
        "table": {
            "tablename": "w",
            "column_names": ["host", "n"],
            "column_types": ["text", "int"],
            "rows": [["json", 1]],
        },
        "persist": 1,
    }
    nats_publish(cluster.url, "qasino.publish.wj", json.dumps(body).encode(), None)
    csv = b"persist=1\nw\nhost,n\ntext,int\nHost,N\ncsv,2\n"
    nats_publish(cluster.url, "qasino.publish.wc", csv, {"Content-Type": "text/csv"})
    ok(zmq_call(a.ports["zmq"], publish_request("wz", table("w", [["zmq", 3]]), persist=1)))
    reply = http_request(
        a.ports["http"],
        "POST",
        request_target(op="add_csv_table_data"),
        b"persist=1,identity=wh\nw\nhost,n\ntext,int\nHost,N\nhttpcsv,4\n",
        {"Content-Type": "text/csv"},
    )
    ok(reply.json())
    sql = "SELECT host, n FROM w ORDER BY n"
    expected = [["json", "1"], ["csv", "2"], ["zmq", "3"], ["httpcsv", "4"]]
    poll_until(lambda: served(b, sql)[1] == expected, 15, "all four on b")
    g, ra, rb = same_generation(a, b, sql)
    assert ra == rb == expected
    idents = "SELECT identity FROM qasino_server_connections ORDER BY identity"
    g, ia, ib = same_generation(a, b, idents)
    assert ia == ib


def consumer_node(cluster: NatsCluster, consumer: str, stream: str = "QASINO") -> int:
    """Index of the cluster node that leads ``consumer``."""
    import asyncio

    import nats

    async def get() -> str:
        nc = await nats.connect(servers=cluster.urls)
        try:
            info = await nc.jetstream().consumer_info(stream, consumer)
            return str(info.cluster.leader)
        finally:
            await nc.close()

    leader = asyncio.run(get())
    return [n.name for n in cluster.nodes].index(leader)


def test_kill_of_one_nats_node_during_ingest_loses_no_acknowledged_publish(
    nats_server: Callable[..., QasinoProcess], cluster: NatsCluster
) -> None:
    a = nats_server("ka")
    acked: list[str] = []
    errors: list[str] = []
    # The node that holds this server's consumer: the hardest one to lose.
    victim = consumer_node(cluster, "qasino_ka")

    def published(ident: str, i: int) -> bool:
        reply = http_publish(
            a.ports["http"], publish_request(ident, table("kp", [[ident, i]]), persist=1)
        )
        if reply.get("response_op") == "ok":
            return True
        errors.append(reply["error_message"])
        return False

    for i in range(90):
        if i == 30:
            cluster.kill(victim)
        ident = f"k{i:03d}"
        # As a publisher does: a refused publish is sent again. When the
        # server's own connection was on the killed node it refuses
        # publishes ("NATS unavailable") until it has reconnected; while the
        # stream elects a new leader, JetStream does not acknowledge one
        # ("no response from stream") and the server says so.
        poll_until(lambda ident=ident, i=i: published(ident, i), 30, f"{ident} acknowledged")
        acked.append(ident)
    refusals = ("NATS unavailable", "the publish was not acknowledged by NATS JetStream")
    assert all(e.startswith(refusals) for e in errors), errors[:5]
    sql = "SELECT host FROM kp ORDER BY host"

    def all_acked_served() -> bool:
        return {r[0] for r in served(a, sql)[1]} >= set(acked)

    # Under a loaded machine JetStream can take over 30 s to move the
    # consumer off the dead node (seen once in a full-suite run); the check
    # is the same, it is given longer.
    poll_until(all_acked_served, 90, "every acknowledged publish to be served")
    # With the node back, a server started afterwards rebuilds the same from
    # the stream. (While a node is freshly dead, JetStream 2.9 may place a
    # new consumer on it and time out; a server then retries until it is
    # noticed: see docs/scaling.md.)
    cluster.restart(victim)
    b = nats_server("kb")
    g, ra, rb = same_generation(a, b, sql, timeout=20)
    assert ra == rb


def reader_pid(server: QasinoProcess) -> Optional[int]:
    """The pid of the server's NATS reader process (its one child), if running."""
    assert server.proc is not None
    children = [
        int(pid)
        for task in Path(f"/proc/{server.proc.pid}/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]
    assert len(children) <= 1, children
    return children[0] if children else None


def test_kill_of_the_reader_process_during_ingest_loses_and_doubles_nothing(
    nats_server: Callable[..., QasinoProcess],
) -> None:
    a = nats_server("ra")
    # Connected at once: no "cannot reach NATS" on the way (the connect
    # used to wait out its timeout first and say so).
    assert "cannot reach NATS" not in a.log_text()
    first = reader_pid(a)
    assert first is not None
    acked: list[str] = []
    for i in range(60):
        if i == 20:
            os.kill(first, signal.SIGKILL)
        ident = f"r{i:03d}"
        ok(
            http_publish(
                a.ports["http"], publish_request(ident, table("rp", [[ident, i]]), persist=1)
            )
        )
        acked.append(ident)
    a.wait_log(rf"NATS reader process \(pid {first}\) ended", timeout=10)
    poll_until(lambda: reader_pid(a) not in (None, first), 10, "a new reader process")
    sql = "SELECT host, count(*) FROM rp GROUP BY host ORDER BY host"
    poll_until(
        lambda: served(a, sql)[1] == [[ident, "1"] for ident in acked],
        20,
        "every acknowledged publish served once",
    )
    # The reader ends with its server: on SIGTERM, and on SIGKILL (parent-death signal).
    second = reader_pid(a)
    assert second is not None
    assert a.stop() == 0
    poll_until(lambda: not alive(second), 10, "the reader to end with its server")
    b = nats_server("rb")
    third = reader_pid(b)
    assert third is not None
    b.kill()
    poll_until(lambda: not alive(third), 10, "the reader to end with its killed server")


def alive(pid: int) -> bool:
    """Running (a zombie or a reaped pid is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_killed_server_restarted_with_empty_db_dir_catches_up(
    nats_server: Callable[..., QasinoProcess],
) -> None:
    a = nats_server("ca")
    b = nats_server("cb")
    port = a.ports["http"]
    ok(http_publish(port, publish_request("h1", ctable([["st", 5]]), static=1)))
    for i in range(10):
        ok(http_publish(port, publish_request(f"h{i}", table("cp", [[f"h{i}", i]]), persist=1)))
    poll_until(lambda: len(served(b, "SELECT * FROM cp")[1]) == 10, 15, "cp on b")
    b.kill()
    shutil.rmtree(b.workdir / "db")
    ok(http_publish(port, publish_request("h1", table("cp", [["h1", 100]]))))  # persist ends
    b.start()
    b.wait_log("caught up with stream", timeout=30)
    for sql in ("SELECT host, n FROM cp ORDER BY host", "SELECT host, n FROM cs"):
        g, ra, rb = same_generation(a, b, sql)
        assert ra == rb, sql
    assert ["st", "5"] in served(b, "SELECT host, n FROM cs")[1]


def test_nats_unreachable_at_start_is_a_clear_error_and_the_server_serves(
    nats_server: Callable[..., QasinoProcess],
) -> None:
    nowhere = f"nats://127.0.0.1:{free_port()}"
    s = nats_server("ua", nats_url=nowhere, caught_up=False)
    s.wait_log("NATS unavailable: cannot reach NATS at " + nowhere)
    reply = http_publish(s.ports["http"], publish_request("h", table("t", [["h", 1]])))
    assert reply["response_op"] == "error"
    assert "NATS unavailable" in reply["error_message"]
    assert http_query(s.ports["http"], "SELECT 1")["response_op"] == "result_table"
    ready = http_request(s.ports["http"], "GET", "/-/ready")
    assert ready.status == 503 and b"NATS unavailable: cannot reach NATS" in ready.body


def test_nats_gone_later_keeps_the_last_snapshot_served(
    nats_server: Callable[..., QasinoProcess], single_node: NatsNode
) -> None:
    s = nats_server("la", "--nats-replicas", "1", nats_url=single_node.url)
    ok(http_publish(s.ports["http"], publish_request("h", table("p", [["h", 1]]), persist=1)))
    poll_until(lambda: served(s, "SELECT * FROM p")[1], 15, "p served")
    assert value(scrape(s.ports["http"]), "qasino_nats_up") == 1
    single_node.kill()
    s.wait_log("NATS unavailable: disconnected from NATS")
    assert value(scrape(s.ports["http"]), "qasino_nats_up") == 0
    ready = http_request(s.ports["http"], "GET", "/-/ready")
    assert ready.status == 503 and b"NATS unavailable: disconnected" in ready.body, ready
    g1, rows = served(s, "SELECT host, n FROM p")
    assert rows == [["h", "1"]]
    reply = http_publish(s.ports["http"], publish_request("h2", table("p", [["h2", 1]])))
    assert "NATS unavailable" in reply.get("error_message", ""), reply
    # Without stream time no generation is cut: the last snapshot stays.
    assert served(s, "SELECT host, n FROM p") == (g1, rows)
    single_node.start()
    s.wait_log("reconnected to NATS", timeout=20)
    poll_until(
        lambda: http_request(s.ports["http"], "GET", "/-/ready").status == 200, 15, "ready again"
    )
    ok(http_publish(s.ports["http"], publish_request("h3", table("q", [["h3", 3]]))))
    poll_until(lambda: served(s, "SELECT host FROM q")[1] == [["h3"]], 15, "q after reconnect")


def stream_first_seq(url: str, stream: str = "QASINO") -> int:
    import asyncio

    import nats

    async def get() -> int:
        nc = await nats.connect(servers=[url])
        try:
            info = await nc.jetstream().stream_info(stream)
            return int(info.state.first_seq)
        finally:
            await nc.close()

    return asyncio.run(get())


def test_static_and_persist_outlive_the_streams_age_limit(
    nats_server: Callable[..., QasinoProcess], single_node: NatsNode
) -> None:
    """QASINO keeps messages 3 s here; the last static/persist publish per
    identity and table is kept in QASINO_KEEP, and a persisted table that
    its identity ended is not brought back."""
    flags = ("--nats-replicas", "1", "--nats-max-age", "3")
    a = nats_server("ra", *flags, nats_url=single_node.url)
    port = a.ports["http"]
    ok(http_publish(port, publish_request("h1", table("rs", [["st", 1]]), static=1)))
    ok(http_publish(port, publish_request("h1", table("rp", [["h1", 1]]), persist=1)))
    ok(http_publish(port, publish_request("h2", table("rp", [["h2", 2]]), persist=1)))
    poll_until(lambda: len(served(a, "SELECT * FROM rp")[1]) == 2, 15, "rp on a")
    ok(http_publish(port, publish_request("h2", table("rp", [["h2", 3]]))))  # ends h2's persist
    first = stream_first_seq(single_node.url)
    poll_until(lambda: stream_first_seq(single_node.url) > first + 5, 20, "old messages to expire")
    b = nats_server("rb", *flags, nats_url=single_node.url)
    b.wait_log("restored 2 static/persist publishes")
    for sql in ("SELECT host, n FROM rp ORDER BY host", "SELECT host, n FROM rs"):
        g, ra, rb = same_generation(a, b, sql)
        assert ra == rb, (sql, ra, rb)
    assert served(b, "SELECT host, n FROM rp ORDER BY host")[1] == [["h1", "1"]]
    assert served(b, "SELECT host, n FROM rs")[1] == [["st", "1"]]

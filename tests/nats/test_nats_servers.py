"""Qasino servers on a real 3-node NATS JetStream cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.e2e.conftest import http_publish, http_query, make_table, publish_request
from tests.server_process import QasinoProcess, poll_until

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
    nats_server: Callable[..., QasinoProcess],
) -> None:
    a = nats_server("qa")
    b = nats_server("qb")
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

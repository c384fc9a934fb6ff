"""The machine's ceilings, measured in the same run as the figures."""

from __future__ import annotations

from bench.harness import BareServer, Scale, Workers, plan_timeout
from bench.loadgen import LoadPlan, run_load
from bench.probes import encode_ceiling, raw_insert
from bench.report import Results
from bench.workload import tablenames

# The body and concurrency of the HTTP target: 16 publishers, 100-row tables.
BARE_PUBLISHERS = 16
BARE_ROWS = 100
WARMUP_S = 0.2
CEILING_KEYS = (
    "raw_rows_per_s",
    "bare_http_req_per_s",
    "bare_zmq_msg_per_s",
    "encode_ceiling_rows_per_s",
)
ENCODE_ROWS = 100_000  # the query phase's table


def measure_encode(workers: Workers, scale: Scale, results: Results) -> None:
    """``encode_ceiling_rows_per_s``: apsw fetching the 100,000-row table and
    orjson encoding it, in one process (no server, no HTTP)."""
    for _ in range(scale.rounds):
        results.add("encode_ceiling_rows_per_s", workers.call(encode_ceiling, ENCODE_ROWS))


def measure_raw(workers: Workers, scale: Scale, results: Results) -> None:
    """``raw_rows_per_s``: one executemany transaction into a generation-like file."""
    for _ in range(scale.rounds):
        results.add("raw_rows_per_s", workers.call(raw_insert, scale.raw_rows))
    results.details["raw_rows_per_round"] = scale.raw_rows


def bare_plan(transport: str, port: int, duration_s: float) -> LoadPlan:
    return LoadPlan(
        transport=transport,
        port=port,
        publishers=BARE_PUBLISHERS,
        rows=BARE_ROWS,
        tables=tablenames("bare", 10),
        identity_prefix="bare",
        hosts=10**9,
        duration_s=duration_s,
        drain_s=10.0,
    )


def measure_bare(workers: Workers, scale: Scale, results: Results, transport: str) -> None:
    """``bare_http_req_per_s`` / ``bare_zmq_msg_per_s``: the same generator
    against a server that only parses the JSON and acks."""
    key = {"http": "bare_http_req_per_s", "zmq": "bare_zmq_msg_per_s"}[transport]
    server = BareServer(transport)
    with server as port:
        results.details["bare_parser"] = server.parser
        workers.call(run_load, bare_plan(transport, port, WARMUP_S))
        for _ in range(scale.rounds):
            plan = bare_plan(transport, port, scale.bare_s)
            result = workers.call(run_load, plan, timeout_s=plan_timeout(plan))
            results.add(key, result.acked / result.elapsed_s)
            results.details.setdefault("generator_cpu_share", {}).setdefault(key, []).append(
                round(result.cpu_share, 2)
            )
            if result.errors or result.timed_out:
                results.notes.append(
                    f"{key}: {result.errors} errors, {result.timed_out} timed out "
                    f"({result.error_samples[:1]})"
                )

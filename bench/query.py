"""Query figures: latency under ingest, and a large JSON result.

A merged table of ``query_rows`` rows (100 identities x 1,000 rows) is
published into the first generation; once its snapshot is served, every
round runs a query loop (the filtered aggregate and ``SHOW tables;`` in
turn, back to back) while a second worker publishes 100-row tables over
HTTP at half the measured ``http_ingest_tables_per_s["16x100"]``. Then the
whole table is fetched as the JSON result shape. All of it happens inside
that one snapshot's generation, which is sized to hold it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any, Optional

from bench.daemon import BenchError, Daemon
from bench.harness import Scale, Workers, plan_timeout
from bench.loadgen import LoadPlan, run_load
from bench.probes import QueryLoop, fetch_json, fetch_many, query_loop
from bench.report import Results
from bench.workload import tablenames

TABLE = "qbench"
TABLE_ROWS = 1000  # rows per publish of the merged table
AGGREGATE = (
    f"SELECT datacenter, count(*), sum(frobs), avg(load) FROM {TABLE} "
    "WHERE stat_id % 7 = 3 AND load > 0.25 GROUP BY datacenter ORDER BY datacenter"
)
STATEMENTS = (AGGREGATE, "SHOW tables;")
INGEST_PUBLISHERS = 16
INGEST_ROWS = 100
START_LEAD_S = 0.2
ROUND_OVERHEAD_S = 0.4  # start lead and handing results back
FETCH_S = 0.5  # a generous time for one 100,000-row fetch
SAFETY_S = 0.3
CALIBRATE_S = 1.0
MARGIN = 1.3  # the generation is this much longer than the rounds need


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


GAP_PROBE = ("SELECT 1",)
GAP_FETCHES = 2  # per round: the legacy JSON and arrays, this many times each


def generation_for(
    scale: Scale,
    want_latency: bool,
    want_json: bool,
    calibrating: bool,
    want_arrays: bool = False,
    want_gap: bool = False,
) -> float:
    """Long enough to load the table, then run every round in its snapshot."""
    seconds = 1.0 + scale.query_rows / 200_000 + (CALIBRATE_S + 0.5 if calibrating else 0.0)
    if want_latency:
        seconds += scale.rounds * (scale.query_s + ROUND_OVERHEAD_S)
    if want_json:
        seconds += scale.json_fetches * FETCH_S
    if want_arrays:
        seconds += scale.json_fetches * FETCH_S
    if want_gap:
        seconds += scale.rounds * (2 * GAP_FETCHES * FETCH_S + ROUND_OVERHEAD_S)
    return round(seconds * MARGIN, 1)


def load_table(workers: Workers, daemon: Daemon, rows: int) -> None:
    hosts = max(1, rows // TABLE_ROWS)
    plan = LoadPlan(
        transport="zmq",
        port=daemon.ports["zmq"],
        publishers=4,
        rows=TABLE_ROWS,
        tables=(TABLE,),
        identity_prefix="qhost",
        hosts=hosts,
        duration_s=120.0,
    )
    result = workers.call(run_load, plan, timeout_s=plan_timeout(plan))
    if result.acked != hosts:
        raise BenchError(f"loading {TABLE}: {result.acked} of {hosts} publishes acked")


def calibrate(workers: Workers, daemon: Daemon) -> float:
    """Tables/s of HTTP 16x100 publishing, when the ingest matrix did not run."""
    plan = ingest_plan(daemon, "calib", 0.0, CALIBRATE_S)
    result = workers.call(run_load, plan, timeout_s=plan_timeout(plan))
    return result.acked / result.elapsed_s


def ingest_plan(daemon: Daemon, prefix: str, rate: float, duration_s: float) -> LoadPlan:
    return LoadPlan(
        transport="http",
        port=daemon.ports["http"],
        publishers=INGEST_PUBLISHERS,
        rows=INGEST_ROWS,
        tables=tablenames(prefix, 10),
        identity_prefix=f"{prefix}_h",
        hosts=10**9,
        duration_s=duration_s,
        rate=rate,
    )


def measure_queries(
    workers: Workers,
    scale: Scale,
    results: Results,
    capacity: Optional[float],
    want_latency: bool = True,
    want_json: bool = True,
    want_arrays: bool = False,
    want_gap: bool = False,
) -> None:
    calibrating = want_latency and capacity is None
    generation_s = generation_for(
        scale, want_latency, want_json, calibrating, want_arrays, want_gap
    )
    with Daemon(generation_s) as daemon:
        load_table(workers, daemon, scale.query_rows)
        if calibrating:
            capacity = calibrate(workers, daemon)
            results.notes.append(
                f"query ingest load: capacity calibrated here at {capacity:.0f} tables/s"
            )
        served = daemon.wait_gensig()
        ends_at = served.received + daemon.generation_s - SAFETY_S
        _, counts = daemon.table_counts([TABLE])
        if counts.get(TABLE) != scale.query_rows:
            raise BenchError(f"{TABLE} holds {counts.get(TABLE)} rows, not {scale.query_rows}")
        if want_latency:
            assert capacity is not None
            for round_ in range(scale.rounds):
                if not time_left(results, ends_at, scale.query_s + ROUND_OVERHEAD_S, "latency"):
                    break
                latency_round(workers, daemon, scale, results, capacity / 2, round_)
        if want_json:
            for _ in range(scale.json_fetches):
                if not time_left(results, ends_at, FETCH_S, "JSON"):
                    break
                measure_json(workers, daemon, scale, results)
        if want_arrays:
            for _ in range(scale.json_fetches):
                if not time_left(results, ends_at, FETCH_S, "arrays"):
                    break
                measure_arrays(workers, daemon, scale, results)
        if want_gap:
            for _ in range(scale.rounds):
                needed = 2 * GAP_FETCHES * FETCH_S + ROUND_OVERHEAD_S
                if not time_left(results, ends_at, needed, "reactor gap"):
                    break
                measure_encode_gap(workers, daemon, scale, results)


def time_left(results: Results, ends_at: float, needed_s: float, what: str) -> bool:
    """Is there time for one more round before the snapshot is replaced?"""
    if time.monotonic() + needed_s <= ends_at:
        return True
    results.notes.append(
        f"query phase: generation too short for every {what} round (slow machine?)"
    )
    return False


def latency_round(
    workers: Workers, daemon: Daemon, scale: Scale, results: Results, rate: float, round_: int
) -> None:
    start_at = time.monotonic() + START_LEAD_S
    plan = ingest_plan(daemon, f"qi{round_}", rate, scale.query_s)
    ingest = workers.submit(run_load, plan, start_at)
    loop = workers.submit(
        query_loop, daemon.ports["http"], STATEMENTS, scale.query_s, start_at
    ).result(timeout=scale.query_s + 60)
    load = ingest.result(timeout=plan_timeout(plan))
    latencies = [s.ms for s in loop.samples if s.ok]
    if not latencies or loop.errors:
        raise BenchError(f"query loop failed: {loop.errors[:1]}")
    results.add("query_p50_ms", percentile(latencies, 50))
    results.add("query_p99_ms", percentile(latencies, 99))
    results.details.setdefault("query_rounds", []).append(
        round_details(loop, load.acked / load.elapsed_s, rate)
    )


def round_details(loop: QueryLoop, achieved: float, target_rate: float) -> dict[str, Any]:
    per_statement = {}
    for index, name in enumerate(("aggregate", "show_tables")):
        ms = [s.ms for s in loop.samples if s.ok and s.statement == index]
        if ms:
            per_statement[name] = {
                "n": len(ms),
                "p50_ms": round(percentile(ms, 50), 2),
                "p99_ms": round(percentile(ms, 99), 2),
                "max_ms": round(max(ms), 2),
            }
    return {
        "ingest_tables_per_s": round(achieved, 1),
        "ingest_target_per_s": round(target_rate, 1),
        "queries": per_statement,
    }


def measure_json(workers: Workers, daemon: Daemon, scale: Scale, results: Results) -> None:
    """``query_json_rows_per_s``: the whole table as the JSON result shape."""
    [fetch] = workers.call(fetch_json, daemon.ports["http"], f"SELECT * FROM {TABLE}", 1)
    if fetch.rows != scale.query_rows:
        raise BenchError(f"JSON result had {fetch.rows} rows, not {scale.query_rows}")
    results.add("query_json_rows_per_s", fetch.rows / fetch.seconds)
    results.details["query_json_mb"] = round(fetch.size_bytes / 1e6, 2)


def measure_arrays(workers: Workers, daemon: Daemon, scale: Scale, results: Results) -> None:
    """``query_arrays_rows_per_s``: the whole table in the typed arrays shape."""
    [fetch] = workers.call(fetch_json, daemon.ports["http"], f"SELECT * FROM {TABLE}", 1, "arrays")
    if fetch.rows != scale.query_rows:
        raise BenchError(f"arrays result had {fetch.rows} rows, not {scale.query_rows}")
    results.add("query_arrays_rows_per_s", fetch.rows / fetch.seconds)
    results.details["query_arrays_mb"] = round(fetch.size_bytes / 1e6, 2)


def measure_encode_gap(workers: Workers, daemon: Daemon, scale: Scale, results: Results) -> None:
    """``query_encode_reactor_gap_ms``: while one worker fetches the whole
    table (legacy JSON, then arrays, GAP_FETCHES times each), the other runs
    ``SELECT 1`` back to back; the figure is the longest time between two of
    its answers inside the fetches' window (a blocked reactor answers nothing)."""
    port = daemon.ports["http"]
    start_at = time.monotonic() + START_LEAD_S
    loop_s = 2 * GAP_FETCHES * FETCH_S
    fetching = workers.submit(
        fetch_many, port, f"SELECT * FROM {TABLE}", ("json", "arrays"), GAP_FETCHES, start_at
    )
    loop = workers.submit(query_loop, port, GAP_PROBE, loop_s + START_LEAD_S, start_at).result(
        timeout=loop_s + 60
    )
    began, ended, fetches = fetching.result(timeout=60)
    if loop.errors or not loop.samples:
        raise BenchError(f"reactor probe failed: {loop.errors[:1]}")
    if any(f.rows != scale.query_rows for f in fetches):
        raise BenchError("reactor gap: a fetch returned the wrong row count")
    answers = [s.finished for s in loop.samples if s.ok]
    window_end = min(ended, answers[-1])
    inside = [t for t in answers if began <= t <= window_end]
    before = [t for t in answers if t < began]
    points = ([before[-1]] if before else [began]) + inside
    gaps = [(b - a) * 1000 for a, b in zip(points, points[1:])]
    if not gaps:
        raise BenchError("reactor probe: no answers while the result was fetched")
    results.add("query_encode_reactor_gap_ms", max(gaps))
    results.details.setdefault("encode_gap_rounds", []).append(
        {
            "probe_answers": len(inside),
            "median_gap_ms": round(percentile(gaps, 50), 2),
            "max_gap_ms": round(max(gaps), 2),
            "fetch_window_s": round(ended - began, 3),
            "probe_covered_window": answers[-1] >= ended,
        }
    )


REACTOR_LAG_FETCHES = 2
REACTOR_LAG_TIMEOUT_S = 180.0


def measure_reactor_busy(scale: Scale, results: Results) -> None:
    """``reactor_busy_gap_ms``: ``python -m bench.reactor_lag`` per round (the
    real server in a process of its own, probed by a 1 ms LoopingCall inside
    it, while a ``query_rows`` x 5 result is fetched in every shape); the
    figure is the longest gap during which the server process was busy
    (CPU >= 80% of the gap), over all shapes. Gaps with the process waiting
    for a core are in ``details.reactor_lag_rounds``."""
    for _ in range(scale.rounds):
        command = [sys.executable, "-m", "bench.reactor_lag"]
        command += ["--rows", str(scale.query_rows), "--fetches", str(REACTOR_LAG_FETCHES)]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=REACTOR_LAG_TIMEOUT_S
        )
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            raise BenchError(f"bench.reactor_lag failed: {done.stderr.strip()[-300:]}")
        report = json.loads(lines[-1])
        busy = [shape["longest_busy_gap_ms"] or 0.0 for shape in report.values()]
        results.add("reactor_busy_gap_ms", max(busy))
        results.details.setdefault("reactor_lag_rounds", []).append(
            {
                fmt: [shape["longest_busy_gap_ms"], shape["longest_gap_ms"]]
                for fmt, shape in report.items()
            }
        )

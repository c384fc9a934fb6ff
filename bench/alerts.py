"""Alert figures: what evaluating 200 alerts costs, and that it delays
neither rotations nor queries.

One server (``-g`` = ``scale.alerts_generation_s``) with an alerts file of
200 rules, each a full scan of a 100,000-row table (``qbench``, the query
phase's table, published once as a static table so every snapshot holds it
without carrying rows at rotation) that returns one firing instance (200
in all). The server logs each evaluation's time; ``alerts_eval_ms`` is
that time (all 200 rules, on the server's low-priority background
readers, one rule at a time unless one is slow).

Each round runs two back-to-back query loops over HTTP across two
generation boundaries while the alerts evaluate:

* ``alerts_query_p99_ms``: p99 latency of the query phase's statements
  (the aggregate over ``qbench`` and ``SHOW tables;`` in turn);
* ``alerts_rotation_query_pause_ms``: in a loop of ``SELECT
  generation_number FROM qasino_server_info``, the longest gap between two
  answers from 0.3 s before each generation signal to 0.15 s after it.

``details.alerts`` gives per round the evaluations seen, their times and
how much of the window they covered.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from bench.daemon import BenchError, Daemon, Gensig
from bench.harness import Scale, Workers
from bench.probes import query_loop
from bench.query import AGGREGATE, TABLE, percentile
from bench.report import Results
from bench.workload import COLUMN_NAMES, COLUMN_TYPES, make_rows

NR_ALERTS = 200
TABLE_ROWS = 100_000
BEFORE_S = 0.3
AFTER_S = 0.15
STATEMENTS = (AGGREGATE, "SHOW tables;")
GENERATION_QUERY = "SELECT generation_number FROM qasino_server_info"
EVAL_LINE = re.compile(rb"evaluated (\d+) alerts of generation (\d+) in ([0-9.]+) ms")


def alerts_yaml(count: int = NR_ALERTS) -> str:
    rules = []
    for i in range(count):
        rules.append(
            f"- alert: Bench{i}\n"
            f"  sql: SELECT datacenter, count(*) AS n, max(load) AS peak FROM {TABLE}"
            f" WHERE stat_id % {count} = {i} AND load >= 0 GROUP BY datacenter\n"
            "  key: [datacenter]\n"
            "  labels: {severity: info}\n"
            '  annotations: {summary: "{datacenter}: {n} rows, peak {peak}"}\n'
        )
    return "".join(rules)


def evaluations(daemon: Daemon) -> list[tuple[int, int, float]]:
    """(alerts, generation, ms) of every evaluation the server logged."""
    text = daemon.log_path.read_bytes()
    return [(int(a), int(g), float(ms)) for a, g, ms in EVAL_LINE.findall(text)]


def measure_alerts(workers: Workers, scale: Scale, results: Results) -> None:
    generation_s = scale.alerts_generation_s
    server = Daemon(generation_s, extra_args=["--alerts-file", "alerts.yaml"])
    rules_file = server.tmp / "alerts.yaml"
    rules_file.write_text("[]\n")
    with server as daemon:
        rows = [list(r) for r in make_rows(TABLE_ROWS)]
        reply = daemon.request(
            {
                "op": "add_table_data",
                "identity": "alertbench",
                "static": 1,
                "table": {
                    "tablename": TABLE,
                    "column_names": list(COLUMN_NAMES),
                    "column_types": list(COLUMN_TYPES),
                    "rows": rows,
                },
            },
            timeout_s=120,
        )
        if reply.get("response_op") != "ok":
            raise BenchError(f"loading {TABLE}: {reply}")
        daemon.wait_gensig()
        count = int(daemon.query(f"SELECT count(*) FROM {TABLE}")[0][0])
        if count != TABLE_ROWS:
            raise BenchError(f"{TABLE} holds {count} rows, not {TABLE_ROWS}")
        # The same loops with no alerts, in the same server: the machine's
        # own figures for comparison (details.alerts_baseline).
        baseline = loops(workers, daemon)
        results.details["alerts_baseline"] = {
            "query_p99_ms": round(percentile(baseline.latencies, 99), 2),
            "rotation_query_pause_ms": round(max(baseline.pauses), 2),
        }
        rules_file.write_text(alerts_yaml())
        # The file is read at the next snapshot; wait for a full evaluation.
        daemon.wait_gensig()
        loaded = daemon.wait_gensig().generation
        for round_ in range(scale.alerts_rounds):
            alerts_round(workers, daemon, results, round_, loaded)
        firing = daemon.query("SELECT count(*) FROM qasino_server_alerts WHERE state = 'firing'")
        results.details.setdefault("alerts_firing_instances", int(firing[0][0]))


@dataclass
class Loops:
    latencies: list[float]
    pauses: list[float]
    signals: list[Gensig]
    duration_s: float


def loops(workers: Workers, daemon: Daemon) -> Loops:
    """Both query loops across two generation boundaries."""
    duration_s = 2 * daemon.generation_s + 2 * AFTER_S
    start_at = time.monotonic() + 0.05
    loop_future = workers.submit(query_loop, daemon.ports["http"], STATEMENTS, duration_s, start_at)
    pause_future = workers.submit(
        query_loop, daemon.ports["http"], (GENERATION_QUERY,), duration_s, start_at
    )
    signals = []
    deadline = start_at + duration_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        signal_ = daemon.next_gensig(remaining)
        if signal_ is not None:
            signals.append(signal_)
    loop = loop_future.result(timeout=duration_s + 60)
    pause_loop = pause_future.result(timeout=duration_s + 60)
    if loop.errors or not loop.samples or pause_loop.errors:
        raise BenchError(f"alerts query loop failed: {(loop.errors + pause_loop.errors)[:1]}")
    latencies = [s.ms for s in loop.samples if s.ok]
    done = sorted(s.finished for s in pause_loop.samples if s.ok)
    pauses = []
    for signal_ in signals:
        window = [t for t in done if signal_.received - BEFORE_S <= t <= signal_.received + AFTER_S]
        gaps = [b - a for a, b in zip(window, window[1:])]
        if gaps:
            pauses.append(max(gaps) * 1000.0)
    if not pauses:
        raise BenchError("alerts: no generation signal inside the query loop's window")
    return Loops(latencies, pauses, signals, duration_s)


def alerts_round(
    workers: Workers, daemon: Daemon, results: Results, round_: int, loaded: int
) -> None:
    seen_before = len(evaluations(daemon))
    measured = loops(workers, daemon)
    latencies, pauses, duration_s = measured.latencies, measured.pauses, measured.duration_s
    results.add("alerts_query_p99_ms", percentile(latencies, 99))
    results.add("alerts_rotation_query_pause_ms", max(pauses))

    def finished() -> list[float]:
        return [
            ms for n, g, ms in evaluations(daemon)[seen_before:] if g >= loaded and n == NR_ALERTS
        ]

    # An evaluation longer than the window finishes after it: wait for it.
    give_up = time.monotonic() + 3 * daemon.generation_s
    while not (this_round := finished()) and time.monotonic() < give_up:
        daemon.check_alive()
        time.sleep(0.1)
    if not this_round:
        raise BenchError(f"alerts: no evaluation of {NR_ALERTS} alerts finished in the round")
    numbers = {s.generation for s in measured.signals}
    for ms in this_round:
        results.add("alerts_eval_ms", ms)
    detail: dict[str, Any] = {
        "generations": sorted(numbers),
        "eval_ms": [round(ms, 1) for ms in this_round],
        "eval_share_of_window": round(sum(this_round) / 1000.0 / duration_s, 2),
        "queries": len(latencies),
        "query_p50_ms": round(percentile(latencies, 50), 2),
        "query_max_ms": round(max(latencies), 2),
        "rotation_pauses_ms": [round(p, 2) for p in pauses],
        "skipped_generations": daemon.log_path.read_bytes().count(b"not evaluated: the previous"),
    }
    results.details.setdefault("alerts", []).append(detail)

"""History figures (``--history N``, docs/fleet.md): what keeping the last N
snapshots queryable as ``history.T`` costs.

Two servers, one after the other, the same way: one without history (the
baseline), one with ``--history N`` (N = 10). Round r loads generation r with
one table of ``rotation_big_rows`` rows (1,000,000; 100,000 in --quick), merged
from publishes of 10,000 rows over ZeroMQ, then probes the generation
boundary as the rotation phase does (bench/rotation.py): a 1-row probe
publisher about once per millisecond and a tight query loop.

* ``history_rotation_query_pause_ms``: the longest gap between two query
  answers around a boundary, with history on (the target: < 20 ms), the
  same query loop as ``rotation_query_pause_ms`` (the baseline server's
  pauses are in ``details.history.off.pause_ms``). After each round one
  ``SELECT count(*) FROM history.qasino_server_info`` times the first
  history statement on the new snapshot (it attaches the N-1 older files
  and makes the view): ``details.history.on.history_query_ms``.
* ``history_ingest_ratio``: the writer's throughput with history / without.
  Per round, rows / (time to load them + the rotation's ack gap: what the
  one writer thread spends per generation). ``details.history`` has the
  load times and rotation times of both servers.
* ``history_disk_mb_per_generation``: the generation files on disk once the
  window holds N snapshots (the N kept plus the one being written), divided
  by N + 1; ``details.history.disk_mb`` is the total after every round (it
  grows by one generation a round, then stays).
* ``history_rss_mb``: the server's RSS once the window is full, less its RSS
  at start; per-round readings in ``details.history.rss_mb`` (it must not
  grow with the rows kept: they stay in the files).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from bench.daemon import BenchError, Daemon, rss_mb
from bench.harness import Scale, Workers
from bench.report import Results
from bench.rotation import BIG_TABLE, BIG_TABLE_PUBLISH_ROWS, Scenario, boundary_round

HISTORY_N = 10
BASELINE_ROUNDS = 5


def history_scenario(scale: Scale) -> Scenario:
    hosts = max(1, scale.rotation_big_rows // BIG_TABLE_PUBLISH_ROWS)
    return Scenario(
        f"1x{hosts * BIG_TABLE_PUBLISH_ROWS}",
        BIG_TABLE,
        BIG_TABLE_PUBLISH_ROWS,
        hosts,
        4,
        scale.rotation_big_generation_s,
    )


HISTORY_QUERY = "SELECT count(*) FROM history.qasino_server_info"


def generation_files(daemon: Daemon) -> tuple[int, int]:
    """(bytes, count) of the generation files (WAL included) on disk."""
    folder = daemon.tmp / "db" / "generations"
    total, count = 0, 0
    for entry in os.scandir(folder):
        total += entry.stat().st_size
        count += entry.name.endswith(".sqlite")
    return total, count


def measure_history(workers: Workers, scale: Scale, results: Results) -> None:
    scenario = history_scenario(scale)
    detail: dict[str, Any] = {"case": scenario.case, "n": HISTORY_N}
    results.details["history"] = detail
    off = run_server(workers, scenario, [], BASELINE_ROUNDS, detail, "off")
    rounds = HISTORY_N + 2  # the window fills, then the oldest goes
    on = run_server(workers, scenario, ["--history", str(HISTORY_N)], rounds, detail, "on")
    for pause in on["pause_ms"]:
        results.add("history_rotation_query_pause_ms", pause)
    rate_off = sorted(on_rate(off))[len(off["load_s"]) // 2]
    for rate in on_rate(on):
        results.add("history_ingest_ratio", rate / rate_off)
    for size, files in zip(on["disk_mb"], on["files"]):
        if files >= HISTORY_N + 1:
            results.add("history_disk_mb_per_generation", size / files)
    for rss, files in zip(on["rss_mb"], on["files"]):
        if files >= HISTORY_N + 1:
            results.add("history_rss_mb", rss - on["rss_idle_mb"])
    if scenario.total_rows != 1_000_000:
        results.notes.append(
            f"history figures are for {scenario.case} (scaled down, --quick): indicative only"
        )


def on_rate(run: dict[str, Any]) -> list[float]:
    """Rows per second of writer time (load + rotation) per round."""
    return [
        run["rows"] / (load + rotation / 1000.0)
        for load, rotation in zip(run["load_s"], run["rotation_ms"])
    ]


def run_server(
    workers: Workers,
    scenario: Scenario,
    extra_args: list[str],
    rounds: int,
    detail: dict[str, Any],
    name: str,
) -> dict[str, Any]:
    run: dict[str, Any] = {
        "history": bool(extra_args),
        "rows": scenario.total_rows,
        "load_s": [],
        "rotation_ms": [],
        "pause_ms": [],
        "disk_mb": [],
        "files": [],
        "rss_mb": [],
        "history_query_ms": [],
    }
    detail[name] = run
    with Daemon(scenario.generation_s, extra_args) as daemon:
        run["rss_idle_mb"] = round(rss_mb(daemon.pid), 1)
        boundary = daemon.ready_at + scenario.generation_s
        failures = 0
        for round_ in range(rounds):
            try:
                one_round(workers, daemon, scenario, run, boundary)
            except BenchError as e:
                # A busy machine: a load that ran into the boundary spoils
                # this round only. Skip it and go on from the next tick.
                failures += 1
                run.setdefault("skipped", []).append(f"round {round_}: {e}")
                if failures > rounds // 2:
                    raise
                boundary = resync(daemon, scenario.generation_s)
                continue
            size, files = generation_files(daemon)
            run["disk_mb"].append(round(size / 2**20, 1))
            run["files"].append(files)
            run["rss_mb"].append(round(rss_mb(daemon.pid), 1))
            boundary += scenario.generation_s
    return run


def resync(daemon: Daemon, generation_s: float) -> float:
    """After a spoiled round: drop queued signals, wait for a fresh one, and
    return the next boundary (a whole generation ahead)."""
    while daemon.next_gensig(0) is not None:
        pass
    daemon.wait_gensig()
    ticks = math.ceil((time.monotonic() - daemon.ready_at) / generation_s)
    return daemon.ready_at + ticks * generation_s


def one_round(
    workers: Workers,
    daemon: Daemon,
    scenario: Scenario,
    run: dict[str, Any],
    boundary: float,
) -> None:
    # The same probe identities every round (each round spans a boundary,
    # so none publishes twice into one generation): with a fresh set per
    # round the servers' identity counts grew with the round count, and the
    # run with history (12 rounds) paid for 2.4x the identities of the
    # baseline (5 rounds) at every switch.
    measured = boundary_round(workers, daemon, scenario, boundary, "hprobe_")
    if run["history"]:
        # The first history statement on the new snapshot: it attaches the
        # window's files and makes the TEMP view on its connection.
        started = time.monotonic()
        daemon.query(HISTORY_QUERY)
        run["history_query_ms"].append(round((time.monotonic() - started) * 1000.0, 2))
    run["load_s"].append(round(measured.loaded.elapsed_s, 3))
    run["rotation_ms"].append(round(measured.gap_s * 1000.0, 2))
    run["pause_ms"].append(round(measured.pause_s * 1000.0, 2))

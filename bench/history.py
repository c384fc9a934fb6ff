"""History figures (``--history N``, docs/fleet.md): what keeping the last N
snapshots queryable as ``history.T`` costs.

Two servers run side by side, the same way: one without history (the
baseline), one with ``--history N`` (N = 10), with generations of twice
``rotation_big_generation_s`` (16 s) whose boundaries fall half a
generation apart. Rounds alternate between them: a round on one server
loads its next generation with one table of ``rotation_big_rows`` rows
(1,000,000; 100,000 in --quick), merged from publishes of 10,000 rows over
ZeroMQ, then probes the generation boundary as the rotation phase does
(bench/rotation.py): a 1-row probe publisher about once per millisecond
and a tight query loop. Each server gets N + 2 rounds, so round i of one
and round i of the other run within one generation of each other: a
machine whose speed drifts over minutes (this 2-core VM's does, by up to
2x) slows both of a pair alike.

* ``history_rotation_query_pause_ms``: the longest gap between two query
  answers around a boundary, with history on (the target: < 20 ms), the
  same query loop as ``rotation_query_pause_ms`` (the baseline server's
  pauses are in ``details.history.off.pause_ms``). After each round one
  ``SELECT count(*) FROM history.qasino_server_info`` times the first
  history statement on the new snapshot (it attaches the N-1 older files
  and makes the view): ``details.history.on.history_query_ms``.
* ``history_ingest_ratio``: the writer's throughput with history / without,
  one figure per pair of rounds. Per round, rows / (time to load them +
  the rotation's ack gap: what the one writer thread spends per
  generation). ``details.history`` has the load times and rotation times
  of both servers.
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
from dataclasses import replace
from typing import Any

from bench.daemon import BenchError, Daemon, rss_mb
from bench.harness import Scale, Workers
from bench.loadgen import wait_until
from bench.report import Results
from bench.rotation import BIG_TABLE, BIG_TABLE_PUBLISH_ROWS, Scenario, boundary_round

HISTORY_N = 10


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
    scenario = replace(history_scenario(scale), generation_s=2 * scale.rotation_big_generation_s)
    detail: dict[str, Any] = {"case": scenario.case, "n": HISTORY_N}
    results.details["history"] = detail
    rounds = HISTORY_N + 2  # the window fills, then the oldest goes
    before = time.monotonic()
    with Daemon(scenario.generation_s, []) as off_daemon:
        # Start the second server so that its boundaries fall between the
        # first one's (its start-up takes about as long as the first one's).
        startup = max(0.0, off_daemon.ready_at - before)
        wait_until(off_daemon.ready_at + scenario.generation_s / 2 - startup)
        with Daemon(scenario.generation_s, ["--history", str(HISTORY_N)]) as on_daemon:
            off = new_run(off_daemon, scenario, False)
            on = new_run(on_daemon, scenario, True)
            detail["off"], detail["on"] = off, on
            for round_ in range(rounds):
                for daemon, run in ((off_daemon, off), (on_daemon, on)):
                    run_round(workers, daemon, scenario, run, round_)
    for pause in on["pause_ms"]:
        results.add("history_rotation_query_pause_ms", pause)
    rate_off, rate_on = on_rate(off), on_rate(on)
    for round_ in range(rounds):
        if round_ in rate_off and round_ in rate_on:
            results.add("history_ingest_ratio", rate_on[round_] / rate_off[round_])
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


def on_rate(run: dict[str, Any]) -> dict[int, float]:
    """Rows per second of writer time (load + rotation), by round."""
    return {
        round_: run["rows"] / (load + rotation / 1000.0)
        for round_, load, rotation in zip(run["rounds"], run["load_s"], run["rotation_ms"])
    }


def new_run(daemon: Daemon, scenario: Scenario, history_on: bool) -> dict[str, Any]:
    return {
        "history": history_on,
        "rows": scenario.total_rows,
        "rounds": [],
        "load_s": [],
        "rotation_ms": [],
        "pause_ms": [],
        "disk_mb": [],
        "files": [],
        "rss_mb": [],
        "history_query_ms": [],
        "rss_idle_mb": round(rss_mb(daemon.pid), 1),
        "failures": 0,
    }


# A round needs its load done this long before the boundary it measures
# (the load takes 1-2 s on this machine, the probes start after it).
ROUND_LEAD = 0.25  # of a generation


def run_round(
    workers: Workers, daemon: Daemon, scenario: Scenario, run: dict[str, Any], round_: int
) -> None:
    """One round on ``daemon`` at its next boundary far enough ahead."""
    while daemon.next_gensig(0) is not None:
        pass  # signals of the generations the other server's round spanned
    generation_s = scenario.generation_s
    ticks = math.ceil(
        (time.monotonic() + ROUND_LEAD * generation_s - daemon.ready_at) / generation_s
    )
    boundary = daemon.ready_at + ticks * generation_s
    wait_until(boundary - generation_s + 0.2)  # the generation before has been served
    try:
        one_round(workers, daemon, scenario, run, boundary)
    except BenchError as e:
        # A busy machine: a load that ran into the boundary spoils this
        # round only.
        run["failures"] += 1
        run.setdefault("skipped", []).append(f"round {round_}: {e}")
        if run["failures"] > (HISTORY_N + 2) // 2:
            raise
        return
    run["rounds"].append(round_)
    size, files = generation_files(daemon)
    run["disk_mb"].append(round(size / 2**20, 1))
    run["files"].append(files)
    run["rss_mb"].append(round(rss_mb(daemon.pid), 1))


def one_round(
    workers: Workers,
    daemon: Daemon,
    scenario: Scenario,
    run: dict[str, Any],
    boundary: float,
) -> None:
    # The same probe identities every round (each round spans a boundary,
    # so none publishes twice into one generation): with a fresh set per
    # round the servers' identity counts grew with the round count.
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

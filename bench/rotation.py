"""Rotation figures: what a snapshot costs, and what a query client sees.

Each scenario runs on one server; round r loads generation r with the
scenario's data (``TABLESxROWS``: many tables of 100 rows, or one table of
many rows). Across the first generation boundary two workers run:

* a probe publisher: 1-row publishes over ZeroMQ, about one per
  millisecond. Publishes and the rotation share the server's one writer
  thread, so the acks stop while the snapshot is being made; the gap in the
  acks that spans the generation signal is ``rotation_ms``;
* a tight query loop (``SELECT generation_number FROM qasino_server_info``
  over HTTP, back to back); the longest gap between two answers around the
  rotation is ``rotation_query_pause_ms``.

``rss_mb_per_million_rows`` is the server's RSS (``/proc/PID/status``)
with the big table's snapshot served, less its RSS when it had just
started, per million rows: the memory a server holding that data needs,
parse buffers it keeps included.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

from bench.daemon import BenchError, Daemon, rss_mb
from bench.harness import Scale, Workers, plan_timeout
from bench.loadgen import LoadPlan, LoadResult, run_load
from bench.probes import query_loop
from bench.report import Results
from bench.workload import tablenames

PROBE_RATE = 1000.0
PROBE_TOLERANCE_S = 0.005
LEAD_S = 0.3  # probes start at least this long before the boundary
AFTER_S = 0.3  # and run this long after it
BIG_TABLE_PUBLISH_ROWS = 10_000
FULL_CASES = ("1000x100", "1x1000000")
BIG_TABLE = ("rotbig",)
GENERATION_QUERY = "SELECT generation_number FROM qasino_server_info"


@dataclass(frozen=True)
class Scenario:
    case: str
    plan_tables: tuple[str, ...]
    rows_per_publish: int
    hosts: int
    publishers: int
    generation_s: float

    @property
    def total_rows(self) -> int:
        return len(self.plan_tables) * self.rows_per_publish * self.hosts


def scenarios(scale: Scale) -> list[Scenario]:
    big_hosts = max(1, scale.rotation_big_rows // BIG_TABLE_PUBLISH_ROWS)
    return [
        Scenario(
            f"{scale.rotation_tables}x100",
            tablenames("rot", scale.rotation_tables),
            100,
            1,
            1,
            scale.rotation_generation_s,
        ),
        Scenario(
            f"1x{big_hosts * BIG_TABLE_PUBLISH_ROWS}",
            BIG_TABLE,
            BIG_TABLE_PUBLISH_ROWS,
            big_hosts,
            4,
            scale.rotation_big_generation_s,
        ),
    ]


def load_plan(daemon: Daemon, scenario: Scenario) -> LoadPlan:
    return LoadPlan(
        transport="zmq",
        port=daemon.ports["zmq"],
        publishers=scenario.publishers,
        rows=scenario.rows_per_publish,
        tables=scenario.plan_tables,
        identity_prefix="rothost",
        hosts=scenario.hosts,
        duration_s=120.0,
    )


def probe_plan(daemon: Daemon, identity_prefix: str, duration_s: float) -> LoadPlan:
    return LoadPlan(
        transport="zmq",
        port=daemon.ports["zmq"],
        publishers=1,
        rows=1,
        tables=("rotprobe",),
        identity_prefix=identity_prefix,
        hosts=10**9,
        duration_s=duration_s,
        rate=PROBE_RATE,
        record_acks=True,
        drain_s=30.0,
    )


def measure_rotation(
    workers: Workers, scale: Scale, results: Results, want_rss: bool = True
) -> None:
    results.big_rotation_case = scenarios(scale)[-1].case
    for scenario in scenarios(scale):
        try:
            measure_scenario(workers, scale, scenario, results, want_rss)
        except BenchError as e:
            results.notes.append(f"rotation {scenario.case}: {e}")
        if scenario.case not in FULL_CASES:
            results.notes.append(
                f"rotation scenario {scenario.case} is scaled down (--quick); "
                "its verdicts are indicative only"
            )


def measure_scenario(
    workers: Workers, scale: Scale, scenario: Scenario, results: Results, want_rss: bool
) -> None:
    """One server; round r loads generation r and measures boundary r."""
    with Daemon(scenario.generation_s) as daemon:
        rss_idle = rss_mb(daemon.pid)
        # Ticks are periodic from the start: boundary r is at start + r * G.
        boundary = daemon.ready_at + scenario.generation_s
        for round_ in range(scale.heavy_rounds):
            rotation_round(workers, daemon, scenario, results, round_, boundary)
            if want_rss and scenario.plan_tables == BIG_TABLE:
                served = rss_mb(daemon.pid)
                results.add(
                    "rss_mb_per_million_rows", (served - rss_idle) * 1e6 / scenario.total_rows
                )
                if scenario.total_rows != 1_000_000:  # --quick: 100,000 rows, x10
                    results.extrapolate(
                        ("rss_mb_per_million_rows", None),
                        f"x{1e6 / scenario.total_rows:g} from {scenario.total_rows:,} rows",
                    )
                results.details.setdefault("rss_mb", []).append(
                    {"idle": round(rss_idle, 1), "served": round(served, 1)}
                )
            boundary += scenario.generation_s


def rotation_round(
    workers: Workers,
    daemon: Daemon,
    scenario: Scenario,
    results: Results,
    round_: int,
    boundary: float,
) -> None:
    measured = boundary_round(workers, daemon, scenario, boundary, f"probe{round_}_")
    results.add("rotation_ms", measured.gap_s * 1000.0, scenario.case)
    results.add("rotation_query_pause_ms", measured.pause_s * 1000.0, scenario.case)
    done = measured.done
    typical = sorted(b - a for a, b in zip(done, done[1:]))
    detail: dict[str, Any] = {
        "rotation_ms": round(measured.gap_s * 1000.0, 2),
        "query_pause_ms": round(measured.pause_s * 1000.0, 2),
        "query_gap_median_ms": round(typical[len(typical) // 2] * 1000.0, 3) if typical else None,
        "queries": len(done),
        "probe_acks": measured.acks.acked,
    }
    results.details.setdefault("rotation", {}).setdefault(scenario.case, []).append(detail)


def check_loaded(loaded: LoadResult, plan: LoadPlan, boundary: float) -> None:
    expected = len(plan.tables) * plan.hosts
    if loaded.acked != expected:
        raise BenchError(f"load: {loaded.acked} of {expected} publishes acked")
    if time.monotonic() > boundary - LEAD_S:
        raise BenchError(
            "the load did not finish well before the generation boundary "
            "(slow machine? raise the rotation generation length)"
        )


def spanning_gap(times: list[float], instant: float, tolerance: float) -> Optional[float]:
    """The longest gap between consecutive times that spans ``instant``."""
    best: Optional[float] = None
    for before, after in zip(times, times[1:]):
        if before <= instant + tolerance and after >= instant - tolerance:
            gap = after - before
            best = gap if best is None else max(best, gap)
    return best


def longest_gap(times: list[float], start: float, end: float) -> float:
    gaps = [b - a for a, b in zip(times, times[1:]) if b >= start and a <= end]
    return max(gaps, default=0.0)


@dataclass(frozen=True)
class BoundaryRound:
    """What one round across a generation boundary measured."""

    loaded: LoadResult  # the scenario's load into the generation
    acks: LoadResult  # the probe publisher's
    done: list[float]  # when each query of the loop was answered, in order
    gap_s: float  # the probe's ack gap spanning the generation signal
    pause_s: float  # the query loop's longest gap around the rotation


def boundary_round(
    workers: Workers, daemon: Daemon, scenario: Scenario, boundary: float, probe_prefix: str
) -> BoundaryRound:
    """Load the scenario into the generation that ends at ``boundary``, run
    the probe publisher and the query loop across it, check that the
    snapshot holds every row, and measure the ack gap and the query pause."""
    plan = load_plan(daemon, scenario)
    loaded = workers.call(run_load, plan, timeout_s=plan_timeout(plan))
    check_loaded(loaded, plan, boundary)
    start_at = time.monotonic() + 0.05
    duration_s = boundary + AFTER_S - start_at
    probes = workers.submit(run_load, probe_plan(daemon, probe_prefix, duration_s), start_at)
    loop = workers.submit(
        query_loop, daemon.ports["http"], (GENERATION_QUERY,), duration_s, start_at
    )
    signal_ = daemon.wait_gensig(duration_s + 10)
    acks = probes.result(timeout=duration_s + 60)
    answers = loop.result(timeout=duration_s + 60)
    # Counted after the probes stopped, so the counting is not in the window.
    generation, counts = daemon.table_counts(list(scenario.plan_tables))
    if (
        not signal_.serves(generation, daemon.generation_s)
        or sum(counts.values()) != scenario.total_rows
    ):
        raise BenchError(
            f"snapshot {generation} holds {sum(counts.values())} rows, not {scenario.total_rows}"
        )
    gap = spanning_gap(sorted(acks.ack_times), signal_.received, PROBE_TOLERANCE_S)
    if gap is None:
        raise BenchError(f"{scenario.case}: no probe acks around the boundary")
    done = sorted(s.finished for s in answers.samples if s.ok)
    pause = longest_gap(done, signal_.received - gap, signal_.received + AFTER_S / 2)
    return BoundaryRound(loaded, acks, done, gap, pause)

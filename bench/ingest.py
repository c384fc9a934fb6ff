"""Ingest figures: the publisher x table-size matrix and the fleet mix.

Every figure counts only publishes that were acknowledged *and* whose rows
are in the snapshots that followed (row counts queried after each
generation signal), divided by the time from the first send to the last
acknowledgement.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from bench.daemon import Daemon
from bench.harness import Scale, SnapshotCounter, Workers, run_verified
from bench.loadgen import LoadPlan, LoadResult, run_load
from bench.report import Results
from bench.workload import tablenames

CASES = ((1, 10), (16, 10), (256, 10), (16, 100), (1, 1000), (16, 1000), (256, 1000))
TABLES_PER_CASE = 10
MAX_PUBLISHES = 200_000
FLEET_TABLES = 10
FLEET_ROWS = 10
FLEET_REFERENCE_HOSTS = 10_000
GENERATION_S = 30.0
# Fleet transports: ZeroMQ pipelines (DEALER sockets x window), HTTP keeps
# connections alive with one request in flight each.
FLEET_ZMQ_SOCKETS = 16
FLEET_ZMQ_WINDOW = 32
FLEET_HTTP_SESSIONS = 64


def case_name(publishers: int, rows: int) -> str:
    return f"{publishers}x{rows}"


def ingest_plan(
    daemon: Daemon, transport: str, publishers: int, rows: int, prefix: str, duration_s: float
) -> LoadPlan:
    return LoadPlan(
        transport=transport,
        port=daemon.ports[transport],
        publishers=publishers,
        rows=rows,
        tables=tablenames(prefix, TABLES_PER_CASE),
        identity_prefix=f"{prefix}_h",
        hosts=10**9,
        duration_s=duration_s,
        max_publishes=MAX_PUBLISHES,
    )


def warm_up(workers: Workers, daemon: Daemon, transports: Sequence[str]) -> None:
    """A short, unmeasured publish burst per transport (imports, caches)."""
    for transport in transports:
        workers.call(run_load, ingest_plan(daemon, transport, 16, 100, f"warm_{transport}", 0.2))


def measure_matrix(
    workers: Workers, scale: Scale, results: Results, transports: Sequence[str]
) -> None:
    """``{http,zmq}_ingest_{rows,tables}_per_s`` keyed "PUBLISHERSxROWS"."""
    details: dict[str, Any] = results.details.setdefault("ingest", {})
    with Daemon(scale.ingest_generation_s) as daemon:
        warm_up(workers, daemon, transports)
        for round_ in range(scale.rounds):
            started = time.monotonic()
            plans = [
                ingest_plan(daemon, t, p, r, f"r{round_}_{t}{case_name(p, r)}", scale.ingest_s)
                for t in transports
                for p, r in CASES
            ]
            counter = SnapshotCounter(daemon)
            for plan, result in run_verified(workers, counter, plans):
                record_case(results, details, plan, result, counter)
            if counter.missed:
                results.notes.append(f"ingest round {round_}: {counter.missed} snapshots missed")
            details.setdefault("round_seconds", []).append(round(time.monotonic() - started, 1))


def record_case(
    results: Results,
    details: dict[str, Any],
    plan: LoadPlan,
    result: LoadResult,
    counter: SnapshotCounter,
) -> None:
    case = case_name(plan.publishers, plan.rows)
    verified = counter.verified(result, plan.rows)
    results.add(f"{plan.transport}_ingest_tables_per_s", verified / result.elapsed_s, case)
    results.add(
        f"{plan.transport}_ingest_rows_per_s", verified * plan.rows / result.elapsed_s, case
    )
    entry = details.setdefault(f"{plan.transport}_{case}", [])
    entry.append(
        {
            "acked": result.acked,
            "verified": verified,
            "errors": result.errors,
            "timed_out": result.timed_out,
            "seconds": round(result.elapsed_s, 3),
            "generator_cpu": round(result.cpu_share, 2),
        }
    )
    if verified < result.acked or result.errors:
        results.notes.append(
            f"{plan.transport} {case}: {result.acked} acked, {verified} in snapshots, "
            f"{result.errors} errors {result.error_samples[:1]}"
        )


# ------------------------------------------------------------------ fleet


def fleet_plan(daemon: Daemon, transport: str, hosts: int) -> LoadPlan:
    """Every host once; sending stops after one 30 s generation (scaled
    like the fleet): what is absorbed by then gives the rate."""
    zmq = transport == "zmq"
    return LoadPlan(
        transport=transport,
        port=daemon.ports[transport],
        publishers=FLEET_ZMQ_SOCKETS if zmq else FLEET_HTTP_SESSIONS,
        window=FLEET_ZMQ_WINDOW if zmq else 1,
        rows=FLEET_ROWS,
        tables=tablenames("fleet", FLEET_TABLES),
        identity_prefix="host",
        hosts=hosts,
        duration_s=GENERATION_S * hosts / FLEET_REFERENCE_HOSTS,
        drain_s=60.0,
    )


def measure_fleet(
    workers: Workers, scale: Scale, results: Results, transports: Sequence[str]
) -> None:
    """``fleet_tables_per_s`` and ``fleet_absorb_s`` per transport: every host
    of the fleet publishes the same 10 tables of 10 rows once."""
    hosts = scale.fleet_hosts
    factor = FLEET_REFERENCE_HOSTS / hosts
    if factor != 1:
        results.notes.append(
            f"fleet scaled to {hosts} hosts ({hosts * FLEET_TABLES} publishes); "
            f"fleet_absorb_s is extrapolated x{factor:g} to {FLEET_REFERENCE_HOSTS} hosts"
        )
    with Daemon(scale.fleet_generation_s) as daemon:
        warm_up(workers, daemon, transports)
        for transport in transports:
            for _ in range(scale.heavy_rounds):
                plan = fleet_plan(daemon, transport, hosts)
                counter = SnapshotCounter(daemon)
                [(_, result)] = run_verified(workers, counter, [plan])
                verified = counter.verified(result, plan.rows)
                record_fleet_round(results, transport, hosts, result, verified)
    results.extra["fleet_fits_30s"] = fleet_fits(results, transports)


def fleet_round_shortfall(result: LoadResult, verified: int) -> list[str]:
    """Why a fleet round is not "all verified": acknowledged publishes
    missing from the snapshots, error replies, publishes left unanswered.
    (Publishes never sent because the generation's time was up are not a
    shortfall: the absorb time is then extrapolated from the rate.)"""
    problems = []
    if verified < result.acked:
        problems.append(
            f"{result.acked - verified} of {result.acked} acknowledged publishes "
            "missing from the snapshots"
        )
    if result.errors:
        problems.append(f"{result.errors} error replies {result.error_samples[:1]}")
    if result.timed_out:
        problems.append(f"{result.timed_out} publishes timed out")
    return problems


def record_fleet_round(
    results: Results, transport: str, hosts: int, result: LoadResult, verified: int
) -> None:
    """One fleet round's figures, with their marks: ``fleet_absorb_s`` is
    extrapolated when the fleet was scaled down (quick mode: x50 from 200
    hosts) or the generation's time ran out; a round that lost an
    acknowledged publish (or got errors) is unverified, so its verdict
    misses whatever the time."""
    publishes = hosts * FLEET_TABLES
    factor = FLEET_REFERENCE_HOSTS / hosts
    rate = verified / result.elapsed_s
    # The time to absorb the whole fleet at the verified rate.
    absorb_s = publishes / max(rate, 1e-9) * factor
    ref = ("fleet_absorb_s", transport)
    results.add("fleet_tables_per_s", rate, transport)
    results.add("fleet_absorb_s", absorb_s, transport)
    if factor != 1:
        results.extrapolate(ref, f"x{factor:g} from {hosts} hosts")
    if result.sent < publishes:
        results.extrapolate(ref, "from the rate: time ran out")
        results.notes.append(
            f"fleet {transport}: the generation's time was up after {result.sent} of "
            f"{publishes} publishes; fleet_absorb_s is extrapolated from the verified rate"
        )
    shortfall = fleet_round_shortfall(result, verified)
    for problem in shortfall:
        results.unverify(ref, problem)
    if shortfall:
        results.notes.append(f"fleet {transport}: not all verified: " + "; ".join(shortfall))
    results.details.setdefault("fleet", {}).setdefault(transport, []).append(
        {
            "publishes": publishes,
            "sent": result.sent,
            "acked": result.acked,
            "verified": verified,
            "seconds": round(result.elapsed_s, 3),
            "errors": result.errors,
            "timed_out": result.timed_out,
        }
    )


def fleet_fits(results: Results, transports: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``fleet_fits_30s``: per transport, whether the fleet was absorbed
    within one 30 s generation with every publish verified, and whether that
    absorb time is an extrapolation (and how)."""
    out: dict[str, dict[str, Any]] = {}
    for transport in transports:
        ref = ("fleet_absorb_s", transport)
        absorb_s = results.median(ref)
        figure = results.figures.get(ref)
        verified = figure is not None and not figure.unverified
        out[transport] = {
            "fits": absorb_s is not None and absorb_s <= GENERATION_S and verified,
            "absorb_s": None if absorb_s is None else round(absorb_s, 3),
            "all_verified": verified if figure is not None else None,
            "extrapolated": (figure.mark or None) if figure is not None else None,
        }
    return out

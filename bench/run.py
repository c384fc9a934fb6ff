"""``python -m bench.run [--quick] [--only KEY,...] [--rounds N] [--py-spy DIR]``

Runs the benchmark phases against the real daemon on loopback and prints a
table, then (as the last line of stdout) one JSON object. Progress goes to
stderr. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Optional

from bench import alerts, ceilings, daemon, history, ingest, peer, query, rotation
from bench.harness import FULL, QUICK, Scale, Workers
from bench.report import Results, render_table, summary_json

INGEST_KEYS = {
    "http": ("http_ingest_rows_per_s", "http_ingest_tables_per_s"),
    "zmq": ("zmq_ingest_rows_per_s", "zmq_ingest_tables_per_s"),
}
PHASE_KEYS = {
    "raw": ("raw_rows_per_s",),
    "bare_http": ("bare_http_req_per_s",),
    "bare_zmq": ("bare_zmq_msg_per_s",),
    "encode": ("encode_ceiling_rows_per_s",),
    "ingest": INGEST_KEYS["http"] + INGEST_KEYS["zmq"],
    "fleet": ("fleet_tables_per_s", "fleet_absorb_s"),
    "query": (
        "query_p50_ms",
        "query_p99_ms",
        "query_json_rows_per_s",
        "query_arrays_rows_per_s",
        "query_encode_reactor_gap_ms",
        "reactor_busy_gap_ms",
    ),
    "rotation": ("rotation_ms", "rotation_query_pause_ms", "rss_mb_per_million_rows"),
    "history": (
        "history_rotation_query_pause_ms",
        "history_ingest_ratio",
        "history_disk_mb_per_generation",
        "history_rss_mb",
    ),
    "alerts": ("alerts_eval_ms", "alerts_query_p99_ms", "alerts_rotation_query_pause_ms"),
    "peer": tuple(peer.KEYS.values()),
}
ALL_KEYS = tuple(k for keys in PHASE_KEYS.values() for k in keys)
# The ceilings a figure's ratio needs, run along with it.
NEEDS = {
    "http_ingest_tables_per_s": ("bare_http_req_per_s",),
    "http_ingest_rows_per_s": ("raw_rows_per_s",),
    "zmq_ingest_tables_per_s": ("bare_zmq_msg_per_s",),
    "zmq_ingest_rows_per_s": ("raw_rows_per_s",),
    "query_arrays_rows_per_s": ("encode_ceiling_rows_per_s",),
    "peer_qasino_per_s": ("peer_pushgateway_no_check_per_s",),
}
TIME_LIMIT_S = {"quick": 360, "full": 1500}


class Interrupted(BaseException):
    """The run's time limit passed, or it was told to stop."""


@dataclass
class Run:
    scale: Scale
    keys: set[str]
    workers: Workers
    results: Results

    def wants(self, *keys: str) -> bool:
        return any(k in self.keys for k in keys)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes, 3 rounds, under a minute")
    p.add_argument("--only", default="", help="comma-separated JSON keys to measure")
    p.add_argument("--rounds", type=int, default=0, help="rounds per figure (default 5/3)")
    p.add_argument(
        "--py-spy", type=Path, default=None, metavar="DIR", help="profile each server into DIR"
    )
    p.add_argument(
        "--server-workers",
        type=int,
        default=0,
        metavar="N",
        help="start every Qasino server with --workers N (RSS and py-spy then see "
        "only the supervisor process)",
    )
    return p.parse_args(argv)


def selected_keys(only: str) -> set[str]:
    if not only:
        return set(ALL_KEYS)
    keys = {k.strip() for k in only.split(",") if k.strip()}
    if peer.RATIO_KEY in keys:  # a ratio, not a figure: measure what it divides
        keys.discard(peer.RATIO_KEY)
        keys.update((peer.KEYS["qasino"], peer.KEYS["no_check"]))
    unknown = keys - set(ALL_KEYS)
    if unknown:
        raise SystemExit(f"unknown keys {sorted(unknown)}; known: {', '.join(ALL_KEYS)}")
    for key in list(keys):
        keys.update(NEEDS.get(key, ()))
    return keys


def progress(text: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def phase(run: Run, name: str, body: Callable[[], None]) -> None:
    """Run one phase; a phase that cannot measure is noted, the run goes on."""
    daemon.PROFILE.phase = name
    started = time.monotonic()
    progress(f"{name} ...")
    try:
        body()
    except Exception as e:  # BenchError, or an error raised in a worker
        run.results.notes.append(f"phase {name} failed: {type(e).__name__}: {e}")
        progress(f"{name} FAILED: {type(e).__name__}: {e}")
    run.results.details.setdefault("phase_seconds", {})[name] = round(time.monotonic() - started, 1)
    progress(f"{name} done in {time.monotonic() - started:.1f}s")


def measure_ceilings(run: Run, when: str) -> None:
    s, w, r = run.scale, run.workers, run.results
    if run.wants("raw_rows_per_s"):
        phase(run, f"raw{when}", lambda: ceilings.measure_raw(w, s, r))
    if run.wants("bare_http_req_per_s"):
        phase(run, f"bare_http{when}", lambda: ceilings.measure_bare(w, s, r, "http"))
    if run.wants("bare_zmq_msg_per_s"):
        phase(run, f"bare_zmq{when}", lambda: ceilings.measure_bare(w, s, r, "zmq"))
    if run.wants("encode_ceiling_rows_per_s"):
        phase(run, f"encode{when}", lambda: ceilings.measure_encode(w, s, r))


def run_phases(run: Run) -> None:
    s, w, r = run.scale, run.workers, run.results
    # The ceilings are measured before and again after the figures: on a
    # shared machine whose speed drifts during the run, their medians then
    # stand for the whole run, and details.ceiling_drift shows the drift.
    measure_ceilings(run, "")
    before = {key: r.median((key, None)) for key in ceilings.CEILING_KEYS}
    transports = [t for t, keys in INGEST_KEYS.items() if run.wants(*keys)]
    if transports:
        phase(run, "ingest", lambda: ingest.measure_matrix(w, s, r, transports))
    if run.wants(*PHASE_KEYS["fleet"]):
        phase(run, "fleet", lambda: ingest.measure_fleet(w, s, r, ("zmq", "http")))
    latency = run.wants("query_p50_ms", "query_p99_ms")
    json_ = run.wants("query_json_rows_per_s")
    arrays = run.wants("query_arrays_rows_per_s")
    gap = run.wants("query_encode_reactor_gap_ms")
    if latency or json_ or arrays or gap:
        capacity = r.median(("http_ingest_tables_per_s", "16x100"))
        phase(
            run,
            "query",
            lambda: query.measure_queries(w, s, r, capacity, latency, json_, arrays, gap),
        )
    if run.wants("reactor_busy_gap_ms"):
        phase(run, "reactor_lag", lambda: query.measure_reactor_busy(s, r))
    if run.wants(*PHASE_KEYS["rotation"]):
        rss = run.wants("rss_mb_per_million_rows")
        phase(run, "rotation", lambda: rotation.measure_rotation(w, s, r, rss))
    if run.wants(*PHASE_KEYS["history"]):
        phase(run, "history", lambda: history.measure_history(w, s, r))
    if run.wants(*PHASE_KEYS["alerts"]):
        phase(run, "alerts", lambda: alerts.measure_alerts(w, s, r))
    if run.wants(*PHASE_KEYS["peer"]):
        phase(run, "peer", lambda: peer.measure_peer(s, r, run.keys))
    rounds = {key: len(r.figures[(key, None)].values) for key in before if before[key]}
    measure_ceilings(run, " (again)")
    r.details["ceiling_drift"] = {
        key: [round(before[key], 1), round(statistics.median(values[rounds[key] :]), 1)]
        for key in rounds
        if len(values := r.figures[(key, None)].values) > rounds[key]
    }


def stop_on_signal(signum: int, frame: Optional[FrameType]) -> None:
    raise Interrupted(f"stopped by signal {signum}")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    scale = (QUICK if args.quick else FULL).with_rounds(args.rounds)
    keys = selected_keys(args.only)
    results = Results()
    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGALRM, stop_on_signal)
    signal.alarm(TIME_LIMIT_S[scale.name])
    started = time.monotonic()
    failed = False
    daemon.PROFILE.directory = args.py_spy
    if args.server_workers:
        daemon.SERVER_EXTRA[:] = ["--workers", str(args.server_workers)]
        results.extra["server_workers"] = args.server_workers
    try:
        with Workers() as workers:
            run_phases(Run(scale, keys, workers, results))
    except Interrupted as e:
        results.notes.append(f"run interrupted: {e}")
        failed = True
    finally:
        signal.alarm(0)
    elapsed = time.monotonic() - started
    config = {
        "scale": scale.name,
        "rounds": scale.rounds,
        "heavy_rounds": scale.heavy_rounds,
        "keys": sorted(keys),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "elapsed_s": round(elapsed, 1),
    }
    print(render_table(results))
    for note in results.notes:
        print(f"note: {note}")
    print(f"elapsed {elapsed:.1f}s ({scale.name})")
    print(json.dumps(summary_json(results, config), separators=(",", ":")))
    failed = failed or any(n.startswith("phase ") for n in results.notes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared machinery of the phases: scale profiles, worker processes,
snapshot verification, and the bare ceiling servers."""

from __future__ import annotations

import multiprocessing
import select
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Optional, TypeVar

from bench.daemon import REPO_ROOT, BenchError, Daemon, Gensig, child_env, die_with_parent
from bench.loadgen import LoadPlan, LoadResult, run_load

T = TypeVar("T")

WORKERS = 2  # one load generator and one query/probe client at a time
RESULT_SLACK_S = 60.0


@dataclass(frozen=True)
class Scale:
    """How big and how long each measurement is (see bench/README.md)."""

    name: str
    rounds: int  # ceilings, ingest matrix, query latency, JSON
    heavy_rounds: int  # fleet and rotation
    raw_rows: int
    bare_s: float
    ingest_s: float  # sending time per ingest case
    ingest_generation_s: float
    fleet_hosts: int
    fleet_generation_s: float
    query_rows: int
    query_s: float  # per latency round
    json_fetches: int
    rotation_tables: int  # the many-tables scenario: tables x 100 rows
    rotation_big_rows: int  # the one-big-table scenario
    rotation_generation_s: float  # many tables
    rotation_big_generation_s: float
    peer_s: float  # wrk's duration per peer figure and round (whole seconds)
    alerts_generation_s: float = 4.0  # 200 alerts over 100,000 rows
    alerts_rounds: int = 3

    def with_rounds(self, rounds: Optional[int]) -> Scale:
        if not rounds:
            return self
        return replace(self, rounds=rounds, heavy_rounds=rounds, alerts_rounds=rounds)


FULL = Scale(
    name="full",
    rounds=5,
    heavy_rounds=3,
    raw_rows=300_000,
    bare_s=1.5,
    ingest_s=1.0,
    ingest_generation_s=3.0,
    fleet_hosts=10_000,
    fleet_generation_s=5.0,
    query_rows=100_000,
    query_s=2.0,
    json_fetches=5,
    rotation_tables=1000,
    rotation_big_rows=1_000_000,
    rotation_generation_s=4.0,
    rotation_big_generation_s=8.0,
    peer_s=3.0,
)

QUICK = Scale(
    name="quick",
    rounds=3,
    heavy_rounds=3,
    raw_rows=100_000,
    bare_s=0.3,
    ingest_s=0.2,
    ingest_generation_s=1.0,
    fleet_hosts=200,
    fleet_generation_s=1.0,
    query_rows=100_000,
    query_s=0.5,
    json_fetches=3,
    rotation_tables=100,
    rotation_big_rows=100_000,
    rotation_generation_s=1.2,
    rotation_big_generation_s=1.5,
    alerts_generation_s=3.0,
    alerts_rounds=1,
    peer_s=1.0,
)


class Workers:
    """Spawned worker processes for load generators and clients."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.pool = ProcessPoolExecutor(WORKERS, mp_context=context)

    def __enter__(self) -> Workers:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        processes = list((getattr(self.pool, "_processes", None) or {}).values())
        if exc_type is not None:
            for process in processes:  # a worker may be stuck in a load
                process.terminate()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        return self.pool.submit(fn, *args)

    def call(self, fn: Callable[..., T], *args: Any, timeout_s: float = 600.0) -> T:
        return self.submit(fn, *args).result(timeout=timeout_s)


def plan_timeout(plan: LoadPlan) -> float:
    return plan.duration_s + plan.drain_s + RESULT_SLACK_S


# ---------------------------------------------------------------- snapshots


@dataclass
class SnapshotCounter:
    """Row counts of some tables, summed over every snapshot served while
    (and right after) a load ran: what the publishes left in snapshots."""

    daemon: Daemon
    tables: list[str] = field(default_factory=list)
    rows: Counter[str] = field(default_factory=Counter)
    snapshots: int = 0
    missed: int = 0  # snapshots that were gone before they could be counted
    last_generation: int = 0  # the snapshot counted last (never counted twice)

    def count(self, signal_: Gensig) -> None:
        generation, counts = self.daemon.table_counts(self.tables)
        deadline = time.monotonic() + 1.0
        length = self.daemon.generation_s
        while not signal_.serves(generation, length) and time.monotonic() < deadline:
            if generation >= signal_.generation:
                break  # a later snapshot already: this one is gone
            time.sleep(0.01)  # the signal may reach us before the readers switch
            generation, counts = self.daemon.table_counts(self.tables)
        if not signal_.serves(generation, length) or generation == self.last_generation:
            self.missed += 1
            return
        self.last_generation = generation
        self.snapshots += 1
        self.rows.update(counts)

    def poll(self, timeout_s: float) -> Optional[Gensig]:
        signal_ = self.daemon.next_gensig(timeout_s)
        if signal_ is not None:
            self.count(signal_)
        return signal_

    def settle(self, last_ack: float, margin_s: float = 0.05) -> Gensig:
        """Count snapshots until one started after ``last_ack``: every
        publish acknowledged by then is in a counted snapshot."""
        limit = time.monotonic() + self.daemon.generation_s * 2 + 15
        while time.monotonic() < limit:
            signal_ = self.poll(0.2)
            if signal_ is not None and signal_.received > last_ack + margin_s:
                return signal_
        raise BenchError("no generation signal after the load finished")

    def verified(self, result: LoadResult, rows_per_table: int) -> int:
        """Acknowledged publishes whose rows are in the counted snapshots."""
        total = 0
        for tablename, acked in result.acked_per_table.items():
            present = self.rows.get(tablename, 0) // max(rows_per_table, 1)
            total += min(acked, present)
        return total


def watch(counter: SnapshotCounter, future: Future[T], timeout_s: float) -> T:
    """Wait for a worker's result, counting every snapshot served meanwhile."""
    deadline = time.monotonic() + timeout_s
    while not future.done():
        if time.monotonic() > deadline:
            future.cancel()
            raise BenchError(f"a worker did not finish within {timeout_s:g}s")
        counter.poll(0.05)
    return future.result()


def run_verified(
    workers: Workers, counter: SnapshotCounter, plans: Iterable[LoadPlan]
) -> list[tuple[LoadPlan, LoadResult]]:
    """Run plans one after another, then settle; the counter then holds what
    every plan left in the snapshots."""
    out = []
    for plan in plans:
        counter.tables.extend(plan.tables)
        future = workers.submit(run_load, plan)
        out.append((plan, watch(counter, future, plan_timeout(plan))))
    last_ack = max((r.finished for _, r in out), default=time.monotonic())
    counter.settle(last_ack)
    return out


# ---------------------------------------------------------------- ceilings


class BareServer:
    """``python -m bench.bare KIND`` as a subprocess; yields its port."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.parser = ""
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def __enter__(self) -> int:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bare", self.kind],
            cwd=REPO_ROOT,
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20.0)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("PORT "):
            self.__exit__(None, None, None)
            raise BenchError(f"bare {self.kind} server did not start")
        _, port, self.parser = line.split()
        return int(port)

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

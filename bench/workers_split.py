"""Where a publish's CPU goes with ``--workers N``: the peer load (wrk, 16
connections, a fresh identity per 10-value push) against servers with 0, 1
and 2 workers, and the CPU each process used per acknowledged publish (from
/proc). The store process's share is the ceiling with enough cores: it is
the one process every publish goes through.

    python -m bench.workers_split [--workers 0,1,2] [--seconds 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from bench.daemon import HOST, Daemon
from bench.peer import missing_tools, qasino_payload, run_wrk

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def tree(pid: int) -> dict[int, str]:
    """pid -> role, for the supervisor's descendants (or the one process)."""
    roles = {}
    for child in _children(pid):
        roles[child] = "store"
        for worker in _children(child):
            roles[worker] = "worker"
    return roles or {pid: "store"}


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(x) for x in f.read().split()]
    return found


def measure(workers: int, seconds: float, round_: int) -> Optional[dict[str, float]]:
    with Daemon(30, extra_args=["--workers", str(workers)]) as daemon:
        assert daemon.proc is not None
        url = f"http://{HOST}:{daemon.ports['http']}"
        run_wrk(url, ["qasino", f"warm{round_}", "split_warm", qasino_payload()], 1.0)
        roles = tree(daemon.proc.pid)
        before = {pid: cpu_s(pid) for pid in roles}
        summary, generator, _ = run_wrk(
            url, ["qasino", f"s{round_}", f"split{round_}", qasino_payload()], seconds
        )
        used = {pid: cpu_s(pid) - before[pid] for pid in roles}
    if not summary.acked:
        return None
    per: dict[str, float] = {"per_s": summary.acked / summary.duration_s}
    for role in ("store", "worker"):
        total = sum(v for pid, v in used.items() if roles[pid] == role)
        per[f"{role}_us"] = total / summary.acked * 1e6
        per[f"{role}_cores"] = total / summary.duration_s
    per["generator_cores"] = generator
    return per


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.workers_split", description=__doc__)
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    missing = missing_tools()
    if missing:
        print(f"skipped: {', '.join(missing)} not installed")
        return 0
    print(
        f"{'workers':>7} {'publishes/s':>11} {'store us':>9} {'worker us':>10} "
        f"{'store cores':>11} {'worker cores':>12} {'ceiling/s':>10}"
    )
    for round_ in range(args.rounds):
        for n in (int(x) for x in args.workers.split(",")):
            r = measure(n, args.seconds, round_)
            if r is None:
                print(f"{n:>7} nothing acknowledged")
                continue
            ceiling = 1e6 / r["store_us"] if r["store_us"] else float("nan")
            print(
                f"{n:>7} {r['per_s']:>11,.0f} {r['store_us']:>9.0f} {r['worker_us']:>10.0f} "
                f"{r['store_cores']:>11.2f} {r['worker_cores']:>12.2f} {ceiling:>10,.0f}"
            )
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

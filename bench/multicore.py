"""What worker processes could gain: the peer load (``bench/peer.lua``,
wrk, 16 connections, 10-value publishes from fresh identities) against

* ``qasino``: the real server (one process), and
* ``bare1`` / ``bare2``: the bare twisted.web ceiling (``bench.bare``'s
  parse-and-ack resource) in 1 or 2 processes, each with its own
  ``SO_REUSEPORT`` socket on one port (the kernel spreads connections),

* ``proto1`` / ``proto2`` (``--proto``): bench.proto_split, the design's
  miniature: 1 or 2 worker processes and a store process with group commit,

interleaved round by round. For each: acknowledged requests/s and the
server CPU per request (user + system of every server process, from
``/proc/PID/stat``, over the run). ``python -m bench.multicore [--rounds N]
[--seconds S]``; prints one JSON object. Used for docs/performance.md
("Multi-core ingest: design and plan"); not part of ``bench.run``.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from bench.daemon import HOST, REPO_ROOT, BenchError, Daemon, child_env, die_with_parent
from bench.peer import qasino_payload, run_wrk

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_s(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) * TICK_S  # utime, stime
    return total


def child(port: int) -> int:
    """One bare twisted.web process on a SO_REUSEPORT socket."""
    from twisted.internet import reactor as installed
    from twisted.internet import stdio
    from twisted.web.server import Site

    from bench.bare import ParseOnly, StopOnEOF

    reactor: Any = installed
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((HOST, port))
    sock.listen(128)
    sock.setblocking(False)
    site = Site(ParseOnly(), parsePOSTFormSubmission=False)
    site.noisy = False
    reactor.adoptStreamPort(sock.fileno(), socket.AF_INET, site)
    sock.close()  # the reactor holds its own copy
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    stdio.StandardIO(StopOnEOF(reactor))
    reactor.run()
    return 0


class BareProcesses:
    """``count`` bare processes; with ``proto``, bench.proto_split's workers
    and its store process (started first)."""

    def __init__(self, count: int, proto: bool = False) -> None:
        self.count = count
        self.proto = proto
        self.tmp = tempfile.mkdtemp(prefix="qasino-proto-")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.reserve = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.reserve.bind((HOST, 0))  # bound, never listening: keeps the port ours
        self.port: int = self.reserve.getsockname()[1]

    def commands(self) -> list[list[str]]:
        if not self.proto:
            return [["bench.multicore", "child", str(self.port)]] * self.count
        path, db = os.path.join(self.tmp, "store.sock"), os.path.join(self.tmp, "gen.sqlite")
        worker = ["bench.proto_split", "worker", str(self.port), path]
        return [["bench.proto_split", "store", path, db]] + [worker] * self.count

    def __enter__(self) -> BareProcesses:
        for command in self.commands():
            proc = subprocess.Popen(
                [sys.executable, "-m", *command],
                cwd=REPO_ROOT,
                env=child_env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                preexec_fn=die_with_parent,
            )
            self.procs.append(proc)
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 20.0)
            if not ready or proc.stdout.readline() != b"READY\n":
                self.__exit__()
                raise BenchError("bare child did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.reserve.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


def measure(url: str, pids: Sequence[int], prefix: str, seconds: float) -> dict[str, float]:
    before = cpu_s(pids)
    summary, gen_cpu, _ = run_wrk(url, ["qasino", prefix, "mc_t", qasino_payload()], seconds)
    used = cpu_s(pids) - before
    if summary.refused or summary.socket_errors:
        raise BenchError(f"{url}: {summary.refused} refused, {summary.socket_errors} errors")
    return {
        "per_s": summary.acked_per_s,
        "server_cpu_us_per_request": used / max(summary.acked, 1) * 1e6,
        "server_cores_busy": used / summary.duration_s,
        "wrk_cores_busy": gen_cpu,
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["child"]:
        return child(int(argv[1]))
    p = argparse.ArgumentParser(prog="python -m bench.multicore")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--proto", action="store_true", help="also bench.proto_split, 1 and 2 workers")
    args = p.parse_args(argv)
    rounds: dict[str, list[dict[str, float]]] = {"qasino": [], "bare1": [], "bare2": []}
    if args.proto:
        rounds.update(proto1=[], proto2=[])
    with Daemon(30.0) as daemon:
        qasino_url = f"http://{HOST}:{daemon.ports['http']}"
        measure(qasino_url, [daemon.pid], "warm", 1.0)
        for r in range(args.rounds):
            rounds["qasino"].append(measure(qasino_url, [daemon.pid], f"r{r}", args.seconds))
            for count in (1, 2):
                with BareProcesses(count) as bare:
                    url = f"http://{HOST}:{bare.port}"
                    rounds[f"bare{count}"].append(measure(url, bare.pids, f"r{r}", args.seconds))
                if args.proto:
                    with BareProcesses(count, proto=True) as proto:
                        url = f"http://{HOST}:{proto.port}"
                        figures = measure(url, proto.pids, f"r{r}", args.seconds)
                        rounds[f"proto{count}"].append(figures)
            sys.stderr.write(f"round {r}: {json.dumps({k: v[-1] for k, v in rounds.items()})}\n")
    medians = {
        name: {key: round(statistics.median(x[key] for x in values), 2) for key in values[0]}
        for name, values in rounds.items()
    }
    print(json.dumps({"medians": medians, "rounds": rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

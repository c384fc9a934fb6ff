"""Peer section: Qasino against Prometheus Pushgateway under the same load.

The load is ``wrk`` (``bench/peer.lua``): 16 keep-alive connections, each
request one host pushing 10 values from an identity never used before, for
a bounded time. The same run measures, round by round:

* ``peer_qasino_per_s``: Qasino's HTTP ``add_table_data`` with a 10-row
  table; only publishes acknowledged *and* found in the snapshots count.
* ``peer_pushgateway_default_per_s``: Pushgateway, memory only, default
  settings (a fresh process per round: it slows down as groups pile up).
* ``peer_pushgateway_no_check_per_s``: the same with
  ``--push.disable-consistency-check``.

``peer_pushgateway_ratio_no_check`` is Qasino / no-check (the target is
1.0).
"""

from __future__ import annotations

import http.client
import json
import resource
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Optional

from bench.daemon import HOST, BenchError, Daemon, die_with_parent
from bench.harness import Scale, SnapshotCounter
from bench.report import Results
from bench.workload import COLUMN_NAMES, COLUMN_TYPES, dumps, make_rows

WRK = "/usr/bin/wrk"
PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"
SCRIPT = Path(__file__).resolve().with_name("peer.lua")
CONNECTIONS = 16
WRK_THREADS = 1  # one wrk thread keeps up with both servers and leaves them the cores
VALUES = 10
GENERATION_S = 2.0
# Pushgateway's default push waits for its consistency check: 1.4-2 s per
# push on the 2-core machine even into an empty gateway, so a 1 s run would
# see no reply at all. Its runs last at least this long.
DEFAULT_MIN_S = 5.0
START_TIMEOUT_S = 20.0
KEYS = {
    "qasino": "peer_qasino_per_s",
    "default": "peer_pushgateway_default_per_s",
    "no_check": "peer_pushgateway_no_check_per_s",
}
RATIO_KEY = "peer_pushgateway_ratio_no_check"


@dataclass(frozen=True)
class WrkSummary:
    """What one wrk run reported (the ``PEER`` line of ``bench/peer.lua``)."""

    requests: int  # replies wrk read
    acked: int  # replies that acknowledged the push
    refused: int  # replies that did not (error status or error body)
    sent: int  # requests wrk built
    duration_s: float
    socket_errors: int  # connect/read/write errors and timeouts
    latency_p50_ms: float
    latency_p99_ms: float

    @property
    def acked_per_s(self) -> float:
        return self.acked / self.duration_s if self.duration_s > 0 else 0.0


def parse_wrk(output: str) -> WrkSummary:
    """The summary from wrk's stdout; BenchError if the ``PEER`` line is missing."""
    for line in reversed(output.splitlines()):
        if line.startswith("PEER "):
            try:
                d = json.loads(line[len("PEER ") :])
                errors = sum(
                    int(d[k]) for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
                )
                return WrkSummary(
                    requests=int(d["requests"]),
                    acked=int(d["acked"]),
                    refused=int(d["refused"]),
                    sent=int(d["sent"]),
                    duration_s=int(d["duration_us"]) / 1e6,
                    socket_errors=errors,
                    latency_p50_ms=int(d["latency_p50_us"]) / 1000.0,
                    latency_p99_ms=int(d["latency_p99_us"]) / 1000.0,
                )
            except (ValueError, KeyError, TypeError) as e:
                raise BenchError(f"unreadable wrk summary {line!r}: {e}") from e
    raise BenchError(f"wrk printed no PEER line:\n{output[-2000:]}")


def qasino_payload() -> str:
    """The JSON after the tablename: the benchmark's table with 10 rows."""
    columns = b',"column_names":' + dumps(COLUMN_NAMES)
    types = b',"column_types":' + dumps(COLUMN_TYPES)
    return (columns + types + b',"rows":' + dumps(make_rows(VALUES)) + b"}}").decode()


def pushgateway_payload() -> str:
    """10 samples in the text exposition format."""
    return "".join(f'peer_value{{stat="{i}"}} {i * 7919 % 100_000}\n' for i in range(VALUES))


def run_wrk(
    url: str, args: Sequence[str], duration_s: float, counter: Optional[SnapshotCounter] = None
) -> tuple[WrkSummary, float, float]:
    """(summary, generator CPU share, time.monotonic() when wrk ended).

    With a ``counter``, every snapshot served while wrk runs is counted.
    """
    command = [
        WRK,
        "-t",
        str(WRK_THREADS),
        "-c",
        str(CONNECTIONS),
        "-d",
        f"{max(1, round(duration_s))}s",
    ]
    command += ["--timeout", "5s", "-s", str(SCRIPT), url, "--", *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    deadline = time.monotonic() + duration_s + 30
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise BenchError("wrk did not finish in time")
            if counter is not None:
                counter.poll(0.05)
            else:
                time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0].decode(errors="replace")
    ended = time.monotonic()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = parse_wrk(output)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return summary, cpu / max(summary.duration_s, 1e-9), ended


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class Pushgateway:
    """``prometheus-pushgateway`` in memory (no persistence file) on loopback.

    ``start`` launches it, ``ready`` waits until it answers ``/-/ready``.
    """

    def __init__(self, extra_args: Sequence[str] = ()) -> None:
        self.extra_args = list(extra_args)
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.port = 0

    def start(self) -> Pushgateway:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [PUSHGATEWAY, f"--web.listen-address={HOST}:{self.port}", *self.extra_args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        return self

    def ready(self) -> None:
        for _ in range(5):  # the free port may be taken before the gateway binds it
            if self._wait_ready():
                return
            self.stop()
            self.start()
        raise BenchError("prometheus-pushgateway did not start")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=1.0)
                conn.request("GET", "/-/ready")
                if conn.getresponse().status == 200:
                    conn.close()
                    return True
                conn.close()
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """SIGKILL: it holds nothing worth keeping, and its graceful stop takes seconds."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait()

    def __enter__(self) -> Pushgateway:
        if self.proc is None:
            self.start()
        try:
            self.ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def missing_tools() -> list[str]:
    return [tool for tool in (WRK, PUSHGATEWAY) if not shutil.which(tool)]


def record(
    results: Results, details: dict[str, Any], name: str, summary: WrkSummary, cpu: float
) -> None:
    details.setdefault(name, []).append(
        {
            "acked": summary.acked,
            "refused": summary.refused,
            "requests": summary.requests,
            "sent": summary.sent,
            "socket_errors": summary.socket_errors,
            "duration_s": round(summary.duration_s, 3),
            "latency_p50_ms": round(summary.latency_p50_ms, 2),
            "latency_p99_ms": round(summary.latency_p99_ms, 2),
            "generator_cpu_share": round(cpu, 2),
        }
    )


def measure_qasino(
    daemon: Daemon, results: Results, details: dict[str, Any], round_: int, duration_s: float
) -> None:
    table = f"peer_r{round_}"
    while daemon.next_gensig(0) is not None:  # signals of the rounds before: stale
        pass
    if daemon.http is not None:  # idle through the gateway runs: the server may have closed it
        daemon.http.close()
        daemon.http = None
    counter = SnapshotCounter(daemon, tables=[table])
    url = f"http://{HOST}:{daemon.ports['http']}"
    summary, cpu, ended = run_wrk(
        url, ["qasino", f"r{round_}_q", table, qasino_payload()], duration_s, counter
    )
    counter.settle(ended)
    present = counter.rows.get(table, 0) // VALUES
    verified = min(summary.acked, present)
    record(results, details, "qasino", summary, cpu)
    details["qasino"][-1].update(verified=verified, publishes_in_snapshots=present)
    key = KEYS["qasino"]
    results.add(key, verified / summary.duration_s)
    if verified < summary.acked or summary.refused or summary.socket_errors:
        what = (
            f"round {round_}: {summary.acked - verified} acknowledged publishes missing, "
            f"{summary.refused} error replies, {summary.socket_errors} socket errors"
        )
        results.unverify((key, None), what)
    if counter.missed:
        results.notes.append(f"peer round {round_}: {counter.missed} snapshots missed")


def gateway_for(name: str) -> Pushgateway:
    return Pushgateway(["--push.disable-consistency-check"] if name == "no_check" else [])


def measure_pushgateway(
    results: Results,
    details: dict[str, Any],
    round_: int,
    duration_s: float,
    name: str,
    gateway: Pushgateway,
) -> None:
    with gateway:
        args = ["pushgateway", f"r{round_}_{name}", "peer", pushgateway_payload()]
        summary, cpu, _ = run_wrk(gateway.url, args, duration_s)
    record(results, details, f"pushgateway_{name}", summary, cpu)
    results.add(KEYS[name], summary.acked_per_s)
    if summary.refused or summary.socket_errors:
        results.notes.append(
            f"peer round {round_}: pushgateway {name}: {summary.refused} error replies, "
            f"{summary.socket_errors} socket errors"
        )


def measure_round(
    daemon: Daemon,
    results: Results,
    details: dict[str, Any],
    round_: int,
    scale: Scale,
    keys: set[str],
) -> None:
    if KEYS["qasino"] in keys:
        measure_qasino(daemon, results, details, round_, scale.peer_s)
    for name in ("default", "no_check"):
        if KEYS[name] in keys:
            # A fresh gateway each round: it slows down as groups pile up.
            # Started only now: its start-up burns seconds of CPU (12.9 s
            # of CPU in 9 s here), which must not overlap another run.
            duration_s = max(scale.peer_s, DEFAULT_MIN_S) if name == "default" else scale.peer_s
            measure_pushgateway(results, details, round_, duration_s, name, gateway_for(name))


def measure_peer(scale: Scale, results: Results, keys: set[str]) -> None:
    """The three peer figures, interleaved round by round (drift hits all alike)."""
    missing = missing_tools()
    if missing:
        results.notes.append(f"peer section skipped: {', '.join(missing)} not installed")
        return
    details: dict[str, Any] = results.details.setdefault("peer", {})
    details["load"] = {
        "connections": CONNECTIONS,
        "wrk_threads": WRK_THREADS,
        "values_per_push": VALUES,
        "duration_s": scale.peer_s,
        "pushgateway_default_duration_s": max(scale.peer_s, DEFAULT_MIN_S),
    }
    with Daemon(GENERATION_S) as daemon:
        # Unmeasured warm-up: imports, caches, the first table's creation.
        url = f"http://{HOST}:{daemon.ports['http']}"
        run_wrk(url, ["qasino", "warm", "peer_warm", qasino_payload()], 1.0)
        for round_ in range(scale.rounds):
            measure_round(daemon, results, details, round_, scale, keys)
    ratio = results.ratio((KEYS["qasino"], None), (KEYS["no_check"], None))
    if ratio is not None:
        results.extra[RATIO_KEY] = round(ratio, 4)

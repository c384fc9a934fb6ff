"""``python -m bench.reactor_lag [--rows N] [--fetches N]``: how long the
server's reactor goes without a turn while big results are rendered,
encoded and sent, measured inside the server.

The figure ``query_encode_reactor_gap_ms`` of ``bench.run`` is taken from
outside (a probe client's longest wait between answers): on a shared machine
it also counts every time the OS ran something else instead of the server
or the probe. This diagnostic runs the real server (``make_service``, the
same reactor, threads and HTTP front end) in this process with a 1 ms
``LoopingCall`` that records, for every turn, the wall time since the last
one and the process CPU time used meanwhile. A long gap with about as much
CPU as wall time is the reactor (or a thread holding the GIL) being busy; a
long gap with little CPU is the process waiting for a core. A client thread
fetches a ``rows`` x 5 result in each shape, ``fetches`` times each.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import sys
import tempfile
import time
from typing import Any, Optional

SQL = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows}) "
    "SELECT 'host' || x AS hostname, 'bos' AS datacenter, x AS stat_id, "
    "x * 7 AS frobs, x / 1000.0 AS load FROM c"
)
SHAPES = ("json", "arrays", "objects", "ndjson", "csv")
BUSY_SHARE = 0.8  # a gap with at least this much CPU per wall time counts as busy


def fetch(port: int, sql: str, fmt: str, times: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    target = "/request?op=query" + ("" if fmt == "json" else f"&format={fmt}")
    out = []
    try:
        for _ in range(times):
            started = time.monotonic()
            conn.request("POST", target, json.dumps({"sql": sql}), {"Content-Type": "x"})
            response = conn.getresponse()
            body = response.read()
            out.append(time.monotonic() - started)
            if response.status != 200 or b"error" in body[:100]:
                raise RuntimeError(f"{fmt} query failed: {body[:200]!r}")
    finally:
        conn.close()
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reactor_lag", description=__doc__)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--fetches", type=int, default=4)
    args = p.parse_args(argv)

    from twisted.internet import reactor, task
    from twisted.internet.threads import deferToThread

    from qasino.proc import GC_THRESHOLDS
    from qasino.service import ServerConfig, make_service

    sys.setswitchinterval(0.001)  # as qasino_server runs
    gc.set_threshold(*GC_THRESHOLDS)
    config = ServerConfig(
        identity="lag",
        bind="127.0.0.1",
        db_dir=tempfile.mkdtemp(prefix="qasino-bench-lag-"),
        views_file=None,
        line_port=None,
        pubsub_port=0,
        http_port=0,
        zmq_port=0,
        https_port=None,
        generation_duration_s=600,
    )
    server = make_service(config, reactor)
    gc.freeze()
    turns: list[tuple[float, float]] = []
    last = [time.perf_counter(), time.process_time()]

    def tick() -> None:
        now, cpu = time.perf_counter(), time.process_time()
        turns.append((now - last[0], cpu - last[1]))
        last[0], last[1] = now, cpu

    report: dict[str, Any] = {}

    def run(shapes: list[str]) -> None:
        if not shapes:
            reactor.stop()
            return
        fmt = shapes[0]
        del turns[:]
        sql = SQL.format(rows=args.rows)

        def done(seconds: list[float]) -> None:
            busy = [w for w, c in turns if c >= BUSY_SHARE * w]
            report[fmt] = {
                "fetch_s": [round(s, 3) for s in seconds],
                "longest_gap_ms": round(max(w for w, _ in turns) * 1000, 1),
                "longest_busy_gap_ms": round(max(busy) * 1000, 1) if busy else None,
                "turns": len(turns),
            }
            print(fmt, report[fmt], flush=True)
            run(shapes[1:])

        def failed(failure: Any) -> None:
            print(f"{fmt} failed: {failure.getErrorMessage()}", flush=True)
            reactor.stop()

        port = server.ports()["http"]
        deferToThread(fetch, port, sql, fmt, args.fetches).addCallbacks(done, failed)

    def start() -> None:
        task.LoopingCall(tick).start(0.001)
        reactor.callLater(0.3, run, list(SHAPES))

    reactor.callWhenRunning(server.startService)
    reactor.callWhenRunning(start)
    # Stop the server's threads with the reactor, or the process stays.
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    reactor.run()
    print(json.dumps(report, separators=(",", ":")))
    return 0 if len(report) == len(SHAPES) else 1


if __name__ == "__main__":
    sys.exit(main())

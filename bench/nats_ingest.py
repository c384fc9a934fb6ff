"""``python -m bench.nats_ingest [--tables N] [--replicas R]``

NATS JetStream figures, on a real 3-node ``nats-server`` cluster on
loopback (the same cluster helper the tests use):

- ``nats_publish_tables_per_s``: 10-row tables published into stream
  QASINO by many identities (nats-py, pipelined, waiting for every ack).
- ``nats_ingest_tables_per_s``: how fast one Qasino server applies them:
  the server is started on the filled stream with an empty --db-dir and
  applies the whole generation in batches (the catch-up of a restarted
  server, which is also the ceiling of live ingest).
- ``nats_catchup_s``: that catch-up's wall time for N publishes (100,000 by
  default: one generation of a 100,000-host fleet).

Prints a table and, as the last line, one JSON object. The machine is
shared: figures are noisy; compare with the ceilings printed beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import nats

from bench.daemon import start_py_spy, stop_py_spy
from tests.e2e.conftest import http_query
from tests.nats.cluster import NatsCluster
from tests.server_process import QasinoProcess, new_server, poll_until

TARGET_TABLES_PER_S = 20_000


def table_message(i: int) -> bytes:
    ident = f"host{i:06d}"
    rows = [[ident, f"/m{j}", j * 10 + i % 7, 0.5 * j] for j in range(10)]
    return json.dumps(
        {
            "op": "add_table_data",
            "identity": ident,
            "table": {
                "tablename": "disks",
                "column_names": ["host", "mount", "used", "ratio"],
                "column_types": ["text", "text", "integer", "real"],
                "rows": rows,
            },
        }
    ).encode()


async def fill(url: str, n: int, replicas: int, window: int = 2000) -> float:
    """Create QASINO and publish n tables; returns the seconds it took."""
    nc = await nats.connect(servers=url.split(","))
    js = nc.jetstream()
    from nats.js import api

    await js.add_stream(
        api.StreamConfig(
            name="QASINO",
            subjects=["qasino.publish.>", "qasino.tick"],
            num_replicas=replicas,
            max_age=3600.0,
        )
    )
    bodies = [table_message(i) for i in range(n)]
    started = time.perf_counter()
    for lo in range(0, n, window):
        futures = [
            js.publish(f"qasino.publish.host{i:06d}", bodies[i], timeout=30)
            for i in range(lo, min(n, lo + window))
        ]
        await asyncio.gather(*futures)
    took = time.perf_counter() - started
    await nc.close()
    return took


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def query_loop(port: int, stop: threading.Event, latencies: list[float]) -> None:
    """Queries back to back while the server catches up: what a user sees."""
    while not stop.is_set():
        started = time.perf_counter()
        http_query(port, "SELECT count(*) FROM qasino_server_tables")
        latencies.append(time.perf_counter() - started)
        stop.wait(0.005)


def served_rows(port: int, use_write_db: bool) -> int:
    """Rows of table disks in the writer generation or the snapshot (0 if absent)."""
    reply = http_query(port, "SELECT count(*) FROM disks", use_write_db=use_write_db)
    if reply.get("response_op") != "result_table":
        return 0
    return int(reply["table"]["rows"][0][0])


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of a process and of its children, by pid."""
    out = {pid: cpu_seconds(pid)}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                out[int(child)] = cpu_seconds(int(child))
            except OSError:
                pass
    return out


def apply_ceiling(n: int) -> float:
    """Tables/s of the same messages decoded and written in batches of 2,000
    in this process: no NATS, no reactor, no threads (the same-run ceiling)."""
    from qasino.core.tables import DEFAULT_MAX_CELL_BYTES, DEFAULT_MAX_COLUMNS, DEFAULT_MAX_ROWS
    from qasino.nats.messages import StreamMessage, decode
    from qasino.store.store import Store, StoreConfig

    limits = {
        "max_rows": DEFAULT_MAX_ROWS,
        "max_columns": DEFAULT_MAX_COLUMNS,
        "max_cell_bytes": DEFAULT_MAX_CELL_BYTES,
    }
    msgs = [
        StreamMessage(f"qasino.publish.host{i:06d}", table_message(i), None, i + 1, 0)
        for i in range(n)
    ]
    with tempfile.TemporaryDirectory() as d:
        store = Store(StoreConfig(db_dir=d), now=1.7e9)
        started = time.perf_counter()
        for lo in range(0, n, 2000):
            calls = [(store.publish, (decode(m, limits), 1.7e9)) for m in msgs[lo : lo + 2000]]
            store.write_batch(calls)
        took = time.perf_counter() - started
        store.close()
    return n / took


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.nats_ingest")
    p.add_argument("--tables", type=int, default=100_000)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--generation", type=int, default=600)
    p.add_argument(
        "--py-spy", type=Path, default=None, metavar="FILE", help="profile the catch-up into FILE"
    )
    args = p.parse_args(argv)
    ceiling_n = min(args.tables, 20_000)
    before = apply_ceiling(ceiling_n)
    work = Path(tempfile.mkdtemp(prefix="qasino-nats-bench-"))
    cluster = NatsCluster(work / "nats")
    server: QasinoProcess | None = None
    try:
        cluster.start()
        sys.stderr.write(f"publishing {args.tables} tables into QASINO (R={args.replicas})\n")
        publish_s = asyncio.run(fill(cluster.url, args.tables, args.replicas))
        extra = ["--nats", cluster.url, "--nats-replicas", str(args.replicas)]
        server = new_server(work / "server", args.generation, extra)
        sys.stderr.write("starting a server on the filled stream\n")
        started = time.perf_counter()
        server.start(wait_first_generation=False, timeout=60)
        server.wait_log("restored .* static/persist publishes", timeout=60)
        began = time.perf_counter()
        spy = None
        if args.py_spy is not None and server.proc is not None:
            spy = start_py_spy(server.proc.pid, args.py_spy)
        cpu_before = tree_cpu(server.proc.pid) if server.proc is not None else {}
        stop_queries = threading.Event()
        latencies: list[float] = []
        querying = threading.Thread(
            target=query_loop, args=(server.ports["http"], stop_queries, latencies)
        )
        querying.start()
        try:
            server.wait_log("caught up with stream", timeout=600)
        finally:
            done = time.perf_counter()
            stop_queries.set()
            querying.join()
        cpu_after = tree_cpu(server.proc.pid) if server.proc is not None else {}
        if spy is not None:
            stop_py_spy(spy)
        text = server.log_text()
        applied = text.count("not applied")
        # Every table is applied: 10 rows each, none lost, none twice. They
        # are in the generation being written, or (when the fill straddled a
        # multiple of --generation seconds, cut by stream time) partly in
        # the snapshot served.
        port = server.ports["http"]
        rows = served_rows(port, True) + served_rows(port, False)
        if rows != args.tables * 10:
            sys.stderr.write(text[-6000:])
            raise SystemExit(f"the server holds {rows} rows, not {args.tables * 10}")
        result = {
            "nats_publish_tables_per_s": round(args.tables / publish_s),
            "nats_ingest_tables_per_s": round(args.tables / (done - began)),
            "nats_catchup_s": round(done - started, 2),
            "tables": args.tables,
            "replicas": args.replicas,
            "refused": applied,
        }
        if latencies:
            latencies.sort()
            result["catchup_queries"] = len(latencies)
            result["catchup_query_p50_ms"] = round(latencies[len(latencies) // 2] * 1000, 1)
            result["catchup_query_p99_ms"] = round(latencies[len(latencies) * 99 // 100] * 1000, 1)
            result["catchup_query_max_ms"] = round(latencies[-1] * 1000, 1)
        # CPU per table of the server process and of its reader process
        # (started after `began`, so all of its CPU counts).
        server_pid = server.proc.pid if server.proc is not None else -1
        for pid, seconds in cpu_after.items():
            spent = seconds - cpu_before.get(pid, 0.0)
            key = "server_us_per_table" if pid == server_pid else "reader_us_per_table"
            result[key] = round(result.get(key, 0.0) + spent / args.tables * 1e6, 1)
        poll_until(lambda: server is not None and server.alive(), 1, "server alive")
        after = apply_ceiling(ceiling_n)
        result["apply_ceiling_tables_per_s"] = round((before + after) / 2)
        result["ceiling_drift"] = round(after / before, 2)
    finally:
        if server is not None:
            server.close()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    target = result["nats_ingest_tables_per_s"] / TARGET_TABLES_PER_S
    print(f"{'figure':32} {'value':>12}")
    print(f"{'nats_publish_tables_per_s':32} {result['nats_publish_tables_per_s']:>12,}")
    print(
        f"{'nats_ingest_tables_per_s':32} {result['nats_ingest_tables_per_s']:>12,}"
        f"   ({target:.2f} of the {TARGET_TABLES_PER_S:,}/s target)"
    )
    print(f"{'nats_catchup_s':32} {result['nats_catchup_s']:>12}   ({args.tables:,} publishes)")
    ceiling = result["apply_ceiling_tables_per_s"]
    print(
        f"{'apply_ceiling_tables_per_s':32} {ceiling:>12,}   (decode + write in batches, "
        f"in process; ingest = {result['nats_ingest_tables_per_s'] / ceiling:.2f} of it)"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

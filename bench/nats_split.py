"""``python -m bench.nats_split [--tables N] [--rounds R]``

Is a NATS consumer process worth building? This measures the design on
paper in docs/scaling.md before it is built: one process reads the pull
consumer (qasino's ``PullReader``) and decodes and checks every message
(``qasino.nats.messages.decode``); it sends each batch as one frame, as
the server's reader process does, over a pipe to a second process, which applies the batches with
``Store.write_batch`` as the server does (no reactor, no engine). On a real
3-node ``nats-server`` cluster on loopback, filled as ``bench.nats_ingest``
fills it (10-row tables, many identities).

Prints, per round:

- ``split_tables_per_s``: tables applied per second, from the reader's
  start to the last batch applied (the reader's start-up included);
- CPU per table, in µs, of the reader, of the applier, and of the three
  ``nats-server`` processes together (from /proc, over the same span);
- ``cpu_bound_tables_per_s``: what the machine's cores could do at those
  costs (cores x 1e6 / total µs per table), the split's ceiling here.

and, as the last line, one JSON object. Compare ``split_tables_per_s`` with
``nats_ingest_tables_per_s`` of ``bench.nats_ingest`` (one server process)
and with the 20,000/s target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.nats_ingest import TARGET_TABLES_PER_S, cpu_seconds, fill
from qasino.core.tables import DEFAULT_MAX_CELL_BYTES, DEFAULT_MAX_COLUMNS, DEFAULT_MAX_ROWS

_LEN = struct.Struct("!I")
BATCH = 2000
LIMITS = {
    "max_rows": DEFAULT_MAX_ROWS,
    "max_columns": DEFAULT_MAX_COLUMNS,
    "max_cell_bytes": DEFAULT_MAX_CELL_BYTES,
}


def reader_main(url: str, durable: str, n: int) -> int:
    """The reading process: fetch, decode, send one frame per batch on stdout
    (the server's reader frames, ``qasino.nats.reader.encode_batch``)."""
    import nats

    from qasino.nats.bridge import NatsBridge, PullReader
    from qasino.nats.messages import STREAM
    from qasino.nats.reader import encode_batch

    out = os.fdopen(sys.stdout.fileno(), "wb", buffering=0)

    async def run() -> None:
        bridge = NatsBridge(None, url.split(","), "bench-reader", own_loop=False)
        nc = await nats.connect(servers=bridge.servers)
        bridge.nc, bridge.js = nc, nc.jetstream()
        reader: PullReader = await bridge.consumer(STREAM, durable, None)
        sent = 0
        while sent < n:
            msgs = await bridge.fetch(reader, BATCH, 0.5)
            if msgs:
                out.write(encode_batch(msgs, LIMITS))
                sent += len(msgs)
        await nc.close()

    asyncio.run(run())
    return 0


def read_exactly(stream: Any, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise RuntimeError("the reader process ended early")
    return bytes(data)


def one_round(url: str, n: int, durable: str, nats_pids: list[int], work: Path) -> dict[str, Any]:
    from qasino.core.model import Publish
    from qasino.nats.reader import load_frame, messages_of
    from qasino.store.store import Store, StoreConfig

    store = Store(StoreConfig(db_dir=str(work / durable), generation_duration_s=600), now=1.7e9)
    nats_before = sum(cpu_seconds(p) for p in nats_pids)
    mine_before = time.process_time()
    started = time.perf_counter()
    reader = subprocess.Popen(
        [sys.executable, "-m", "bench.nats_split", "--reader", url, durable, str(n)],
        stdout=subprocess.PIPE,
    )
    assert reader.stdout is not None
    applied = refused = 0
    try:
        while applied + refused < n:
            (size,) = _LEN.unpack(read_exactly(reader.stdout, _LEN.size))
            entries = load_frame(read_exactly(reader.stdout, size))
            assert entries is not None  # this reader sends no idle frames
            calls = []
            for m, decoded in zip(*messages_of(entries, LIMITS)):
                if not isinstance(decoded, Publish):  # refused: bad input
                    refused += 1
                    continue
                calls.append((store.publish, (decoded, m.ts)))
            errors = store.write_batch(calls)
            applied += sum(1 for e in errors if e is None)
            refused += sum(1 for e in errors if e is not None)
        took = time.perf_counter() - started
        applier_s = time.process_time() - mine_before
        reader_s = cpu_seconds(reader.pid)
        nats_s = sum(cpu_seconds(p) for p in nats_pids) - nats_before
    finally:
        reader.wait(timeout=30)
        store.close()
    per_table = {
        "reader_us_per_table": round(reader_s / n * 1e6, 1),
        "applier_us_per_table": round(applier_s / n * 1e6, 1),
        "nats_server_us_per_table": round(nats_s / n * 1e6, 1),
    }
    total_us = sum(per_table.values())
    return {
        "split_tables_per_s": round(n / took),
        **per_table,
        "cpu_bound_tables_per_s": round((os.cpu_count() or 1) * 1e6 / total_us),
        "applied": applied,
        "refused": refused,
    }


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    import gc

    from qasino.proc import GC_THRESHOLDS

    gc.set_threshold(*GC_THRESHOLDS)  # both processes collect as the server does
    if argv[:1] == ["--reader"]:
        return reader_main(argv[1], argv[2], int(argv[3]))
    p = argparse.ArgumentParser(prog="bench.nats_split")
    p.add_argument("--tables", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    from tests.nats.cluster import NatsCluster

    work = Path(tempfile.mkdtemp(prefix="qasino-nats-split-"))
    cluster = NatsCluster(work / "nats")
    rounds: list[dict[str, Any]] = []
    try:
        cluster.start()
        sys.stderr.write(f"publishing {args.tables} tables into QASINO (R=3)\n")
        asyncio.run(fill(cluster.url, args.tables, 3))
        pids = [node.proc.pid for node in cluster.nodes if node.proc is not None]
        for r in range(args.rounds):
            # Each round reads the whole stream with a consumer of its own.
            rounds.append(one_round(cluster.url, args.tables, f"split{r}", pids, work))
            sys.stderr.write(f"round {r}: {rounds[-1]}\n")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    keys = list(rounds[0])
    print(f"{'figure':28} " + " ".join(f"{'round ' + str(i):>10}" for i in range(len(rounds))))
    for key in keys:
        print(f"{key:28} " + " ".join(f"{r[key]:>10,}" for r in rounds))
    best = max(r["split_tables_per_s"] for r in rounds)
    print(f"best split_tables_per_s: {best:,} ({best / TARGET_TABLES_PER_S:.2f} of the target)")
    print(json.dumps({"tables": args.tables, "rounds": rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

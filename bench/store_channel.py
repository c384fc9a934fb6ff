"""The store process's CPU per publish with ``--workers N``, without
processes or sockets: frames of checked 10-row publishes (what a worker
sends) fed to a StoreChannel over a real Store, Engine and Dispatcher on
one thread, in reads of ``--batch`` frames; replies go to a memory
transport. What it leaves out is the reactor's turn and the socket calls
per read. Rounds alternate with and without the journal.

    python -m bench.store_channel [--publishes 20000] [--batch 1,16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from typing import Optional

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from qasino.core.model import Publish, PublishOptions, Table
from qasino.engine import Engine, SyncRunner
from qasino.frontends.http import RequestResource
from qasino.ops import Dispatcher
from qasino.store.store import Store, StoreConfig
from qasino.workers import CHECKED, StoreChannel, encode_publish, pack_request

COLUMNS = ("host", "metric", "value", "unit")
TYPES = ("TEXT", "TEXT", "REAL", "TEXT")


def frames(n: int, prefix: str) -> list[bytes]:
    out = []
    for i in range(n):
        identity = f"{prefix}{i}"
        rows = [[identity, f"m{j}", j * 1.5, "ms"] for j in range(10)]
        publish = Publish(Table("peer", COLUMNS, TYPES, rows, False), PublishOptions(identity))
        out.append(pack_request(i, "127.0.0.1", b"", encode_publish(publish), CHECKED))
    return out


def measure(n: int, batch: int, journal: bool, tag: str) -> float:
    """Microseconds of CPU per publish."""
    with tempfile.TemporaryDirectory() as db_dir:
        clock = Clock()
        store = Store(StoreConfig(db_dir=db_dir, journal=journal), now=clock.seconds())
        engine = Engine(store, SyncRunner(), clock, "bench")
        channel = StoreChannel(RequestResource(Dispatcher(engine)))
        transport = StringTransport()
        channel.makeConnection(transport)
        sent = frames(n, tag)
        reads = [b"".join(sent[i : i + batch]) for i in range(0, n, batch)]
        started = time.process_time()
        for data in reads:
            channel.dataReceived(data)
            transport.clear()
        used = time.process_time() - started
        store.close()
    return used / n * 1e6


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.store_channel", description=__doc__)
    p.add_argument("--publishes", type=int, default=20000)
    p.add_argument("--batch", default="1,16")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    print(f"{'batch':>5} {'journal':>7} {'us/publish':>10}")
    for round_ in range(args.rounds):
        for batch in (int(x) for x in args.batch.split(",")):
            for journal in (True, False):
                us = measure(args.publishes, batch, journal, f"r{round_}b{batch}{journal}_")
                print(f"{batch:>5} {journal!s:>7} {us:>10.1f}")
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

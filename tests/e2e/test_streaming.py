"""``stream=1`` against the real server: 2,000,000 rows in flat memory, a
slow client slowing the query rather than filling the server's memory, a
client that goes away stopping the query, and other queries and publishes
served meanwhile."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    HOST,
    QasinoProcess,
    http_publish,
    http_query,
    make_table,
    new_server,
    publish_request,
    zmq_call,
)

ROWS = 2_000_000
COUNTER = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) "
# About 25 bytes a row as CSV; held as Python rows, 2,000,000 of them would
# take hundreds of MiB.
NARROW_SQL = COUNTER + "SELECT x, 'host' || x AS host, x * 0.5 AS half FROM c"
# About 1 KB a row: a server that did not wait for a stalled client would
# pile up far more than the limit within the stall.
WIDE_SQL = COUNTER + "SELECT x, printf('%01000d', x) AS pad FROM c"
BIG_SQL = (
    COUNTER + "SELECT x, 'host' || x AS host, x * 0.5 AS half, printf('%040d', x) AS pad FROM c"
)
RSS_LIMIT_MIB = 50
# A stalled client: what the server may hold is a few slices of ~128 KiB and
# the connection's buffer; unchecked it would grow by tens of MiB a second.
STALL_LIMIT_MIB = 16
STALL_S = 2.0
SLOW_READ_BYTES = 16 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QasinoProcess]:
    """One snapshot for the whole module (no rotation changes the memory),
    a query time limit long enough for 2,000,000 rows on a busy machine."""
    proc = new_server(
        tmp_path_factory.mktemp("streaming"),
        generation_s=600,
        extra_args=["--query-timeout", "120"],
    )
    try:
        proc.start()
        yield proc
    finally:
        proc.close()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class RssSampler(threading.Thread):
    """The server's largest RSS while it runs (sampled every 10 ms)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss_mib(pid)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.01):
            self.peak = max(self.peak, rss_mib(self.pid))

    def stop(self) -> float:
        self.done.set()
        self.join()
        return self.peak


def count_lines(port: int, sql: str, meanwhile: Callable[[], None] = lambda: None) -> int:
    """Stream ``sql`` as CSV with http.client (it decodes the chunks) and
    count its lines; ``meanwhile`` runs once the first bytes are in."""
    target = "/request?" + urllib.parse.urlencode(
        {"op": "query", "format": "csv", "stream": "1", "sql": sql}
    )
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Transfer-Encoding") == "chunked"
        lines = 0
        first = True
        while data := response.read1(1 << 20):
            lines += data.count(b"\n")
            if first:
                meanwhile()
                first = False
        return lines
    finally:
        conn.close()


def open_stream(port: int, sql: str, fmt: str = "csv") -> socket.socket:
    """Send a stream=1 GET on a raw socket; read nothing yet."""
    target = "/request?" + urllib.parse.urlencode(
        {"op": "query", "format": fmt, "stream": "1", "sql": sql}
    )
    sock = socket.create_connection((HOST, port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: qasino\r\n\r\n".encode())
    return sock


class ChunkedReader:
    """Reads a chunked HTTP/1.1 response from a raw socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.headers = b""
        self.complete = False  # the final 0-length chunk arrived

    def _fill(self, size: int = 256 * 1024) -> bool:
        data = self.sock.recv(size)
        self.buffer += data
        return bool(data)

    def read_headers(self) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), "closed before the headers"
        self.headers, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert b"Transfer-Encoding: chunked" in self.headers, self.headers
        return self.headers

    def chunks(self, recv_size: int = 256 * 1024) -> Iterator[bytes]:
        """Decoded chunk payloads until the last chunk or the connection closes."""
        while True:
            while b"\r\n" not in self.buffer:
                if not self._fill(recv_size):
                    return
            size_line, rest = self.buffer.split(b"\r\n", 1)
            size = int(size_line, 16)
            while len(rest) < size + 2:
                if not self._fill(recv_size):
                    return
                rest = self.buffer.split(b"\r\n", 1)[1]
            if size == 0:
                self.complete = True
                return
            yield rest[:size]
            self.buffer = rest[size + 2 :]


def test_two_million_rows_stream_in_flat_memory_while_others_are_served(
    server: QasinoProcess,
) -> None:
    """Every row arrives, the server's RSS stays within 50 MiB of what it was
    before (the rows as Python objects would take hundreds), and publishes
    and queries are answered mid-stream."""
    pid = server.proc.pid  # type: ignore[union-attr]
    port = server.ports["http"]
    # Warm up: the allocator's steady state for a stream, then the baseline.
    assert count_lines(port, NARROW_SQL.format(n=100_000)) == 100_001
    baseline = rss_mib(pid)
    sampler = RssSampler(pid)
    sampler.start()
    served: list[bool] = []

    def meanwhile() -> None:
        table = make_table("during", [("k", "int")], [[1]])
        assert zmq_call(server.ports["zmq"], publish_request("z", table))["response_op"] == "ok"
        assert http_publish(port, publish_request("h", table))["response_op"] == "ok"
        got = http_query(port, "SELECT count(*) FROM during", use_write_db=True)
        assert got["table"]["rows"] == [["2"]]
        served.append(True)

    try:
        lines = count_lines(port, NARROW_SQL.format(n=ROWS), meanwhile)
    finally:
        peak = sampler.stop()
    assert lines == ROWS + 1  # the header row, then every row
    assert served == [True]
    growth = peak - baseline
    assert growth < RSS_LIMIT_MIB, f"server RSS grew {growth:.1f} MiB while streaming"
    server.wait_log(r"streamed 2000000 rows \(\d+ bytes\) as csv")


def test_a_client_that_stops_reading_holds_the_query_back(server: QasinoProcess) -> None:
    """Flow control: while the client reads nothing, the server stops
    reading rows (1 GB of them here) instead of buffering them; its RSS stays
    flat over the whole pause, and the stream is still going afterwards."""
    pid = server.proc.pid  # type: ignore[union-attr]
    before = server.count_log("stream cancelled")
    baseline = rss_mib(pid)
    reader = ChunkedReader(open_stream(server.ports["http"], WIDE_SQL.format(n=1_000_000)))
    try:
        reader.read_headers()
        next(reader.chunks())
        sampler = RssSampler(pid)
        sampler.start()
        # Observe the server for a while with the client not reading: at
        # its speed unchecked it would buffer far over the limit meanwhile.
        time.sleep(STALL_S)
        peak = sampler.stop()
        assert server.count_log(r"streamed 1000000 rows") == 0  # still going
    finally:
        reader.sock.close()
    growth = peak - baseline
    assert growth < STALL_LIMIT_MIB, f"server RSS grew {growth:.1f} MiB with a stalled client"
    server.wait_log("stream cancelled: the client went away", count=before + 1)


def test_a_client_that_goes_away_mid_stream_stops_the_query(server: QasinoProcess) -> None:
    port = server.ports["http"]
    before = server.count_log("stream cancelled")
    reader = ChunkedReader(open_stream(port, BIG_SQL.format(n=100_000_000), "ndjson"))
    reader.read_headers()
    received = 0
    for chunk in reader.chunks(SLOW_READ_BYTES):
        received += len(chunk)
        if received > 1_000_000:
            break
    first = json.loads(chunk.split(b"\n", 1)[0])
    assert set(first) == {"x", "host", "half", "pad"}
    reader.sock.close()
    line = server.wait_log("stream cancelled: the client went away", count=before + 1)
    assert "query stopped" in line
    # The reader thread is free again and the server answers at once.
    assert http_query(port, "SELECT 1 AS one")["table"]["rows"] == [["1"]]
    assert server.count_log(r"streamed \d+ rows .* as ndjson") == 0

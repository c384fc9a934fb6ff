"""Worker-side measurements other than publishing: query loops, a large
JSON result, and the raw storage ceiling. Each runs in a worker process and
returns plain data (times from ``time.monotonic()``, comparable across
processes on one machine)."""

from __future__ import annotations

import http.client
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import apsw

from bench.loadgen import wait_until
from bench.workload import COLUMN_NAMES, SQL_TYPES, make_rows
from qasino.store.sqlite import GENERATION_PAGE_SIZE

HOST = "127.0.0.1"
CEILING_REPEATS = 3


@dataclass(frozen=True)
class QuerySample:
    started: float
    finished: float
    statement: int  # index into the loop's statements
    ok: bool
    first_cell: str  # first cell of the first row ("" if none)

    @property
    def ms(self) -> float:
        return (self.finished - self.started) * 1000.0


@dataclass
class QueryLoop:
    samples: list[QuerySample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def post_query(conn: http.client.HTTPConnection, sql: str, fmt: str = "json") -> bytes:
    body = json.dumps({"op": "query", "sql": sql}).encode()
    target = "/request" if fmt == "json" else f"/request?op=query&format={fmt}"
    conn.request("POST", target, body, {"Content-Type": "application/json"})
    return conn.getresponse().read()


def first_cell(reply: dict[str, object]) -> str:
    table = reply.get("table")
    rows = table.get("rows") if isinstance(table, dict) else None
    return str(rows[0][0]) if rows and rows[0] else ""


def query_loop(
    port: int, statements: Sequence[str], duration_s: float, start_at: float = 0.0
) -> QueryLoop:
    """Run the statements in turn, back to back, on one keep-alive connection."""
    wait_until(start_at)
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    out = QueryLoop()
    deadline = time.monotonic() + duration_s
    i = 0
    try:
        while time.monotonic() < deadline:
            index = i % len(statements)
            started = time.monotonic()
            data = post_query(conn, statements[index])
            finished = time.monotonic()
            reply = json.loads(data)
            ok = reply.get("response_op") == "result_table"
            if not ok and len(out.errors) < 3:
                out.errors.append(str(reply.get("error_message")))
            out.samples.append(QuerySample(started, finished, index, ok, first_cell(reply)))
            i += 1
    finally:
        conn.close()
    return out


@dataclass(frozen=True)
class JsonFetch:
    seconds: float
    rows: int
    size_bytes: int


def fetch_json(port: int, sql: str, times: int, fmt: str = "json") -> list[JsonFetch]:
    """Fetch a large result ``times`` times in the legacy JSON shape (or, with
    ``fmt="arrays"``, the typed arrays shape); each timed from request to
    last byte. The client's parsing is not timed."""
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    out = []
    try:
        for _ in range(times):
            started = time.monotonic()
            data = post_query(conn, sql, fmt)
            seconds = time.monotonic() - started
            reply = json.loads(data)
            if fmt == "arrays":
                if reply.get("ok") is not True:
                    raise RuntimeError(f"query failed: {reply.get('error')}")
                rows = len(reply["rows"])
            else:
                if reply.get("response_op") != "result_table":
                    raise RuntimeError(f"query failed: {reply.get('error_message')}")
                rows = len(reply["table"]["rows"])
            out.append(JsonFetch(seconds, rows, len(data)))
    finally:
        conn.close()
    return out


def fetch_many(
    port: int, sql: str, formats: Sequence[str], times: int, start_at: float = 0.0
) -> tuple[float, float, list[JsonFetch]]:
    """Fetch ``sql`` ``times`` times in each of ``formats`` in turn, back to
    back; returns (first request sent, last byte read, the fetches)."""
    wait_until(start_at)
    started = time.monotonic()
    fetches: list[JsonFetch] = []
    for _ in range(times):
        for fmt in formats:
            fetches += fetch_json(port, sql, 1, fmt)
    return started, time.monotonic(), fetches


def encode_ceiling(rows: int) -> float:
    """Rows per second of apsw fetching ``rows`` rows of the benchmark table
    from a file DB set up like a generation file, plus orjson encoding them,
    in one process: what the arrays shape must cost at least."""
    import orjson

    tmp = Path(tempfile.mkdtemp(prefix="qasino-bench-encode-"))
    try:
        conn = apsw.Connection(str(tmp / "gen.sqlite"))
        conn.pragma("page_size", GENERATION_PAGE_SIZE)
        conn.pragma("journal_mode", "wal")
        conn.pragma("synchronous", "off")
        columns = ", ".join(f'"{n}" {t}' for n, t in zip(COLUMN_NAMES, SQL_TYPES))
        conn.execute(f"CREATE TABLE qbench ({columns})")
        insert = f"INSERT INTO qbench VALUES ({', '.join('?' * len(COLUMN_NAMES))})"
        with conn:
            conn.executemany(insert, make_rows(rows))
        conn.close()
        reader = apsw.Connection(str(tmp / "gen.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)
        reader.execute("SELECT count(*) FROM qbench").fetchall()  # warm the page cache
        seconds = float("inf")
        for _ in range(CEILING_REPEATS):  # the fastest: a ceiling, not a typical time
            started = time.monotonic()
            fetched = reader.execute("SELECT * FROM qbench").fetchall()
            body = orjson.dumps({"rows": fetched})
            seconds = min(seconds, time.monotonic() - started)
            del fetched
        reader.close()
        if body.count(b"],[") != rows - 1:
            raise RuntimeError("encode ceiling: wrong row count")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows / seconds


def raw_insert(total_rows: int, table_rows: int = 1000) -> float:
    """Rows per second of one executemany transaction into a fresh file DB
    set up like a generation file (its page size, WAL, synchronous=OFF). The rows are the
    benchmark's ``table_rows``-row table, repeated."""
    rows = make_rows(table_rows) * max(1, total_rows // table_rows)
    tmp = Path(tempfile.mkdtemp(prefix="qasino-bench-raw-"))
    try:
        conn = apsw.Connection(str(tmp / "raw.sqlite"))
        conn.pragma("page_size", GENERATION_PAGE_SIZE)
        conn.pragma("journal_mode", "wal")
        conn.pragma("synchronous", "off")
        columns = ", ".join(f'"{n}" {t}' for n, t in zip(COLUMN_NAMES, SQL_TYPES))
        conn.execute(f"CREATE TABLE raw ({columns})")
        insert = f"INSERT INTO raw VALUES ({', '.join('?' * len(COLUMN_NAMES))})"
        started = time.monotonic()
        with conn:
            conn.executemany(insert, rows)
        seconds = time.monotonic() - started
        conn.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(rows) / seconds

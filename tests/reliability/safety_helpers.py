"""Helpers of the fuzzing and SQL-safety tests (test_fuzz.py, test_sql_safety.py).

The server process and the request helpers come from the e2e harness
(:mod:`tests.e2e.conftest`, imported as a plain module: none of its fixtures
are used here). This module adds what hostile-input tests need on top:

* snapshots of state that must not change: file trees, SHA-256 of every
  SQLite file, logical dumps of SQLite files and of what a server serves;
* raw exchanges (TCP, ZeroMQ REQ/DEALER) that never wait past a deadline;
* deterministic generators of malformed input for each listener.

Everything binds or connects to 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import sqlite3
import struct
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import zmq

from tests.e2e.conftest import (
    HOST,
    IDENTITY,
    ZMQ_CONTEXT,
    QasinoProcess,
    http_request,
    make_table,
    new_server,
    poll_until,
    publish_request,
    request_target,
    zmq_request,
)

__all__ = [
    "HOST",
    "IDENTITY",
    "QasinoProcess",
    "http_request",
    "make_table",
    "new_server",
    "poll_until",
    "publish_request",
    "request_target",
    "zmq_request",
]

# Files whose bytes legitimately change on a read (SQLite's shared-memory
# index) or that the harness itself writes (server logs).
VOLATILE_SUFFIXES = ("-shm", ".log", ".err")


# ---------------------------------------------------------------- files


def tree(root: Path) -> set[str]:
    """Every file and folder under ``root``, as paths relative to it."""
    if not root.exists():
        return set()
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            out.add(os.path.normpath(os.path.join(rel, name)))
    return out


def sqlite_side_file(root: Path, rel: str) -> bool:
    """SQLite's shared-memory index, or an empty write-ahead log: what a
    read-only connection may create next to a DB file without writing."""
    if rel.endswith("-shm"):
        return True
    path = root / rel
    return rel.endswith("-wal") and path.is_file() and path.stat().st_size == 0


def data_tree(root: Path) -> set[str]:
    """tree(root) without SQLite's side files that readers create."""
    return {rel for rel in tree(root) if not sqlite_side_file(root, rel)}


def digests(root: Path) -> dict[str, str]:
    """SHA-256 of every regular file under ``root`` but the volatile ones."""
    out = {}
    for rel in sorted(data_tree(root)):
        path = root / rel
        if path.is_file() and not rel.endswith(VOLATILE_SUFFIXES):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def sqlite_dump(path: Path) -> list[str]:
    """A logical dump (schema, rows and header pragmas) of one SQLite file,
    read through a read-only connection of its own."""
    uri = "file:" + urllib.parse.quote(str(path)) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        lines = list(conn.iterdump())
        for pragma in ("user_version", "application_id", "schema_version", "journal_mode"):
            lines.append(f"-- {pragma} = {conn.execute(f'PRAGMA {pragma}').fetchone()[0]}")
        return lines
    finally:
        conn.close()


def sqlite_files(db_dir: Path) -> list[Path]:
    return sorted(p for p in db_dir.rglob("*.sqlite") if p.is_file())


@dataclass(frozen=True)
class DiskState:
    """Everything on disk a refused statement could have changed."""

    trees: dict[str, frozenset[str]]
    digests: dict[str, str]
    dumps: dict[str, list[str]]

    @classmethod
    def take(cls, db_dir: Path, watched: Iterable[Path] = ()) -> DiskState:
        return cls(
            trees={str(d): frozenset(data_tree(d)) for d in [db_dir, *watched]},
            digests=digests(db_dir),
            dumps={str(p.relative_to(db_dir)): sqlite_dump(p) for p in sqlite_files(db_dir)},
        )

    def differences(self, other: DiskState) -> list[str]:
        """Readable differences from ``other`` (empty when nothing changed)."""
        out = []
        for root in sorted(set(self.trees) | set(other.trees)):
            before, after = self.trees.get(root, frozenset()), other.trees.get(root, frozenset())
            if before != after:
                out.append(
                    f"files under {root}: new {sorted(after - before)}, gone {sorted(before - after)}"
                )
        for rel in sorted(set(self.digests) | set(other.digests)):
            if self.digests.get(rel) != other.digests.get(rel):
                out.append(f"bytes of {rel} changed")
        for rel in sorted(set(self.dumps) | set(other.dumps)):
            if self.dumps.get(rel) != other.dumps.get(rel):
                out.append(f"content of {rel} changed")
        return out


def files_named(token: str, roots: Iterable[Path], top_level: Iterable[Path] = ()) -> list[str]:
    """Paths whose name contains ``token``: anywhere under ``roots``, and
    directly inside each of ``top_level`` (e.g. /tmp, not walked)."""
    found = [str(p) for root in roots for p in root.rglob(f"*{token}*")]
    for folder in top_level:
        try:
            found += [str(folder / n) for n in os.listdir(folder) if token in n]
        except OSError:
            pass
    return sorted(found)


# ---------------------------------------------------------------- server state


def zmq_json(port: int, request: dict[str, Any] | bytes, timeout: float = 10.0) -> dict[str, Any]:
    frames = zmq_request(port, request, timeout=timeout)
    reply = json.loads(frames[0])
    assert isinstance(reply, dict), reply
    return reply


def zmq_rows(port: int, sql: str, use_write_db: bool = False, timeout: float = 10.0) -> list:
    reply = zmq_json(port, {"op": "query", "sql": sql, "use_write_db": use_write_db}, timeout)
    assert reply.get("response_op") == "result_table", (sql, reply)
    return reply["table"]["rows"]


SCHEMA_SQL = (
    "SELECT 'main', type, name, tbl_name, sql FROM main.sqlite_schema"
    " UNION ALL SELECT 'static', type, name, tbl_name, sql FROM static.sqlite_schema"
    " UNION ALL SELECT 'temp', type, name, tbl_name, sql FROM temp.sqlite_schema"
    " ORDER BY 1, 3"
)
PRAGMA_SQL = [
    f"SELECT * FROM {schema}.pragma_{pragma}"
    for schema in ("main", "static")
    for pragma in ("user_version", "schema_version", "application_id", "journal_mode")
]


def served_state(proc: QasinoProcess) -> dict[str, Any]:
    """What the server serves, read over ZeroMQ: the schema, every table's
    rows (sorted) and the header pragmas, of the snapshot and of the writer
    generation (``use_write_db``); the static DB is attached to both."""
    port = proc.ports["zmq"]
    state: dict[str, Any] = {}
    for use_write_db in (False, True):
        scope = "writer" if use_write_db else "snapshot"
        schema = zmq_rows(port, SCHEMA_SQL, use_write_db)
        state[f"{scope}:schema"] = schema
        for db, type_, name, _tbl, _sql in schema:
            if type_ == "table" and db in ("main", "static"):
                rows = zmq_rows(port, f'SELECT * FROM {db}."{name}"', use_write_db)
                state[f"{scope}:{db}.{name}"] = sorted(rows)
        for sql in PRAGMA_SQL:
            state[f"{scope}:{sql}"] = zmq_rows(port, sql, use_write_db)
    return state


def state_differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [
        f"{key}: {before.get(key)!r:.200} -> {after.get(key)!r:.200}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]


def vm_hwm_kib(pid: int) -> int:
    """The peak resident set size of a process (VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


# ---------------------------------------------------------------- raw exchanges


@dataclass
class Exchange:
    """What came back on one raw TCP connection."""

    data: bytes
    closed: bool  # the server closed the connection (EOF or reset) in time
    error: Optional[str] = None  # a send error (the server may close early)

    def status(self) -> Optional[int]:
        """The HTTP status of the first response, if there is one."""
        if not self.data.startswith(b"HTTP/"):
            return None
        try:
            return int(self.data.split(b" ", 2)[1])
        except (IndexError, ValueError):
            return None


def tcp_exchange(
    port: int, payload: bytes, timeout: float = 5.0, half_close: bool = True
) -> Exchange:
    """Send ``payload`` on a new connection, optionally shut our side down,
    and read until the server closes or ``timeout`` passes (overall)."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    error = None
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        try:
            sock.sendall(payload)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError as e:  # the server may refuse and close while we send
            error = f"{type(e).__name__}: {e}"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Exchange(b"".join(chunks), False, error)
            sock.settimeout(remaining)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                return Exchange(b"".join(chunks), False, error)
            except OSError:  # reset: closed, with whatever came before
                return Exchange(b"".join(chunks), True, error)
            if not data:
                return Exchange(b"".join(chunks), True, error)
            chunks.append(data)


def zmq_req(port: int, frames: list[bytes], timeout: float = 5.0) -> Optional[list[bytes]]:
    """One request on a fresh REQ socket; the reply frames, or None if no
    reply came within ``timeout``."""
    sock = ZMQ_CONTEXT.socket(zmq.REQ)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
        sock.connect(f"tcp://{HOST}:{port}")
        sock.send_multipart(frames)
        if not sock.poll(int(timeout * 1000)):
            return None
        return sock.recv_multipart()
    finally:
        sock.close(linger=0)


class Dealer:
    """A raw DEALER socket, free to send envelopes a REQ socket never would."""

    def __init__(self, port: int) -> None:
        self.sock = ZMQ_CONTEXT.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDTIMEO, 5000)
        self.sock.connect(f"tcp://{HOST}:{port}")

    def __enter__(self) -> Dealer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close(linger=0)

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def drain(self) -> int:
        """Read whatever replies are queued; return how many."""
        count = 0
        while self.sock.poll(0):
            self.sock.recv_multipart()
            count += 1
        return count

    def recv(self, timeout: float) -> Optional[list[bytes]]:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return self.sock.recv_multipart()


# ---------------------------------------------------------------- random values

_UNICODE_SAMPLES = "éüßñ€中文字😀𝔘\u00a0\u200b\u2028\u202e\ufeff\ufffd"
_CONTROL = "".join(chr(c) for c in range(1, 32)) + "\x7f"
_SQL_WORDS = [
    "SELECT",
    "FROM",
    "WHERE",
    "DROP",
    "TABLE",
    "DELETE",
    "ATTACH",
    "PRAGMA",
    "VACUUM",
    "INSERT",
    "UPDATE",
    "WITH",
    "qasino_server_info",
    "*",
    ";",
    "--",
    "/*",
    "*/",
    "'",
    '"',
    "1",
    "(",
    ")",
]


def random_text(rng: random.Random, max_len: int = 40) -> str:
    """Printable ASCII, SQL-ish words, unicode, control characters, and now
    and then a trailing NUL (the server refuses a NUL with a clear error:
    test_fuzz.py's test_statement_with_nul_or_lone_surrogate_is_a_query_error)."""
    parts = []
    for _ in range(rng.randint(0, max_len // 4 + 1)):
        kind = rng.random()
        if kind < 0.4:
            parts.append("".join(chr(rng.randint(32, 126)) for _ in range(rng.randint(1, 6))))
        elif kind < 0.6:
            parts.append(rng.choice(_SQL_WORDS) + " ")
        elif kind < 0.8:
            parts.append(rng.choice(_UNICODE_SAMPLES))
        else:
            parts.append(rng.choice(_CONTROL))
    text = "".join(parts)[:max_len]
    if rng.random() < 0.2:
        text += "\x00"
    return text


def random_bytes(rng: random.Random, max_len: int = 2000) -> bytes:
    return rng.randbytes(rng.randint(0, max_len))


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value (strings from random_text: a NUL now and then, no
    lone surrogates)."""
    kind = rng.randrange(10 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 1, 2**63 - 1, -(2**63), 2**63, 10**30, rng.randint(-999, 999)])
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e308, -1e-308, 1e300 * 1e10, rng.random()])
    if kind in (4, 5, 6):
        return random_text(rng)
    if kind in (7, 8):
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {random_text(rng, 10): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


OPS = ["add_table_data", "add_csv_table_data", "query", "get_table_list", "name_value_update"]


def random_request(rng: random.Random) -> dict[str, Any]:
    """A JSON request whose op is real (mostly) and whose fields are random
    in type and content."""
    op = rng.choice([*OPS, *OPS, "", "bogus", None, 7, ["query"]])
    request: dict[str, Any] = {"op": op}
    if rng.random() < 0.8:
        request["sql"] = rng.choice(
            [random_text(rng), random_json(rng), "SELECT 1", "SHOW tables", "DESC x"]
        )
    if rng.random() < 0.5:
        request["use_write_db"] = random_json(rng)
    if rng.random() < 0.6:
        request["identity"] = rng.choice([random_text(rng, 20), random_json(rng), "fuzzer"])
    if rng.random() < 0.6:
        request["table"] = rng.choice([random_json(rng), random_table(rng)])
    for flag in ("persist", "static", "update", "keycols", "name", "value"):
        if rng.random() < 0.2:
            request[flag] = random_json(rng)
    return request


def random_table(rng: random.Random) -> Any:
    """A table object that is valid, or one mutation away from valid."""
    ncols = rng.randint(1, 4)
    names = [f"c{i}" for i in range(ncols)]
    table: dict[str, Any] = {
        "tablename": f"fuzz_{rng.randrange(5)}",
        "column_names": names,
        "column_types": [rng.choice(["int", "real", "text", "ip", "TIME"]) for _ in names],
        "rows": [[random_json(rng, 3) for _ in names] for _ in range(rng.randint(0, 3))],
    }
    mutation = rng.randrange(8)
    if mutation == 0:
        table.pop(rng.choice(list(table)))
    elif mutation == 1:
        table[rng.choice(list(table))] = random_json(rng)
    elif mutation == 2 and table["rows"]:
        table["rows"][0].append(1)
    elif mutation == 3:
        table["column_names"][0] = random_text(rng, 10)
    elif mutation == 4:
        table["tablename"] = rng.choice(["qasino_server_info", "1x", "a b", 'x"; DROP TABLE x'])
    return table


# ---------------------------------------------------------------- HTTP fuzz cases


@dataclass(frozen=True)
class Case:
    """One malformed input: a label for messages, the bytes to send, and
    whether it is a complete request that must get an HTTP response."""

    label: str
    payload: bytes
    answered: bool = False


def http_bytes(
    method: str,
    target: str,
    body: Optional[bytes] = None,
    headers: Optional[list[tuple[str, str]]] = None,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + (body or b"")


def _quoted(text: str) -> str:
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe="")


_BAD_CHUNKED = [
    b"zz\r\nabc\r\n0\r\n\r\n",
    b"-1\r\nabc\r\n0\r\n\r\n",
    b"ffffffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    b"5\r\nabc\r\n0\r\n\r\n",
    b"3\r\nabcdef\r\n0\r\n\r\n",
    b"3;ext=\x00\xff\r\nabc\r\n0\r\n\r\n",
    b"3\nabc\n0\n\n",
    b"3\r\nabc",
    b"\r\n\r\n",
    b"0x3\r\nabc\r\n0\r\n\r\n",
    b" 3\r\nabc\r\n0\r\n\r\n",
    b"3\r\nabc\r\n0\r\nTrailer: \xff\r\n\r\n",
    b"100000\r\n" + b"a" * 1000,
]


def http_cases(rng: random.Random, count: int, max_body: int) -> list[Case]:
    """``count`` malformed or hostile HTTP inputs, cycling through kinds."""
    valid = http_bytes(
        "POST",
        request_target(op="add_table_data"),
        json.dumps(
            publish_request("fuzzer", make_table("fuzz_trunc", [("a", "int")], [[1], [2]]))
        ).encode(),
        [("Content-Type", "application/json")],
    )
    makers = [
        lambda: Case("random bytes", random_bytes(rng)),
        lambda: Case("random line", random_bytes(rng, 200) + b"\r\n\r\n"),
        lambda: Case(
            "garbage request line",
            rng.choice([b"GET", b"POST", b"\x00GET", b"G\xffT", b"BREW", b"get", b""])
            + rng.choice([b" ", b"  ", b"\t", b""])
            + rng.choice([b"/", b"/request", b"*", b"http://x/", b"//", b"/%", b"/%ZZ", b""])
            + rng.choice([b" HTTP/1.1", b" HTTP/9.9", b" HTTP/1.1 extra", b"", b" FOO"])
            + b"\r\n\r\n",
        ),
        lambda: Case(
            "huge header",
            http_bytes("GET", "/tables", None, [("X-Big", "a" * rng.choice([20_000, 200_000]))]),
            answered=False,
        ),
        lambda: Case(
            "many headers",
            http_bytes("GET", "/tables", None, [(f"X-H{i}", "v" * 50) for i in range(600)]),
        ),
        lambda: Case(
            "malformed header",
            http_bytes(
                "GET",
                "/tables",
                None,
                [rng.choice([("", "x"), ("X\x00", "y"), ("X", "\xff\x00"), ("A B", "c")])],
            )
            + b"No-Colon-Header\r\n\r\n",
        ),
        lambda: Case(
            "bad chunked body",
            http_bytes(
                "POST",
                request_target(op=rng.choice(OPS)),
                None,
                [("Transfer-Encoding", rng.choice(["chunked", "chunked, gzip", "gzip", "x"]))],
            )
            + rng.choice(_BAD_CHUNKED),
        ),
        lambda: Case(
            "bad content-length",
            (
                f"POST {request_target(op='query')} HTTP/1.1\r\nHost: {HOST}\r\n"
                f"Content-Length: {rng.choice(['-1', 'abc', '1e3', '99999999999999999999', '5, 7', ''])}"
                "\r\n\r\n{}"
            ).encode(),
        ),
        lambda: Case(
            "conflicting lengths",
            (
                f"POST {request_target(op='query')} HTTP/1.1\r\nHost: {HOST}\r\n"
                "Content-Length: 2\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n{}"
            ).encode(),
        ),
        lambda: Case("truncated request", valid[: rng.randrange(1, len(valid))]),
        lambda: Case(
            "body over the limit",
            http_bytes("POST", request_target(op="add_table_data"), b"x" * (max_body + 10)),
            answered=True,
        ),
        lambda: Case(
            "random body to an op",
            http_bytes("POST", request_target(op=rng.choice([*OPS, "", "x"])), random_bytes(rng)),
            answered=True,
        ),
        lambda: Case(
            "random JSON body to an op",
            http_bytes(
                "POST",
                request_target(op=rng.choice([*OPS, "bogus"])),
                json.dumps(rng.choice([random_request(rng), random_json(rng)])).encode(),
                [("Content-Type", "application/json")],
            ),
            answered=True,
        ),
        lambda: Case(
            "random CSV body",
            http_bytes(
                "POST",
                request_target(op="add_csv_table_data", identity=random_text(rng, 10)),
                "\n".join(
                    [rng.choice(["1", "identity=f,persist=1", random_text(rng, 10)])]
                    + [random_text(rng, 30) for _ in range(rng.randint(0, 8))]
                ).encode("utf-8", "surrogatepass"),
            ),
            answered=True,
        ),
        lambda: Case(
            "random query parameters",
            http_bytes(
                "GET",
                "/request?"
                + "&".join(
                    f"{k}={_quoted(random_text(rng))}"
                    for k in rng.sample(
                        ["op", "sql", "format", "use_write_db", "name", "value", "identity"],
                        rng.randint(1, 5),
                    )
                ),
            ),
            answered=True,
        ),
        lambda: Case(
            "raw percent junk",
            http_bytes(
                "GET",
                rng.choice(["/request", "/query", "/desc"])
                + rng.choice(
                    [
                        "?op=query&sql=%",
                        "?sql=%ZZ%",
                        "?op=%00&sql=%C0%AE",
                        "?tablename=%ED%A0%80",
                        "?op=query&format=text&sql=%FF%FE",
                        "?&&&=&=",
                        "?op=query&op=bogus&sql=SELECT+1",
                    ]
                ),
            ),
            answered=True,
        ),
        lambda: Case(
            "web page with random parameters",
            http_bytes(
                "GET",
                rng.choice(["/query?sql=", "/desc?tablename=", "/tables?x=", "/views?"])
                + _quoted(random_text(rng)),
            ),
            answered=True,
        ),
        lambda: Case(
            "path traversal",
            http_bytes(
                "GET",
                rng.choice(
                    [
                        "/static/../../../../etc/passwd",
                        "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                        "/static/..%2f..%2f..%2f..%2fetc%2fpasswd",
                        "/static//etc/passwd",
                        "/static/%2F%2Fetc%2Fpasswd",
                        "/" + "a/" * 2000,
                    ]
                ),
            ),
            answered=True,
        ),
        lambda: Case(
            "pipelined garbage",
            http_bytes("GET", request_target(op="query", sql="SELECT 1"))
            + random_bytes(rng, 300)
            + http_bytes("GET", "/tables"),
        ),
    ]
    return [makers[i % len(makers)]() for i in range(count)]


# ---------------------------------------------------------------- ZeroMQ fuzz cases


def zmq_frames_cases(rng: random.Random, count: int) -> list[tuple[str, list[bytes]]]:
    """``count`` hostile messages for a REQ socket (every one must be answered)."""
    makers = [
        lambda: ("random bytes", [random_bytes(rng)]),
        lambda: ("empty frame", [b""]),
        lambda: (
            "non-UTF-8",
            [
                rng.choice(
                    [
                        b"\xff\xfe\xfd",
                        b'{"op": "query", "sql": "SELECT \xff"}',
                        b'{"op": "\xc0\xae"}',
                        b"\xed\xa0\x80",
                    ]
                )
            ],
        ),
        lambda: (
            "multipart",
            [random_bytes(rng, 50) for _ in range(rng.randint(2, 5))],
        ),
        lambda: ("multipart with empty frames", [b"", b'{"op":"query","sql":"SELECT 1"}', b""]),
        lambda: (
            "deep nesting",
            [
                rng.choice(
                    [
                        b"[" * 100_000,
                        b"[" * 100_000 + b"]" * 100_000,
                        b'{"a":' * 50_000,
                        b'{"op":"query","sql":"SELECT 1","x":'
                        + b"[" * 100_000
                        + b"]" * 100_000
                        + b"}",
                    ]
                )
            ],
        ),
        lambda: (
            "huge numbers",
            [
                rng.choice(
                    [
                        b"1" * 5000,
                        b"1e999999",
                        b"-" + b"9" * 100_000,
                        b'{"op":"query","sql":"SELECT 1","use_write_db":1e999}',
                        b'{"op": 123456789012345678901234567890}',
                        b'{"op":"add_table_data","identity":"f","table":{"tablename":"fuzz_n",'
                        b'"column_names":["a"],"column_types":["int"],"rows":[['
                        + b"9" * 4000
                        + b"]]}}",
                        b"NaN",
                        b'{"op":"query","sql":NaN}',
                    ]
                )
            ],
        ),
        lambda: ("random request", [json.dumps(random_request(rng)).encode()]),
        lambda: ("random JSON", [json.dumps(random_json(rng)).encode()]),
        lambda: (
            "truncated JSON",
            [json.dumps(random_request(rng)).encode()[: rng.randint(0, 30)]],
        ),
    ]
    cases = [makers[i % len(makers)]() for i in range(count)]
    cases.append(("large frame", [rng.randbytes(4 * 1024 * 1024)]))
    return cases


def dealer_envelopes(rng: random.Random, count: int) -> list[list[bytes]]:
    """Messages from a raw DEALER that break the REQ envelope."""
    fixed = [
        [b"no delimiter"],
        [b""],
        [b"", b""],
        [b"", b"", b""],
        [b"id", b"", b'{"op":"query","sql":"SELECT 1"}'],
        [b"", b"id", b"", b"{}"],
        [b"\x00" * 300, b"", b"{}"],
        [b"a", b"b", b"c"],
        [b"x" * 70_000],
    ]
    randoms = [
        [rng.choice([b"", random_bytes(rng, 40)]) for _ in range(rng.randint(1, 6))]
        for _ in range(max(0, count - len(fixed)))
    ]
    return fixed + randoms


def zmtp_greeting() -> bytes:
    """A ZMTP 3.0 NULL-mechanism greeting (64 bytes)."""
    return b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32


def zmtp_ready(socket_type: bytes = b"REQ") -> bytes:
    name = b"Socket-Type"
    body = b"\x05READY" + bytes([len(name)]) + name + struct.pack(">I", len(socket_type))
    body += socket_type
    return bytes([0x04, len(body)]) + body


def zmtp_cases(rng: random.Random, count: int) -> list[tuple[str, bytes]]:
    """Raw bytes for a ZeroMQ TCP port: garbage, broken handshakes and
    frames that claim absurd sizes."""
    handshake = zmtp_greeting() + zmtp_ready()
    fixed = [
        ("claims a 2**62-byte frame", handshake + b"\x01\x00\x02" + struct.pack(">Q", 2**62)),
        ("claims a 2**40-byte frame", handshake + b"\x01\x00\x02" + struct.pack(">Q", 2**40)),
        ("bad greeting signature", b"\xfe" + zmtp_greeting()[1:]),
        ("unknown mechanism", zmtp_greeting()[:12] + b"CURVE".ljust(20, b"\x00") + b"\x00" * 32),
        ("bad command", zmtp_greeting() + b"\x04\x05\x03BAD"),
        ("wrong socket type", zmtp_greeting() + zmtp_ready(b"PUB") + b"\x00\x02{}"),
        ("ZMTP 1.0 style", b"\x01\x00" + random_bytes(rng, 100)),
        ("frames after handshake", handshake + random_bytes(rng, 500)),
    ]
    randoms = [("random bytes", random_bytes(rng)) for _ in range(max(0, count - len(fixed)))]
    return fixed + randoms


# ---------------------------------------------------------------- line protocol cases


def line_cases(rng: random.Random, count: int, max_statement: int) -> list[tuple[str, bytes]]:
    makers = [
        lambda: ("random bytes", random_bytes(rng)),
        lambda: ("random bytes ending in ;", random_bytes(rng, 300) + b";\n"),
        lambda: ("NUL bytes", b"\x00" * rng.randint(1, 5000) + rng.choice([b"", b";\n", b"\n"])),
        lambda: ("0xff sequences", b"\xff" * rng.randint(1, 3000) + rng.choice([b"", b"\n"])),
        lambda: (
            "telnet negotiation",
            rng.choice([b"\xff\xfb\x01", b"\xff\xfd\x03", b"\xff\xf4", b"\xff\xfa\x18\x00\xff\xf0"])
            + b"SELECT 1;\n",
        ),
        lambda: (
            "random statements",
            b"".join(
                random_text(rng, 60).encode("utf-8", "surrogatepass") + b";\n"
                for _ in range(rng.randint(1, 20))
            ),
        ),
        lambda: ("long line", b"x" * (max_statement + rng.randint(1, 5000)) + b"\n"),
        lambda: ("long line without newline", b"SELECT " + b"1" * (max_statement + 10)),
        lambda: (
            "many short lines",
            b"SELECT\n" * rng.randint(100, 20_000) + rng.choice([b"1;\n", b""]),
        ),
        lambda: ("invalid UTF-8", b"SELECT '\xc0\xae\xed\xa0\x80\xff';\n"),
        lambda: ("carriage returns only", b"SELECT 1;\r" * 50),
        lambda: ("break characters", rng.choice([b"\x03\n", b"\x04\n", b"\x03\x04\r\n"])),
    ]
    return [makers[i % len(makers)]() for i in range(count)]

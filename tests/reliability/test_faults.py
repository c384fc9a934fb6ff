"""Faults (issue 6, item 4): crashes, stalled clients, runaway queries, bad disks,
too many connections. Every test runs its own real server on 127.0.0.1.

- ``kill -9`` while static tables are being published in a loop, then a
  restart on the same db dir: the static DB passes ``PRAGMA integrity_check``
  and holds the last acknowledged publish (one whole publish, never a mix).
- A slowloris on HTTP, a telnet client that never ends its statement and a
  ZeroMQ peer that never reads its replies do not hold up anybody else.
- A runaway query gets its time-limit error and blocks neither ingest nor
  rotation.
- A full disk: a file-size limit (RLIMIT_FSIZE, works anywhere) and a real
  full tmpfs under the db dir, in a private mount namespace.
- A read-only generations directory (a read-only bind mount in a private
  mount namespace; see the test). The tmpfs and read-only tests need root or
  user namespaces: without them they fail, they never skip silently (CI runs
  as root; QASINO_SKIP_MOUNT_TESTS=1 skips them on purpose elsewhere).
- ``--max-connections``: extra connections are closed, and the listener
  recovers when the others close.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import apsw
import pytest
import requests
import zmq

from tests.e2e.conftest import (
    HOST,
    IDENTITY,
    ZMQ_CONTEXT,
    LineClient,
    http_publish,
    http_request,
    make_table,
    publish_request,
    request_target,
    zmq_request,
)
from tests.reliability.conftest import (
    MountNamespace,
    Profile,
    ReliabilityProcess,
    deadline_poll,
    fsize_limit_prefix,
    require_mount_namespace,
)

PROMPT_S = 5.0  # "answers promptly": a functional deadline, not a speed figure
OK = {"identity": IDENTITY, "response_op": "ok"}
RUNAWAY_SQL = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
)

# ---------------------------------------------------------------- small clients


def http_q(port: int, sql: str, timeout: float = PROMPT_S) -> dict[str, Any]:
    reply = http_request(port, "GET", request_target(op="query", sql=sql), timeout=timeout)
    assert reply.status == 200, reply
    result: dict[str, Any] = reply.json()
    return result


def zmq_q(port: int, sql: str, timeout: float = PROMPT_S) -> dict[str, Any]:
    frames = zmq_request(port, {"op": "query", "sql": sql}, timeout=timeout)
    result: dict[str, Any] = json.loads(frames[0])
    return result


def line_q(port: int, sql: str, timeout: float = PROMPT_S) -> str:
    with LineClient(port, timeout) as client:
        client.send(sql.rstrip(";") + ";\n")
        return client.read_answers(1)


def http_pub(port: int, request: dict[str, Any], timeout: float = PROMPT_S) -> dict[str, Any]:
    """A publish whose reply may carry any status (a storage error is 507)."""
    return http_publish(port, request, timeout, status=None)


def zmq_pub(port: int, request: dict[str, Any], timeout: float = PROMPT_S) -> dict[str, Any]:
    frames = zmq_request(port, {"op": "add_table_data", **request}, timeout=timeout)
    result: dict[str, Any] = json.loads(frames[0])
    return result


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.monotonic()
    value = fn()
    return value, time.monotonic() - t0


def every_listener_answers(server: ReliabilityProcess, label: str) -> dict[str, float]:
    """A trivial query over HTTP, ZeroMQ and telnet, each within PROMPT_S."""
    sql = "SELECT 41 + 1 AS answer"
    ports = server.ports
    h, th = timed(lambda: http_q(ports["http"], sql))
    z, tz = timed(lambda: zmq_q(ports["zmq"], sql))
    line, tl = timed(lambda: line_q(ports["line"], sql))
    assert h.get("table", {}).get("rows") == [["42"]], h
    assert z.get("table", {}).get("rows") == [["42"]], z
    assert "42" in line and "1 rows returned" in line, line
    figures = {"http": th, "zmq": tz, "line": tl}
    for kind, seconds in figures.items():
        assert seconds < PROMPT_S, f"{kind} query took {seconds:.2f}s"
    print(
        f"[{label}] query latency: "
        + ", ".join(f"{k} {v * 1000:.1f}ms" for k, v in figures.items())
    )
    return figures


def rows_now(port: int, sql: str) -> Optional[list[list[str]]]:
    """The rows of a query, or None while it errors (table not there yet)."""
    reply = http_q(port, sql)
    if reply.get("response_op") != "result_table":
        return None
    rows: list[list[str]] = reply["table"]["rows"]
    return rows


def served_soon(port: int, sql: str, expected: list[list[str]], timeout: float = PROMPT_S) -> None:
    """Poll until the served snapshot answers ``sql`` with ``expected``."""
    deadline_poll(lambda: rows_now(port, sql) == expected, timeout, f"{sql} -> {expected}")


def open_readonly(path: Path) -> apsw.Connection:
    uri = "file:" + urllib.parse.quote(str(path)) + "?mode=ro"
    return apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)


def integrity(path: Path) -> list[str]:
    conn = open_readonly(path)
    try:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def static_db(server: ReliabilityProcess) -> Path:
    return server.workdir / "db" / "qasino_table_store_static.db"


# ---------------------------------------------------------------- (a) kill -9 mid-ingest

CRASH_COLUMNS = (("counter", "integer"), ("part", "integer"), ("note", "text"))


def crash_rows(counter: int) -> list[list[Any]]:
    """Publish ``counter``: its row count and every cell depend on the counter,
    so a mix of two publishes cannot look like one."""
    return [
        [counter, part, f"c{counter}-p{part}-" + "x" * 40] for part in range(300 + counter % 97)
    ]


@dataclass
class StaticLoop:
    """Publishes one static table again and again with an increasing counter."""

    server: ReliabilityProcess
    transport: str  # "http" or "zmq"
    table: str
    sent: int  # the highest counter handed to the transport
    stop: threading.Event
    acked: int = 0
    acks: int = 0
    errors: list[tuple[float, str]] = field(default_factory=list)

    def run(self) -> None:
        session = requests.Session()
        sock: Optional[zmq.Socket] = None
        url = f"http://{HOST}:{self.server.ports['http']}/request"
        try:
            if self.transport == "zmq":
                sock = ZMQ_CONTEXT.socket(zmq.REQ)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(f"tcp://{HOST}:{self.server.ports['zmq']}")
            deadline = time.monotonic() + 60
            while not self.stop.is_set() and time.monotonic() < deadline:
                counter = self.sent + 1
                table = make_table(self.table, CRASH_COLUMNS, crash_rows(counter))
                body = json.dumps(publish_request("crasher", table, static=1)).encode()
                self.sent = counter  # from here on the DB may hold it
                if sock is not None:
                    sock.send(body)
                    while not sock.poll(100):
                        if self.stop.is_set() or time.monotonic() > deadline:
                            return
                    reply = json.loads(sock.recv())
                else:
                    reply = session.post(
                        url, params={"op": "add_table_data"}, data=body, timeout=10
                    ).json()
                if reply != OK:
                    self.errors.append((time.monotonic(), f"reply {reply}"))
                    return
                self.acked = counter
                self.acks += 1
        except Exception as e:
            self.errors.append((time.monotonic(), repr(e)))
        finally:
            session.close()
            if sock is not None:
                sock.close(linger=0)


def ingest_loop(
    server: ReliabilityProcess, stop: threading.Event, errors: list[Any], prefix: str = ""
) -> None:
    """Plain (generation) publishes from ever new identities: writer load.
    (A restart after a kill replays the journal: its identities have published
    in the new writer generation too, so each run gets a ``prefix`` of its own.)"""
    session = requests.Session()
    url = f"http://{HOST}:{server.ports['http']}/request"
    rows = [[i, "y" * 30] for i in range(200)]
    try:
        for n in range(100_000):
            if stop.is_set():
                return
            table = make_table("crash_ingest", (("i", "integer"), ("pad", "text")), rows)
            body = json.dumps(publish_request(f"ingest{prefix}{n}", table)).encode()
            reply = session.post(url, params={"op": "add_table_data"}, data=body, timeout=10)
            if reply.json() != OK:
                errors.append((time.monotonic(), reply.text))
                return
    except Exception as e:
        errors.append((time.monotonic(), repr(e)))
    finally:
        session.close()


def stored_publish(conn: apsw.Connection, table: str) -> tuple[int, int]:
    """(counter, rows) of the one publish a static table holds; fails on a mix."""
    rows = list(conn.execute(f"SELECT counter, part, note FROM {table} ORDER BY part"))
    counters = {r[0] for r in rows}
    assert len(counters) == 1, f"{table} mixes publishes {sorted(counters)[:10]}"
    counter = counters.pop()
    expected = [tuple(r) for r in crash_rows(counter)]
    assert rows == expected, f"{table}: publish {counter} is incomplete or altered"
    return counter, len(rows)


def check_static_file(path: Path, loops: list[StaticLoop], when: str) -> dict[str, int]:
    verdict = integrity(path)
    assert verdict == ["ok"], f"integrity_check {when}: {verdict[:10]}"
    conn = open_readonly(path)
    try:
        found = {}
        for loop in loops:
            counter, nrows = stored_publish(conn, loop.table)
            assert loop.acked <= counter <= loop.sent, (
                f"{when}: {loop.table} holds publish {counter}; last acked {loop.acked}, "
                f"last sent {loop.sent}"
            )
            found[loop.table] = counter
        return found
    finally:
        conn.close()


def test_kill_9_mid_ingest_then_restart_serves_at_once_with_the_last_acknowledged_static_content(
    make_server: Any, profile: Profile
) -> None:
    server: ReliabilityProcess = make_server("crash", generation_s=1)
    server.start()
    rng = random.Random(6)
    counters = {"crash_http": 0, "crash_zmq": 0}
    path = static_db(server)
    for cycle in range(profile.crash_cycles):
        stop = threading.Event()
        loops = [
            StaticLoop(server, "http", "crash_http", counters["crash_http"], stop),
            StaticLoop(server, "zmq", "crash_zmq", counters["crash_zmq"], stop),
        ]
        ingest_errors: list[Any] = []
        threads = [threading.Thread(target=loop.run, daemon=True) for loop in loops]
        threads.append(
            threading.Thread(
                target=ingest_loop, args=(server, stop, ingest_errors, f"{cycle}-"), daemon=True
            )
        )
        want = rng.randint(3, 25)  # kill at a different point every cycle
        try:
            for t in threads:
                t.start()
            deadline_poll(
                lambda loops=loops, want=want: (
                    all(lp.acks >= want for lp in loops) or any(lp.errors for lp in loops)
                ),
                20,
                f"{want} acknowledged static publishes per loop",
            )
            t_kill = time.monotonic()
            server.close()  # SIGKILL, wait, close its log files
        finally:
            stop.set()
            for t in threads:
                t.join(15)
        assert not any(t.is_alive() for t in threads)
        for loop in loops:
            early = [e for t, e in loop.errors if t < t_kill]
            assert not early, f"{loop.table} failed before the kill: {early}"
        assert not [e for t, e in ingest_errors if t < t_kill], ingest_errors
        after_kill = check_static_file(path, loops, "after kill -9")

        t_restart = time.monotonic()
        server.start()  # same flags, same db dir
        restart_s = time.monotonic() - t_restart
        # It serves at once: the first query after the startup snapshot sees
        # exactly what was on disk.
        for loop in loops:
            sql = f"SELECT counter, count(*) FROM {loop.table} GROUP BY counter"
            query = http_q if loop.transport == "http" else zmq_q
            port = server.ports[loop.transport]
            reply = query(port, sql)
            counter = after_kill[loop.table]
            assert reply.get("table", {}).get("rows") == [
                [str(counter), str(len(crash_rows(counter)))]
            ], reply
        assert check_static_file(path, loops, "after restart") == after_kill
        print(
            f"[crash] cycle {cycle}: restart served in {restart_s:.2f}s; "
            + ", ".join(
                f"{loop.table} acked {loop.acked} sent {loop.sent} on disk {after_kill[loop.table]}"
                for loop in loops
            )
        )
        counters = {loop.table: loop.sent for loop in loops}
    assert server.stop() == 0
    check_static_file(path, loops, "after a clean stop")


# ---------------------------------------------------------------- (b) slow and stalled clients


@dataclass
class SlowClients:
    """Slowloris HTTP, never-ending telnet statements and a ZeroMQ DEALER that
    never reads, all held open until ``stop``."""

    server: ReliabilityProcess
    stop: threading.Event = field(default_factory=threading.Event)
    loris_bytes: list[int] = field(default_factory=list)
    telnet_bytes: list[int] = field(default_factory=list)
    dealer_sent: int = 0
    errors: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, loris: int = 4, telnets: int = 2, dealer_requests: int = 2000) -> None:
        for i in range(loris):
            self.loris_bytes.append(0)
            self._spawn(self._slowloris, i)
        for i in range(telnets):
            self.telnet_bytes.append(0)
            self._spawn(self._telnet, i)
        self._spawn(self._dealer, dealer_requests)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def _slowloris(self, i: int) -> None:
        """Headers one byte per 100 ms, never finished."""
        header = (
            b"GET /request?op=query&sql=SELECT+1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + b"X-Slow: "
            + b"a" * 100_000
        )
        try:
            with socket.create_connection((HOST, self.server.ports["http"]), timeout=5) as s:
                for byte in header:
                    if self.stop.wait(0.1):
                        return
                    s.sendall(bytes([byte]))
                    self.loris_bytes[i] += 1
        except OSError as e:
            self.errors.append(f"slowloris {i}: {e!r}")

    def _telnet(self, i: int) -> None:
        """A statement that never ends: lines without ';', then bytes without a newline."""
        try:
            with socket.create_connection((HOST, self.server.ports["line"]), timeout=5) as s:
                s.sendall(b"SELECT 1,\n")
                self.telnet_bytes[i] += 10
                for n in range(100_000):
                    if self.stop.wait(0.1):
                        return
                    chunk = f"{n},\n".encode() if i % 2 == 0 else b"2"
                    s.sendall(chunk)
                    self.telnet_bytes[i] += len(chunk)
        except OSError as e:
            self.errors.append(f"telnet {i}: {e!r}")

    def _dealer(self, count: int) -> None:
        """Many requests, replies never read."""
        sock = ZMQ_CONTEXT.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, 10)
            sock.connect(f"tcp://{HOST}:{self.server.ports['zmq']}")
            body = json.dumps({"op": "query", "sql": "SELECT * FROM qasino_server_tables"}).encode()
            deadline = time.monotonic() + 20
            while self.dealer_sent < count and time.monotonic() < deadline:
                try:
                    sock.send_multipart([b"", body], zmq.NOBLOCK)
                    self.dealer_sent += 1
                except zmq.Again:
                    if self.stop.wait(0.01):
                        return
            self.stop.wait(60)
        finally:
            sock.close(linger=0)


def test_slowloris_stalled_telnet_and_unread_zeromq_replies_do_not_block_other_clients(
    make_server: Any,
) -> None:
    server: ReliabilityProcess = make_server("slow", generation_s=1)
    server.start()
    slow = SlowClients(server)
    try:
        slow.start()
        deadline_poll(
            lambda: (
                min(slow.loris_bytes) >= 5
                and min(slow.telnet_bytes) >= 11
                and slow.dealer_sent >= 2000
            ),
            15,
            "every slow client to be under way",
        )
        g0 = server.wait_generation(timeout=PROMPT_S)
        every_listener_answers(server, "slow clients")
        table = make_table("slow_ok", (("via", "text"),), [["http"]])
        (h, th) = timed(
            lambda: http_pub(server.ports["http"], publish_request("a", table, persist=1))
        )
        table = make_table("slow_ok", (("via", "text"),), [["zmq"]])
        (z, tz) = timed(
            lambda: zmq_pub(server.ports["zmq"], publish_request("b", table, persist=1))
        )
        assert h == OK and z == OK, (h, z)
        served_soon(
            server.ports["http"], "SELECT via FROM slow_ok ORDER BY via", [["http"], ["zmq"]]
        )
        g1 = server.wait_generation(after=g0["generation_number"], timeout=PROMPT_S)
        assert not slow.errors, slow.errors
        print(
            f"[slow] publish acks: http {th * 1000:.1f}ms, zmq {tz * 1000:.1f}ms; "
            f"generations {g0['generation_number']} -> {g1['generation_number']}; "
            f"slowloris bytes {slow.loris_bytes}, telnet bytes {slow.telnet_bytes}, "
            f"unread DEALER requests {slow.dealer_sent}"
        )
        assert server.alive()
    finally:
        slow.close()
    # And once they are gone, everything still answers.
    every_listener_answers(server, "after slow clients")
    assert server.stop() == 0


# ---------------------------------------------------------------- (c) runaway query


def test_runaway_query_gets_its_time_limit_error_and_blocks_neither_ingest_nor_rotation(
    make_server: Any,
) -> None:
    server: ReliabilityProcess = make_server(
        "runaway", generation_s=1, extra_args=["--query-timeout", "3", "--reader-threads", "3"]
    )
    server.start()
    ports = server.ports
    results: dict[str, tuple[float, float, Any]] = {}

    def runaway(kind: str) -> None:
        t0 = time.monotonic()
        try:
            reply: Any = (http_q if kind == "http" else zmq_q)(ports[kind], RUNAWAY_SQL, 20)
        except Exception as e:
            reply = repr(e)
        results[kind] = (t0, time.monotonic(), reply)

    g0 = server.wait_generation(timeout=PROMPT_S)
    threads = [threading.Thread(target=runaway, args=(k,), daemon=True) for k in ("http", "zmq")]
    t_start = time.monotonic()
    for t in threads:
        t.start()
    try:
        acks = []
        for i in range(6):
            via = "http" if i % 2 == 0 else "zmq"
            table = make_table("runaway_ingest", (("i", "integer"),), [[i]])
            request = publish_request(f"ingest{i}", table, persist=1)
            reply = (http_pub if via == "http" else zmq_pub)(ports[via], request)
            assert reply == OK, reply
            acks.append(time.monotonic())
        g1 = server.wait_generation(after=g0["generation_number"], timeout=PROMPT_S)
        t_g1 = time.monotonic()
        server.wait_generation(after=g1["generation_number"], timeout=PROMPT_S)
        t_g2 = time.monotonic()
        # One reader thread of three is still free: plain queries answer too.
        answer, t_query = timed(
            lambda: http_q(ports["http"], "SELECT count(*) FROM runaway_ingest")
        )
        assert answer.get("table", {}).get("rows") == [["6"]], answer
    finally:
        for t in threads:
            t.join(25)
    assert set(results) == {"http", "zmq"}, results
    first_reply = min(done for _, done, _ in results.values())
    for kind, (t0, done, reply) in results.items():
        assert isinstance(reply, dict) and reply.get("response_op") == "error", (kind, reply)
        assert "time limit" in reply["error_message"], reply
        assert done - t0 >= 2.5, f"{kind} runaway answered after {done - t0:.2f}s"
    # All of it happened while both runaways were still running.
    assert max(acks) < first_reply and t_g2 < first_reply, (
        f"acks/rotations did not finish before the runaway replies: last ack "
        f"{max(acks) - t_start:.2f}s, 2nd generation {t_g2 - t_start:.2f}s, first runaway "
        f"reply {first_reply - t_start:.2f}s"
    )
    print(
        f"[runaway] last ack {max(acks) - t_start:.2f}s, generations at "
        f"{t_g1 - t_start:.2f}s and {t_g2 - t_start:.2f}s, plain query {t_query * 1000:.1f}ms, "
        f"runaway errors after "
        + ", ".join(f"{k} {d - t0:.2f}s" for k, (t0, d, _) in results.items())
    )
    assert server.alive()


# ---------------------------------------------------------------- (d) full disk

FSIZE_LIMIT = 2 * 1024 * 1024


def big_table(name: str, megabytes: int = 6) -> dict[str, Any]:
    """About ``megabytes`` MiB of rows: more than SQLite's page cache (2 MiB),
    so pages spill to the WAL while the rows are inserted, not only at commit."""
    return make_table(
        name,
        (("n", "integer"), ("blob", "text")),
        [[i, "z" * 1000] for i in range(megabytes * 1024)],
    )


def file_size_limited(make_server: Any, name: str) -> ReliabilityProcess:
    server: ReliabilityProcess = make_server(
        name, generation_s=1, prefix=fsize_limit_prefix(FSIZE_LIMIT)
    )
    server.start()
    return server


def test_file_size_limit_gives_publishers_errors_and_a_log_line_and_the_daemon_keeps_serving(
    make_server: Any,
) -> None:
    server = file_size_limited(make_server, "fsize")
    ports = server.ports
    keep = make_table("disk_keep", (("v", "text"),), [["a"], ["b"], ["c"]])
    assert http_pub(ports["http"], publish_request("h", keep, static=1)) == OK
    # Over ZeroMQ: the body stays in memory (HTTP spools big bodies to a
    # temporary file, which the limit hits too: that path has its own test,
    # test_file_size_limit_http_publish_of_a_big_body_gets_an_error_reply).
    plain = zmq_pub(ports["zmq"], publish_request("h", big_table("disk_big")), timeout=30)
    static = zmq_pub(ports["zmq"], publish_request("h", big_table("disk_keep"), static=1), 30)
    for reply in (plain, static):
        assert reply.get("response_op") == "error" and reply.get("error_message"), reply
    log = server.wait_log(r"add_table_data failed", count=2, timeout=PROMPT_S)
    print("[fsize] replies: " + " | ".join(r["error_message"] for r in (plain, static)))
    print("[fsize] log: " + " | ".join(re.findall(r"add_table_data failed: [^\n]*", log)))
    assert server.alive()
    every_listener_answers(server, "file size limit")
    small = make_table("disk_small", (("v", "integer"),), [[1]])
    assert http_pub(ports["http"], publish_request("h", small, persist=1)) == OK
    small_static = make_table("disk_small_static", (("v", "integer"),), [[2]])
    assert zmq_pub(ports["zmq"], publish_request("h", small_static, static=1)) == OK
    served_soon(ports["http"], "SELECT v FROM disk_small", [["1"]])
    served_soon(ports["http"], "SELECT v FROM disk_small_static", [["2"]])
    # The failed replace left the old static content alone; the big plain
    # table was never stored.
    assert rows_now(ports["http"], "SELECT v FROM disk_keep ORDER BY v") == [["a"], ["b"], ["c"]]
    assert rows_now(ports["http"], "SELECT count(*) FROM disk_big") is None
    g = server.wait_generation(timeout=PROMPT_S)
    server.wait_generation(after=g["generation_number"], timeout=PROMPT_S)
    assert integrity(static_db(server)) == ["ok"]
    assert server.stop() == 0


def test_file_size_limit_error_reply_names_the_storage_failure(make_server: Any) -> None:
    server = file_size_limited(make_server, "fsize_message")
    reply = zmq_pub(server.ports["zmq"], publish_request("h", big_table("disk_big")), timeout=30)
    assert reply.get("response_op") == "error", reply
    assert re.search(r"storage error|disk|full|too large", reply["error_message"], re.I), reply


def test_file_size_limit_http_publish_of_a_big_body_gets_an_error_reply(make_server: Any) -> None:
    server = file_size_limited(make_server, "fsize_http")
    try:
        reply = http_pub(server.ports["http"], publish_request("h", big_table("disk_big")), 30)
    finally:
        assert server.alive()
    assert reply.get("response_op") == "error", reply


# -- a real full disk: a small tmpfs over the db dir, in a private mount namespace

TMPFS_SIZE = 16 * 1024 * 1024
BALLAST = 13 * 1024 * 1024  # leaves about 3 MiB free


@pytest.fixture
def mount_ns(tmp_path: Path) -> MountNamespace:
    """Fails (never skips silently) where no mount namespace can be made;
    see require_mount_namespace."""
    return require_mount_namespace(tmp_path / "mount-probe")


def tmpfs_server(
    make_server: Any, ns: MountNamespace, tmp_path: Path, name: str
) -> ReliabilityProcess:
    db = tmp_path / name / "db"
    db.mkdir(parents=True)
    script = (
        f"mount -t tmpfs -o size={TMPFS_SIZE} qasino-test '{db}' && "
        f"head -c {BALLAST} /dev/zero > '{db}/ballast' && exec \"$@\""
    )
    server: ReliabilityProcess = make_server(
        name, generation_s=1, prefix=[*ns.launch_prefix, "sh", "-c", script, "sh"]
    )
    server.start()
    return server


def test_full_db_disk_gives_publishers_errors_and_a_log_line_and_recovers_when_space_is_freed(
    make_server: Any, mount_ns: MountNamespace, tmp_path: Path
) -> None:
    server = tmpfs_server(make_server, mount_ns, tmp_path, "tmpfs")
    ports = server.ports
    before = make_table("full_before", (("v", "integer"),), [[1]])
    assert http_pub(ports["http"], publish_request("h", before, persist=1)) == OK
    served_soon(ports["http"], "SELECT v FROM full_before", [["1"]])
    reply = zmq_pub(ports["zmq"], publish_request("h", big_table("full_big")), timeout=30)
    assert reply.get("response_op") == "error", reply
    server.wait_log("add_table_data failed", timeout=PROMPT_S)
    print(f"[tmpfs] big publish: {reply['error_message']}")
    # Not a dead daemon: every listener still replies (the snapshot may not
    # be readable while the disk is full: an error reply is a reply).
    for kind, query in (("http", http_q), ("zmq", zmq_q)):
        answer, seconds = timed(lambda q=query, k=kind: q(ports[k], "SELECT v FROM full_before"))
        assert answer.get("response_op") in ("result_table", "error"), answer
        print(f"[tmpfs] {kind} query while full ({seconds * 1000:.1f}ms): {str(answer)[:160]}")
    line = line_q(ports["line"], "SELECT 1")
    assert "rows returned" in line or "SQL error" in line, line
    during = make_table("full_during", (("v", "integer"),), [[2]])
    during_reply = http_pub(ports["http"], publish_request("h", during, persist=1))
    print(f"[tmpfs] small publish while full: {during_reply}")
    assert server.alive()
    # Free the space: rotation, queries and publishing come back.
    freed = mount_ns.enter(server.pid, f"rm -f '{server.workdir / 'db' / 'ballast'}'")
    assert freed.returncode == 0, freed.stderr
    server.wait_generation(timeout=PROMPT_S * 2)
    served_soon(ports["http"], "SELECT v FROM full_before", [["1"]])
    if during_reply == OK:
        served_soon(ports["http"], "SELECT v FROM full_during", [["2"]])
    after = make_table("full_after", (("v", "integer"),), [[3]])
    assert zmq_pub(ports["zmq"], publish_request("h", after, persist=1)) == OK
    served_soon(ports["http"], "SELECT v FROM full_after", [["3"]])
    every_listener_answers(server, "tmpfs after freeing")
    assert server.stop() == 0


def test_full_db_disk_a_failed_big_publish_does_not_stop_rotation(
    make_server: Any, mount_ns: MountNamespace, tmp_path: Path
) -> None:
    server = tmpfs_server(make_server, mount_ns, tmp_path, "tmpfs_wedge")
    ports = server.ports
    g0 = server.wait_generation(timeout=PROMPT_S)
    reply = zmq_pub(ports["zmq"], publish_request("h", big_table("full_big")), timeout=30)
    assert reply.get("response_op") == "error", reply
    small = make_table("full_small", (("v", "integer"),), [[1]])
    assert http_pub(ports["http"], publish_request("h", small, persist=1)) == OK
    # There was room for rotations before the refused publish; there must be after it.
    server.wait_generation(after=g0["generation_number"], timeout=PROMPT_S)
    served_soon(ports["http"], "SELECT v FROM full_small", [["1"]])


# ---------------------------------------------------------------- read-only generations dir


@pytest.mark.parametrize("writer_used", [False, True], ids=["fresh-writer", "used-writer"])
def test_read_only_generations_dir_gives_errors_or_acks_a_log_line_and_loses_no_acked_table(
    make_server: Any, mount_ns: MountNamespace, writer_used: bool
) -> None:
    """The generations directory is bind-mounted read-only under the running
    server (remounting a file system read-only while files on it are open for
    writing is refused with EBUSY, so this is as close to a disk going
    read-only as one gets without device-mapper): no file can be created there,
    files already open stay writable.

    Rotation fails and says so in the log; every listener still replies.
    A writer generation that has not written yet cannot create its WAL:
    publishes get a storage error. One that has written keeps taking
    publishes, acknowledged. Once the directory is writable again, the first
    snapshot holds every table acknowledged meanwhile and none refused."""
    server: ReliabilityProcess = make_server(
        "readonly", generation_s=1, prefix=mount_ns.launch_prefix
    )
    server.start()
    ports = server.ports
    gens = server.workdir / "db" / "generations"
    last_good = server.wait_generation(timeout=PROMPT_S)["generation_number"]
    expected: list[list[str]] = []
    if writer_used:
        table = make_table("ro_during", (("i", "integer"),), [[-1]])
        assert http_pub(ports["http"], publish_request("before", table)) == OK
        expected.append(["-1"])
    readonly = mount_ns.enter(
        server.pid, f"mount --bind '{gens}' '{gens}' && mount -o remount,bind,ro '{gens}'"
    )
    assert readonly.returncode == 0, readonly.stderr
    try:
        server.wait_log("rotation failed", timeout=PROMPT_S)
        replies = []
        for i, via in enumerate(("http", "zmq", "http")):
            table = make_table("ro_during", (("i", "integer"),), [[i]])
            reply = (http_pub if via == "http" else zmq_pub)(
                ports[via], publish_request(f"h{i}", table)
            )
            replies.append(reply)
            if writer_used:
                assert reply == OK, reply
                expected.append([str(i)])
            else:
                assert reply.get("response_op") == "error", reply
                assert reply["error_message"].startswith("storage error"), reply
        print(f"[readonly] publishes while read-only: {replies}")
        if not writer_used:
            server.wait_log("add_table_data failed: storage error", timeout=PROMPT_S)
        # The static DB lives outside the read-only directory.
        static = make_table("ro_static", (("v", "integer"),), [[7]])
        assert http_pub(ports["http"], publish_request("s", static, static=1)) == OK
        for kind, query in (("http", http_q), ("zmq", zmq_q)):
            answer = query(ports[kind], "SELECT count(*) FROM qasino_server_tables")
            assert answer.get("response_op") in ("result_table", "error"), answer
            print(f"[readonly] {kind} query while read-only: {str(answer)[:160]}")
        line = line_q(ports["line"], "SELECT 1")
        assert "rows returned" in line or "SQL error" in line, line
        server.wait_log("rotation failed", count=2, timeout=PROMPT_S)
        assert server.alive()
    finally:
        restored = mount_ns.enter(server.pid, f"umount -l '{gens}'")
    assert restored.returncode == 0, restored.stderr
    print(f"[readonly] rotation failures logged: {server.count_log('rotation failed')}")
    # No snapshot was announced during the outage: the first one after it is
    # the writer generation that took the acknowledged publishes, the one
    # the last signal before the outage named (signals name the generation
    # that starts filling).
    server.wait_generation(after=last_good, timeout=PROMPT_S)
    reply = http_q(
        ports["http"],
        "SELECT (SELECT generation_number FROM qasino_server_info), i FROM ro_during ORDER BY i",
    )
    if expected:
        assert reply.get("response_op") == "result_table", reply
        assert reply["table"]["rows"] == [[str(last_good), *row] for row in expected], reply
    else:
        assert "no such table" in reply.get("error_message", ""), reply
    served_soon(ports["http"], "SELECT v FROM ro_static", [["7"]])
    after = make_table("ro_after", (("v", "integer"),), [[8]])
    assert zmq_pub(ports["zmq"], publish_request("h", after, persist=1)) == OK
    served_soon(ports["http"], "SELECT v FROM ro_after", [["8"]])
    every_listener_answers(server, "readonly after")
    assert server.stop() == 0


# ---------------------------------------------------------------- (e) --max-connections

MAX_CONNECTIONS = 5


def refused(port: int, payload: bytes) -> bool:
    """True if the server closes a new connection without answering."""
    with socket.create_connection((HOST, port), timeout=PROMPT_S) as s:
        try:
            s.sendall(payload)
            return s.recv(4096) == b""
        except ConnectionResetError:
            return True
        except BrokenPipeError:
            return True


def http_answers(port: int) -> bool:
    try:
        return http_q(port, "SELECT 1", timeout=1).get("response_op") == "result_table"
    except (OSError, http.client.HTTPException):
        return False


def test_max_connections_closes_extra_connections_and_recovers_when_they_close(
    make_server: Any,
) -> None:
    server: ReliabilityProcess = make_server(
        "maxconn", generation_s=1, extra_args=["--max-connections", str(MAX_CONNECTIONS)]
    )
    server.start()
    ports = server.ports
    target = request_target(op="query", sql="SELECT 1")
    http_payload = f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    held_http: list[Any] = []
    held_line: list[LineClient] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            conn = http.client.HTTPConnection(HOST, ports["http"], timeout=PROMPT_S)
            conn.request("GET", target)
            response = conn.getresponse()
            assert response.status == 200
            response.read()  # keep-alive: the connection stays open
            held_http.append(conn)
            client = LineClient(ports["line"], PROMPT_S)
            client.send("SELECT 1;\n")
            assert "1 rows returned" in client.read_answers(1)
            held_line.append(client)
        extra = 10
        assert all(refused(ports["http"], http_payload) for _ in range(extra))
        assert all(refused(ports["line"], b"SELECT 1;\n") for _ in range(extra))
        # The held connections still work, and ZeroMQ is not a TCP listener of ours.
        held_http[0].request("GET", target)
        assert held_http[0].getresponse().read()
        held_line[0].send("SELECT 2;\n")
        assert "1 rows returned" in held_line[0].read_answers(1)
        assert zmq_q(ports["zmq"], "SELECT 1").get("response_op") == "result_table"
        log = server.wait_log(r"connections open, refusing more", count=2, timeout=PROMPT_S)
        print("[maxconn] " + " | ".join(re.findall(r"\w[^\n]*refusing more[^\n]*", log)))
    finally:
        for conn in held_http:
            conn.close()
        for client in held_line:
            client.close()
    # Recovers once the held connections are gone.
    deadline_poll(lambda: http_answers(ports["http"]), PROMPT_S, "a free HTTP slot")
    every_listener_answers(server, "maxconn after")
    assert server.stop() == 0

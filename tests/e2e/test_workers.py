"""``--workers N``: worker processes read HTTP, the store process applies.

Real processes: a supervisor, its store process and the workers, on free
loopback ports. Replies are compared byte for byte with a ``--workers 0``
server; worker and store processes are killed with SIGKILL mid-ingest.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.e2e.conftest import (
    HttpReply,
    QasinoProcess,
    http_request,
    make_table,
    new_server,
    poll_until,
    request_target,
    run_server_to_exit,
)

JSON = {"Content-Type": "application/json"}


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux /proc)."""
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(x) for x in f.read().split()]
        except FileNotFoundError:
            pass
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def worker_pids(proc: QasinoProcess) -> dict[int, int]:
    """slot -> pid of the latest start of each worker, from the log."""
    pids: dict[int, int] = {}
    for slot, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", proc.log_text()):
        pids[int(slot)] = int(pid)
    return pids


def publish_body(identity: str, tablename: str, who: str) -> bytes:
    table = make_table(tablename, [("who", "text")], [[who]])
    return json.dumps({"op": "add_table_data", "identity": identity, "table": table}).encode()


def post(port: int, body: bytes, **params: Any) -> HttpReply:
    return http_request(port, "POST", request_target(**params), body, JSON)


def write_db_rows(port: int, sql: str) -> list[list[str]]:
    reply = post(port, json.dumps({"sql": sql, "use_write_db": True}).encode(), op="query")
    assert reply.status == 200, reply
    result = reply.json()
    assert result["response_op"] == "result_table", result
    rows: list[list[str]] = result["table"]["rows"]
    return rows


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[QasinoProcess, QasinoProcess]]:
    """A --workers 2 server and a --workers 0 one, whose generations do not
    turn during the module (use_write_db shows what they took)."""
    made = []
    try:
        for name, workers in (("workers2", "2"), ("workers0", "0")):
            proc = new_server(
                tmp_path_factory.mktemp(name),
                generation_s=600,
                extra_args=["--workers", workers, "--max-body-bytes", "3000"],
            )
            made.append(proc)
            proc.start()
        yield made[0], made[1]
    finally:
        for proc in made:
            proc.close()


CASES: list[tuple[str, str, Optional[bytes]]] = [
    ("publish", request_target(op="add_table_data"), publish_body("h1", "t", "a")),
    ("same identity again", request_target(op="add_table_data"), publish_body("h1", "t", "b")),
    ("another identity", request_target(op="add_table_data"), publish_body("h2", "t", "c")),
    ("not JSON", request_target(op="add_table_data"), b'{"op": "add_table_data"'),
    ("not an object", request_target(), b"[1, 2]"),
    ("unknown op", request_target(), b'{"op": "no_such_op"}'),
    (
        "bad column type",
        request_target(),
        json.dumps(
            {
                "op": "add_table_data",
                "identity": "h3",
                "table": {
                    "tablename": "u",
                    "column_names": ["x"],
                    "column_types": ["blob!"],
                    "rows": [[1]],
                },
            }
        ).encode(),
    ),
    (
        "csv",
        request_target(op="add_csv_table_data", identity="h4"),
        b"tablename\nc\nx\nint\n1\n2\n",
    ),
    ("query in a POST", request_target(op="query"), b'{"sql": "SELECT 1", "use_write_db": true}'),
    ("query text", request_target(op="query", format="text"), b'{"sql": "SELECT 2 AS two"}'),
    ("too big", request_target(op="add_table_data"), b" " * 4000),
    # Publishes a worker checks itself and sends as a compact table:
    (
        "identity and options in the query string",
        request_target(op="add_table_data", identity="h5", persist="1", update="1", keycols="k"),
        json.dumps({"table": make_table("kv", [("k", "text"), ("v", "int")], [["a", 1]])}).encode(),
    ),
    (
        "update of the keyed table",
        request_target(op="add_table_data", identity="h5", persist="1", update="1", keycols="k"),
        json.dumps({"table": make_table("kv", [("k", "text"), ("v", "int")], [["a", 2]])}).encode(),
    ),
    (
        "a cell only SQLite refuses",
        request_target(op="add_table_data", identity="h6"),
        json.dumps({"table": make_table("w", [("x", "int")], [[1], [{"a": 1}]])}).encode(),
    ),
    (
        "an integer past 64 bits",
        request_target(op="add_table_data", identity="h7"),
        b'{"table": {"tablename": "w", "column_names": ["x"], "column_types": ["int"],'
        b' "rows": [[18446744073709551615]]}}',
    ),
    (
        "the refused tables left nothing",
        request_target(op="query"),
        b'{"sql": "SELECT * FROM w", "use_write_db": true}',
    ),
    (
        "the keyed table",
        request_target(op="query"),
        b'{"sql": "SELECT * FROM kv", "use_write_db": true}',
    ),
    ("empty body", request_target(), b""),
]


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_a_worker_answers_with_the_bytes_one_process_sends(
    pair: tuple[QasinoProcess, QasinoProcess], case: str
) -> None:
    _, target, body = next(c for c in CASES if c[0] == case)
    replies = [http_request(p.ports["http"], "POST", target, body, JSON) for p in pair]
    assert replies[0] == replies[1], case


def test_reads_and_pages_are_proxied_to_the_store_process(
    pair: tuple[QasinoProcess, QasinoProcess],
) -> None:
    workers, single = pair
    for target in (
        "/",
        "/tables",
        "/request?op=query&sql=SELECT+1&format=text",
        "/request?op=query&sql=SELEKT",
        "/-/ready",
        "/no/such/page",
    ):
        a = http_request(workers.ports["http"], "GET", target)
        b = http_request(single.ports["http"], "GET", target)
        assert (a.status, a.content_type) == (b.status, b.content_type), target
    metrics = http_request(workers.ports["http"], "GET", "/metrics")
    assert metrics.status == 200 and b"qasino_publishes_total" in metrics.body


def test_use_write_db_sees_every_acknowledged_publish_at_once(
    pair: tuple[QasinoProcess, QasinoProcess],
) -> None:
    port = pair[0].ports["http"]
    for i in range(20):
        reply = post(port, publish_body(f"seen-{i}", "seen", f"v{i}"), op="add_table_data")
        assert reply.json()["response_op"] == "ok", reply
        rows = write_db_rows(port, "SELECT who FROM seen ORDER BY who")
        assert [f"v{i}"] in rows


def _publish_loop(
    port: int, prefix: str, count: int, acked: list[str], stop: threading.Event
) -> None:
    for k in range(count):
        if stop.is_set():
            return
        who = f"{prefix}-{k}"
        try:
            reply = post(port, publish_body(who, "burst", who), op="add_table_data")
        except OSError:
            continue  # connection reset by a dying worker: not acknowledged
        if reply.status == 200 and json.loads(reply.body).get("response_op") == "ok":
            acked.append(who)


@contextmanager
def publishers(
    port: int, prefix: str, threads: int, count: int, finish: bool
) -> Iterator[list[str]]:
    """``threads`` publishers of ``count`` publishes each while the block runs;
    yields the identities acknowledged so far. At the end of the block they
    finish their count (``finish``) or stop."""
    acked: list[str] = []
    stop = threading.Event()
    running = [
        threading.Thread(target=_publish_loop, args=(port, f"{prefix}{t}", count, acked, stop))
        for t in range(threads)
    ]
    for t in running:
        t.start()
    try:
        yield acked
    finally:
        if not finish:
            stop.set()
        for t in running:
            t.join(60)
        stop.set()


def test_a_killed_worker_is_restarted_and_no_acknowledged_publish_is_lost(
    tmp_path: Path,
) -> None:
    proc = new_server(tmp_path / "kill-worker", generation_s=600, extra_args=["--workers", "2"])
    try:
        proc.start()
        port = proc.ports["http"]
        poll_until(lambda: len(worker_pids(proc)) == 2, 10, "both workers")
        first = worker_pids(proc)
        with publishers(port, "p", threads=4, count=150, finish=True) as acked:
            poll_until(lambda: len(acked) >= 60, 30, "60 acknowledged publishes")
            os.kill(first[0], signal.SIGKILL)
            poll_until(
                lambda: worker_pids(proc).get(0) not in (None, first[0]), 30, "worker 0 again"
            )
        assert len(acked) > 300, len(acked)  # the other worker went on serving
        rows = write_db_rows(port, "SELECT who FROM burst")
        seen = [r[0] for r in rows]
        assert len(seen) == len(set(seen)), "a publish applied twice"
        assert set(acked) <= set(seen)
        assert alive(worker_pids(proc)[0]) and alive(worker_pids(proc)[1])
        # Publishing goes on after the restart.
        for k in range(40):
            reply = post(port, publish_body(f"after-{k}", "burst", f"after-{k}"))
            assert reply.json()["response_op"] == "ok", reply
        assert f"worker 0 (pid {first[0]}) ended" in proc.log_text()
    finally:
        proc.close()


def test_a_killed_store_process_comes_back_on_the_same_port_with_every_acknowledged_publish(
    tmp_path: Path,
) -> None:
    proc = new_server(tmp_path / "kill-store", generation_s=600, extra_args=["--workers", "1"])
    try:
        proc.start()
        assert proc.proc is not None
        port = proc.ports["http"]
        (store,) = children(proc.proc.pid)
        workers = children(store)
        assert len(workers) == 1
        with publishers(port, "s", threads=3, count=400, finish=False) as acked:
            poll_until(lambda: len(acked) >= 50, 30, "50 acknowledged publishes")
            os.kill(store, signal.SIGKILL)
            poll_until(lambda: proc.count_log(r"HTTP listening on") == 2, 30, "a new store")
        # Its worker went with it (parent death signal or the closed channel).
        poll_until(lambda: not alive(workers[0]), 10, "the old worker to exit")
        (new_store,) = children(proc.proc.pid)
        assert new_store != store
        assert proc.count_log(r"replayed \d+ publishes") == 1
        assert f"the store process (pid {store}) ended (signal 9)" in proc.stderr_text()

        def answered() -> bool:
            try:
                return post(port, publish_body("back", "again", "x")).status == 200
            except OSError:
                return False

        poll_until(answered, 30, "a publish answered by the new store process")
        seen = [r[0] for r in write_db_rows(port, "SELECT who FROM burst")]
        assert len(seen) == len(set(seen)), "a publish applied twice"
        assert set(acked) <= set(seen), sorted(set(acked) - set(seen))[:5]
        assert write_db_rows(port, "SELECT who FROM again") == [["x"]]
    finally:
        proc.close()


def test_one_process_killed_and_started_again_has_every_acknowledged_publish(
    tmp_path: Path,
) -> None:
    proc = new_server(tmp_path / "kill-one", generation_s=600)
    try:
        proc.start()
        port = proc.ports["http"]
        acked: list[str] = []
        _publish_loop(port, "one", 30, acked, threading.Event())
        assert len(acked) == 30
        proc.kill()
        proc.start(keep_ports=True)
        seen = {r[0] for r in write_db_rows(proc.ports["http"], "SELECT who FROM burst")}
        assert seen == set(acked)
        assert proc.stop() == 0
        # A clean stop leaves no journal: the next start is empty, as always.
        proc.start(keep_ports=True)
        reply = post(
            proc.ports["http"], b'{"sql": "SELECT * FROM burst", "use_write_db": 1}', op="query"
        )
        assert b"no such table" in reply.body
    finally:
        proc.close()


def test_sigterm_ends_the_supervisor_the_store_and_every_worker(tmp_path: Path) -> None:
    proc = new_server(tmp_path / "term", extra_args=["--workers", "2"])
    proc.start()
    try:
        assert proc.proc is not None
        poll_until(lambda: len(worker_pids(proc)) == 2, 10, "both workers")
        (store,) = children(proc.proc.pid)
        family = [store, *worker_pids(proc).values()]
        assert proc.stop(signal.SIGTERM) == 0
        poll_until(lambda: not any(alive(p) for p in family), 10, "every process to end")
        assert "qasino_server stopped" in proc.log_text()
    finally:
        proc.close()


def test_a_store_process_that_cannot_start_ends_the_supervisor(
    start_server: Callable[..., QasinoProcess],
) -> None:
    first = start_server("holder").start()
    assert first.proc is not None
    done = run_server_to_exit([*first.args, "--workers", "1"], first.workdir)
    assert done.returncode == 1, done
    assert f"process {first.proc.pid}" in done.stderr, done.stderr
    assert "Address already in use" not in done.stderr
    # A port in use (another program's): the one-line error, exit 1.
    other = start_server("other")
    args = [*other.args, "--workers", "1"]
    args[args.index("--http-port") + 1] = str(first.ports["http"])
    done = run_server_to_exit(args, first.workdir)
    assert done.returncode == 1, done
    assert "cannot start" in done.stderr and "Address already in use" in done.stderr


def test_workers_need_the_http_port(tmp_path: Path) -> None:
    proc = new_server(tmp_path / "nohttp", extra_args=["--workers", "1"])
    args = list(proc.args)
    args[args.index("--http-port") + 1] = "off"
    done = run_server_to_exit(args, tmp_path)
    assert done.returncode == 2, done
    assert "--workers needs the HTTP port" in done.stderr


def test_sighup_makes_the_workers_reopen_the_log_file(tmp_path: Path) -> None:
    proc = new_server(tmp_path / "hup", extra_args=["--workers", "1"])
    try:
        proc.start()
        assert proc.proc is not None and proc.log_path is not None
        poll_until(lambda: len(worker_pids(proc)) == 1, 10, "the worker")
        worker = worker_pids(proc)[0]
        log_path = str(proc.log_path)

        def open_paths() -> set[str]:
            found = set()
            for fd in os.listdir(f"/proc/{worker}/fd"):
                try:
                    found.add(os.readlink(f"/proc/{worker}/fd/{fd}"))
                except OSError:
                    pass
            return found

        proc.wait_log(r"worker 0 \(pid \d+\) serving HTTP", timeout=10)  # its handlers are in place
        assert log_path in open_paths()
        os.rename(log_path, log_path + ".1")  # what logrotate does
        assert log_path not in open_paths()
        os.kill(proc.proc.pid, signal.SIGHUP)
        poll_until(lambda: log_path in open_paths(), 10, "the worker to reopen its log")
        assert alive(worker)  # the same worker, not a restarted one
    finally:
        proc.close()


def test_max_connections_applies_to_each_worker(tmp_path: Path) -> None:
    proc = new_server(tmp_path / "limit", extra_args=["--workers", "1", "--max-connections", "2"])
    try:
        proc.start()
        proc.wait_log(r"worker 0 \(pid \d+\) serving HTTP", timeout=10)
        port = proc.ports["http"]
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        try:
            for s in held:  # both are served
                s.sendall(b"GET /-/ready HTTP/1.1\r\nHost: x\r\n\r\n")
                assert s.recv(100).startswith(b"HTTP/1.1 ")
            extra = socket.create_connection(("127.0.0.1", port), timeout=5)
            with extra:
                try:
                    got = extra.recv(100)
                except ConnectionResetError:
                    got = b""
                assert got == b""  # closed at once: over the limit
        finally:
            for s in held:
                s.close()
        poll_until(lambda: post(port, b'{"op": "nope"}').status == 200, 10, "room again")
    finally:
        proc.close()

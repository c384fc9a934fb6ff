"""``qasinosql`` against the real server (PROTOCOL.md "Client command lines",
"Result shape", "Text rendering"; issue 4, items 1 and 4).

The interactive prompt is driven through a pseudo-terminal with pexpect; the
scripting mode (``-q``) runs as a plain subprocess. The first part of this
file is what ``test_publish.py`` imports too: the real ``qasino_server`` of
``tests.server_process`` (every listener on 127.0.0.1 with port 0), with
in-process ZeroMQ queries and waits for snapshots on the generation signal
(GENSIG), never fixed sleeps; and the client processes' environment.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import pexpect
import pytest
import zmq

from tests.server_process import (
    HOST,
    ZMQ_CONTEXT,
    QasinoProcess,
    free_port,
    server_env,
    workdir_flags,
)
from tests.server_process import IDENTITY as SERVER_IDENTITY

# --------------------------------------------------------------------------
# Harness (also used by test_publish.py)

GENERATION_TIMEOUT_S = 5.0
CLIENT_TIMEOUT_S = 20.0

SQLCLIENT_CODE = (
    "import sys; from qasino.cli import sqlclient_main; sys.exit(sqlclient_main(sys.argv[1:]))"
)
PUBLISH_CODE = (
    "import sys; from qasino.cli import publish_main; sys.exit(publish_main(sys.argv[1:]))"
)


def child_env(home: Optional[Path] = None) -> dict[str, str]:
    """Environment for the clients: the server's, without the credentials a
    developer may have exported, and with ``home`` as HOME when given."""
    env = server_env()
    for name in (
        "QASINO_SQLCLIENT_USERNAME",
        "QASINO_SQLCLIENT_PASSWORD",
        "QASINO_CLIENT_USERNAME",
        "QASINO_CLIENT_PASSWORD",
    ):
        env.pop(name, None)
    if home is not None:
        env["HOME"] = str(home)
    return env


class QasinoServer(QasinoProcess):
    """The real qasino_server in a subprocess, with in-process ZeroMQ queries."""

    def next_generation(self, timeout: float = GENERATION_TIMEOUT_S) -> dict[str, Any]:
        """Wait for a snapshot taken after this call and return its signal.

        Everything acknowledged before this call is in the snapshot it
        reports. Generation numbers are the rotation's epoch second (or one
        more than the last), and a signal names the generation that starts
        filling: one numbered above the current second comes from a rotation
        after this call. Draining queued frames is not enough: a signal sent
        before the acknowledgement may still be on its way.
        """
        message = self.wait_generation(after=int(time.time()), timeout=timeout)
        assert message["op"] == "generation_signal", message
        return message

    def status(self) -> str:
        """The process state and the end of its log, for failure messages."""
        assert self.proc is not None
        state = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        log = (self.log_text() + self.stderr_text()).splitlines()
        return f"server {state}; log tail:\n" + "\n".join(log[-20:])

    def rpc(self, message: dict[str, Any]) -> dict[str, Any]:
        """One in-process ZeroMQ request (fast: used where timing matters)."""
        s = ZMQ_CONTEXT.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, 10_000)
        s.setsockopt(zmq.SNDTIMEO, 10_000)
        try:
            s.connect(f"tcp://{HOST}:{self.ports['zmq']}")
            s.send(json.dumps(message).encode())
            reply = json.loads(s.recv_multipart()[0])
        except zmq.Again:
            raise AssertionError(f"no reply to {message}\n{self.status()}") from None
        finally:
            s.close(linger=0)
        assert isinstance(reply, dict)
        return reply

    def query(self, sql: str, use_write_db: bool = False) -> dict[str, Any]:
        return self.rpc({"op": "query", "sql": sql, "use_write_db": use_write_db})

    def rows(self, sql: str) -> list[list[str]]:
        reply = self.query(sql)
        assert reply.get("response_op") == "result_table", reply
        return [list(r) for r in reply["table"]["rows"]]


@contextmanager
def running_server(workdir: Path) -> Iterator[QasinoServer]:
    server = QasinoServer(workdir, workdir_flags(workdir))
    try:
        server.start()
        yield server
    finally:
        server.close()


def run_client(
    code: str,
    args: Sequence[str],
    stdin: Optional[str] = None,
    home: Optional[Path] = None,
    timeout: float = CLIENT_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Run a client (``python -c CODE ARGS``); killed by subprocess.run on timeout."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=child_env(home),
        timeout=timeout,
    )


def text_table(names: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The protocol's text rendering, written out independently of the code."""
    widths = [max([len(n), *(len(r[i]) for r in rows)]) for i, n in enumerate(names)]
    lines = ["  ".join(n.rjust(w) for n, w in zip(names, widths))]
    lines.append("  ".join("=" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    lines.append(f"{len(rows)} rows returned")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Fixtures

PROMPT = "qasino> "
CONTINUATION = "      > "


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QasinoServer]:
    with running_server(tmp_path_factory.mktemp("sqlclient_server")) as srv:
        yield srv


def sql(server: QasinoServer, *args: str) -> subprocess.CompletedProcess[str]:
    """qasinosql -q ... against the test server over ZeroMQ (the default)."""
    return run_client(SQLCLIENT_CODE, ["-H", HOST, "-p", str(server.ports["zmq"]), *args])


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    """Start qasinosql in a pseudo-terminal; every child is killed at teardown."""
    children: list[pexpect.spawn] = []
    home = tmp_path / "home"
    home.mkdir()

    def start(port: int, *args: str) -> pexpect.spawn:
        env = child_env(home)
        env["TERM"] = "dumb"
        env["INPUTRC"] = os.devnull
        child = pexpect.spawn(
            sys.executable,
            ["-c", SQLCLIENT_CODE, "-H", HOST, "-p", str(port), *args],
            env=env,
            encoding="utf-8",
            timeout=10,
            cwd=str(tmp_path),
            # A suite started in the background (``cmd &``) ignores SIGINT,
            # and the client would inherit that: Ctrl-C must reach it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        child.home = home
        children.append(child)
        child.expect_exact(PROMPT)
        return child

    yield start
    for child in children:
        if child.isalive():
            child.close(force=True)


def pty_text(text: str) -> str:
    return text.replace("\n", "\r\n")


# --------------------------------------------------------------------------
# Interactive prompt


def test_multiline_statement_shows_continuation_prompt_then_text_rendering(
    server: QasinoServer, spawn: Any
) -> None:
    child = spawn(server.ports["zmq"])
    child.sendline("SELECT 1 AS a,")
    child.expect_exact(CONTINUATION)
    child.sendline("  'xy' AS long_name")
    child.expect_exact(CONTINUATION)
    child.sendline("  ;")
    child.expect_exact(pty_text(text_table(["a", "long_name"], [["1", "xy"]])))
    child.expect_exact(PROMPT)


def test_set_use_write_db_then_query_sees_table_published_in_current_generation(
    server: QasinoServer, spawn: Any
) -> None:
    child = spawn(server.ports["zmq"])
    # Everything below happens within one generation (1 s) in well under
    # 100 ms; should a snapshot still fall in between, try a fresh generation.
    for attempt in range(3):
        table = f"sqlcli_writedb_{attempt}"
        server.next_generation()
        reply = server.rpc(
            {
                "op": "add_table_data",
                "identity": "sqlcli_test",
                "table": {
                    "tablename": table,
                    "column_names": ["n", "label"],
                    "column_types": ["int", "text"],
                    "rows": [[7, "fresh"]],
                },
            }
        )
        assert reply["response_op"] == "ok", reply
        child.sendline(f"SELECT n, label FROM {table};")
        in_snapshot = child.expect_exact(["SQL error: no such table", "1 rows returned"])
        child.expect_exact(PROMPT)
        child.sendline("SET use_write_db = true;")
        child.expect_exact("use_write_db = true")
        child.expect_exact(PROMPT)
        child.sendline(f"SELECT n, label FROM {table};")
        in_writer = child.expect_exact(
            [pty_text(text_table(["n", "label"], [["7", "fresh"]])), "SQL error"]
        )
        child.expect_exact(PROMPT)
        if in_snapshot == 0 and in_writer == 0:
            return
        child.sendline("SET use_write_db = false;")
        child.expect_exact("use_write_db = false")
        child.expect_exact(PROMPT)
    pytest.fail("a table published in the current generation was never seen with use_write_db")


def test_query_error_prints_sql_error_and_prompt_comes_back(
    server: QasinoServer, spawn: Any
) -> None:
    child = spawn(server.ports["zmq"])
    child.sendline("SELECT * FROM sqlcli_no_such_table;")
    child.expect_exact("SQL error: no such table: sqlcli_no_such_table")
    child.expect_exact(PROMPT)
    child.sendline("DROP TABLE qasino_server_info;")
    child.expect_exact("SQL error: ")
    child.expect_exact(PROMPT)
    child.sendline("SELECT 'still alive' AS status;")
    child.expect_exact(pty_text(text_table(["status"], [["still alive"]])))
    child.expect_exact(PROMPT)


def test_ctrl_c_at_prompt_clears_the_line_and_the_session_goes_on(
    server: QasinoServer, spawn: Any
) -> None:
    child = spawn(server.ports["zmq"])
    # A half-typed line (wait for readline to echo it, so it is in its buffer).
    child.send("SELECT 'discarded' AS gone")
    child.expect_exact("AS gone")
    child.sendintr()
    child.expect_exact(PROMPT)
    # A statement begun on an earlier line: the continuation buffer goes too.
    child.sendline("SELECT 'also discarded' AS gone2,")
    child.expect_exact(CONTINUATION)
    child.sendintr()
    child.expect_exact(PROMPT)
    child.sendline("SELECT 'kept' AS still_here;")
    child.expect_exact(pty_text(text_table(["still_here"], [["kept"]])))
    child.expect_exact(PROMPT)
    assert "SQL error" not in child.before
    assert child.isalive()


def test_ctrl_d_exits_0_and_writes_the_history_file_in_home(
    server: QasinoServer, spawn: Any
) -> None:
    child = spawn(server.ports["zmq"])
    child.sendline("SELECT 42 AS answer;")
    child.expect_exact("1 rows returned")
    child.expect_exact(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert child.signalstatus is None
    history = child.home / ".qasinosql_history"
    assert history.is_file()
    assert "SELECT 42 AS answer;" in history.read_text()


def test_ctrl_c_during_a_running_query_leaves_the_session_usable(spawn: Any) -> None:
    """A fake ZeroMQ server (ROUTER) that holds the first request unanswered,
    so the interrupt surely lands while the client waits for a reply."""
    router = ZMQ_CONTEXT.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    try:
        port = router.bind_to_random_port(f"tcp://{HOST}")
        child = spawn(port, "--timeout", "10")
        child.sendline("SELECT 'slow' AS s;")
        assert router.poll(5000), "the client never sent its request"
        router.recv_multipart()  # never answered
        # pyzmq only notices a signal that lands while it waits in poll(); one
        # that lands in the instant before (right after the send) waits for the
        # client's timeout (10 s). So interrupt again until the prompt is back.
        for _ in range(5):
            child.sendintr()
            if child.expect_exact([PROMPT, pexpect.TIMEOUT], timeout=1) == 0:
                break
        else:
            pytest.fail("Ctrl-C did not bring the prompt back")
        child.sendline("SELECT 'after' AS s;")
        assert router.poll(5000), "the client sent nothing after the interrupt"
        peer, empty, body = router.recv_multipart()
        assert json.loads(body)["sql"] == "SELECT 'after' AS s;"
        reply = {
            "response_op": "result_table",
            "identity": "fake",
            "table": {"column_names": ["s"], "rows": [["after"]]},
            "max_widths": {"0": 5},
        }
        router.send_multipart([peer, empty, json.dumps(reply).encode()])
        child.expect_exact(pty_text(text_table(["s"], [["after"]])))
        child.expect_exact(PROMPT)
        assert "error" not in child.before.lower()
    finally:
        router.close(linger=0)


# --------------------------------------------------------------------------
# -q scripting


def test_several_q_queries_succeed_exit_0_with_output_in_order(server: QasinoServer) -> None:
    result = sql(
        server,
        "-q",
        "SELECT 1 AS first;",
        "-q",
        "SELECT 'two' AS second, NULL AS empty;",
        "-q",
        "SELECT 3 AS third",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        text_table(["first"], [["1"]])
        + text_table(["second", "empty"], [["two", ""]])
        + text_table(["third"], [["3"]])
    )
    assert result.stderr == ""


def test_one_failing_q_query_exits_nonzero_with_server_message_on_stderr(
    server: QasinoServer,
) -> None:
    result = sql(
        server,
        "-q",
        "SELECT 1 AS ok_before;",
        "-q",
        "SELECT * FROM sqlcli_missing_table;",
        "-q",
        "SELECT 2 AS ok_after;",
    )
    assert result.returncode != 0
    assert "SQL error: no such table: sqlcli_missing_table" in result.stderr
    assert result.stdout == text_table(["ok_before"], [["1"]]) + text_table(["ok_after"], [["2"]])


def test_a_refused_statement_exits_nonzero_with_server_message(server: QasinoServer) -> None:
    direct = server.query("DELETE FROM qasino_server_info;")
    assert direct["response_op"] == "error"
    result = sql(server, "-q", "DELETE FROM qasino_server_info;")
    assert result.returncode != 0
    assert f"SQL error: {direct['error_message']}" in result.stderr
    assert result.stdout == ""


def test_format_csv_prints_header_and_rows_as_rfc4180_csv(server: QasinoServer) -> None:
    args = ["-H", HOST, "-p", str(server.ports["zmq"]), "--format", "csv"]
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            SQLCLIENT_CODE,
            *args,
            "-q",
            "SELECT 1 AS n, 'a,b' AS s, NULL AS z;",
        ],
        capture_output=True,
        env=child_env(None),
        timeout=CLIENT_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b'n,s,z\r\n1,"a,b",\r\n'


@pytest.mark.parametrize("transport", ["zmq", "http"])
def test_format_objects_arrays_and_ndjson_print_typed_values(
    server: QasinoServer, transport: str
) -> None:
    port = ["-p", str(server.ports[transport])] + (["--use-http"] if transport == "http" else [])
    query = "SELECT 1 AS n, 2.5 AS r, 'abc' AS s, NULL AS z;"
    shaped = {}
    for fmt in ("objects", "arrays", "ndjson"):
        result = run_client(SQLCLIENT_CODE, ["-H", HOST, *port, "--format", fmt, "-q", query])
        assert result.returncode == 0, result.stderr
        shaped[fmt] = [json.loads(line) for line in result.stdout.splitlines()]
    [objects], [arrays] = shaped["objects"], shaped["arrays"]
    assert objects["ok"] is True and objects["columns"] == ["n", "r", "s", "z"]
    assert objects["rows"] == [{"n": 1, "r": 2.5, "s": "abc", "z": None}]
    assert arrays["rows"] == [[1, 2.5, "abc", None]]
    assert isinstance(arrays["generation_number"], int) and arrays["truncated"] is False
    assert shaped["ndjson"] == objects["rows"]


@pytest.mark.parametrize("transport", ["zmq", "http"])
def test_format_arrays_error_is_the_servers_message_and_exit_1(
    server: QasinoServer, transport: str
) -> None:
    port = ["-p", str(server.ports[transport])] + (["--use-http"] if transport == "http" else [])
    result = run_client(
        SQLCLIENT_CODE, ["-H", HOST, *port, "--format", "arrays", "-q", "SELECT nope;"]
    )
    assert result.returncode == 1
    assert result.stderr == "SQL error: no such column: nope\n"
    assert result.stdout == ""


def test_format_json_prints_the_protocol_result_shape_one_per_line(
    server: QasinoServer,
) -> None:
    result = sql(
        server,
        "--format",
        "json",
        "-q",
        "SELECT 1 AS n, 'abc' AS s, NULL AS z;",
        "-q",
        "SELECT 2 AS n WHERE 0;",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first == {
        "response_op": "result_table",
        "identity": SERVER_IDENTITY,
        "table": {"column_names": ["n", "s", "z"], "rows": [["1", "abc", ""]]},
        "max_widths": {"0": 1, "1": 3, "2": 1},
    }
    assert second["table"] == {"column_names": ["n"], "rows": []}


def test_use_http_with_http_port_queries_the_server(server: QasinoServer) -> None:
    result = run_client(
        SQLCLIENT_CODE,
        [
            "-H",
            HOST,
            "--use-http",
            "-p",
            str(server.ports["http"]),
            "-q",
            "SELECT 'over http' AS via;",
            "-q",
            "SHOW info;",
        ],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(text_table(["via"], [["over http"]]))
    assert "generation_number" in result.stdout
    failing = run_client(
        SQLCLIENT_CODE,
        ["-H", HOST, "--use-http", "-p", str(server.ports["http"]), "-q", "SELECT * FROM nope;"],
    )
    assert failing.returncode != 0
    assert "SQL error: no such table: nope" in failing.stderr


@pytest.mark.parametrize("transport", [[], ["--use-http"]], ids=["zeromq", "http"])
def test_unreachable_server_fails_nonzero_within_seconds_with_clear_message(
    transport: list[str],
) -> None:
    port = free_port()
    started = time.monotonic()
    result = run_client(
        SQLCLIENT_CODE,
        ["-H", HOST, "-p", str(port), *transport, "--timeout", "1", "-q", "SELECT 1;"],
    )
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert elapsed < 5, f"took {elapsed:.1f}s"
    assert f"127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_silent_zeromq_server_times_out_nonzero_within_seconds() -> None:
    router = ZMQ_CONTEXT.socket(zmq.ROUTER)  # accepts requests, never answers
    router.setsockopt(zmq.LINGER, 0)
    try:
        port = router.bind_to_random_port(f"tcp://{HOST}")
        started = time.monotonic()
        result = run_client(
            SQLCLIENT_CODE, ["-H", HOST, "-p", str(port), "--timeout", "1", "-q", "SELECT 1;"]
        )
        elapsed = time.monotonic() - started
        assert router.poll(0), "the request never reached the silent server"
    finally:
        router.close(linger=0)
    assert result.returncode != 0
    assert elapsed < 5, f"took {elapsed:.1f}s"
    assert "no reply" in result.stderr and f"127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_silent_http_server_times_out_nonzero_within_seconds() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((HOST, 0))
        listener.listen(5)  # the kernel completes the handshake; nobody answers
        port = listener.getsockname()[1]
        started = time.monotonic()
        result = run_client(
            SQLCLIENT_CODE,
            ["-H", HOST, "--use-http", "-p", str(port), "--timeout", "1", "-q", "SELECT 1;"],
        )
        elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert elapsed < 5, f"took {elapsed:.1f}s"
    assert f"127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr

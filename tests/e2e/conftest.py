"""End-to-end harness: the real ``qasino_server`` in a subprocess
(``tests.server_process``), and clients of each of its protocols.

Every listener binds to 127.0.0.1 with port 0; the real ports are read from
the server's log (``--log-file``). Waiting for state uses
the generation signal (GENSIG) or a poll loop with a deadline, never a fixed
sleep. Every process started here is killed at teardown and every socket
opened here is closed.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import pytest
import zmq

# The server harness; the e2e and reliability tests import it from here too.
from tests.server_process import (  # noqa: F401 - the names this module does not use
    GENSIG_PREFIX,
    HOST,
    IDENTITY,
    STARTUP_TIMEOUT,
    ZMQ_CONTEXT,
    QasinoProcess,
    base_flags,
    new_server,
    parse_gensig,
    poll_until,
    server_command,
    server_env,
)

REQUEST_TIMEOUT = 10.0

# ---------------------------------------------------------------- HTTP


@dataclass
class HttpReply:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        assert self.content_type.startswith("application/json"), self.content_type
        return json.loads(self.body)


def http_request(
    port: int,
    method: str,
    target: str,
    body: Optional[bytes] = None,
    headers: Optional[dict[str, str]] = None,
    timeout: float = REQUEST_TIMEOUT,
) -> HttpReply:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return HttpReply(response.status, response.getheader("Content-Type") or "", data)
    finally:
        conn.close()


def request_target(**params: Any) -> str:
    return "/request?" + urllib.parse.urlencode(params)


def http_publish(
    port: int,
    request: dict[str, Any],
    timeout: float = REQUEST_TIMEOUT,
    status: Optional[int] = 200,
) -> dict[str, Any]:
    """POST /request?op=add_table_data with a JSON body; the reply dict.
    The HTTP status must be ``status`` (None: any)."""
    body = json.dumps({"op": "add_table_data", **request}).encode()
    reply = http_request(
        port,
        "POST",
        request_target(op="add_table_data"),
        body,
        {"Content-Type": "application/json"},
        timeout=timeout,
    )
    if status is not None:
        assert reply.status == status, reply
    result: dict[str, Any] = reply.json()
    return result


def http_query(
    port: int,
    sql: str,
    method: str = "GET",
    text: bool = False,
    use_write_db: bool = False,
) -> Any:
    """A query over HTTP: the reply dict, or the text rendering with ``text``."""
    params: dict[str, Any] = {"op": "query"}
    if text:
        params["format"] = "text"
    if method == "GET":
        params["sql"] = sql
        if use_write_db:
            params["use_write_db"] = "true"
        reply = http_request(port, "GET", request_target(**params))
    else:
        payload: dict[str, Any] = {"sql": sql}
        if use_write_db:
            payload["use_write_db"] = True
        reply = http_request(
            port,
            "POST",
            request_target(**params),
            json.dumps(payload).encode(),
            {"Content-Type": "application/json"},
        )
    assert reply.status == 200, reply
    if text:
        assert reply.content_type.startswith("text/plain"), reply.content_type
        return reply.body.decode("utf-8")
    return reply.json()


# ---------------------------------------------------------------- ZeroMQ

ZmqRequest = Union[dict[str, Any], bytes, Sequence[bytes]]


def zmq_request(port: int, request: ZmqRequest, timeout: float = REQUEST_TIMEOUT) -> list[bytes]:
    """One request on a fresh REQ socket; the reply's frames."""
    if isinstance(request, dict):
        frames = [json.dumps(request).encode()]
    elif isinstance(request, bytes):
        frames = [request]
    else:
        frames = list(request)
    sock = ZMQ_CONTEXT.socket(zmq.REQ)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
        sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
        sock.connect(f"tcp://{HOST}:{port}")
        sock.send_multipart(frames)
        try:
            return sock.recv_multipart()
        except zmq.Again:
            raise AssertionError(f"no ZeroMQ reply within {timeout:g}s to {frames!r}") from None
    finally:
        sock.close(linger=0)


def zmq_call(port: int, request: ZmqRequest) -> dict[str, Any]:
    """A request whose reply must be one JSON frame."""
    frames = zmq_request(port, request)
    assert len(frames) == 1, frames
    reply = json.loads(frames[0])
    assert isinstance(reply, dict), reply
    return reply


# ---------------------------------------------------------------- line protocol

ANSWER_RE = re.compile(rb"^(?:\d+ rows returned|SQL error: .*)\r?$", re.MULTILINE)


class LineClient:
    """A raw TCP client of the telnet line protocol.

    The server ends every line in CRLF; ``read_answers`` and
    ``read_until_closed`` return the text with plain ``\n`` line ends (the
    bytes as received are in ``last_raw``)."""

    last_raw = b""

    def __init__(self, port: int, timeout: float = REQUEST_TIMEOUT) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buffer = b""
        self.closed_by_server = False

    def __enter__(self) -> LineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, text: Union[str, bytes]) -> None:
        self.sock.sendall(text.encode() if isinstance(text, str) else text)

    def _receive(self) -> bool:
        """Read once; False once the server closed the connection."""
        data = self.sock.recv(65536)
        if not data:
            self.closed_by_server = True
            return False
        self.buffer += data
        return True

    def read_answers(self, count: int) -> str:
        """Read until ``count`` answers (``N rows returned`` / ``SQL error:``
        lines) are complete, or the server closes; return everything read."""
        while len(ANSWER_RE.findall(self.buffer)) < count or not self.buffer.endswith(b"\n"):
            if not self._receive():
                break
        return self._take()

    def read_until_closed(self) -> str:
        while self._receive():
            pass
        return self._take()

    def _take(self) -> str:
        self.last_raw, self.buffer = self.buffer, b""
        return self.last_raw.replace(b"\r\n", b"\n").decode("utf-8")


def line_query(port: int, text: str, answers: int = 1) -> str:
    """Send ``text`` on a new connection and read ``answers`` answers."""
    with LineClient(port) as client:
        client.send(text)
        return client.read_answers(answers)


# ---------------------------------------------------------------- tables


def make_table(
    tablename: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]
) -> dict[str, Any]:
    return {
        "tablename": tablename,
        "column_names": [name for name, _ in columns],
        "column_types": [type_ for _, type_ in columns],
        "rows": [list(row) for row in rows],
    }


def publish_request(identity: str, table: dict[str, Any], **options: Any) -> dict[str, Any]:
    return {"op": "add_table_data", "identity": identity, "table": table, **options}


def assert_ok(reply: dict[str, Any]) -> None:
    assert reply == {"identity": IDENTITY, "response_op": "ok"}, reply


def rows_of(reply: dict[str, Any]) -> list[list[str]]:
    assert reply.get("response_op") == "result_table", reply
    return reply["table"]["rows"]


def error_of(reply: dict[str, Any]) -> str:
    assert reply.get("response_op") == "error", reply
    assert reply.get("identity") == IDENTITY, reply
    message = reply["error_message"]
    assert isinstance(message, str) and message, reply
    return message


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session", autouse=True)
def _zmq_context() -> Iterator[None]:
    yield
    ZMQ_CONTEXT.destroy(linger=0)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QasinoProcess]:
    """One shared server (1 s generations) for tests that don't interfere."""
    proc = new_server(tmp_path_factory.mktemp("shared"))
    try:
        proc.start()
        yield proc
    finally:
        proc.close()


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QasinoProcess]:
    """A server whose generation never turns during the module (after the
    startup snapshot), and with a small --max-body-bytes."""
    proc = new_server(
        tmp_path_factory.mktemp("slow"),
        generation_s=600,
        extra_args=["--max-body-bytes", "1000"],
    )
    try:
        proc.start()
        yield proc
    finally:
        proc.close()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., QasinoProcess]]:
    """Factory of dedicated (unstarted) servers; all killed at teardown."""
    made: list[QasinoProcess] = []

    def make(name: str = "dedicated", **kwargs: Any) -> QasinoProcess:
        proc = new_server(tmp_path / name, **kwargs)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.close()


def run_server_to_exit(
    args: Sequence[str], cwd: Path, timeout: float = STARTUP_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a server expected to exit on its own (startup errors); its log
    goes to ``server-exit.log`` in ``cwd``, so stderr holds only the errors."""
    return subprocess.run(
        server_command([*args, "--log-file", str(cwd / "server-exit.log")]),
        cwd=cwd,
        env=server_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )

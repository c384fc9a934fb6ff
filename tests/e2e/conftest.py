"""End-to-end harness: the real ``qasino_server`` in a subprocess.

Every listener binds to 127.0.0.1 with port 0; the real ports are read from
the server's log (its stdout, redirected to a file). Waiting for state uses
the generation signal (GENSIG) or a poll loop with a deadline, never a fixed
sleep. Every process started here is killed at teardown and every socket
opened here is closed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import pytest
import zmq

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_CODE = "import sys; from qasino.cli import server_main; sys.exit(server_main(sys.argv[1:]))"
IDENTITY = "testserver"
HOST = "127.0.0.1"

STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
GENERATION_TIMEOUT = 10.0
REQUEST_TIMEOUT = 10.0

GENSIG_PREFIX = b"GENSIG\x00"

_PORT_PATTERNS = {
    "zmq": re.compile(r"ZeroMQ RPC listening on [0-9.]+:(\d+)"),
    "pubsub": re.compile(r"ZeroMQ generation signal on [0-9.]+:(\d+)"),
    "http": re.compile(r"HTTP listening on [0-9.]+:(\d+)"),
    "line": re.compile(r"line protocol listening on [0-9.]+:(\d+)"),
}
SERVED_PATTERN = r"generation (\d+) is being served"

ZMQ_CONTEXT = zmq.Context()


def server_env() -> dict[str, str]:
    """The environment of a server process: the repo root first on PYTHONPATH."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def server_command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-c", SERVER_CODE, *args]


def base_flags(
    db_dir: Path,
    views_file: Path,
    generation_s: float = 1,
    identity: str = IDENTITY,
    ports: Optional[dict[str, int]] = None,
) -> list[str]:
    """The flags every test server gets; ``ports`` overrides single ports."""
    chosen = {"line": 0, "http": 0, "zmq": 0, "pubsub": 0, **(ports or {})}
    return [
        "--bind",
        HOST,
        "--line-port",
        str(chosen["line"]),
        "--http-port",
        str(chosen["http"]),
        "--zmq-port",
        str(chosen["zmq"]),
        "--pubsub-port",
        str(chosen["pubsub"]),
        "-d",
        str(db_dir),
        "-g",
        f"{generation_s:g}",
        "-v",
        str(views_file),
        "--log-level",
        "info",
        "-i",
        identity,
    ]


def poll_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Call ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def sigint_not_ignored() -> Iterator[None]:
    """A shell that starts pytest as a background job leaves SIGINT ignored;
    children inherit that, and a server rightly keeps an inherited SIG_IGN
    (Twisted only handles SIGINT when it has Python's default handler). Give
    the server a default SIGINT, as an interactive start would."""
    previous = signal.getsignal(signal.SIGINT)
    if previous != signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def parse_gensig(frame: bytes) -> dict[str, Any]:
    assert frame.startswith(GENSIG_PREFIX), f"not a GENSIG frame: {frame[:40]!r}"
    message = json.loads(frame[len(GENSIG_PREFIX) :])
    assert isinstance(message, dict), message
    return message


class QasinoProcess:
    """One qasino_server process; ``start`` may be called again after ``stop``
    (same flags, so the same db dir), each run with its own log files."""

    def __init__(self, workdir: Path, args: Sequence[str]) -> None:
        self.workdir = workdir
        self.args = list(args)
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.ports: dict[str, int] = {}
        self.log_path: Optional[Path] = None
        self.err_path: Optional[Path] = None
        self._runs = 0
        self._files: list[Any] = []
        self._sub: Optional[zmq.Socket] = None

    # ------------------------------------------------------------ lifecycle

    def launch(self) -> None:
        """Start the process and return at once (no waiting for ports)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._close_sub()
        self._runs += 1
        self.log_path = self.workdir / f"server-{self._runs}.log"
        self.err_path = self.workdir / f"server-{self._runs}.err"
        out = open(self.log_path, "wb")  # noqa: SIM115 - closed in _close_files
        err = open(self.err_path, "wb")  # noqa: SIM115
        self._files = [out, err]
        self.ports = {}
        with sigint_not_ignored():
            self.proc = subprocess.Popen(
                server_command(self.args),
                cwd=self.workdir,
                env=server_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    def start(
        self, wait_first_generation: bool = True, timeout: float = STARTUP_TIMEOUT
    ) -> QasinoProcess:
        """Start and wait until every listener logged its port (and, unless
        told otherwise, the first generation is announced as served)."""
        self.launch()

        def ports_known() -> bool:
            self._check_alive("reading its ports")
            text = self.log_text()
            for name, pattern in _PORT_PATTERNS.items():
                match = pattern.search(text)
                if match is None:
                    return False
                self.ports[name] = int(match.group(1))
            return True

        poll_until(ports_known, timeout, "the server's listening ports")
        if wait_first_generation:
            self.wait_log(SERVED_PATTERN, timeout=timeout)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig``; return the exit code (fail if it does not exit in time)."""
        assert self.proc is not None, "never started"
        self._close_sub()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"server did not exit within {timeout:g}s of signal {sig}\n"
                f"--- log ---\n{self.log_text()}\n--- stderr ---\n{self.stderr_text()}"
            ) from None
        finally:
            self._close_files()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)

    def close(self) -> None:
        """Teardown: kill whatever still runs, close every socket and file."""
        self._close_sub()
        self.kill()
        self._close_files()

    def _close_files(self) -> None:
        for f in self._files:
            f.close()
        self._files = []

    def _close_sub(self) -> None:
        if self._sub is not None:
            self._sub.close(linger=0)
            self._sub = None

    def _check_alive(self, doing: str) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"server exited with {self.proc.returncode} while {doing}\n"
                f"--- log ---\n{self.log_text()}\n--- stderr ---\n{self.stderr_text()}"
            )

    # ------------------------------------------------------------ log

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stderr_text(self) -> str:
        return self.err_path.read_text(errors="replace") if self.err_path else ""

    def count_log(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log_text()))

    def wait_log(self, pattern: str, count: int = 1, timeout: float = GENERATION_TIMEOUT) -> str:
        """Wait until ``pattern`` occurs ``count`` times in this run's log."""

        def found() -> bool:
            self._check_alive(f"waiting for {pattern!r} in the log")
            return self.count_log(pattern) >= count

        poll_until(found, timeout, f"{pattern!r} x{count} in the server log")
        return self.log_text()

    # ------------------------------------------------------------ generations

    def _subscriber(self) -> zmq.Socket:
        if self._sub is None:
            sock = ZMQ_CONTEXT.socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SUBSCRIBE, b"GENSIG")
            sock.connect(f"tcp://{HOST}:{self.ports['pubsub']}")
            self._sub = sock
        return self._sub

    def wait_generation(
        self, after: Optional[int] = None, timeout: float = GENERATION_TIMEOUT
    ) -> dict[str, Any]:
        """The parsed JSON of a GENSIG frame.

        With ``after=None``: the next signal sent after this call (frames
        already queued are dropped). With ``after=N``: the first signal seen
        whose generation_number is greater than N. The subscriber socket stays
        open for the run, so consecutive generations are never missed.
        """
        sock = self._subscriber()
        if after is None:
            while True:
                try:
                    sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive("waiting for a generation signal")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no generation signal (after={after}) within {timeout:g}s")
            if not sock.poll(min(remaining, 0.2) * 1000):
                continue
            message = parse_gensig(sock.recv())
            if after is None or message["generation_number"] > after:
                return message


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


def http_publish(port: int, request: dict[str, Any]) -> dict[str, Any]:
    """POST /request?op=add_table_data with a JSON body; the reply dict."""
    body = json.dumps({"op": "add_table_data", **request}).encode()
    reply = http_request(
        port,
        "POST",
        request_target(op="add_table_data"),
        body,
        {"Content-Type": "application/json"},
    )
    assert reply.status == 200, reply
    return reply.json()


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

ANSWER_RE = re.compile(rb"^(?:\d+ rows returned|SQL error: .*)$", re.MULTILINE)


class LineClient:
    """A raw TCP client of the telnet line protocol."""

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
        data, self.buffer = self.buffer, b""
        return data.decode("utf-8")

    def read_until_closed(self) -> str:
        while self._receive():
            pass
        data, self.buffer = self.buffer, b""
        return data.decode("utf-8")


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


def new_server(
    workdir: Path,
    generation_s: float = 1,
    extra_args: Sequence[str] = (),
    views_text: str = "[]\n",
) -> QasinoProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    views = workdir / "views.conf"
    if not views.exists():
        views.write_text(views_text)
    args = base_flags(workdir / "db", views, generation_s) + list(extra_args)
    return QasinoProcess(workdir, args)


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
    """Run a server expected to exit on its own (startup errors)."""
    return subprocess.run(
        server_command(args),
        cwd=cwd,
        env=server_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )

"""The real ``qasino_server`` in a subprocess, for every test suite that needs one.

Every listener binds to 127.0.0.1 with port 0 (unless told otherwise); the
real ports are read from the server's log (``--log-file``, one per run; its
stdout and stderr go to files of their own).
Waiting for state uses the generation signal (GENSIG) or a poll loop with a
deadline, never a fixed sleep. ``close`` kills the process and closes every
socket and file it opened.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import zmq

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_CODE = "import sys; from qasino.cli import server_main; sys.exit(server_main(sys.argv[1:]))"
IDENTITY = "testserver"
HOST = "127.0.0.1"

STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
GENERATION_TIMEOUT = 10.0

GENSIG_PREFIX = b"GENSIG\x00"

# Each listener: its port flag, and the words before " on HOST:PORT" in the
# line that logs its port. HTTPS only listens when its port is given.
LISTENERS = {
    "line": ("--line-port", "line protocol listening"),
    "http": ("--http-port", "HTTP listening"),
    "zmq": ("--zmq-port", "ZeroMQ RPC listening"),
    "pubsub": ("--pubsub-port", "ZeroMQ generation signal"),
    "https": ("--https-port", "HTTPS listening"),
}
OPTIONAL_LISTENERS = ("https",)
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
    flags = ["--bind", HOST]
    for name, port in chosen.items():
        flags += [LISTENERS[name][0], str(port)]
    return flags + [
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


def with_ports(args: Sequence[str], ports: dict[str, int]) -> list[str]:
    """``args`` with the value of each listener's port flag set to ``ports``."""
    changed = list(args)
    for name, port in ports.items():
        changed[changed.index(LISTENERS[name][0]) + 1] = str(port)
    return changed


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


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
    (same flags, so the same db dir), each run with its own log files.

    ``prefix`` wraps the command (e.g. a program that sets a resource limit
    and ``exec``s the rest)."""

    def __init__(self, workdir: Path, args: Sequence[str], prefix: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.args = list(args)
        self.prefix = list(prefix)
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.ports: dict[str, int] = {}
        self.log_path: Optional[Path] = None
        self.out_path: Optional[Path] = None
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
        self.out_path = self.workdir / f"server-{self._runs}.out"
        self.err_path = self.workdir / f"server-{self._runs}.err"
        self.log_path.write_bytes(b"")
        out = open(self.out_path, "wb")  # noqa: SIM115 - closed in _close_files
        err = open(self.err_path, "wb")  # noqa: SIM115
        self._files = [out, err]
        self.ports = {}
        with sigint_not_ignored():
            self.proc = subprocess.Popen(
                self.prefix + server_command([*self.args, "--log-file", str(self.log_path)]),
                cwd=self.workdir,
                env=server_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    def start(
        self,
        wait_first_generation: bool = True,
        timeout: float = STARTUP_TIMEOUT,
        keep_ports: bool = False,
    ) -> QasinoProcess:
        """Start and wait until every listener logged its port (and, unless
        told otherwise, the first generation is announced as served).

        ``keep_ports``: bind the ports the previous run was given (a restart
        on the same ports); later runs keep them too."""
        if keep_ports:
            assert self.ports, "no earlier run whose ports to keep"
            self.args = with_ports(self.args, self.ports)
        self.launch()
        patterns = {
            name: re.compile(re.escape(words) + r" on [0-9.]+:(\d+)")
            for name, (flag, words) in LISTENERS.items()
            if name not in OPTIONAL_LISTENERS or flag in self.args
        }

        def ports_known() -> bool:
            self._check_alive("reading its ports")
            text = self.log_text()
            for name, pattern in patterns.items():
                match = pattern.search(text)
                if match is None:
                    return False
                self.ports[name] = int(match.group(1))
            return True

        poll_until(ports_known, timeout, "the server's listening ports")
        # Subscribe now: a SUB socket only gets signals some milliseconds
        # after it connects, so one made at the first wait could miss it.
        self._subscriber()
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

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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
            if not sock.poll(int(min(remaining, 0.2) * 1000)):
                continue
            message = parse_gensig(sock.recv())
            if after is None or message["generation_number"] > after:
                return message


def workdir_flags(
    workdir: Path,
    generation_s: float = 1,
    extra_args: Sequence[str] = (),
    views_text: str = "[]\n",
) -> list[str]:
    """The flags of a server kept in ``workdir``: its db dir and views file
    there (the views file written unless it exists), then ``extra_args``."""
    workdir.mkdir(parents=True, exist_ok=True)
    views = workdir / "views.conf"
    if not views.exists():
        views.write_text(views_text)
    return base_flags(workdir / "db", views, generation_s) + list(extra_args)


def new_server(
    workdir: Path,
    generation_s: float = 1,
    extra_args: Sequence[str] = (),
    views_text: str = "[]\n",
) -> QasinoProcess:
    """An unstarted server kept in ``workdir`` (see ``workdir_flags``)."""
    return QasinoProcess(workdir, workdir_flags(workdir, generation_s, extra_args, views_text))

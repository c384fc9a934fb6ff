"""The real ``qasino_server`` as a subprocess on loopback, and how to watch it.

:class:`Daemon` starts the server with every port 0, reads the chosen ports
from its log, subscribes to its generation signal and stops it (SIGTERM,
then SIGKILL) when the block ends, removing its temporary directory.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Optional

import zmq

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_CODE = "import sys; from qasino.cli import server_main; sys.exit(server_main(sys.argv[1:]))"
GENSIG_TAG = b"GENSIG"
PORT_LINES = {
    "zmq": re.compile(rb"ZeroMQ RPC listening on [0-9.]+:(\d+)"),
    "pubsub": re.compile(rb"ZeroMQ generation signal on [0-9.]+:(\d+)"),
    "http": re.compile(rb"HTTP listening on [0-9.]+:(\d+)"),
    "line": re.compile(rb"line protocol listening on [0-9.]+:(\d+)"),
}
SERVED_LINE = re.compile(rb"generation (\d+) is being served")
START_TIMEOUT_S = 30.0
COMPOUND_LIMIT = 400  # SQLite allows 500 terms in one compound SELECT
STOP_TIMEOUT_S = 15.0


class BenchError(RuntimeError):
    """The benchmark could not measure something (not a slow figure)."""


def die_with_parent() -> None:
    """preexec_fn: SIGTERM this child if the harness dies (Linux prctl)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(frozen=True)
class Gensig:
    received: float  # time.monotonic() when the frame arrived
    generation: int  # the generation that starts filling (as the original sends it)

    def serves(self, generation: int, generation_s: float) -> bool:
        """Whether ``generation`` is the one whose snapshot this signal
        announced: the generation before the one that starts filling.
        Generation numbers count seconds, so the one before is within one
        generation length (plus rounding) below this signal's number."""
        return self.generation - generation_s - 1 <= generation < self.generation


def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise BenchError(f"no VmRSS for pid {pid}")


def py_spy_path() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.access(found, os.X_OK):
        raise BenchError("--py-spy needs py-spy (pip install py-spy)")
    return found


def start_py_spy(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """Sample the server until stopped; collapsed stacks (``--format raw``)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [py_spy_path(), "record", "--format", "raw", "--nonblocking"]
    command += ["-r", "200", "-o", str(output), "-p", str(pid)]
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )


def stop_py_spy(profiler: subprocess.Popen[bytes]) -> None:
    """SIGINT makes py-spy write its file and exit."""
    if profiler.poll() is None:
        profiler.send_signal(signal.SIGINT)
    try:
        profiler.wait(20.0)
    except subprocess.TimeoutExpired:
        profiler.kill()
        profiler.wait()


class ProfileTarget:
    """Where ``--py-spy`` puts the profile of the next server started."""

    def __init__(self) -> None:
        self.directory: Optional[Path] = None
        self.phase = "server"
        self.count = 0

    def next_path(self) -> Optional[Path]:
        if self.directory is None:
            return None
        self.count += 1
        return self.directory / f"{self.phase}-{self.count}.txt"


PROFILE = ProfileTarget()

# Flags every Daemon gets after its own (bench.run --server-workers N).
SERVER_EXTRA: list[str] = []


class Daemon:
    """One server process. Use as a context manager."""

    def __init__(
        self,
        generation_s: float,
        extra_args: Sequence[str] = (),
        python: Sequence[str] = (sys.executable,),
        profile_to: Optional[Path] = None,
    ) -> None:
        self.generation_s = generation_s
        self.profile_to = profile_to or PROFILE.next_path()
        self.profiler: Optional[subprocess.Popen[bytes]] = None
        self.extra_args = list(extra_args)
        self.python = list(python)
        self.tmp = Path(tempfile.mkdtemp(prefix="qasino-bench-"))
        self.log_path = self.tmp / "server.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.ports: dict[str, int] = {}
        self.ready_at = 0.0  # time.monotonic() when the first generation was served
        self.context = zmq.Context()
        self.sub: Optional[zmq.Socket] = None
        self.http: Optional[http.client.HTTPConnection] = None

    # ------------------------------------------------------------ lifecycle

    def command(self) -> list[str]:
        views = self.tmp / "views.yaml"
        views.write_text("[]\n")
        return [
            *self.python,
            "-c",
            SERVER_CODE,
            "--bind",
            HOST,
            *("--line-port", "0", "--http-port", "0", "--zmq-port", "0", "--pubsub-port", "0"),
            *("-d", str(self.tmp / "db"), "-g", f"{self.generation_s:g}", "-v", str(views)),
            *("--log-level", "info", "-i", "bench"),
            *self.extra_args,
            *SERVER_EXTRA,
        ]

    def __enter__(self) -> Daemon:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.tmp,
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        self._read_ports()
        if self.profile_to is not None:
            self.profiler = start_py_spy(self.pid, self.profile_to)
        sub = self.context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, GENSIG_TAG)
        sub.connect(f"tcp://{HOST}:{self.ports['pubsub']}")
        self.sub = sub

    def _read_ports(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(f"server exited at start:\n{self.log_tail()}")
            text = self.log_path.read_bytes()
            found = {name: p.search(text) for name, p in PORT_LINES.items()}
            if all(found.values()) and SERVED_LINE.search(text):
                self.ports = {name: int(m.group(1)) for name, m in found.items() if m}
                self.ready_at = time.monotonic()
                return
            time.sleep(0.02)
        raise BenchError(f"server did not log its ports in time:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None
        if self.sub is not None:
            self.sub.close(linger=0)
            self.sub = None
        self.context.term()
        if self.profiler is not None:
            stop_py_spy(self.profiler)
            self.profiler = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"server died:\n{self.log_tail()}")

    # ------------------------------------------------------------ signals

    def next_gensig(self, timeout_s: float) -> Optional[Gensig]:
        """The next generation signal, or None after ``timeout_s``."""
        assert self.sub is not None
        if not self.sub.poll(int(max(timeout_s, 0.0) * 1000)):
            self.check_alive()
            return None
        frame = self.sub.recv()
        received = time.monotonic()
        message = json.loads(frame[len(GENSIG_TAG) + 1 :])
        return Gensig(received, int(message["generation_number"]))

    def wait_gensig(self, timeout_s: Optional[float] = None) -> Gensig:
        limit = timeout_s if timeout_s is not None else self.generation_s * 2 + 10
        signal_ = self.next_gensig(limit)
        if signal_ is None:
            raise BenchError(f"no generation signal within {limit:g}s:\n{self.log_tail()}")
        return signal_

    # ------------------------------------------------------------ queries

    def query(self, sql: str, timeout_s: float = 30.0) -> list[list[str]]:
        """Rows of a query over HTTP (keep-alive); raises BenchError on an error reply."""
        reply = self.request({"op": "query", "sql": sql}, timeout_s)
        if reply.get("response_op") != "result_table":
            raise BenchError(f"query failed: {reply.get('error_message')!r} ({sql[:120]})")
        rows: list[list[str]] = reply["table"]["rows"]
        return rows

    def request(self, payload: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
        if self.http is None:
            self.http = http.client.HTTPConnection(HOST, self.ports["http"], timeout=timeout_s)
        body = json.dumps(payload).encode()
        try:
            self.http.request("POST", "/request", body, {"Content-Type": "application/json"})
            data = self.http.getresponse().read()
        except (OSError, http.client.HTTPException):
            self.http.close()
            self.http = None
            raise
        reply: dict[str, Any] = json.loads(data)
        return reply

    def table_counts(self, tables: Sequence[str]) -> tuple[int, dict[str, int]]:
        """(generation served, row count of each of ``tables`` it holds).

        The generation is 0 if the counts came from more than one snapshot.
        """
        wanted = {t.lower(): t for t in tables}
        listed = self.query("SELECT tablename FROM qasino_server_tables WHERE static = 0")
        present = [wanted[r[0].lower()] for r in listed if r[0].lower() in wanted]
        counts: dict[str, int] = {}
        generations = set()
        for start in range(0, max(len(present), 1), COMPOUND_LIMIT):
            parts = ["SELECT '' AS t, generation_number AS n FROM qasino_server_info"]
            parts += [
                f"SELECT '{t}', count(*) FROM \"{t}\"" for t in present[start:][:COMPOUND_LIMIT]
            ]
            for name, value in self.query(" UNION ALL ".join(parts)):
                if name:
                    counts[name] = int(value)
                else:
                    generations.add(int(value))
        return (generations.pop() if len(generations) == 1 else 0), counts

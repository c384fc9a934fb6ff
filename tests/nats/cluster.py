"""A real 3-node NATS JetStream cluster (Debian's ``nats-server``) on loopback.

Each node gets a free client port, a free cluster (route) port and its own
JetStream store directory; ``kill(i)`` sends SIGKILL to one node and
``restart(i)`` starts it again on the same ports and directory, so it
rejoins the cluster with its data.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Optional

from tests.server_process import HOST, free_port, poll_until

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
CLUSTER_NAME = "qasinotest"


def have_nats_server() -> bool:
    return Path(NATS_SERVER).exists()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


class NatsNode:
    def __init__(self, name: str, workdir: Path, client_port: int, cluster_port: int) -> None:
        self.name = name
        self.workdir = workdir
        self.client_port = client_port
        self.cluster_port = cluster_port
        self.store_dir = workdir / "js"
        self.log_path = workdir / "nats.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.routes: list[int] = []

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.client_port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        routes = ",".join(f"nats-route://{HOST}:{p}" for p in self.routes)
        cluster = [
            "--cluster_name",
            CLUSTER_NAME,
            "--cluster",
            f"nats://{HOST}:{self.cluster_port}",
            "--routes",
            routes,
        ]
        args = [
            NATS_SERVER,
            "-js",
            "-n",
            self.name,
            "-a",
            HOST,
            "-p",
            str(self.client_port),
            *(cluster if self.routes else []),
            "-sd",
            str(self.store_dir),
            "-l",
            str(self.log_path),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        poll_until(lambda: _port_open(self.client_port), 15, f"nats node {self.name} to listen")

    def kill(self) -> None:
        """SIGKILL: no goodbye to the cluster, whatever was in flight is cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class NatsCluster:
    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.nodes = [
            NatsNode(f"n{i}", workdir / f"n{i}", free_port(), free_port()) for i in range(size)
        ]
        for node in self.nodes:
            node.routes = [n.cluster_port for n in self.nodes if n is not node]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """The comma-separated list, as ``--nats`` takes it."""
        return ",".join(self.urls)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        self.wait_jetstream()

    def wait_jetstream(self, timeout: float = 30.0) -> None:
        """Until the JetStream meta group has a leader (a stream can be made)."""
        poll_until(self._meta_leader_known, timeout, "a JetStream meta leader", interval=0.2)

    def _meta_leader_known(self) -> bool:
        for node in self.nodes:
            if node.alive() and "JetStream cluster new metadata leader" in _read(node.log_path):
                return True
            if node.alive() and "Self is new JetStream cluster metadata leader" in _read(
                node.log_path
            ):
                return True
        return False

    def kill(self, i: int) -> None:
        self.nodes[i].kill()

    def restart(self, i: int) -> None:
        self.nodes[i].start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def ensure_all_alive(self) -> None:
        """Restart any node a test left down (the cluster is shared by a module)."""
        for node in self.nodes:
            if not node.alive():
                node.start()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""

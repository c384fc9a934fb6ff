"""The real Prometheus Alertmanager (Debian's prometheus-alertmanager) in a
subprocess on a free loopback port, for the alert delivery tests.

Clustering is off (``--cluster.listen-address=``); its storage and config
live in the directory given. ``alerts()`` reads ``GET /api/v2/alerts``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.server_process import HOST, free_port, poll_until

BINARY = "/usr/bin/prometheus-alertmanager"

CONFIG = """\
route:
  receiver: blackhole
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: blackhole
"""


def require_alertmanager() -> str:
    path = shutil.which("prometheus-alertmanager") or (BINARY if Path(BINARY).exists() else None)
    if path is None:
        pytest.skip("prometheus-alertmanager is not installed (Debian package)")
    return path


class Alertmanager:
    def __init__(self, workdir: Path, port: Optional[int] = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 20.0) -> Alertmanager:
        binary = require_alertmanager()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "alertmanager.yml"
        config.write_text(CONFIG)
        self._log = open(self.workdir / "alertmanager.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={self.workdir / 'data'}",
                f"--web.listen-address={HOST}:{self.port}",
                "--cluster.listen-address=",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log_text()
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as reply:
                    return bool(reply.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        poll_until(ready, timeout, "Alertmanager to be ready", interval=0.1)
        return self

    def log_text(self) -> str:
        path = self.workdir / "alertmanager.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts it holds now (``GET /api/v2/alerts``: active ones)."""
        with urllib.request.urlopen(self.url + "/api/v2/alerts", timeout=5) as reply:
            result: list[dict[str, Any]] = json.loads(reply.read())
        return result

    def find(self, alertname: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts() if a["labels"].get("alertname") == alertname]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

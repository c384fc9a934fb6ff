"""Alertmanager down (first a port that accepts but never answers, then
nothing listening): rotations, publishes and queries go on; the firing
alert is delivered once a real Alertmanager is up on that port."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from tests.alertmanager import Alertmanager, require_alertmanager
from tests.e2e.conftest import (
    HOST,
    assert_ok,
    http_publish,
    http_query,
    make_table,
    poll_until,
    publish_request,
    rows_of,
)

RULE = """\
- alert: LoadHigh
  sql: SELECT host, load FROM loads WHERE load > 5
  key: host
  annotations: {summary: "{host} load {load}"}
"""


def test_alertmanager_down_delays_nothing_and_gets_the_alert_once_back(
    tmp_path: Path, start_server: Any
) -> None:
    require_alertmanager()
    # A listener that never accepts: the server's request hangs until its
    # time limit.
    black_hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    black_hole.bind((HOST, 0))
    black_hole.listen(16)
    port = black_hole.getsockname()[1]
    am = Alertmanager(tmp_path / "am", port=port)
    proc = start_server("down", extra_args=["--alertmanager-url", f"http://{HOST}:{port}"])
    (proc.workdir / "alerts.yaml").write_text(RULE)
    try:
        proc.start()
        http = proc.ports["http"]
        table = make_table("loads", [("host", "text"), ("load", "real")], [("h1", 9.5)])
        assert_ok(http_publish(http, publish_request("a1", table, persist=1)))
        poll_until(
            lambda: [
                r
                for r in rows_of(http_query(http, "SHOW alerts;"))
                if r[:2] == ["LoadHigh", "firing"]
            ],
            20,
            "the alert firing",
        )
        # While a send hangs: generations keep turning, publishes are
        # acknowledged, queries answered.
        first = proc.wait_generation()["generation_number"]
        served = []
        for n in range(3):
            other = make_table("other", [("n", "integer")], [(n,)])
            assert_ok(http_publish(http, publish_request(f"p{n}", other)))
            number = proc.wait_generation(after=first + n)["generation_number"]
            assert number > first + n
            reply = http_query(http, "SELECT generation_number FROM qasino_server_info")
            served.append(int(rows_of(reply)[0][0]))
        assert served == sorted(set(served)), served  # a new snapshot each time
        # All that time the first send was still waiting for an answer.
        assert "sending alerts" not in proc.log_text()
        # Nothing listening at all: refused at once, logged, retried.
        black_hole.close()
        proc.wait_log(r"sending alerts to http://127\.0\.0\.1:\d+/api/v2/alerts failed", timeout=30)
        proc.wait_generation()
        am.start()
        alerts = poll_until(lambda: am.find("LoadHigh"), 30, "the alert to reach Alertmanager")
        assert alerts[0]["labels"] == {"alertname": "LoadHigh", "host": "h1"}
        assert alerts[0]["annotations"] == {"summary": "h1 load 9.5"}
    finally:
        black_hole.close()
        am.stop()

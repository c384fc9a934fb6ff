"""Alerts end to end: the real server evaluating an alerts file after each
snapshot, ZeroMQ ALERT frames, qasino_server_alerts / SHOW alerts, the
/alerts page, and delivery to a real Alertmanager (one for the module)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.alertmanager import Alertmanager, require_alertmanager
from tests.e2e.conftest import (
    HOST,
    ZMQ_CONTEXT,
    QasinoProcess,
    assert_ok,
    http_publish,
    http_query,
    http_request,
    make_table,
    new_server,
    poll_until,
    publish_request,
    rows_of,
)

ALERTS = """\
- alert: DiskAlmostFull
  sql: SELECT host, mount, pct FROM disks WHERE pct > 90
  for: 2
  key: [host, mount]
  labels: {severity: page}
  annotations: {summary: "{host}:{mount} is {pct}% full"}
- alert: NoSuchTable
  sql: SELECT x FROM not_there
- alert: BadKey
  sql: SELECT host FROM disks
  key: [nope]
- alert: Writes
  sql: DELETE FROM disks
"""

DISKS = [("host", "text"), ("mount", "text"), ("pct", "integer")]
TIMEOUT = 20.0


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    require_alertmanager()
    am = Alertmanager(tmp_path_factory.mktemp("alertmanager"))
    try:
        yield am.start()
    finally:
        am.stop()


@pytest.fixture(scope="module")
def alert_server(
    tmp_path_factory: pytest.TempPathFactory, alertmanager: Alertmanager
) -> Iterator[QasinoProcess]:
    workdir = tmp_path_factory.mktemp("alerts")
    (workdir / "alerts.yaml").write_text(ALERTS)
    # The default --alerts-file: alerts.yaml in the working directory.
    proc = new_server(workdir, extra_args=["--alertmanager-url", alertmanager.url])
    try:
        proc.start()
        yield proc
    finally:
        proc.close()


class AlertFrames:
    """A SUB socket on the ALERT prefix."""

    def __init__(self, port: int) -> None:
        self.sock = ZMQ_CONTEXT.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"ALERT")
        self.sock.connect(f"tcp://{HOST}:{port}")

    def wait(self, alertname: str, state: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.sock.poll(200):
                continue
            frame = self.sock.recv()
            assert frame.startswith(b"ALERT\x00"), frame[:40]
            message: dict[str, Any] = json.loads(frame[len(b"ALERT\x00") :])
            if message["alertname"] == alertname and message["state"] == state:
                return message
        raise AssertionError(f"no ALERT frame {alertname} {state} within {timeout}s")

    def close(self) -> None:
        self.sock.close(linger=0)


def publish_disks(proc: QasinoProcess, rows: list[tuple[Any, ...]], **options: Any) -> None:
    assert_ok(
        http_publish(
            proc.ports["http"],
            publish_request("agent1", make_table("disks", DISKS, rows), **options),
        )
    )


def alert_rows(proc: QasinoProcess) -> dict[str, list[dict[str, str]]]:
    reply = http_query(proc.ports["http"], "SELECT * FROM qasino_server_alerts")
    names = reply["table"]["column_names"]
    out: dict[str, list[dict[str, str]]] = {}
    for row in rows_of(reply):
        record = dict(zip(names, row))
        out.setdefault(record["alertname"], []).append(record)
    return out


def test_alert_fires_reaches_alertmanager_is_resent_and_resolves(
    alert_server: QasinoProcess, alertmanager: Alertmanager
) -> None:
    frames = AlertFrames(alert_server.ports["pubsub"])
    try:
        # persist: the row stays in every snapshot until re-published.
        publish_disks(alert_server, [("h1", "/", 95), ("h2", "/", 10)], persist=1)
        pending = frames.wait("DiskAlmostFull", "pending")
        assert pending["labels"] == {"host": "h1", "mount": "/", "severity": "page"}
        assert pending["annotations"] == {"summary": "h1:/ is 95% full"}
        firing = frames.wait("DiskAlmostFull", "firing")
        assert firing["generation_number"] > pending["generation_number"]

        got = poll_until(
            lambda: alertmanager.find("DiskAlmostFull"), TIMEOUT, "the alert in Alertmanager"
        )
        (alert,) = got
        assert alert["labels"] == {
            "alertname": "DiskAlmostFull",
            "host": "h1",
            "mount": "/",
            "severity": "page",
        }
        assert alert["annotations"] == {"summary": "h1:/ is 95% full"}
        assert alert["generatorURL"].endswith("/alerts?alertname=DiskAlmostFull")
        assert alert["status"]["state"] == "active"

        # Re-sent every generation while it fires: its end keeps moving on.
        first_end = alert["endsAt"]
        poll_until(
            lambda: [a for a in alertmanager.find("DiskAlmostFull") if a["endsAt"] > first_end],
            TIMEOUT,
            "the alert to be re-sent",
        )

        # The table (the snapshot after the evaluation) and SHOW alerts.
        rows = poll_until(
            lambda: [
                r
                for r in alert_rows(alert_server).get("DiskAlmostFull", [])
                if r["state"] == "firing"
            ],
            TIMEOUT,
            "a firing row in qasino_server_alerts",
        )
        assert json.loads(rows[0]["labels"]) == {"host": "h1", "mount": "/", "severity": "page"}
        assert json.loads(rows[0]["annotations"]) == {"summary": "h1:/ is 95% full"}
        assert rows[0]["error"] == ""
        shown = http_query(alert_server.ports["http"], "SHOW alerts;")
        assert shown["table"]["column_names"][:2] == ["alertname", "state"]
        assert ["DiskAlmostFull", "firing"] in [r[:2] for r in rows_of(shown)]

        metrics = http_request(alert_server.ports["http"], "GET", "/metrics").body.decode()
        assert 'qasino_alerts{alertname="DiskAlmostFull",state="firing"} 1.0' in metrics
        assert 'qasino_alerts{alertname="NoSuchTable",state="error"} 1.0' in metrics

        page = http_request(alert_server.ports["http"], "GET", "/alerts")
        assert page.status == 200 and b"h1:/ is 95% full" in page.body
        assert b"firing" in page.body

        # The condition clears: resolved, and gone from Alertmanager long
        # before the endsAt it was last sent with.
        publish_disks(alert_server, [("h1", "/", 50)])
        resolved = frames.wait("DiskAlmostFull", "resolved")
        assert resolved["labels"]["host"] == "h1"
        poll_until(
            lambda: not alertmanager.find("DiskAlmostFull"),
            TIMEOUT,
            "the resolved alert to leave Alertmanager",
        )
    finally:
        frames.close()


def test_rules_that_cannot_be_evaluated_are_error_rows(alert_server: QasinoProcess) -> None:
    def errors() -> Any:
        rows = alert_rows(alert_server)
        found = {
            name: rows[name][0]["error"]
            for name in ("NoSuchTable", "BadKey", "Writes")
            if name in rows and rows[name][0]["state"] == "error"
        }
        return found if len(found) == 3 else None

    found = poll_until(errors, TIMEOUT, "three error rows")
    assert "no such table: not_there" in found["NoSuchTable"]
    assert "key column 'nope'" in found["BadKey"]
    assert "Only SELECT" in found["Writes"]


def test_broken_file_keeps_the_last_good_rules_and_says_why(
    tmp_path: Path, start_server: Any
) -> None:
    proc = start_server("reload")
    rules = tmp_path / "rules.yaml"
    rules.write_text("- alert: Always\n  sql: SELECT 1 AS one\n")
    proc.args += ["--alerts-file", str(rules)]
    proc.start()
    port = proc.ports["http"]
    poll_until(lambda: "Always" in alert_rows(proc), TIMEOUT, "the Always alert")
    rules.write_text("- alert: [unclosed\n")
    text = proc.wait_log(r"alerts file .* not loaded, keeping the last good alerts")
    assert "not valid YAML" in text

    def both() -> Any:
        rows = alert_rows(proc)
        return rows if "alerts_file" in rows and "Always" in rows else None

    rows = poll_until(both, TIMEOUT, "the file error row next to the kept alert")
    assert rows["alerts_file"][0]["state"] == "error"
    assert "not valid YAML" in rows["alerts_file"][0]["error"]
    assert rows["Always"][0]["state"] == "firing"
    # Fixed again: the error row goes, the new rules apply.
    rules.write_text("- alert: Other\n  sql: SELECT 2 AS two\n")
    poll_until(
        lambda: set(alert_rows(proc)) == {"Other"} or None,
        TIMEOUT,
        "only the new rule's rows",
    )
    assert http_request(port, "GET", "/alerts").status == 200


def test_alerts_file_default_is_alerts_yaml_in_the_working_directory(
    alert_server: QasinoProcess,
) -> None:
    assert "loaded 4 alerts from alerts.yaml" in alert_server.log_text()


SLOW_RULES = """\
- alert: Slow
  sql: WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) AS n FROM c
- alert: Fast
  sql: SELECT 1 AS one
"""


def test_a_slow_alert_is_stopped_at_the_query_time_limit_and_holds_nothing(
    start_server: Any,
) -> None:
    proc = start_server("slow", extra_args=["--query-timeout", "0.5"])
    (proc.workdir / "alerts.yaml").write_text(SLOW_RULES)
    proc.start()
    http = proc.ports["http"]

    def both() -> Any:
        rows = alert_rows(proc)
        return rows if "Slow" in rows and "Fast" in rows else None

    rows = poll_until(both, TIMEOUT, "rows of both alerts")
    assert rows["Slow"][0]["state"] == "error"
    assert "time limit of 0.5 seconds" in rows["Slow"][0]["error"]
    assert rows["Fast"][0]["state"] == "firing"
    # Queries and generations go on while the slow one keeps being evaluated.
    first = proc.wait_generation()["generation_number"]
    for n in range(3):
        assert rows_of(http_query(http, "SELECT 1"))[0] == ["1"]
        assert proc.wait_generation(after=first + n)["generation_number"] > first + n


def test_sighup_reloads_the_alerts_file_at_once(start_server: Any) -> None:
    import signal

    proc = start_server("sighup", generation_s=600)
    rules = proc.workdir / "alerts.yaml"
    rules.write_text("- alert: First\n  sql: SELECT 1 AS one\n")
    proc.start()
    proc.wait_log(r"loaded 1 alerts from alerts\.yaml")
    rules.write_text("- alert: A\n  sql: SELECT 1 AS a\n- alert: B\n  sql: SELECT 2 AS b\n")
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGHUP)
    # No rotation comes for 600 s: only the signal can have read it.
    proc.wait_log(r"loaded 2 alerts from alerts\.yaml")

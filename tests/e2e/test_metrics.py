"""/metrics, /-/healthy and /-/ready on the real daemon, scraped by a real Prometheus."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import (
    HOST,
    QasinoProcess,
    assert_ok,
    http_publish,
    http_query,
    http_request,
    line_query,
    make_table,
    poll_until,
    publish_request,
    zmq_call,
)
from tests.e2e.test_https import USERS, HttpsServer, https_server  # noqa: F401 - a fixture
from tests.server_process import free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
SCRAPE_TIMEOUT = 30.0


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """/metrics parsed: sample name -> {sorted labels: value}."""
    reply = http_request(port, "GET", "/metrics")
    assert reply.status == 200, reply
    assert reply.content_type.startswith("text/plain; version=0.0.4"), reply.content_type
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    return float(samples[name][tuple(sorted(labels.items()))])


# ---------------------------------------------------------------- health


def test_healthy_answers_ok_while_serving(server: QasinoProcess) -> None:
    reply = http_request(server.ports["http"], "GET", "/-/healthy")
    assert (reply.status, reply.body) == (200, b"OK\n")


def test_ready_answers_200_once_a_generation_turned(server: QasinoProcess) -> None:
    server.wait_generation()
    reply = http_request(server.ports["http"], "GET", "/-/ready")
    assert (reply.status, reply.body) == (200, b"OK\n")


# ---------------------------------------------------------------- /metrics


def test_metrics_count_publishes_and_queries_by_transport_and_outcome(
    server: QasinoProcess,
) -> None:
    http, zmq_port, line = server.ports["http"], server.ports["zmq"], server.ports["line"]
    before = scrape(http)
    table = make_table("metrics_t", [("a", "int")], [[1], [2], [3]])
    assert_ok(http_publish(http, publish_request("m1", table)))
    assert_ok(zmq_call(zmq_port, publish_request("m2", table)))
    bad = http_publish(http, {"identity": "m3", "table": {"tablename": "1bad"}})
    assert bad["response_op"] == "error"
    http_query(http, "SELECT 1")
    zmq_call(zmq_port, {"op": "query", "sql": "SELECT nope FROM nowhere"})
    assert "1 rows returned" in line_query(line, "SELECT 1;\n")
    after = scrape(http)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("qasino_publishes_total", transport="http", outcome="ok") == 1
    assert delta("qasino_publishes_total", transport="zmq", outcome="ok") == 1
    assert delta("qasino_publishes_total", transport="http", outcome="error") == 1
    assert delta("qasino_queries_total", transport="http", outcome="ok") >= 1
    assert delta("qasino_queries_total", transport="zmq", outcome="error") == 1
    assert delta("qasino_queries_total", transport="line", outcome="ok") == 1
    assert delta("qasino_rows_ingested_total") == 6
    assert delta("qasino_query_duration_seconds_count", transport="line") == 1
    for name in (
        "qasino_generation_number",
        "qasino_snapshot_age_seconds",
        "qasino_tables",
        "qasino_rotation_duration_seconds_count",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ):
        assert name in after, name
    assert value(after, "qasino_identities", state="stale") == 0
    assert set(after["qasino_identities"]) == {(("state", "live"),), (("state", "stale"),)}
    server.wait_generation()
    assert value(scrape(http), "qasino_identities", state="live") >= 0


def test_metrics_and_health_need_credentials_under_https(
    https_server: HttpsServer,  # noqa: F811 - the imported fixture
) -> None:
    for path in ("/metrics", "/-/healthy", "/-/ready"):
        denied = requests.get(https_server.url(path), verify=str(https_server.cert), timeout=10)
        assert denied.status_code == 401, path
        allowed = requests.get(
            https_server.url(path),
            auth=("bee", USERS["bee"]),
            verify=str(https_server.cert),
            timeout=10,
        )
        assert allowed.status_code in ((503,) if path == "/-/ready" else (200,)), path

    def https_ok_queries() -> float:
        body = requests.get(
            https_server.url("/metrics"),
            auth=("bee", USERS["bee"]),
            verify=str(https_server.cert),
            timeout=10,
        ).text
        assert "qasino_generation_number" in body
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == "qasino_queries_total" and sample.labels == {
                    "transport": "https",
                    "outcome": "ok",
                }:
                    return sample.value
        raise AssertionError("no https series in qasino_queries_total")

    before = https_ok_queries()
    for path in ("/request?op=query&sql=SELECT+1", "/query?sql=SELECT+1"):
        reply = requests.get(
            https_server.url(path),
            auth=("bee", USERS["bee"]),
            verify=str(https_server.cert),
            timeout=10,
        )
        assert reply.status_code == 200, path
    assert https_ok_queries() - before == 2  # the API and the web UI


# ---------------------------------------------------------------- a real Prometheus


class Prometheus:
    def __init__(self, workdir: Path, target_port: int) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n"
            "  - job_name: qasino\n"
            f"    static_configs:\n      - targets: ['{HOST}:{target_port}']\n"
        )
        self.log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed in close
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address={HOST}:{self.port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def query(self, promql: str) -> Optional[float]:
        """The value of a one-series instant query, or None (no data yet)."""
        url = f"http://{HOST}:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                reply = json.load(response)
        except OSError:
            return None
        assert reply["status"] == "success", reply
        result = reply["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def prometheus(
    server: QasinoProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    if not Path(PROMETHEUS).exists():
        pytest.fail("prometheus is not installed (.ci/run installs the Debian package)")
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"), server.ports["http"])
    try:
        yield prom
    finally:
        prom.close()


def test_a_real_prometheus_scrapes_generation_number_and_publishes(
    server: QasinoProcess, prometheus: Prometheus
) -> None:
    http = server.ports["http"]
    first = poll_until(
        lambda: prometheus.query('qasino_generation_number{job="qasino"}'),
        SCRAPE_TIMEOUT,
        "Prometheus to scrape qasino_generation_number",
    )
    poll_until(
        lambda: (prometheus.query("max_over_time(qasino_generation_number[1m])") or 0) > first,
        SCRAPE_TIMEOUT,
        "the generation number to move in Prometheus",
    )
    promql = 'sum(qasino_publishes_total{outcome="ok"})'
    start = poll_until(
        lambda: (v := prometheus.query(promql)) is not None and (v,),
        SCRAPE_TIMEOUT,
        "qasino_publishes_total in Prometheus",
    )[0]
    table = make_table("prom_t", [("a", "int")], [[1]])
    for i in range(3):
        assert_ok(http_publish(http, publish_request(f"prom{i}", table)))
    poll_until(
        lambda: (prometheus.query(promql) or 0) >= start + 3,
        SCRAPE_TIMEOUT,
        "qasino_publishes_total to move by 3 in Prometheus",
    )
    up = prometheus.query('up{job="qasino"}')
    assert up == 1

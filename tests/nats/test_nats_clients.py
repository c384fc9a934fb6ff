"""qasino_publish --nats and qasino_csvpublisher --nats against a real cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.nats.cluster import NatsCluster
from tests.nats.test_nats_servers import served
from tests.server_process import REPO_ROOT, QasinoProcess, poll_until, server_env

PUBLISH = "import sys; from qasino.cli import publish_main; sys.exit(publish_main(sys.argv[1:]))"
CSVPUB = "import sys; from qasino.cli import csvpublisher_main; sys.exit(csvpublisher_main(sys.argv[1:]))"


def run_publish(*args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", PUBLISH, *args],
        input=data,
        capture_output=True,
        cwd=REPO_ROOT,
        env=server_env(),
        timeout=60,
    )


def table_json(name: str, host: str, n: int) -> bytes:
    return json.dumps(
        {
            "tablename": name,
            "column_names": ["host", "n"],
            "column_types": ["text", "int"],
            "rows": [[host, n]],
        }
    ).encode()


def test_qasino_publish_through_nats_keeps_working_with_a_node_down(
    nats_server: Callable[..., QasinoProcess], cluster: NatsCluster
) -> None:
    s = nats_server("pa")
    cluster.kill(0)
    for i in range(3):
        done = run_publish(
            "--nats", cluster.url, "-I", f"pub{i}", "-P", data=table_json("np", f"pub{i}", i)
        )
        assert done.returncode == 0, done.stderr.decode()
        assert b"published table np" in done.stdout
    sql = "SELECT host FROM np ORDER BY host"
    poll_until(lambda: served(s, sql)[1] == [["pub0"], ["pub1"], ["pub2"]], 20, "np served")


def test_qasino_publish_with_nats_unreachable_fails_clearly(tmp_path: Path) -> None:
    from tests.server_process import free_port

    url = f"nats://127.0.0.1:{free_port()}"
    done = run_publish("--nats", url, "--timeout", "3", "-I", "x", data=table_json("t", "x", 1))
    assert done.returncode == 1
    assert f"NATS at {url}" in done.stderr.decode()


def test_csvpublisher_sends_on_gensig_from_nats(
    nats_server: Callable[..., QasinoProcess], cluster: NatsCluster, tmp_path: Path
) -> None:
    s = nats_server("ga")
    (tmp_path / "cpt.csv").write_text("1\ncpt\nhost,n\ntext,int\nHost,N\nagent,7\n")
    (tmp_path / "index").write_text("1\ncpt\n")
    log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115 - closed below
    agent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CSVPUB,
            "--nats",
            cluster.url,
            "-I",
            "agent",
            "-d",
            "0",
            "-i",
            str(tmp_path / "index"),
        ],
        cwd=REPO_ROOT,
        env=server_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        poll_until(lambda: served(s, "SELECT host, n FROM cpt")[1] == [["agent", "7"]], 20, "cpt")
        text = (tmp_path / "agent.log").read_text()
        assert "qasino.gensig" in text
    finally:
        agent.terminate()
        agent.wait(10)
        log.close()

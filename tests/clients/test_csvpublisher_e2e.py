"""qasino_csvpublisher against the real server, both as subprocesses on 127.0.0.1."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import pytest
from passlib.hash import ldap_sha1

from qasino.clients.transport import HttpTransport, ServerError, TransportError
from tests.server_process import QasinoProcess, free_port, new_server, server_env
from tests.server_process import poll_until as poll
from tests.tls_helpers import make_cert

AGENT_CODE = (
    "import sys; from qasino.cli import csvpublisher_main; "
    "sys.exit(csvpublisher_main(sys.argv[1:]))"
)
AGENT_ID = "agent_e2e"


class Proc:
    """An agent subprocess with its output in a log file."""

    def __init__(
        self, args: list[str], log_path: Path, cwd: Path, extra_env: Optional[dict[str, str]] = None
    ) -> None:
        env = server_env()
        env.pop("QASINO_CLIENT_USERNAME", None)
        env.pop("QASINO_CLIENT_PASSWORD", None)
        env.update(extra_env or {})
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(
            [sys.executable, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 10.0, after: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in the log after offset ``after``."""

        def check() -> Optional[re.Match[str]]:
            if self.popen.poll() is not None:
                pytest.fail(f"process exited ({self.popen.returncode}):\n{self.log()}")
            return re.compile(pattern).search(self.log(), after)

        match: re.Match[str] = poll(check, timeout, f"{pattern!r} in {self.log_path.name}")
        return match

    def terminate(self, timeout: float = 5.0) -> tuple[int, float]:
        """SIGTERM; return (exit code, seconds it took)."""
        start = time.monotonic()
        self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.log_path.name}: no exit {timeout}s after SIGTERM:\n{self.log()}")
        return code, time.monotonic() - start

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)
        self._log.close()


class Harness:
    """Starts a server and agents in a temp folder; kills them all at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[Proc] = []
        self.servers: list[QasinoProcess] = []

    def server(self, extra: Sequence[str] = ()) -> QasinoProcess:
        """A started server (``-g 1``), its db dir and views file in ``root``."""
        server = new_server(self.root, extra_args=extra)
        self.servers.append(server)
        return server.start()

    def agent(self, *flags: str, env: Optional[dict[str, str]] = None) -> Proc:
        log_path = self.root / f"agent{len(self.procs)}.log"
        proc = Proc(["-c", AGENT_CODE, *flags], log_path, self.root, env)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
        for server in self.servers:
            server.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


def query(http_port: int, sql: str) -> Optional[list[list[str]]]:
    """Rows of a query (cells as strings), or None while the server answers
    "no such table". Any other error reply, and a server that cannot be
    reached, fail the test: "absent" must mean the server said so."""
    transport = HttpTransport("127.0.0.1", http_port, timeout_s=3)
    try:
        reply = transport.request({"op": "query", "sql": sql})
    except ServerError as e:
        assert "no such table" in str(e), f"{sql}: {e}"
        return None
    except TransportError as e:
        raise AssertionError(f"{sql}: the server did not answer: {e}") from None
    finally:
        transport.close()
    rows: list[list[str]] = reply["table"]["rows"]
    return rows


def write_tree(root: Path) -> dict[str, Any]:
    """Two indexes (one via an index list), good, missing, broken and filtered tables."""
    data = root / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "a.csv").write_text(
        "1\ntbl_a\nhost,val\nstring,integer\nHost,Value\nh1,1\nh2,2\n"
    )
    (data / "tbl_b.csv").write_text("1\ntbl_b\nx\nreal\nX\n1.5\n")
    (data / "tbl_broken.csv").write_text("1\ntbl_broken\nx,y\nint,int\nX,Y\n1,2\n3,oops\n")
    (data / "tbl_skipped.csv").write_text("1\ntbl_skipped\nx\nint\nX\n1\n")
    index1 = data / "index.txt"
    index1.write_text("1\nsub/a.csv,tbl_a\ntbl_b\ntbl_missing\ntbl_broken\ntbl_skipped\n")
    other = root / "other"
    other.mkdir()
    (other / "c_file.csv").write_text("1\nwhatever\nn\nint\nN\n7\n8\n")
    (other / "index.txt").write_text("1\nc_file.csv,tbl_c\n")
    index_list = root / "indexes.txt"
    index_list.write_text(f"# more indexes\n\n{other / 'index.txt'}\n")
    table_list = root / "tables.txt"
    table_list.write_text("# whitelist\ntbl_b\n\ntbl_broken\ntbl_c\n")
    return {
        "index": str(index1),
        "index_list": str(index_list),
        "table_list": str(table_list),
        "missing": str(data / "tbl_missing.csv"),
    }


def agent_flags(ports: dict[str, int], *extra: str) -> list[str]:
    return [
        "-I",
        AGENT_ID,
        "-H",
        "127.0.0.1",
        "-p",
        str(ports["zmq"]),
        "-P",
        str(ports["pubsub"]),
        "--timeout",
        "2",
        *extra,
    ]


def test_publishes_index_after_generation_signal(harness: Harness) -> None:
    files = write_tree(harness.root)
    server = harness.server()
    ports = server.ports
    agent = harness.agent(
        *agent_flags(ports),
        "-i",
        files["index"],
        "-f",
        files["index_list"],
        "-T",
        "tbl_a",
        "-T",
        "tbl_missing",
        "-t",
        files["table_list"],
        "-d",
        "0",
        "-g",
        "30",
    )
    http = ports["http"]

    rows = poll(lambda: query(http, "SELECT host, val FROM tbl_a ORDER BY host"), 15, "tbl_a")
    assert rows == [["h1", "1"], ["h2", "2"]]
    assert poll(lambda: query(http, "SELECT x FROM tbl_b"), 5, "tbl_b") == [["1.5"]]
    # Named by the index, not by the file's tablename line; found through the index list.
    assert poll(lambda: query(http, "SELECT n FROM tbl_c ORDER BY n"), 5, "tbl_c") == [
        ["7"],
        ["8"],
    ]

    info = poll(
        lambda: query(
            http,
            "SELECT identity, nr_tables, nr_errors, update_epoch > 1000000000 "
            f"FROM qasino_csvpublisher_info WHERE identity = '{AGENT_ID}'",
        ),
        5,
        "qasino_csvpublisher_info",
    )
    assert info == [[AGENT_ID, "3", "2", "1"]]

    tables = poll(
        lambda: query(
            http,
            "SELECT tablename, nr_errors, error_message, nr_rows, filepath, identity, "
            "read_epoch > 1000000000, read_time_s >= 0 "
            "FROM qasino_csvpublisher_tables ORDER BY tablename",
        ),
        5,
        "qasino_csvpublisher_tables",
    )
    by_name = {row[0]: row for row in tables}
    assert sorted(by_name) == ["tbl_a", "tbl_b", "tbl_broken", "tbl_c", "tbl_missing"]
    for name in ("tbl_a", "tbl_b", "tbl_c"):
        assert by_name[name][1:3] == ["0", ""], by_name[name]
        assert by_name[name][5:] == [AGENT_ID, "1", "1"]
    assert by_name["tbl_a"][3:5] == ["2", files["index"].replace("index.txt", "sub/a.csv")]
    assert by_name["tbl_missing"][1] == "1"
    assert "No such file" in by_name["tbl_missing"][2]
    assert by_name["tbl_missing"][4] == files["missing"]
    assert by_name["tbl_broken"][1] == "1"
    assert "line 7" in by_name["tbl_broken"][2] and "oops" in by_name["tbl_broken"][2]

    # The whitelist kept tbl_skipped out, and the broken table was never sent.
    assert query(http, "SELECT * FROM tbl_skipped") is None
    assert query(http, "SELECT * FROM tbl_broken") is None
    assert "tbl_skipped" not in agent.log()

    code, took = agent.terminate()
    assert code == 0, agent.log()
    assert took < 2.0
    assert server.alive()


def test_server_restart_is_picked_up_without_restarting_the_agent(harness: Harness) -> None:
    files = write_tree(harness.root)
    server = harness.server()
    ports = dict(server.ports)
    agent = harness.agent(
        *agent_flags(ports), "-i", files["index"], "-T", "tbl_a", "-d", "0", "-g", "3"
    )
    sql = f"SELECT nr_tables FROM qasino_csvpublisher_info WHERE identity = '{AGENT_ID}'"
    assert poll(lambda: query(ports["http"], sql), 15, "first server gets the info") == [["1"]]

    code = server.stop()
    assert code == 0
    mark = len(agent.log())
    # No signal for -g seconds: the agent resubscribes (and keeps running).
    agent.wait_log("resubscribing", timeout=10, after=mark)
    assert agent.popen.poll() is None

    server.start(keep_ports=True)  # same ports, same data dir
    assert server.ports == ports
    assert poll(lambda: query(ports["http"], sql), 15, "restarted server gets the info") == [["1"]]
    rows = poll(lambda: query(ports["http"], "SELECT host FROM tbl_a ORDER BY host"), 5, "tbl_a")
    assert rows == [["h1"], ["h2"]]
    assert agent.popen.poll() is None

    code, took = agent.terminate()
    assert code == 0 and took < 2.0


def test_sigterm_while_waiting_for_a_signal(harness: Harness) -> None:
    files = write_tree(harness.root)
    nowhere = {"zmq": free_port(), "pubsub": free_port()}
    agent = harness.agent(*agent_flags(nowhere), "-i", files["index"])
    agent.wait_log("subscribing to generation signals")
    code, took = agent.terminate()
    assert code == 0 and took < 1.5, agent.log()


def test_sigterm_during_the_random_delay(harness: Harness) -> None:
    files = write_tree(harness.root)
    ports = harness.server().ports
    agent = harness.agent(*agent_flags(ports), "-i", files["index"], "-d", "60")
    match = agent.wait_log(r"sending in ([0-9.]+)s", timeout=15)
    code, took = agent.terminate()
    assert code == 0, agent.log()
    # Interrupted the wait (unless the random delay happened to be tiny).
    assert took < 1.5 or float(match.group(1)) < took


def test_sigterm_during_a_send_to_a_silent_server(harness: Harness) -> None:
    files = write_tree(harness.root)
    nowhere = {"zmq": free_port(), "pubsub": free_port()}
    flags = agent_flags(nowhere) + ["--timeout", "30", "--log-level", "debug"]
    agent = harness.agent(*flags, "-i", files["index"], "-x", "60")
    agent.wait_log("sending table tbl_a")
    code, took = agent.terminate()
    assert code == 0 and took < 1.5, agent.log()


def test_fixed_interval_survives_a_server_outage(harness: Harness) -> None:
    files = write_tree(harness.root)
    server = harness.server()
    ports = dict(server.ports)
    flags = agent_flags(ports) + ["--timeout", "1"]
    agent = harness.agent(*flags, "-i", files["index"], "-T", "tbl_a", "-x", "1")
    sql = "SELECT host FROM tbl_a ORDER BY host"
    assert poll(lambda: query(ports["http"], sql), 15, "tbl_a") == [["h1"], ["h2"]]
    assert "subscribing" not in agent.log()

    code = server.stop()
    assert code == 0
    mark = len(agent.log())
    # Sends fail within --timeout and are counted; the agent goes on.
    agent.wait_log(r"sending table tbl_a: no reply .* within 1s", timeout=10, after=mark)
    agent.wait_log(r"round done: 0 tables sent, 1 errors", timeout=10, after=mark)

    server.start(keep_ports=True)
    assert poll(lambda: query(ports["http"], sql), 15, "tbl_a after the restart") == [
        ["h1"],
        ["h2"],
    ]
    code, took = agent.terminate()
    assert code == 0 and took < 2.0


def test_https_with_basic_auth(harness: Harness) -> None:
    files = write_tree(harness.root)
    cert, key = make_cert(harness.root)
    htpasswd = harness.root / "htpasswd"
    htpasswd.write_text(f"pub:{ldap_sha1.hash('pub-pw')}\n")
    tls = ["--https-port", "0", "--tls-cert", str(cert), "--tls-key", str(key)]
    ports = harness.server(extra=[*tls, "--htpasswd-file", str(htpasswd)]).ports
    https = ["-s", "-k", "-p", str(ports["https"]), "-P", str(ports["pubsub"])]
    common = ["-H", "127.0.0.1", "-i", files["index"], "-T", "tbl_a", "-d", "0"]

    # Credentials from the environment.
    good = harness.agent(
        "-I",
        "https_agent",
        *https,
        *common,
        env={"QASINO_CLIENT_USERNAME": "pub", "QASINO_CLIENT_PASSWORD": "pub-pw"},
    )
    # A wrong password: every send is refused and counted, the agent goes on.
    bad = harness.agent("-I", "bad_agent", *https, *common, "-u", "pub", "-w", "wrong")

    sql = "SELECT identity, nr_tables, nr_errors FROM qasino_csvpublisher_info"
    assert poll(lambda: query(ports["http"], sql), 15, "info over HTTPS") == [
        ["https_agent", "1", "0"]
    ]
    assert query(ports["http"], "SELECT host FROM tbl_a ORDER BY host") == [["h1"], ["h2"]]
    bad.wait_log("authentication failed")
    assert "https://127.0.0.1:" in good.log()
    for agent in (good, bad):
        code, took = agent.terminate()
        assert code == 0 and took < 2.0, agent.log()

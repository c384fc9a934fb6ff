"""Log levels, the JSON format, and where the server's log goes."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure

from qasino.clients.csvpublisher import build_parser as csvpublisher_parser
from qasino.clients.publish import build_parser as publish_parser
from qasino.clients.sqlclient import build_parser as sqlclient_parser
from qasino.logs import LEVELS, event_as_json, level_name
from qasino.server_main import build_parser as server_parser
from tests.server_process import (
    QasinoProcess,
    poll_until,
    server_env,
    workdir_flags,
)

PARSERS = {
    "qasino_server": server_parser,
    "qasinosql": sqlclient_parser,
    "qasino_publish": publish_parser,
    "qasino_csvpublisher": csvpublisher_parser,
}


@pytest.mark.parametrize("command", sorted(PARSERS))
@pytest.mark.parametrize("given", ["debug", "INFO", "warning", "warn", "error", "critical"])
def test_every_command_takes_the_same_level_spellings(command: str, given: str) -> None:
    parser = PARSERS[command]()
    extra = ["-i", "x.idx"] if command == "qasino_csvpublisher" else []
    args = parser.parse_args([*extra, "--log-level", given])
    assert args.log_level in LEVELS
    assert args.log_level == {"warn": "warning"}.get(given.lower(), given.lower())


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="unknown log level 'loud'"):
        level_name("loud")


def test_a_json_line_has_time_level_namespace_message_and_the_fields() -> None:
    event = {
        "log_format": "query {query_id} took {elapsed:.3f}s",
        "log_level": LogLevel.warn,
        "log_namespace": "qasino.test",
        "log_time": 1700000000.25,
        "query_id": 7,
        "elapsed": 0.5,
        "what": object(),
    }
    record = json.loads(event_as_json(event))
    assert record["time"] == "2023-11-14T22:13:20.250+00:00"
    assert record["level"] == "warning"
    assert record["namespace"] == "qasino.test"
    assert record["message"] == formatEvent(event) == "query 7 took 0.500s"
    assert record["query_id"] == 7 and record["elapsed"] == 0.5
    assert record["what"].startswith("<object object")


def test_a_failure_carries_its_traceback() -> None:
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        failure = Failure()
    event = {
        "log_format": "it broke",
        "log_level": LogLevel.critical,
        "log_namespace": "x",
        "log_time": 0.0,
        "log_failure": failure,
    }
    record = json.loads(event_as_json(event))
    assert "ZeroDivisionError" in record["traceback"]


def test_the_server_logs_to_stderr_by_default_and_json_to_a_file(tmp_path: Path) -> None:
    """Default: text on stderr, nothing on stdout. --log-format json --log-file:
    every line of the file is a JSON object, stderr stays empty."""
    flags = workdir_flags(tmp_path / "plain", generation_s=600)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from qasino.cli import server_main; server_main()", *flags],
        env=server_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "is being served" in line:
                break
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert out == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    work = tmp_path / "json"
    server = QasinoProcess(work, workdir_flags(work, 600, ["--log-format", "json"]))
    try:
        server.start()
        assert server.stop() == 0
        assert server.stderr_text() == ""
        lines = server.log_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert {"time", "level", "namespace", "message"} <= set(records[0])
        served = [r for r in records if "is being served" in r["message"]]
        assert served and served[0]["namespace"] == "qasino.engine"
        assert isinstance(served[0]["number"], int)
        poll_until(lambda: records[-1]["message"] == "qasino_server stopped", 1, "last line")
    finally:
        server.close()

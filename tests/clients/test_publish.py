"""``qasino_publish`` against the real server (PROTOCOL.md "Client command
lines", "CSV publish format", "Tables, identities and merging"; issue 4,
items 2 and 4).

The server harness lives in ``test_sqlclient.py``; this module starts its own
server. Tables are checked with in-process ZeroMQ queries after the next
generation signal.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clients.test_sqlclient import (
    HOST,
    PUBLISH_CODE,
    QasinoServer,
    child_env,
    free_port,
    run_client,
    running_server,
)

IDENTITY = "publish_test_host"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QasinoServer]:
    with running_server(tmp_path_factory.mktemp("publish_server")) as srv:
        yield srv


def json_table(tablename: str) -> dict[str, Any]:
    """The inner table object qasino_publish reads in JSON mode."""
    return {
        "tablename": tablename,
        "column_names": ["host", "hits", "ratio"],
        "column_types": ["text", "integer", "real"],
        "rows": [["web1", 10, 0.5], ["web2", None, None]],
    }


JSON_ROWS = [["web1", "10", "0.5"], ["web2", "", ""]]


def csv_table(tablename: str) -> str:
    """The CSV publish format: version line, name, columns, types, descriptions, rows."""
    return (
        "1\n"
        f"{tablename}\n"
        "ipaddr,datacenter,stat1\n"
        "ip,string,integer\n"
        "IP Address,Datacenter,Num Frobs\n"
        "1.2.3.4,BOS,123\n"
        '5.6.7.8,"NY, NY",\n'
    )


CSV_ROWS = [["1.2.3.4", "BOS", "123"], ["5.6.7.8", "NY, NY", ""]]


def transport_args(server: QasinoServer, transport: str) -> list[str]:
    if transport == "http":
        return ["-t", "-p", str(server.ports["http"])]
    return ["-z", "-p", str(server.ports["zmq"])]


def where(server: QasinoServer, transport: str) -> str:
    if transport == "http":
        return f"http://{HOST}:{server.ports['http']}/request"
    return f"tcp://{HOST}:{server.ports['zmq']}"


def publish(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return run_client(PUBLISH_CODE, ["-H", HOST, "-I", IDENTITY, *args], stdin=stdin)


def select_all(server: QasinoServer, tablename: str, order_by: str) -> list[list[str]]:
    return server.rows(f"SELECT * FROM {tablename} ORDER BY {order_by};")


# --------------------------------------------------------------------------
# Both formats, file and stdin, over HTTP and ZeroMQ


@pytest.mark.parametrize("source", ["file", "stdin"])
@pytest.mark.parametrize("transport", ["http", "zmq"])
def test_json_table_is_published_and_queryable_after_next_generation(
    server: QasinoServer, tmp_path: Path, transport: str, source: str
) -> None:
    tablename = f"pub_json_{transport}_{source}"
    data = json.dumps(json_table(tablename))
    if source == "file":
        path = tmp_path / "table.json"
        path.write_text(data)
        result = publish(*transport_args(server, transport), "-f", str(path))
    else:
        result = publish(*transport_args(server, transport), stdin=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"published table {tablename} (2 rows) as {IDENTITY} to {where(server, transport)}\n"
    )
    server.next_generation()
    assert select_all(server, tablename, "host") == JSON_ROWS


@pytest.mark.parametrize("source", ["file", "stdin"])
@pytest.mark.parametrize("transport", ["http", "zmq"])
def test_csv_table_is_published_and_queryable_after_next_generation(
    server: QasinoServer, tmp_path: Path, transport: str, source: str
) -> None:
    tablename = f"pub_csv_{transport}_{source}"
    data = csv_table(tablename)
    if source == "file":
        path = tmp_path / "table.csv"
        path.write_text(data)
        result = publish(*transport_args(server, transport), "-d", "csv", "-f", str(path))
    else:
        result = publish(*transport_args(server, transport), "-d", "csv", stdin=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"published table {tablename} (2 rows)")
    server.next_generation()
    assert select_all(server, tablename, "ipaddr") == CSV_ROWS
    described = server.rows(f"DESC {tablename};")
    assert [r[0] for r in described] == ["ipaddr", "datacenter", "stat1"]
    connections = server.rows("SELECT identity FROM qasino_server_connections;")
    assert [IDENTITY] in connections


# --------------------------------------------------------------------------
# Options


def test_persist_table_survives_two_more_generations_while_a_plain_one_disappears(
    server: QasinoServer,
) -> None:
    kept = publish(*transport_args(server, "zmq"), "-P", stdin=json.dumps(json_table("pub_kept")))
    assert kept.returncode == 0, kept.stderr
    assert "persist" in kept.stdout
    plain = publish(*transport_args(server, "zmq"), stdin=json.dumps(json_table("pub_plain")))
    assert plain.returncode == 0, plain.stderr
    server.next_generation()
    assert select_all(server, "pub_kept", "host") == JSON_ROWS
    assert select_all(server, "pub_plain", "host") == JSON_ROWS
    server.next_generation()
    server.next_generation()
    assert select_all(server, "pub_kept", "host") == JSON_ROWS
    gone = server.query("SELECT * FROM pub_plain;")
    assert gone["response_op"] == "error", gone
    assert "no such table" in gone["error_message"]


def test_static_table_is_listed_with_static_1_in_show_tables(server: QasinoServer) -> None:
    result = publish(
        *transport_args(server, "http"), "-S", "-d", "csv", stdin=csv_table("pub_static")
    )
    assert result.returncode == 0, result.stderr
    assert "static" in result.stdout
    server.next_generation()
    reply = server.query("SHOW tables;")
    assert reply["response_op"] == "result_table", reply
    names = reply["table"]["column_names"]
    listed = {row[names.index("tablename")]: row for row in reply["table"]["rows"]}
    assert "pub_static" in listed, sorted(listed)
    assert listed["pub_static"][names.index("static")] == "1"
    assert listed["pub_static"][names.index("nr_rows")] == "2"
    assert select_all(server, "pub_static", "ipaddr") == CSV_ROWS


# --------------------------------------------------------------------------
# Refusals and failures


def test_second_publish_by_same_identity_in_one_generation_fails_with_server_message(
    server: QasinoServer,
) -> None:
    tablename = "pub_twice"
    table = json_table(tablename)
    # The client is started first (its imports take a while) and blocks on
    # stdin; the first copy goes in right after a generation starts, then the
    # client gets its input and sends the second copy within the same
    # generation. Should a snapshot still fall in between, try again.
    for _attempt in range(3):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                PUBLISH_CODE,
                "-H",
                HOST,
                "-I",
                IDENTITY,
                *transport_args(server, "zmq"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        try:
            server.next_generation()
            first = server.rpc({"op": "add_table_data", "identity": IDENTITY, "table": table})
            assert first["response_op"] == "ok", first
            out, err = proc.communicate(json.dumps(table), timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            break
    assert proc.returncode != 0, "the second publish in one generation was accepted"
    assert (
        f"table {tablename} was already published by identity {IDENTITY} in this generation" in err
    )
    assert out == ""
    server.next_generation()
    assert select_all(server, tablename, "host") == JSON_ROWS  # only the first copy


def test_locally_invalid_table_fails_with_invalid_input_format(server: QasinoServer) -> None:
    table = json_table("pub_bad_type")
    table["column_types"] = ["text", "bogus", "real"]
    result = publish(*transport_args(server, "zmq"), stdin=json.dumps(table))
    assert result.returncode != 0
    assert "Invalid input format" in result.stderr
    assert "bogus" in result.stderr
    assert result.stdout == ""


def test_broken_csv_fails_with_invalid_input_format_naming_the_line(
    server: QasinoServer,
) -> None:
    data = csv_table("pub_bad_csv") + "9.9.9.9,BOS,not_a_number\n"
    result = publish(*transport_args(server, "http"), "-d", "csv", stdin=data)
    assert result.returncode != 0
    assert "Invalid input format" in result.stderr
    assert "line 8" in result.stderr
    assert result.stdout == ""


def test_missing_input_file_fails_nonzero_with_message(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    result = publish("-t", "-p", str(free_port()), "-f", str(missing))
    assert result.returncode != 0
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_default_transport_is_https_and_a_closed_port_fails_clearly() -> None:
    port = free_port()
    started = time.monotonic()
    result = publish("-p", str(port), "--timeout", "1", stdin=json.dumps(json_table("pub_https")))
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert elapsed < 5, f"took {elapsed:.1f}s"
    assert f"https://{HOST}:{port}/request" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_unreachable_zeromq_server_fails_nonzero_within_seconds() -> None:
    port = free_port()
    started = time.monotonic()
    result = publish(
        "-z", "-p", str(port), "--timeout", "1", stdin=json.dumps(json_table("pub_nozmq"))
    )
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert elapsed < 5, f"took {elapsed:.1f}s"
    assert f"tcp://{HOST}:{port}" in result.stderr
    assert "Traceback" not in result.stderr

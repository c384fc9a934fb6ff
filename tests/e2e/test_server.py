"""qasino_server end to end: the real daemon over HTTP, ZeroMQ and the telnet
line protocol, checked against PROTOCOL.md.

Most tests share one server with 1 s generations (distinct table names per
test); ``slow_server`` never turns its generation during the module, for
tests that need two requests to land in the same generation.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import pytest
import zmq

from tests.e2e.conftest import (
    GENSIG_PREFIX,
    HOST,
    IDENTITY,
    ZMQ_CONTEXT,
    LineClient,
    QasinoProcess,
    assert_ok,
    base_flags,
    error_of,
    http_publish,
    http_query,
    http_request,
    line_query,
    make_table,
    publish_request,
    request_target,
    rows_of,
    run_server_to_exit,
    zmq_call,
    zmq_request,
)

# ---------------------------------------------------------------- the merged table

MERGED = "e2e_merged"
MERGED_SQL = f"SELECT host, n, note FROM {MERGED} ORDER BY n"
MERGED_ROWS = [["alpha", "7", ""], ["b", "12345", "x"]]
MERGED_SHAPE = {
    "response_op": "result_table",
    "identity": IDENTITY,
    "table": {"column_names": ["host", "n", "note"], "rows": MERGED_ROWS},
    "max_widths": {"0": 5, "1": 5, "2": 4},
}
# PROTOCOL.md "Text rendering": right-justified to the widest of name and
# cells, two spaces between columns, '=' rule, then the row count.
MERGED_TEXT = (
    " host      n  note\n"
    "=====  =====  ====\n"
    "alpha      7      \n"
    "    b  12345     x\n"
    "2 rows returned\n"
)


@pytest.fixture(scope="module")
def merged(server: QasinoProcess) -> str:
    """One table published by two identities (one over HTTP, one over
    ZeroMQ; host-a does not send the 'note' column), persisted so every
    later snapshot has both."""
    a = make_table(MERGED, [("host", "text"), ("n", "integer")], [["alpha", 7]])
    b = make_table(
        MERGED, [("host", "string"), ("n", "int"), ("note", "varchar")], [["b", 12345, "x"]]
    )
    assert_ok(http_publish(server.ports["http"], publish_request("host-a", a, persist=1)))
    assert_ok(zmq_call(server.ports["zmq"], publish_request("host-b", b, persist=1)))
    server.wait_generation()
    return MERGED


def test_two_identities_are_merged_and_returned_by_http_get_as_json(
    server: QasinoProcess, merged: str
) -> None:
    assert http_query(server.ports["http"], MERGED_SQL) == MERGED_SHAPE


def test_http_get_format_text_renders_the_protocol_text_layout(
    server: QasinoProcess, merged: str
) -> None:
    assert http_query(server.ports["http"], MERGED_SQL, text=True) == MERGED_TEXT


def test_http_post_query_returns_the_result_shape(server: QasinoProcess, merged: str) -> None:
    assert http_query(server.ports["http"], MERGED_SQL, method="POST") == MERGED_SHAPE


def test_zmq_query_returns_the_result_shape(server: QasinoProcess, merged: str) -> None:
    assert zmq_call(server.ports["zmq"], {"op": "query", "sql": MERGED_SQL}) == MERGED_SHAPE


def test_query_with_zero_rows_still_returns_its_column_names(
    server: QasinoProcess, merged: str
) -> None:
    reply = http_query(server.ports["http"], f"SELECT host, n FROM {MERGED} WHERE n < 0")
    assert reply["table"] == {"column_names": ["host", "n"], "rows": []}


def test_line_protocol_runs_a_statement_spread_over_several_lines(
    server: QasinoProcess, merged: str
) -> None:
    with LineClient(server.ports["line"]) as client:
        client.send(f"SELECT host, n, note\r\n  FROM {MERGED}\r\n")
        client.send("  ORDER BY n;\r\n")
        assert client.read_answers(1) == MERGED_TEXT


def test_line_protocol_answers_an_error_line_and_keeps_the_connection(
    server: QasinoProcess, merged: str
) -> None:
    with LineClient(server.ports["line"]) as client:
        client.send(f"SELECT * FROM e2e_no_such_table;\nSELECT count(*) AS c FROM {MERGED};\n")
        text = client.read_answers(2)
    first, rest = text.split("\n", 1)
    assert first.startswith("SQL error: ")
    assert "e2e_no_such_table" in first
    assert rest == "c\n=\n2\n1 rows returned\n"


@pytest.mark.parametrize("goodbye", ["quit;", "exit;", "LOGOUT ;", "\x04", "\x03"])
def test_line_protocol_goodbye_answers_bye_and_closes_the_connection(
    server: QasinoProcess, goodbye: str
) -> None:
    with LineClient(server.ports["line"]) as client:
        client.send("SELECT 1 AS one;\r\n")
        assert client.read_answers(1) == "one\n===\n  1\n1 rows returned\n"
        client.send(f"{goodbye}\r\n")
        assert client.read_until_closed() == "Bye!\n"
        assert client.closed_by_server


def test_line_protocol_answers_statements_sent_together_with_quit_before_bye(
    server: QasinoProcess,
) -> None:
    with LineClient(server.ports["line"]) as client:
        client.send("SELECT 1 AS one;\r\nquit;\r\n")
        assert client.read_until_closed() == "one\n===\n  1\n1 rows returned\nBye!\n"


def test_get_table_list_over_http_is_one_object_with_tables(
    server: QasinoProcess, merged: str
) -> None:
    reply = http_request(server.ports["http"], "POST", request_target(op="get_table_list"), b"{}")
    body = reply.json()
    assert set(body) == {"response_op", "identity", "tables"}
    assert body["response_op"] == "tables_list"
    assert body["identity"] == IDENTITY
    entry = body["tables"][MERGED]
    assert set(entry) == {"nr_rows", "updates", "last_update_epoch"}
    assert entry["nr_rows"] == 2


def test_get_table_list_over_zmq_is_two_frames_meta_then_tables(
    server: QasinoProcess, merged: str
) -> None:
    frames = zmq_request(server.ports["zmq"], {"op": "get_table_list"})
    assert len(frames) == 2
    assert json.loads(frames[0]) == {"response_op": "tables_list", "identity": IDENTITY}
    tables = json.loads(frames[1])
    assert tables[MERGED]["nr_rows"] == 2
    assert set(tables[MERGED]) == {"nr_rows", "updates", "last_update_epoch"}


# ---------------------------------------------------------------- generations


def served_rows(server: QasinoProcess, table: str) -> tuple[int, list[list[str]]]:
    """(generation number of the snapshot that answered, the table's rows)."""
    reply = http_query(
        server.ports["http"],
        f"SELECT (SELECT generation_number FROM qasino_server_info) AS g, * FROM {table}"
        " ORDER BY 2",
    )
    rows = rows_of(reply)
    assert rows, reply
    return int(rows[0][0]), [row[1:] for row in rows]


def assert_not_served(server: QasinoProcess, table: str) -> None:
    message = error_of(http_query(server.ports["http"], f"SELECT * FROM {table}"))
    assert "no such table" in message.lower() and table in message


def test_unpersisted_table_is_served_in_the_next_snapshot_and_gone_in_the_one_after(
    server: QasinoProcess,
) -> None:
    table = make_table("e2e_transient", [("v", "integer")], [[1], [2]])
    assert_ok(http_publish(server.ports["http"], publish_request("host-a", table)))
    first = server.wait_generation()
    # The signal names the generation that starts filling; the snapshot
    # served from then on is the one before it.
    served, rows = served_rows(server, "e2e_transient")
    assert rows == [["1"], ["2"]] and served < first["generation_number"]
    server.wait_generation(after=first["generation_number"])
    assert_not_served(server, "e2e_transient")


def test_persisted_table_is_carried_forward_until_republished_without_persist(
    server: QasinoProcess,
) -> None:
    port = server.ports["http"]
    table = make_table("e2e_persisted", [("v", "integer")], [[1]])
    assert_ok(http_publish(port, publish_request("host-a", table, persist=1)))
    generation = server.wait_generation()["generation_number"]
    served, rows = served_rows(server, "e2e_persisted")
    assert served < generation and rows == [["1"]]
    for _ in range(2):  # still there two generations later
        before, generation = (
            generation,
            server.wait_generation(after=generation)["generation_number"],
        )
        served, rows = served_rows(server, "e2e_persisted")
        assert served >= before and rows == [["1"]]
    # A publish without persist replaces the carried copy, then is not carried.
    table["rows"] = [[2]]
    assert_ok(http_publish(port, publish_request("host-a", table)))
    generation = server.wait_generation()["generation_number"]
    served, rows = served_rows(server, "e2e_persisted")
    assert served < generation and rows == [["2"]]
    server.wait_generation(after=generation)
    assert_not_served(server, "e2e_persisted")


def test_name_value_update_via_get_upserts_one_persisted_row_per_identity(
    server: QasinoProcess,
) -> None:
    port = server.ports["http"]
    for name, value, identity in [
        ("e2e_nv.cpu", "42", "host-a"),
        ("e2e_nv.mem", "7.5", "host-a"),
        ("e2e_nv.cpu", "3", "host-b"),
        ("e2e_nv.cpu", "43", "host-a"),
    ]:
        target = request_target(op="name_value_update", name=name, value=value, identity=identity)
        assert_ok(http_request(port, "GET", target).json())
    generation = server.wait_generation()["generation_number"]
    sql = "SELECT identity, cpu, mem FROM e2e_nv ORDER BY identity"
    expected = [["host-a", "43", "7.5"], ["host-b", "3", ""]]
    assert rows_of(http_query(port, sql)) == expected
    server.wait_generation(after=generation)
    assert rows_of(http_query(port, sql)) == expected


def test_update_with_keycols_upserts_and_without_keycols_keys_on_all_columns(
    slow_server: QasinoProcess,
) -> None:
    port = slow_server.ports["http"]
    columns = [("id", "integer"), ("val", "text")]
    keyed = make_table("e2e_upsert", columns, [[1, "a"], [2, "b"]])
    assert_ok(http_publish(port, publish_request("host-a", keyed, update=1, keycols="id")))
    keyed["rows"] = [[2, "B"], [3, "c"]]
    assert_ok(http_publish(port, publish_request("host-a", keyed, update=1, keycols="id")))
    reply = http_query(port, "SELECT id, val FROM e2e_upsert ORDER BY id", use_write_db=True)
    assert rows_of(reply) == [["1", "a"], ["2", "B"], ["3", "c"]]

    every = make_table("e2e_upsert_all", columns, [[1, "a"]])
    assert_ok(http_publish(port, publish_request("host-a", every, update=1)))
    every["rows"] = [[1, "a"], [1, "b"]]
    assert_ok(http_publish(port, publish_request("host-a", every, update=1)))
    reply = http_query(port, "SELECT id, val FROM e2e_upsert_all ORDER BY val", use_write_db=True)
    assert rows_of(reply) == [["1", "a"], ["1", "b"]]


def test_second_publish_from_one_identity_in_one_generation_is_refused_and_ignored(
    slow_server: QasinoProcess,
) -> None:
    port = slow_server.ports["http"]
    table = make_table("e2e_dup", [("v", "integer")], [[1]])
    assert_ok(http_publish(port, publish_request("host-a", table)))
    table["rows"] = [[2]]
    message = error_of(http_publish(port, publish_request("host-a", table)))
    assert "already published" in message and "host-a" in message
    table["rows"] = [[3]]
    assert_ok(http_publish(port, publish_request("host-b", table)))
    reply = http_query(port, "SELECT v FROM e2e_dup ORDER BY v", use_write_db=True)
    assert rows_of(reply) == [["1"], ["3"]]


def test_use_write_db_over_zmq_sees_a_table_before_the_snapshot_does(
    slow_server: QasinoProcess,
) -> None:
    port = slow_server.ports["zmq"]
    table = make_table("e2e_writer", [("v", "integer"), ("s", "text")], [[1, "w"]])
    assert_ok(zmq_call(port, publish_request("host-a", table)))
    sql = "SELECT v, s FROM e2e_writer"
    assert rows_of(zmq_call(port, {"op": "query", "sql": sql, "use_write_db": True})) == [
        ["1", "w"]
    ]
    message = error_of(zmq_call(port, {"op": "query", "sql": sql}))
    assert "no such table" in message.lower()


# ---------------------------------------------------------------- CSV publish

CSV_HEADER = (
    "{options}\n"
    "{table}\n"
    "ipaddr,datacenter,stat1,stat2\n"
    "ip,string,integer,integer\n"
    "IP Address,Datacenter,Num Frobs,Num Foobs\n"
)


def post_csv(port: int, body: str) -> dict[str, Any]:
    reply = http_request(
        port,
        "POST",
        request_target(op="add_csv_table_data"),
        body.encode(),
        {"Content-Type": "text/csv"},
    )
    assert reply.status == 200, reply
    return reply.json()


def test_csv_publish_with_identity_in_the_options_line_is_served(server: QasinoProcess) -> None:
    port = server.ports["http"]
    body = CSV_HEADER.format(options="identity=csv-host,persist=1", table="e2e_csv")
    body += "1.2.3.4,BOS,123,456\n5.6.7.8,,7,\n"
    assert_ok(post_csv(port, body))
    server.wait_generation()
    reply = http_query(port, "SELECT ipaddr, datacenter, stat1, stat2 FROM e2e_csv ORDER BY 1")
    assert rows_of(reply) == [["1.2.3.4", "BOS", "123", "456"], ["5.6.7.8", "", "7", ""]]
    desc = rows_of(http_query(port, "DESC e2e_csv;"))
    assert [[name, type_.upper()] for name, type_ in desc] == [
        ["ipaddr", "TEXT"],
        ["datacenter", "TEXT"],
        ["stat1", "INTEGER"],
        ["stat2", "INTEGER"],
    ]


@pytest.mark.parametrize(
    ("tablename", "data", "line"),
    [
        ("e2e_csv_bad_cell", "1.2.3.4,BOS,1,2\n9.9.9.9,NYC,many,1\n5.5.5.5,LAX,3,4\n", 7),
        ("e2e_csv_bad_width", "1.2.3.4,BOS,1\n5.5.5.5,LAX,3,4\n", 6),
    ],
)
def test_csv_publish_with_a_bad_line_is_refused_naming_the_line_and_applies_nothing(
    server: QasinoProcess, tablename: str, data: str, line: int
) -> None:
    port = server.ports["http"]
    body = CSV_HEADER.format(options="identity=csv-host,persist=1", table=tablename) + data
    message = error_of(post_csv(port, body))
    assert message.startswith("Invalid input format: ")
    assert f"line {line}" in message
    assert "no such table" in error_of(
        http_query(port, f"SELECT * FROM {tablename}", use_write_db=True)
    )
    server.wait_generation()
    assert_not_served(server, tablename)


# ---------------------------------------------------------------- views


def replace_file(path: Path, text: str) -> None:
    """Write atomically, so the server never reads a half-written file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_views_file_is_reloaded_and_a_broken_file_keeps_the_previous_views(
    server: QasinoProcess,
) -> None:
    port = server.ports["http"]
    views = server.workdir / "views.conf"
    loaded = r"loaded \d+ views from"
    kept = r"not loaded, keeping the last good views"
    loads, refusals = server.count_log(loaded), server.count_log(kept)

    replace_file(
        views,
        "- viewname: e2e_view_one\n"
        '  view: "CREATE VIEW e2e_view_one AS SELECT generation_number AS g'
        ' FROM qasino_server_info"\n',
    )
    server.wait_log(loaded, count=loads + 1)
    server.wait_generation()
    assert len(rows_of(http_query(port, "SELECT g FROM e2e_view_one"))) == 1
    assert ["e2e_view_one", "1", ""] in rows_of(http_query(port, "SHOW views;"))

    replace_file(views, "- viewname: [e2e_view_two\n  view: {broken\n")
    server.wait_log(kept, count=refusals + 1)
    server.wait_generation()
    assert rows_of(http_query(port, "SHOW views;")) == [["e2e_view_one", "1", ""]]
    assert len(rows_of(http_query(port, "SELECT g FROM e2e_view_one"))) == 1
    assert server.count_log(loaded) == loads + 1


# ---------------------------------------------------------------- bad requests

BAD_TABLES = {
    "tablename with SQL": (
        make_table("e2e_x; DROP TABLE e2e_merged", [("v", "integer")], [[1]]),
        "e2e_x; DROP TABLE",
    ),
    "bad column name": (make_table("e2e_badcol", [("a-b", "integer")], [[1]]), "a-b"),
    "unknown column type": (make_table("e2e_badtype", [("v", "blob")], [[1]]), "blob"),
    "row with too few cells": (
        make_table("e2e_badrow", [("v", "integer"), ("w", "integer")], [[1, 2], [3]]),
        "rows[1]",
    ),
    "no table": (None, "table"),
}


def bad_publish(case: str) -> bytes:
    table, _ = BAD_TABLES[case]
    request: dict[str, Any] = {"op": "add_table_data", "identity": "host-a"}
    if table is not None:
        request["table"] = table
    return json.dumps(request).encode()


HTTP_BAD_REQUESTS: dict[str, tuple[str, str, bytes | None, Callable[[str], bool]]] = {
    "no op": ("GET", "/request", None, lambda m: m == "No op specified"),
    "empty op": ("GET", "/request?op=", None, lambda m: m == "No op specified"),
    "unknown op": (
        "GET",
        "/request?op=frobnicate",
        None,
        lambda m: m == "Unrecognized operation",
    ),
    "query without sql (GET)": (
        "GET",
        "/request?op=query",
        None,
        lambda m: m == "Must specify 'sql' param",
    ),
    "query without sql (POST)": (
        "POST",
        "/request?op=query",
        b"{}",
        lambda m: m == "Must specify 'sql' param",
    ),
    "query body not JSON": (
        "POST",
        "/request?op=query",
        b"{not json",
        lambda m: m.startswith("Could not parse POST body: "),
    ),
    "publish body not JSON": (
        "POST",
        "/request?op=add_table_data",
        b'{"op": "add_table_data", "table": [',
        lambda m: m.startswith("Could not parse POST body: "),
    ),
    **{
        f"add_table_data with {case}": (
            "POST",
            "/request?op=add_table_data",
            bad_publish(case),
            lambda m, s=BAD_TABLES[case][1]: m.startswith("Invalid input format: ") and s in m,
        )
        for case in BAD_TABLES
    },
}


@pytest.mark.parametrize("case", list(HTTP_BAD_REQUESTS))
def test_http_bad_request_gets_an_error_reply_and_the_server_keeps_answering(
    server: QasinoProcess, case: str
) -> None:
    method, target, body, expected = HTTP_BAD_REQUESTS[case]
    reply = http_request(server.ports["http"], method, target, body)
    message = error_of(reply.json())
    assert expected(message), message
    assert rows_of(http_query(server.ports["http"], "SELECT 1 AS one")) == [["1"]]


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize("framing", ["content-length", "expect-100-continue", "chunked"])
def test_body_over_max_body_bytes_is_refused_with_413_and_the_server_keeps_answering(
    slow_server: QasinoProcess, framing: str
) -> None:
    port = slow_server.ports["http"]
    head = f"POST /request?op=add_table_data HTTP/1.1\r\nHost: {HOST}\r\n"
    with socket.create_connection((HOST, port), timeout=10) as sock:
        if framing == "content-length":
            # Refused on the header alone: the body is never sent.
            sock.sendall(f"{head}Content-Length: 5000\r\n\r\n".encode())
        elif framing == "expect-100-continue":
            # What curl does: the body waits for "100 Continue", which must not come.
            sock.sendall(f"{head}Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n".encode())
        else:
            chunk = b"x" * 600
            sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
            sock.sendall((b"258\r\n" + chunk + b"\r\n") * 2 + b"0\r\n\r\n")
        response = read_until_closed(sock)
    assert response.startswith(b"HTTP/1.1 413 "), response[:200]
    assert b"too large" in response.lower()
    # A body under the limit is still accepted, and queries are answered.
    table = make_table("e2e_small_body", [("v", "integer")], [[1]])
    assert_ok(http_publish(port, publish_request(f"host-{framing}", table)))
    assert rows_of(http_query(port, "SELECT 1 AS one")) == [["1"]]


ZMQ_BAD_REQUESTS: dict[str, tuple[Any, Callable[[str], bool]]] = {
    "not JSON": (b"{not json", lambda m: m.startswith("Failed to parse JSON message: ")),
    "empty frame": (b"", lambda m: m.startswith("Failed to parse JSON message")),
    "two frames": (
        [b'{"op": "query", "sql": "SELECT 1"}', b"extra"],
        lambda m: m.startswith("Failed to parse JSON message"),
    ),
    "JSON array": (
        b'[{"op": "query", "sql": "SELECT 1"}]',
        lambda m: m == "Request must be a JSON object",
    ),
    "JSON string": (b'"query"', lambda m: m == "Request must be a JSON object"),
    "no op": ({"sql": "SELECT 1"}, lambda m: m == "No op specified"),
    "unknown op": ({"op": "frobnicate"}, lambda m: m == "Unrecognized op 'frobnicate'"),
    "query without sql": ({"op": "query"}, lambda m: m == "Must specify 'sql' param"),
    "add_table_data with a bad table": (
        {"op": "add_table_data", "identity": "host-a", "table": {"tablename": "e2e_zmq_bad"}},
        lambda m: m.startswith("Invalid input format: "),
    ),
}


@pytest.mark.parametrize("case", list(ZMQ_BAD_REQUESTS))
def test_zmq_bad_request_gets_an_error_reply_and_zmq_keeps_working(
    server: QasinoProcess, case: str
) -> None:
    request, expected = ZMQ_BAD_REQUESTS[case]
    message = error_of(zmq_call(server.ports["zmq"], request))
    assert expected(message), message
    ok = zmq_call(server.ports["zmq"], {"op": "query", "sql": "SELECT 1 AS one"})
    assert rows_of(ok) == [["1"]]


# ---------------------------------------------------------------- refused statements


def run_on(server: QasinoProcess, transport: str, sql: str) -> str:
    """Run ``sql`` over ``transport``; return the error message it must get."""
    if transport == "http":
        return error_of(http_query(server.ports["http"], sql))
    if transport == "http-text":
        text = http_query(server.ports["http"], sql, text=True)
    elif transport == "zmq":
        return error_of(zmq_call(server.ports["zmq"], {"op": "query", "sql": sql}))
    else:
        text = line_query(server.ports["line"], sql + ";\n")
    assert text.startswith("SQL error: ") and text.endswith("\n"), text
    assert text.count("\n") == 1, text
    return text[len("SQL error: ") : -1]


@pytest.mark.parametrize("transport", ["http", "http-text", "zmq", "line"])
def test_delete_is_refused_over_every_transport_and_changes_nothing(
    server: QasinoProcess, merged: str, transport: str
) -> None:
    assert run_on(server, transport, f"DELETE FROM {MERGED}")
    assert http_query(server.ports["http"], MERGED_SQL) == MERGED_SHAPE


@pytest.mark.parametrize(
    "sql",
    [
        f"DROP TABLE {MERGED}",
        f"INSERT INTO {MERGED} (host, n) VALUES ('z', 1)",
        f"UPDATE {MERGED} SET n = 0",
        "CREATE TABLE e2e_created (a)",
        f"SELECT 1; DELETE FROM {MERGED}",
        "PRAGMA writable_schema = 1",
        "SELECT load_extension('libe2e_nothing')",
        f"WITH x AS (SELECT 1) DELETE FROM {MERGED}",
    ],
)
def test_statement_that_could_change_state_is_refused_over_zmq(
    server: QasinoProcess, merged: str, sql: str
) -> None:
    assert run_on(server, "zmq", sql)
    assert http_query(server.ports["http"], MERGED_SQL) == MERGED_SHAPE
    assert "no such table" in error_of(
        http_query(server.ports["http"], "SELECT * FROM e2e_created")
    )


def test_attach_is_refused_and_creates_no_file(
    server: QasinoProcess, merged: str, tmp_path: Path
) -> None:
    target = tmp_path / "attached.sqlite"
    assert run_on(server, "http", f"ATTACH DATABASE '{target}' AS e2e_att")
    assert not target.exists()


# ---------------------------------------------------------------- generation signal


def test_gensig_frame_is_the_tag_a_nul_and_the_generation_json(server: QasinoProcess) -> None:
    sock = ZMQ_CONTEXT.socket(zmq.SUB)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 10_000)
        sock.setsockopt(zmq.SUBSCRIBE, b"GENSIG")
        sock.connect(f"tcp://{HOST}:{server.ports['pubsub']}")
        frames = [sock.recv_multipart(), sock.recv_multipart()]
    finally:
        sock.close(linger=0)
    messages = []
    for parts in frames:
        assert len(parts) == 1, parts
        frame = parts[0]
        assert frame.startswith(GENSIG_PREFIX), frame
        message = json.loads(frame[len(GENSIG_PREFIX) :].decode("utf-8"))
        assert set(message) == {
            "op",
            "identity",
            "generation_number",
            "generation_duration_s",
        }
        assert message["op"] == "generation_signal"
        assert message["identity"] == IDENTITY
        assert type(message["generation_number"]) is int
        assert message["generation_duration_s"] == 1
        messages.append(message)
    assert messages[1]["generation_number"] > messages[0]["generation_number"]


# ---------------------------------------------------------------- restart and shutdown


def test_static_table_survives_a_restart_and_a_persisted_one_does_not(
    start_server: Callable[..., QasinoProcess],
) -> None:
    proc = start_server("restart").start()
    port = proc.ports["http"]
    static = make_table("e2e_static", [("v", "integer"), ("s", "text")], [[1, "s"]])
    assert_ok(http_publish(port, publish_request("host-a", static, static=1)))
    static["rows"] = [[2, "t"], [3, "u"]]  # a static publish replaces the whole table
    assert_ok(http_publish(port, publish_request("host-a", static, static=1)))
    persisted = make_table("e2e_persist_lost", [("v", "integer")], [[1]])
    assert_ok(http_publish(port, publish_request("host-a", persisted, persist=1)))
    proc.wait_generation()
    assert rows_of(http_query(port, "SELECT * FROM e2e_persist_lost")) == [["1"]]
    expected = [["2", "t"], ["3", "u"]]
    assert rows_of(http_query(port, "SELECT v, s FROM e2e_static ORDER BY v")) == expected
    assert proc.stop() == 0

    proc.start(wait_first_generation=False)
    port = proc.ports["http"]
    assert rows_of(http_query(port, "SELECT v, s FROM e2e_static ORDER BY v")) == expected
    assert_not_served(proc, "e2e_persist_lost")
    show = rows_of(http_query(port, "SHOW tables LIKE 'e2e_static';"))
    assert len(show) == 1 and show[0][0] == "e2e_static" and show[0][4] == "1"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_server_with_exit_0_within_seconds(
    start_server: Callable[..., QasinoProcess], sig: signal.Signals
) -> None:
    proc = start_server().start()
    proc.wait_generation()
    with LineClient(proc.ports["line"]) as idle_client:
        assert proc.stop(sig, timeout=5) == 0
        assert idle_client.read_until_closed() == ""
    assert "qasino_server stopped" in proc.log_text()
    assert proc.stderr_text() == ""


# ---------------------------------------------------------------- startup errors


LISTENERS = ["http", "line", "zmq", "pubsub"]
# A server that cannot start should say so and exit at once; a few seconds
# is generous (it only imports and tries to bind).
STARTUP_FAILURE_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def port_in_use_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[int, Optional[int], str]]:
    """For each listener, a server started with that port already taken by a
    socket of ours; all run at once. listener -> (port, exit code or None if
    it did not exit in time, stderr)."""
    runs: dict[str, tuple[int, QasinoProcess]] = {}
    taken: list[socket.socket] = []
    try:
        for listener in LISTENERS:
            sock = socket.socket()
            taken.append(sock)
            sock.bind((HOST, 0))
            sock.listen()
            port = sock.getsockname()[1]
            workdir = tmp_path_factory.mktemp(f"port_in_use_{listener}")
            (workdir / "views.conf").write_text("[]\n")
            flags = base_flags(workdir / "db", workdir / "views.conf", ports={listener: port})
            proc = QasinoProcess(workdir, flags)
            runs[listener] = (port, proc)
            proc.launch()
        deadline = time.monotonic() + STARTUP_FAILURE_TIMEOUT
        results: dict[str, tuple[int, Optional[int], str]] = {}
        for listener, (port, proc) in runs.items():
            assert proc.proc is not None
            try:
                code: Optional[int] = proc.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                code = None
            proc.close()
            results[listener] = (port, code, proc.stderr_text())
        return results
    finally:
        for _, proc in runs.values():
            proc.close()
        for sock in taken:
            sock.close()


@pytest.mark.parametrize("listener", LISTENERS)
def test_port_already_in_use_is_reported_in_one_clear_line_on_stderr(
    port_in_use_runs: dict[str, tuple[int, Optional[int], str]], listener: str
) -> None:
    port, _, stderr = port_in_use_runs[listener]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("qasino_server: ")
    assert str(port) in lines[0]
    assert "in use" in lines[0].lower()


@pytest.mark.parametrize("listener", LISTENERS)
def test_port_already_in_use_exits_with_status_1(
    port_in_use_runs: dict[str, tuple[int, Optional[int], str]], listener: str
) -> None:
    _, code, _ = port_in_use_runs[listener]
    assert code == 1, f"exit code {code} (None: still running after {STARTUP_FAILURE_TIMEOUT}s)"


def test_unwritable_db_dir_exits_1_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "views.conf").write_text("[]\n")
    not_a_dir = tmp_path / "regular_file"
    not_a_dir.write_text("")
    db_dir = not_a_dir / "db"
    done = run_server_to_exit(base_flags(db_dir, tmp_path / "views.conf"), tmp_path)
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("qasino_server: ")
    assert str(db_dir) in lines[0]

"""The output shapes (``format=objects|arrays|ndjson|csv``) against the real
server over HTTP, HTTPS and ZeroMQ; the legacy ``json`` and ``text`` pinned
byte for byte; each shape fed to the tool a user would read it with (Python's
csv module, ``sqlite3 .import``, ``jq -c``, json with a type check per column).
The streaming tests (``stream=1``) are in test_streaming.py."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import (
    HOST,
    IDENTITY,
    QasinoProcess,
    http_request,
    make_table,
    new_server,
    poll_until,
    publish_request,
    request_target,
    zmq_call,
    zmq_request,
)
from tests.e2e.test_streaming import ChunkedReader, open_stream
from tests.tls_helpers import make_cert

# Values of every SQLite type, a NULL, and text that needs quoting in CSV.
TYPED_SQL = (
    "SELECT 1 AS i, 2.5 AS r, 'a,\"b\"' AS t, NULL AS n, x'00ff10' AS b "
    "UNION ALL SELECT -7, 1e300, 'line\nbreak', 4, NULL"
)
TYPED_COLUMNS = ["i", "r", "t", "n", "b"]
BLOB = base64.b64encode(b"\x00\xff\x10").decode()
TYPED_ROWS = [[1, 2.5, 'a,"b"', None, BLOB], [-7, 1e300, "line\nbreak", 4, None]]

# The legacy shapes, exactly as the first release (and main) answer them.
LEGACY_SQL = (
    "SELECT 1 AS a, 'x,\"y' AS b, NULL AS c, 2.5 AS d, x'00ff' AS e "
    "UNION ALL SELECT 22, '', 3, 1e300, NULL"
)
LEGACY_JSON = (
    b'{"response_op":"result_table","identity":"testserver","table":{"column_names":'
    b'["a","b","c","d","e"],"rows":[["1","x,\\"y","","2.5","00ff"],["22","","3","1e+300",""]]},'
    b'"max_widths":{"0":2,"1":4,"2":1,"3":6,"4":4}}'
)
LEGACY_TEXT = (
    b" a     b  c       d     e\n"
    b"==  ====  =  ======  ====\n"
    b' 1  x,"y        2.5  00ff\n'
    b"22        3  1e+300      \n"
    b"2 rows returned\n"
)

HOSTS = make_table(
    "hosts",
    [("host", "text"), ("cpu", "int"), ("load", "real"), ("dc", "text")],
    [["alpha", 30, 0.5, "bos"], ["bravo", 5, 1.25, None], ["charlie", 12, 0.0, "nyc"]],
)


class Server:
    def __init__(self, proc: QasinoProcess, cert: Path) -> None:
        self.proc = proc
        self.http = proc.ports["http"]
        self.https = proc.ports["https"]
        self.zmq = proc.ports["zmq"]
        self.cert = cert

    def url(self, scheme: str = "http") -> str:
        port = self.https if scheme == "https" else self.http
        return f"{scheme}://{HOST}:{port}/request"

    def query(
        self, sql: str, fmt: str, method: str = "GET", scheme: str = "http", **extra: Any
    ) -> requests.Response:
        params = {"op": "query", "format": fmt, **extra}
        kwargs: dict[str, Any] = {"timeout": 10}
        if scheme == "https":
            kwargs["verify"] = str(self.cert)
        if method == "GET":
            return requests.get(self.url(scheme), params={**params, "sql": sql}, **kwargs)
        return requests.post(self.url(scheme), params=params, json={"sql": sql}, **kwargs)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """HTTP and HTTPS, 1 s generations, results cut at 50 rows, 1 s query limit;
    ``hosts`` published with persist (in every snapshot from the second on)."""
    workdir = tmp_path_factory.mktemp("shapes")
    cert, key = make_cert(workdir)
    extra = ["--https-port", "0", "--tls-cert", str(cert), "--tls-key", str(key)]
    extra += ["--max-result-rows", "50", "--query-timeout", "1"]
    proc = new_server(workdir, extra_args=extra)
    try:
        proc.start()
        srv = Server(proc, cert)
        reply = zmq_call(srv.zmq, publish_request("h1", HOSTS, persist=1))
        assert reply["response_op"] == "ok", reply
        poll_until(
            lambda: srv.query("SELECT count(*) FROM hosts", "arrays").status_code == 200,
            10,
            "hosts in the snapshot",
        )
        yield srv
    finally:
        proc.close()


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_objects_and_arrays_keep_sqlite_types_nulls_and_blobs(
    server: Server, scheme: str, method: str
) -> None:
    for fmt in ("objects", "arrays"):
        response = server.query(TYPED_SQL, fmt, method, scheme)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"] == "application/json"
        reply = response.json()
        assert list(reply) == [
            "ok",
            "generation_number",
            "columns",
            "rows",
            "truncated",
            "query_ms",
        ]
        assert reply["ok"] is True and reply["truncated"] is False
        assert reply["columns"] == TYPED_COLUMNS
        assert isinstance(reply["generation_number"], int)
        assert isinstance(reply["query_ms"], float) and 0 <= reply["query_ms"] < 1000
        if fmt == "arrays":
            assert reply["rows"] == TYPED_ROWS
        else:
            assert reply["rows"] == [dict(zip(TYPED_COLUMNS, row)) for row in TYPED_ROWS]


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_ndjson_is_one_typed_object_per_line(server: Server, scheme: str) -> None:
    response = server.query(TYPED_SQL, "ndjson", "POST", scheme)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    lines = response.content.split(b"\n")
    assert lines[-1] == b""  # every line ends in a newline
    assert [json.loads(line) for line in lines[:-1]] == [
        dict(zip(TYPED_COLUMNS, row)) for row in TYPED_ROWS
    ]
    streamed = server.query(TYPED_SQL, "ndjson", "GET", scheme, stream="1")
    assert streamed.headers["Transfer-Encoding"] == "chunked"
    assert streamed.content == response.content


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_csv_is_rfc4180_with_a_header_null_as_empty_and_blob_as_base64(
    server: Server, scheme: str
) -> None:
    response = server.query(TYPED_SQL, "csv", "GET", scheme)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert response.content == (
        b'i,r,t,n,b\r\n1,2.5,"a,""b""",,' + BLOB.encode() + b'\r\n-7,1e+300,"line\nbreak",4,\r\n'
    )


def test_generation_number_is_the_snapshot_that_answered(server: Server) -> None:
    sql = "SELECT generation_number FROM qasino_server_info"
    reply = server.query(sql, "arrays").json()
    assert reply["rows"] == [[reply["generation_number"]]]
    streamed = server.query(sql, "csv", stream="1")
    number = int(streamed.text.splitlines()[1])
    assert streamed.headers["X-Qasino-Generation"] == str(number)


def test_a_result_over_max_result_rows_is_cut_and_marked_truncated(server: Server) -> None:
    sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 80) SELECT x FROM c"
    for fmt in ("objects", "arrays"):
        reply = server.query(sql, fmt).json()
        assert reply["truncated"] is True and len(reply["rows"]) == 50
    whole = server.query(sql, "csv", stream="1")
    assert whole.status_code == 200 and whole.text.count("\r\n") == 81  # no cap when streamed


def test_zero_rows_keep_their_columns(server: Server) -> None:
    sql = "SELECT host, cpu FROM hosts WHERE cpu < 0"
    assert server.query(sql, "arrays").json()["rows"] == []
    assert server.query(sql, "arrays").json()["columns"] == ["host", "cpu"]
    assert server.query(sql, "ndjson").content == b""
    assert server.query(sql, "csv").content == b"host,cpu\r\n"


# ---------------------------------------------------------------- errors

ERRORS = {
    "bad sql": ("SELECT nope FROM hosts", "no such column: nope"),
    "refused": ("DELETE FROM hosts", "Only SELECT statements (and SHOW/DESC) are allowed"),
    "time limit": (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
        "Query exceeded the time limit of 1 seconds",
    ),
}


# Every shape with every error, but the slow time limit once per kind of shape.
ERROR_CASES = [
    (fmt, case)
    for fmt in ("objects", "arrays", "ndjson", "csv")
    for case in sorted(ERRORS)
    if case != "time limit" or fmt in ("arrays", "csv")
]


@pytest.mark.parametrize(("fmt", "case"), ERROR_CASES)
def test_an_error_is_400_with_ok_false_and_the_message(server: Server, fmt: str, case: str) -> None:
    sql, message = ERRORS[case]
    for method in ("GET", "POST"):
        response = server.query(sql, fmt, method)
        assert response.status_code == 400
        assert response.headers["Content-Type"] == "application/json"
        assert response.json() == {"ok": False, "error": message}


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_unknown_format_and_missing_sql_are_400(server: Server, scheme: str) -> None:
    response = server.query("SELECT 1", "yaml", "GET", scheme)
    assert response.status_code == 400
    assert response.json() == {
        "ok": False,
        "error": "Unknown format 'yaml': use one of json, text, objects, arrays, ndjson, csv",
    }
    missing = requests.get(
        server.url(scheme), params={"op": "query", "format": "arrays"}, verify=str(server.cert)
    )
    assert missing.status_code == 400
    assert missing.json() == {"ok": False, "error": "Must specify 'sql' param"}


def test_stream_with_a_json_shape_is_400(server: Server) -> None:
    response = server.query("SELECT 1", "arrays", stream="1")
    assert response.status_code == 400
    assert "stream=1 works with format=csv or format=ndjson" in response.json()["error"]


# ---------------------------------------------------------------- legacy, pinned


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("fmt", [None, "json", "html"])
def test_legacy_json_is_byte_for_byte_the_first_releases(
    server: Server, method: str, fmt: str | None
) -> None:
    params: dict[str, Any] = {"op": "query"}
    if fmt:
        params["format"] = fmt
    if method == "GET":
        reply = http_request(server.http, "GET", request_target(**params, sql=LEGACY_SQL))
    else:
        body = json.dumps({"sql": LEGACY_SQL}).encode()
        reply = http_request(server.http, "POST", request_target(**params), body)
    assert (reply.status, reply.content_type, reply.body) == (200, "application/json", LEGACY_JSON)


def test_legacy_errors_stay_200_with_response_op_error(server: Server) -> None:
    reply = http_request(server.http, "GET", request_target(op="query", sql="SELECT nope"))
    assert reply.status == 200
    assert reply.body == (
        b'{"response_op":"error","identity":"testserver","error_message":"no such column: nope"}'
    )


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_legacy_text_is_byte_for_byte_the_first_releases(server: Server, method: str) -> None:
    if method == "GET":
        target = request_target(op="query", format="text", sql=LEGACY_SQL)
        reply = http_request(server.http, "GET", target)
    else:
        body = json.dumps({"sql": LEGACY_SQL}).encode()
        reply = http_request(server.http, "POST", request_target(op="query", format="text"), body)
    assert (reply.status, reply.content_type, reply.body) == (
        200,
        "text/plain; charset=utf-8",
        LEGACY_TEXT,
    )


def test_legacy_zeromq_query_is_byte_for_byte_the_first_releases(server: Server) -> None:
    assert zmq_request(server.zmq, {"op": "query", "sql": LEGACY_SQL}) == [LEGACY_JSON]


# ---------------------------------------------------------------- ZeroMQ


@pytest.mark.parametrize("fmt", ["objects", "arrays"])
def test_zeromq_query_with_a_format_gets_that_shape(server: Server, fmt: str) -> None:
    [frame] = zmq_request(server.zmq, {"op": "query", "sql": TYPED_SQL, "format": fmt})
    reply = json.loads(frame)
    assert reply["ok"] is True and reply["columns"] == TYPED_COLUMNS
    expected = TYPED_ROWS if fmt == "arrays" else [dict(zip(TYPED_COLUMNS, r)) for r in TYPED_ROWS]
    assert reply["rows"] == expected
    assert isinstance(reply["generation_number"], int) and reply["truncated"] is False


def test_zeromq_errors_of_a_shaped_query_are_ok_false(server: Server) -> None:
    bad = zmq_call(server.zmq, {"op": "query", "sql": "SELECT nope", "format": "arrays"})
    assert bad == {"ok": False, "error": "no such column: nope"}
    unknown = zmq_call(server.zmq, {"op": "query", "sql": "SELECT 1", "format": "csv"})
    assert unknown == {
        "ok": False,
        "error": "Unknown format 'csv': use one of json, objects, arrays",
    }
    legacy = zmq_call(server.zmq, {"op": "query", "sql": "SELECT 1 AS a", "format": "json"})
    assert legacy["response_op"] == "result_table" and legacy["identity"] == IDENTITY


# ---------------------------------------------------------------- the user's tools

HOSTS_SQL = "SELECT host, cpu, load, dc FROM hosts ORDER BY host"


def test_csv_reads_back_with_pythons_csv_module(server: Server) -> None:
    for stream in ("0", "1"):
        text = server.query(HOSTS_SQL, "csv", stream=stream).text
        assert list(csv.reader(io.StringIO(text, newline=""))) == [
            ["host", "cpu", "load", "dc"],
            ["alpha", "30", "0.5", "bos"],
            ["bravo", "5", "1.25", ""],
            ["charlie", "12", "0.0", "nyc"],
        ]
        records = list(csv.DictReader(io.StringIO(server.query(TYPED_SQL, "csv").text, newline="")))
        assert [r["t"] for r in records] == ['a,"b"', "line\nbreak"]


def test_csv_loads_with_the_sqlite3_command_line_import(server: Server, tmp_path: Path) -> None:
    """The sqlite3 shell's ``.import --csv`` (the header row names the columns)."""
    sqlite3_cli = shutil.which("sqlite3")
    if sqlite3_cli is None:
        pytest.skip("the sqlite3 command line shell is not installed")
    path = tmp_path / "hosts.csv"
    path.write_bytes(server.query(TYPED_SQL, "csv", stream="1").content)
    db = tmp_path / "imported.db"
    subprocess.run([sqlite3_cli, str(db), f".import --csv {path} imported"], check=True, timeout=10)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT i, r, t, n, b FROM imported ORDER BY rowid").fetchall()
    # .import reads every field as text; CAST gives the numbers back.
    assert rows == [("1", "2.5", 'a,"b"', "", BLOB), ("-7", "1e+300", "line\nbreak", "4", "")]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT sum(CAST(i AS INTEGER)) FROM imported").fetchone() == (-6,)


def test_ndjson_is_read_line_by_line_by_jq(server: Server) -> None:
    jq = shutil.which("jq") or "/usr/bin/jq"
    if not Path(jq).exists():
        pytest.skip("jq is not installed")
    for stream in ("0", "1"):
        body = server.query(HOSTS_SQL, "ndjson", stream=stream).content
        out = subprocess.run(
            [jq, "-c", "[.host, .cpu, .load, .dc, (.cpu | type), (.dc | type)]"],
            input=body,
            capture_output=True,
            check=True,
            timeout=10,
        ).stdout
        assert out.decode().splitlines() == [
            '["alpha",30,0.5,"bos","number","string"]',
            '["bravo",5,1.25,null,"number","null"]',
            '["charlie",12,0,"nyc","number","string"]',
        ]


def test_objects_load_as_json_with_one_type_per_column(server: Server) -> None:
    """What pandas.read_json would infer, checked column by column with json
    (pandas is not a test dependency)."""
    reply = server.query(HOSTS_SQL, "objects").json()
    columns = reply["columns"]
    kinds = {
        name: {type(row[name]).__name__ for row in reply["rows"] if row[name] is not None}
        for name in columns
    }
    assert kinds == {"host": {"str"}, "cpu": {"int"}, "load": {"float"}, "dc": {"str"}}
    assert [row["dc"] for row in reply["rows"]] == ["bos", None, "nyc"]
    assert sum(row["cpu"] for row in reply["rows"]) == 47


def test_a_stream_past_the_time_limit_ends_with_the_error_and_no_final_chunk(
    server: Server,
) -> None:
    """Once rows are out a 400 is no longer possible: NDJSON gets a last line
    with the error and the body is cut short (no terminating chunk), so a
    client cannot take a partial result for a whole one."""
    sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"
    reader = ChunkedReader(open_stream(server.http, sql, "ndjson"))
    try:
        reader.read_headers()
        body = b"".join(reader.chunks())
    finally:
        reader.sock.close()
    assert not reader.complete
    *rows, last, end = body.split(b"\n")
    assert end == b""
    assert json.loads(last) == {
        "ok": False,
        "error": "Query exceeded the time limit of 1 seconds",
    }
    assert [json.loads(row)["x"] for row in rows[:3]] == [1, 2, 3]
    server.proc.wait_log("stream failed: Query exceeded the time limit")


def test_typed_and_streamed_queries_are_counted_in_metrics(server: Server) -> None:
    def counts() -> dict[str, float]:
        text = requests.get(f"http://{HOST}:{server.http}/metrics", timeout=10).text
        out = {"ok": 0.0, "error": 0.0}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "qasino_queries_total" and sample.labels["transport"] == "http":
                    out[sample.labels["outcome"]] += sample.value
        return out

    before = counts()
    assert server.query("SELECT 1 AS a", "arrays").status_code == 200
    assert server.query("SELECT 1 AS a", "ndjson", stream="1").status_code == 200
    assert server.query("SELECT nope", "csv").status_code == 400
    after = counts()
    assert after["ok"] - before["ok"] == 2
    assert after["error"] - before["error"] == 1

"""An existing Qasino deployment switched over with nothing changed (issue 12).

One server is started with the original's full start line (``-d -k -g -v -K
-p -s -t -f``) on a data dir laid out as the original left it: its static DB
``qasino_table_store_static.db``, a stale generation file, ``server.crt`` and
``server.key`` in the keys dir and an htpasswd file. Only the ports are ours
(free loopback ports instead of 443/80/15000/...).

The tests then replay, byte for byte, what the original's three clients send
(bin/qasino_sqlclient.py, bin/qasino_publish.py and bin/qasino_csvpublisher.py
with lib/http_requestor.py, lib/zmq_requestor.py, lib/csv_table_reader.py)
and check what those clients read from each reply. JSON key order is Python
2's dict order there; ours is one such order (it means nothing to JSON).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
import requests
import urllib3
import zmq
from passlib.hash import apr_md5_crypt

from qasino.identity import default_identity
from tests.e2e.conftest import (
    HOST,
    ZMQ_CONTEXT,
    LineClient,
    QasinoProcess,
    http_request,
    request_target,
    server_env,
)
from tests.server_process import parse_gensig
from tests.tls_helpers import make_cert

USER, PASSWORD = "ops", "ops-secret"
DATETIME_RE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC"
TIMEOUT = 10.0


def write_original_layout(workdir: Path) -> None:
    """What an original deployment has on disk."""
    dbs = workdir / "dbs"
    dbs.mkdir()
    # The original's static DB: rollback journal, quoted names, its types.
    conn = apsw.Connection(str(dbs / "qasino_table_store_static.db"))
    conn.execute(
        "CREATE TABLE IF NOT EXISTS 'inventory' ( \n"
        "'host' varchar DEFAULT NULL,\n'rack' int DEFAULT NULL,\n'note' varchar DEFAULT NULL)"
    )
    conn.execute(
        "INSERT INTO inventory (host, rack, note) VALUES (?, ?, ?), (?, ?, ?)",
        ("web1", 12, "C:\\srv", "db1", 14, "two\nlines"),
    )
    conn.close()
    # A generation file the original left behind (it is ignored).
    stale = apsw.Connection(str(dbs / "qasino_table_store_1700000000.db"))
    stale.execute("CREATE TABLE leftover (a int)")
    stale.close()
    keys = workdir / "keys"
    keys.mkdir()
    cert, key = make_cert(workdir)
    cert.rename(keys / "server.crt")
    key.rename(keys / "server.key")
    (workdir / "htpasswd").write_text(f"{USER}:{apr_md5_crypt.hash(PASSWORD)}\n")
    # The original ran the statement as written: the view is "inv_racks".
    (workdir / "views.conf").write_text(
        "- viewname: racks\n"
        "  view: CREATE VIEW inv_racks AS SELECT rack, count(*) AS n FROM inventory GROUP BY rack\n"
    )


ORIGINAL_START_LINE = [
    "-d", "dbs", "-k", "archive", "-g", "1", "-v", "views.conf",
    "-K", "keys/", "-p", "htpasswd", "-s", "/opt/qasino/etc/htdocs/static",
    "-t", "/opt/qasino/etc/htdocs/templates", "-f", "qasino_table_store_%d.db",
]  # fmt: skip
# Ours: free loopback ports instead of 15000/15596-15598/443/80.
FREE_PORTS = [
    "--bind", HOST, "--line-port", "0", "--http-port", "0", "--zmq-port", "0",
    "--pubsub-port", "0", "--https-port", "0", "--redirect-port", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QasinoProcess]:
    workdir = tmp_path_factory.mktemp("original")
    write_original_layout(workdir)
    proc = QasinoProcess(workdir, ORIGINAL_START_LINE + FREE_PORTS)
    try:
        proc.start()
        text = proc.wait_log(r"HTTP->HTTPS redirect listening on")
        proc.ports["redirect"] = int(
            re.search(r"HTTP->HTTPS redirect listening on [0-9.]+:(\d+)", text).group(1)  # type: ignore[union-attr]
        )
        proc.ports["https"] = int(
            re.search(r"\] HTTPS listening on [0-9.]+:(\d+)", text).group(1)  # type: ignore[union-attr]
        )
        yield proc
    finally:
        proc.close()


def https_url(proc: QasinoProcess, target: str) -> str:
    return f"https://{HOST}:{proc.ports['https']}{target}"


# ------------------------------------------------------------- the old clients' side


def old_client_render(reply: dict[str, Any]) -> str:
    """What the original qasinosql prints for a result_table reply: each
    column right-justified to the reply's max_widths, two spaces between,
    a rule of '=', then 'N rows returned' (one print per line)."""
    table, widths = reply["table"], reply["max_widths"]
    width = [widths[str(i)] for i in range(len(table["column_names"]))]

    def line(cells: list[str]) -> str:
        # Python 2's unicode cells went through encode("unicode_escape").
        shown = [cell.encode("unicode_escape").decode("ascii") for cell in cells]
        return "  ".join(cell.rjust(w) for cell, w in zip(shown, width))

    lines = [line(table["column_names"]), "  ".join("=" * w for w in width)]
    lines += [line(row) for row in table["rows"]]
    lines.append(f"{len(table['rows'])} rows returned")
    return "\n".join(lines) + "\n"


def old_query_payload(sql: str, use_write_db: bool = False) -> str:
    """QasinoCmd.send_query's request: json.dumps of {op, sql, use_write_db}."""
    flag = "true" if use_write_db else "false"
    return '{"sql": ' + json.dumps(sql) + ', "use_write_db": ' + flag + ', "op": "query"}'


def sqlclient_zmq(proc: QasinoProcess, sql: str, use_write_db: bool = False) -> dict[str, Any]:
    """qasino_sqlclient.py -z: a pyzmq REQ socket, one JSON frame each way."""
    payload = old_query_payload(sql, use_write_db).encode()
    sock = ZMQ_CONTEXT.socket(zmq.REQ)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(TIMEOUT * 1000))
        sock.connect(f"tcp://{HOST}:{proc.ports['zmq']}")
        sock.send(payload)
        frames = sock.recv_multipart()
    finally:
        sock.close(linger=0)
    assert len(frames) == 1, frames
    reply: dict[str, Any] = json.loads(frames[0])
    return reply


def sqlclient_https(proc: QasinoProcess, sql: str, auth: Any) -> requests.Response:
    """qasino_sqlclient.py -t -s: a requests POST with a JSON body."""
    body = old_query_payload(sql)
    with urllib3.warnings.catch_warnings():
        urllib3.disable_warnings()
        return requests.post(
            https_url(proc, "/request?op=query"),
            headers={"Content-Type": "application/json"},
            data=body,
            verify=False,
            auth=auth,
            timeout=TIMEOUT,
        )


def txzmq_request(proc: QasinoProcess, payload: bytes) -> dict[str, Any]:
    """lib/zmq_requestor.py (txzmq's ZmqREQConnection): a DEALER socket that
    sends [message id, empty delimiter, JSON] and reads the reply after the
    same two frames."""
    sock = ZMQ_CONTEXT.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(TIMEOUT * 1000))
        sock.connect(f"tcp://{HOST}:{proc.ports['zmq']}")
        message_id = uuid.uuid4().bytes
        sock.send_multipart([message_id, b"", payload])
        frames = sock.recv_multipart()
    finally:
        sock.close(linger=0)
    assert frames[:2] == [message_id, b""], frames
    reply: dict[str, Any] = json.loads(frames[2])
    return reply


def publish_json(identity: str, table: str, extra: str = "") -> str:
    """QasinoTable.get_json(op=..., identity=...): properties, then op and
    identity, then the table (Python 2 json.dumps separators)."""
    return (
        "{"
        + extra
        + '"op": "add_table_data", "identity": "'
        + identity
        + '", "table": '
        + table
        + "}"
    )


# ------------------------------------------------------------------ start line, listeners


def test_the_original_start_line_opens_the_originals_listeners(original: QasinoProcess) -> None:
    log = original.log_text()
    for flag in ("-f/--db-file", "-s/--static-content-dir", "-t/--templates-dir"):
        assert len(re.findall(re.escape(flag) + r" .* is accepted and ignored", log)) == 1, log
    assert set(original.ports) == {"line", "http", "zmq", "pubsub", "https", "redirect"}
    # The default identity is the original's: an IP address, else the MAC.
    assert f"qasino_server {default_identity()} starting" in log


def test_the_original_static_db_is_served_on_every_transport(original: QasinoProcess) -> None:
    sql = "SELECT host, rack FROM inventory ORDER BY host"
    reply = sqlclient_zmq(original, sql)
    assert reply["response_op"] == "result_table", reply
    assert reply["table"]["rows"] == [["db1", "14"], ["web1", "12"]]
    assert reply["identity"] == default_identity()
    text = http_request(
        original.ports["http"], "GET", request_target(op="query", format="text", sql=sql)
    )
    assert text.body == b"host  rack\n====  ====\n db1    14\nweb1    12\n2 rows returned\n"


def test_https_needs_the_htpasswd_users_password(original: QasinoProcess) -> None:
    refused = sqlclient_https(original, "SELECT 1", auth=(USER, "wrong"))
    assert refused.status_code == 401
    reply = sqlclient_https(original, "SELECT count(*) AS n FROM inventory", auth=(USER, PASSWORD))
    assert reply.status_code == 200
    assert reply.json()["table"] == {"column_names": ["n"], "rows": [["2"]]}


def test_the_redirect_port_sends_browsers_to_https(original: QasinoProcess) -> None:
    reply = requests.get(
        f"http://{HOST}:{original.ports['redirect']}/tables?x=1",
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert reply.status_code == 302
    assert reply.headers["Location"] == https_url(original, "/tables?x=1")


def test_a_view_whose_statement_names_another_view_loads_with_a_warning(
    original: QasinoProcess,
) -> None:
    reply = sqlclient_zmq(original, "SELECT rack, n FROM inv_racks ORDER BY rack")
    assert reply["table"]["rows"] == [["12", "1"], ["14", "1"]], reply
    views = sqlclient_zmq(original, "SHOW views;")["table"]["rows"]
    assert [row[:2] for row in views] == [["racks", "1"]]
    assert views[0][2].startswith("warning: ")
    assert "view racks: warning: " in original.log_text()


# ------------------------------------------------------------------ text outputs


def test_show_tables_has_the_originals_columns_and_datetime_format(
    original: QasinoProcess,
) -> None:
    reply = sqlclient_zmq(original, "SHOW tables;")
    names = reply["table"]["column_names"]
    assert names == [
        "tablename", "nr_rows", "nr_updates", "last_update_epoch", "static",
        "last_update_datetime",
    ]  # fmt: skip
    rows = {row[0]: row for row in reply["table"]["rows"]}
    assert rows["inventory"][1] == "2" and rows["inventory"][4] == "1"
    assert re.fullmatch(DATETIME_RE, rows["qasino_server_tables"][5]), rows
    assert rows["qasino_server_info"][1:3] == ["1", "1"]  # one row, one update
    desc = sqlclient_zmq(original, "DESC inventory;")["table"]
    assert desc == {
        "column_names": ["column_name", "column_type"],
        "rows": [["host", "varchar"], ["rack", "INT"], ["note", "varchar"]],
    }
    info = sqlclient_zmq(original, "SHOW info;")["table"]
    assert info["column_names"][3] == "generation_start_datetime"
    assert re.fullmatch(DATETIME_RE, info["rows"][0][3])


def test_line_protocol_answers_in_crlf_like_the_original(original: QasinoProcess) -> None:
    sql = "SELECT host, note FROM inventory ORDER BY host"
    with LineClient(original.ports["line"]) as client:
        client.send(f"{sql};\r\n")
        client.read_answers(1)
        raw = client.last_raw
        # The old client's rendering of the same query, from the JSON reply.
        old_client = old_client_render(sqlclient_zmq(original, sql))
        assert raw == old_client.replace("\n", "\r\n").encode()
        assert raw == (
            b"host        note\r\n====  ==========\r\n db1  two\\nlines\r\n"
            b"web1     C:\\\\srv\r\n2 rows returned\r\n"
        )
        client.send("SELECT host FROM inventory WHERE 0;\r\n")
        client.read_answers(1)
        assert client.last_raw == (
            b"query returned zero rows\r\n========================\r\n0 rows returned\r\n"
        )
        client.send("SELECT * FROM nowhere;\r\n")
        client.read_answers(1)
        assert client.last_raw == b"SQL error: no such table: nowhere\r\n"
        client.send(b"\x04\r\n")  # Ctrl-D
        assert client.read_until_closed() == "Bye!\n"
        assert client.last_raw == b"Bye!\r\n"


def test_the_generation_signal_names_the_generation_that_starts_filling(
    original: QasinoProcess,
) -> None:
    """What an old qasino_csvpublisher subscribes to (txzmq: tag, NUL, JSON):
    a table sent after signal N is served, after the next signal, as part of
    generation N."""
    sub = ZMQ_CONTEXT.socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVTIMEO, int(TIMEOUT * 1000))
        sub.setsockopt(zmq.SUBSCRIBE, b"GENSIG")
        sub.connect(f"tcp://{HOST}:{original.ports['pubsub']}")
        for attempt in range(5):
            first = parse_gensig(sub.recv())
            assert first["op"] == "generation_signal" and first["generation_duration_s"] == 1
            table = (
                f'{{"tablename": "gensig_probe{attempt}", "column_names": ["n"], '
                '"column_types": ["int"], '
                f'"rows": [[{first["generation_number"]}]]}}'
            )
            sent = txzmq_request(original, publish_json("10.5.5.5", table).encode())
            assert sent["response_op"] == "ok", sent
            second = parse_gensig(sub.recv())
            reply = sqlclient_zmq(
                original,
                "SELECT (SELECT generation_number FROM qasino_server_info), n"
                f" FROM gensig_probe{attempt}",
            )
            if sub.poll(0) or reply["response_op"] != "result_table":
                continue  # a rotation overtook a step: try again
            assert second["generation_number"] > first["generation_number"]
            assert reply["table"]["rows"] == [[str(first["generation_number"])] * 2], reply
            return
        raise AssertionError("rotations kept overtaking the check")
    finally:
        sub.close(linger=0)


# ------------------------------------------------------------------ the three clients


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_qasino_publish_json_is_stored_and_answered_200(
    original: QasinoProcess, scheme: str
) -> None:
    """bin/qasino_publish.py: HTTPS by default (-t plain HTTP), requests,
    raise_for_status(); lib/http_requestor.py (the agent's -s) sends the same."""
    table = (
        f'{{"tablename": "pub_{scheme}", "column_names": ["host", "hits"], '
        '"column_types": ["varchar", "int"], "rows": [["web1", 10], ["web2", 20]]}'
    )
    body = publish_json("10.1.2.3", table, extra='"persist": 1, ')
    if scheme == "https":
        url, auth = https_url(original, "/request?op=add_table_data"), (USER, PASSWORD)
    else:
        url, auth = f"http://{HOST}:{original.ports['http']}/request?op=add_table_data", None
    with urllib3.warnings.catch_warnings():
        urllib3.disable_warnings()
        response = requests.post(
            url,
            headers={"Content-Type": "application/json"},
            data=body,
            verify=False,
            auth=auth,
            timeout=TIMEOUT,
        )
    response.raise_for_status()
    assert response.json() == {"identity": default_identity(), "response_op": "ok"}
    reply = sqlclient_zmq_write(original, f"SELECT host, hits FROM pub_{scheme} ORDER BY host")
    assert reply == [["web1", "10"], ["web2", "20"]]


def sqlclient_zmq_write(proc: QasinoProcess, sql: str) -> list[list[str]]:
    """``SET use_write_db = true;`` then the query, as the old qasinosql sends it."""
    reply = sqlclient_zmq(proc, sql, use_write_db=True)
    assert reply["response_op"] == "result_table", reply
    rows: list[list[str]] = reply["table"]["rows"]
    return rows


def test_qasino_publish_csv_with_empty_cells_over_zmq_and_static(original: QasinoProcess) -> None:
    """qasino_publish.py -z -S -d csv: csv_table_reader gives '' for empty
    cells and TEXT/INTEGER/REAL types; txzmq framing."""
    table = (
        '{"tablename": "pub_static", "column_names": ["host", "disk", "load"], '
        '"column_types": ["TEXT", "INTEGER", "REAL"], '
        '"rows": [["web1", 91, 0.5], ["web2", "", ""]]}'
    )
    reply = txzmq_request(original, publish_json("10.1.2.3", table, extra='"static": 1, ').encode())
    assert reply == {"identity": default_identity(), "response_op": "ok"}
    rows = sqlclient_zmq(original, "SELECT host, disk, load FROM pub_static ORDER BY host")
    assert rows["table"]["rows"] == [["web1", "91", "0.5"], ["web2", "", ""]]
    # A static re-publish keeps the union of the columns, as the original's did.
    again = '{"tablename": "pub_static", "column_names": ["host"], "column_types": ["TEXT"], "rows": [["web3"]]}'
    assert (
        txzmq_request(original, publish_json("10.1.2.3", again, extra='"static": 1, ').encode())[
            "response_op"
        ]
        == "ok"
    )
    rows = sqlclient_zmq(original, "SELECT * FROM pub_static")
    assert rows["table"]["column_names"] == ["host", "disk", "load"]
    assert rows["table"]["rows"] == [["web3", "", ""]]


def test_qasino_csvpublisher_round_is_accepted(original: QasinoProcess) -> None:
    """What bin/qasino_csvpublisher.py sends each round over ZeroMQ: each
    table (options-line properties, then op and identity), then its info
    and tables tables, whose epochs are floats in 'int' columns."""
    identity = "10.9.8.7"
    tables = [
        publish_json(
            identity,
            '{"tablename": "csv_disk", "column_names": ["host", "pct"], '
            '"column_types": ["TEXT", "INTEGER"], "rows": [["web1", 91], ["web2", ""]]}',
            extra='"update": 1, "keycols": "host", ',
        ),
        publish_json(
            identity,
            '{"tablename": "qasino_csvpublisher_info", "column_names": ["identity", '
            '"update_epoch", "nr_tables", "nr_errors"], "column_types": ["varchar", "int", '
            f'"int", "int"], "rows": [["{identity}", 1764806400.123456, 1, 0]]}}',
        ),
        publish_json(
            identity,
            '{"tablename": "qasino_csvpublisher_tables", "column_names": ["identity", '
            '"tablename", "read_epoch", "read_time_s", "mtime", "nr_errors", "error_message", '
            '"nr_rows", "filepath"], "column_types": ["varchar", "varchar", "real", "int", '
            '"int", "int", "varchar", "int", "varchar"], "rows": '
            f'[["{identity}", "csv_disk", 1764806400.1, 0.000312, 1764806000.0, 0, "", 2, '
            '"./csv_disk.csv"]]}',
        ),
    ]
    for body in tables:
        assert txzmq_request(original, body.encode()) == {
            "identity": default_identity(),
            "response_op": "ok",
        }
    assert sqlclient_zmq_write(original, "SELECT host, pct FROM csv_disk ORDER BY host") == [
        ["web1", "91"],
        ["web2", ""],
    ]
    info = sqlclient_zmq_write(original, "SELECT identity, nr_tables FROM qasino_csvpublisher_info")
    assert [identity, "1"] in info


def test_name_value_update_without_identity_keeps_the_value_as_sent(
    original: QasinoProcess,
) -> None:
    target = request_target(op="name_value_update", name="nv_compat.version", value="01000")
    reply = http_request(original.ports["http"], "GET", target)
    assert json.loads(reply.body) == {"identity": default_identity(), "response_op": "ok"}
    rows = sqlclient_zmq_write(original, "SELECT identity, version FROM nv_compat")
    assert rows == [["unknown", "01000"]]


def test_qasino_publish_filename_and_qasinocsvpub_commands(
    original: QasinoProcess, tmp_path: Path
) -> None:
    data = tmp_path / "table.csv"
    data.write_text("1\nfile_pub\nhost,n\nstring,int\nHost,N\nweb1,3\n")
    code = "import sys; from qasino.cli import publish_main; sys.exit(publish_main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", code, "-t", "-H", HOST, "-p", str(original.ports["http"]),
         "-d", "csv", "--filename", str(data), "-I", "10.1.1.1"],
        env=server_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sqlclient_zmq_write(original, "SELECT host, n FROM file_pub") == [["web1", "3"]]
    agent = Path(sys.executable).with_name("qasinocsvpub")
    if agent.exists():
        shown = subprocess.run([str(agent), "--help"], capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0 and "index" in shown.stdout

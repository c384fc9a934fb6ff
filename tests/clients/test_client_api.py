"""``qasino.client.Publisher`` against the real daemon over HTTP, ZeroMQ and HTTPS."""

from __future__ import annotations

import pytest

from qasino.client import Publisher, QueryResult, ServerError, TransportError
from tests.e2e.conftest import HOST, QasinoProcess, server, slow_server  # noqa: F401 - fixtures
from tests.e2e.test_https import USERS, HttpsServer, https_server  # noqa: F401 - a fixture
from tests.server_process import free_port


def urls(proc: QasinoProcess) -> dict[str, str]:
    return {
        "http": f"http://{HOST}:{proc.ports['http']}",
        "tcp": f"tcp://{HOST}:{proc.ports['zmq']}",
    }


@pytest.mark.parametrize("scheme", ["http", "tcp"])
def test_publish_lists_then_query_returns_columns_and_rows(
    server: QasinoProcess,  # noqa: F811
    scheme: str,
) -> None:
    table = f"api_{scheme}"
    with Publisher(urls(server)[scheme], identity="api-host") as qasino:
        qasino.publish(
            table, [["a", 1, 0.5], ["b", 2, None]], columns=["k", "n", "x"],
            types=["text", "int", "real"],
        )  # fmt: skip
        server.wait_generation()
        columns, rows = qasino.query(f"SELECT k, n, x FROM {table} ORDER BY k")
    assert columns == ["k", "n", "x"]
    assert rows == [["a", "1", "0.5"], ["b", "2", ""]]


def test_dict_rows_infer_columns_and_types_and_options_reach_the_server(
    server: QasinoProcess,  # noqa: F811
) -> None:
    qasino = Publisher(urls(server)["tcp"], identity="api-dict")
    try:
        qasino.publish("api_dict", [{"host": "h1", "load": 0.25, "cpus": 8}], persist=True)
        server.wait_generation()
        result = qasino.query("DESC api_dict;")
        assert isinstance(result, QueryResult)
        assert [r[:2] for r in result.rows] == [
            ["host", "TEXT"],
            ["load", "REAL"],
            ["cpus", "INTEGER"],
        ]
        # persist: still there a generation later without a new publish
        server.wait_generation()
        assert qasino.query("SELECT host FROM api_dict").rows == [["h1"]]
    finally:
        qasino.close()


def test_an_error_reply_raises_server_error_with_the_servers_message(
    slow_server: QasinoProcess,  # noqa: F811
) -> None:
    with Publisher(f"http://{HOST}:{slow_server.ports['http']}", identity="api-twice") as qasino:
        qasino.publish("api_twice", [[1]], columns=["a"], types=["int"])
        with pytest.raises(ServerError, match="api_twice"):
            qasino.publish("api_twice", [[2]], columns=["a"], types=["int"])
        with pytest.raises(ServerError, match="no such table"):
            qasino.query("SELECT * FROM api_nowhere")


def test_a_table_that_cannot_be_valid_is_refused_before_sending() -> None:
    qasino = Publisher(f"tcp://{HOST}:{free_port()}", timeout_s=0.5)
    with pytest.raises(ValueError, match="Invalid input format"):
        qasino.publish("1bad", [[1]], columns=["a"], types=["int"])
    with pytest.raises(ValueError, match="columns="):
        qasino.publish("t", [[1]])
    qasino.close()


@pytest.mark.parametrize("url", ["ftp://h:1", "localhost:15597", "http://:80", "http://h:x"])
def test_a_bad_url_is_a_value_error(url: str) -> None:
    with pytest.raises(ValueError):
        Publisher(url)


def test_a_server_that_does_not_answer_raises_transport_error() -> None:
    with Publisher(f"tcp://{HOST}:{free_port()}", timeout_s=0.5) as qasino:
        with pytest.raises(TransportError, match="no reply"):
            qasino.query("SELECT 1")
    with Publisher(f"http://{HOST}:{free_port()}", timeout_s=0.5) as qasino:
        with pytest.raises(TransportError, match="cannot reach"):
            qasino.query("SELECT 1")


def test_https_with_credentials_and_a_ca_file(
    https_server: HttpsServer,  # noqa: F811 - the imported fixture
) -> None:
    url = f"https://{HOST}:{https_server.https_port}"
    good = Publisher(url, username="bee", password=USERS["bee"], verify=str(https_server.cert))
    with good:
        good.publish("api_https", [[1]], columns=["a"], types=["int"])
        assert good.query("SELECT 1 AS one") == (["one"], [["1"]])
    bad = Publisher(url, username="bee", password="wrong", verify=str(https_server.cert))
    with bad, pytest.raises(ServerError, match="401"):
        bad.query("SELECT 1")

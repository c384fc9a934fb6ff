"""The line protocol answers a client that half-closes (issue 11, point 2):
``printf 'SELECT 1;\\n' | nc -N host 15000`` in a shell script."""

from __future__ import annotations

import socket

from tests.e2e.conftest import LineClient, QasinoProcess


def test_half_closing_client_gets_every_answer_then_the_server_closes(
    server: QasinoProcess,
) -> None:
    with LineClient(server.ports["line"]) as client:
        client.send("SELECT 1 AS a;\nSELECT 'x'\n  AS b;\nSELECT 2 AS c;")  # last: no newline
        client.sock.shutdown(socket.SHUT_WR)
        text = client.read_until_closed()
    assert client.closed_by_server
    assert text.count("1 rows returned") == 3, text
    assert text.index("a\n") < text.index("b\n") < text.index("c\n"), text


def test_half_close_with_an_unfinished_statement_answers_the_finished_ones(
    server: QasinoProcess,
) -> None:
    with LineClient(server.ports["line"]) as client:
        client.send("SELECT 1 AS a;\nSELECT 2")
        client.sock.shutdown(socket.SHUT_WR)
        text = client.read_until_closed()
    assert text.count("1 rows returned") == 1, text
    assert text.rstrip().endswith(
        "SQL error: the input ended inside a statement (end each statement with ';')"
    ), text

"""The telnet line protocol (PROTOCOL.md "Line protocol") over a StringTransport."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from qasino.frontends.line import (
    DEFAULT_MAX_STATEMENT_BYTES,
    UNFINISHED_TEXT,
    LineSQLFactory,
    LineSQLProtocol,
    crlf,
)
from qasino.ops import Dispatcher
from qasino.store.store import Store
from tests.helpers import ManualRunner

ONE = b"a\r\n=\r\n1\r\n1 rows returned\r\n"
TWO = b"b\r\n=\r\n2\r\n1 rows returned\r\n"


def connect(
    dispatcher: Dispatcher, max_statement_bytes: int | None = None
) -> tuple[LineSQLProtocol, StringTransport]:
    protocol = LineSQLFactory(dispatcher, max_statement_bytes).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_factory_builds_protocol_with_default_statement_limit(dispatcher: Dispatcher) -> None:
    protocol = LineSQLFactory(dispatcher).buildProtocol(None)
    assert isinstance(protocol, LineSQLProtocol)
    assert protocol.max_statement_bytes == DEFAULT_MAX_STATEMENT_BYTES


def test_statement_is_answered_with_the_exact_text_rendering(dispatcher: Dispatcher) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(b"SELECT 1382105093 AS generation_number, 'x' AS s, NULL AS n;\n")
    assert transport.value() == (
        b"generation_number  s  n\r\n"
        b"=================  =  =\r\n"
        b"       1382105093  x   \r\n"
        b"1 rows returned\r\n"
    )  # fmt: skip
    assert not transport.disconnecting


def test_multi_line_statement_is_answered_once_complete(dispatcher: Dispatcher) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(b"SELECT\n")
    protocol.dataReceived(b"  1 AS a\n")
    assert transport.value() == b""
    protocol.dataReceived(b"  ;\n")
    assert transport.value() == ONE


def test_crlf_line_endings_are_accepted(dispatcher: Dispatcher) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(b"SELECT\r\n1 AS a;\r\n")
    assert transport.value() == ONE


def test_statement_split_inside_a_line_across_packets(dispatcher: Dispatcher) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(b"SELECT 1 A")
    assert transport.value() == b""
    protocol.dataReceived(b"S a;\n")
    assert transport.value() == ONE


def test_sql_error_is_one_sql_error_line_and_the_connection_stays(
    dispatcher: Dispatcher,
) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(b"SELECT * FROM nowhere;\n")
    reply = transport.value()
    assert reply.startswith(b"SQL error: ")
    assert reply.endswith(b"\r\n") and reply.count(b"\r\n") == 1
    assert b"nowhere" in reply
    assert not transport.disconnecting
    transport.clear()
    protocol.dataReceived(b"SELECT 1 AS a;\n")
    assert transport.value() == ONE


def test_writing_statement_is_refused_with_sql_error(dispatcher: Dispatcher) -> None:
    """Refused by the read-only guard (its own message, one line), not merely
    failing in SQLite; the table is still there and the connection stays."""
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(b"DROP TABLE qasino_server_info;\n")
    reply = transport.value()
    assert reply.startswith(b"SQL error: Only SELECT statements"), reply
    assert reply.count(b"\n") == 1 and reply.endswith(b"\n"), reply
    assert not transport.disconnecting
    transport.clear()
    protocol.dataReceived(b"SELECT count(*) AS n FROM qasino_server_info;\n")
    assert b"\n1 rows returned" in transport.value(), transport.value()


@pytest.mark.parametrize(
    "line", [b"quit;", b"exit;", b"logout;", b"QUIT;", b"Exit;", b"LogOut;", b"  quit ;  "]
)
def test_quit_words_say_bye_and_close(dispatcher: Dispatcher, line: bytes) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(line + b"\r\n")
    assert transport.value() == b"Bye!\r\n"
    assert transport.disconnecting


def test_quit_word_without_semicolon_waits_for_the_statement_end(dispatcher: Dispatcher) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(b"quit\n")
    assert transport.value() == b""
    assert not transport.disconnecting


@pytest.mark.parametrize("line", [b"\x04", b"\x03", b"\x04\x04", b"\x03\x04\x03", b" \x04 \r"])
def test_line_of_only_ctrl_d_or_ctrl_c_says_bye_and_closes(
    dispatcher: Dispatcher, line: bytes
) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(line + b"\n")
    assert transport.value() == b"Bye!\r\n"
    assert transport.disconnecting


@pytest.mark.parametrize(
    "data",
    [b"\xff\xf4\xff\xfd\x06", b"\xff\xf4", b"\xff\xec", b"\x03", b"\x04"],
    ids=["telnet-ctrl-c", "iac-ip", "iac-eof", "raw-ctrl-c", "raw-ctrl-d"],
)
def test_ctrl_c_from_telnet_says_bye_without_waiting_for_a_newline(
    dispatcher: Dispatcher, data: bytes
) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(data)
    assert transport.value() == b"Bye!\r\n"
    assert transport.disconnecting


def test_ctrl_c_after_part_of_a_line_waits_for_the_newline(dispatcher: Dispatcher) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(b"SELECT 1 AS a")
    protocol.dataReceived(b"\x03")
    assert transport.value() == b"" and not transport.disconnecting
    protocol.dataReceived(b"\n\x03\n")
    assert transport.value() == b"Bye!\r\n"


def test_ctrl_d_in_the_middle_of_a_statement_says_bye(dispatcher: Dispatcher) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(b"SELECT 1\n\x04\n")
    assert transport.value() == b"Bye!\r\n"
    assert transport.disconnecting


def test_ctrl_d_inside_a_line_with_text_is_not_a_break(dispatcher: Dispatcher) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(b"SELECT 1 AS a; \x04\n")
    assert transport.value() != b"Bye!\r\n"
    assert not transport.disconnecting


def test_nothing_is_answered_after_bye(dispatcher: Dispatcher) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(b"quit;\nSELECT 1 AS a;\n")
    assert transport.value() == b"Bye!\r\n"


def test_several_statements_in_one_packet_are_answered_in_order(dispatcher: Dispatcher) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(b"SELECT 1 AS a;\nSELECT nope;\nSELECT 2 AS b;\n")
    first, rest = transport.value().split(b"1 rows returned\r\n", 1)
    assert first + b"1 rows returned\r\n" == ONE
    error_line, last = rest.split(b"\r\n", 1)
    assert error_line.startswith(b"SQL error: ")
    assert last == TWO


def test_statements_then_quit_in_one_packet_answer_all_then_bye(dispatcher: Dispatcher) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(b"SELECT 1 AS a;\nSELECT 2 AS b;\nquit;\n")
    assert transport.value() == ONE + TWO + b"Bye!\r\n"
    assert transport.disconnecting


def test_slow_statements_are_answered_in_order_one_at_a_time(
    slow_dispatcher: Dispatcher, manual_runner: ManualRunner
) -> None:
    protocol, transport = connect(slow_dispatcher)
    protocol.dataReceived(b"SELECT 1 AS a;\nSELECT 2 AS b;\n")
    assert transport.value() == b""
    assert len(manual_runner.pending) == 1, "the second waits for the first"
    manual_runner.run_one()
    assert transport.value() == ONE
    manual_runner.run_pending()
    assert transport.value() == ONE + TWO


def test_slow_statement_before_quit_is_answered_before_bye(
    slow_dispatcher: Dispatcher, manual_runner: ManualRunner
) -> None:
    protocol, transport = connect(slow_dispatcher)
    protocol.dataReceived(b"SELECT 1 AS a;\nquit;\n")
    manual_runner.run_pending()
    assert transport.value() == ONE + b"Bye!\r\n"
    assert transport.disconnecting


def test_answer_to_a_client_that_went_away_is_dropped(
    slow_dispatcher: Dispatcher,
    manual_runner: ManualRunner,
    logged_failures: list[dict[str, Any]],
) -> None:
    protocol, transport = connect(slow_dispatcher)
    protocol.dataReceived(b"SELECT 1 AS a;\n")
    protocol.connectionLost(Failure(ConnectionDone()))
    manual_runner.run_pending()
    assert transport.value() == b""
    assert logged_failures == []


def test_single_line_over_the_statement_limit_is_refused_and_disconnected(
    dispatcher: Dispatcher, store: Store
) -> None:
    protocol, transport = connect(dispatcher, max_statement_bytes=64)
    protocol.dataReceived(b"SELECT '" + b"x" * 100)  # no newline yet
    assert transport.value() == b"SQL error: statement longer than 64 bytes\r\n"
    assert transport.disconnecting
    protocol.dataReceived(b"';\nSELECT 1 AS a;\n")
    assert transport.value() == b"SQL error: statement longer than 64 bytes\r\n"
    assert store.counters.peek()["sql_received"] == 0


def test_multi_line_statement_over_the_limit_is_refused_and_disconnected(
    dispatcher: Dispatcher, store: Store
) -> None:
    protocol, transport = connect(dispatcher, max_statement_bytes=64)
    protocol.dataReceived(b"SELECT\n" + b"1 AS a,\n" * 8)
    assert transport.value() == b"SQL error: statement longer than 64 bytes\r\n"
    assert transport.disconnecting
    protocol.dataReceived(b"2 AS b;\n")
    assert transport.value() == b"SQL error: statement longer than 64 bytes\r\n"
    assert store.counters.peek()["sql_received"] == 0


def test_statements_under_the_limit_do_not_add_up(dispatcher: Dispatcher) -> None:
    protocol, transport = connect(dispatcher, max_statement_bytes=64)
    protocol.dataReceived(b"SELECT 1 AS a;\n" * 10)
    assert transport.value() == ONE * 10
    assert not transport.disconnecting


def test_blank_lines_do_not_count_towards_the_statement_limit(dispatcher: Dispatcher) -> None:
    protocol, transport = connect(dispatcher, max_statement_bytes=64)
    protocol.dataReceived(b"\n" * 100 + b"SELECT 1 AS a;\n")
    assert transport.value() == ONE
    assert not transport.disconnecting


def test_blank_lines_are_ignored(dispatcher: Dispatcher) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(b"\n\r\n   \n\t\r\n")
    assert transport.value() == b""
    assert not transport.disconnecting
    protocol.dataReceived(b"SELECT 1 AS a;\n\n")
    assert transport.value() == ONE


def test_lone_semicolon_does_not_raise(dispatcher: Dispatcher) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(b";\n")
    assert transport.value().startswith(b"SQL error: ")
    assert not transport.disconnecting


def test_invalid_utf8_is_answered_not_raised(dispatcher: Dispatcher) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(b"\x80\x81\xfe;\n")
    reply = transport.value()
    assert reply.startswith(b"SQL error: ")
    reply.decode("utf-8")
    transport.clear()
    protocol.dataReceived(b"SELECT '\xff\xfe' AS v;\n")
    reply = transport.value()
    assert reply.endswith(b"1 rows returned\r\n")
    assert "\ufffd\ufffd" in reply.decode("utf-8")
    assert not transport.disconnecting


def test_half_close_answers_every_complete_statement_then_closes(
    slow_dispatcher: Dispatcher, manual_runner: ManualRunner
) -> None:
    """A client that half-closes after its statements (``nc -N``) still gets
    every answer, in order; only then does the server close."""
    protocol, transport = connect(slow_dispatcher)
    protocol.dataReceived(b"SELECT 1 AS a;\nSELECT 2 AS b;\nSELECT 3 AS c")  # no ';'
    protocol.readConnectionLost()
    assert not transport.disconnecting  # answers still to come
    manual_runner.run_pending()
    assert transport.value() == ONE + TWO + crlf(UNFINISHED_TEXT)
    assert transport.disconnecting


def test_half_close_counts_a_last_statement_without_a_newline(dispatcher: Dispatcher) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(b"SELECT 1 AS a;\nSELECT 2 AS b;")
    protocol.readConnectionLost()
    assert transport.value() == ONE + TWO
    assert transport.disconnecting


def test_half_close_after_quit_says_bye_once(dispatcher: Dispatcher) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(b"SELECT 1 AS a;\nquit;\nSELECT 2 AS b;\n")
    protocol.readConnectionLost()
    assert transport.value() == ONE + b"Bye!\r\n"
    assert transport.disconnecting


def test_line_protocol_provides_half_close(dispatcher: Dispatcher) -> None:
    from twisted.internet.interfaces import IHalfCloseableProtocol

    protocol, _ = connect(dispatcher)
    assert IHalfCloseableProtocol.providedBy(protocol)


@pytest.mark.parametrize("word", [b"help;", b"HELP ;", b"?;", b"\\h;"])
def test_help_lists_what_can_be_typed_and_keeps_the_connection(
    dispatcher: Dispatcher, word: bytes
) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(word + b"\nSELECT 1 AS a;\n")
    text = transport.value()
    for shortcut in (b"SHOW tables;", b"DESC VIEW viewname;", b"quit;", b"qasino_server_info"):
        assert shortcut in text, text
    assert text.endswith(ONE)
    assert b"\n" not in text.replace(b"\r\n", b""), "every line ends in CRLF"
    assert not transport.disconnecting


def test_a_typo_is_answered_with_sqlites_syntax_error(dispatcher: Dispatcher) -> None:
    protocol, transport = connect(dispatcher)
    protocol.dataReceived(b"SELEC 1;\n")
    assert transport.value() == b'SQL error: near "SELEC": syntax error\r\n'

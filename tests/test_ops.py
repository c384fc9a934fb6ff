"""The shared op dispatch (PROTOCOL.md "HTTP", "ZeroMQ REP", "Result shape").

Everything runs on a real store in ``tmp_path`` through ``SyncRunner``: every
Deferred has fired by the time the call returns, no reactor, no threads.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from qasino.engine import Engine
from qasino.ops import Dispatcher, decode_body, decode_json, encode_json
from tests.helpers import IDENTITY

T1 = {
    "tablename": "t1",
    "column_names": ["a", "name"],
    "column_types": ["int", "text"],
    "rows": [[1, "alpha"], [22, None]],
}


def fired(d: Deferred[Any]) -> Any:
    """The result of a Deferred that has already fired; fails on errback or pending."""
    results: list[Any] = []
    failures: list[Failure] = []
    d.addCallbacks(results.append, failures.append)
    assert not failures, f"Deferred errbacked: {failures[0].getTraceback()}"
    assert results, "Deferred has not fired"
    return results[0]


def error(message: str) -> dict[str, Any]:
    return {"response_op": "error", "identity": IDENTITY, "error_message": message}


OK = {"identity": IDENTITY, "response_op": "ok"}


def publish(dispatcher: Dispatcher, table: dict[str, Any], identity: str = "h1") -> Any:
    return fired(
        dispatcher.dispatch({"op": "add_table_data", "identity": identity, "table": table})
    )


def rows_of(dispatcher: Dispatcher, sql: str, use_write_db: bool = False) -> list[list[str]]:
    reply = fired(dispatcher.dispatch({"op": "query", "sql": sql, "use_write_db": use_write_db}))
    assert reply["response_op"] == "result_table", reply
    return [list(row) for row in reply["table"]["rows"]]


def rotate(engine: Engine, clock: Clock) -> None:
    clock.advance(30)
    fired(engine.rotate())


# ---------------------------------------------------------------- op routing


@pytest.mark.parametrize("request_", [[], "query", None, 5, ["op", "query"]])
@pytest.mark.parametrize("source", ["http", "zmq"])
def test_request_that_is_not_an_object_gets_error_reply(
    dispatcher: Dispatcher, request_: object, source: str
) -> None:
    reply = fired(dispatcher.dispatch(request_, source))
    assert reply == error("Request must be a JSON object")


@pytest.mark.parametrize("request_", [{}, {"op": ""}, {"op": None}, {"sql": "SELECT 1"}])
@pytest.mark.parametrize("source", ["http", "zmq"])
def test_request_without_op_is_no_op_specified(
    dispatcher: Dispatcher, request_: dict[str, Any], source: str
) -> None:
    assert fired(dispatcher.dispatch(request_, source)) == error("No op specified")


@pytest.mark.parametrize("op", ["frobnicate", "QUERY", 5, ["query"]])
def test_unknown_op_over_http_is_unrecognized_operation(dispatcher: Dispatcher, op: object) -> None:
    assert fired(dispatcher.dispatch({"op": op}, "http")) == error("Unrecognized operation")


@pytest.mark.parametrize(
    ("op", "message"),
    [
        ("frobnicate", "Unrecognized op 'frobnicate'"),
        ("QUERY", "Unrecognized op 'QUERY'"),
        (5, "Unrecognized op 5"),
    ],
)
def test_unknown_op_over_zmq_names_the_op(dispatcher: Dispatcher, op: object, message: str) -> None:
    assert fired(dispatcher.dispatch({"op": op}, "zmq")) == error(message)


def test_dispatch_defaults_to_the_http_error_text(dispatcher: Dispatcher) -> None:
    assert fired(dispatcher.dispatch({"op": "nope"})) == error("Unrecognized operation")


def test_unexpected_exception_in_a_handler_becomes_internal_error_reply(
    dispatcher: Dispatcher, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object) -> Deferred[None]:
        raise RuntimeError("kaput")

    monkeypatch.setattr(engine, "publish", boom)
    reply = fired(dispatcher.dispatch({"op": "add_table_data", "identity": "h1", "table": T1}))
    assert reply == error("Internal error: kaput")


def test_engine_failure_with_unexpected_exception_becomes_internal_error_reply(
    dispatcher: Dispatcher, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "query_then", lambda *a: fail(ValueError("disk on fire")))
    reply = fired(dispatcher.dispatch({"op": "query", "sql": "SELECT 1"}))
    assert reply == error("Internal error: disk on fire")


# ---------------------------------------------------------------- query


@pytest.mark.parametrize(
    "request_",
    [
        {"op": "query"},
        {"op": "query", "sql": ""},
        {"op": "query", "sql": "   \n"},
        {"op": "query", "sql": None},
        {"op": "query", "sql": 5},
    ],
)
def test_query_without_sql_is_must_specify_sql(
    dispatcher: Dispatcher, request_: dict[str, Any]
) -> None:
    assert fired(dispatcher.dispatch(request_)) == error("Must specify 'sql' param")


def test_query_reply_is_result_shape_with_string_cells_and_max_widths(
    dispatcher: Dispatcher, engine: Engine, clock: Clock
) -> None:
    assert publish(dispatcher, T1) == OK
    rotate(engine, clock)
    reply = fired(dispatcher.dispatch({"op": "query", "sql": "SELECT a, name FROM t1 ORDER BY a"}))
    assert decode_json(encode_json(reply)) == {
        "response_op": "result_table",
        "identity": IDENTITY,
        "table": {"column_names": ["a", "name"], "rows": [["1", "alpha"], ["22", ""]]},
        "max_widths": {"0": 2, "1": 5},
    }


def test_query_of_zero_rows_keeps_column_names(dispatcher: Dispatcher) -> None:
    reply = fired(dispatcher.dispatch({"op": "query", "sql": "SELECT 1 AS one, 2 AS two LIMIT 0"}))
    assert reply["response_op"] == "result_table"
    assert reply["table"] == {"column_names": ["one", "two"], "rows": []}
    assert reply["max_widths"] == {"0": 3, "1": 3}


def test_query_reads_the_snapshot_not_the_generation_being_written(
    dispatcher: Dispatcher,
) -> None:
    assert publish(dispatcher, T1) == OK
    reply = fired(dispatcher.dispatch({"op": "query", "sql": "SELECT * FROM t1"}))
    assert reply["response_op"] == "error"
    assert reply["identity"] == IDENTITY
    assert "t1" in reply["error_message"]


@pytest.mark.parametrize("flag", [True, 1, "1", "true", "TRUE", "yes"])
def test_use_write_db_queries_the_generation_being_written(
    dispatcher: Dispatcher, flag: object
) -> None:
    assert publish(dispatcher, T1) == OK
    reply = fired(
        dispatcher.dispatch(
            {"op": "query", "sql": "SELECT a FROM t1 ORDER BY a", "use_write_db": flag}
        )
    )
    assert reply["response_op"] == "result_table"
    assert reply["table"]["rows"] == [("1",), ("22",)]


@pytest.mark.parametrize("flag", [False, 0, "0", "false", "no", ""])
def test_false_use_write_db_queries_the_snapshot(dispatcher: Dispatcher, flag: object) -> None:
    assert publish(dispatcher, T1) == OK
    reply = fired(
        dispatcher.dispatch({"op": "query", "sql": "SELECT a FROM t1", "use_write_db": flag})
    )
    assert reply["response_op"] == "error"


def test_sql_error_is_an_error_reply(dispatcher: Dispatcher) -> None:
    reply = fired(dispatcher.dispatch({"op": "query", "sql": "SELECT nope FROM nowhere"}))
    assert set(reply) == {"response_op", "identity", "error_message"}
    assert reply["response_op"] == "error"
    assert "nowhere" in reply["error_message"]


@pytest.mark.parametrize(
    "sql", ["DELETE FROM t1", "DROP TABLE t1", "SELECT 1; DELETE FROM t1", "PRAGMA user_version=5"]
)
def test_statement_that_writes_is_refused_and_changes_nothing(
    dispatcher: Dispatcher, sql: str
) -> None:
    assert publish(dispatcher, T1) == OK
    for use_write_db in (False, True):
        reply = fired(
            dispatcher.dispatch({"op": "query", "sql": sql, "use_write_db": use_write_db})
        )
        assert reply["response_op"] == "error", reply
    assert rows_of(dispatcher, "SELECT count(*) FROM t1", use_write_db=True) == [["2"]]


# ---------------------------------------------------------------- add_table_data


def test_add_table_data_replies_ok_and_rows_reach_the_writer_generation(
    dispatcher: Dispatcher,
) -> None:
    assert publish(dispatcher, T1) == OK
    assert rows_of(dispatcher, "SELECT a, name FROM t1 ORDER BY a", use_write_db=True) == [
        ["1", "alpha"],
        ["22", ""],
    ]


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        ({"op": "add_table_data", "table": T1}, "identity"),
        ({"op": "add_table_data", "identity": "h1"}, "table"),
        ({"op": "add_table_data", "identity": "h1", "table": [1, 2]}, "table"),
        ({"op": "add_table_data", "identity": "h1", "table": {**T1, "tablename": "bad-name"}}, "bad-name"),
        ({"op": "add_table_data", "identity": "h1", "table": {**T1, "rows": [[1]]}}, "rows[0]"),
        ({"op": "add_table_data", "identity": "h1", "table": {**T1, "column_types": ["int", "blob"]}}, "blob"),
        ({"op": "add_table_data", "identity": "h1", "persist": "maybe", "table": T1}, "persist"),
    ],
)  # fmt: skip
def test_malformed_publish_is_invalid_input_format(
    dispatcher: Dispatcher, request_: dict[str, Any], fragment: str
) -> None:
    reply = fired(dispatcher.dispatch(request_))
    assert set(reply) == {"response_op", "identity", "error_message"}
    assert reply["response_op"] == "error"
    assert reply["error_message"].startswith("Invalid input format: "), reply
    assert fragment in reply["error_message"]


def test_malformed_publish_stores_nothing(dispatcher: Dispatcher) -> None:
    bad = {**T1, "rows": [[1, "ok"], [2, "ok", "extra"]]}
    assert fired(dispatcher.dispatch({"op": "add_table_data", "identity": "h1", "table": bad}))[
        "error_message"
    ].startswith("Invalid input format: ")
    reply = fired(
        dispatcher.dispatch({"op": "query", "sql": "SELECT * FROM t1", "use_write_db": True})
    )
    assert reply["response_op"] == "error"


# A publish orjson decoded from a small body leaves its cells to SQLite's
# binding (dispatch(..., body_bytes)); it must end exactly like the full
# check. Bodies are decoded as the front ends do (decode_body: orjson, else
# the stdlib, which is how NaN, Infinity and lone surrogates get in; those
# always get the full check).
CELL_BODIES = [
    ('[[1, "x"], [2, "y"]]', "ok", [["1", "x"], ["2", "y"]]),
    ('[[true, "t"], [false, null]]', "ok", [["1", "t"], ["0", ""]]),
    ('[[NaN, "nan"], [Infinity, "inf"]]', "ok", [["", "nan"], ["inf", "inf"]]),
    ('[[1.5, "\\u00e9t\\u00e9"]]', "ok", [["1.5", "\u00e9t\u00e9"]]),
    ('[[1, "x"], [[1, 2], "y"]]', "rows[1], column 'a': unsupported cell list", None),
    ('[[1, {"k": 1}]]', "rows[0], column 'name': unsupported cell object", None),
    ('[[1, "x"], [9223372036854775808, "y"]]', "rows[1], column 'a': integer out of range", None),
    ('[[1, "x"], [2, "\\ud800"]]', "rows[1], column 'name': text is not valid Unicode", None),
    ('[[1, "x"], [2]]', "rows[1]: has 1 cells, expected 2", None),
    ('[[1, "x"], {"a": 1, "name": 2}]', "rows[1]: expected a list of 2 cells, got object", None),
    ('[[1, "x"], "ab"]', "rows[1]: expected a list of 2 cells, got string", None),
    ('{"a": 1}', "rows must be a list, got object", None),
]  # fmt: skip


@pytest.mark.parametrize(
    "body, plain",
    [
        (b'{"rows": [[1, "x", 2.5, null, true]]}', True),
        (b'{"rows": [[NaN]]}', False),
        (b'{"rows": [[-Infinity]]}', False),
        (b'{"rows": [["\\ud800"]]}', False),
        (b'{"rows": [[1e400]]}', False),
    ],
)
def test_decode_body_gives_the_length_only_for_plain_json(body: bytes, plain: bool) -> None:
    value, plain_bytes = decode_body(body)
    assert value == decode_json(body) or not plain  # NaN != NaN
    assert plain_bytes == (len(body) if plain else None)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("rows, outcome, stored", CELL_BODIES)
@pytest.mark.parametrize("with_size", [False, True])
def test_publish_cells_end_the_same_with_or_without_the_body_size(
    dispatcher: Dispatcher,
    rows: str,
    outcome: str,
    stored: list[list[str]] | None,
    with_size: bool,
    static: bool,
) -> None:
    head = b'{"op": "add_table_data", "identity": "h1", "static": ' + (
        b"true" if static else b"false"
    )
    table = b', "table": {"tablename": "t1", "column_names": ["a", "name"], '
    body = head + table + b'"column_types": ["integer", "text"], "rows": ' + rows.encode() + b"}}"
    request, plain_bytes = decode_body(body)
    reply = fired(dispatcher.dispatch(request, "http", plain_bytes if with_size else None))
    if outcome == "ok":
        assert reply == OK
        assert rows_of(dispatcher, "SELECT * FROM t1 ORDER BY rowid", use_write_db=True) == stored
    else:
        assert reply["response_op"] == "error", reply
        assert reply["error_message"].startswith("Invalid input format: "), reply
        assert outcome in reply["error_message"]
        sql = {"op": "query", "sql": "SELECT * FROM t1", "use_write_db": True}
        assert fired(dispatcher.dispatch(sql))["response_op"] == "error", "t1 must not exist"


def test_cells_are_checked_when_the_body_is_longer_than_the_cell_limit(
    engine: Engine,
) -> None:
    dispatcher = Dispatcher(engine, max_cell_bytes=10)
    body = encode_json(
        {"op": "add_table_data", "identity": "h1", "table": {**T1, "rows": [[1, "x" * 11]]}}
    )
    reply = fired(dispatcher.dispatch(decode_json(body), "zmq", len(body)))
    assert (
        "rows[0], column 'name': text of 11 bytes is longer than the limit of 10"
        in (reply["error_message"])
    )


def test_second_publish_from_same_identity_in_a_generation_is_ignored_with_error(
    dispatcher: Dispatcher,
) -> None:
    assert publish(dispatcher, T1) == OK
    reply = publish(dispatcher, {**T1, "rows": [[99, "again"]]})
    assert reply["response_op"] == "error"
    assert reply["identity"] == IDENTITY
    assert "already published" in reply["error_message"]
    assert "t1" in reply["error_message"] and "h1" in reply["error_message"]
    assert rows_of(dispatcher, "SELECT a FROM t1 ORDER BY a", use_write_db=True) == [["1"], ["22"]]


def test_same_identity_may_publish_again_in_the_next_generation(
    dispatcher: Dispatcher, engine: Engine, clock: Clock
) -> None:
    assert publish(dispatcher, T1) == OK
    rotate(engine, clock)
    assert publish(dispatcher, T1) == OK


def test_update_publish_from_same_identity_is_not_a_duplicate(dispatcher: Dispatcher) -> None:
    request = {"op": "add_table_data", "identity": "h1", "update": 1, "keycols": "a", "table": T1}
    assert fired(dispatcher.dispatch(request)) == OK
    changed = {**request, "table": {**T1, "rows": [[1, "changed"]]}}
    assert fired(dispatcher.dispatch(changed)) == OK
    assert rows_of(dispatcher, "SELECT a, name FROM t1 ORDER BY a", use_write_db=True) == [
        ["1", "changed"],
        ["22", ""],
    ]


# ---------------------------------------------------------------- get_table_list


def test_get_table_list_shape_lists_the_served_snapshot(
    dispatcher: Dispatcher, engine: Engine, clock: Clock
) -> None:
    assert publish(dispatcher, T1) == OK
    before = fired(dispatcher.dispatch({"op": "get_table_list"}))
    assert set(before) == {"response_op", "identity", "tables"}
    assert before["response_op"] == "tables_list"
    assert before["identity"] == IDENTITY
    assert "t1" not in before["tables"]

    rotate(engine, clock)
    after = fired(dispatcher.dispatch({"op": "get_table_list"}, "zmq"))
    assert after["response_op"] == "tables_list"
    assert after["tables"]["t1"] == {"nr_rows": 2, "updates": 1, "last_update_epoch": 1000.0}


# ---------------------------------------------------------------- name_value_update


def test_name_value_update_upserts_a_row_keyed_by_identity(dispatcher: Dispatcher) -> None:
    def nvu(name: str, value: object, identity: str) -> Any:
        request = {"op": "name_value_update", "name": name, "value": value, "identity": identity}
        return fired(dispatcher.dispatch(request))

    assert nvu("nv.temp", "42", "h1") == OK
    assert nvu("nv.temp", 43, "h1") == OK
    assert nvu("nv.temp", "7.5", "h2") == OK
    assert nvu("nv.owner", "bob", "h1") == OK
    rows = rows_of(
        dispatcher, "SELECT identity, temp, owner FROM nv ORDER BY identity", use_write_db=True
    )
    assert rows == [["h1", "43", "bob"], ["h2", "7.5", ""]]


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"value": "1", "identity": "h1"}, "'name' must be TABLE.COLUMN"),
        ({"name": "nv", "value": "1", "identity": "h1"}, "'name' must be TABLE.COLUMN"),
        ({"name": "a.b.c", "value": "1", "identity": "h1"}, "'name' must be TABLE.COLUMN"),
        ({"name": "nv.temp", "identity": "h1"}, "'value' is required"),
        ({"name": "nv.temp", "value": [1], "identity": "h1"}, "'value' is required"),
        ({"name": "nv.temp", "value": "1", "identity": 5}, "'identity' must be text"),
        ({"name": "n-v.temp", "value": "1", "identity": "h1"}, "n-v"),
        ({"name": "nv.te mp", "value": "1", "identity": "h1"}, "te mp"),
    ],
)
def test_malformed_name_value_update_is_invalid_input_format(
    dispatcher: Dispatcher, fields: dict[str, Any], fragment: str
) -> None:
    reply = fired(dispatcher.dispatch({"op": "name_value_update", **fields}))
    assert reply["response_op"] == "error"
    assert reply["error_message"].startswith("Invalid input format: "), reply
    assert fragment in reply["error_message"]


# ---------------------------------------------------------------- add_csv_table_data

CSV_T3 = b"identity=h3\nt3\na,b\nint,text\nA,B\n1,x\n2,\n"


def test_csv_publish_with_identity_in_options_line_replies_ok(dispatcher: Dispatcher) -> None:
    assert fired(dispatcher.add_csv_table_data(CSV_T3)) == OK
    assert rows_of(dispatcher, "SELECT a, b FROM t3 ORDER BY a", use_write_db=True) == [
        ["1", "x"],
        ["2", ""],
    ]


def test_csv_publish_takes_identity_from_the_argument(
    dispatcher: Dispatcher, engine: Engine, clock: Clock
) -> None:
    assert fired(dispatcher.add_csv_table_data(b"1\nt4\na\nint\nA\n5\n", "h4")) == OK
    rotate(engine, clock)
    assert rows_of(dispatcher, "SELECT identity FROM qasino_server_connections") == [["h4"]]


def test_csv_publish_without_identity_is_invalid_input_format(dispatcher: Dispatcher) -> None:
    reply = fired(dispatcher.add_csv_table_data(b"1\nt4\na\nint\nA\n5\n"))
    assert reply["response_op"] == "error"
    assert reply["identity"] == IDENTITY
    assert reply["error_message"].startswith("Invalid input format: ")
    assert "identity" in reply["error_message"]


def test_csv_publish_with_a_bad_line_names_it_and_stores_nothing(dispatcher: Dispatcher) -> None:
    body = b"identity=h3\nt3\na,b\nint,text\nA,B\n1,x\n2,y,extra\n"
    reply = fired(dispatcher.add_csv_table_data(body))
    assert reply["response_op"] == "error"
    assert reply["error_message"].startswith("Invalid input format: line 7")
    reply = fired(
        dispatcher.dispatch({"op": "query", "sql": "SELECT * FROM t3", "use_write_db": True})
    )
    assert reply["response_op"] == "error"


def test_csv_publish_of_invalid_utf8_is_invalid_input_format(dispatcher: Dispatcher) -> None:
    reply = fired(dispatcher.add_csv_table_data(b"identity=h3\nt3\na\ntext\nA\n\xff\xfe\n"))
    assert reply["error_message"].startswith("Invalid input format: ")


def test_duplicate_csv_publish_is_ignored_with_error(dispatcher: Dispatcher) -> None:
    assert fired(dispatcher.add_csv_table_data(CSV_T3)) == OK
    reply = fired(dispatcher.add_csv_table_data(CSV_T3))
    assert reply["response_op"] == "error"
    assert "already published" in reply["error_message"]


# ---------------------------------------------------------------- query_text


def test_query_text_is_the_text_rendering(dispatcher: Dispatcher) -> None:
    assert publish(dispatcher, T1) == OK
    text = fired(dispatcher.query_text("SELECT a, name FROM t1 ORDER BY a", use_write_db=True))
    assert text == (
        " a   name\n"
        "==  =====\n"
        " 1  alpha\n"
        "22       \n"
        "2 rows returned\n"
    )  # fmt: skip


def test_query_text_of_a_sql_error_is_one_sql_error_line(dispatcher: Dispatcher) -> None:
    text = fired(dispatcher.query_text("SELECT nope FROM nowhere"))
    assert text.startswith("SQL error: ")
    assert text.endswith("\n") and text.count("\n") == 1
    assert "nowhere" in text


def test_query_text_of_a_refused_statement_is_sql_error(dispatcher: Dispatcher) -> None:
    assert fired(dispatcher.query_text("DROP TABLE qasino_server_info")).startswith("SQL error: ")


@pytest.mark.parametrize("sql", [None, "", "  "])
def test_query_text_without_sql_is_sql_error_must_specify(
    dispatcher: Dispatcher, sql: str | None
) -> None:
    assert fired(dispatcher.query_text(sql)) == "SQL error: Must specify 'sql' param\n"


def test_query_text_of_unexpected_failure_is_sql_error_internal(
    dispatcher: Dispatcher, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "query_then", lambda *a: fail(ValueError("disk on fire")))
    assert fired(dispatcher.query_text("SELECT 1")) == "SQL error: Internal error: disk on fire\n"


# ---------------------------------------------------------------- stats counters


def test_update_stats_count_publishes_refused_at_parse_time(
    dispatcher: Dispatcher, engine: Engine, clock: Clock
) -> None:
    assert publish(dispatcher, T1) == OK  # 2 rows, completed
    bad_json = {**T1, "tablename": "bad-name", "rows": [[1, "a"], [2, "b"], [3, "c"]]}
    assert publish(dispatcher, bad_json)["response_op"] == "error"  # 3 rows, refused
    bad_csv = b"identity=h3\nt3\na\nint\nA\nnot-a-number\n"
    assert fired(dispatcher.add_csv_table_data(bad_csv))["response_op"] == "error"
    rotate(engine, clock)
    reply = fired(
        dispatcher.dispatch({"op": "query", "sql": "SELECT * FROM qasino_server_update_stats"})
    )
    assert reply["table"]["column_names"] == [
        "updates_received",
        "updates_completed",
        "update_errors",
        "inserts_received",
        "inserts_completed",
    ]
    assert reply["table"]["rows"] == [("3", "1", "2", "5", "2")]


def test_sql_stats_count_a_query_without_sql_as_an_error(
    dispatcher: Dispatcher, engine: Engine, clock: Clock
) -> None:
    fired(dispatcher.dispatch({"op": "query"}))
    fired(dispatcher.dispatch({"op": "query", "sql": "SELECT 1"}))
    rotate(engine, clock)
    assert rows_of(
        dispatcher, "SELECT sql_received, sql_completed, sql_errors FROM qasino_server_sql_stats"
    ) == [["2", "1", "1"]]

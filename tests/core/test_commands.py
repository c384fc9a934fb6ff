"""Classifying client statements (PROTOCOL.md "Queries")."""

from __future__ import annotations

import apsw
import pytest

from qasino.core.commands import Command, parse_command
from qasino.core.errors import QueryError, QueryRefused

INTERNAL_SCHEMA = """
CREATE TABLE qasino_server_info(
    generation_number INTEGER, generation_duration_s INTEGER, generation_start_epoch REAL);
CREATE TABLE qasino_server_tables(
    tablename TEXT, nr_rows INTEGER, nr_updates INTEGER, last_update_epoch REAL,
    static INTEGER);
CREATE TABLE qasino_server_connections(
    identity TEXT, nr_tables INTEGER, last_update_epoch REAL);
CREATE TABLE qasino_server_views(viewname TEXT, loaded INTEGER, errormsg TEXT, view TEXT);
CREATE TABLE qasino_server_sql_stats(
    sql_received INTEGER, sql_completed INTEGER, sql_errors INTEGER);
CREATE TABLE qasino_server_update_stats(
    updates_received INTEGER, updates_completed INTEGER, update_errors INTEGER,
    inserts_received INTEGER, inserts_completed INTEGER);
INSERT INTO qasino_server_info VALUES (1382105093, 30, 1382105093);
INSERT INTO qasino_server_tables VALUES
    ('zeta', 3, 1, 1382105080, 0),
    ('alpha', 10, 2, 1382105090.5, 0),
    ('it''s_odd', 1, 1, 1382105091, 0),
    ('settings', 4, 1, 1000000000, 1),
    ('qasino_server_tables', 4, 1, 1382105093, 0);
INSERT INTO qasino_server_connections VALUES
    ('host2', 2, 1382105090), ('host1', 1, 1382105080);
INSERT INTO qasino_server_views VALUES
    ('v_ok', 1, NULL, 'CREATE VIEW v_ok AS SELECT 1'),
    ('V_BAD', 0, 'no such table: nope', 'CREATE VIEW V_BAD AS SELECT * FROM nope');
INSERT INTO qasino_server_sql_stats VALUES (5, 4, 1);
INSERT INTO qasino_server_update_stats VALUES (7, 7, 0, 70, 70);
"""


def make_internal_db() -> apsw.Connection:
    """An in-memory DB with the six internal tables of PROTOCOL.md and a few rows."""
    connection = apsw.Connection(":memory:")
    connection.execute(INTERNAL_SCHEMA)
    return connection


def run(command: Command) -> tuple[list[str], list[tuple[object, ...]]]:
    """Run a shortcut's SQL; return its column names and rows."""
    cursor = make_internal_db().cursor()
    cursor.execute(command.sql, command.params)
    try:
        names = [name for name, _decl in cursor.getdescription()]
    except apsw.ExecutionCompleteError:  # zero rows: apsw has no description then
        names = []
    rows = [tuple(row) for row in cursor]
    return names, rows


# --- SELECT ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 1",
        "select 1",
        "  \n\tSeLeCt 1",
        "WITH a AS (SELECT 1) SELECT * FROM a",
        "VALUES (1)",
    ],
)
def test_select_with_and_values_are_accepted_as_select(text: str) -> None:
    command = parse_command(text)
    assert command.kind == "select"
    assert command.params == ()
    assert command.name is None


def test_select_sql_is_the_statement_without_trailing_semicolon_and_whitespace() -> None:
    assert parse_command("SELECT * FROM t;").sql == "SELECT * FROM t"
    assert parse_command("  SELECT * FROM t ; \n").sql == "SELECT * FROM t"


def test_select_sql_drops_several_trailing_semicolons() -> None:
    assert parse_command("SELECT 1;;; ;\n").sql == "SELECT 1"


def test_select_keeps_semicolons_inside_the_statement() -> None:
    assert parse_command("SELECT ';' AS x;").sql == "SELECT ';' AS x"


@pytest.mark.parametrize(
    "text",
    [
        "-- a comment\nSELECT 1",
        "/* block */ SELECT 1",
        "/* multi\nline */\n-- and a line\n  select 1;",
    ],
)
def test_select_after_leading_comments_is_accepted(text: str) -> None:
    command = parse_command(text)
    assert command.kind == "select"
    assert command.sql == text.rstrip("; \n")


@pytest.mark.parametrize(
    "text",
    [
        "INSERT INTO t VALUES (1)",
        "update t SET a = 1",
        "DELETE FROM t",
        "DROP TABLE t",
        "CREATE TABLE t(a)",
        "ATTACH DATABASE 'x.db' AS x",
        "PRAGMA journal_mode = wal",
        "pragma table_info(t)",
        "VACUUM",
        "REPLACE INTO t VALUES (1)",
        "-- SELECT\nDROP TABLE t",
        "/* SELECT */ DELETE FROM t",
        "EXPLAIN SELECT 1",
    ],
)
def test_statements_other_than_select_are_refused(text: str) -> None:
    with pytest.raises(QueryRefused, match="Only SELECT"):
        parse_command(text)


@pytest.mark.parametrize("text", ["SELEC 1", "SELECTX 1", "(SELECT 1)", "help"])
def test_unknown_first_words_go_to_sqlite_for_its_syntax_error(text: str) -> None:
    """Not SQL SQLite knows: the store's guarded prepare reports SQLite's own
    syntax error rather than a refusal that hides the typo."""
    command = parse_command(text)
    assert command.kind == "select" and command.sql == text


@pytest.mark.parametrize("text", ["", "   ", ";", " ;; \n", "-- just a comment", "/* x */"])
def test_empty_statement_is_an_error(text: str) -> None:
    with pytest.raises(QueryError, match="Empty statement"):
        parse_command(text)


# --- SHOW -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["SHOW tables", "show tables;", "SHOW TABLES ;", "  Show \n\t Tables;;", "-- hi\nSHOW tables"],
)
def test_show_tables_in_any_case_and_spacing(text: str) -> None:
    command = parse_command(text)
    assert command.kind == "show_tables"
    assert command.params == ()


def test_show_tables_returns_documented_columns_ordered_by_tablename() -> None:
    names, rows = run(parse_command("SHOW tables;"))
    assert names == [
        "tablename",
        "nr_rows",
        "nr_updates",
        "last_update_epoch",
        "static",
        "last_update_datetime",
    ]
    tablenames = [str(row[0]) for row in rows]
    assert tablenames == sorted(tablenames)
    assert ("alpha", 10, 2, 1382105090.5, 0, "2013-10-18 14:04:50.500 UTC") in rows
    assert ("settings", 4, 1, 1000000000, 1, "2001-09-09 01:46:40.000 UTC") in rows


@pytest.mark.parametrize(
    "text",
    [
        "SHOW tables LIKE 'qasino%'",
        "show tables like 'qasino%';",
        "SHOW  tables\nLIKE   'qasino%' ;",
    ],
)
def test_show_tables_like_binds_the_pattern_as_a_parameter(text: str) -> None:
    command = parse_command(text)
    assert command.kind == "show_tables"
    assert command.params == ("qasino%",)
    assert "qasino%" not in command.sql
    names, rows = run(command)
    assert names[0] == "tablename"
    assert [row[0] for row in rows] == ["qasino_server_tables"]


def test_show_tables_like_unescapes_doubled_quotes_into_the_parameter() -> None:
    command = parse_command("SHOW tables LIKE 'it''s%';")
    assert command.params == ("it's%",)
    assert "it" not in command.sql
    _names, rows = run(command)
    assert [row[0] for row in rows] == ["it's_odd"]


def test_show_tables_like_with_injection_attempt_stays_a_parameter() -> None:
    command = parse_command("SHOW tables LIKE 'x'' OR 1=1 --'")
    assert command.params == ("x' OR 1=1 --",)
    _names, rows = run(command)
    assert rows == []


@pytest.mark.parametrize(
    "text", ["SHOW tables LIKE pat", "SHOW tables LIKE 'unterminated", "SHOW tables LIKE 'a' 'b'"]
)
def test_show_tables_like_without_one_quoted_literal_is_an_error(text: str) -> None:
    with pytest.raises(QueryError, match="LIKE"):
        parse_command(text)


@pytest.mark.parametrize("text", ["SHOW connections", "show CONNECTIONS;", " SHOW\nconnections ; "])
def test_show_connections_returns_documented_columns_ordered_by_identity(text: str) -> None:
    command = parse_command(text)
    assert command.kind == "show_connections"
    names, rows = run(command)
    assert names == ["identity", "nr_tables", "last_update_epoch", "last_update_datetime"]
    assert rows == [
        ("host1", 1, 1382105080, "2013-10-18 14:04:40.000 UTC"),
        ("host2", 2, 1382105090, "2013-10-18 14:04:50.000 UTC"),
    ]


@pytest.mark.parametrize("text", ["SHOW info", "show INFO;", "Show   Info;;"])
def test_show_info_returns_documented_columns(text: str) -> None:
    command = parse_command(text)
    assert command.kind == "show_info"
    names, rows = run(command)
    assert names == [
        "generation_number",
        "generation_duration_s",
        "generation_start_epoch",
        "generation_start_datetime",
    ]
    assert rows == [(1382105093, 30, 1382105093, "2013-10-18 14:04:53.000 UTC")]


@pytest.mark.parametrize("text", ["SHOW views", "show VIEWS;", "SHOW\tviews ;"])
def test_show_views_returns_name_loaded_and_error_ordered_by_name(text: str) -> None:
    command = parse_command(text)
    assert command.kind == "show_views"
    names, rows = run(command)
    assert names == ["viewname", "loaded", "errormsg"]
    assert rows == [("V_BAD", 0, "no such table: nope"), ("v_ok", 1, None)]


@pytest.mark.parametrize("text", ["SHOW", "SHOW foo", "SHOW info extra", "SHOW views LIKE 'a'"])
def test_unknown_show_forms_are_an_error(text: str) -> None:
    with pytest.raises(QueryError):
        parse_command(text)


# --- DESC -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["DESC mytable", "desc mytable;", "DESCRIBE mytable", "describe  mytable ;;", "Desc\nmytable"],
)
def test_desc_table_names_the_table_and_leaves_sql_to_the_store(text: str) -> None:
    assert parse_command(text) == Command(kind="desc_table", sql="", params=(), name="mytable")


def test_desc_of_a_table_called_view_is_desc_table() -> None:
    command = parse_command("DESC view;")
    assert command.kind == "desc_table"
    assert command.name == "view"


def test_desc_of_a_table_whose_name_starts_with_view_is_desc_table() -> None:
    assert parse_command("DESC viewers").name == "viewers"


@pytest.mark.parametrize(
    "text", ["DESC VIEW v_ok", "desc view v_ok;", "DESCRIBE VIEW v_ok", "Desc  View\n v_ok ;"]
)
def test_desc_view_returns_the_views_definition_in_a_view_column(text: str) -> None:
    command = parse_command(text)
    assert command.kind == "desc_view"
    assert command.name == "v_ok"
    assert command.params == ("v_ok",)
    names, rows = run(command)
    assert names == ["view"]
    assert rows == [("CREATE VIEW v_ok AS SELECT 1",)]


def test_desc_view_of_unknown_view_returns_no_rows() -> None:
    _names, rows = run(parse_command("DESC VIEW nothere"))
    assert rows == []


def test_desc_view_matches_the_viewname_case_insensitively() -> None:
    _names, rows = run(parse_command("DESC VIEW v_bad"))
    assert rows == [("CREATE VIEW V_BAD AS SELECT * FROM nope",)]


@pytest.mark.parametrize(
    "text",
    [
        "DESC",
        "DESC 1table",
        "DESC my-table",
        "DESC t; DROP TABLE t",
        'DESC "quoted"',
        "DESC a b",
        "DESC VIEW bad-name",
        "DESC VIEW a b",
    ],
)
def test_desc_with_an_invalid_name_is_an_error(text: str) -> None:
    with pytest.raises(QueryError):
        parse_command(text)


def test_desc_error_is_a_query_error_not_a_refusal() -> None:
    with pytest.raises(QueryError) as caught:
        parse_command("DESC 1table")
    assert not isinstance(caught.value, QueryRefused)

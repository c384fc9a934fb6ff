"""Only reading statements get through Store.query (PROTOCOL.md "Queries"),
on the snapshot and on the writer generation alike; the time limit and the
row cap."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from qasino.core.errors import QueryError, QueryRefused, QueryTimeout
from qasino.core.model import Publish, PublishOptions, Table
from qasino.store.query import QueryLimits, run_select
from qasino.store.sqlite import MAX_SQL_LENGTH, open_reader
from qasino.store.store import Store, StoreConfig

NOW = 1_700_000_000.0

RUNAWAY = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


def _table(name: str, rows: list[list[object]]) -> Table:
    return Table(name, ("a", "b"), ("INTEGER", "TEXT"), rows)  # type: ignore[arg-type]


def make_store(db_dir: Path, **config: object) -> Store:
    """t in the snapshot (1, 2) and in the writer generation (3); static s (9)."""
    store = Store(StoreConfig(db_dir=str(db_dir), **config), now=NOW)  # type: ignore[arg-type]
    opts = PublishOptions(identity="host1")
    store.publish(Publish(_table("t", [[1, "x"], [2, "y"]]), opts), NOW + 1)
    store.publish(Publish(_table("s", [[9, "static"]]), PublishOptions("host1", static=True)), NOW)
    store.rotate(NOW + 30)
    store.publish(Publish(_table("t", [[3, "z"]]), opts), NOW + 31)
    return store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = make_store(tmp_path / "db")
    yield s
    s.close()


def state(store: Store) -> dict[str, object]:
    """Everything a refused statement could have changed, as seen by queries."""
    out: dict[str, object] = {}
    for use_write_db in (False, True):
        key = "writer" if use_write_db else "snapshot"

        def q(sql: str, use_write_db: bool = use_write_db) -> list[tuple[object, ...]]:
            return [tuple(r) for r in store.query(sql, use_write_db=use_write_db).rows]

        out[key + ".t"] = q("SELECT a, b FROM t ORDER BY a")
        out[key + ".s"] = q("SELECT a, b FROM s ORDER BY a")
        out[key + ".schema"] = q("SELECT type, name, sql FROM main.sqlite_schema ORDER BY name")
        out[key + ".static_schema"] = q(
            "SELECT type, name, sql FROM static.sqlite_schema ORDER BY name"
        )
        out[key + ".temp_schema"] = q("SELECT type, name FROM temp.sqlite_schema ORDER BY name")
    return out


REFUSED = [
    "INSERT INTO t VALUES (10, 'new')",
    "INSERT INTO s VALUES (10, 'new')",
    "UPDATE t SET b = 'changed'",
    "UPDATE static.s SET b = 'changed'",
    "DELETE FROM t",
    "DELETE FROM s",
    "REPLACE INTO t VALUES (1, 'replaced')",
    "CREATE TABLE x (a INTEGER)",
    "CREATE TEMP TABLE x (a INTEGER)",
    "CREATE TEMPORARY TABLE x AS SELECT * FROM t",
    "CREATE VIEW v AS SELECT 1",
    "CREATE TEMP VIEW v AS SELECT 1",
    "CREATE INDEX i ON t (a)",
    "CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM t; END",
    "CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM t; END",
    "DROP TABLE t",
    "DROP TABLE s",
    "DROP TABLE IF EXISTS qasino_server_info",
    "ALTER TABLE t ADD COLUMN c TEXT",
    "ALTER TABLE t RENAME TO t2",
    "DETACH static",
    "DETACH DATABASE static",
    "VACUUM",
    "PRAGMA journal_mode=delete",
    "PRAGMA writable_schema=1",
    "PRAGMA static.journal_mode=delete",
    "PRAGMA table_info(t)",
    "PRAGMA user_version",
    "PRAGMA user_version = 5",
    "SELECT load_extension('x')",
    "SELECT load_extension('/tmp/nonexistent.so', 'entry')",
    "SELECT 1; DROP TABLE t",
    "SELECT 1; SELECT 2",
    "SELECT * FROM t; DELETE FROM t",
    "VALUES (1); DELETE FROM t",
    "WITH x AS (SELECT 1) DELETE FROM t",
    "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM t",
    "WITH x AS (SELECT 1) UPDATE t SET b = 'cte'",
    "WITH x AS (SELECT 1) REPLACE INTO t VALUES (1, 'cte')",
    "BEGIN",
    "BEGIN IMMEDIATE",
    "COMMIT",
    "END",
    "ROLLBACK",
    "SAVEPOINT sp",
    "RELEASE sp",
    "/* */ DROP TABLE t",
    "/* select */ DROP TABLE t",
    "SELECT 1 /* ; */; DROP TABLE t",
    "SELECT 1 -- ;\n; DROP TABLE t",
    "-- x\nDELETE FROM t",
    "-- SELECT\nDELETE FROM t",
    "EXPLAIN SELECT 1",
    "EXPLAIN QUERY PLAN SELECT * FROM t",
    "ANALYZE",
    "REINDEX",
    "SELECT 1 UNION ALL DELETE FROM t",
    "",
    "  ;  ",
    "-- only a comment",
]


@pytest.mark.parametrize("use_write_db", [False, True], ids=["snapshot", "writer"])
@pytest.mark.parametrize("sql", REFUSED)
def test_refused_statement_raises_and_changes_nothing(
    store: Store, sql: str, use_write_db: bool
) -> None:
    before = state(store)
    with pytest.raises(QueryError):
        store.query(sql, use_write_db=use_write_db)
    assert state(store) == before


@pytest.mark.parametrize("use_write_db", [False, True], ids=["snapshot", "writer"])
@pytest.mark.parametrize(
    "template",
    ["ATTACH DATABASE '{path}' AS x", "ATTACH '{path}' AS x", "VACUUM INTO '{path}'"],
)
def test_statements_naming_a_file_refused_and_file_not_created(
    store: Store, tmp_path: Path, template: str, use_write_db: bool
) -> None:
    target = tmp_path / "created.sqlite"
    before = state(store)
    with pytest.raises(QueryError):
        store.query(template.format(path=target), use_write_db=use_write_db)
    assert not target.exists()
    assert state(store) == before


@pytest.mark.parametrize("use_write_db", [False, True], ids=["snapshot", "writer"])
def test_huge_literal_over_the_sql_length_limit_is_refused(
    store: Store, use_write_db: bool
) -> None:
    sql = "SELECT '" + "a" * (MAX_SQL_LENGTH + 1) + "'"
    with pytest.raises(QueryError):
        store.query(sql, use_write_db=use_write_db)
    assert store.query("SELECT count(*) FROM t", use_write_db=use_write_db).rows == [
        (1 if use_write_db else 2,)
    ]


# Statements that SQLite itself finds harmless: only the keyword filter refuses them.
HARMLESS_TO_SQLITE = {"REINDEX", "", "  ;  ", "-- only a comment"}


@pytest.mark.parametrize(
    "sql",
    [q for q in REFUSED if q not in HARMLESS_TO_SQLITE]
    + ["ATTACH DATABASE '{path}' AS x", "VACUUM INTO '{path}'"],
)
def test_sqlite_guard_alone_refuses_the_statement(store: Store, tmp_path: Path, sql: str) -> None:
    """Defence in depth: without the keyword filter of parse_command, the
    authorizer and the read-only checks of run_select still refuse it."""
    target = tmp_path / "created.sqlite"
    path = os.path.join(store.gen_dir, f"gen-{store.snapshot_info().generation_number}.sqlite")
    conn = open_reader(path, store.static.path)
    try:
        with pytest.raises(QueryError):
            run_select(conn, sql.format(path=target))
        assert conn.execute("SELECT a FROM t ORDER BY a").fetchall() == [(1,), (2,)]
        assert conn.execute("SELECT a FROM s").fetchall() == [(9,)]
    finally:
        conn.close()
    assert not target.exists()


def test_refusals_are_counted_as_sql_errors(store: Store) -> None:
    for sql in ("DROP TABLE t", "SELECT 1; SELECT 2", "WITH x AS (SELECT 1) DELETE FROM t"):
        with pytest.raises(QueryError):
            store.query(sql)
    store.query("SELECT 1")
    store.rotate(NOW + 60)
    assert store.query("SELECT * FROM qasino_server_sql_stats").rows == [(4, 1, 3)]


def test_refused_statement_on_a_pooled_connection_leaves_it_usable(store: Store) -> None:
    """DETACH / CREATE TEMP refused: the next query on the pooled connection still
    sees the static DB and no temp objects."""
    for sql in ("DETACH static", "CREATE TEMP VIEW t AS SELECT 'shadow' AS a, 0 AS b"):
        with pytest.raises(QueryError):
            store.query(sql)
        assert store.query("SELECT a FROM s").rows == [(9,)]
        assert store.query("SELECT a FROM t ORDER BY a").rows == [(1,), (2,)]


# --- allowed -------------------------------------------------------------------------


@pytest.mark.parametrize("use_write_db", [False, True], ids=["snapshot", "writer"])
@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1 AS one -- trailing comment", [(1,)]),
        ("SELECT 1 AS one /* trailing */", [(1,)]),
        ("SELECT 1 AS one;", [(1,)]),
        ("SELECT 1 AS one ;; ", [(1,)]),
        ("SELECT 1 AS one; -- done", [(1,)]),
        ("select 1 as one; /* done */ ;", [(1,)]),
        ("  /* leading */ SELECT 1 AS one", [(1,)]),
        ("-- leading\nSELECT 1 AS one", [(1,)]),
        (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10)"
            " SELECT count(*), sum(x) FROM c",
            [(10, 55)],
        ),
        ("VALUES (1, 'a'), (2, 'b')", [(1, "a"), (2, "b")]),
        ("SELECT ';' AS semi, '--' AS dashes", [(";", "--")]),
        ("SELECT 'DROP TABLE t; DELETE FROM t' AS text", [("DROP TABLE t; DELETE FROM t",)]),
        ("SELECT a FROM s", [(9,)]),
        ("SELECT a FROM static.s", [(9,)]),
    ],
)
def test_reading_statement_is_allowed(
    store: Store, sql: str, expected: list[tuple[object, ...]], use_write_db: bool
) -> None:
    assert [tuple(r) for r in store.query(sql, use_write_db=use_write_db).rows] == expected


def test_select_joining_generation_and_static_tables_is_allowed(store: Store) -> None:
    result = store.query("SELECT t.a, s.b FROM t CROSS JOIN s ORDER BY t.a")
    assert result.rows == [(1, "static"), (2, "static")]


# --- time limit and row cap ----------------------------------------------------------


class JumpingClock:
    """A monotonic clock that jumps far ahead once the query has started."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        if self.calls > 1:  # the first call sets the deadline
            self.now += 1000.0
        return self.now


def test_runaway_query_is_stopped_at_the_deadline_and_the_next_query_works(
    tmp_path: Path,
) -> None:
    clock = JumpingClock()
    s = Store(
        StoreConfig(db_dir=str(tmp_path / "db"), limits=QueryLimits(timeout_s=5.0)),
        now=NOW,
        monotonic=clock,
    )
    try:
        with pytest.raises(QueryTimeout, match="time limit of 5 seconds"):
            s.query(RUNAWAY)
        assert clock.calls == 2  # stopped at the first look past the deadline
        clock.calls = 0
        with pytest.raises(QueryTimeout):
            s.query(RUNAWAY, use_write_db=True)
        assert s.query("SELECT 42").rows == [(42,)]
        assert s.query("SELECT 42", use_write_db=True).rows == [(42,)]
        s.rotate(NOW + 30)
        assert s.query("SELECT sql_errors FROM qasino_server_sql_stats").rows == [(2,)]
    finally:
        s.close()


def test_query_within_the_deadline_is_not_stopped(tmp_path: Path) -> None:
    s = Store(
        StoreConfig(db_dir=str(tmp_path / "db"), limits=QueryLimits(timeout_s=5.0)),
        now=NOW,
        monotonic=lambda: 0.0,
    )
    try:
        sql = (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000)"
            " SELECT count(*) FROM c"
        )
        assert s.query(sql).rows == [(100000,)]
    finally:
        s.close()


def test_runaway_query_times_out_on_the_real_clock(tmp_path: Path) -> None:
    s = Store(
        StoreConfig(db_dir=str(tmp_path / "db"), limits=QueryLimits(timeout_s=0.2)),
        now=NOW,
    )
    try:
        with pytest.raises(QueryTimeout):
            s.query(RUNAWAY)
        assert s.query("SELECT 1").rows == [(1,)]
    finally:
        s.close()


@pytest.mark.parametrize("use_write_db", [False, True], ids=["snapshot", "writer"])
def test_result_is_cut_at_max_rows_and_marked_truncated(tmp_path: Path, use_write_db: bool) -> None:
    s = Store(StoreConfig(db_dir=str(tmp_path / "db"), limits=QueryLimits(max_rows=5)), now=NOW)
    try:
        rows = [[i, str(i)] for i in range(10)]
        s.publish(Publish(_table("t", rows), PublishOptions("host1")), NOW + 1)
        s.rotate(NOW + 30)
        if use_write_db:
            s.publish(Publish(_table("t", rows), PublishOptions("host1")), NOW + 31)
        result = s.query("SELECT a FROM t ORDER BY a", use_write_db=use_write_db)
        assert result.rows == [(0,), (1,), (2,), (3,), (4,)]
        assert result.truncated is True
        exact = s.query("SELECT a FROM t WHERE a < 5", use_write_db=use_write_db)
        assert len(exact.rows) == 5
        assert exact.truncated is False
    finally:
        s.close()


# --- the result byte cap ----------------------------------------------------------

SERIES = (
    "WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM s WHERE value < {0}) "
    "SELECT {1} FROM s"
)


@pytest.mark.parametrize(
    "sql",
    [
        SERIES.format(4, "printf('%.*c', 300, 'x')"),  # text
        SERIES.format(4, "zeroblob(150)"),  # blobs, shown as hex
        SERIES.format(200, "value, value * 0.5, NULL"),  # numbers
    ],
)
def test_a_result_over_the_byte_cap_is_refused_not_cut(sql: str) -> None:
    conn = apsw.Connection(":memory:")
    with pytest.raises(QueryError, match="result larger than 1000 bytes"):
        run_select(conn, sql, limits=QueryLimits(max_bytes=1000), guard=False)


def test_a_result_under_the_byte_cap_is_whole() -> None:
    conn = apsw.Connection(":memory:")
    sql = SERIES.format(4, "printf('%.*c', 100, 'x'), zeroblob(50)")
    result = run_select(conn, sql, limits=QueryLimits(max_bytes=2000), guard=False)
    assert len(result.rows) == 4 and not result.truncated


@pytest.mark.parametrize(
    ("sql", "message"),
    [("SELEC 1;", 'near "SELEC": syntax error'), ("help;", 'near "help": syntax error')],
)
def test_a_typo_gets_sqlites_syntax_error_not_a_refusal(
    store: Store, sql: str, message: str
) -> None:
    with pytest.raises(QueryError) as info:
        store.query(sql)
    assert not isinstance(info.value, QueryRefused)
    assert message in info.value.message

"""Big tables go in many rows per INSERT statement (``schema.insert_rows``):
what a table holds afterwards must be exactly what one row per statement
gives, for every size around the chunk sizes, every insert mode, and wide
tables whose chunks SQLite's limit on bound values makes smaller."""

from __future__ import annotations

from collections.abc import Iterator

import apsw
import pytest

from qasino.core.model import Table
from qasino.store import schema
from qasino.store.schema import CHUNK_ROWS, insert_rows

SIZES = sorted(
    {0, 1, 2, CHUNK_ROWS[-1] - 1, CHUNK_ROWS[-1], CHUNK_ROWS[-1] + 1}
    | {CHUNK_ROWS[0] - 1, CHUNK_ROWS[0], CHUNK_ROWS[0] + 1, CHUNK_ROWS[0] + CHUNK_ROWS[-1] + 3}
    | {1000, 10_000}
)


def cells(i: int) -> list[object]:
    """One row of every storage class (and a bool, stored as an integer)."""
    return [
        f"host{i}",
        i,
        i / 7.0,
        None if i % 5 == 0 else f"é{i}",
        i % 2 == 0,
        -(2**63) + i,
        float(i),
    ]


COLUMNS = ("name", "n", "ratio", "label", "even", "big", "whole")


def table(nrows: int, offset: int = 0) -> Table:
    return Table(
        tablename="t",
        column_names=COLUMNS,
        column_types=("TEXT", "INTEGER", "REAL", "TEXT", "INTEGER", "INTEGER", "REAL"),
        rows=[cells(offset + i) for i in range(nrows)],
    )


@pytest.fixture
def conn() -> Iterator[apsw.Connection]:
    c = apsw.Connection(":memory:")
    yield c
    c.close()


def make(conn: apsw.Connection, name: str, keyed: bool = False) -> None:
    conn.execute(
        f'CREATE TABLE "{name}" (name TEXT, n INTEGER, ratio REAL, label TEXT, '
        "even INTEGER, big INTEGER, whole REAL)"
    )
    if keyed:
        conn.execute(f'CREATE UNIQUE INDEX "{name}_k" ON "{name}" (name)')


def dump(conn: apsw.Connection, name: str) -> list[tuple[object, ...]]:
    """Every row with each cell's storage class, in rowid order."""
    cols = ", ".join(f"{c}, typeof({c})" for c in COLUMNS)
    return list(conn.execute(f'SELECT rowid, {cols} FROM "{name}" ORDER BY rowid'))


def one_per_statement(
    conn: apsw.Connection,
    tbl: Table,
    target: str,
    mode: str = "insert",
    keycols: tuple[str, ...] = (),
) -> None:
    sql = schema._insert_statement(mode, target, tuple(tbl.column_names), keycols, 1)
    if tbl.rows:
        conn.executemany(sql, tbl.rows)


@pytest.mark.parametrize("nrows", SIZES)
def test_chunked_insert_stores_what_one_row_per_statement_stores(
    conn: apsw.Connection, nrows: int
) -> None:
    make(conn, "chunked")
    make(conn, "single")
    tbl = table(nrows)
    insert_rows(conn, tbl, target="chunked")
    one_per_statement(conn, tbl, "single")
    assert dump(conn, "chunked") == dump(conn, "single")
    assert len(dump(conn, "chunked")) == nrows


@pytest.mark.parametrize("mode", ["replace", "merge"])
def test_upserts_in_chunks_keep_the_last_row_of_each_key(conn: apsw.Connection, mode: str) -> None:
    """Keys repeat inside one chunk and across chunks: the later row wins,
    as row by row."""
    for name in ("chunked", "single"):
        make(conn, name, keyed=True)
    rows = [cells(i) for i in range(700)]
    for i, row in enumerate(rows):
        row[0] = f"host{i % 97}"
    tbl = Table("t", COLUMNS, ("TEXT",) * len(COLUMNS), rows)
    keycols = ("name",) if mode == "merge" else ()
    insert_rows(conn, tbl, mode, keycols, target="chunked")
    one_per_statement(conn, tbl, "single", mode, keycols)
    got = sorted(r[1:] for r in dump(conn, "chunked"))
    assert got == sorted(r[1:] for r in dump(conn, "single"))
    assert len(got) == 97


def test_wide_tables_use_chunks_that_fit_the_bound_value_limit(conn: apsw.Connection) -> None:
    width = 1500  # 32,766 bound values at most: 21 rows per statement
    names = tuple(f"c{i}" for i in range(width))
    conn.execute("CREATE TABLE wide (" + ", ".join(f"{n} INTEGER" for n in names) + ")")
    rows = [[r * width + c for c in range(width)] for r in range(100)]
    insert_rows(conn, Table("wide", names, ("INTEGER",) * width, rows))
    got = list(conn.execute("SELECT * FROM wide ORDER BY rowid"))
    assert [list(r) for r in got] == rows


def test_a_row_of_the_wrong_length_fails_as_one_row_per_statement_would(
    conn: apsw.Connection,
) -> None:
    make(conn, "t")
    tbl = table(600)
    tbl.rows[300] = tbl.rows[300][:-1]
    with pytest.raises(apsw.BindingsError), conn:
        insert_rows(conn, tbl)
    assert dump(conn, "t") == []


def test_a_cell_sqlite_cannot_bind_fails_the_whole_table(conn: apsw.Connection) -> None:
    """What the store's refusal of unchecked cells relies on: the insert
    raises a binding error and, rolled back, leaves nothing."""
    make(conn, "t")
    tbl = table(600)
    tbl.rows[450][1] = [1, 2]
    with pytest.raises(TypeError), conn:
        insert_rows(conn, tbl)
    assert dump(conn, "t") == []


def test_big_tables_take_a_few_dozen_statement_steps(conn: apsw.Connection) -> None:
    """Each step lets go of the GIL and must win it back: 10,000 rows in
    chunks take 10000 // 256 + (10000 % 256) // 32 + the rest steps."""
    make(conn, "t")
    steps = 0

    def count(*_: object) -> bool:
        nonlocal steps
        steps += 1
        return True

    conn.set_exec_trace(count)
    insert_rows(conn, table(10_000))
    conn.set_exec_trace(None)
    big, small = CHUNK_ROWS
    expected = 10_000 // big + (10_000 % big) // small + (10_000 % big) % small
    assert steps == expected
    assert expected < 60

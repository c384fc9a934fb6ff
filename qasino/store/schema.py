"""Creating, widening and filling tables: the write path's SQL.

Functions take the connection and a schema cache entry; they never commit
on their own (callers wrap a whole publish in ``with conn:``), and they
return the new cache entry instead of changing the old one, so a rolled-back
publish leaves the cache as it was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Optional

import apsw

from qasino.core.errors import PublishRejected
from qasino.core.identifiers import is_identifier, quote_ident
from qasino.core.model import Table


@dataclass(frozen=True)
class TableSchema:
    """What the store knows of one table: its columns and unique keys."""

    name: str
    columns: tuple[tuple[str, str], ...]  # (name, declared type), in order
    unique_keys: frozenset[tuple[str, ...]] = field(default_factory=frozenset)  # lower names
    # column_names tuples of tables seen to add no column: a fleet publishes
    # the same few, so most publishes skip the per-column look (a memo; a
    # schema with new columns is a new TableSchema with an empty one).
    covers: set[tuple[str, ...]] = field(default_factory=set, compare=False, repr=False)

    def column_lowers(self) -> set[str]:
        return {c.lower() for c, _ in self.columns}


def load_schemas(conn: apsw.Connection) -> dict[str, TableSchema]:
    """Read every user table of ``conn``'s main DB (used for the static DB)."""
    out: dict[str, TableSchema] = {}
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")]
    for name in names:
        if not is_identifier(name):
            continue
        cols = tuple((r[1], r[2]) for r in conn.execute(f"PRAGMA table_info({quote_ident(name)})"))
        keys = set()
        for idx in conn.execute(f"PRAGMA index_list({quote_ident(name)})"):
            if idx[2] and is_identifier(idx[1]):  # unique
                info = conn.execute(f"PRAGMA index_info({quote_ident(idx[1])})").fetchall()
                keys.add(tuple(str(r[2]).lower() for r in info))
        out[name.lower()] = TableSchema(name, cols, frozenset(keys))
    return out


def key_index_name(tablename: str, keycols: Sequence[str]) -> str:
    digest = hashlib.sha1(
        (tablename.lower() + ":" + ";".join(k.lower() for k in keycols)).encode()
    ).hexdigest()
    return "qasino_uk_" + digest[:16]


def ensure_table(
    conn: apsw.Connection,
    current: Optional[TableSchema],
    table: Table,
    keycols: Optional[Sequence[str]] = None,
) -> TableSchema:
    """Create the table or add the columns it lacks; add a unique key index.

    A column whose type differs from the existing one keeps the existing
    type (SQLite stores the value anyway).
    """
    if current is None:
        cols = ", ".join(
            f"{quote_ident(n)} {t}" for n, t in zip(table.column_names, table.column_types)
        )
        conn.execute(f"CREATE TABLE {quote_ident(table.tablename)} ({cols})")
        schema = TableSchema(table.tablename, tuple(zip(table.column_names, table.column_types)))
    elif tuple(table.column_names) in current.covers:
        schema = current
    else:
        have = current.column_lowers()
        added = []
        for n, t in zip(table.column_names, table.column_types):
            if n.lower() not in have:
                conn.execute(
                    f"ALTER TABLE {quote_ident(current.name)} ADD COLUMN {quote_ident(n)} {t}"
                )
                added.append((n, t))
                have.add(n.lower())
        if added:
            schema = TableSchema(current.name, current.columns + tuple(added), current.unique_keys)
        else:
            schema = current
            if len(current.covers) < MAX_COVERS:
                current.covers.add(tuple(table.column_names))
    if keycols:
        lowered = tuple(k.lower() for k in keycols)
        if lowered not in schema.unique_keys:
            index = key_index_name(schema.name, lowered)
            cols = ", ".join(quote_ident(k) for k in keycols)
            try:
                conn.execute(
                    f"CREATE UNIQUE INDEX IF NOT EXISTS {quote_ident(index)} "
                    f"ON {quote_ident(schema.name)} ({cols})"
                )
            except apsw.ConstraintError:
                raise PublishRejected(
                    f"cannot key table {schema.name} on ({', '.join(keycols)}): "
                    "its existing rows are not unique on those columns"
                ) from None
            schema = TableSchema(schema.name, schema.columns, schema.unique_keys | {lowered})
    return schema


def insert_rows(
    conn: apsw.Connection,
    table: Table,
    mode: str = "insert",
    keycols: Sequence[str] = (),
    target: Optional[str] = None,
) -> None:
    """Insert ``table.rows``: mode ``insert``, ``replace`` (INSERT OR REPLACE)
    or ``merge`` (upsert that only overwrites the given columns).

    Rows go in one statement per row, or, in a table of at least
    ``CHUNK_ROWS[-1]`` rows, many rows per statement: apsw lets go of the
    GIL around every statement it steps, and each step must then win the
    GIL back. While another thread wanted it (the reactor decoding the next
    publish), an ``executemany`` of 10,000 one-row steps took 150-1,300 ms
    instead of 6 ms; chunks of rows make that a few dozen steps. Rows are
    applied in order either way, so what a table holds afterwards (an
    upsert's last row per key included) is the same."""
    rows = table.rows
    if not rows:
        return
    key = (mode, target or table.tablename, tuple(table.column_names), tuple(keycols))
    done = 0
    if len(rows) >= CHUNK_ROWS[-1]:
        width = len(key[2])
        limit = conn.limit(apsw.SQLITE_LIMIT_VARIABLE_NUMBER)
        for most in CHUNK_ROWS:
            size = min(most, limit // max(1, width))
            whole = (len(rows) - done) // size if size > 1 else 0
            if whole:
                end = done + whole * size
                conn.executemany(_statement(key, size), _flat_chunks(rows, done, end, size, width))
                done = end
    if done < len(rows):
        conn.executemany(_statement(key, 1), rows[done:] if done else rows)


# Rows per statement for big tables, largest first (each capped so a
# statement stays under SQLite's limit on bound values); the rest of a
# table's rows go one per statement.
CHUNK_ROWS = (256, 32)


def _flat_chunks(
    rows: Sequence[Sequence[object]], start: int, end: int, size: int, width: int
) -> Iterator[Sequence[object]]:
    """The cells of ``rows[start:end]``, ``size`` rows per item, flattened
    (a row of the wrong length fails as it would one row per statement)."""
    expected = size * width
    for i in range(start, end, size):
        flat = list(chain.from_iterable(rows[i : i + size]))
        if len(flat) != expected:
            raise apsw.BindingsError(
                f"incorrect number of bindings: a row of rows {i}-{i + size - 1} "
                f"does not have {width} cells"
            )
        yield flat


def _statement(key: tuple[str, str, tuple[str, ...], tuple[str, ...]], nrows: int) -> str:
    sql = _insert_sql.get((key, nrows))
    if sql is None:
        sql = _insert_statement(*key, nrows)
        if len(_insert_sql) >= MAX_CACHED_INSERTS:
            _insert_sql.clear()
        _insert_sql[(key, nrows)] = sql
    return sql


# INSERT statements by (mode, table, columns, key columns) and rows per
# statement: building one quotes every name, which cost more than a 10-row
# publish's insert.
_insert_sql: dict[tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], int], str] = {}
MAX_CACHED_INSERTS = 4096
MAX_COVERS = 64


def _insert_statement(
    mode: str,
    tablename: str,
    column_names: tuple[str, ...],
    keycols: tuple[str, ...],
    nrows: int = 1,
) -> str:
    name = quote_ident(tablename)
    cols = ", ".join(quote_ident(c) for c in column_names)
    marks = ", ".join(["(" + ", ".join("?" * len(column_names)) + ")"] * nrows)
    if mode == "insert":
        return f"INSERT INTO {name} ({cols}) VALUES {marks}"
    if mode == "replace":
        return f"INSERT OR REPLACE INTO {name} ({cols}) VALUES {marks}"
    if mode == "merge":
        keys = {k.lower() for k in keycols}
        sets = [
            f"{quote_ident(c)} = excluded.{quote_ident(c)}"
            for c in column_names
            if c.lower() not in keys
        ]
        conflict = ", ".join(quote_ident(k) for k in keycols)
        action = "DO UPDATE SET " + ", ".join(sets) if sets else "DO NOTHING"
        return f"INSERT INTO {name} ({cols}) VALUES {marks} ON CONFLICT ({conflict}) {action}"
    raise ValueError(f"unknown insert mode {mode!r}")


def count_rows(conn: apsw.Connection, tablename: str) -> int:
    for (n,) in conn.execute(f"SELECT count(*) FROM {quote_ident(tablename)}"):
        return int(n)
    return 0

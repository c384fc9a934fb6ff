"""Creating, widening and filling tables: the write path's SQL.

Functions take the connection and a schema cache entry; they never commit
on their own (callers wrap a whole publish in ``with conn:``), and they
return the new cache entry instead of changing the old one, so a rolled-back
publish leaves the cache as it was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    or ``merge`` (upsert that only overwrites the given columns)."""
    if not table.rows:
        return
    key = (mode, target or table.tablename, tuple(table.column_names), tuple(keycols))
    sql = _insert_sql.get(key)
    if sql is None:
        sql = _insert_statement(*key)
        if len(_insert_sql) >= MAX_CACHED_INSERTS:
            _insert_sql.clear()
        _insert_sql[key] = sql
    conn.executemany(sql, table.rows)


# INSERT statements by (mode, table, columns, key columns): building one
# quotes every name, which cost more than a 10-row publish's insert.
_insert_sql: dict[tuple[str, str, tuple[str, ...], tuple[str, ...]], str] = {}
MAX_CACHED_INSERTS = 4096
MAX_COVERS = 64


def _insert_statement(
    mode: str, tablename: str, column_names: tuple[str, ...], keycols: tuple[str, ...]
) -> str:
    name = quote_ident(tablename)
    cols = ", ".join(quote_ident(c) for c in column_names)
    marks = ", ".join("?" * len(column_names))
    if mode == "insert":
        return f"INSERT INTO {name} ({cols}) VALUES ({marks})"
    if mode == "replace":
        return f"INSERT OR REPLACE INTO {name} ({cols}) VALUES ({marks})"
    if mode == "merge":
        keys = {k.lower() for k in keycols}
        sets = [
            f"{quote_ident(c)} = excluded.{quote_ident(c)}"
            for c in column_names
            if c.lower() not in keys
        ]
        conflict = ", ".join(quote_ident(k) for k in keycols)
        action = "DO UPDATE SET " + ", ".join(sets) if sets else "DO NOTHING"
        return f"INSERT INTO {name} ({cols}) VALUES ({marks}) ON CONFLICT ({conflict}) {action}"
    raise ValueError(f"unknown insert mode {mode!r}")


def count_rows(conn: apsw.Connection, tablename: str) -> int:
    for (n,) in conn.execute(f"SELECT count(*) FROM {quote_ident(tablename)}"):
        return int(n)
    return 0

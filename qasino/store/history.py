"""``--history N``: the last N snapshots, queryable as ``history.T``.

Nothing is copied. A snapshot is already an independent, finished SQLite
file with its generation number; with ``--history N`` the store keeps the
files of the last N snapshots (the one served and the N-1 before it) instead
of removing each as soon as the next is served. A query connection of a
snapshot attaches the N-1 older files read-only (``qasino_h<number>``) when
a statement first names a ``history.T`` (or runs ``SHOW tables``), and
``history.T`` is a TEMP view made on that connection then::

    SELECT <number> AS generation_number, "a", NULL AS "b" FROM "qasino_h1".T
    UNION ALL ...
    SELECT <number> AS generation_number, "a", "b" FROM main.T

from the oldest generation to the newest, with the union of T's columns
(a column a generation lacks is NULL there). SQLite binds a view's tables to
the view's own database, so ``history`` cannot be an attached schema of such
views; client SQL is therefore renamed first (:mod:`qasino.core.history_sql`).

Why not copy rows into one history DB: bench/ measured that copying a
million-row generation at each snapshot takes 0.7-1.4 s of the one writer
thread (ingest with history fell to a third in the quick run); attaching
costs nothing at the switch, and about a millisecond for 9 files on the
first history statement of a connection.
"""

from __future__ import annotations

from collections.abc import Sequence

import apsw

from qasino.core.errors import InvalidInput, QueryError
from qasino.core.history_sql import view_name
from qasino.core.identifiers import is_identifier, quote_ident
from qasino.store.sqlite import file_uri

# Attached schema of an older snapshot file.
ALIAS_PREFIX = "qasino_h"
# A table's own column named generation_number is shown under this name.
GENERATION_COLUMN = "generation_number"
RENAMED_GENERATION_COLUMN = "generation_number_"
# The TEMP view SHOW tables lists history tables from.
TABLES_VIEW = "qasino_history_tables"
# SQLite's compiled limit in apsw's build is 125 attached databases per
# connection; the static DB takes one.
MAX_HISTORY = 100
MAX_ATTACHED = 125

Generation = tuple[int, str]  # (generation_number, schema: an alias or "main")


def alias(number: int) -> str:
    return f"{ALIAS_PREFIX}{number}"


def _view_ident(table: str) -> str:
    return '"' + view_name(table) + '"'


def history_column(name: str) -> str:
    return RENAMED_GENERATION_COLUMN if name.lower() == GENERATION_COLUMN else name


def attach_window(conn: apsw.Connection, older: Sequence[tuple[int, str]]) -> None:
    """Attach the older snapshot files (number, path) read-only, once per
    connection, when a statement first needs them (so queries that never
    name ``history.T`` never pay for them). Reader connections refuse
    ATTACH (limit 0); the server lifts that just for these."""
    have = set(conn.db_names())
    missing = [(alias(n), p) for n, p in older if alias(n) not in have]
    if not missing:
        return
    conn.limit(apsw.SQLITE_LIMIT_ATTACHED, MAX_ATTACHED)
    try:
        for schema, path in missing:
            conn.execute(f"ATTACH DATABASE ? AS {schema}", (file_uri(path, mode="ro"),))
            # Mostly scanned once: keep each one's page cache small (256 KiB).
            conn.pragma(f"{schema}.cache_size", -256)
    finally:
        conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 0)


def create_tables_view(conn: apsw.Connection, generations: Sequence[Generation]) -> None:
    """TEMP view ``qasino_history_tables(tablename, nr_rows, last_update_epoch,
    generations)``: the tables of the window and their rows in it."""
    parts = [
        f"SELECT tablename, nr_rows, last_update_epoch FROM {schema}.qasino_server_tables"
        " WHERE static = 0"
        for _, schema in generations
    ]
    conn.execute(
        f"CREATE TEMP VIEW IF NOT EXISTS {TABLES_VIEW} AS SELECT min(tablename) AS tablename,"
        " sum(nr_rows) AS nr_rows, max(last_update_epoch) AS last_update_epoch,"
        " count(*) AS generations FROM (" + " UNION ALL ".join(parts) + ")"
        " GROUP BY lower(tablename)"
    )


def ensure_views(
    conn: apsw.Connection, generations: Sequence[Generation], tables: Sequence[str]
) -> None:
    """Make the TEMP view ``history.T`` for each of ``tables`` (lower-case
    names) on ``conn`` unless it is there; QueryError for a table no
    generation of the window has."""
    for table in tables:
        exists = conn.execute(
            "SELECT 1 FROM temp.sqlite_schema WHERE name = ?", (view_name(table),)
        ).fetchall()
        if exists:
            continue
        sql = _view_sql(conn, generations, table)
        if sql is None:
            raise QueryError(f"no such table: history.{table}")
        conn.execute(sql)


def _columns(
    conn: apsw.Connection, generations: Sequence[Generation], table: str
) -> tuple[list[tuple[int, str, set[str]]], dict[str, tuple[str, str]]]:
    """The generations that have ``table`` (with their lower column names),
    and the union of its columns: lower -> (name, type), oldest first, the
    type from the newest generation that has the column."""
    found: list[tuple[int, str, set[str]]] = []
    columns: dict[str, tuple[str, str]] = {}
    if not is_identifier(table):
        return found, columns
    for number, schema in generations:
        info = conn.execute(f"PRAGMA {schema}.table_info({quote_ident(table)})").fetchall()
        names = [(str(r[1]), str(r[2] or "")) for r in info if is_identifier(r[1])]
        for name, type_ in names:
            lower = name.lower()
            columns[lower] = (columns[lower][0] if lower in columns else name, type_)
        if names:
            found.append((number, schema, {n.lower() for n, _ in names}))
    return found, columns


def _view_sql(conn: apsw.Connection, generations: Sequence[Generation], table: str) -> str | None:
    found, columns = _columns(conn, generations, table)
    if not found:
        return None
    selects = []
    try:
        for number, schema, have in found:
            cells = [f"{int(number)} AS {quote_ident(GENERATION_COLUMN)}"]
            for lower, (name, _) in columns.items():
                shown = quote_ident(history_column(name))
                cells.append(
                    f"{quote_ident(name)} AS {shown}" if lower in have else f"NULL AS {shown}"
                )
            selects.append(f"SELECT {', '.join(cells)} FROM {schema}.{quote_ident(table)}")
    except InvalidInput:
        return None
    return f"CREATE TEMP VIEW {_view_ident(table)} AS " + " UNION ALL ".join(selects)


def describe(
    conn: apsw.Connection, generations: Sequence[Generation], table: str
) -> list[tuple[str, str]]:
    """(column_name, column_type) of ``history.T``; QueryError if no
    generation of the window has T."""
    found, columns = _columns(conn, generations, table)
    if not found:
        raise QueryError(f"No such table: history.{table}")
    return [(GENERATION_COLUMN, "INTEGER")] + [
        (history_column(name), type_) for name, type_ in columns.values()
    ]

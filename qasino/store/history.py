"""``--history N``: the last N snapshots, queryable as ``history.T``.

Nothing is copied. A snapshot is already an independent, finished SQLite
file with its generation number; with ``--history N`` the store keeps the
files of the last N snapshots (the one served and the N-1 before it) instead
of removing each as soon as the next is served. A query connection of a
snapshot attaches the N-1 older files read-only (``qasino_h<number>``) for
the time of one statement that names a ``history.T`` (or runs ``SHOW
tables``), and ``history.T`` is a TEMP view made on that connection for it
(:class:`Window`)::

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
costs nothing at the switch, and a few milliseconds per history statement
(attaching 9 files takes about one).
"""

from __future__ import annotations

from collections.abc import Sequence

import apsw

from qasino.core.errors import InvalidInput, QueryError
from qasino.core.history_sql import view_name
from qasino.core.identifiers import is_identifier, quote_ident
from qasino.store.sqlite import STATIC_SCHEMA, file_uri

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


def alias(position: int) -> str:
    """The schema name of the window's ``position``-th older snapshot
    (by position, not generation number: in NATS mode a number may come
    twice, docs/scaling.md)."""
    return f"{ALIAS_PREFIX}{position}"


def _view_ident(table: str) -> str:
    return '"' + view_name(table) + '"'


def history_column(name: str) -> str:
    return RENAMED_GENERATION_COLUMN if name.lower() == GENERATION_COLUMN else name


def _tables_view_sql(generations: Sequence[Generation]) -> str:
    """``qasino_history_tables(tablename, nr_rows, last_update_epoch,
    generations)``: the tables of the window and their rows in it."""
    parts = [
        f"SELECT tablename, nr_rows, last_update_epoch FROM {schema}.qasino_server_tables"
        " WHERE static = 0"
        for _, schema in generations
    ]
    return (
        "SELECT min(tablename) AS tablename, sum(nr_rows) AS nr_rows,"
        " max(last_update_epoch) AS last_update_epoch, count(*) AS generations FROM ("
        + " UNION ALL ".join(parts)
        + ") GROUP BY lower(tablename)"
    )


class Window:
    """The history window opened on one query connection for one statement.

    ``open`` attaches the older snapshot files (read-only), makes the TEMP
    views the statement needs, and hides every table that only an older
    file has behind a TEMP view that fails ("no such table: main.T"), so an
    unqualified name never silently reads an older generation. ``close``
    drops those views and detaches the files again: a statement that does
    not name ``history.T`` never sees them, and nothing stays behind on the
    pooled connection. Reader connections refuse ATTACH (limit 0); the
    server lifts that just here.
    """

    def __init__(
        self,
        conn: apsw.Connection,
        older: Sequence[tuple[int, str]],
        generations: Sequence[Generation],
    ) -> None:
        self.conn = conn
        self.older = list(older)
        self.generations = list(generations)
        self._views: list[str] = []  # quoted TEMP view names made here
        self._attached: list[str] = []

    def open(self, tables: Sequence[str] = (), tables_view: bool = False) -> None:
        try:
            self._attach()
            self._hide_older_only_tables()
            if tables_view:
                self._create(TABLES_VIEW, _tables_view_sql(self.generations))
            for table in tables:
                sql = _view_sql(self.conn, self.generations, table)
                if sql is None:
                    raise QueryError(f"no such table: history.{table}")
                self._create(_view_ident(table), sql)
        except BaseException:
            self.close()
            raise

    def _attach(self) -> None:
        conn = self.conn
        conn.limit(apsw.SQLITE_LIMIT_ATTACHED, MAX_ATTACHED)
        try:
            for position, (_, path) in enumerate(self.older):
                schema = alias(position)
                conn.execute(f"ATTACH DATABASE ? AS {schema}", (file_uri(path, mode="ro"),))
                self._attached.append(schema)
                # Mostly scanned once: keep each one's page cache small (256 KiB).
                conn.pragma(f"{schema}.cache_size", -256)
        finally:
            conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 0)

    def _hide_older_only_tables(self) -> None:
        visible: set[str] = set()
        for schema in ("temp", "main", STATIC_SCHEMA):
            if schema in self.conn.db_names():
                visible |= _names(self.conn, schema)
        older: set[str] = set()
        for schema in self._attached:
            older |= _names(self.conn, schema)
        for name in sorted(older - visible):
            if is_identifier(name):
                self._create(quote_ident(name), f"SELECT * FROM main.{quote_ident(name)}")

    def _create(self, quoted: str, select: str) -> None:
        self.conn.execute(f"CREATE TEMP VIEW {quoted} AS {select}")
        self._views.append(quoted)

    def close(self) -> None:
        """Drop what ``open`` made and detach; never raises."""
        views, self._views = self._views, []
        attached, self._attached = self._attached, []
        for quoted in views:
            try:
                self.conn.execute(f"DROP VIEW IF EXISTS temp.{quoted}")
            except apsw.Error:
                pass
        for schema in attached:
            try:
                self.conn.execute(f"DETACH DATABASE {schema}")
            except apsw.Error:
                pass


def _names(conn: apsw.Connection, schema: str) -> set[str]:
    return {
        str(r[0]).lower()
        for r in conn.execute(
            f"SELECT name FROM {schema}.sqlite_schema WHERE type IN ('table', 'view')"
        )
    }


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
    return " UNION ALL ".join(selects)


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

"""``--history N``: the last N snapshots, queryable as ``history.T``.

One SQLite file (``history.sqlite`` next to the generation files), attached
read-only as ``history`` to every reader connection. At each snapshot the
finished generation's tables are appended to it, ``generation_number`` first,
and the rows of the generation that fell out of the window are deleted.

Why copy rows instead of attaching the N snapshot files: SQLite binds a
view's table names to the view's own database, so a view ``history.T`` can
only read tables of the ``history`` database (a TEMP view can read every
attached file, but is then named ``temp.T``, not ``history.T``). The copy is
a native ``INSERT ... SELECT`` (about 0.2-0.4 s per million rows here) done
on the writer thread *before* the snapshot switch, so queries never wait for
it; the old rows go by rowid range (rows are appended in generation order).
Measured in bench/ (``history_*``) and explained in docs/fleet.md.

The file lives as long as the process (it is removed with the other
generation files at start-up): history is lost on restart.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field

import apsw

from qasino.core.identifiers import is_identifier, quote_ident
from qasino.store.sqlite import HISTORY_SCHEMA, file_uri, open_writer

HISTORY_FILE = "history.sqlite"
# The catalog: one row per history table (SHOW tables lists them).
CATALOG = "qasino_server_history"
GENERATION_COLUMN = "generation_number"
# A table's own column named generation_number is kept under this name.
RENAMED_GENERATION_COLUMN = "generation_number_"

_SNAPSHOT = "qasino_snapshot"

__all__ = ["HISTORY_SCHEMA", "History"]


@dataclass
class _HistoryTable:
    name: str
    columns: dict[str, tuple[str, str]] = field(default_factory=dict)  # lower -> (name, type)
    # (generation_number, last rowid of that generation's rows, nr_rows), oldest first
    spans: deque[tuple[int, int, int]] = field(default_factory=deque)
    last_update_epoch: float = 0.0


def history_column(name: str) -> str:
    return RENAMED_GENERATION_COLUMN if name.lower() == GENERATION_COLUMN else name


class History:
    """The history file and its writer connection (writer thread only)."""

    def __init__(self, folder: str, keep: int) -> None:
        self.keep = keep
        self.path = os.path.join(folder, HISTORY_FILE)
        self.conn = open_writer(self.path, uri=True)
        self.conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 2)
        self.tables: dict[str, _HistoryTable] = {}
        self.generations: deque[int] = deque()
        with self.conn:
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS main.{CATALOG} (tablename TEXT, nr_rows INTEGER, "
                "generations INTEGER, first_generation_number INTEGER, "
                "last_generation_number INTEGER, last_update_epoch REAL)"
            )

    def add(self, snapshot_path: str, generation_number: int, now: float) -> None:
        """Append every table of the finished snapshot; forget the oldest
        generation beyond ``keep``. One transaction: readers see all or none."""
        conn = self.conn
        conn.execute(f"ATTACH DATABASE ? AS {_SNAPSHOT}", (file_uri(snapshot_path, mode="ro"),))
        try:
            with conn:
                for name, columns in _snapshot_tables(conn):
                    self._append(name, columns, generation_number, now)
                self.generations.append(generation_number)
                while len(self.generations) > self.keep:
                    self._drop_generation(self.generations.popleft())
                self._write_catalog()
        finally:
            conn.execute(f"DETACH DATABASE {_SNAPSHOT}")
        conn.pragma("wal_checkpoint", "PASSIVE")

    def _append(
        self, name: str, columns: list[tuple[str, str]], generation_number: int, now: float
    ) -> None:
        conn = self.conn
        entry = self.tables.get(name.lower())
        target = quote_ident(entry.name if entry else name)
        if entry is None:
            entry = _HistoryTable(name)
            cols = [(GENERATION_COLUMN, "INTEGER")] + [(history_column(c), t) for c, t in columns]
            entry.columns = {c.lower(): (c, t) for c, t in cols}
            defs = ", ".join(f"{quote_ident(c)} {t}" for c, t in cols)
            conn.execute(f"DROP TABLE IF EXISTS main.{target}")
            conn.execute(f"CREATE TABLE main.{target} ({defs})")
            self.tables[name.lower()] = entry
        else:
            for c, t in columns:
                hc = history_column(c)
                if hc.lower() not in entry.columns:
                    conn.execute(f"ALTER TABLE main.{target} ADD COLUMN {quote_ident(hc)} {t}")
                    entry.columns[hc.lower()] = (hc, t)
        into = ", ".join(
            [quote_ident(GENERATION_COLUMN)] + [quote_ident(history_column(c)) for c, _ in columns]
        )
        select = ", ".join(["?"] + [quote_ident(c) for c, _ in columns])
        conn.execute(
            f"INSERT INTO main.{target} ({into}) "
            f"SELECT {select} FROM {_SNAPSHOT}.{quote_ident(name)}",
            (generation_number,),
        )
        nr_rows = conn.changes()
        last = conn.last_insert_rowid() if nr_rows else _max_rowid(conn, target)
        entry.spans.append((generation_number, last, nr_rows))
        entry.last_update_epoch = now

    def _drop_generation(self, generation_number: int) -> None:
        for lower, entry in list(self.tables.items()):
            last = None
            while entry.spans and entry.spans[0][0] <= generation_number:
                last = entry.spans.popleft()[1]
            if not entry.spans:
                self.conn.execute(f"DROP TABLE main.{quote_ident(entry.name)}")
                del self.tables[lower]
            elif last is not None:
                self.conn.execute(
                    f"DELETE FROM main.{quote_ident(entry.name)} WHERE rowid <= ?", (last,)
                )

    def _write_catalog(self) -> None:
        rows = [
            (
                e.name,
                sum(s[2] for s in e.spans),
                len(e.spans),
                e.spans[0][0],
                e.spans[-1][0],
                e.last_update_epoch,
            )
            for _, e in sorted(self.tables.items())
        ]
        self.conn.execute(f"DELETE FROM main.{CATALOG}")
        if rows:
            self.conn.executemany(f"INSERT INTO main.{CATALOG} VALUES (?, ?, ?, ?, ?, ?)", rows)

    def close(self) -> None:
        self.conn.close()


def _snapshot_tables(conn: apsw.Connection) -> list[tuple[str, list[tuple[str, str]]]]:
    names = [
        r[0]
        for r in conn.execute(
            f"SELECT name FROM {_SNAPSHOT}.sqlite_schema WHERE type = 'table' ORDER BY name"
        )
    ]
    out = []
    for name in names:
        if not is_identifier(name) or name.lower().startswith("sqlite_"):
            continue
        cols = [
            (str(r[1]), str(r[2]) or "")
            for r in conn.execute(f"PRAGMA {_SNAPSHOT}.table_info({quote_ident(name)})")
        ]
        out.append((name, cols))
    return out


def _max_rowid(conn: apsw.Connection, target: str) -> int:
    for (top,) in conn.execute(f"SELECT max(rowid) FROM main.{target}"):
        return int(top) if isinstance(top, int) else 0
    return 0

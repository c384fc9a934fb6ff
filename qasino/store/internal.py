"""The internal tables, built into every generation at its snapshot."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import apsw
import orjson

from qasino.core.fleet import IDENTITIES_FROM_JSON

# Internal tables of more rows than this (one per identity: connections,
# table_identities) are filled from one JSON text in one statement. A row-by-
# row executemany lets go of the GIL around every row and waits to get it
# back while the reactor or a reader holds it: 8,000 rows took 0.3-1 s
# instead of 4 ms on the writer thread, during the rotation
# (docs/performance.md, "The snapshot switch").
JSON_FILL_MIN_ROWS = 32

# Declared with the original server's type words, so DESC shows what it did
# (SQLite spells "int" as INT). Epochs keep their fraction: an INTEGER-affinity
# column stores a float with a fraction as REAL.
INTERNAL_TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "qasino_server_info": (
        ("generation_number", "int"),
        ("generation_duration_s", "int"),
        ("generation_start_epoch", "int"),
    ),
    "qasino_server_tables": (
        ("tablename", "varchar"),
        ("nr_rows", "int"),
        ("nr_updates", "int"),
        ("last_update_epoch", "int"),
        ("static", "int"),
    ),
    "qasino_server_connections": (
        ("identity", "varchar"),
        ("nr_tables", "int"),
        ("last_update_epoch", "int"),
    ),
    "qasino_server_views": (
        ("viewname", "varchar"),
        ("loaded", "int"),
        ("errormsg", "varchar"),
        ("view", "varchar"),
    ),
    "qasino_server_sql_stats": (
        ("sql_received", "int"),
        ("sql_completed", "int"),
        ("sql_errors", "int"),
    ),
    "qasino_server_update_stats": (
        ("updates_received", "int"),
        ("updates_completed", "int"),
        ("update_errors", "int"),
        ("inserts_received", "int"),
        ("inserts_completed", "int"),
    ),
    # docs/fleet.md
    "qasino_server_identities": (
        ("identity", "TEXT"),
        ("first_seen_epoch", "REAL"),
        ("last_seen_epoch", "REAL"),
        ("last_generation_number", "INTEGER"),
        ("generations_missed", "INTEGER"),
        ("nr_tables", "INTEGER"),
        ("nr_rows", "INTEGER"),
        ("remote_addr", "TEXT"),
        ("stale", "INTEGER"),
    ),
    "qasino_server_table_identities": (
        ("tablename", "TEXT"),
        ("identity", "TEXT"),
        ("nr_rows", "INTEGER"),
        ("age_generations", "INTEGER"),
    ),
    # The alerts as of the last evaluation (of the snapshot before this one).
    "qasino_server_alerts": (
        ("alertname", "TEXT"),
        ("labels", "TEXT"),
        ("state", "TEXT"),
        ("active_since_epoch", "REAL"),
        ("last_eval_epoch", "REAL"),
        ("annotations", "TEXT"),
        ("error", "TEXT"),
    ),
}


@dataclass
class TableEntry:
    tablename: str
    nr_rows: int
    nr_updates: int
    last_update_epoch: float
    static: bool


@dataclass
class GenerationReport:
    """Everything the internal tables of one snapshot say."""

    generation_number: int
    generation_duration_s: float
    generation_start_epoch: float
    tables: list[TableEntry] = field(default_factory=list)
    connections: list[tuple[str, int, float]] = field(default_factory=list)
    views: list[tuple[str, int, str, str]] = field(default_factory=list)
    sql_stats: tuple[int, int, int] = (0, 0, 0)
    update_stats: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    identities: Sequence[tuple[object, ...]] = ()
    # Or, cheaper with many identities: IdentityFragments' JSON, read by
    # SQLite for snapshot seq identities_seq (identities_count rows).
    identities_json: Optional[bytes] = None
    identities_seq: int = 0
    identities_count: int = 0
    table_identities: Sequence[tuple[object, ...]] = ()
    alerts: list[tuple[object, ...]] = field(default_factory=list)


def _create(conn: apsw.Connection, name: str) -> None:
    cols = ", ".join(f'"{c}" {t}' for c, t in INTERNAL_TABLES[name])
    conn.execute(f'DROP TABLE IF EXISTS "{name}"')
    conn.execute(f'CREATE TABLE "{name}" ({cols})')


def _fill(conn: apsw.Connection, name: str, rows: list[tuple[object, ...]]) -> None:
    if not rows:
        return
    width = len(INTERNAL_TABLES[name])
    if len(rows) > JSON_FILL_MIN_ROWS:
        try:
            encoded = orjson.dumps(rows)
        except TypeError:  # a lone surrogate, an int past 64 bits: row by row
            pass
        else:
            cells = ", ".join(f"value->>{i}" for i in range(width))
            conn.execute(f'INSERT INTO "{name}" SELECT {cells} FROM json_each(?)', (encoded,))
            return
    marks = ", ".join("?" * width)
    conn.executemany(f'INSERT INTO "{name}" VALUES ({marks})', rows)


def write_internal_tables(conn: apsw.Connection, report: GenerationReport) -> None:
    """Write all the internal tables into ``conn`` in one transaction.

    ``qasino_server_tables`` lists itself and the other internal tables too.
    """
    duration = report.generation_duration_s
    duration_out: object = int(duration) if float(duration).is_integer() else duration
    internal_rows: dict[str, list[tuple[object, ...]]] = {
        "qasino_server_info": [
            (report.generation_number, duration_out, report.generation_start_epoch)
        ],
        "qasino_server_connections": list(report.connections),
        "qasino_server_views": list(report.views),
        "qasino_server_sql_stats": [report.sql_stats],
        "qasino_server_update_stats": [report.update_stats],
        "qasino_server_identities": list(report.identities),
        "qasino_server_table_identities": list(report.table_identities),
        "qasino_server_alerts": list(report.alerts),
    }
    entries: list[tuple[object, ...]] = [
        (t.tablename, t.nr_rows, t.nr_updates, t.last_update_epoch, int(t.static))
        for t in report.tables
    ]
    nr_table_rows = len(entries) + len(INTERNAL_TABLES)
    for name in INTERNAL_TABLES:
        n = nr_table_rows if name == "qasino_server_tables" else len(internal_rows[name])
        if name == "qasino_server_identities" and report.identities_json is not None:
            n = report.identities_count
        # One update each, as the original counted its own insert of them.
        entries.append((name, n, 1, report.generation_start_epoch, 0))
    internal_rows["qasino_server_tables"] = entries
    with conn:
        for name in INTERNAL_TABLES:
            _create(conn, name)
            _fill(conn, name, internal_rows[name])
        if report.identities_json is not None:
            conn.execute(IDENTITIES_FROM_JSON, (report.identities_seq, report.identities_json))


def write_views_table(conn: apsw.Connection, rows: list[tuple[str, int, str, str]]) -> None:
    """Replace the rows of qasino_server_views (same count as before)."""
    with conn:
        conn.execute('DELETE FROM "qasino_server_views"')
        _fill(conn, "qasino_server_views", list(rows))

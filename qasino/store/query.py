"""The read-only query runner: one guarded statement, a deadline, a row cap."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import apsw
import orjson

from qasino.core.errors import QueryError, QueryTimeout
from qasino.core.identifiers import quote_ident
from qasino.core.model import Result
from qasino.store.sqlite import STATIC_SCHEMA, prepare_guarded, sqlite_message

# How many SQLite VM steps between two looks at the clock.
PROGRESS_STEPS = 100_000


@dataclass(frozen=True)
class QueryLimits:
    timeout_s: float = 5.0
    max_rows: int = 100_000
    max_bytes: int = 64 * 1024 * 1024  # a result over this is refused


FETCH_CHUNK = 1000


def _cell_bytes(cell: object) -> int:
    kind = type(cell)
    if kind is str:
        return len(cell) + 8  # type: ignore[arg-type]
    if kind is bytes:
        return 2 * len(cell) + 8  # type: ignore[arg-type]  # shown as hex
    return 8


def _chunk_bytes(chunk: list[tuple[object, ...]]) -> int:
    """About what a chunk of rows weighs: its length as JSON (orjson, at C
    speed), or by cell where JSON cannot hold it (a blob)."""
    try:
        return len(orjson.dumps(chunk))
    except TypeError:
        return sum(_cell_bytes(cell) for row in chunk for cell in row)


def run_select(
    conn: apsw.Connection,
    sql: str,
    params: Sequence[object] = (),
    limits: QueryLimits = QueryLimits(),
    monotonic: Callable[[], float] = time.monotonic,
    guard: bool = True,
) -> Result:
    """Run one SELECT on ``conn`` and return its rows.

    With ``guard`` (client text) the statement must pass
    :func:`prepare_guarded`; without it (our own shortcut SQL) it runs as is.
    A statement still running after ``limits.timeout_s`` is interrupted; more
    than ``limits.max_rows`` rows are cut and the result marked truncated.
    """
    sql, names = prepare_guarded(conn, sql, guard)
    deadline = monotonic() + limits.timeout_s
    timed_out = False

    def progress() -> bool:
        nonlocal timed_out
        if monotonic() > deadline:
            timed_out = True
            return True
        return False

    conn.set_progress_handler(progress, PROGRESS_STEPS)
    cursor = conn.cursor()
    try:
        cursor.execute(sql, tuple(params))
        rows: list[tuple[object, ...]] = []
        cap, byte_cap, size = limits.max_rows, limits.max_bytes, 0
        # In chunks, so the size check costs per chunk, not per row. Chunks
        # start at one row and grow only while rows are small enough that a
        # chunk stays under an eighth of the byte cap.
        n = 1
        while len(rows) <= cap:
            chunk = list(itertools.islice(cursor, min(n, cap + 1 - len(rows))))
            if not chunk:
                break
            chunk_bytes = _chunk_bytes(chunk)
            size += chunk_bytes
            per_row = chunk_bytes / len(chunk)
            n = max(1, min(2 * n, FETCH_CHUNK, int(byte_cap / 8 / per_row)))
            if size > byte_cap:
                # Unlike the row cap, not a cut: a partial result this big
                # would still cost its memory many times over to send.
                raise QueryError(
                    f"result larger than {byte_cap} bytes (--max-result-bytes): "
                    "select fewer or smaller columns, or add a LIMIT"
                )
            rows.extend(chunk)
        truncated = len(rows) > cap
        if truncated:
            del rows[cap:]
        return Result(column_names=names, rows=rows, truncated=truncated)
    except apsw.InterruptError:
        if timed_out:
            raise QueryTimeout(
                f"Query exceeded the time limit of {limits.timeout_s:g} seconds"
            ) from None
        raise QueryError("Query interrupted") from None
    except apsw.Error as e:
        raise QueryError(sqlite_message(e)) from None
    except (ValueError, UnicodeError) as e:  # NUL or a lone surrogate in the text
        raise QueryError(f"invalid statement text: {e}") from None
    finally:
        try:
            cursor.close(force=True)
        finally:
            conn.set_progress_handler(None)


def describe_table(conn: apsw.Connection, name: str) -> Result:
    """DESC: (column_name, column_type) of a table or view, generation first."""
    quoted = quote_ident(name)
    for schema in ("temp", "main", STATIC_SCHEMA):
        if schema == STATIC_SCHEMA and STATIC_SCHEMA not in conn.db_names():
            continue
        rows = list(conn.execute(f"PRAGMA {schema}.table_info({quoted})"))
        if rows:
            return Result(
                column_names=("column_name", "column_type"),
                rows=[(r[1], r[2]) for r in rows],
            )
    raise QueryError(f"No such table: {name}")


def first_value(conn: apsw.Connection, sql: str, params: Sequence[object] = ()) -> Optional[object]:
    for row in conn.execute(sql, tuple(params)):
        return row[0]
    return None

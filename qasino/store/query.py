"""The read-only query runner: one guarded statement, a deadline, a row cap."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Optional

import apsw
import orjson

from qasino.core.errors import QueryCancelled, QueryError, QueryTimeout
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
    sink: Optional[Callable[[list[tuple[object, ...]]], int]] = None,
) -> Result:
    """Run one SELECT on ``conn`` and return its rows.

    With ``guard`` (client text) the statement must pass
    :func:`prepare_guarded`; without it (our own shortcut SQL) it runs as is.
    A statement still running after ``limits.timeout_s`` is interrupted; more
    than ``limits.max_rows`` rows are cut and the result marked truncated.

    ``sink``: each chunk of rows (at most ``limits.max_rows`` in all) goes to
    ``sink`` as it is read, which encodes it and returns its size in bytes
    (weighed against ``limits.max_bytes``); the Result then holds no rows.
    Encoding while reading saves keeping the rows and weighing them apart.
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
        if sink is not None:
            return _run_into(cursor, names, sink, cap, byte_cap)
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


def _run_into(
    cursor: apsw.Cursor,
    names: tuple[str, ...],
    sink: Callable[[list[tuple[object, ...]]], int],
    cap: int,
    byte_cap: int,
) -> Result:
    """:func:`run_select`'s loop with a sink: the same chunks, cap and
    byte check, the rows handed over instead of kept."""
    count, size, n, truncated = 0, 0, 1, False
    while True:
        chunk = list(itertools.islice(cursor, min(n, cap + 1 - count)))
        if not chunk:
            break
        count += len(chunk)
        if count > cap:  # the row past the cap only says the result was cut
            truncated = True
            del chunk[len(chunk) - (count - cap) :]
            if not chunk:
                break
        chunk_bytes = sink(chunk)
        size += chunk_bytes
        per_row = max(1.0, chunk_bytes / len(chunk))
        n = max(1, min(2 * n, FETCH_CHUNK, int(byte_cap / 8 / per_row)))
        if size > byte_cap:
            raise QueryError(
                f"result larger than {byte_cap} bytes (--max-result-bytes): "
                "select fewer or smaller columns, or add a LIMIT"
            )
        if truncated:
            break
    return Result(column_names=names, rows=[], truncated=truncated)


class RowStream:
    """One statement's rows, read a slice at a time (``stream=1``).

    No row cap (up to ``max_rows``, where the stream ends and ``cut`` is
    set), but the time limit holds for the whole stream less the time its
    reader spent waiting for the client (:meth:`waited`): a stream still
    running after ``limits.timeout_s`` fails with :class:`QueryTimeout`,
    and one whose ``cancelled()`` turns true is interrupted at SQLite's
    next progress check. Not thread-safe: read it on the thread that
    opened it, and :meth:`close` it there.
    """

    def __init__(
        self,
        column_names: tuple[str, ...],
        rows: Iterator[tuple[object, ...]],
        deadline: float,
        monotonic: Callable[[], float],
        timeout_s: float,
        max_rows: int,
        close: Callable[[], None] = lambda: None,
    ) -> None:
        self.column_names = column_names
        self.generation_number: Optional[int] = None
        self.deadline = deadline
        self.monotonic = monotonic
        self.timeout_s = timeout_s
        self.max_rows = max_rows
        self.nr_rows = 0
        self.cut = False
        self._rows = rows
        self._close = close

    def time_left(self) -> float:
        return self.deadline - self.monotonic()

    def waited(self, seconds: float) -> None:
        """Time spent waiting for the client does not count against the
        time limit: move the deadline on by it."""
        self.deadline += seconds

    def timeout_error(self) -> QueryTimeout:
        return QueryTimeout(f"Query exceeded the time limit of {self.timeout_s:g} seconds")

    def chunks(self, size: int = FETCH_CHUNK) -> Iterator[list[tuple[object, ...]]]:
        """Slices of at most ``size`` rows until the rows (or ``max_rows``) end."""
        while chunk := self.next_chunk(size):
            yield chunk

    def next_chunk(self, size: int) -> list[tuple[object, ...]]:
        """The next at most ``size`` rows; [] at the end (or at ``max_rows``,
        then ``cut`` tells whether rows were left)."""
        want = min(size, self.max_rows - self.nr_rows)
        if want <= 0:
            with _query_errors(self):
                self.cut = next(self._rows, None) is not None
            return []
        if self.time_left() < 0:
            raise self.timeout_error()
        with _query_errors(self):
            chunk = list(itertools.islice(self._rows, want))
        self.nr_rows += len(chunk)
        return chunk

    def close(self) -> None:
        self._close()

    timed_out = False
    interrupted = False


@contextlib.contextmanager
def _query_errors(stream: RowStream) -> Iterator[None]:
    """SQLite's errors while a stream is read, as the query errors."""
    try:
        yield
    except apsw.InterruptError:
        if stream.timed_out:
            raise stream.timeout_error() from None
        if stream.interrupted:
            raise QueryCancelled("the client went away; query stopped") from None
        raise QueryError("Query interrupted") from None
    except apsw.Error as e:
        raise QueryError(sqlite_message(e)) from None


def open_stream(
    conn: apsw.Connection,
    sql: str,
    params: Sequence[object] = (),
    limits: QueryLimits = QueryLimits(),
    monotonic: Callable[[], float] = time.monotonic,
    guard: bool = True,
    max_rows: int = 10_000_000,
    cancelled: Callable[[], bool] = lambda: False,
) -> RowStream:
    """Start one SELECT on ``conn`` for streaming: checked and prepared as
    :func:`run_select` does, its first step taken (so an error in the
    statement is raised here, before any row is sent). The caller must
    :meth:`RowStream.close` it."""
    sql, names = prepare_guarded(conn, sql, guard)
    deadline = monotonic() + limits.timeout_s
    cursor = conn.cursor()
    stream = RowStream(names, iter(()), deadline, monotonic, limits.timeout_s, max_rows)

    def progress() -> bool:
        if cancelled():
            stream.interrupted = True
            return True
        if monotonic() > stream.deadline:  # moved on by time spent waiting
            stream.timed_out = True
            return True
        return False

    def close() -> None:
        try:
            cursor.close(force=True)
        finally:
            conn.set_progress_handler(None)

    conn.set_progress_handler(progress, PROGRESS_STEPS)
    try:
        with _query_errors(stream):
            try:
                cursor.execute(sql, tuple(params))
            except (ValueError, UnicodeError) as e:
                raise QueryError(f"invalid statement text: {e}") from None
    except BaseException:
        close()
        raise
    stream._rows = iter(cursor)
    stream._close = close
    return stream


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

"""apsw connections: how Qasino opens, limits and guards SQLite.

The only module that sets pragmas and the read-only guard. Store code takes
connections as arguments so tests can hand in their own.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Optional

import apsw
import apsw.ext

from qasino.core.errors import QueryError, QueryRefused

STATIC_SCHEMA = "static"

# Functions a query may not call even though the connection is read-only.
DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "readfile", "writefile", "edit"})

_ALLOWED_ACTIONS = frozenset({apsw.SQLITE_SELECT, apsw.SQLITE_READ, apsw.SQLITE_RECURSIVE})

# Per-connection limits for reader connections (defence in depth).
MAX_SQL_LENGTH = 1_000_000
MAX_VALUE_LENGTH = 32 * 1024 * 1024
WAL_SIZE_LIMIT = 64 * 1024 * 1024
# Generation files: 16 KiB pages. Appending 1,000-row tables was about 10%
# faster than with 4 KiB pages, full scans of a million rows a quarter
# faster (bench/, docs/performance.md).
GENERATION_PAGE_SIZE = 16384

_TRIVIA_RE = re.compile(r"(?:\s+|;|--[^\n]*(?:\n|\Z)|/\*.*?(?:\*/|\Z))*", re.S)


def only_trivia(text: str) -> bool:
    """True if text holds nothing but whitespace, ';' and comments."""
    m = _TRIVIA_RE.match(text)
    return m is not None and m.end() == len(text)


def file_uri(path: str, **params: str) -> str:
    query = urllib.parse.urlencode(params)
    return "file:" + urllib.parse.quote(path) + ("?" + query if query else "")


def open_writer(path: str, durable: bool = False) -> apsw.Connection:
    """A read-write connection in WAL mode (readers never block the writer).

    Generation files are transient, so they skip fsync; the static DB is
    opened ``durable`` (synchronous=FULL).
    """
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
    conn.set_busy_timeout(5000)
    if not durable:
        # Only takes effect on a new file (generation files always are).
        conn.pragma("page_size", GENERATION_PAGE_SIZE)
    conn.pragma("journal_mode", "wal")
    conn.pragma("synchronous", "full" if durable else "off")
    # A failed big write leaves its pages in the WAL file; cap what the file
    # keeps once it is reset so the space comes back (see reclaim_wal).
    conn.pragma("journal_size_limit", WAL_SIZE_LIMIT)
    return conn


def reclaim_wal(conn: apsw.Connection) -> None:
    """After a failed write: checkpoint and truncate the WAL if possible,
    giving the disk space back (best effort, never raises)."""
    try:
        conn.pragma("wal_checkpoint", "TRUNCATE")
    except apsw.Error:
        pass


def open_reader(path: str, static_path: Optional[str]) -> apsw.Connection:
    """A read-only connection on a generation file with the static DB attached."""
    conn = apsw.Connection(
        file_uri(path, mode="ro"),
        flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI,
    )
    conn.set_busy_timeout(2000)
    if static_path is not None:
        conn.execute(f"ATTACH DATABASE ? AS {STATIC_SCHEMA}", (file_uri(static_path, mode="ro"),))
    conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 0)
    conn.limit(apsw.SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_LENGTH)
    conn.limit(apsw.SQLITE_LIMIT_LENGTH, MAX_VALUE_LENGTH)
    return conn


def copy_database(path: str, target: str) -> None:
    """Copy the DB at ``path`` into a new file ``target`` (VACUUM INTO).

    Uses its own read-only connection: VACUUM INTO attaches the target, which
    a reader connection (attach limit 0) cannot do.
    """
    conn = apsw.Connection(
        file_uri(path, mode="ro"),
        flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI,
    )
    try:
        conn.set_busy_timeout(2000)
        conn.execute("VACUUM INTO ?", (target,))
    finally:
        conn.close()


def copy_connection(conn: apsw.Connection, target: str) -> None:
    """Copy what ``conn`` sees of its main DB into a new file ``target``
    (the backup API: works even when ``conn``'s file was deleted, as long as
    ``conn`` still holds it open)."""
    dest = apsw.Connection(target, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
    try:
        with dest.backup("main", conn, "main") as backup:
            backup.step(-1)
    finally:
        dest.close()


def read_only_authorizer(
    action: int,
    arg1: Optional[str],
    arg2: Optional[str],
    dbname: Optional[str],
    trigger: Optional[str],
) -> int:
    """Allow reading and nothing else; used while a client statement prepares."""
    if action in _ALLOWED_ACTIONS:
        return apsw.SQLITE_OK
    if action == apsw.SQLITE_FUNCTION:
        if arg2 is not None and arg2.lower() in DENIED_FUNCTIONS:
            return apsw.SQLITE_DENY
        return apsw.SQLITE_OK
    return apsw.SQLITE_DENY


def prepare_guarded(
    conn: apsw.Connection, sql: str, guard: bool = True
) -> tuple[str, tuple[str, ...]]:
    """Check ``sql`` is exactly one read-only statement.

    Returns that statement and its column names. Uses SQLite's own
    verdicts: the authorizer denies any action but reading while the
    statement is prepared, and ``sqlite3_stmt_readonly`` must be true.
    Raises QueryRefused otherwise. Without ``guard`` (the server's own
    SQL) only the column names are looked up.
    """
    if "\x00" in sql:
        raise QueryError("invalid statement text: NUL character")
    if not guard:
        try:
            info = apsw.ext.query_info(conn, sql)
        except apsw.Error as e:
            raise QueryError(sqlite_message(e)) from None
        except (ValueError, UnicodeError) as e:
            raise QueryError(f"invalid statement text: {e}") from None
        return sql, tuple(d[0] for d in info.description or ())
    conn.authorizer = read_only_authorizer
    try:
        info = apsw.ext.query_info(conn, sql)
    except apsw.AuthError as e:
        raise QueryRefused(
            f"Statement not allowed (read-only server): {sqlite_message(e)}"
        ) from None
    except (ValueError, UnicodeError) as e:  # a lone surrogate, say
        raise QueryError(f"invalid statement text: {e}") from None
    except apsw.Error as e:
        text = sqlite_message(e)
        if "not authorized" in text:
            raise QueryRefused(f"Statement not allowed (read-only server): {text}") from None
        raise QueryError(text) from None
    finally:
        conn.authorizer = None
    if info.query_remaining and not only_trivia(info.query_remaining):
        raise QueryRefused("Only one statement per request is allowed")
    if not info.is_readonly or info.is_explain:
        raise QueryRefused("Only read-only statements are allowed")
    return info.first_query, tuple(d[0] for d in info.description or ())


def sqlite_message(e: BaseException) -> str:
    """An apsw error's SQLite message without apsw's "XxxError: " prefix."""
    text = str(e)
    prefix, sep, rest = text.partition(": ")
    if sep and prefix.endswith("Error"):
        return rest
    return text

"""Classify one client statement: a SELECT, or one of the SHOW/DESC shortcuts.

This is only a first, friendly filter. The real guard against statements
that change state is SQLite's own (read-only connection plus authorizer) in
the store, so this module does not try to find stacked statements or DML
hidden in CTEs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from qasino.core.errors import InvalidInput, QueryError, QueryRefused
from qasino.core.identifiers import check_identifier

SELECT_KEYWORDS = frozenset({"select", "with", "values"})

# The first words of SQLite's other statements: refused with one plain
# message. A statement starting with any other word is no SQL SQLite knows;
# it goes to SQLite (under the same read-only guard) so the client sees
# SQLite's own syntax error (``SELEC 1`` -> near "SELEC": syntax error).
WRITE_KEYWORDS = frozenset(
    {
        "alter",
        "analyze",
        "attach",
        "begin",
        "commit",
        "create",
        "delete",
        "detach",
        "drop",
        "end",
        "explain",
        "insert",
        "pragma",
        "reindex",
        "release",
        "replace",
        "rollback",
        "savepoint",
        "update",
        "vacuum",
    }
)

REFUSED_MESSAGE = "Only SELECT statements (and SHOW/DESC) are allowed"

# The original server's columns, in its order, and its datetime format
# ("2013-10-18 14:04:53.123 UTC": SQLite's %f is seconds with milliseconds).
DATETIME_FORMAT = "%Y-%m-%d %H:%M:%f UTC"

SHOW_TABLES_SQL = (
    "SELECT tablename, nr_rows, nr_updates, last_update_epoch, static,"
    f" strftime('{DATETIME_FORMAT}', last_update_epoch, 'unixepoch') AS last_update_datetime"
    " FROM qasino_server_tables{where} ORDER BY tablename"
)
SHOW_TABLES_LIKE_WHERE = " WHERE tablename LIKE ?"

SHOW_CONNECTIONS_SQL = (
    "SELECT identity, nr_tables, last_update_epoch,"
    f" strftime('{DATETIME_FORMAT}', last_update_epoch, 'unixepoch') AS last_update_datetime"
    " FROM qasino_server_connections ORDER BY identity"
)

SHOW_INFO_SQL = (
    "SELECT generation_number, generation_duration_s, generation_start_epoch,"
    f" strftime('{DATETIME_FORMAT}', generation_start_epoch, 'unixepoch')"
    " AS generation_start_datetime"
    " FROM qasino_server_info"
)

SHOW_VIEWS_SQL = "SELECT viewname, loaded, errormsg FROM qasino_server_views ORDER BY viewname"

DESC_VIEW_SQL = 'SELECT "view" FROM qasino_server_views WHERE viewname = ? COLLATE NOCASE'

_FIRST_WORD_RE = re.compile(r"[A-Za-z_]+")
_TRAILING_RE = re.compile(r"[\s;]+\Z")
_SHOW_RE = re.compile(r"show\s+(?P<what>[A-Za-z_]+)(?P<rest>.*)\Z", re.IGNORECASE | re.DOTALL)
_LIKE_RE = re.compile(r"like\s*'(?P<pattern>(?:[^']|'')*)'\Z", re.IGNORECASE | re.DOTALL)
_DESC_RE = re.compile(
    r"(?:describe|desc)(?:\s+(?P<view>view)\b)?\s*(?P<name>.*)\Z", re.IGNORECASE | re.DOTALL
)


@dataclass(frozen=True)
class Command:
    """One classified client statement.

    ``kind`` is one of "select", "show_tables", "show_connections",
    "show_info", "show_views", "desc_table", "desc_view". ``sql`` is what
    the store runs (empty for "desc_table": the store answers it from its
    schema), with ``params`` bound to it. ``name`` is the checked target of
    DESC / DESC VIEW.
    """

    kind: str
    sql: str
    params: tuple[object, ...] = ()
    name: Optional[str] = None


def strip_leading_comments(text: str) -> str:
    """Drop whitespace, ``-- ...`` line comments and ``/* ... */`` comments
    from the start of ``text`` (an unterminated comment eats the rest)."""
    position = 0
    length = len(text)
    while True:
        while position < length and text[position].isspace():
            position += 1
        if text.startswith("--", position):
            newline = text.find("\n", position)
            position = length if newline < 0 else newline + 1
        elif text.startswith("/*", position):
            end = text.find("*/", position + 2)
            position = length if end < 0 else end + 2
        else:
            return text[position:]


def strip_trailing(text: str) -> str:
    """Drop trailing whitespace and any number of trailing semicolons."""
    return _TRAILING_RE.sub("", text)


def first_keyword(text: str) -> str:
    """The first word of ``text`` after leading comments, lower-cased ("" if none)."""
    match = _FIRST_WORD_RE.match(strip_leading_comments(text))
    return match.group(0).lower() if match else ""


def parse_command(text: str) -> Command:
    """Classify one statement; raise QueryError / QueryRefused if it is not allowed."""
    body = strip_trailing(strip_leading_comments(text))
    if not body:
        raise QueryError("Empty statement")
    keyword = first_keyword(body)
    if keyword == "show":
        return _parse_show(body)
    if keyword in ("desc", "describe"):
        return _parse_desc(body)
    if keyword in WRITE_KEYWORDS:
        raise QueryRefused(REFUSED_MESSAGE)
    # SELECT, or something SQLite will call a syntax error (guarded all the same).
    return Command(kind="select", sql=strip_trailing(text).strip())


def _parse_show(body: str) -> Command:
    match = _SHOW_RE.match(body)
    what = match.group("what").lower() if match else ""
    rest = match.group("rest").strip() if match else ""
    if match is None or (rest and what != "tables"):
        raise QueryError(_show_usage())
    if what == "tables":
        return _show_tables(rest)
    if what == "connections":
        return Command(kind="show_connections", sql=SHOW_CONNECTIONS_SQL)
    if what == "info":
        return Command(kind="show_info", sql=SHOW_INFO_SQL)
    if what == "views":
        return Command(kind="show_views", sql=SHOW_VIEWS_SQL)
    raise QueryError(_show_usage())


def _show_tables(rest: str) -> Command:
    if not rest:
        return Command(kind="show_tables", sql=SHOW_TABLES_SQL.format(where=""))
    like = _LIKE_RE.match(rest)
    if like is None:
        raise QueryError("SHOW tables LIKE needs one quoted pattern, e.g. SHOW tables LIKE 'abc%'")
    pattern = like.group("pattern").replace("''", "'")
    return Command(
        kind="show_tables",
        sql=SHOW_TABLES_SQL.format(where=SHOW_TABLES_LIKE_WHERE),
        params=(pattern,),
    )


def _show_usage() -> str:
    return (
        "Unrecognized SHOW statement: use SHOW tables [LIKE 'pattern'], connections, info or views"
    )


def _parse_desc(body: str) -> Command:
    match = _DESC_RE.match(body)
    assert match is not None  # the keyword check guarantees DESC / DESCRIBE
    is_view = match.group("view") is not None
    raw_name = match.group("name").strip()
    if not raw_name:
        if is_view:
            # "DESC view": a table that happens to be called "view".
            return _desc_table("view")
        raise QueryError("DESC needs a table name: DESC tablename or DESC VIEW viewname")
    if is_view:
        name = _checked(raw_name)
        return Command(kind="desc_view", sql=DESC_VIEW_SQL, params=(name,), name=name)
    return _desc_table(raw_name)


def _desc_table(raw_name: str) -> Command:
    return Command(kind="desc_table", sql="", name=_checked(raw_name))


def _checked(raw_name: str) -> str:
    try:
        return check_identifier(raw_name, "name")
    except InvalidInput as err:
        raise QueryError(err.message) from None

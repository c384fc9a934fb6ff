"""Views as TEMP views on each reader connection.

A non-TEMP SQLite view cannot reach into an attached database, and views
must join generation tables with static ones, so every reader connection
creates the views itself, as TEMP views, right after it opens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import apsw
import apsw.ext

from qasino.core.identifiers import quote_ident
from qasino.core.model import ViewDef
from qasino.store.sqlite import DENIED_FUNCTIONS, only_trivia, sqlite_message

_VIEW_ACTIONS = frozenset(
    {
        apsw.SQLITE_SELECT,
        apsw.SQLITE_READ,
        apsw.SQLITE_RECURSIVE,
        apsw.SQLITE_CREATE_TEMP_VIEW,
    }
)


def _view_authorizer(
    action: int,
    arg1: Optional[str],
    arg2: Optional[str],
    dbname: Optional[str],
    trigger: Optional[str],
) -> int:
    if action in _VIEW_ACTIONS:
        return apsw.SQLITE_OK
    if action == apsw.SQLITE_FUNCTION:
        return apsw.SQLITE_DENY if (arg2 or "").lower() in DENIED_FUNCTIONS else apsw.SQLITE_OK
    if action in (apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE) and arg1 in (
        "sqlite_temp_master",
        "sqlite_temp_schema",
    ):
        return apsw.SQLITE_OK
    return apsw.SQLITE_DENY


def create_view_sql(view: ViewDef) -> str:
    cols = ""
    if view.column_list:
        cols = " (" + ", ".join(quote_ident(c) for c in view.column_list) + ")"
    return f"CREATE TEMP VIEW {quote_ident(view.sql_name)}{cols} AS {view.select_sql}"


def create_temp_view(conn: apsw.Connection, view: ViewDef) -> Optional[str]:
    """Create one view on ``conn``; return None, or the reason it failed."""
    if view.error:
        return view.error
    sql = create_view_sql(view)
    conn.authorizer = _view_authorizer
    try:
        info = apsw.ext.query_info(conn, sql)
        if info.query_remaining and not only_trivia(info.query_remaining):
            return "a view must be a single SELECT statement"
        conn.execute(info.first_query)
    except apsw.Error as e:
        return sqlite_message(e)
    finally:
        conn.authorizer = None
    return None


def check_view(conn: apsw.Connection, viewname: str) -> Optional[str]:
    """A view counts as loaded only if a query of it prepares."""
    try:
        apsw.ext.query_info(conn, f"SELECT * FROM temp.{quote_ident(viewname)} LIMIT 0")
    except apsw.Error as e:
        return sqlite_message(e)
    return None


def build_views(conn: apsw.Connection, views: Sequence[ViewDef]) -> dict[str, Optional[str]]:
    """Create every view, then check each; drop the ones that fail.

    Returns viewname -> None (loaded) or its error message. A view whose
    create failed is not dropped: the name may be another entry's view.
    """
    status: dict[str, Optional[str]] = {}
    for view in views:
        status[view.viewname] = create_temp_view(conn, view)
    created = [view for view in views if status[view.viewname] is None]
    for view in created:
        status[view.viewname] = check_view(conn, view.sql_name)
    for view in created:
        if status[view.viewname] is not None:
            try:
                conn.execute(f"DROP VIEW IF EXISTS temp.{quote_ident(view.sql_name)}")
            except apsw.Error:
                pass
    return status

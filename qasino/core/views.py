"""Parse views.conf: a YAML list of ``{viewname: NAME, view: "CREATE VIEW ..."}``.

A file that cannot be read, is not YAML, or is not a list fails as a whole
(:class:`ViewsFileError`; the caller keeps its previous views). A malformed
entry does not fail the file: it becomes a :class:`ViewDef` with ``error``
set, so it can be listed in ``qasino_server_views`` with ``loaded = 0``.
"""

from __future__ import annotations

import os
import re
from typing import Optional, Union

import yaml

from qasino.core.commands import SELECT_KEYWORDS, first_keyword, strip_trailing
from qasino.core.errors import ViewsFileError
from qasino.core.identifiers import is_identifier
from qasino.core.model import ViewDef

# Names of the tables the server rebuilds in every snapshot: a (TEMP) view
# with one of these names would hide the real table.
INTERNAL_TABLE_NAMES = frozenset(
    {
        "qasino_server_info",
        "qasino_server_tables",
        "qasino_server_connections",
        "qasino_server_views",
        "qasino_server_sql_stats",
        "qasino_server_update_stats",
    }
)

_NAME_PATTERN = (
    r'(?:"(?P<dq>[^"]*)"'
    r"|\[(?P<br>[^\]]*)\]"
    r"|`(?P<bt>[^`]*)`"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_$]*)\b)"
)

_CREATE_VIEW_RE = re.compile(
    r"\s*create\s+(?:(?:temp|temporary)\s+)?view\s+(?:if\s+not\s+exists\s+)?"
    + _NAME_PATTERN
    + r"\s*(?:\((?P<columns>[^)]*)\)\s*)?as\b(?P<select>.*)\Z",
    re.IGNORECASE | re.DOTALL,
)

_QUOTED_COLUMN_RE = re.compile(r'\A(?:"([^"]*)"|\[([^\]]*)\]|`([^`]*)`)\Z')

VIEW_FORM = "CREATE [TEMP] VIEW [IF NOT EXISTS] name [(col, ...)] AS SELECT ..."

PathLike = Union[str, "os.PathLike[str]"]


def load_views_file(path: PathLike) -> list[ViewDef]:
    """Read and parse a views file (UTF-8); raise ViewsFileError if that fails."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as err:
        raise ViewsFileError(f"cannot read views file {os.fspath(path)}: {err}") from err
    try:
        return parse_views_yaml(text)
    except ViewsFileError as err:
        raise ViewsFileError(f"{os.fspath(path)}: {err.message}") from err


def parse_views_yaml(text: str) -> list[ViewDef]:
    """Parse the views file's text; one ViewDef per list entry, in order."""
    document = _load_yaml(text)
    if document is None:
        return []
    if not isinstance(document, list):
        raise ViewsFileError(
            "views file must be a YAML list of {viewname: NAME, view: 'CREATE VIEW ...'} "
            f"entries, not a {_yaml_kind(document)}"
        )
    seen: set[str] = set()
    return [_parse_entry(entry, index, seen) for index, entry in enumerate(document, start=1)]


def _load_yaml(text: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        raise ViewsFileError(
            f"views file is not valid YAML{_where(err)}: {_yaml_problem(err)}"
        ) from err
    except (yaml.YAMLError, RecursionError) as err:
        raise ViewsFileError(f"views file is not valid YAML: {err}") from err


def _where(err: yaml.MarkedYAMLError) -> str:
    mark = err.problem_mark or err.context_mark
    if mark is None:
        return ""
    return f" at line {mark.line + 1}, column {mark.column + 1}"


def _yaml_problem(err: yaml.MarkedYAMLError) -> str:
    parts = [part for part in (err.context, err.problem) if part]
    return ", ".join(parts) if parts else str(err)


def _yaml_kind(value: object) -> str:
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def _parse_entry(entry: object, index: int, seen: set[str]) -> ViewDef:
    """Check one list entry; problems become ``ViewDef.error``."""
    if not isinstance(entry, dict):
        return _broken("", "", f"entry {index} is not a mapping with viewname and view")
    raw_name = entry.get("viewname")
    viewname = "" if raw_name is None else str(raw_name)
    raw_view = entry.get("view")
    view = raw_view if isinstance(raw_view, str) else ""
    if raw_name is None:
        return _broken(viewname, view, f"entry {index} has no viewname")
    if not isinstance(raw_name, str) or not is_identifier(raw_name):
        return _broken(
            viewname, view, f"invalid viewname {viewname!r}: must match [A-Za-z][A-Za-z0-9_]*"
        )
    if raw_name.lower() in INTERNAL_TABLE_NAMES:
        return _broken(viewname, view, f"viewname {viewname!r} is the name of an internal table")
    if raw_name.lower() in seen:
        return _broken(viewname, view, f"duplicate viewname {viewname!r}")
    seen.add(raw_name.lower())
    if not isinstance(raw_view, str) or not raw_view.strip():
        return _broken(
            viewname, view, f"view {viewname!r} has no view text (a CREATE VIEW statement)"
        )
    return _parse_view_text(viewname, raw_view)


def _parse_view_text(viewname: str, view: str) -> ViewDef:
    """Split ``CREATE VIEW name [(cols)] AS select`` and check its parts."""
    match = _CREATE_VIEW_RE.match(view)
    if match is None:
        return _broken(viewname, view, f"view text is not of the form {VIEW_FORM}")
    name = _statement_name(match)
    create_name: Optional[str] = None
    warning: Optional[str] = None
    if name.lower() != viewname.lower():
        mismatch = f"the statement creates view {name!r} but viewname is {viewname!r}"
        if not is_identifier(name) or name.lower() in INTERNAL_TABLE_NAMES:
            return _broken(viewname, view, mismatch)
        # The original server ran the statement as written: the view is
        # queried by the statement's name. Keep that, and say so.
        create_name = name
        warning = f"warning: {mismatch}; created as {name!r} (as the original server did)"
    columns: Optional[tuple[str, ...]] = None
    if match.group("columns") is not None:
        columns, problem = _parse_column_list(match.group("columns"))
        if problem:
            return _broken(viewname, view, problem)
    select_sql = strip_trailing(match.group("select").strip())
    if first_keyword(select_sql) not in SELECT_KEYWORDS:
        return _broken(viewname, view, "the part after AS must be a SELECT (or WITH / VALUES)")
    return ViewDef(
        viewname=viewname,
        view=view,
        select_sql=select_sql,
        column_list=columns,
        create_name=create_name,
        warning=warning,
    )


def _statement_name(match: re.Match[str]) -> str:
    for group in ("dq", "br", "bt", "plain"):
        value = match.group(group)
        if value is not None:
            return value
    return ""


def _parse_column_list(text: str) -> tuple[tuple[str, ...], Optional[str]]:
    """Split ``a, "b", [c]`` into checked names; the second item is a problem."""
    names: list[str] = []
    for raw in text.split(","):
        name = _unquote(raw.strip())
        if not is_identifier(name):
            return (), f"invalid column name {raw.strip()!r} in the view's column list"
        if name.lower() in (known.lower() for known in names):
            return (), f"duplicate column name {name!r} in the view's column list"
        names.append(name)
    return tuple(names), None


def _unquote(name: str) -> str:
    quoted = _QUOTED_COLUMN_RE.match(name)
    if quoted is None:
        return name
    return next(part for part in quoted.groups() if part is not None)


def _broken(viewname: str, view: str, error: str) -> ViewDef:
    return ViewDef(viewname=viewname, view=view, select_sql="", error=error)

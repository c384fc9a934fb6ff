"""Turn query results into the protocol's JSON shape and text rendering.

Everything here is pure and linear in the size of the result: it runs on
results of up to ``--max-result-rows`` (100,000 by default) rows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import orjson

from qasino.core.model import Result

COLUMN_SEPARATOR = "  "

# What the original server showed for a query that returned no rows (its
# SQLite binding could not name the columns then); scripts look for it.
ZERO_ROWS_HEADER = "query returned zero rows"

# Text cells are escaped as the original's ``unicode_escape`` did for ASCII:
# a backslash doubled, tab/newline/return as \t \n \r, other control
# characters as \xNN, so every row stays on one line. (Non-ASCII text is
# left as UTF-8; the original escaped it too, a known bug of its own.)
_NEEDS_ESCAPE_RE = re.compile(r"[\x00-\x1f\x7f\\]")
_NAMED_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group(0)
    return _NAMED_ESCAPES.get(char) or f"\\x{ord(char):02x}"


def escape_text_cell(cell: str) -> str:
    """One cell as the text rendering shows it (see ``_NEEDS_ESCAPE_RE``)."""
    return _NEEDS_ESCAPE_RE.sub(_escape_char, cell)


def _escaped_columns(columns: Sequence[Sequence[str]]) -> list[Sequence[str]]:
    """Columns with their cells escaped; a column that needs none (C-level
    checks over its joined text) is passed through as it is."""
    out: list[Sequence[str]] = []
    for column in columns:
        text = "".join(column)
        # isprintable() is the fast common case (it is also False for some
        # non-ASCII characters, which the regex then clears).
        if not (text.isprintable() and "\\" not in text) and _NEEDS_ESCAPE_RE.search(text):
            out.append([escape_text_cell(cell) for cell in column])
        else:
            out.append(column)
    return out


def cell_to_str(value: object) -> str:
    """Render one SQLite value as the protocol's string cell.

    None -> "", int -> decimal, float -> Python's shortest repr
    (``1382105123.1``), str unchanged, bytes -> lowercase hex.
    """
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)


def _numbers_as_str(column: Sequence[object]) -> list[str]:
    """``str()`` of each int and float of a column, at C speed.

    orjson writes the same shortest round-trip digits as Python's ``repr``
    and the same decimal form, ~7x faster; it differs only where Python
    writes an exponent (and for values below 1e-4, which it writes out as
    ``0.0000...``) or for infinities (``null``). A column with any of those
    goes through ``str`` instead.
    """
    text = orjson.dumps(column)
    if b"e" in text or b"n" in text or b"0.0000" in text or len(text) < 3:
        return list(map(str, column))
    return text[1:-1].decode("ascii").split(",")


def _stringify_column(column: Sequence[object]) -> list[str]:
    """One column's cells as strings; whole-column fast paths first."""
    kinds = set(map(type, column))
    if kinds <= {str}:
        return list(column)  # type: ignore[arg-type]
    if kinds <= {int, float}:
        return _numbers_as_str(column)
    return list(map(cell_to_str, column))


def _widths(column_names: Sequence[str], columns: Sequence[Sequence[str]]) -> list[int]:
    """Width of each column: the longest of its name and its cells."""
    widths = [len(name) for name in column_names]
    for index, column in enumerate(columns[: len(widths)]):
        if column:
            widths[index] = max(widths[index], max(map(len, column)))
    return widths


def _string_columns(rows: Sequence[Sequence[object]]) -> list[list[str]]:
    """The rows' cells as strings, column by column (far fewer Python calls
    per cell than going row by row)."""
    if not rows:
        return []
    # One C-level pass per column (zip(*rows) first builds a 100,000-item
    # argument tuple and took about twice as long).
    return [_stringify_column(list(map(itemgetter(i), rows))) for i in range(len(rows[0]))]


def _rows_of(columns: Sequence[Sequence[str]]) -> list[list[str]]:
    return list(map(list, zip(*columns, strict=False))) if columns else []


def _row_tuples_of(columns: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    """Rows as tuples: a JSON encoder writes them as arrays, and they cost
    less to build than lists."""
    return list(zip(*columns, strict=False)) if columns else []


def stringify_rows(rows: Sequence[Sequence[object]]) -> list[list[str]]:
    """Render every cell of ``rows`` with :func:`cell_to_str`."""
    return _rows_of(_string_columns(rows))


def max_widths(column_names: Sequence[str], str_rows: Sequence[Sequence[str]]) -> dict[str, int]:
    """The protocol's ``max_widths``: column index (as a string) -> width."""
    widths = _widths(column_names, list(zip(*str_rows, strict=False)))
    return {str(index): width for index, width in enumerate(widths)}


def result_shape(result: Result, identity: str) -> dict[str, Any]:
    """The JSON success shape of a query result, cells as strings (each row
    a tuple, for the JSON encoder)."""
    column_names = list(result.column_names)
    columns = _string_columns(result.rows)
    # Widths as the text rendering shows the cells (escaped), which is what
    # old clients right-justify them to.
    widths = _widths(column_names, _escaped_columns(columns))
    shape: dict[str, Any] = {
        "response_op": "result_table",
        "identity": identity,
        "table": {"column_names": column_names, "rows": _row_tuples_of(columns)},
        "max_widths": {str(index): width for index, width in enumerate(widths)},
    }
    if result.truncated:
        shape["truncated"] = True
    return shape


def error_shape(message: str, identity: str) -> dict[str, Any]:
    """The JSON error shape."""
    return {"response_op": "error", "identity": identity, "error_message": message}


def _justified_line(cells: Sequence[str], widths: Sequence[int]) -> str:
    return COLUMN_SEPARATOR.join(
        [cell.rjust(width) for cell, width in zip(cells, widths, strict=False)]
    )


def render_text(
    column_names: Sequence[str],
    str_rows: Sequence[Sequence[str]],
    truncated: bool = False,
) -> str:
    """The text rendering (telnet, ``format=text``, CLI) of a result.

    Header and cells are right-justified to the column width, columns are
    joined by two spaces, a line of ``=`` sits under the header and the
    result ends with ``N rows returned`` (plus a truncation note when cut).
    Every line ends with a newline. As on the original server, cells are
    escaped to stay on one line, and a result without rows shows the header
    ``query returned zero rows`` instead of its column names.
    """
    if not str_rows:
        column_names = [ZERO_ROWS_HEADER]
    columns = _escaped_columns(list(zip(*str_rows, strict=False)))
    widths = _widths(column_names, columns)
    lines = [
        _justified_line(column_names, widths),
        COLUMN_SEPARATOR.join(["=" * width for width in widths]),
    ]
    lines.extend([_justified_line(row, widths) for row in _rows_of(columns)])
    lines.append(f"{len(str_rows)} rows returned")
    if truncated:
        lines.append(f"(result truncated at {len(str_rows)} rows)")
    lines.append("")
    return "\n".join(lines)


def render_result_text(result: Result) -> str:
    """Text rendering of a :class:`Result`."""
    return render_text(list(result.column_names), stringify_rows(result.rows), result.truncated)


def render_error_text(message: str) -> str:
    """Text rendering of an error: ``SQL error: MESSAGE``."""
    return f"SQL error: {message}\n"

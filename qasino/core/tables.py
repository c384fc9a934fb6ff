"""Parsing and checking of published tables (JSON and CSV) and their options.

Pure logic: no I/O, no SQLite. Every malformed input raises
:class:`~qasino.core.errors.InvalidInput` with a message naming the field,
row (``rows[3]`` in JSON, ``line 7`` in CSV) and column; no other exception
type escapes, whatever the input.

Decisions callers should know:

* ``True``/``False`` cells become ``1``/``0`` (SQLite has no boolean type).
* Subclasses of int, float and str (``IntEnum``, ``numpy.float64``, ...) are
  converted to the plain type; any other cell type (list, dict, ...) is refused.
* Integers must fit in 64 bits (SQLite's INTEGER), else "integer out of range".
* A float NaN cell becomes ``None`` (what SQLite would store anyway);
  ``inf``/``-inf`` are kept (SQLite stores them as REAL).
* Strings that cannot be encoded as UTF-8 (lone surrogates, which ``json.loads``
  lets through) are refused: SQLite could not store them.
* Rows and cells are not copied when already valid; a row needing a change
  (bool, NaN, subclass) is rebuilt as a new list and the outer row list is
  shallow-copied, so the caller's objects are never mutated.
* Unknown keys in the table object and in the request are ignored.
"""

from __future__ import annotations

import csv
import io
import math
import re
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, cast

from qasino.core import identifiers
from qasino.core.errors import InvalidInput
from qasino.core.identifiers import INTEGER, REAL
from qasino.core.model import Cell, Publish, PublishOptions, Table

DEFAULT_MAX_ROWS = 1_000_000
DEFAULT_MAX_COLUMNS = 1000
DEFAULT_MAX_CELL_BYTES = 1_048_576
MAX_IDENTITY_LENGTH = 256

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_TRUE_WORDS = frozenset({"1", "true", "yes"})
_FALSE_WORDS = frozenset({"0", "", "false", "no"})
_FLAG_NAMES = ("persist", "static", "update")
_BAD_IDENTITY_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_VERSION_RE = re.compile(r"^[0-9]+(?:\.[0-9]+)*\Z")
_CSV_HEADER_LINES = ("options", "tablename", "column names", "column types", "descriptions")

RowLabel = Callable[[int], str]


# ---------------------------------------------------------------------------
# Small helpers


def _shown(value: object, limit: int = 60) -> str:
    """A short repr of a scalar for error messages; other values by kind.

    Never calls a user-defined ``__repr__`` and never converts a huge int to
    text (Python refuses ints of more than 4300 digits).
    """
    kind = type(value)
    if issubclass(kind, str):
        text = repr(str.__str__(cast(str, value))[:limit])
    elif kind is float or value is None or kind is bool:
        text = repr(value)
    elif kind is int and abs(cast(int, value)) < 10**limit:
        text = repr(value)
    else:
        return f"<{_kind(value)}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: object) -> str:
    """The JSON-ish name of a value's type, for error messages."""
    kind = type(value)
    if value is None:
        return "null"
    if issubclass(kind, bool):
        return "boolean"
    if issubclass(kind, (int, float)):
        return "number"
    if issubclass(kind, str):
        return "string"
    if issubclass(kind, (list, tuple)):
        return "list"
    if issubclass(kind, dict):
        return "object"
    return kind.__name__


def _as_str(value: object) -> str | None:
    """``value`` as a plain str if its type is str or a subclass, else None.

    Goes by the real type (not ``isinstance``, which trusts ``__class__``)
    and never calls a subclass's overridden methods.
    """
    if issubclass(type(value), str):
        return str.__str__(cast(str, value))
    return None


def _identifier(value: object, what: str) -> str:
    """identifiers.check_identifier, refusing non-strings up front.

    (check_identifier puts ``repr(value)`` in its message, which fails for
    ints of more than 4300 digits and is costly for big containers.)
    """
    text = _as_str(value)
    if text is None:
        raise InvalidInput(f"invalid {what}: expected a string, got {_kind(value)}")
    return identifiers.check_identifier(text, what)


def _require(obj: Mapping[str, object], key: str, where: str) -> object:
    """``obj[key]``, or InvalidInput naming the missing field."""
    if key not in obj:
        raise InvalidInput(f"missing field {key!r} in {where}")
    return obj[key]


@contextmanager
def _context(prefix: str) -> Iterator[None]:
    """Re-raise InvalidInput raised inside with ``prefix: `` in front."""
    try:
        yield
    except InvalidInput as exc:
        raise InvalidInput(f"{prefix}: {exc.message}") from None


def _row_label(index: int) -> str:
    return f"rows[{index}]"


# ---------------------------------------------------------------------------
# Table header: name, columns, types


def _check_tablename(name: object) -> str:
    """A valid identifier that does not use the reserved internal prefix."""
    tablename = _identifier(name, "tablename")
    if tablename.lower().startswith(identifiers.INTERNAL_PREFIX):
        raise InvalidInput(
            f"tablename {tablename!r} is reserved: names starting with "
            f"{identifiers.INTERNAL_PREFIX!r} belong to the server"
        )
    return tablename


def _check_column_names(names: object, max_columns: int) -> tuple[str, ...]:
    """A non-empty list of distinct (case-insensitively) identifiers."""
    if not isinstance(names, (list, tuple)):
        raise InvalidInput(f"column_names must be a list, got {_kind(names)}")
    if not names:
        raise InvalidInput("column_names must not be empty")
    if len(names) > max_columns:
        raise InvalidInput(f"too many columns: {len(names)}, the limit is {max_columns}")
    seen: dict[str, str] = {}
    for name in names:
        column = _identifier(name, "column name")
        folded = column.lower()
        if folded in seen:
            raise InvalidInput(
                f"duplicate column name {column!r} (same as {seen[folded]!r}; "
                "column names are case-insensitive)"
            )
        seen[folded] = column
    return tuple(seen.values())


def _check_column_types(types: object, names: tuple[str, ...]) -> tuple[str, ...]:
    """One known type per column, normalised to INTEGER, REAL or TEXT."""
    if not isinstance(types, (list, tuple)):
        raise InvalidInput(f"column_types must be a list, got {_kind(types)}")
    if len(types) != len(names):
        raise InvalidInput(
            f"column_types has {len(types)} entries but column_names has {len(names)}"
        )
    normalised = []
    for name, type_name in zip(names, types, strict=True):
        with _context(f"column {name!r}"):
            text = _as_str(type_name)
            if text is None:
                raise InvalidInput(f"column type must be a string, got {_kind(type_name)}")
            normalised.append(identifiers.normalize_type(text))
    return tuple(normalised)


# ---------------------------------------------------------------------------
# Rows and cells


def _check_cell(cell: object, max_cell_bytes: int) -> Cell:
    """Return the cell as stored (maybe converted), or raise InvalidInput."""
    if cell is None:
        return None
    kind = type(cell)
    if issubclass(kind, str):
        text = str.__str__(cast(str, cell))
        if text.isascii():
            size = len(text)
        else:
            try:
                size = len(text.encode("utf-8"))
            except UnicodeEncodeError:
                raise InvalidInput(
                    "text is not valid Unicode (contains a lone surrogate)"
                ) from None
        if size > max_cell_bytes:
            raise InvalidInput(
                f"text of {size} bytes is longer than the limit of {max_cell_bytes} bytes"
            )
        return text
    if issubclass(kind, int):  # bool included: True -> 1, False -> 0
        number = int.__int__(cast(int, cell))
        if not INT64_MIN <= number <= INT64_MAX:
            raise InvalidInput("integer out of range (must fit in 64 bits)")
        return number
    if issubclass(kind, float):
        real = float.__float__(cast(float, cell))
        return None if real != real else real
    raise InvalidInput(f"unsupported cell {_kind(cell)}: cells must be numbers, strings or null")


def _check_row_slowly(
    row: object,
    index: int,
    column_names: tuple[str, ...],
    max_cell_bytes: int,
    label: RowLabel,
) -> Sequence[Cell]:
    """Full check of one row, for rows the fast loop did not accept.

    Returns the row itself when it is valid as is, else a new list with the
    converted cells; raises InvalidInput naming the row and column.
    """
    ncols = len(column_names)
    if not isinstance(row, (list, tuple)):
        raise InvalidInput(f"{label(index)}: expected a list of {ncols} cells, got {_kind(row)}")
    if len(row) != ncols:
        raise InvalidInput(f"{label(index)}: has {len(row)} cells, expected {ncols}")
    fixed: list[Cell] | None = None
    position = 0
    try:
        for position, cell in enumerate(row):
            checked = _check_cell(cell, max_cell_bytes)
            if checked is not cell:
                if fixed is None:
                    fixed = list(row)
                fixed[position] = checked
    except InvalidInput as exc:
        raise InvalidInput(
            f"{label(index)}, column {column_names[position]!r}: {exc.message}"
        ) from None
    return row if fixed is None else fixed


def _check_rows(
    rows: object,
    column_names: tuple[str, ...],
    max_rows: int,
    max_cell_bytes: int,
    label: RowLabel = _row_label,
) -> Sequence[Sequence[Cell]]:
    """Check every row; return ``rows`` itself unless a row had to change.

    The inner loop only recognises the common, already-valid cells (exact
    int in range, non-NaN float, short ASCII str, None); anything else sends
    the row to :func:`_check_row_slowly`, which converts or reports it.
    """
    if not isinstance(rows, (list, tuple)):
        raise InvalidInput(f"rows must be a list, got {_kind(rows)}")
    if len(rows) > max_rows:
        raise InvalidInput(f"too many rows: {len(rows)}, the limit is {max_rows}")
    ncols = len(column_names)
    result: list[Sequence[Cell]] | None = None
    for index, row in enumerate(rows):
        if (type(row) is list or type(row) is tuple) and len(row) == ncols:
            for cell in row:
                kind = type(cell)
                if kind is str:
                    if len(cell) > max_cell_bytes or not cell.isascii():
                        break
                elif kind is int:
                    if cell > INT64_MAX or cell < INT64_MIN:
                        break
                elif kind is float:
                    if cell != cell:
                        break
                elif cell is not None:
                    break
            else:
                continue
        checked = _check_row_slowly(row, index, column_names, max_cell_bytes, label)
        if checked is not row:
            if result is None:
                result = list(rows)
            result[index] = checked
    return rows if result is None else result


def _rows_are_plain_lists(rows: object, ncols: int, max_rows: int) -> bool:
    """True if ``rows`` is a list of at most ``max_rows`` lists of ``ncols``
    items each (checked at C speed: no Python loop over the rows)."""
    return (
        type(rows) is list
        and len(rows) <= max_rows
        and (not rows or (set(map(type, rows)) == {list} and set(map(len, rows)) == {ncols}))
    )


def explain_cells(table: Table) -> None:
    """Raise InvalidInput naming the first bad cell of ``table``, if any.

    For a Table built with ``cells_checked`` false whose insert SQLite
    refused: the full check finds the cell and words the error. (Cell
    sizes were settled when the Table was built, so they are not checked.)
    """
    _check_rows(table.rows, table.column_names, len(table.rows), INT64_MAX)


# ---------------------------------------------------------------------------
# JSON table


# Checked headers (tablename, column names and types) by what was sent:
# publishers send the same few headers every generation.
_HEADERS: dict[tuple[object, ...], tuple[str, tuple[str, ...], tuple[str, ...]]] = {}
HEADER_CACHE_SIZE = 4096


def _checked_header(
    obj: dict[Any, Any], max_columns: int
) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """The checked (tablename, column names, normalised types) of a table
    object; InvalidInput as the checks word it. A header seen before (equal
    strings) is answered from ``_HEADERS``."""
    name, names, types = obj.get("tablename"), obj.get("column_names"), obj.get("column_types")
    key: tuple[object, ...] | None = None
    if type(name) is str and type(names) is list and type(types) is list:
        key = (name, max_columns, tuple(names), tuple(types))
        try:
            header = _HEADERS.get(key)
        except TypeError:  # an unhashable name or type: the checks will say
            key = header = None
        if header is not None:
            return header
    tablename = _check_tablename(_require(obj, "tablename", "table"))
    with _context(f"table {tablename!r}"):
        checked_names = _check_column_names(_require(obj, "column_names", "table"), max_columns)
        checked_types = _check_column_types(_require(obj, "column_types", "table"), checked_names)
    header = (tablename, checked_names, checked_types)
    if key is not None:
        if len(_HEADERS) >= HEADER_CACHE_SIZE:
            _HEADERS.clear()
        _HEADERS[key] = header
    return header


def parse_table(
    obj: object,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_columns: int = DEFAULT_MAX_COLUMNS,
    max_cell_bytes: int = DEFAULT_MAX_CELL_BYTES,
    decoded_from_bytes: int | None = None,
) -> Table:
    """Check the inner table object of a JSON publish and build a Table.

    ``obj`` is ``{"tablename", "column_names", "column_types", "rows"}``
    (other keys are ignored). Rows are lists (tuples are accepted too) of
    exactly ``len(column_names)`` cells, each int, float, str or None.
    Booleans become 1/0, NaN becomes None, int/float/str subclasses become
    the plain type. Integers must fit in 64 bits; str cells may be at most
    ``max_cell_bytes`` bytes of UTF-8. Raises InvalidInput otherwise.

    ``decoded_from_bytes``: ``obj`` came from orjson reading that many
    bytes (so it holds plain JSON values only: no NaN, infinity or lone
    surrogate; see ``qasino.ops.decode_body``). When that is at most
    ``max_cell_bytes`` no cell can be too long, and rectangular rows of
    plain lists are accepted without a Python loop over their cells: the
    Table says ``cells_checked=False`` and SQLite's binding refuses what the
    checker would (see :class:`~qasino.core.model.Table`); booleans are
    stored as 1/0, as the checker converts them.
    """
    if not isinstance(obj, dict):
        raise InvalidInput(f"table must be an object, got {_kind(obj)}")
    tablename, names, types = _checked_header(obj, max_columns)
    with _context(f"table {tablename!r}"):
        rows = _require(obj, "rows", "table")
        if (
            decoded_from_bytes is not None
            and decoded_from_bytes <= max_cell_bytes
            and _rows_are_plain_lists(rows, len(names), max_rows)
        ):
            return Table(tablename, names, types, cast(list[list[Cell]], rows), False)
        rows = _check_rows(rows, names, max_rows, max_cell_bytes)
    return Table(tablename=tablename, column_names=names, column_types=types, rows=rows)


# ---------------------------------------------------------------------------
# Options


def _parse_flag(name: str, value: object) -> bool:
    """A publish flag: 1/true/"yes"... or 0/false/""/None/"no"..."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if type(value) is int and value in (0, 1):
        return value == 1
    text = _as_str(value)
    if text is not None:
        word = text.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise InvalidInput(f"option {name!r} must be 1/true/yes or 0/false/no, got {_shown(value)}")


def _parse_identity(value: object, required: bool) -> str:
    """A non-empty, printable identity of at most 256 characters ("" if absent)."""
    if value is None:
        if required:
            raise InvalidInput("missing identity")
        return ""
    text = _as_str(value)
    if text is None:
        raise InvalidInput(f"identity must be a string, got {_kind(value)}")
    if not text.strip():
        raise InvalidInput("identity must not be empty")
    if len(text) > MAX_IDENTITY_LENGTH:
        raise InvalidInput(
            f"identity is {len(text)} characters long, the limit is {MAX_IDENTITY_LENGTH}"
        )
    if _BAD_IDENTITY_CHARS.search(text):
        raise InvalidInput(
            f"identity {_shown(text)} contains control characters or lone surrogates"
        )
    return text


def _parse_keycols(value: object) -> tuple[str, ...]:
    """``"a;b"`` or ``["a", "b"]`` -> ("a", "b"); None or "" -> ()."""
    if value is None:
        return ()
    text = _as_str(value)
    if text is not None:
        parts: Sequence[object] = [part.strip() for part in text.split(";") if part.strip()]
    elif isinstance(value, (list, tuple)):
        parts = value
    else:
        raise InvalidInput(f"keycols must be a ';'-separated string or a list, got {_kind(value)}")
    seen: set[str] = set()
    keycols = []
    for part in parts:
        name = _identifier(part, "key column")
        if name.lower() in seen:
            raise InvalidInput(f"duplicate key column {name!r}")
        seen.add(name.lower())
        keycols.append(name)
    return tuple(keycols)


def parse_options(obj: Mapping[str, Any], identity_required: bool = True) -> PublishOptions:
    """Read the publish options from the top level of a request.

    ``identity``: non-empty str, at most 256 characters, no control
    characters; when absent and ``identity_required`` is false it is ``""``
    (the caller fills it in). ``persist``/``static``/``update``: 1, true,
    "1", "true", "yes" or 0, false, "0", "", null, "false", "no" (strings
    case-insensitive, surrounding spaces ignored). ``keycols``: ``"a;b"`` or a
    list of names, kept (as given) even without ``update``. ``static`` and
    ``persist`` together are refused. Unknown keys are ignored.
    """
    if not isinstance(obj, Mapping):
        raise InvalidInput(f"request must be an object, got {_kind(obj)}")
    identity = _parse_identity(obj.get("identity"), identity_required)
    flags = {name: _parse_flag(name, obj.get(name)) for name in _FLAG_NAMES}
    if flags["static"] and flags["persist"]:
        raise InvalidInput(
            "static and persist cannot be combined (static already survives restarts)"
        )
    return PublishOptions(
        identity=identity,
        persist=flags["persist"],
        static=flags["static"],
        update=flags["update"],
        keycols=_parse_keycols(obj.get("keycols")),
    )


def _match_keycols(options: PublishOptions, table: Table) -> PublishOptions:
    """Check every key column is a table column; spell them as the table does."""
    if not options.keycols:
        return options
    by_folded = {name.lower(): name for name in table.column_names}
    matched = []
    for keycol in options.keycols:
        column = by_folded.get(keycol.lower())
        if column is None:
            raise InvalidInput(
                f"key column {keycol!r} is not a column of table {table.tablename!r}"
            )
        matched.append(column)
    return replace(options, keycols=tuple(matched))


def parse_json_publish(
    obj: object,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_columns: int = DEFAULT_MAX_COLUMNS,
    max_cell_bytes: int = DEFAULT_MAX_CELL_BYTES,
    decoded_from_bytes: int | None = None,
) -> Publish:
    """Check a whole ``add_table_data`` request (options + ``table``).

    Key columns must be columns of the table (case-insensitively); they are
    returned spelled as in ``column_names``. ``decoded_from_bytes``: see
    :func:`parse_table`.
    """
    if not isinstance(obj, dict):
        raise InvalidInput(f"request must be an object, got {_kind(obj)}")
    options = parse_options(obj)
    table = parse_table(
        _require(obj, "table", "request"),
        max_rows=max_rows,
        max_columns=max_columns,
        max_cell_bytes=max_cell_bytes,
        decoded_from_bytes=decoded_from_bytes,
    )
    return Publish(table=table, options=_match_keycols(options, table))


# ---------------------------------------------------------------------------
# CSV


def _decode(text: str | bytes) -> str:
    """bytes -> str (UTF-8, BOM stripped); str loses a leading BOM too."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"CSV is not valid UTF-8 (at byte {exc.start})") from None
    elif not isinstance(text, str):
        raise InvalidInput(f"CSV must be text, got {type(text).__name__}")
    return text[1:] if text.startswith("\ufeff") else text


def _ensure_field_limit(max_cell_bytes: int) -> None:
    """Let the csv module read cells up to the limit (its default is 128 KiB).

    A cell of at most ``max_cell_bytes`` UTF-8 bytes has at most as many
    characters; longer cells are refused by csv, which we report as an error.
    """
    wanted = min(max_cell_bytes + 1, 2**31 - 1)
    if csv.field_size_limit() < wanted:
        csv.field_size_limit(wanted)


def _csv_records(text: str) -> Iterator[tuple[int, list[str]]]:
    """Yield (1-based first line number, cells) for each CSV record.

    The reader is strict: an unclosed quote or text after a closing quote is
    an error rather than a silently swallowed rest of the file.
    """
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InvalidInput(f"line {start}: malformed CSV: {exc}") from None
        yield start, cells
        start = reader.line_num + 1


def _next_header(records: Iterator[tuple[int, list[str]]], index: int) -> tuple[int, list[str]]:
    """The next header record, or an error naming the missing line."""
    for record in records:
        return record
    raise InvalidInput(f"CSV ends before the {_CSV_HEADER_LINES[index]} line (line {index + 1})")


def _csv_options(cells: list[str]) -> dict[str, str]:
    """Line 1: a version number and/or ``key=value`` options -> dict."""
    options: dict[str, str] = {}
    if not any(cell.strip() for cell in cells):
        raise InvalidInput("expected a version number or key=value options")
    for cell in cells:
        item = cell.strip()
        if not item:
            continue
        if "=" not in item:
            if not _VERSION_RE.match(item):
                raise InvalidInput(
                    f"expected a version number or key=value options, got {_shown(item)}"
                )
            continue
        key, _, value = item.partition("=")
        key = key.strip().lower()
        if key in options:
            raise InvalidInput(f"option {key!r} given twice")
        options[key] = value.strip()
    return options


def _csv_tablename(cells: list[str]) -> str:
    """Line 2: exactly one cell, the table name."""
    if len(cells) != 1:
        raise InvalidInput(f"expected just the tablename, got {len(cells)} cells")
    return _check_tablename(cells[0].strip())


def _int_cell(text: str) -> int | float | None:
    """An INTEGER cell: int, or float for "12.0"/"1e3"-style values."""
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        if "." not in text and "e" not in text.lower():
            raise
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(text) from None
        return value


def _real_cell(text: str) -> float | None:
    return float(text) if text else None


def _text_cell(text: str) -> str | None:
    return text if text else None


_CONVERTERS: dict[str, Callable[[str], Cell]] = {
    INTEGER: _int_cell,
    REAL: _real_cell,
    identifiers.TEXT: _text_cell,
}


def _convert_row(
    cells: list[str],
    line: int,
    names: tuple[str, ...],
    types: tuple[str, ...],
    converters: list[Callable[[str], Cell]],
) -> list[Cell]:
    """Convert one CSV data record by column type, or raise naming the line."""
    if len(cells) != len(names):
        raise InvalidInput(f"line {line}: has {len(cells)} cells, expected {len(names)}")
    try:
        return [convert(cell) for convert, cell in zip(converters, cells, strict=True)]
    except ValueError:
        pass
    for name, type_name, convert, cell in zip(names, types, converters, cells, strict=True):
        try:
            convert(cell)
        except ValueError:
            raise InvalidInput(
                f"line {line}, column {name!r}: cannot convert {_shown(cell)} to {type_name}"
            ) from None
    raise AssertionError("unreachable: a cell failed to convert")  # pragma: no cover


def _csv_rows(
    records: Iterator[tuple[int, list[str]]],
    names: tuple[str, ...],
    types: tuple[str, ...],
    max_rows: int,
) -> tuple[list[list[Cell]], array[int]]:
    """Convert the data records; blank lines are skipped anywhere."""
    converters = [_CONVERTERS[type_name] for type_name in types]
    rows: list[list[Cell]] = []
    lines: array[int] = array("q")
    for line, cells in records:
        if not cells:
            continue
        if len(rows) >= max_rows:
            raise InvalidInput(f"line {line}: too many rows, the limit is {max_rows}")
        rows.append(_convert_row(cells, line, names, types, converters))
        lines.append(line)
    return rows, lines


def parse_csv_publish(
    text: str | bytes,
    identity: str | None = None,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_columns: int = DEFAULT_MAX_COLUMNS,
    max_cell_bytes: int = DEFAULT_MAX_CELL_BYTES,
    tablename: str | None = None,
) -> Publish:
    """Parse a table in the CSV publish format of PROTOCOL.md.

    With ``tablename`` (the CSV agent: the index file names the table) the
    second line is not read at all, as the original agent did: it may hold
    any text, a description say, even with commas or quotes.

    Lines: (1) a version number and/or ``key=value`` options (``static``,
    ``update``, ``persist``, ``keycols=a;b``, ``identity``; keys
    case-insensitive, unknown keys ignored as the original server did),
    (2) tablename, (3) column names, (4) column types, (5) descriptions
    (ignored, but the line must be there), then data rows. The five header
    lines are positional; blank lines among the data rows (and at the end)
    are skipped. Empty cells are NULL; INTEGER cells go through int()
    ("12.0"-style values become floats), REAL through float(), TEXT stays
    str. Quoted cells may contain commas and newlines; line numbers in
    errors are 1-based physical lines where the record starts.

    The identity comes from the options line, else from ``identity``, else
    it is an error. bytes are decoded as UTF-8 (a BOM is stripped).
    """
    content = _decode(text)
    if tablename is not None:
        _check_tablename(tablename)
        first, newline, rest = content.partition("\n")
        if newline:
            _second, _, rest = rest.partition("\n")
            # Same line numbers; line 2 now holds the index's name.
            content = f"{first}\n{tablename}\n{rest}"
    _ensure_field_limit(max_cell_bytes)
    records = _csv_records(content)
    line, cells = _next_header(records, 0)
    with _context(f"line {line}"):
        options = parse_options(_csv_options(cells), identity_required=False)
    if not options.identity:
        if identity is None:
            raise InvalidInput("missing identity: give identity=ID in the options line (line 1)")
        options = replace(options, identity=_parse_identity(identity, True))
    line, cells = _next_header(records, 1)
    with _context(f"line {line}"):
        tablename = _csv_tablename(cells)  # (the index's name when given)
    line, cells = _next_header(records, 2)
    with _context(f"line {line}"):
        names = _check_column_names([cell.strip() for cell in cells], max_columns)
    line, cells = _next_header(records, 3)
    with _context(f"line {line}"):
        types = _check_column_types(cells, names)
    _next_header(records, 4)
    rows, lines = _csv_rows(records, names, types, max_rows)
    checked = _check_rows(rows, names, max_rows, max_cell_bytes, lambda i: f"line {lines[i]}")
    table = Table(tablename=tablename, column_names=names, column_types=types, rows=checked)
    return Publish(table=table, options=_match_keycols(options, table))

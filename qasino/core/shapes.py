"""The typed output shapes of a query: ``objects``, ``arrays``, ``ndjson``, ``csv``.

Pure functions of a result's column names, rows and a few numbers; no
reactor, no sockets. Unlike the legacy ``json`` shape (every cell a string,
NULL as ""), values keep their SQLite type: integers and reals are JSON
numbers, text is a string, NULL is ``null`` and a blob is a base64 string.
In CSV (RFC 4180: a header row, CRLF line ends, quoting as needed) NULL is
an empty field and a blob its base64 text.

Errors of these shapes are one JSON object, ``{"ok": false, "error": MSG}``,
whatever the shape asked for (the HTTP front end sends it with status 400).

The encoders work on slices of rows, so a stream can encode rows as it reads
them: :func:`csv_header` once, then :func:`csv_rows` per slice; for NDJSON
:func:`ndjson_rows` per slice.
"""

from __future__ import annotations

import base64
import csv
import io
import itertools
import json
import math
from collections.abc import Sequence
from typing import Any, Optional

import orjson

from qasino.core.errors import QueryError

LEGACY_FORMATS = ("json", "text")
# "html" was the original server's HTML table; this server has always
# answered it with the legacy JSON, and keeps doing so for old scripts.
LEGACY_ALIASES = {"html": "json"}
TYPED_FORMATS = ("objects", "arrays", "ndjson", "csv")
STREAM_FORMATS = ("ndjson", "csv")
ZMQ_FORMATS = ("json", "objects", "arrays")
FORMATS = LEGACY_FORMATS + TYPED_FORMATS

CONTENT_TYPES = {
    "objects": b"application/json",
    "arrays": b"application/json",
    "ndjson": b"application/x-ndjson",
    "csv": b"text/csv; charset=utf-8",
}
ERROR_CONTENT_TYPE = b"application/json"

Row = Sequence[object]

# Rows encoded per orjson call: each call holds the GIL for its whole run,
# so a slice bounds how long a reader thread keeps the reactor waiting.
SLICE_ROWS = 5000
# CSV rows per csv.writer call and NDJSON rows per batch (each a C call
# that holds the GIL throughout).
CSV_SLICE_ROWS = 1000
NDJSON_SLICE_ROWS = 2000


class UnknownFormat(QueryError):
    """A ``format`` this server does not produce (HTTP 400)."""


def parse_format(value: Optional[str], allowed: Sequence[str] = FORMATS) -> str:
    """The format a request asks for: ``json`` when none is given; raise
    :class:`UnknownFormat` for one not in ``allowed``."""
    if value is None or value == "":
        return "json"
    name = value.strip().lower()
    name = LEGACY_ALIASES.get(name, name)
    if name not in allowed:
        raise UnknownFormat(f"Unknown format {value!r}: use one of {', '.join(allowed)}")
    return name


def is_typed(fmt: str) -> bool:
    return fmt in TYPED_FORMATS


def _blob(value: object) -> str:
    """orjson's ``default``: what it cannot encode itself (a blob)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"cannot encode {type(value).__name__}")


def _plain(obj: object) -> object:
    """``obj`` with blobs as base64 and infinite reals as None (the rare,
    careful path)."""
    if isinstance(obj, dict):
        return {key: _plain(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(value) for value in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return _blob(obj)
    return obj


def dumps(obj: object, newline: bool = False) -> bytes:
    """Compact UTF-8 JSON with blobs as base64.

    orjson (at C speed) first; text orjson refuses (a lone surrogate read
    from a malformed database) goes through the stdlib with ``\\u`` escapes.
    Infinite reals (SQLite can hold them) are written as ``null``.
    """
    try:
        return orjson.dumps(obj, default=_blob, option=orjson.OPT_APPEND_NEWLINE if newline else 0)
    except TypeError:
        text = json.dumps(_plain(obj), separators=(",", ":"), allow_nan=False)
        return (text + ("\n" if newline else "")).encode("ascii")


def error_body(message: str) -> bytes:
    """The error reply of every typed shape."""
    return dumps({"ok": False, "error": message})


class ShapeRenderer:
    """Builds an ``objects`` or ``arrays`` reply from chunks of rows as they
    are read: :meth:`feed` each chunk (it returns the chunk's encoded size),
    then :meth:`finish`."""

    def __init__(self, fmt: str) -> None:
        if fmt not in ("objects", "arrays"):
            raise UnknownFormat(f"Unknown format {fmt!r}")
        self.fmt = fmt
        self.names: tuple[str, ...] = ()
        self.parts: list[bytes] = []

    def feed(self, rows: Sequence[Row]) -> int:
        if not rows:
            return 0
        part: Sequence[Any] = object_rows(self.names, rows) if self.fmt == "objects" else rows
        try:
            encoded = orjson.dumps(part, default=_blob)[1:-1]
        except TypeError:  # text orjson refuses: the careful path
            encoded = dumps(part)[1:-1]
        self.parts.append(encoded)
        return len(encoded)

    def finish(
        self,
        column_names: Sequence[str],
        rows: Sequence[Row],
        generation_number: Optional[int],
        truncated: bool = False,
        query_ms: float = 0.0,
    ) -> bytes:
        """The reply, after feeding ``rows`` (those not fed yet, if any)."""
        self.names = tuple(column_names)
        for start in range(0, len(rows), SLICE_ROWS):
            self.feed(rows[start : start + SLICE_ROWS])
        return b"".join(
            [
                b'{"ok":true,"generation_number":',
                dumps(generation_number),
                b',"columns":',
                dumps(list(column_names)),
                b',"rows":[',
                b",".join(self.parts),
                b'],"truncated":',
                b"true" if truncated else b"false",
                b',"query_ms":',
                orjson.dumps(round(query_ms, 3)),
                b"}",
            ]
        )


def table_body(
    fmt: str,
    column_names: Sequence[str],
    rows: Sequence[Row],
    generation_number: Optional[int],
    truncated: bool = False,
    query_ms: float = 0.0,
) -> bytes:
    """A whole result in one of the typed shapes (``objects``, ``arrays``,
    ``ndjson`` or ``csv``)."""
    if fmt == "csv":
        return csv_header(column_names) + csv_rows(rows)
    if fmt == "ndjson":
        return ndjson_rows(column_names, rows)
    renderer = ShapeRenderer(fmt)
    renderer.names = tuple(column_names)
    return renderer.finish(column_names, rows, generation_number, truncated, query_ms)


def object_rows(column_names: Sequence[str], rows: Sequence[Row]) -> list[dict[str, object]]:
    """Each row as ``{column: value}`` (a repeated column name keeps its last value)."""
    names = tuple(column_names)
    return [dict(zip(names, row, strict=False)) for row in rows]


def ndjson_rows(column_names: Sequence[str], rows: Sequence[Row]) -> bytes:
    """One JSON object per row, each ending in a newline."""
    names = tuple(column_names)
    parts = []
    for start in range(0, len(rows), NDJSON_SLICE_ROWS):
        objects = [
            dict(zip(names, row, strict=False)) for row in rows[start : start + NDJSON_SLICE_ROWS]
        ]
        try:
            lines = b"\n".join(map(orjson.dumps, objects))
        except TypeError:  # a blob, or text orjson refuses: the careful path
            lines = b"\n".join([dumps(obj) for obj in objects])
        parts.append(lines + b"\n")
    return b"".join(parts)


def csv_header(column_names: Sequence[str]) -> bytes:
    return _csv([list(column_names)])


def csv_rows(rows: Sequence[Row]) -> bytes:
    """RFC 4180 rows: NULL as an empty field, reals as Python writes them
    (shortest round trip), blobs as base64."""
    if not rows:
        return b""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for start in range(0, len(rows), CSV_SLICE_ROWS):
        part = rows[start : start + CSV_SLICE_ROWS]
        kinds = set(map(type, itertools.chain.from_iterable(part)))
        if bytes in kinds or bytearray in kinds or memoryview in kinds:
            part = [[_csv_cell(cell) for cell in row] for row in part]
        writer.writerows(part)
    return out.getvalue().encode("utf-8", "replace")


def _csv_cell(cell: object) -> object:
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return _blob(cell)
    return cell


def _csv(rows: Sequence[Row]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode("utf-8", "replace")

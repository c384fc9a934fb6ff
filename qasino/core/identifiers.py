"""Identifier and column-type rules shared by parsing and the store.

Every table name, column name and key column goes through
:func:`check_identifier` when it enters the server, and through
:func:`quote_ident` whenever it is put into SQL text.
"""

from __future__ import annotations

import re

from qasino.core.errors import InvalidInput

IDENTIFIER_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*\Z")
MAX_IDENTIFIER_LENGTH = 128

# Table names the server builds itself; publishers may not use the prefix.
INTERNAL_PREFIX = "qasino_server_"

INTEGER = "INTEGER"
REAL = "REAL"
TEXT = "TEXT"

TYPE_ALIASES: dict[str, str] = {
    "integer": INTEGER,
    "int": INTEGER,
    "ll": INTEGER,
    "time": INTEGER,
    "real": REAL,
    "float": REAL,
    "text": TEXT,
    "varchar": TEXT,
    "string": TEXT,
    "str": TEXT,
    "ip": TEXT,
}


def is_identifier(name: object) -> bool:
    return (
        isinstance(name, str)
        and len(name) <= MAX_IDENTIFIER_LENGTH
        and IDENTIFIER_RE.match(name) is not None
    )


def check_identifier(name: object, what: str = "identifier") -> str:
    """Return ``name`` if it is a valid identifier, else raise InvalidInput."""
    if not is_identifier(name):
        shown = _shown(name, 80)
        raise InvalidInput(
            f"invalid {what} {shown}: must match [A-Za-z][A-Za-z0-9_]* "
            f"and be at most {MAX_IDENTIFIER_LENGTH} characters"
        )
    assert isinstance(name, str)
    return name


def quote_ident(name: str) -> str:
    """Quote a checked identifier for SQL text. Refuses anything unchecked."""
    if not is_identifier(name):
        raise InvalidInput(f"refusing to quote invalid identifier {name!r}")
    return '"' + name + '"'


def normalize_type(type_name: object) -> str:
    """Map a protocol type alias (case-insensitive) to INTEGER, REAL or TEXT."""
    if isinstance(type_name, str):
        found = TYPE_ALIASES.get(type_name.strip().lower())
        if found is not None:
            return found
    shown = _shown(type_name, 40)
    raise InvalidInput(
        f"unknown column type {shown}: expected one of {', '.join(sorted(TYPE_ALIASES))}"
    )


def _shown(value: object, limit: int) -> str:
    """A short repr for error messages; never expensive, never raises."""
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    shown = repr(value[: limit + 1])
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."

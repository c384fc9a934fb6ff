"""Naming ``history.T`` in client SQL (``--history N``, docs/fleet.md).

The last N snapshot files are attached to every query connection and each
``history.T`` is a TEMP view over them (a UNION ALL, one SELECT per file).
SQLite binds the tables of a view in an attached database to that database,
so ``history`` cannot be a real schema holding such views; instead the
statement's ``history.T`` references are renamed to the TEMP view
``temp."history.T"`` before SQLite sees the text. This module finds them with
a small SQL tokenizer, so string literals, quoted identifiers and comments
are never touched. It decides nothing about safety: the rewritten
statement goes through the same read-only guard as any other.
"""

from __future__ import annotations

import re

from qasino.core.identifiers import is_identifier

HISTORY = "history"

_TOKEN_RE = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<line_comment>--[^\n]*(?:\n|\Z))
    | (?P<block_comment>/\*.*?(?:\*/|\Z))
    | (?P<string>'(?:[^']|'')*(?:'|\Z))
    | (?P<dquoted>"(?:[^"]|"")*(?:"|\Z))
    | (?P<bracketed>\[[^\]]*(?:\]|\Z))
    | (?P<backticked>`(?:[^`]|``)*(?:`|\Z))
    | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
    | (?P<dot>\.)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)

_TRIVIA = frozenset({"space", "line_comment", "block_comment"})


def view_name(table: str) -> str:
    """The TEMP view that stands for ``history.<table>`` (lower case)."""
    return f"{HISTORY}.{table.lower()}"


def _name_of(kind: str, text: str) -> str | None:
    """The identifier a word or quoted-identifier token names, else None."""
    if kind == "word":
        return text
    if kind == "dquoted" and text.endswith('"') and len(text) >= 2:
        return text[1:-1].replace('""', '"')
    if kind == "bracketed" and text.endswith("]"):
        return text[1:-1]
    if kind == "backticked" and text.endswith("`") and len(text) >= 2:
        return text[1:-1].replace("``", "`")
    return None


def rewrite_history(sql: str) -> tuple[str, tuple[str, ...]]:
    """``sql`` with every ``history.T`` (any quoting, case, spacing) turned
    into ``temp."history.t"``, and the lower-cased table names found.

    ``x.history.T`` (a dotted name in front) is left alone; so is ``history``
    on its own (a table or alias of that name).
    """
    tokens = [(m.lastgroup or "other", m.group()) for m in _TOKEN_RE.finditer(sql)]
    significant = [i for i, (kind, _) in enumerate(tokens) if kind not in _TRIVIA]
    replace: dict[int, tuple[int, str]] = {}  # first token -> (last token, text)
    names: list[str] = []
    for pos, i in enumerate(significant):
        kind, text = tokens[i]
        name = _name_of(kind, text)
        if name is None or name.lower() != HISTORY or pos + 2 >= len(significant):
            continue
        if pos > 0 and tokens[significant[pos - 1]][0] == "dot":
            continue
        dot, target = significant[pos + 1], significant[pos + 2]
        if tokens[dot][0] != "dot":
            continue
        table = _name_of(*tokens[target])
        if table is None or not is_identifier(table):
            continue
        lower = table.lower()
        replace[i] = (target, f'temp."{view_name(lower)}"')
        if lower not in names:
            names.append(lower)
    if not replace:
        return sql, ()
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if i in replace:
            last, text = replace[i]
            out.append(text)
            i = last + 1
        else:
            out.append(tokens[i][1])
            i += 1
    return "".join(out), tuple(names)

"""Fuzzing (issue 6, item 1): hostile input never crashes Qasino, never gets an
answer other than a result or a clean error, and never changes its data.

Three layers:

1. Property tests (hypothesis) of the table parsers: arbitrary values, text
   and bytes, and mutations of valid tables, into ``parse_table``,
   ``parse_json_publish`` and ``parse_csv_publish``. Each either returns a
   table whose invariants hold (and, for JSON, exactly what an independent
   reference check of PROTOCOL.md expects) or raises InvalidInput.
2. Property tests of the query guard: arbitrary statements and statements
   built from SQL keywords, run through ``Store.query`` on a store holding a
   snapshot, a writer generation and a static DB. Each gives a Result or a
   QueryError, and afterwards every DB file is byte-for-byte and row-for-row
   unchanged and no file appeared.
3. A bounded run of malformed bytes at every listener of a real server
   (HTTP, ZeroMQ REP, line protocol). Afterwards the server answers a valid
   query at once on all three, and the tables published before are intact.

Hypothesis runs derandomized (fixed seeds, no example database), so CI sees
the same examples every time; the network fuzzing uses a seeded RNG.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qasino.core.errors import InvalidInput, QueryError
from qasino.core.model import Publish, PublishOptions, Result, Table
from qasino.core.tables import parse_csv_publish, parse_json_publish, parse_table
from qasino.store.query import QueryLimits
from qasino.store.store import Store, StoreConfig
from tests.reliability.safety_helpers import (
    Dealer,
    DiskState,
    QasinoProcess,
    dealer_envelopes,
    http_cases,
    line_cases,
    make_table,
    new_server,
    publish_request,
    request_target,
    tcp_exchange,
    zmq_frames_cases,
    zmq_json,
    zmq_req,
    zmq_rows,
    zmtp_cases,
)
from tests.reliability.safety_helpers import http_request as raw_http_request

SEED = 20240606

PARSER_SETTINGS = settings(
    max_examples=300,
    deadline=timedelta(seconds=2),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
GUARD_SETTINGS = settings(
    max_examples=250,
    deadline=timedelta(seconds=3),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Small limits, so that generated tables reach them.
LIMITS = {"max_rows": 6, "max_columns": 5, "max_cell_bytes": 24}


# =========================================================================
# 1. Parsers
# =========================================================================

# An independent statement of PROTOCOL.md's rules (not imported from the code
# under test), used as the oracle of the JSON properties.
TYPE_ALIASES = {
    "integer": "INTEGER",
    "int": "INTEGER",
    "ll": "INTEGER",
    "time": "INTEGER",
    "real": "REAL",
    "float": "REAL",
    "text": "TEXT",
    "varchar": "TEXT",
    "string": "TEXT",
    "str": "TEXT",
    "ip": "TEXT",
}
IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
RESERVED_PREFIX = "qasino_server_"
INT64 = range(-(2**63), 2**63)
BAD_IDENTITY = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class Rejected(Exception):
    """The reference check refuses the input."""


def is_identifier(value: object) -> bool:
    return type(value) is str and len(value) <= 128 and IDENTIFIER.match(value) is not None


def expected_cell(cell: object) -> object:
    if cell is None:
        return None
    if type(cell) is bool:
        return int(cell)
    if type(cell) is int:
        if cell not in INT64:
            raise Rejected("int out of range")
        return cell
    if type(cell) is float:
        return None if math.isnan(cell) else cell
    if type(cell) is str:
        try:
            size = len(cell.encode("utf-8"))
        except UnicodeEncodeError:
            raise Rejected("lone surrogate") from None
        if size > LIMITS["max_cell_bytes"]:
            raise Rejected("cell too long")
        return cell
    raise Rejected(f"cell of type {type(cell).__name__}")


def expected_table(obj: object) -> tuple[str, tuple[str, ...], tuple[str, ...], list[list]]:
    """What parse_table must return for ``obj`` (with LIMITS), or Rejected."""
    if type(obj) is not dict:
        raise Rejected("not an object")
    for key in ("tablename", "column_names", "column_types", "rows"):
        if key not in obj:
            raise Rejected(f"no {key}")
    name = obj["tablename"]
    if not is_identifier(name) or name.lower().startswith(RESERVED_PREFIX):
        raise Rejected("tablename")
    names = obj["column_names"]
    if type(names) not in (list, tuple) or not 1 <= len(names) <= LIMITS["max_columns"]:
        raise Rejected("column_names")
    if not all(is_identifier(n) for n in names) or len({n.lower() for n in names}) < len(names):
        raise Rejected("column name")
    types = obj["column_types"]
    if type(types) not in (list, tuple) or len(types) != len(names):
        raise Rejected("column_types")
    if not all(type(t) is str and t.strip().lower() in TYPE_ALIASES for t in types):
        raise Rejected("column type")
    rows = obj["rows"]
    if type(rows) not in (list, tuple) or len(rows) > LIMITS["max_rows"]:
        raise Rejected("rows")
    out = []
    for row in rows:
        if type(row) not in (list, tuple) or len(row) != len(names):
            raise Rejected("row shape")
        out.append([expected_cell(c) for c in row])
    norm_types = tuple(TYPE_ALIASES[t.strip().lower()] for t in types)
    return name, tuple(names), norm_types, out


def fingerprint(value: object) -> object:
    """A comparable picture of a value (NaN-safe, never calls repr of an int)."""
    if type(value) is float:
        return ("float", "nan") if math.isnan(value) else ("float", value)
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return (type(value).__name__, tuple(fingerprint(v) for v in value))
    if type(value) is dict:
        return ("dict", tuple((fingerprint(k), fingerprint(v)) for k, v in value.items()))
    if value is None or type(value) in (bool, int, str, bytes):
        return (type(value).__name__, value)
    return ("object", id(value))


def same_cells(got: object, want: object) -> bool:
    return type(got) is type(want) and got == want


def check_table_invariants(table: Table) -> None:
    """What every parsed Table must satisfy, whatever the input was."""
    assert type(table) is Table
    assert is_identifier(table.tablename), table.tablename
    assert not table.tablename.lower().startswith(RESERVED_PREFIX)
    names, types = table.column_names, table.column_types
    assert type(names) is tuple and type(types) is tuple
    assert 1 <= len(names) <= LIMITS["max_columns"] and len(types) == len(names)
    assert all(is_identifier(n) for n in names)
    assert len({n.lower() for n in names}) == len(names)
    assert set(types) <= {"INTEGER", "REAL", "TEXT"}
    assert len(table.rows) <= LIMITS["max_rows"]
    for row in table.rows:
        assert type(row) in (list, tuple) and len(row) == len(names), row
        for cell in row:
            assert cell is None or type(cell) in (int, float, str), type(cell)
            if type(cell) is int:
                assert cell in INT64
            elif type(cell) is float:
                assert not math.isnan(cell)
            elif type(cell) is str:
                assert len(cell.encode("utf-8")) <= LIMITS["max_cell_bytes"]


def check_options_invariants(publish: Publish) -> None:
    opts = publish.options
    assert type(opts) is PublishOptions
    assert type(opts.identity) is str and opts.identity.strip()
    assert len(opts.identity) <= 256 and not BAD_IDENTITY.search(opts.identity)
    assert all(type(f) is bool for f in (opts.persist, opts.static, opts.update))
    assert not (opts.static and opts.persist)
    assert set(opts.keycols) <= set(publish.table.column_names)
    assert len({k.lower() for k in opts.keycols}) == len(opts.keycols)


def check_against_reference(obj: object, table: Table | None, error: InvalidInput | None) -> None:
    """parse_table's verdict on ``obj`` equals the reference's."""
    try:
        want = expected_table(obj)
    except Rejected as why:
        assert table is None, f"accepted, but the reference refuses it ({why})"
        return
    assert error is None, f"refused ({error.message}), but the reference accepts it"
    assert table is not None
    check_table_invariants(table)
    name, names, types, rows = want
    assert (table.tablename, table.column_names, table.column_types) == (name, names, types)
    assert len(table.rows) == len(rows)
    for got_row, want_row in zip(table.rows, rows):
        assert all(same_cells(g, w) for g, w in zip(got_row, want_row)), (got_row, want_row)


# ---------------------------------------------------------------- strategies

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**30, 10**4000])
    | st.floats()
    | st.text(max_size=30)
)
JSONISH = st.recursive(
    SCALARS,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
TABLE_KEYS = ("tablename", "column_names", "column_types", "rows")
TABLEISH = st.fixed_dictionaries({}, optional={k: JSONISH for k in TABLE_KEYS})

IDENTIFIERS = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,12}", fullmatch=True).filter(
    lambda s: not s.lower().startswith(RESERVED_PREFIX)
)
ALIAS_SPELLINGS = st.sampled_from(sorted(TYPE_ALIASES)).flatmap(
    lambda a: st.sampled_from([a, a.upper(), a.title(), f" {a}\t"])
)
VALID_CELLS = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=6)
)
HOSTILE_CELLS = st.sampled_from(
    [
        2**63,
        -(2**63) - 1,
        10**30,
        10**4000,
        math.nan,
        math.inf,
        -math.inf,
        [1],
        [[1, [2]]],
        {"a": 1},
        True,
        "\ud800",
        "a\x00b",
        "\x1b[31m\r\n",
        "ünï€😀",
        "é" * 13,
        "x" * 25,
        "x" * 24,
        b"bytes",
        (1, 2),
        frozenset(),
        object(),
    ]
)
BAD_NAMES = st.sampled_from(
    [
        "",
        "1abc",
        "_a",
        "a b",
        "a-b",
        "ä",
        "a\x00",
        "a\n",
        'x"; DROP TABLE t; --',
        "x" * 129,
        "x" * 128,
        "qasino_server_x",
        "QASINO_SERVER_info",
        "Qasino_server",
        "\u0430bc",  # Cyrillic a
        "ａｂｃ",
    ]
)
BAD_TYPES = st.sampled_from(
    ["bool", "", " INT ", "Integer", "TEXT\n", "blob", "ınt", None, 5, ["int"]]
)


@st.composite
def valid_tables(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(IDENTIFIERS, min_size=1, max_size=4, unique_by=lambda s: s.lower()))
    types = [draw(ALIAS_SPELLINGS) for _ in names]
    rows = draw(
        st.lists(st.lists(VALID_CELLS, min_size=len(names), max_size=len(names)), max_size=5)
    )
    return {
        "tablename": draw(IDENTIFIERS),
        "column_names": names,
        "column_types": types,
        "rows": rows,
    }


def _lists_of(obj: dict[str, Any], key: str) -> list | None:
    value = obj.get(key)
    return value if type(value) is list and value else None


def mutate(draw: st.DrawFn, obj: dict[str, Any]) -> None:
    """Apply one random mutation to a table object, in place."""
    kind = draw(st.integers(0, 13))
    rows, names, types = (_lists_of(obj, k) for k in ("rows", "column_names", "column_types"))
    if kind == 0 and obj:
        del obj[draw(st.sampled_from(sorted(obj)))]
    elif kind == 1:
        obj[draw(st.sampled_from(TABLE_KEYS))] = draw(JSONISH | HOSTILE_CELLS)
    elif kind == 2:
        obj[draw(st.text(max_size=6))] = draw(JSONISH)
    elif kind == 3 and rows:
        row = rows[draw(st.integers(0, len(rows) - 1))]
        if type(row) is list:
            row.append(draw(VALID_CELLS))
    elif kind == 4 and rows:
        row = rows[draw(st.integers(0, len(rows) - 1))]
        if type(row) is list and row:
            row.pop()
    elif kind == 5 and rows:
        rows[draw(st.integers(0, len(rows) - 1))] = draw(JSONISH | HOSTILE_CELLS)
    elif kind in (6, 7) and rows:
        row = rows[draw(st.integers(0, len(rows) - 1))]
        if type(row) is list and row:
            row[draw(st.integers(0, len(row) - 1))] = draw(HOSTILE_CELLS)
    elif kind == 8 and rows:
        rows.extend([list(r) if type(r) is list else r for r in rows] * 3)
    elif kind == 9 and names:
        names[draw(st.integers(0, len(names) - 1))] = draw(BAD_NAMES | JSONISH)
    elif kind == 10 and names and type(names[0]) is str:
        names.append(names[0].swapcase())
        if types:
            types.append("int")
    elif kind == 11 and types:
        types[draw(st.integers(0, len(types) - 1))] = draw(BAD_TYPES)
    elif kind == 12:
        obj["tablename"] = draw(BAD_NAMES | JSONISH)
    elif kind == 13 and rows:
        obj["rows"] = tuple(tuple(r) if type(r) is list else r for r in rows)


@st.composite
def mutated_tables(draw: st.DrawFn) -> dict[str, Any]:
    obj = draw(valid_tables())
    for _ in range(draw(st.integers(0, 3))):
        mutate(draw, obj)
    return obj


IDENTITIES = st.one_of(
    st.just("host1"),
    st.text(max_size=10),
    st.sampled_from(["", " ", "a\x00", "a\x85b", "x" * 257, "\ud800", "ok host ✓"]),
    JSONISH,
)
FLAGS = st.sampled_from([0, 1, True, False, "1", "yes", "no", "", None, "maybe", 2, [1]])


@st.composite
def publish_requests(draw: st.DrawFn) -> dict[str, Any]:
    table = draw(mutated_tables() | TABLEISH)
    request: dict[str, Any] = {"op": "add_table_data", "identity": "host1", "table": table}
    if draw(st.integers(0, 2)) == 0:  # a third keep valid options, the rest vary them
        return request
    if draw(st.booleans()):
        request["identity"] = draw(IDENTITIES)
    for flag in ("persist", "static", "update"):
        if draw(st.booleans()):
            request[flag] = draw(FLAGS)
    if draw(st.booleans()):
        names = table.get("column_names") if isinstance(table, dict) else None
        known = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
        request["keycols"] = draw(
            st.sampled_from(["", "a;b", ";", ";".join(known), " ; ".join(known[:1])])
            | st.lists(st.sampled_from(known or ["k"]), max_size=3)
            | JSONISH
        )
    return request


def parse_or_error(parse: Callable[[], Any]) -> tuple[Any, InvalidInput | None]:
    """Run a parser: (its value, None) or (None, the InvalidInput). Any other
    exception propagates and fails the test."""
    try:
        return parse(), None
    except InvalidInput as e:
        assert isinstance(e.message, str) and e.message, "InvalidInput without a message"
        return None, e


# ---------------------------------------------------------------- JSON properties


@PARSER_SETTINGS
@given(obj=JSONISH | TABLEISH)
def test_parse_table_of_arbitrary_values_matches_the_reference_or_raises_invalid_input(
    obj: object,
) -> None:
    before = fingerprint(obj)
    table, error = parse_or_error(lambda: parse_table(obj, **LIMITS))
    check_against_reference(obj, table, error)
    assert fingerprint(obj) == before, "the parser changed its input"


@PARSER_SETTINGS
@given(obj=mutated_tables())
def test_parse_table_of_mutated_valid_tables_matches_the_reference_or_raises_invalid_input(
    obj: dict[str, Any],
) -> None:
    before = fingerprint(obj)
    table, error = parse_or_error(lambda: parse_table(obj, **LIMITS))
    check_against_reference(obj, table, error)
    assert fingerprint(obj) == before, "the parser changed its input"


@PARSER_SETTINGS
@given(request=publish_requests() | JSONISH)
def test_parse_json_publish_returns_a_valid_publish_or_raises_invalid_input(request: Any) -> None:
    before = fingerprint(request)
    publish, error = parse_or_error(lambda: parse_json_publish(request, **LIMITS))
    assert fingerprint(request) == before, "the parser changed its input"
    if publish is None:
        return
    assert type(publish) is Publish
    check_options_invariants(publish)
    # The table part must be exactly what the reference expects.
    check_against_reference(request["table"], publish.table, None)


# ---------------------------------------------------------------- CSV properties


def csv_cell(value: object) -> str:
    if value is None:
        return ""
    return repr(value) if type(value) is float else str(value)


@st.composite
def csv_tables(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid table for CSV (cells fit their column's type) and its text."""
    names = draw(st.lists(IDENTIFIERS, min_size=1, max_size=4, unique_by=lambda s: s.lower()))
    types = [draw(ALIAS_SPELLINGS) for _ in names]
    cell_strategies = {
        "INTEGER": st.none() | st.integers(-(2**63), 2**63 - 1),
        "REAL": st.none() | st.floats(allow_nan=False),
        "TEXT": st.none()
        | st.text(
            st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
            min_size=1,
            max_size=6,
        ),
    }
    columns = [cell_strategies[TYPE_ALIASES[t.strip().lower()]] for t in types]
    rows = draw(st.lists(st.tuples(*columns).map(list), max_size=5))
    table = {
        "tablename": draw(IDENTIFIERS),
        "column_names": names,
        "column_types": types,
        "rows": rows,
    }
    options = draw(st.sampled_from(["1", "identity=csvhost", "1,persist=1", "static=yes,update=0"]))
    out = io.StringIO()
    writer = csv.writer(out)
    out.write(options + "\n")
    writer.writerow([table["tablename"]])
    writer.writerow(names)
    writer.writerow(types)
    writer.writerow(["description"] * len(names))
    for row in rows:
        writer.writerow([csv_cell(c) for c in row])
    return table, out.getvalue()


def check_csv_publish(publish: Publish) -> None:
    """Invariants of a parsed CSV table: those of every table, plus cells
    that fit their column's type."""
    assert type(publish) is Publish
    check_table_invariants(publish.table)
    check_options_invariants(publish)
    for row in publish.table.rows:
        for cell, type_ in zip(row, publish.table.column_types):
            if cell is None:
                continue
            if type_ == "INTEGER":
                assert type(cell) is int or (type(cell) is float and math.isfinite(cell)), cell
            elif type_ == "REAL":
                assert type(cell) is float, cell
            else:
                assert type(cell) is str and cell, cell


@PARSER_SETTINGS
@given(data=csv_tables())
def test_valid_csv_tables_round_trip_exactly(data: tuple[dict[str, Any], str]) -> None:
    table, text = data
    publish = parse_csv_publish(text, "fallback", **LIMITS)
    check_csv_publish(publish)
    assert publish.table.tablename == table["tablename"]
    assert list(publish.table.column_names) == table["column_names"]
    assert [list(r) for r in publish.table.rows] == table["rows"]
    for got_row, want_row in zip(publish.table.rows, table["rows"]):
        assert all(same_cells(g, w) for g, w in zip(got_row, want_row))


CSV_NOISE = st.sampled_from(
    [",", '"', "\n", "\r", "\r\n", "\x00", "\ufeff", ";", "=", "\\", " ", "é"]
)


@st.composite
def mutated_csv(draw: st.DrawFn) -> str | bytes:
    _, text = draw(csv_tables())
    for _ in range(draw(st.integers(1, 3))):
        lines = text.split("\n")
        kind = draw(st.integers(0, 8))
        pos = draw(st.integers(0, max(0, len(text) - 1)))
        if kind == 0 and len(lines) > 1:
            del lines[draw(st.integers(0, len(lines) - 1))]
            text = "\n".join(lines)
        elif kind == 1:
            line = draw(st.integers(0, len(lines) - 1))
            lines.insert(line, lines[line])
            text = "\n".join(lines)
        elif kind == 2:
            text = text[:pos] + draw(st.text(max_size=8) | CSV_NOISE) + text[pos:]
        elif kind == 3:
            text = text[:pos] + text[pos + draw(st.integers(1, 10)) :]
        elif kind == 4:
            text = text[:pos]
        elif kind == 5:
            text = "\ufeff" + text.replace("\n", draw(st.sampled_from(["\r\n", "\r", "\n\n"])))
        elif kind == 6:
            line = draw(st.integers(0, len(lines) - 1))
            lines[line] = lines[line] + draw(st.sampled_from([",", ",,x", ',"', ",1e999", ",-"]))
            text = "\n".join(lines)
        elif kind == 7:
            text = text + draw(st.sampled_from(["9" * 30, "nan", "inf", "1_000", "١٢", "0x10"]))
        else:
            data = bytearray(text.encode("utf-8"))
            if data:
                data[pos % len(data)] = draw(st.integers(0, 255))
            return bytes(data)
    return text


@PARSER_SETTINGS
@given(text=mutated_csv())
def test_mutated_csv_gives_a_valid_table_or_invalid_input(text: str | bytes) -> None:
    publish, _ = parse_or_error(lambda: parse_csv_publish(text, "fallback", **LIMITS))
    if publish is not None:
        check_csv_publish(publish)


@PARSER_SETTINGS
@given(text=st.text(max_size=300) | st.binary(max_size=300))
def test_arbitrary_text_or_bytes_as_csv_gives_a_valid_table_or_invalid_input(
    text: str | bytes,
) -> None:
    publish, _ = parse_or_error(lambda: parse_csv_publish(text, "fallback", **LIMITS))
    if publish is not None:
        check_csv_publish(publish)


@PARSER_SETTINGS
@given(value=JSONISH | st.binary(max_size=20) | HOSTILE_CELLS)
def test_csv_parser_refuses_non_text_with_invalid_input(value: object) -> None:
    if isinstance(value, (str, bytes)):
        return
    publish, error = parse_or_error(lambda: parse_csv_publish(value, "x"))  # type: ignore[arg-type]
    assert publish is None and error is not None


# =========================================================================
# 2. The query guard, on a real store
# =========================================================================

NOW = 1_700_000_000.0


@dataclass
class GuardEnv:
    store: Store
    db_dir: Path
    cwd: Path
    attack_dir: Path
    baseline: DiskState
    connections: object = None

    def state(self) -> DiskState:
        return DiskState.take(self.db_dir, [self.cwd, self.attack_dir])

    def connection_state(self) -> object:
        """What the pooled reader connections see of their own (in-memory)
        temp schema and of the attached DBs: a refused CREATE TEMP ... or
        DETACH would show here, not on disk."""
        sql = (
            "SELECT 'temp', type, name FROM temp.sqlite_schema UNION ALL"
            " SELECT 'static', type, name FROM static.sqlite_schema"
            " UNION ALL SELECT 'db', name, file FROM pragma_database_list ORDER BY 1, 2, 3"
        )
        return [self.store.query(sql, use_write_db=w).rows for w in (False, True)]


@contextmanager
def working_directory(path: Path) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _table(name: str, rows: list[list[object]]) -> Table:
    return Table(name, ("a", "b"), ("INTEGER", "TEXT"), rows)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def guard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardEnv]:
    """A store whose snapshot holds t (normal) and p (persisted), whose
    writer generation holds t, p (carried) and w, and whose static DB holds s."""
    root = tmp_path_factory.mktemp("guard")
    env_dirs = [root / "cwd", root / "attack"]
    for d in env_dirs:
        d.mkdir()
    config = StoreConfig(db_dir=str(root / "db"), limits=QueryLimits(timeout_s=0.2, max_rows=500))
    store = Store(config, now=NOW)
    host = PublishOptions(identity="host1")
    store.publish(Publish(_table("t", [[1, "x"], [2, "y"]]), host), NOW + 1)
    store.publish(Publish(_table("p", [[5, "kept"]]), PublishOptions("host1", persist=True)), NOW)
    store.publish(Publish(_table("s", [[9, "static"]]), PublishOptions("host1", static=True)), NOW)
    store.rotate(NOW + 30)
    store.publish(Publish(_table("t", [[3, "z"]]), host), NOW + 31)
    store.publish(Publish(_table("w", [[4, "w"]]), host), NOW + 31)
    db_dir = root / "db"
    for use_write_db in (False, True):  # open the pooled reader connections first
        store.query("SELECT 1", use_write_db=use_write_db)
    env = GuardEnv(store, db_dir, env_dirs[0], env_dirs[1], DiskState.take(db_dir, env_dirs))
    env.connections = env.connection_state()
    try:
        yield env
    finally:
        store.close()


def run_guarded(env: GuardEnv, sql: str, use_write_db: bool) -> Result | QueryError:
    """Store.query in the env's working directory: a Result or a QueryError
    (anything else propagates); then nothing on disk may have changed."""
    with working_directory(env.cwd):
        try:
            outcome: Result | QueryError = env.store.query(sql, use_write_db=use_write_db)
        except QueryError as e:
            assert isinstance(e.message, str) and e.message
            outcome = e
    if isinstance(outcome, Result):
        assert isinstance(outcome.column_names, tuple) and isinstance(outcome.rows, list)
    changes = env.baseline.differences(env.state())
    assert not changes, f"{sql!r} (use_write_db={use_write_db}) changed: {changes}"
    connections = env.connection_state()
    assert connections == env.connections, f"{sql!r} changed a connection: {connections}"
    return outcome


# Every code point, NUL and lone surrogates included: a statement holding
# either must give a QueryError like any other bad statement (see also
# test_statement_with_nul_or_lone_surrogate_is_a_query_error below). Drawn
# from all of Unicode they would be rare, so half the statements get one
# inserted at a random place.
SQL_CHARS = st.characters(codec=None, categories=None)
NUL_AND_LONE_SURROGATES = ["\x00", "\ud800", "\udbff", "\udc00", "\udfff"]


@st.composite
def sql_texts(draw: st.DrawFn, max_size: int = 200) -> str:
    text = draw(st.text(SQL_CHARS, max_size=max_size))
    special = draw(st.none() | st.sampled_from(NUL_AND_LONE_SURROGATES))
    if special is None:
        return text
    at = draw(st.integers(0, len(text)))
    return text[:at] + special + text[at:]


SQL_TOKENS = [
    *"SELECT INSERT INTO UPDATE SET DELETE FROM CREATE TEMP TEMPORARY TABLE VIEW TRIGGER".split(),
    *"INDEX DROP ATTACH DETACH DATABASE AS PRAGMA VACUUM REPLACE ALTER RENAME TO ADD".split(),
    *"COLUMN WITH RECURSIVE VALUES UNION ALL WHERE BEGIN END COMMIT ROLLBACK SAVEPOINT".split(),
    *"RELEASE REINDEX ANALYZE EXPLAIN QUERY PLAN ON AFTER BEFORE INSTEAD OF OR IGNORE".split(),
    *"RETURNING LIMIT ORDER BY IF EXISTS NOT NULL DEFAULT VIRTUAL USING".split(),
    *"journal_mode writable_schema user_version query_only schema_version".split(),
    *"t s p w x main.t static.s temp.x sqlite_master sqlite_schema static.sqlite_master".split(),
    *"qasino_server_info a b 1 0 5 = * , ( ) ; ;; -- /* */ . ? :a".split(),
    "'x'",
    "'rel_attack.db'",
    "char(120,46,100,98)",
    "load_extension('x')",
    "writefile('wf.txt','x')",
    "readfile('/etc/hostname')",
    "zeroblob(10)",
    "printf('%.*c',5,'x')",
    "\n",
    "--x\n",
    "/* ; */",
    "\u00a0",
    "\t",
    "\x00",
    "\ud800",
    "'\udfff'",
]
SEPARATORS = [" ", "", "\n", "\t", "  ", "\u00a0"]

READS = [
    "SELECT 1",
    "SELECT * FROM t",
    "SELECT a, b FROM static.s",
    "VALUES (1)",
    "WITH x AS (SELECT 1) SELECT * FROM x",
    "SELECT * FROM sqlite_master",
    "SHOW tables",
    "DESC t",
]


def writes(attack: Path) -> list[str]:
    return [
        "DROP TABLE t",
        "DROP TABLE static.s",
        "DELETE FROM t",
        "DELETE FROM p",
        "DELETE FROM s",
        "INSERT INTO t VALUES (7, 'i')",
        "INSERT INTO static.s VALUES (7, 'i')",
        "UPDATE t SET b = 'u'",
        "UPDATE qasino_server_info SET generation_number = 0",
        "REPLACE INTO s VALUES (9, 'r')",
        "CREATE TABLE n (a)",
        "CREATE TEMP TABLE n (a)",
        "CREATE TEMP VIEW n AS SELECT 1",
        "CREATE TEMP TRIGGER n AFTER INSERT ON t BEGIN DELETE FROM t; END",
        "CREATE INDEX n ON t (a)",
        "ALTER TABLE t RENAME TO n",
        "ALTER TABLE s ADD COLUMN n",
        f"ATTACH '{attack}/a.db' AS n",
        "ATTACH 'rel_attack.db' AS n",
        f"ATTACH 'file:{attack}/u.db?mode=rwc' AS n",
        "DETACH static",
        "VACUUM",
        f"VACUUM INTO '{attack}/v.db'",
        "VACUUM INTO 'rel_vacuum.db'",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA static.journal_mode = MEMORY",
        "PRAGMA writable_schema = 1",
        "PRAGMA user_version = 5",
        "PRAGMA static.user_version = 5",
        "PRAGMA query_only = 0",
        "PRAGMA wal_checkpoint(TRUNCATE)",
        "REINDEX",
        "ANALYZE",
        "BEGIN IMMEDIATE",
        "SAVEPOINT n",
        f"SELECT writefile('{attack}/w.txt', 'x')",
        f"SELECT load_extension('{attack}/ext')",
    ]


# Separators after which the following text is a second statement (so a
# write after them must be refused) and ones after which it is a comment.
BOUNDARIES = [";", " ; ", ";\n", "/* c */;", "; /* c */ ", "--c\n;", "\t;\t", ";;", ";\u00a0"]
COMMENTERS = ["--", " /*", "-- ;\r"]


@GUARD_SETTINGS
@given(sql=sql_texts(), use_write_db=st.booleans())
def test_arbitrary_statements_give_a_result_or_a_query_error_and_change_nothing(
    guard: GuardEnv, sql: str, use_write_db: bool
) -> None:
    run_guarded(guard, sql, use_write_db)


# Most statements start as a read, so that they get past the first-keyword
# filter and reach SQLite's own verdict (authorizer, read-only check).
LEADS = [
    "",
    "SELECT ",
    "SELECT * FROM t ",
    "SELECT 1 ",
    "WITH ",
    "WITH x AS (SELECT 1) ",
    "WITH RECURSIVE x(n) AS (SELECT 1) ",
    "VALUES (1) ",
    "-- c\nSELECT ",
    "/**/WITH ",
]


@GUARD_SETTINGS
@given(
    lead=st.sampled_from(LEADS),
    tokens=st.lists(st.sampled_from(SQL_TOKENS), min_size=1, max_size=14),
    glue=st.lists(st.sampled_from(SEPARATORS), min_size=14, max_size=14),
    use_write_db=st.booleans(),
)
def test_statements_built_from_sql_keywords_give_a_result_or_a_query_error_and_change_nothing(
    guard: GuardEnv, lead: str, tokens: list[str], glue: list[str], use_write_db: bool
) -> None:
    sql = lead + "".join(tok + sep for tok, sep in zip(tokens, glue))
    run_guarded(guard, sql, use_write_db)


@GUARD_SETTINGS
@given(data=st.data(), use_write_db=st.booleans())
def test_a_write_after_or_inside_a_read_is_refused_and_changes_nothing(
    guard: GuardEnv, data: st.DataObject, use_write_db: bool
) -> None:
    write = data.draw(st.sampled_from(writes(guard.attack_dir)), label="write")
    read = data.draw(st.sampled_from(READS), label="read")
    shape = data.draw(st.sampled_from(["after", "before", "cte", "commented"]), label="shape")
    if shape == "after":
        sql = read + data.draw(st.sampled_from(BOUNDARIES)) + write
    elif shape == "before":
        sql = write + data.draw(st.sampled_from(BOUNDARIES)) + read
    elif shape == "cte":
        sql = "WITH x AS (SELECT 1) " + write
    else:
        sql = read + data.draw(st.sampled_from(COMMENTERS)) + write
    if data.draw(st.booleans(), label="mixed case"):
        sql = "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(sql))
    outcome = run_guarded(guard, sql, use_write_db)
    if shape != "commented":
        assert isinstance(outcome, QueryError), f"{sql!r} was not refused: {outcome}"


@pytest.mark.parametrize(
    "sql",
    ["SELECT 1\x00", "SELECT 1;\x00", "SELECT '\ud800'", "SHOW tables LIKE '\ud800'"],
    ids=["nul", "nul-after-semicolon", "lone-surrogate", "lone-surrogate-in-show-like"],
)
def test_statement_with_nul_or_lone_surrogate_is_a_query_error(guard: GuardEnv, sql: str) -> None:
    outcome = run_guarded(guard, sql, False)
    assert isinstance(outcome, QueryError)


# =========================================================================
# 3. Malformed bytes at every listener of a real server
# =========================================================================

MAX_BODY = 100_000
MAX_STATEMENT = 20_000
CONNECTION_TIMEOUT = 5.0
LISTENER_BUDGET_S = 45.0  # a whole listener's run; normally a few seconds
KEEP_TABLE = "fuzz_keep"
STATIC_TABLE = "fuzz_static"
KEEP_SQL = f"SELECT * FROM {KEEP_TABLE} ORDER BY k"
STATIC_SQL = f"SELECT * FROM {STATIC_TABLE} ORDER BY k"


@dataclass
class FuzzTarget:
    proc: QasinoProcess
    keep_rows: list
    static_rows: list


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    """A server with 1 s generations holding a persisted and a static table."""
    proc = new_server(
        tmp_path_factory.mktemp("fuzz-server"),
        generation_s=1,
        extra_args=[
            "--max-body-bytes",
            str(MAX_BODY),
            "--max-statement-bytes",
            str(MAX_STATEMENT),
            "--query-timeout",
            "2",
        ],
    )
    try:
        proc.start()
        port = proc.ports["zmq"]
        rows = [[1, "one", 1.5], [2, "two é", None], [3, "", -0.25]]
        columns = [("k", "int"), ("name", "text"), ("ratio", "real")]
        for table, option in ((KEEP_TABLE, "persist"), (STATIC_TABLE, "static")):
            reply = zmq_json(
                port, publish_request("keeper", make_table(table, columns, rows), **{option: 1})
            )
            assert reply.get("response_op") == "ok", reply
        proc.wait_generation()  # the next snapshot holds the persisted table
        target = FuzzTarget(proc, zmq_rows(port, KEEP_SQL), zmq_rows(port, STATIC_SQL))
        assert len(target.keep_rows) == 3 and target.static_rows == target.keep_rows
        yield target
    finally:
        proc.close()


def log_mark(target: FuzzTarget) -> tuple[int, int]:
    """Where the server's log and stderr end now."""
    return len(target.proc.log_text()), len(target.proc.stderr_text())


def assert_intact(target: FuzzTarget, since: tuple[int, int]) -> None:
    """Alive; answers a valid query at once on HTTP, ZeroMQ and the line
    protocol; the persisted and static tables are as published; no
    traceback in what the server logged since ``since`` (a log_mark)."""
    proc = target.proc
    assert proc.proc is not None and proc.proc.poll() is None, "the server died"
    started = time.monotonic()
    reply = raw_http_request(
        proc.ports["http"], "GET", request_target(op="query", sql=STATIC_SQL), timeout=3
    )
    assert reply.status == 200 and reply.json()["table"]["rows"] == target.static_rows, reply
    assert zmq_rows(proc.ports["zmq"], STATIC_SQL, timeout=3) == target.static_rows
    line = tcp_exchange(
        proc.ports["line"], f"{STATIC_SQL};\nquit;\n".encode(), timeout=3, half_close=False
    )
    assert line.closed and b"3 rows returned" in line.data and line.data.endswith(b"Bye!\r\n"), line
    assert time.monotonic() - started < 5, "the server did not answer at once"
    # A rotation after the fuzzing: the persisted table is carried, unchanged.
    gensig = proc.wait_generation()
    assert zmq_rows(proc.ports["zmq"], KEEP_SQL) == target.keep_rows
    assert zmq_rows(proc.ports["zmq"], STATIC_SQL) == target.static_rows
    info = zmq_rows(proc.ports["zmq"], "SELECT generation_number FROM qasino_server_info")
    # The signal names the generation that starts filling: the one served is older.
    assert int(info[0][0]) < gensig["generation_number"]
    logs = proc.log_text()[since[0] :] + proc.stderr_text()[since[1] :]
    assert "Traceback" not in logs, logs[logs.index("Traceback") - 2000 :][:6000]


def assert_within_budget(started: float, what: str) -> None:
    assert time.monotonic() - started < LISTENER_BUDGET_S, f"{what} took too long"


def describe(label: str, payload: bytes | list[bytes]) -> str:
    return f"{label}: {payload!r:.300}"


def test_http_listener_survives_malformed_requests_and_keeps_its_data(
    fuzz_server: FuzzTarget,
) -> None:
    mark = log_mark(fuzz_server)
    port = fuzz_server.proc.ports["http"]
    rng = random.Random(SEED)
    problems = []
    started = time.monotonic()
    for case in http_cases(rng, 600, MAX_BODY):
        assert_within_budget(started, "the HTTP fuzzing")
        ex = tcp_exchange(port, case.payload, CONNECTION_TIMEOUT, half_close=not case.answered)
        status = ex.status()
        if not ex.closed:
            problems.append(f"connection left open: {describe(case.label, case.payload)}")
        if case.answered and status is None:
            problems.append(f"no HTTP response: {describe(case.label, case.payload)}")
        if status is not None and status >= 500:
            problems.append(f"status {status}: {describe(case.label, case.payload)}")
        if b"Internal error" in ex.data or b"root:x:0:0" in ex.data:
            problems.append(f"{ex.data[-300:]!r}: {describe(case.label, case.payload)}")
    assert not problems, "\n".join(problems[:20])
    assert_intact(fuzz_server, mark)


def test_zmq_rep_listener_answers_every_malformed_message_and_keeps_its_data(
    fuzz_server: FuzzTarget,
) -> None:
    mark = log_mark(fuzz_server)
    port = fuzz_server.proc.ports["zmq"]
    rng = random.Random(SEED + 1)
    problems = []
    started = time.monotonic()
    for label, frames in zmq_frames_cases(rng, 500):
        assert_within_budget(started, "the ZeroMQ fuzzing")
        reply = zmq_req(port, frames, CONNECTION_TIMEOUT)
        if reply is None:
            problems.append(f"no reply: {describe(label, frames)}")
            continue
        try:
            body = json.loads(reply[0])
        except ValueError:
            problems.append(f"reply is not JSON {reply!r:.200}: {describe(label, frames)}")
            continue
        if not isinstance(body, dict) or body.get("response_op") not in (
            "error",
            "ok",
            "result_table",
            "tables_list",
        ):
            problems.append(f"odd reply {body!r:.200}: {describe(label, frames)}")
        elif str(body.get("error_message", "")).startswith("Internal error"):
            problems.append(f"{body['error_message']!r:.200}: {describe(label, frames)}")
    assert not problems, "\n".join(problems[:20])
    assert_intact(fuzz_server, mark)


def test_zmq_peers_breaking_the_envelope_do_not_disturb_the_server(
    fuzz_server: FuzzTarget,
) -> None:
    """A raw DEALER sends envelopes a REQ never would (no delimiter, empty
    messages, fake request ids); then raw TCP peers send garbage, broken
    ZMTP handshakes and frames claiming 2**62 bytes, at the REP and the PUB
    port. The DEALER's own well-formed request is still answered after."""
    mark = log_mark(fuzz_server)
    proc = fuzz_server.proc
    rng = random.Random(SEED + 2)
    started = time.monotonic()
    with Dealer(proc.ports["zmq"]) as dealer:
        for frames in dealer_envelopes(rng, 120):
            dealer.send(frames)
        marker = b'{"op":"query","sql":"SELECT \'dealer still served\'"}'
        dealer.send([b"", marker])
        while True:
            assert_within_budget(started, "the DEALER fuzzing")
            reply = dealer.recv(CONNECTION_TIMEOUT)
            assert reply is not None, "no reply to a well-formed DEALER request"
            if b"dealer still served" in reply[-1]:
                assert reply[:-1] == [b""], reply
                break
    for port in (proc.ports["zmq"], proc.ports["pubsub"]):
        for _label, payload in zmtp_cases(rng, 40):
            assert_within_budget(started, "the raw ZMTP fuzzing")
            tcp_exchange(port, payload, timeout=1.0)
    assert_intact(fuzz_server, mark)


def test_line_listener_survives_random_bytes_and_long_lines_and_keeps_its_data(
    fuzz_server: FuzzTarget,
) -> None:
    mark = log_mark(fuzz_server)
    port = fuzz_server.proc.ports["line"]
    rng = random.Random(SEED + 3)
    problems = []
    started = time.monotonic()
    # Whatever came before, ";" ends a pending statement and quit; says goodbye:
    # the server must close every connection itself.
    tail = b"\n;\nquit;\n"
    for label, payload in line_cases(rng, 400, MAX_STATEMENT):
        assert_within_budget(started, "the line protocol fuzzing")
        ex = tcp_exchange(port, payload + tail, CONNECTION_TIMEOUT, half_close=False)
        if not ex.closed:
            problems.append(f"connection left open: {describe(label, payload)}")
        if b"Internal error" in ex.data:
            problems.append(f"{ex.data[-300:]!r}: {describe(label, payload)}")
    assert not problems, "\n".join(problems[:20])
    assert_intact(fuzz_server, mark)


@pytest.mark.parametrize("field", ["value", "identity"])
def test_name_value_update_with_a_lone_surrogate_is_invalid_input(
    fuzz_server: FuzzTarget, field: str
) -> None:
    request = {"op": "name_value_update", "name": "fuzz_nv.col", "value": "v", "identity": "h"}
    request[field] = "\ud800"
    reply = zmq_json(fuzz_server.proc.ports["zmq"], json.dumps(request, ensure_ascii=True).encode())
    assert reply.get("response_op") == "error", reply
    assert reply["error_message"].startswith("Invalid input format"), reply


@pytest.mark.parametrize("target", ["/static/%00", "/static/app%00.css", "/static/..%00"])
def test_static_file_name_with_a_nul_is_not_found_rather_than_a_server_error(
    fuzz_server: FuzzTarget, target: str
) -> None:
    reply = raw_http_request(fuzz_server.proc.ports["http"], "GET", target, timeout=5)
    assert reply.status == 404, (reply.status, reply.body[:200])

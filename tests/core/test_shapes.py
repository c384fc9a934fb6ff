"""The typed output shapes as pure functions (no reactor, no server)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qasino.core import shapes

ROWS = [(1, 2.5, 'a,"b"\nc', None, b"\x00\xff"), (-(2**63), 1e300, "", 0, None)]
NAMES = ("i", "r", "t", "n", "b")


@pytest.mark.parametrize(
    ("given_", "expected"),
    [(None, "json"), ("", "json"), ("JSON", "json"), ("html", "json"), (" csv ", "csv")]
    + [(name, name) for name in shapes.FORMATS],
)
def test_parse_format_names_every_shape_and_defaults_to_json(
    given_: str | None, expected: str
) -> None:
    assert shapes.parse_format(given_) == expected


def test_parse_format_refuses_an_unknown_or_disallowed_format() -> None:
    with pytest.raises(shapes.UnknownFormat, match="Unknown format 'xml': use one of json,"):
        shapes.parse_format("xml")
    with pytest.raises(shapes.UnknownFormat, match="use one of json, objects, arrays"):
        shapes.parse_format("csv", shapes.ZMQ_FORMATS)


def test_arrays_body_keeps_types_with_blobs_as_base64_and_keys_in_order() -> None:
    body = shapes.table_body("arrays", NAMES, ROWS, 1234, truncated=True, query_ms=1.23456)
    assert body == (
        b'{"ok":true,"generation_number":1234,"columns":["i","r","t","n","b"],'
        b'"rows":[[1,2.5,"a,\\"b\\"\\nc",null,"AP8="],[-9223372036854775808,1e+300,"",0,null]],'
        b'"truncated":true,"query_ms":1.235}'
    )


def test_objects_body_is_a_dict_per_row() -> None:
    reply = json.loads(shapes.table_body("objects", NAMES, ROWS, None))
    assert reply["generation_number"] is None and reply["truncated"] is False
    assert reply["rows"][0] == {"i": 1, "r": 2.5, "t": 'a,"b"\nc', "n": None, "b": "AP8="}


def test_objects_with_a_repeated_column_name_keep_the_last_value() -> None:
    assert shapes.object_rows(("a", "a"), [(1, 2)]) == [{"a": 2}]


def test_ndjson_is_one_object_per_line_each_ending_in_newline() -> None:
    body = shapes.ndjson_rows(NAMES, ROWS)
    lines = body.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    assert json.loads(lines[1]) == {"i": -(2**63), "r": 1e300, "t": "", "n": 0, "b": None}
    assert shapes.ndjson_rows(NAMES, []) == b""


def test_csv_is_rfc4180_with_crlf_null_empty_and_blob_base64() -> None:
    body = shapes.csv_header(NAMES) + shapes.csv_rows(ROWS)
    assert body == (b'i,r,t,n,b\r\n1,2.5,"a,""b""\nc",,AP8=\r\n-9223372036854775808,1e+300,,0,\r\n')
    assert list(csv.reader(io.StringIO(body.decode(), newline=""))) == [
        list(NAMES),
        ["1", "2.5", 'a,"b"\nc', "", "AP8="],
        ["-9223372036854775808", "1e+300", "", "0", ""],
    ]


def test_infinite_reals_are_null_and_text_orjson_refuses_is_escaped() -> None:
    assert json.loads(shapes.dumps([float("inf"), float("-inf")])) == [None, None]
    body = shapes.table_body("arrays", ("s",), [("\ud800", float("inf"), b"\x01")], 1)
    assert json.loads(body)["rows"] == [["\ud800", None, "AQ=="]]
    assert json.loads(shapes.ndjson_rows(("s",), [("\ud800",)])) == {"s": "\ud800"}


def test_error_body_is_ok_false_and_the_message() -> None:
    assert shapes.error_body("no such column: x") == b'{"ok":false,"error":"no such column: x"}'


cells = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.binary(max_size=20),
)


@given(st.lists(st.tuples(cells, cells), max_size=5))
def test_every_shape_round_trips_the_values(rows: list[tuple[object, object]]) -> None:
    names = ("a", "b")
    expected = [[shapes._plain(c) for c in row] for row in rows]
    assert json.loads(shapes.table_body("arrays", names, rows, 1))["rows"] == expected
    objects = json.loads(shapes.table_body("objects", names, rows, 1))["rows"]
    assert objects == [dict(zip(names, row)) for row in expected]
    lines = shapes.ndjson_rows(names, rows).decode().split("\n")[:-1]
    assert [json.loads(line) for line in lines] == objects
    text = (shapes.csv_header(names) + shapes.csv_rows(rows)).decode("utf-8")
    parsed = list(csv.reader(io.StringIO(text, newline="")))
    as_text = [["" if c is None else str(c) for c in row] for row in expected]
    assert parsed == [list(names), *as_text]

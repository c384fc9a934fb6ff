"""Result shapes and the text rendering (PROTOCOL.md "Result shape", "Text rendering")."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from qasino.core.model import Result
from qasino.core.render import (
    cell_to_str,
    error_shape,
    max_widths,
    render_error_text,
    render_result_text,
    render_text,
    result_shape,
    stringify_rows,
)

PROTOCOL_EXAMPLE = (
    "generation_number  generation_duration_s  generation_start_epoch\n"
    "=================  =====================  ======================\n"
    "       1382105093                     30            1382105123.1\n"
    "1 rows returned\n"
)

INFO_COLUMNS = ("generation_number", "generation_duration_s", "generation_start_epoch")


def test_text_rendering_reproduces_the_protocol_example_byte_for_byte() -> None:
    result = Result(column_names=INFO_COLUMNS, rows=[(1382105093, 30, 1382105123.1)])
    assert render_result_text(result) == PROTOCOL_EXAMPLE


def test_text_rendering_of_zero_rows_is_the_originals() -> None:
    text = render_result_text(Result(column_names=("a", "bcd"), rows=[]))
    assert text == "query returned zero rows\n========================\n0 rows returned\n"


def test_text_rendering_escapes_control_characters_and_backslashes_as_the_original() -> None:
    rows = [("two\nlines", "tab\there", "C:\\dir", "bell\x07\x7f", "café")]
    text = render_result_text(Result(column_names=("a", "b", "c", "d", "e"), rows=rows))
    cells = ["two\\nlines", "tab\\there", "C:\\\\dir", "bell\\x07\\x7f", "café"]
    assert text.splitlines()[2] == "  ".join(cells)
    assert len(text.splitlines()) == 4


def test_text_rendering_right_justifies_header_to_widest_cell() -> None:
    text = render_text(["x", "name"], [["12345", "a"], ["1", "bb"]])
    assert text == ("    x  name\n=====  ====\n12345     a\n    1    bb\n2 rows returned\n")


def test_text_rendering_every_line_ends_with_a_newline() -> None:
    text = render_text(["a"], [["1"], ["2"]])
    assert text.split("\n") == ["a", "=", "1", "2", "2 rows returned", ""]


def test_text_rendering_of_a_truncated_result_adds_a_final_note() -> None:
    text = render_text(["a"], [["1"], ["2"]], truncated=True)
    assert text.endswith("2 rows returned\n(result truncated at 2 rows)\n")


def test_text_rendering_renders_null_as_empty_cell() -> None:
    text = render_result_text(Result(column_names=("a", "b"), rows=[(None, 7)]))
    assert text.splitlines()[2] == "   7"


def test_render_error_text_prefixes_sql_error() -> None:
    assert render_error_text("no such table: x") == "SQL error: no such table: x\n"


def test_cell_to_str_renders_null_as_empty_string() -> None:
    assert cell_to_str(None) == ""


def test_cell_to_str_renders_int_in_decimal() -> None:
    assert cell_to_str(-42) == "-42"
    assert cell_to_str(2**62) == str(2**62)


def test_cell_to_str_renders_float_like_python_str() -> None:
    assert cell_to_str(1382105123.1) == "1382105123.1"
    assert cell_to_str(0.5) == "0.5"
    assert cell_to_str(3.0) == "3.0"


def test_cell_to_str_keeps_str_unchanged() -> None:
    assert cell_to_str("héllo  ") == "héllo  "


def test_cell_to_str_renders_bytes_as_lowercase_hex() -> None:
    assert cell_to_str(b"\x00\xab\xff") == "00abff"


def test_stringify_rows_returns_lists_of_strings() -> None:
    assert stringify_rows([(1, None, "x"), (2.5, b"\x01", "")]) == [
        ["1", "", "x"],
        ["2.5", "01", ""],
    ]


def test_max_widths_keys_are_column_indexes_as_strings() -> None:
    widths = max_widths(["a", "long_name"], [["12345", "x"]])
    assert widths == {"0": 5, "1": 9}


def test_max_widths_of_zero_rows_is_the_name_lengths() -> None:
    assert max_widths(["ab", "c"], []) == {"0": 2, "1": 1}


def test_result_shape_has_string_cells_and_max_widths() -> None:
    result = Result(column_names=INFO_COLUMNS, rows=[(1382105093, 30, 1382105123.1)])
    assert result_shape(result, "server1") == {
        "response_op": "result_table",
        "identity": "server1",
        "table": {
            "column_names": list(INFO_COLUMNS),
            "rows": [("1382105093", "30", "1382105123.1")],
        },
        "max_widths": {"0": 17, "1": 21, "2": 22},
    }


def test_result_shape_of_zero_rows_keeps_column_names() -> None:
    shape = result_shape(Result(column_names=("a", "b")), "srv")
    assert shape["table"] == {"column_names": ["a", "b"], "rows": []}
    assert shape["max_widths"] == {"0": 1, "1": 1}


def test_result_shape_renders_null_as_empty_string() -> None:
    shape = result_shape(Result(column_names=("a",), rows=[(None,)]), "srv")
    assert shape["table"]["rows"] == [("",)]


def test_result_shape_marks_truncated_only_when_truncated() -> None:
    cut = result_shape(Result(column_names=("a",), rows=[(1,)], truncated=True), "srv")
    whole = result_shape(Result(column_names=("a",), rows=[(1,)]), "srv")
    assert cut["truncated"] is True
    assert "truncated" not in whole


def test_error_shape_has_response_op_identity_and_message() -> None:
    assert error_shape("boom", "srv") == {
        "response_op": "error",
        "identity": "srv",
        "error_message": "boom",
    }


def test_rendering_a_hundred_thousand_rows_is_fast() -> None:
    rows: list[tuple[object, ...]] = [(i, i * 0.5, f"host{i}", None) for i in range(100_000)]
    result = Result(column_names=("n", "half", "host", "empty"), rows=rows)
    started = time.perf_counter()
    shape = result_shape(result, "srv")
    text = render_result_text(result)
    elapsed = time.perf_counter() - started
    assert len(shape["table"]["rows"]) == 100_000
    assert text.endswith("100000 rows returned\n")
    assert elapsed < 5.0


# Numbers are rendered in bulk (orjson) where that gives Python's own text;
# whatever the values, the cells must be exactly str() of each.
NUMBERS = st.one_of(
    st.floats(allow_nan=False),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0.0, -0.0, 1e-4, 1e-5, 9.99e-5, 1e15, 1e16, 2.5, 1e22, float("inf")]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(NUMBERS, max_size=40))
def test_number_cells_are_exactly_their_str(values: list[float]) -> None:
    assert stringify_rows([(v,) for v in values]) == [[str(v)] for v in values]


def test_a_float_column_without_exponents_is_rendered_like_str() -> None:
    values = [i / 7 for i in range(1, 2000)] + [float(i) for i in range(-50, 50)] + [123456.5]
    assert stringify_rows([(v, i) for i, v in enumerate(values)]) == [
        [str(v), str(i)] for i, v in enumerate(values)
    ]


@given(
    st.lists(
        st.tuples(
            st.text(max_size=12),
            st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=5)),
        ),
        max_size=8,
    )
)
@settings(max_examples=200, deadline=None)
def test_text_rendering_keeps_one_row_per_line_and_ascii_text_as_unicode_escape(
    rows: list[tuple[str, object]],
) -> None:
    """Whatever the cells hold, N rows are N lines between the rule and the
    count (CR, LF, NUL never split a row); printable ASCII is shown as is and
    other ASCII as Python's unicode_escape writes it (the original's way)."""
    text = render_result_text(Result(column_names=("a", "b"), rows=rows))
    lines = text.split("\n")
    assert lines[-1] == "" and lines[-2] == f"{len(rows)} rows returned"
    assert len(lines) == len(rows) + 4
    for cell, line in zip((r[0] for r in rows), lines[2:], strict=False):
        if cell.isascii():
            assert cell.encode("unicode_escape").decode("ascii") in line

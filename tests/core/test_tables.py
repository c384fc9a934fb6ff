"""Tests of qasino.core.tables: JSON/CSV publish parsing and checking."""

from __future__ import annotations

import enum
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qasino.core import tables
from qasino.core.errors import InvalidInput
from qasino.core.model import Publish, PublishOptions, Table
from qasino.core.tables import (
    INT64_MAX,
    INT64_MIN,
    parse_csv_publish,
    parse_json_publish,
    parse_options,
    parse_table,
)


def table_obj(**overrides: Any) -> dict[str, Any]:
    """A valid inner table object, with some fields replaced."""
    obj: dict[str, Any] = {
        "tablename": "mytable",
        "column_names": ["host", "count", "ratio"],
        "column_types": ["string", "int", "real"],
        "rows": [["a", 1, 0.5], ["b", 2, None]],
    }
    obj.update(overrides)
    return obj


def request(**overrides: Any) -> dict[str, Any]:
    """A valid add_table_data request, with some fields replaced."""
    obj: dict[str, Any] = {"op": "add_table_data", "identity": "host1", "table": table_obj()}
    obj.update(overrides)
    return obj


def csv_text(*data: str, options: str = "1", header: str | None = None) -> str:
    """A CSV publish: options line, standard header, then the data lines."""
    head = header or "mytable\nhost,count,ratio\nstring,int,real\nHost,Count,Ratio"
    return "\n".join([options, head, *data]) + "\n"


def rejects(match: str) -> Any:
    return pytest.raises(InvalidInput, match=match)


# ---------------------------------------------------------------------------
# parse_table: header


def test_valid_table_is_parsed_with_normalised_types() -> None:
    table = parse_table(table_obj(column_types=["STRING", "Int", "float"]))
    assert table == Table(
        tablename="mytable",
        column_names=("host", "count", "ratio"),
        column_types=("TEXT", "INTEGER", "REAL"),
        rows=[["a", 1, 0.5], ["b", 2, None]],
    )


def test_every_type_alias_is_accepted() -> None:
    aliases = ["integer", "int", "ll", "time", "real", "float", "text", "varchar", "string"]
    aliases += ["str", "ip"]
    names = [f"c{i}" for i in range(len(aliases))]
    table = parse_table(table_obj(column_names=names, column_types=aliases, rows=[]))
    assert table.column_types == ("INTEGER",) * 4 + ("REAL",) * 2 + ("TEXT",) * 5


@pytest.mark.parametrize("value", [None, 1, "table", ["x"]])
def test_table_that_is_not_an_object_is_rejected(value: object) -> None:
    with rejects("table must be an object"):
        parse_table(value)


@pytest.mark.parametrize("field", ["tablename", "column_names", "column_types", "rows"])
def test_missing_table_field_is_rejected(field: str) -> None:
    obj = table_obj()
    del obj[field]
    with rejects(f"missing field '{field}'"):
        parse_table(obj)


def test_unknown_table_fields_are_ignored() -> None:
    assert parse_table(table_obj(column_descriptions=["x", "y", "z"])).tablename == "mytable"


@pytest.mark.parametrize("name", ["", "1abc", "my-table", "my table", "t;drop", "x" * 129])
def test_invalid_tablename_is_rejected(name: str) -> None:
    with rejects("invalid tablename"):
        parse_table(table_obj(tablename=name))


@pytest.mark.parametrize("name", [None, 12, pytest.param(10**5000, id="huge-int"), ["t"], {"t": 1}])
def test_non_string_tablename_is_rejected(name: object) -> None:
    with rejects("invalid tablename: expected a string"):
        parse_table(table_obj(tablename=name))


@pytest.mark.parametrize("name", ["qasino_server_info", "QASINO_SERVER_mine", "Qasino_Server_x"])
def test_reserved_tablename_prefix_is_rejected_case_insensitively(name: str) -> None:
    with rejects("reserved"):
        parse_table(table_obj(tablename=name))


def test_tablename_merely_containing_the_prefix_is_accepted() -> None:
    assert parse_table(table_obj(tablename="my_qasino_server_x")).tablename == "my_qasino_server_x"


@pytest.mark.parametrize("names", ["host,count", None, 3, {"host": 1}])
def test_column_names_that_are_not_a_list_are_rejected(names: object) -> None:
    with rejects("column_names must be a list"):
        parse_table(table_obj(column_names=names))


def test_empty_column_names_are_rejected() -> None:
    with rejects("column_names must not be empty"):
        parse_table(table_obj(column_names=[], column_types=[], rows=[]))


@pytest.mark.parametrize("bad", ["two words", "1st", "", None, 5])
def test_invalid_column_name_is_rejected(bad: object) -> None:
    with rejects("invalid column name"):
        parse_table(table_obj(column_names=["host", bad, "ratio"]))


def test_duplicate_column_names_are_rejected_case_insensitively() -> None:
    with rejects("duplicate column name 'HOST'.*case-insensitive"):
        parse_table(table_obj(column_names=["host", "HOST", "ratio"]))


def test_too_many_columns_are_rejected() -> None:
    with rejects("too many columns: 3, the limit is 2"):
        parse_table(table_obj(), max_columns=2)


def test_column_types_of_the_wrong_length_are_rejected() -> None:
    with rejects("column_types has 2 entries but column_names has 3"):
        parse_table(table_obj(column_types=["string", "int"]))


def test_column_types_that_are_not_a_list_are_rejected() -> None:
    with rejects("column_types must be a list"):
        parse_table(table_obj(column_types="string,int,real"))


def test_unknown_column_type_is_rejected_naming_the_column() -> None:
    with rejects("column 'count': unknown column type 'bigint'"):
        parse_table(table_obj(column_types=["string", "bigint", "real"]))


def test_non_string_column_type_is_rejected_naming_the_column() -> None:
    with rejects("column 'ratio': column type must be a string, got number"):
        parse_table(table_obj(column_types=["string", "int", 3]))


# ---------------------------------------------------------------------------
# parse_table: rows and cells


def test_empty_rows_are_accepted() -> None:
    assert parse_table(table_obj(rows=[])).rows == []


def test_valid_rows_are_not_copied() -> None:
    rows = [["a", 1, 0.5], ["b", 2, None]]
    table = parse_table(table_obj(rows=rows))
    assert table.rows is rows
    assert table.rows[0] is rows[0]


def test_tuple_rows_are_accepted() -> None:
    rows = (("a", 1, 0.5),)
    assert parse_table(table_obj(rows=rows)).rows is rows


@pytest.mark.parametrize("rows", [None, "rows", 5, {"0": ["a", 1, 0.5]}])
def test_rows_that_are_not_a_list_are_rejected(rows: object) -> None:
    with rejects("rows must be a list"):
        parse_table(table_obj(rows=rows))


@pytest.mark.parametrize("row", [None, "a,1,0.5", 7, {"host": "a"}])
def test_row_that_is_not_a_list_is_rejected_naming_its_index(row: object) -> None:
    with rejects(r"rows\[1\]: expected a list of 3 cells"):
        parse_table(table_obj(rows=[["a", 1, 0.5], row]))


@pytest.mark.parametrize("row", [[], ["a"], ["a", 1], ["a", 1, 0.5, "extra"]])
def test_row_with_the_wrong_cell_count_is_rejected_naming_its_index(row: list[object]) -> None:
    with rejects(rf"rows\[2\]: has {len(row)} cells, expected 3"):
        parse_table(table_obj(rows=[["a", 1, 0.5], ["b", 2, 0.1], row]))


@pytest.mark.parametrize("cell", [[1], {"a": 1}, (1,), b"bytes", object(), 1j])
def test_unsupported_cell_is_rejected_naming_row_and_column(cell: object) -> None:
    with rejects(r"rows\[1\], column 'count': unsupported cell"):
        parse_table(table_obj(rows=[["a", 1, 0.5], ["b", cell, 0.5]]))


def test_booleans_become_one_and_zero_without_mutating_the_input() -> None:
    rows = [["a", 1, 0.5], ["b", True, False]]
    table = parse_table(table_obj(rows=rows))
    assert table.rows == [["a", 1, 0.5], ["b", 1, 0]]
    assert type(table.rows[1][1]) is int and type(table.rows[1][2]) is int
    assert rows[1] == ["b", True, False] and type(rows[1][1]) is bool
    assert table.rows[0] is rows[0]
    assert table.rows is not rows


def test_sixty_four_bit_integer_bounds_are_accepted() -> None:
    rows = [["a", INT64_MIN, 0.0], ["b", INT64_MAX, 0.0]]
    assert parse_table(table_obj(rows=rows)).rows == rows


@pytest.mark.parametrize(
    "number", [INT64_MAX + 1, INT64_MIN - 1, 10**30, pytest.param(-(10**5000), id="huge-int")]
)
def test_integer_beyond_64_bits_is_rejected_as_out_of_range(number: int) -> None:
    with rejects(r"rows\[0\], column 'count': integer out of range"):
        parse_table(table_obj(rows=[["a", number, 0.5]]))


def test_nan_cell_becomes_null() -> None:
    table = parse_table(table_obj(rows=[["a", 1, math.nan]]))
    assert table.rows == [["a", 1, None]]


def test_infinite_floats_are_kept() -> None:
    table = parse_table(table_obj(rows=[["a", 1, math.inf], ["b", 2, -math.inf]]))
    assert table.rows == [["a", 1, math.inf], ["b", 2, -math.inf]]


def test_text_cell_at_the_byte_limit_is_accepted() -> None:
    table = parse_table(table_obj(rows=[["x" * 10, 1, 0.5], ["é" * 5, 1, 0.5]]), max_cell_bytes=10)
    assert table.rows[1][0] == "é" * 5


def test_text_cell_over_the_byte_limit_is_rejected() -> None:
    with rejects(r"rows\[0\], column 'host': text of 11 bytes is longer than the limit of 10"):
        parse_table(table_obj(rows=[["x" * 11, 1, 0.5]]), max_cell_bytes=10)


def test_text_cell_limit_counts_utf8_bytes_not_characters() -> None:
    with rejects(r"rows\[0\], column 'host': text of 12 bytes"):
        parse_table(table_obj(rows=[["é" * 6, 1, 0.5]]), max_cell_bytes=10)


def test_non_ascii_text_is_accepted() -> None:
    rows = [["héllo wörld ✓ 日本", 1, 0.5]]
    assert parse_table(table_obj(rows=rows)).rows is rows


def test_text_with_a_lone_surrogate_is_rejected() -> None:
    with rejects(r"rows\[0\], column 'host': text is not valid Unicode"):
        parse_table(table_obj(rows=[["bad \ud800", 1, 0.5]]))


def test_too_many_rows_are_rejected() -> None:
    with rejects("too many rows: 2, the limit is 1"):
        parse_table(table_obj(), max_rows=1)


def test_subclasses_of_int_float_and_str_become_plain_values() -> None:
    class Colour(enum.IntEnum):
        RED = 3

    class Name(str):
        pass

    class Ratio(float):
        pass

    table = parse_table(table_obj(rows=[[Name("a"), Colour.RED, Ratio(0.25)]]))
    assert [type(cell) for cell in table.rows[0]] == [str, int, float]
    assert table.rows[0] == ["a", 3, 0.25]


def test_table_errors_name_the_table() -> None:
    with rejects("table 'mytable': "):
        parse_table(table_obj(rows=[["a"]]))


# ---------------------------------------------------------------------------
# parse_options


def test_options_default_to_false_and_no_keycols() -> None:
    assert parse_options({"identity": "host1"}) == PublishOptions(identity="host1")


def test_missing_identity_is_rejected_when_required() -> None:
    with rejects("missing identity"):
        parse_options({})


def test_null_identity_counts_as_missing() -> None:
    with rejects("missing identity"):
        parse_options({"identity": None})


def test_missing_identity_is_empty_when_not_required() -> None:
    assert parse_options({}, identity_required=False).identity == ""


@pytest.mark.parametrize("identity", ["", "   "])
def test_empty_identity_is_rejected(identity: str) -> None:
    with rejects("identity must not be empty"):
        parse_options({"identity": identity}, identity_required=False)


@pytest.mark.parametrize(
    "identity", [1, pytest.param(10**5000, id="huge-int"), ["h"], {"h": 1}, True]
)
def test_non_string_identity_is_rejected(identity: object) -> None:
    with rejects("identity must be a string"):
        parse_options({"identity": identity})


def test_identity_of_256_characters_is_accepted() -> None:
    assert parse_options({"identity": "h" * 256}).identity == "h" * 256


def test_identity_longer_than_256_characters_is_rejected() -> None:
    with rejects("identity is 257 characters long"):
        parse_options({"identity": "h" * 257})


@pytest.mark.parametrize("identity", ["a\nb", "a\x00", "tab\there", "del\x7f", "c1\x85", "\udc00"])
def test_identity_with_control_characters_is_rejected(identity: str) -> None:
    with rejects("control characters"):
        parse_options({"identity": identity})


def test_identity_with_spaces_and_unicode_is_accepted() -> None:
    assert parse_options({"identity": "web 1 — bös"}).identity == "web 1 — bös"


@pytest.mark.parametrize("flag", ["persist", "static", "update"])
@pytest.mark.parametrize("value", [1, True, "1", "true", "TRUE", "Yes", " yes "])
def test_truthy_flag_values_set_the_option(flag: str, value: object) -> None:
    options = parse_options({"identity": "h", flag: value})
    assert getattr(options, flag) is True


@pytest.mark.parametrize("flag", ["persist", "static", "update"])
@pytest.mark.parametrize("value", [0, False, "0", "", None, "false", "False", "NO"])
def test_falsy_flag_values_clear_the_option(flag: str, value: object) -> None:
    options = parse_options({"identity": "h", flag: value})
    assert getattr(options, flag) is False


@pytest.mark.parametrize("value", [2, -1, 1.0, "maybe", "on", [], {}, [1]])
def test_other_flag_values_are_rejected(value: object) -> None:
    with rejects("option 'update' must be 1/true/yes or 0/false/no"):
        parse_options({"identity": "h", "update": value})


def test_static_and_persist_together_are_rejected() -> None:
    with rejects("static and persist cannot be combined"):
        parse_options({"identity": "h", "static": 1, "persist": "yes"})


def test_static_with_persist_false_is_accepted() -> None:
    options = parse_options({"identity": "h", "static": 1, "persist": 0})
    assert options.static and not options.persist


def test_keycols_string_is_split_on_semicolons() -> None:
    assert parse_options({"identity": "h", "keycols": "a;b"}).keycols == ("a", "b")


def test_keycols_string_ignores_spaces_and_empty_parts() -> None:
    assert parse_options({"identity": "h", "keycols": " a ; b;"}).keycols == ("a", "b")


def test_keycols_list_is_accepted() -> None:
    assert parse_options({"identity": "h", "keycols": ["a", "b"]}).keycols == ("a", "b")


@pytest.mark.parametrize("keycols", [None, "", []])
def test_empty_keycols_mean_no_keycols(keycols: object) -> None:
    assert parse_options({"identity": "h", "keycols": keycols}).keycols == ()


def test_keycols_without_update_are_kept() -> None:
    options = parse_options({"identity": "h", "keycols": "a"})
    assert options.keycols == ("a",) and not options.update


@pytest.mark.parametrize("keycols", ["a;b c", "a;1b", ["a", "b-c"], ["a", 3], [None]])
def test_invalid_key_column_is_rejected(keycols: object) -> None:
    with rejects("invalid key column"):
        parse_options({"identity": "h", "keycols": keycols})


@pytest.mark.parametrize("keycols", [3, {"a": 1}, True])
def test_keycols_of_the_wrong_type_are_rejected(keycols: object) -> None:
    with rejects("keycols must be a ';'-separated string or a list"):
        parse_options({"identity": "h", "keycols": keycols})


def test_duplicate_key_columns_are_rejected_case_insensitively() -> None:
    with rejects("duplicate key column 'A'"):
        parse_options({"identity": "h", "keycols": "a;A"})


@pytest.mark.parametrize("obj", [None, [], "identity=h", 5])
def test_options_from_a_non_object_are_rejected(obj: Any) -> None:
    with rejects("request must be an object"):
        parse_options(obj)


# ---------------------------------------------------------------------------
# parse_json_publish


def test_json_publish_combines_options_and_table() -> None:
    publish = parse_json_publish(request(update="1", keycols="host"))
    assert publish == Publish(
        table=parse_table(table_obj()),
        options=PublishOptions(identity="host1", update=True, keycols=("host",)),
    )


@pytest.mark.parametrize("obj", [None, [], "x", 1.5])
def test_json_publish_that_is_not_an_object_is_rejected(obj: object) -> None:
    with rejects("request must be an object"):
        parse_json_publish(obj)


def test_json_publish_without_table_is_rejected() -> None:
    obj = request()
    del obj["table"]
    with rejects("missing field 'table' in request"):
        parse_json_publish(obj)


def test_json_publish_without_identity_is_rejected() -> None:
    obj = request()
    del obj["identity"]
    with rejects("missing identity"):
        parse_json_publish(obj)


def test_key_columns_must_be_columns_of_the_table() -> None:
    with rejects("key column 'nope' is not a column of table 'mytable'"):
        parse_json_publish(request(update=1, keycols="host;nope"))


def test_key_columns_match_case_insensitively_and_take_the_tables_spelling() -> None:
    publish = parse_json_publish(request(update=1, keycols=["HOST", "Count"]))
    assert publish.options.keycols == ("host", "count")


def test_json_publish_passes_limits_to_the_table() -> None:
    with rejects("too many rows"):
        parse_json_publish(request(), max_rows=1)


# ---------------------------------------------------------------------------
# parse_csv_publish

PROTOCOL_EXAMPLE = """1
myapplication_table1
ipaddr,datacenter,stat1,stat2
ip,string,integer,integer
IP Address,Datacenter,Num Frobs,Num Foobs
1.2.3.4,BOS,123,456
"""


def test_protocol_csv_example_is_parsed() -> None:
    publish = parse_csv_publish(PROTOCOL_EXAMPLE, identity="pub1")
    assert publish == Publish(
        table=Table(
            tablename="myapplication_table1",
            column_names=("ipaddr", "datacenter", "stat1", "stat2"),
            column_types=("TEXT", "TEXT", "INTEGER", "INTEGER"),
            rows=[["1.2.3.4", "BOS", 123, 456]],
        ),
        options=PublishOptions(identity="pub1"),
    )


def test_csv_options_line_sets_every_option() -> None:
    text = csv_text("a,1,0.5", options="static=1,update=yes,keycols=host;count,identity=web1")
    options = parse_csv_publish(text).options
    assert options == PublishOptions(
        identity="web1", static=True, update=True, keycols=("host", "count")
    )


def test_csv_options_line_may_also_hold_a_version_number() -> None:
    assert parse_csv_publish(csv_text(options="1,persist=1,identity=x")).options.persist


def test_csv_identity_in_the_options_line_wins_over_the_argument() -> None:
    publish = parse_csv_publish(csv_text(options="identity=fromfile"), identity="fromarg")
    assert publish.options.identity == "fromfile"


def test_csv_identity_comes_from_the_argument_without_one_in_the_options_line() -> None:
    assert parse_csv_publish(csv_text(options="update=1"), identity="h").options.identity == "h"


def test_csv_without_any_identity_is_rejected() -> None:
    with rejects("missing identity"):
        parse_csv_publish(csv_text())


def test_csv_identity_argument_is_checked() -> None:
    with rejects("identity must not be empty"):
        parse_csv_publish(csv_text(), identity="")


def test_csv_unknown_options_are_ignored() -> None:
    assert parse_csv_publish(csv_text(options="colour=blue,identity=h")).options.identity == "h"


def test_csv_option_keys_are_case_insensitive() -> None:
    assert parse_csv_publish(csv_text(options="Update=1,IDENTITY=h")).options.update


def test_csv_bad_option_value_is_rejected_on_line_1() -> None:
    with rejects("line 1: option 'static' must be"):
        parse_csv_publish(csv_text(options="static=maybe,identity=h"))


def test_csv_static_and_persist_together_are_rejected() -> None:
    with rejects("line 1: static and persist cannot be combined"):
        parse_csv_publish(csv_text(options="static=1,persist=1,identity=h"))


def test_csv_duplicate_option_is_rejected() -> None:
    with rejects("line 1: option 'update' given twice"):
        parse_csv_publish(csv_text(options="update=1,update=0,identity=h"))


@pytest.mark.parametrize("line", ["mytable", "", "v1", "1,two"])
def test_csv_first_line_that_is_neither_version_nor_options_is_rejected(line: str) -> None:
    with rejects("line 1: expected a version number or key=value options"):
        parse_csv_publish(csv_text(options=line), identity="h")


def test_csv_keycols_must_be_columns_of_the_table() -> None:
    with rejects("key column 'nope' is not a column"):
        parse_csv_publish(csv_text(options="update=1,keycols=nope,identity=h"))


def test_csv_bytes_are_decoded_as_utf8_with_bom_stripped() -> None:
    text = "\ufeff" + csv_text("bé,1,0.5", options="identity=h")
    publish = parse_csv_publish(text.encode("utf-8"))
    assert publish.table.rows == [["bé", 1, 0.5]]
    assert publish.options.identity == "h"


def test_csv_str_with_bom_is_accepted() -> None:
    assert parse_csv_publish("\ufeff" + csv_text(), identity="h").table.tablename == "mytable"


def test_csv_bytes_that_are_not_utf8_are_rejected() -> None:
    with rejects("CSV is not valid UTF-8"):
        parse_csv_publish(csv_text("\xe9,1,0.5").encode("latin-1"), identity="h")


@pytest.mark.parametrize("value", [None, 5, ["1"]])
def test_csv_input_that_is_not_text_is_rejected(value: Any) -> None:
    with rejects("CSV must be text"):
        parse_csv_publish(value, identity="h")


def test_csv_quoted_cells_may_hold_commas_quotes_and_newlines() -> None:
    text = csv_text('"a, b",1,0.5', '"say ""hi""\nthere",2,1.5')
    assert parse_csv_publish(text, identity="h").table.rows == [
        ["a, b", 1, 0.5],
        ['say "hi"\nthere', 2, 1.5],
    ]


def test_csv_empty_cells_are_null_in_every_type() -> None:
    rows = parse_csv_publish(csv_text(",,"), identity="h").table.rows
    assert rows == [[None, None, None]]


def test_csv_text_cells_stay_strings_as_written() -> None:
    rows = parse_csv_publish(csv_text(" 007 ,1,0.5"), identity="h").table.rows
    assert rows == [[" 007 ", 1, 0.5]]


def test_csv_cells_are_converted_by_column_type() -> None:
    rows = parse_csv_publish(csv_text("007,42,3"), identity="h").table.rows
    assert rows == [["007", 42, 3.0]]
    assert [type(cell) for cell in rows[0]] == [str, int, float]


def test_csv_integer_cells_accept_float_notation_as_floats() -> None:
    rows = parse_csv_publish(csv_text("a,12.0,1", "b,1e3,1"), identity="h").table.rows
    assert rows[0][1] == 12.0 and type(rows[0][1]) is float
    assert rows[1][1] == 1000.0


@pytest.mark.parametrize("cell", ["twelve", "0x10", "1.2.3", "inf", "nan", "1e999", " "])
def test_csv_bad_integer_cell_is_rejected_naming_line_and_column(cell: str) -> None:
    with rejects("line 7, column 'count': cannot convert .* to INTEGER"):
        parse_csv_publish(csv_text("a,1,0.5", f"b,{cell},0.5"), identity="h")


def test_csv_bad_real_cell_is_rejected_naming_line_and_column() -> None:
    with rejects("line 6, column 'ratio': cannot convert 'half' to REAL"):
        parse_csv_publish(csv_text("a,1,half"), identity="h")


def test_csv_integer_beyond_64_bits_is_rejected_with_its_line() -> None:
    with rejects("line 6, column 'count': integer out of range"):
        parse_csv_publish(csv_text(f"a,{2**63},0.5"), identity="h")


def test_csv_nan_real_becomes_null() -> None:
    assert parse_csv_publish(csv_text("a,1,nan"), identity="h").table.rows == [["a", 1, None]]


@pytest.mark.parametrize("line", ["a,1", "a,1,0.5,extra", "a"])
def test_csv_row_with_the_wrong_cell_count_is_rejected_with_its_line(line: str) -> None:
    with rejects("line 7: has .* cells, expected 3"):
        parse_csv_publish(csv_text("a,1,0.5", line), identity="h")


def test_csv_line_numbers_count_physical_lines_of_multiline_cells() -> None:
    with rejects("line 8: has 1 cells, expected 3"):
        parse_csv_publish(csv_text('"two\nlines",1,0.5', "bad"), identity="h")


def test_csv_with_no_data_rows_is_accepted() -> None:
    assert parse_csv_publish(csv_text(), identity="h").table.rows == []


def test_csv_blank_lines_among_and_after_the_data_rows_are_skipped() -> None:
    text = csv_text("", "a,1,0.5", "", "", "b,2,1.5", "", "")
    assert parse_csv_publish(text, identity="h").table.rows == [["a", 1, 0.5], ["b", 2, 1.5]]


def test_csv_blank_lines_do_not_shift_error_line_numbers() -> None:
    with rejects("line 9, column 'count'"):
        parse_csv_publish(csv_text("a,1,0.5", "", "", "b,x,0.5"), identity="h")


def test_csv_crlf_line_endings_are_accepted() -> None:
    text = csv_text("a,1,0.5").replace("\n", "\r\n")
    assert parse_csv_publish(text, identity="h").table.rows == [["a", 1, 0.5]]


def test_empty_csv_is_rejected() -> None:
    with rejects("CSV ends before the options line"):
        parse_csv_publish("", identity="h")


@pytest.mark.parametrize(
    ("lines", "missing"),
    [
        (1, "tablename line \\(line 2\\)"),
        (2, "column names line \\(line 3\\)"),
        (3, "column types line \\(line 4\\)"),
        (4, "descriptions line \\(line 5\\)"),
    ],
)
def test_csv_missing_header_line_is_rejected(lines: int, missing: str) -> None:
    text = "\n".join(csv_text().splitlines()[:lines])
    with rejects(f"CSV ends before the {missing}"):
        parse_csv_publish(text, identity="h")


def test_csv_descriptions_line_is_ignored() -> None:
    text = csv_text("a,1,0.5", header="mytable\nhost,count,ratio\nstring,int,real\n")
    assert parse_csv_publish(text, identity="h").table.rows == [["a", 1, 0.5]]


def test_csv_invalid_tablename_is_rejected_on_line_2() -> None:
    with rejects("line 2: invalid tablename 'my table'"):
        parse_csv_publish(csv_text(header="my table\na\nint\nA"), identity="h")


def test_csv_reserved_tablename_is_rejected() -> None:
    with rejects("line 2: tablename 'qasino_server_tables' is reserved"):
        parse_csv_publish(csv_text(header="qasino_server_tables\na\nint\nA"), identity="h")


def test_csv_tablename_line_with_several_cells_is_rejected() -> None:
    with rejects("line 2: expected just the tablename, got 2 cells"):
        parse_csv_publish(csv_text(header="t,u\na\nint\nA"), identity="h")


def test_csv_spaces_around_tablename_and_column_names_are_ignored() -> None:
    table = parse_csv_publish(csv_text(header=" t \n a , b \nint, str\nA,B"), identity="h").table
    assert (table.tablename, table.column_names) == ("t", ("a", "b"))


def test_csv_duplicate_column_names_are_rejected_on_line_3() -> None:
    with rejects("line 3: duplicate column name 'A'"):
        parse_csv_publish(csv_text(header="t\na,A\nint,int\nx,y"), identity="h")


def test_csv_unknown_column_type_is_rejected_on_line_4_naming_the_column() -> None:
    with rejects("line 4: column 'b': unknown column type 'blob'"):
        parse_csv_publish(csv_text(header="t\na,b\nint,blob\nx,y"), identity="h")


def test_csv_type_count_mismatch_is_rejected_on_line_4() -> None:
    with rejects("line 4: column_types has 1 entries but column_names has 2"):
        parse_csv_publish(csv_text(header="t\na,b\nint\nx,y"), identity="h")


def test_csv_unclosed_quote_is_rejected() -> None:
    with rejects("line 6: malformed CSV"):
        parse_csv_publish(csv_text('"a,1,0.5', "b,2,0.5"), identity="h")


def test_csv_too_many_rows_are_rejected() -> None:
    with rejects("line 7: too many rows, the limit is 1"):
        parse_csv_publish(csv_text("a,1,0.5", "b,2,0.5"), identity="h", max_rows=1)


def test_csv_too_many_columns_are_rejected() -> None:
    with rejects("line 3: too many columns"):
        parse_csv_publish(csv_text(), identity="h", max_columns=2)


def test_csv_cells_longer_than_the_csv_modules_default_limit_are_accepted() -> None:
    big = "x" * 300_000
    assert parse_csv_publish(csv_text(f"{big},1,0.5"), identity="h").table.rows[0][0] == big


def test_csv_cell_over_the_byte_limit_is_rejected() -> None:
    with rejects("line 6"):
        parse_csv_publish(csv_text("x" * 50 + ",1,0.5"), identity="h", max_cell_bytes=10)


def test_csv_non_ascii_cell_over_the_byte_limit_is_rejected_with_its_line() -> None:
    with rejects("line 6, column 'host': text of 12 bytes"):
        parse_csv_publish(csv_text("éééééé,1,0.5"), identity="h", max_cell_bytes=10)


# ---------------------------------------------------------------------------
# Properties: nothing but InvalidInput escapes, valid tables round-trip

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["int", "TEXT", "real", "a", "a;b", "qasino_server_x", "1", "yes", ""])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    ["identity", "persist", "static", "update", "keycols", "table", "op"]
    + ["tablename", "column_names", "column_types", "rows"]
)
shaped_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(field_names, children, max_size=6)
    ),
    max_leaves=30,
)


def _only_invalid_input(call: Any, *args: Any) -> None:
    try:
        call(*args)
    except InvalidInput:
        pass


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values | shaped_values)
def test_arbitrary_json_values_raise_nothing_but_invalid_input(value: object) -> None:
    _only_invalid_input(parse_json_publish, value)


nearly_valid_tables = st.fixed_dictionaries(
    {
        "tablename": st.sampled_from(["t", "1t", "qasino_server_t"]) | json_values,
        "column_names": st.lists(st.sampled_from(["a", "B", "b", "c d", ""]), max_size=3),
        "column_types": st.lists(st.sampled_from(["int", "real", "str", "x"]), max_size=3),
        "rows": st.lists(st.lists(json_values, max_size=3), max_size=3),
    }
)
nearly_valid_requests = st.fixed_dictionaries(
    {"identity": st.just("h") | json_scalars, "table": nearly_valid_tables},
    optional={"update": json_scalars, "keycols": json_scalars, "static": json_scalars},
)


@settings(max_examples=300)
@given(nearly_valid_requests)
def test_nearly_valid_json_publishes_raise_nothing_but_invalid_input(value: object) -> None:
    _only_invalid_input(parse_json_publish, value)


@settings(max_examples=300)
@given(st.text())
def test_arbitrary_text_into_csv_raises_nothing_but_invalid_input(text: str) -> None:
    _only_invalid_input(parse_csv_publish, text, "h")


@settings(max_examples=200)
@given(st.binary())
def test_arbitrary_bytes_into_csv_raise_nothing_but_invalid_input(data: bytes) -> None:
    _only_invalid_input(parse_csv_publish, data, "h")


csv_cells = st.text(alphabet=st.sampled_from(list('ab,"\n\r 1.e-;=')), max_size=6)


@settings(max_examples=300)
@given(
    st.lists(st.lists(csv_cells, min_size=1, max_size=4), min_size=1, max_size=8),
    st.sampled_from(["1", "identity=x,update=1,keycols=a", "static=1,persist=1", "x"]),
)
def test_nearly_valid_csv_raises_nothing_but_invalid_input(
    data: list[list[str]], options: str
) -> None:
    lines = [",".join(cells) for cells in data]
    text = "\n".join([options, "t", "a,b", "int,real", "A,B", *lines])
    _only_invalid_input(parse_csv_publish, text, "h")


cell_values = (
    st.none()
    | st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
    | st.floats(allow_nan=False)
    | st.text().filter(lambda s: not any("\ud800" <= ch <= "\udfff" for ch in s))
)


@settings(max_examples=200)
@given(st.lists(st.lists(cell_values, min_size=3, max_size=3), max_size=10))
def test_valid_json_rows_come_back_unchanged(rows: list[list[object]]) -> None:
    """Valid rows are kept as they are (no copy) and nothing in them is
    changed in place: every cell keeps its type and value (repr tells
    -0.0 from 0.0)."""

    def cells(table_rows: Any) -> list[list[tuple[type, str]]]:
        return [[(type(cell), repr(cell)) for cell in row] for row in table_rows]

    before = cells(rows)
    parsed = parse_table(table_obj(rows=rows)).rows
    assert parsed is rows
    assert cells(parsed) == before


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.text(alphabet=st.characters(codec="utf-8"), max_size=10),
            st.integers(min_value=INT64_MIN, max_value=INT64_MAX) | st.none(),
        ),
        max_size=10,
    )
)
def test_csv_round_trips_text_and_integers(rows: list[tuple[str, int | None]]) -> None:
    def quote(text: str) -> str:
        return '"' + text.replace('"', '""') + '"'

    lines = [f"{quote(text)},{'' if number is None else number}" for text, number in rows]
    text = "\n".join(["1", "t", "s,n", "str,int", "S,N", *lines])
    expected = [[text or None, number] for text, number in rows]
    assert parse_csv_publish(text, identity="h").table.rows == expected


# --- the cache of checked headers ---------------------------------------------------


def test_a_header_seen_before_gives_the_same_table() -> None:
    first = parse_table(table_obj(tablename="cached_t"))
    again = parse_table(table_obj(tablename="cached_t", rows=[["c", 3, 1.5]]))
    assert (again.tablename, again.column_names, again.column_types) == (
        first.tablename,
        first.column_names,
        first.column_types,
    )
    assert again.rows == [["c", 3, 1.5]]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"column_names": ["host", "count", "HOST"]}, "duplicate column name 'HOST'"),
        ({"column_types": ["string", "int", "blob"]}, "column 'ratio'"),
        ({"column_names": ["host", ["count"], "ratio"]}, "expected a string, got list"),
        ({"column_types": ["string", {"t": 1}, "real"]}, "must be a string, got object"),
        ({"tablename": "qasino_server_x"}, "reserved"),
    ],
)
def test_a_cached_header_does_not_hide_errors_of_a_similar_one(
    overrides: dict[str, Any], message: str
) -> None:
    parse_table(table_obj())  # cache the good header
    for _ in range(2):  # and a bad one is never cached
        with pytest.raises(InvalidInput, match=message):
            parse_table(table_obj(**overrides))


def test_the_header_cache_is_bounded() -> None:
    for n in range(tables.HEADER_CACHE_SIZE + 10):
        parse_table(table_obj(tablename=f"bounded_{n}"))
    assert 0 < len(tables._HEADERS) <= tables.HEADER_CACHE_SIZE


# --- cells left to SQLite -------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, body_bytes, left_to_sqlite",
    [
        ({}, 100, True),
        ({}, None, False),  # not from orjson
        ({}, 1001, False),  # the body is longer than the cell limit (1000 here)
        ({"rows": [["a", 1, 0.5], ("b", 2, None)]}, 100, False),  # a tuple row
        ({"rows": [["a", 1, 0.5], ["b", 2]]}, 100, False),  # a short row
    ],
)
def test_rows_of_a_small_orjson_body_leave_their_cells_to_sqlite(
    overrides: dict[str, Any], body_bytes: int | None, left_to_sqlite: bool
) -> None:
    obj = table_obj(**overrides)
    if left_to_sqlite:
        table = parse_table(obj, max_cell_bytes=1000, decoded_from_bytes=body_bytes)
        assert not table.cells_checked and table.rows is obj["rows"]
    elif overrides.get("rows", [[]])[-1] == ["b", 2]:
        with pytest.raises(InvalidInput, match=r"rows\[1\]: has 2 cells, expected 3"):
            parse_table(obj, max_cell_bytes=1000, decoded_from_bytes=body_bytes)
    else:
        assert parse_table(obj, max_cell_bytes=1000, decoded_from_bytes=body_bytes).cells_checked

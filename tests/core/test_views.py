"""Parsing views.conf (PROTOCOL.md "Views")."""

from __future__ import annotations

from pathlib import Path

import pytest

from qasino.core.errors import ViewsFileError
from qasino.core.identifiers import quote_ident
from qasino.core.model import ViewDef
from qasino.core.views import load_views_file, parse_views_yaml
from tests.core.test_commands import make_internal_db

REPO_VIEWS_CONF = Path(__file__).resolve().parents[2] / "views.conf"


def one(text: str) -> ViewDef:
    """Parse a file that holds exactly one entry."""
    views = parse_views_yaml(text)
    assert len(views) == 1
    return views[0]


# --- good entries -------------------------------------------------------------


def test_good_entry_gives_viewname_view_text_and_select_sql() -> None:
    view = one("- viewname: v1\n  view: CREATE VIEW v1 AS SELECT a, b FROM t\n")
    assert view == ViewDef(
        viewname="v1",
        view="CREATE VIEW v1 AS SELECT a, b FROM t",
        select_sql="SELECT a, b FROM t",
        column_list=None,
        error=None,
    )


def test_select_sql_is_stripped_and_loses_trailing_semicolons() -> None:
    view = one('- viewname: v1\n  view: "CREATE VIEW v1 AS   SELECT 1 ;; "\n')
    assert view.select_sql == "SELECT 1"
    assert view.error is None


def test_view_text_may_span_lines_in_any_case() -> None:
    text = (
        "- viewname: Hosts\n"
        "  view: |\n"
        "    create\n"
        "      view   hosts\n"
        "    as\n"
        "    select host,\n"
        "           count(*) from t group by host;\n"
    )
    view = one(text)
    assert view.error is None
    assert view.viewname == "Hosts"
    assert view.select_sql == "select host,\n       count(*) from t group by host"


@pytest.mark.parametrize(
    "prefix",
    [
        "CREATE TEMP VIEW",
        "CREATE TEMPORARY VIEW",
        "create view if not exists",
        "CREATE TEMP VIEW IF NOT EXISTS",
    ],
)
def test_temp_and_if_not_exists_forms_are_accepted(prefix: str) -> None:
    view = one(f"- viewname: v1\n  view: {prefix} v1 AS SELECT 1\n")
    assert view.error is None
    assert view.select_sql == "SELECT 1"


@pytest.mark.parametrize("quoted_name", ['"v1"', "[v1]", "`v1`", '"V1"'])
def test_quoted_view_name_in_the_statement_is_accepted(quoted_name: str) -> None:
    view = one(f"- viewname: v1\n  view: |\n    CREATE VIEW {quoted_name} AS SELECT 1\n")
    assert view.error is None, view.error
    assert view.select_sql == "SELECT 1"


def test_quoted_view_name_must_still_match_viewname() -> None:
    view = one('- viewname: v1\n  view: |\n    CREATE VIEW "v 1" AS SELECT 1\n')
    assert view.error is not None


def test_name_in_statement_matches_viewname_case_insensitively() -> None:
    assert one("- viewname: MyView\n  view: CREATE VIEW myview AS SELECT 1\n").error is None


def test_with_and_values_bodies_are_accepted() -> None:
    views = parse_views_yaml(
        "- viewname: a\n  view: CREATE VIEW a AS WITH x AS (SELECT 1) SELECT * FROM x\n"
        "- viewname: b\n  view: CREATE VIEW b AS VALUES (1)\n"
    )
    assert [view.error for view in views] == [None, None]


def test_column_list_is_parsed_into_names() -> None:
    view = one('- viewname: v1\n  view: CREATE VIEW v1 (a, b_2 ,"c") AS SELECT 1, 2, 3\n')
    assert view.error is None
    assert view.column_list == ("a", "b_2", "c")
    assert view.select_sql == "SELECT 1, 2, 3"


def test_column_list_may_touch_name_and_as() -> None:
    view = one("- viewname: v1\n  view: CREATE VIEW v1(a)AS SELECT 1\n")
    assert view.error is None
    assert view.column_list == ("a",)


def test_entries_keep_file_order_and_extra_keys_are_ignored() -> None:
    views = parse_views_yaml(
        "- {viewname: b, view: CREATE VIEW b AS SELECT 2, comment: hi}\n"
        "- {viewname: a, view: CREATE VIEW a AS SELECT 1}\n"
    )
    assert [view.viewname for view in views] == ["b", "a"]


# --- whole-file results -------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "~\n", "null\n"])
def test_empty_file_gives_no_views(text: str) -> None:
    assert parse_views_yaml(text) == []


def test_empty_list_gives_no_views() -> None:
    assert parse_views_yaml("[]\n") == []


def test_broken_yaml_raises_views_file_error_with_line() -> None:
    text = "- viewname: v1\n  view: CREATE VIEW v1 AS SELECT 1\n- viewname: [unclosed\n"
    with pytest.raises(ViewsFileError, match=r"not valid YAML.*line \d+"):
        parse_views_yaml(text)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("viewname: v1\nview: CREATE VIEW v1 AS SELECT 1\n", "mapping"),
        ("just a string\n", "string"),
        ("42\n", "int"),
    ],
)
def test_top_level_that_is_not_a_list_raises_views_file_error(text: str, kind: str) -> None:
    with pytest.raises(ViewsFileError, match=f"must be a YAML list.*{kind}"):
        parse_views_yaml(text)


# --- bad entries: the file still loads ------------------------------------------


def test_entry_that_is_not_a_mapping_is_an_error_entry() -> None:
    views = parse_views_yaml("- just text\n- viewname: v1\n  view: CREATE VIEW v1 AS SELECT 1\n")
    assert views[0].error and "not a mapping" in views[0].error
    assert (views[0].viewname, views[0].view, views[0].select_sql) == ("", "", "")
    assert views[1].error is None


def test_missing_viewname_is_an_error_entry() -> None:
    view = one("- view: CREATE VIEW v1 AS SELECT 1\n")
    assert view.error and "no viewname" in view.error
    assert view.viewname == ""
    assert view.view == "CREATE VIEW v1 AS SELECT 1"
    assert view.select_sql == ""


@pytest.mark.parametrize("name", ["1abc", "my-view", "'a b'", "x;drop", "123"])
def test_invalid_viewname_is_an_error_entry(name: str) -> None:
    view = one(f"- viewname: {name}\n  view: CREATE VIEW x AS SELECT 1\n")
    assert view.error and "invalid viewname" in view.error
    assert view.select_sql == ""


def test_non_string_viewname_is_kept_as_its_string() -> None:
    view = one("- viewname: 123\n  view: CREATE VIEW x AS SELECT 1\n")
    assert view.viewname == "123"
    assert view.error


def test_viewname_of_an_internal_table_is_an_error_entry() -> None:
    view = one(
        "- viewname: qasino_server_tables\n  view: CREATE VIEW qasino_server_tables AS SELECT 1\n"
    )
    assert view.error and "internal table" in view.error


@pytest.mark.parametrize("view_value", ["", "~", "42", "[a, b]", "'   '"])
def test_missing_or_non_string_view_text_is_an_error_entry(view_value: str) -> None:
    view = one(f"- viewname: v1\n  view: {view_value}\n")
    assert view.error and "no view text" in view.error
    assert view.viewname == "v1"
    assert view.select_sql == ""


def test_entry_without_view_key_is_an_error_entry() -> None:
    view = one("- viewname: v1\n")
    assert view.error and "no view text" in view.error
    assert view.view == ""


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT 1",
        "CREATE TABLE v1 AS SELECT 1",
        "CREATE VIEW v1 SELECT 1",
        "CREATE VIEW AS SELECT 1",
        "CREATE VIEW v1 AS",
        "CREATE VIEW v1AS SELECT 1",
        "CREATE VIEW main.v1 AS SELECT 1",
        "DROP VIEW v1",
        "CREATE VIEW v1 AS DELETE FROM t",
        "CREATE VIEW v1 AS (SELECT 1)",
    ],
)
def test_view_text_not_of_the_create_view_form_is_an_error_entry(statement: str) -> None:
    view = one(f"- viewname: v1\n  view: '{statement}'\n")
    assert view.error is not None
    assert view.viewname == "v1"
    assert view.view == statement
    assert view.select_sql == ""


def test_name_in_statement_differing_from_viewname_loads_under_the_statements_name() -> None:
    """As the original server did (it ran the statement as written), with a warning."""
    view = one("- viewname: v1\n  view: CREATE VIEW v2 AS SELECT 1\n")
    assert view.error is None
    assert view.sql_name == "v2" and view.select_sql == "SELECT 1"
    assert view.warning and "'v2'" in view.warning and "'v1'" in view.warning


@pytest.mark.parametrize("name", ["qasino_server_tables", '"v 2"'])
def test_a_differing_statement_name_that_is_internal_or_no_identifier_is_an_error(
    name: str,
) -> None:
    view = one(f"- viewname: v1\n  view: 'CREATE VIEW {name} AS SELECT 1'\n")
    assert view.error and "v1" in view.error
    assert view.select_sql == ""


@pytest.mark.parametrize("columns", ["(a, 1b)", "(a, b c)", "()", "(a,)", "(a, A)"])
def test_bad_column_list_is_an_error_entry(columns: str) -> None:
    view = one(f"- viewname: v1\n  view: CREATE VIEW v1 {columns} AS SELECT 1, 2\n")
    assert view.error and "column" in view.error
    assert view.select_sql == ""


def test_duplicate_viewname_marks_second_and_later_entries() -> None:
    views = parse_views_yaml(
        "- {viewname: v1, view: CREATE VIEW v1 AS SELECT 1}\n"
        "- {viewname: V1, view: CREATE VIEW V1 AS SELECT 2}\n"
        "- {viewname: other, view: CREATE VIEW other AS SELECT 3}\n"
        "- {viewname: v1, view: CREATE VIEW v1 AS SELECT 4}\n"
    )
    assert views[0].error is None
    assert views[0].select_sql == "SELECT 1"
    assert views[1].error and "duplicate viewname" in views[1].error
    assert views[2].error is None
    assert views[3].error and "duplicate viewname" in views[3].error


def test_one_bad_entry_does_not_stop_the_others() -> None:
    views = parse_views_yaml(
        "- {viewname: good1, view: CREATE VIEW good1 AS SELECT 1}\n"
        "- {viewname: bad, view: CREATE TABLE wrong AS SELECT 1}\n"
        "- {viewname: good2, view: CREATE VIEW good2 AS SELECT 2}\n"
    )
    assert [view.error is None for view in views] == [True, False, True]


# --- load_views_file ------------------------------------------------------------


def test_load_views_file_reads_utf8(tmp_path: Path) -> None:
    path = tmp_path / "views.conf"
    path.write_text("- viewname: v1\n  view: CREATE VIEW v1 AS SELECT 'héllo'\n", encoding="utf-8")
    assert load_views_file(path)[0].select_sql == "SELECT 'héllo'"
    assert load_views_file(str(path))[0].error is None


def test_load_views_file_of_missing_file_raises_views_file_error(tmp_path: Path) -> None:
    with pytest.raises(ViewsFileError, match="cannot read views file"):
        load_views_file(tmp_path / "nope.conf")


def test_load_views_file_of_a_directory_raises_views_file_error(tmp_path: Path) -> None:
    with pytest.raises(ViewsFileError):
        load_views_file(tmp_path)


def test_load_views_file_of_non_utf8_file_raises_views_file_error(tmp_path: Path) -> None:
    path = tmp_path / "views.conf"
    path.write_bytes(b"- viewname: v\xff\n")
    with pytest.raises(ViewsFileError, match="cannot read"):
        load_views_file(path)


def test_load_views_file_of_broken_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "views.conf"
    path.write_text("- {viewname: v1\n", encoding="utf-8")
    with pytest.raises(ViewsFileError, match="views.conf"):
        load_views_file(path)


# --- the example views.conf of the repository ------------------------------------


def test_repository_views_conf_loads_without_errors() -> None:
    views = load_views_file(REPO_VIEWS_CONF)
    assert len(views) >= 2
    assert [view.error for view in views] == [None] * len(views)
    assert "qasino_server_recent_tables" in [view.viewname for view in views]


def test_repository_views_conf_views_run_over_the_internal_tables() -> None:
    connection = make_internal_db()
    for view in load_views_file(REPO_VIEWS_CONF):
        columns = ""
        if view.column_list:
            columns = "(" + ", ".join(quote_ident(name) for name in view.column_list) + ")"
        connection.execute(
            f"CREATE TEMP VIEW {quote_ident(view.viewname)}{columns} AS {view.select_sql}"
        )
        rows = list(connection.execute(f"SELECT * FROM {quote_ident(view.viewname)}"))
        assert rows, view.viewname
    recent = list(connection.execute("SELECT tablename FROM qasino_server_recent_tables"))
    assert ("settings",) not in recent
    assert ("alpha",) in recent

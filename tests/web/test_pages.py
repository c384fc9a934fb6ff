"""The web UI rendered in memory (PROTOCOL.md "HTTP", issue 5 item 1).

Pages are fetched through the real resource tree of ``make_site`` with
twisted.web's DummyRequest; the store answers through SyncRunner, or through
ManualRunner when a test needs the answer to come later. No reactor runs.
"""

from __future__ import annotations

import csv
import io
import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Optional

import pytest
from twisted.internet.defer import fail
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest

from qasino.core.views import load_views_file
from qasino.engine import Engine, SyncRunner
from qasino.frontends import web
from qasino.frontends.http import make_site
from qasino.ops import Dispatcher
from qasino.store.store import Store, StoreConfig
from tests.helpers import IDENTITY, ManualRunner

SCRIPT_PAYLOAD = "<script>window.__pwned=1</script>"
IMG_PAYLOAD = "<img src=x onerror=alert(1)>"
PAGES = ["/", "/tables", "/desc?tablename=t1", "/query", "/query?sql=SELECT+1", "/connections"]
PAGES += ["/views", "/identities", "/alerts"]


# ---------------------------------------------------------------- fixtures


VIEWS_YAML = """
- viewname: good_view
  view: CREATE VIEW good_view AS SELECT a, name FROM t1
- viewname: bad_view
  view: CREATE VIEW bad_view AS SELECT nope FROM no_such_table
- viewname: html_view
  view: "CREATE VIEW html_view AS SELECT '<img src=x onerror=alert(1)>' AS x"
"""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    views_file = tmp_path / "views.conf"
    views_file.write_text(VIEWS_YAML)
    s = Store(StoreConfig(db_dir=str(tmp_path)), now=1000.0, views=load_views_file(str(views_file)))
    yield s
    s.close()


@pytest.fixture
def site(dispatcher: Dispatcher) -> server.Site:
    return make_site(dispatcher)


def publish(
    dispatcher: Dispatcher,
    tablename: str,
    columns: list[str],
    types: list[str],
    rows: list[list[Any]],
    identity: str = "host1",
    **options: Any,
) -> None:
    request = {
        "op": "add_table_data",
        "identity": identity,
        "table": {
            "tablename": tablename,
            "column_names": columns,
            "column_types": types,
            "rows": rows,
        },
        **options,
    }
    reply = dispatcher.dispatch(request).result  # SyncRunner: already fired
    assert reply["response_op"] == "ok", reply


@pytest.fixture
def published(dispatcher: Dispatcher, engine: Engine, clock: Clock) -> Engine:
    """t1 (3 rows, one a script payload) from host1, s1 static; a snapshot at 1000+5."""
    publish(
        dispatcher,
        "t1",
        ["a", "name"],
        ["int", "text"],
        [[1, "alpha"], [22, SCRIPT_PAYLOAD], [3, None]],
    )
    publish(dispatcher, "s1", ["k"], ["text"], [[IMG_PAYLOAD]], identity="host2", static=1)
    clock.advance(5)
    engine.rotate()
    return engine


# ---------------------------------------------------------------- helpers


@dataclass
class Response:
    code: int
    headers: Headers
    body: bytes
    request: DummyRequest

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def header(self, name: str) -> Optional[str]:
        values = self.headers.getRawHeaders(name.encode())
        return values[0].decode() if values else None

    @property
    def html(self) -> Html:
        return Html.parse(self.text)


def make_request(target: str, method: bytes = b"GET") -> DummyRequest:
    path, _, query = target.partition("?")
    request = DummyRequest(path.lstrip("/").split("/"))
    request.postpath = [segment.encode() for segment in path.lstrip("/").split("/")]
    request.method = method
    request.path = path.encode()
    request.uri = target.encode()
    request.args = {
        key.encode(): [value.encode() for value in values]
        for key, values in urllib.parse.parse_qs(query, keep_blank_values=True).items()
    }
    return request


def fetch(site: server.Site, target: str, method: bytes = b"GET") -> Response:
    """Render ``target`` through the site's resource tree; it must finish."""
    request = make_request(target, method)
    resource = site.getResourceFor(request)
    request.render(resource)
    assert request.finished == 1, f"{target} did not finish"
    return Response(
        request.responseCode or 200, request.responseHeaders, b"".join(request.written), request
    )


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    rows: list[list[str]] = field(default_factory=list)


class Html(HTMLParser):
    """Just enough of the DOM for the tests: elements by id (with their
    text), every link, and the cells of each table by id."""

    VOID = {"meta", "link", "input", "br", "img", "hr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.by_id: dict[str, Element] = {}
        self.links: list[dict[str, str]] = []
        self.scripts: list[dict[str, str]] = []
        self.stylesheets: list[str] = []
        self.open: list[Element] = []
        self.tables: list[Element] = []
        self.row: Optional[list[str]] = None
        self.cell: Optional[list[str]] = None
        self.in_head = False

    @classmethod
    def parse(cls, text: str) -> Html:
        parser = cls()
        parser.feed(text)
        parser.close()
        return parser

    def handle_starttag(self, tag: str, attrs_list: list[tuple[str, Optional[str]]]) -> None:
        attrs = {k: v or "" for k, v in attrs_list}
        element = Element(tag, attrs)
        if tag == "a":
            self.links.append(attrs)
        if tag == "script":
            self.scripts.append(attrs)
        if tag == "link" and attrs.get("rel") == "stylesheet":
            self.stylesheets.append(attrs["href"])
        if "id" in attrs:
            self.by_id[attrs["id"]] = element
        if tag == "table":
            self.tables.append(element)
        if tag == "tr":
            self.row = []
        if tag in ("td", "th"):
            self.cell = []
        if tag not in self.VOID:
            self.open.append(element)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None and self.row is not None:
            self.row.append("".join(self.cell).strip())
            self.cell = None
        if tag == "tr" and self.row is not None and self.tables:
            self.tables[-1].rows.append(self.row)
            self.row = None
        while self.open:
            element = self.open.pop()
            if element.tag == tag:
                break
        if tag == "table" and self.tables:
            self.tables.pop()

    def handle_data(self, data: str) -> None:
        for element in self.open:
            element.text += data
        if self.cell is not None:
            self.cell.append(data)

    def text(self, element_id: str) -> str:
        return " ".join(self.by_id[element_id].text.split())

    def table(self, element_id: str) -> list[list[str]]:
        """Header row first, then the body rows, cells as text."""
        return self.by_id[element_id].rows

    def href(self, element_id: str) -> str:
        return self.by_id[element_id].attrs["href"]


def query_of(href: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(href).query))


# ---------------------------------------------------------------- tables


@pytest.mark.parametrize("target", ["/", "/tables"])
def test_tables_page_lists_every_table_with_rows_updates_last_update_and_static(
    site: server.Site, published: Engine, target: str
) -> None:
    response = fetch(site, target)
    assert response.code == 200
    assert response.header("content-type") == "text/html; charset=utf-8"
    rows = response.html.table("tables")
    assert rows[0] == ["name", "rows", "updates", "last update (UTC)", "static"]
    by_name = {row[0]: row for row in rows[1:]}
    assert by_name["t1"] == ["t1", "3", "1", "1970-01-01 00:16:40 UTC", "no"]
    assert by_name["s1"][1] == "1" and by_name["s1"][4] == "yes"
    assert "qasino_server_tables" in by_name


def test_every_table_name_links_to_its_desc_page(site: server.Site, published: Engine) -> None:
    html = fetch(site, "/tables").html
    hrefs = {link["href"] for link in html.links}
    assert "/desc?tablename=t1" in hrefs
    assert "/desc?tablename=s1" in hrefs


def test_tables_page_has_the_filter_box_and_sortable_headers(
    site: server.Site, published: Engine
) -> None:
    html = fetch(site, "/tables").html
    assert html.by_id["filter"].attrs["data-filter"] == "tables"
    assert "sortable" in html.by_id["tables"].attrs["class"]


def test_tables_page_of_a_fresh_server_lists_the_internal_tables(site: server.Site) -> None:
    rows = fetch(site, "/tables").html.table("tables")
    assert {"qasino_server_info", "qasino_server_tables"} <= {row[0] for row in rows[1:]}


# ---------------------------------------------------------------- generation banner


@pytest.mark.parametrize("target", PAGES + ["/desc?tablename=nope", "/no/such/page"])
def test_every_page_shows_the_generation_number_and_its_age_in_seconds(
    site: server.Site, published: Engine, clock: Clock, target: str
) -> None:
    info = published.snapshot_info()
    clock.advance(7)
    html = fetch(site, target).html
    assert html.text("generation-number") == str(info.generation_number)
    expected_age = int(clock.seconds() - info.generation_start_epoch)
    assert html.text("generation-age") == str(expected_age)
    assert expected_age == 7


# ---------------------------------------------------------------- desc


def test_desc_page_lists_the_columns_and_their_types(site: server.Site, published: Engine) -> None:
    response = fetch(site, "/desc?tablename=t1")
    assert response.code == 200
    html = response.html
    assert html.table("columns") == [["column", "type"], ["a", "INTEGER"], ["name", "TEXT"]]
    assert query_of(html.href("sample")) == {"sql": 'SELECT * FROM "t1" LIMIT 100'}


def test_desc_page_of_a_missing_table_shows_the_error_with_404(
    site: server.Site, published: Engine
) -> None:
    response = fetch(site, "/desc?tablename=nope")
    assert response.code == 404
    assert response.html.text("error") == "No such table: nope"


def test_desc_page_refuses_a_name_that_is_not_an_identifier_without_querying(
    site: server.Site, published: Engine
) -> None:
    published.store.counters.take()  # start counting from zero
    response = fetch(site, "/desc?tablename=" + urllib.parse.quote("t1; DROP TABLE t1"))
    assert response.code == 400
    assert "invalid table name" in response.html.text("error")
    assert "columns" not in response.html.by_id
    assert published.store.counters.take()["sql_received"] == 0


def test_desc_page_without_a_table_name_says_how_to_give_one(site: server.Site) -> None:
    response = fetch(site, "/desc")
    assert response.code == 400
    assert "/desc?tablename=NAME" in response.html.text("error")


def test_desc_page_describes_a_view(site: server.Site, published: Engine) -> None:
    rows = fetch(site, "/desc?tablename=good_view").html.table("columns")
    assert [row[0] for row in rows[1:]] == ["a", "name"]


# ---------------------------------------------------------------- query


def test_query_page_without_sql_shows_an_empty_form(site: server.Site, published: Engine) -> None:
    response = fetch(site, "/query")
    assert response.code == 200
    html = response.html
    assert html.by_id["query-form"].attrs["action"] == "/query"
    assert html.by_id["query-form"].attrs["method"] == "get"
    assert html.text("sql") == ""
    assert "result" not in html.by_id and "error" not in html.by_id


def test_query_page_shows_the_rows_and_keeps_the_sql_in_the_box(
    site: server.Site, published: Engine
) -> None:
    sql = "SELECT a, name FROM t1 ORDER BY a"
    response = fetch(site, "/query?" + urllib.parse.urlencode({"sql": sql}))
    assert response.code == 200
    html = response.html
    assert html.table("result") == [
        ["a", "name"],
        ["1", "alpha"],
        ["3", ""],
        ["22", SCRIPT_PAYLOAD],
    ]
    assert html.by_id["sql"].text == sql
    assert html.text("summary").startswith("3 rows.")
    assert "cut" not in html.by_id


def test_query_page_links_the_same_query_as_csv_json_and_ndjson_downloads(
    site: server.Site, published: Engine
) -> None:
    """CSV and NDJSON streamed (every row), JSON as typed objects; the
    streamed downloads themselves are fetched from a real server in
    tests/e2e/test_shapes.py (a streaming producer needs a real connection)."""
    sql = "SELECT a FROM t1 WHERE name = 'alpha' AND a > 0"
    html = fetch(site, "/query?" + urllib.parse.urlencode({"sql": sql})).html
    csv_href, json_href = html.href("csv-link"), html.href("json-link")
    ndjson_href = html.href("ndjson-link")
    assert all(h.startswith("/request?") for h in (csv_href, json_href, ndjson_href))
    assert query_of(csv_href) == {"op": "query", "sql": sql, "format": "csv", "stream": "1"}
    assert query_of(json_href) == {"op": "query", "sql": sql, "format": "objects"}
    assert query_of(ndjson_href) == {"op": "query", "sql": sql, "format": "ndjson", "stream": "1"}
    reply = json.loads(fetch(site, json_href).body)
    assert reply["ok"] is True and reply["rows"] == [{"a": 1}]


def test_query_page_shows_the_servers_error_for_a_refused_statement(
    site: server.Site, published: Engine
) -> None:
    response = fetch(site, "/query?sql=" + urllib.parse.quote("DELETE FROM t1"))
    assert response.code == 400
    assert response.html.text("error") == "Only SELECT statements (and SHOW/DESC) are allowed"
    assert "result" not in response.html.by_id
    assert published.store.query("SELECT count(*) FROM t1").rows == [(3,)]


def test_query_page_shows_the_sqlite_error_of_a_bad_query(
    site: server.Site, published: Engine
) -> None:
    response = fetch(site, "/query?sql=" + urllib.parse.quote("SELECT nope FROM t1"))
    assert response.code == 400
    assert "no such column: nope" in response.html.text("error")


def test_query_page_shows_at_most_1000_rows_and_says_it_cut_the_result(
    site: server.Site, dispatcher: Dispatcher, engine: Engine
) -> None:
    publish(dispatcher, "big", ["n"], ["int"], [[n] for n in range(1500)])
    engine.rotate()
    html = fetch(site, "/query?sql=" + urllib.parse.quote("SELECT n FROM big ORDER BY n")).html
    rows = html.table("result")
    assert len(rows) == 1 + web.PAGE_ROW_LIMIT == 1001
    assert rows[-1] == ["999"]
    assert html.text("cut") == "Showing the first 1000 of 1500 rows; download the whole result."
    assert html.text("summary").startswith("1500 rows.")


def test_query_page_says_when_the_server_truncated_the_result(
    site: server.Site, dispatcher: Dispatcher, engine: Engine, tmp_path: Path
) -> None:
    from qasino.store.query import QueryLimits

    small = Store(
        StoreConfig(db_dir=str(tmp_path / "small"), limits=QueryLimits(5.0, 10)), now=1000.0
    )
    try:
        small_site = make_site(Dispatcher(Engine(small, SyncRunner(), Clock(), IDENTITY)))
        target = "/query?sql=" + urllib.parse.quote(
            "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 50) "
            "SELECT n FROM c"
        )
        html = fetch(small_site, target).html
        assert len(html.table("result")) == 11
        assert "the server cut the result there" in html.text("summary")
    finally:
        small.close()


def test_query_page_runs_show_and_desc_shortcuts(site: server.Site, published: Engine) -> None:
    html = fetch(site, "/query?sql=" + urllib.parse.quote("DESC t1;")).html
    assert html.table("result")[1:] == [["a", "INTEGER"], ["name", "TEXT"]]
    html = fetch(site, "/query?sql=" + urllib.parse.quote("SHOW tables LIKE 't%'")).html
    assert [row[0] for row in html.table("result")[1:]] == ["t1"]


# ---------------------------------------------------------------- connections and views


def test_connections_page_lists_identities_their_tables_and_last_update(
    site: server.Site, published: Engine
) -> None:
    response = fetch(site, "/connections")
    assert response.code == 200
    rows = response.html.table("connections")
    assert rows[0] == ["identity", "tables", "last update (UTC)"]
    assert ["host1", "1", "1970-01-01 00:16:40 UTC"] in rows[1:]


def test_views_page_shows_loaded_views_and_the_load_errors(
    site: server.Site, published: Engine
) -> None:
    response = fetch(site, "/views")
    assert response.code == 200
    rows = {row[0]: row for row in response.html.table("views")[1:]}
    assert rows["good_view"][1:3] == ["yes", ""]
    assert rows["good_view"][3] == "CREATE VIEW good_view AS SELECT a, name FROM t1"
    assert rows["bad_view"][1] == "no"
    assert "no_such_table" in rows["bad_view"][2]
    assert "/desc?tablename=good_view" in {link["href"] for link in response.html.links}


# ---------------------------------------------------------------- escaping


def test_published_script_and_img_cells_render_as_text(
    site: server.Site, published: Engine
) -> None:
    for target in ["/query?sql=SELECT+*+FROM+t1", "/query?sql=SELECT+*+FROM+s1"]:
        body = fetch(site, target).text
        assert SCRIPT_PAYLOAD not in body and IMG_PAYLOAD not in body
    body = fetch(site, "/query?sql=SELECT+*+FROM+t1").text
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in body
    body = fetch(site, "/query?sql=SELECT+*+FROM+s1").text
    assert "&lt;img src=x onerror=alert(1)&gt;" in body


def test_html_in_identity_view_definition_and_sql_is_escaped(
    site: server.Site, dispatcher: Dispatcher, engine: Engine
) -> None:
    publish(dispatcher, "t1", ["a"], ["int"], [[1]], identity=IMG_PAYLOAD)
    engine.rotate()
    assert IMG_PAYLOAD not in fetch(site, "/connections").text
    assert IMG_PAYLOAD not in fetch(site, "/views").text
    sql = "SELECT '</textarea>" + SCRIPT_PAYLOAD + "' AS x"
    response = fetch(site, "/query?" + urllib.parse.urlencode({"sql": sql}))
    assert SCRIPT_PAYLOAD not in response.text and "</textarea><script>" not in response.text
    assert response.html.by_id["sql"].text == sql


def test_every_page_forbids_inline_scripts_and_other_hosts(
    site: server.Site, published: Engine
) -> None:
    for target in PAGES:
        response = fetch(site, target)
        policy = response.header("content-security-policy") or ""
        assert "default-src 'none'" in policy and "script-src 'self'" in policy, target
        assert response.header("x-content-type-options") == "nosniff"
        html = response.html
        assert html.stylesheets == ["/static/qasino.css"]
        assert [s.get("src") for s in html.scripts] == ["/static/qasino.js"]
        for link in html.links:
            assert link["href"].startswith("/"), (target, link)


def test_templates_and_static_files_refer_to_no_other_host() -> None:
    root = Path(web.__file__).resolve().parents[1] / "web"
    files = list((root / "templates").glob("*")) + list((root / "static").glob("*"))
    assert {f.name for f in files} >= {"base.html", "qasino.css", "qasino.js"}
    for path in files:
        text = path.read_text()
        for marker in ("http:", "https:", "//cdn", "@import", "url("):
            assert marker not in text, (path.name, marker)


def test_template_environment_is_built_once_with_autoescape() -> None:
    env = web.template_environment()
    assert env is web.template_environment()
    assert env.autoescape is True
    assert env.from_string("{{ x }}").render(x=SCRIPT_PAYLOAD) == (
        "&lt;script&gt;window.__pwned=1&lt;/script&gt;"
    )


# ---------------------------------------------------------------- CSV download


def test_csv_download_is_a_header_row_and_the_rows_as_an_attachment(
    site: server.Site, published: Engine
) -> None:
    sql = "SELECT a, name FROM t1 ORDER BY a"
    response = fetch(
        site, "/request?" + urllib.parse.urlencode({"op": "query", "sql": sql, "format": "csv"})
    )
    assert response.code == 200
    assert response.header("content-type") == "text/csv; charset=utf-8"
    assert response.header("content-disposition") == 'attachment; filename="qasino_query.csv"'
    assert response.header("content-length") == str(len(response.body))
    assert list(csv.reader(io.StringIO(response.text))) == [
        ["a", "name"],
        ["1", "alpha"],
        ["3", ""],
        ["22", SCRIPT_PAYLOAD],
    ]


def test_csv_download_quotes_commas_quotes_and_newlines(
    site: server.Site, dispatcher: Dispatcher, engine: Engine
) -> None:
    tricky = 'a,b "c"\nd'
    publish(dispatcher, "q", ["x", "y"], ["text", "real"], [[tricky, 1.5]])
    engine.rotate()
    response = fetch(site, "/request?op=query&format=csv&sql=SELECT+*+FROM+q")
    assert list(csv.reader(io.StringIO(response.text))) == [["x", "y"], [tricky, "1.5"]]


def test_csv_download_of_zero_rows_is_only_the_header_row(
    site: server.Site, published: Engine
) -> None:
    response = fetch(site, "/request?op=query&format=csv&sql=SELECT+a+FROM+t1+WHERE+a+<+0")
    assert response.text == "a\r\n"


def test_csv_download_of_a_bad_query_is_a_400_with_the_error_as_json(
    site: server.Site, published: Engine
) -> None:
    response = fetch(site, "/request?op=query&format=csv&sql=DROP+TABLE+t1")
    assert response.code == 400
    assert response.header("content-type") == "application/json"
    assert response.header("content-disposition") is None
    assert json.loads(response.body) == {
        "ok": False,
        "error": "Only SELECT statements (and SHOW/DESC) are allowed",
    }


def test_csv_download_without_sql_is_a_400_must_specify_sql(site: server.Site) -> None:
    response = fetch(site, "/request?op=query&format=csv")
    assert response.code == 400
    assert json.loads(response.body) == {"ok": False, "error": "Must specify 'sql' param"}


def test_csv_download_of_an_unexpected_failure_is_a_500_and_logged(
    site: server.Site,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    logged_failures: list[dict[str, Any]],
) -> None:
    monkeypatch.setattr(engine, "query_timed", lambda *a: fail(RuntimeError("disk on fire")))
    response = fetch(site, "/request?op=query&format=csv&sql=SELECT+1")
    assert response.code == 500
    assert json.loads(response.body)["ok"] is False
    assert logged_failures


# ---------------------------------------------------------------- routing


def test_request_api_still_answers_json_queries(site: server.Site, published: Engine) -> None:
    reply = json.loads(fetch(site, "/request?op=query&sql=SELECT+a+FROM+t1+ORDER+BY+a").body)
    assert reply["table"] == {"column_names": ["a"], "rows": [["1"], ["3"], ["22"]]}
    text = fetch(site, "/request?op=query&format=text&sql=SELECT+1+AS+x").text
    assert text.endswith("1 rows returned\n")


@pytest.mark.parametrize("target", ["/nope", "/tables/extra", "/request2", "/static/nope.css"])
def test_unknown_paths_are_404(site: server.Site, target: str) -> None:
    assert fetch(site, target).code == 404


def test_static_directory_is_not_listed(site: server.Site) -> None:
    assert fetch(site, "/static/").code == 404


@pytest.mark.parametrize(
    ("name", "content_type", "marker"),
    [
        ("qasino.css", "text/css", "table.grid"),
        ("qasino.js", "javascript", "DOMContentLoaded"),
    ],
)
def test_static_assets_are_served_from_the_package(
    site: server.Site, name: str, content_type: str, marker: str
) -> None:
    request = make_request(f"/static/{name}")
    request.render(site.getResourceFor(request))
    body = b"".join(request.written).decode()
    assert (request.responseCode or 200) == 200
    assert content_type in request.responseHeaders.getRawHeaders(b"content-type")[0].decode()
    assert marker in body


# ---------------------------------------------------------------- failures and slow stores


def test_a_failing_store_renders_the_error_page_with_500_and_logs(
    site: server.Site,
    dispatcher: Dispatcher,
    monkeypatch: pytest.MonkeyPatch,
    logged_failures: list[dict[str, Any]],
) -> None:
    monkeypatch.setattr(dispatcher, "query_result", lambda *a: fail(RuntimeError("boom")))
    for target in ["/tables", "/connections", "/views", "/desc?tablename=t1", "/query?sql=x"]:
        response = fetch(site, target)
        assert response.code == 500, target
        assert "Internal error" in response.html.text("error")
        assert "boom" not in response.text
    assert len(logged_failures) == 5


def test_page_is_written_when_a_slow_store_answers(store: Store, clock: Clock) -> None:
    runner = ManualRunner()
    slow_site = make_site(Dispatcher(Engine(store, runner, clock, IDENTITY)))
    request = make_request("/tables")
    assert slow_site.getResourceFor(request).render(request) is server.NOT_DONE_YET
    assert request.finished == 0
    runner.run_pending()
    assert request.finished == 1
    assert b"qasino_server_tables" in b"".join(request.written)


def test_page_is_not_written_to_a_client_that_went_away(
    store: Store, clock: Clock, logged_failures: list[dict[str, Any]]
) -> None:
    runner = ManualRunner()
    slow_site = make_site(Dispatcher(Engine(store, runner, clock, IDENTITY)))
    request = make_request("/query?sql=SELECT+1")
    slow_site.getResourceFor(request).render(request)
    request.processingFailed(Failure(ConnectionDone()))
    runner.run_pending()
    assert request.written == [] and request.finished == 0
    assert logged_failures == []


@pytest.mark.parametrize(
    ("epoch", "shown"),
    [
        (1000, "1970-01-01 00:16:40 UTC"),
        (1000.9, "1970-01-01 00:16:40 UTC"),
        ("1000", "1970-01-01 00:16:40 UTC"),
        (0, ""),
        (None, ""),
        ("x", ""),
    ],
)
def test_last_update_is_a_utc_datetime_and_never_is_blank(epoch: object, shown: str) -> None:
    assert web.format_utc(epoch) == shown

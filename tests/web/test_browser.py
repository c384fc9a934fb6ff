"""The web UI in a real headless Chromium against a live server (issue 5 item 4).

One ``qasino_server`` subprocess (1 s generations, loopback, free ports read
from its log) and one Chromium (Debian's ``/usr/bin/chromium`` driven by
Playwright) for the whole module. Data is published over HTTP with
``persist`` (so it stays across generations) and the tests wait for the
generation signal that brings it into the served snapshot, never a fixed
sleep. Every check is made through the DOM. Every request any page makes is
recorded: none may go to a host other than 127.0.0.1.

Skipped when /usr/bin/chromium or the playwright package is missing
(``.ci/run`` installs both).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.server_process import GENERATION_TIMEOUT, HOST, QasinoProcess, workdir_flags

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(
        f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGE_TIMEOUT_MS = 10_000

SCRIPT_PAYLOAD = "<script>window.__pwned=1</script>"
IMG_PAYLOAD = "<img src=x onerror=window.__pwned=2>"
EVIL_IDENTITY = "<img src=x onerror=window.__pwned=3>"

HOSTS_ROWS = [
    ["alpha", 30, "bos"],
    ["bravo", 5, "nyc"],
    ["charlie", 120, "sfo"],
    ["delta", 12, "bos"],
]
ALL_PAGES = [
    "/",
    "/tables",
    "/desc?tablename=web_hosts",
    "/query?sql=SELECT+1",
    "/connections",
    "/views",
    "/alerts",
    "/no-such-page",
]
ALERTS_YAML = """
- alert: WebHot
  sql: SELECT host, cpu FROM web_hosts WHERE cpu > 100
  key: host
  annotations: {summary: "{host} at {cpu}% <b>hot</b>"}
- alert: WebBroken
  sql: SELECT x FROM web_no_such_table
"""
VIEWS_YAML = """
- viewname: web_busy
  view: CREATE VIEW web_busy AS SELECT host, cpu FROM web_hosts WHERE cpu > 20
- viewname: web_broken
  view: CREATE VIEW web_broken AS SELECT x FROM web_no_such_table
"""


# ---------------------------------------------------------------- the server


class LiveServer(QasinoProcess):
    """The server process (tests/server_process.py) with this module's views,
    and the HTTP calls the browser tests make."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, workdir_flags(workdir, views_text=VIEWS_YAML))
        (workdir / "alerts.yaml").write_text(ALERTS_YAML)  # the default --alerts-file
        self.first_generation = 0  # the generation that first served the test data

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.ports['http']}"

    def publish(
        self,
        tablename: str,
        columns: list[str],
        types: list[str],
        rows: list[Any],
        identity: str = "webhost1",
        **options: Any,
    ) -> None:
        body = {
            "op": "add_table_data",
            "identity": identity,
            "table": {
                "tablename": tablename,
                "column_names": columns,
                "column_types": types,
                "rows": rows,
            },
            **(options or {"persist": 1}),
        }
        reply = requests.post(f"{self.base}/request?op=add_table_data", json=body, timeout=10)
        assert reply.json()["response_op"] == "ok", reply.text

    def query(self, sql: str) -> list[list[str]]:
        reply = requests.get(f"{self.base}/request", params={"op": "query", "sql": sql}, timeout=10)
        data = reply.json()
        assert data["response_op"] == "result_table", data
        return data["table"]["rows"]

    def wait_served(self, tablenames: set[str]) -> int:
        """Wait for generation signals until every table is in the served
        snapshot; its number (a signal names the generation that starts
        filling, the page shows the one served)."""
        deadline = time.monotonic() + 3 * GENERATION_TIMEOUT
        while time.monotonic() < deadline:
            self.wait_generation()
            rows = self.query(
                "SELECT tablename, (SELECT generation_number FROM qasino_server_info)"
                " FROM qasino_server_tables"
            )
            if tablenames <= {row[0] for row in rows}:
                return int(rows[0][1])
        raise AssertionError(f"{tablenames} never served")


def publish_generation_tables(live: LiveServer) -> None:
    """web_hosts from webhost1 and web_xss from an identity holding HTML (persisted)."""
    live.publish("web_hosts", ["host", "cpu", "dc"], ["text", "int", "text"], HOSTS_ROWS)
    xss_rows = [[1, SCRIPT_PAYLOAD], [2, IMG_PAYLOAD]]
    live.publish("web_xss", ["id", "payload"], ["int", "text"], xss_rows, identity=EVIL_IDENTITY)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("web_browser"))
    try:
        live.start()  # up to the first snapshot served
        publish_generation_tables(live)
        live.publish("web_static", ["k", "v"], ["text", "real"], [["x", 1.5]], static=1)
        live.first_generation = live.wait_served({"web_hosts", "web_xss", "web_static"})
        yield live
    finally:
        live.close()


# ---------------------------------------------------------------- the browser


class Browser:
    """One Chromium and one context; remembers every URL any page requested
    and every dialog any page opened."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.requested: list[str] = []
        self.dialogs: list[str] = []
        self.playwright = sync_api.sync_playwright().start()
        self.browser = self.playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        self.context = self.browser.new_context(base_url=base)
        self.context.set_default_timeout(PAGE_TIMEOUT_MS)
        self.context.on("request", lambda request: self.requested.append(request.url))
        self.page = self.context.new_page()
        self.page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def goto(self, path: str) -> Any:
        response = self.page.goto(path)
        assert response is not None
        return response

    def close(self) -> None:
        self.context.close()
        self.browser.close()
        self.playwright.stop()


@pytest.fixture(scope="module")
def browser(server: LiveServer) -> Iterator[Browser]:
    b = Browser(server.base)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def page(browser: Browser) -> Any:
    return browser.page


def column(page: Any, table_id: str, index: int, visible_only: bool = False) -> list[str]:
    """The text of column ``index`` (1-based) of a table's body, in DOM order."""
    rows = f"#{table_id} tbody tr" + (":visible" if visible_only else "")
    return [
        text.strip() for text in page.locator(f"{rows} td:nth-child({index})").all_inner_texts()
    ]


def assert_generation_shown(page: Any, server: LiveServer) -> None:
    number = int(page.locator("#generation-number").inner_text())
    assert number >= server.first_generation
    age = int(page.locator("#generation-age").inner_text())
    assert 0 <= age < 30


def not_pwned(page: Any) -> None:
    assert page.evaluate("typeof window.__pwned") == "undefined"


# ---------------------------------------------------------------- tables


def test_tables_page_lists_the_published_tables_with_their_row_counts(
    browser: Browser, page: Any, server: LiveServer
) -> None:
    response = browser.goto("/tables")
    assert response.status == 200
    names = column(page, "tables", 1)
    rows = dict(zip(names, column(page, "tables", 2)))
    assert rows["web_hosts"] == "4" and rows["web_xss"] == "2" and rows["web_static"] == "1"
    static = dict(zip(names, column(page, "tables", 5)))
    assert static["web_static"] == "yes" and static["web_hosts"] == "no"
    last_update = dict(zip(names, column(page, "tables", 4)))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", last_update["web_hosts"])
    assert_generation_shown(page, server)
    assert browser.goto("/").status == 200
    assert "web_hosts" in column(page, "tables", 1)


def test_clicking_a_column_header_sorts_the_tables(browser: Browser, page: Any) -> None:
    browser.goto("/tables")
    rows_header = page.locator("#tables thead th", has_text="rows")
    rows_header.click()
    counts = [int(n) for n in column(page, "tables", 2)]
    assert counts == sorted(counts)
    assert rows_header.get_attribute("aria-sort") == "ascending"
    rows_header.click()
    counts = [int(n) for n in column(page, "tables", 2)]
    assert counts == sorted(counts, reverse=True)
    assert rows_header.get_attribute("aria-sort") == "descending"
    page.locator("#tables thead th", has_text="name").click()
    names = column(page, "tables", 1)
    assert names == sorted(names, key=str.lower)


def test_typing_in_the_filter_hides_the_tables_that_do_not_match(
    browser: Browser, page: Any
) -> None:
    browser.goto("/tables")
    total = page.locator("#tables tbody tr").count()
    page.locator("#filter").fill("web_")
    assert sorted(column(page, "tables", 1, visible_only=True)) == [
        "web_hosts",
        "web_static",
        "web_xss",
    ]
    page.locator("#filter").fill("web_ho")
    assert column(page, "tables", 1, visible_only=True) == ["web_hosts"]
    assert page.locator("#filter-count").inner_text() == f"1 of {total} shown"
    page.locator("#filter").fill("")
    assert page.locator("#tables tbody tr:visible").count() == total


def test_a_table_name_opens_its_desc_page_with_the_columns(
    browser: Browser, page: Any, server: LiveServer
) -> None:
    browser.goto("/tables")
    page.get_by_role("link", name="web_hosts", exact=True).click()
    page.wait_for_url("**/desc?tablename=web_hosts")
    assert column(page, "columns", 1) == ["host", "cpu", "dc"]
    assert column(page, "columns", 2) == ["TEXT", "INTEGER", "TEXT"]
    assert_generation_shown(page, server)


def test_desc_page_of_a_missing_table_shows_the_error(browser: Browser, page: Any) -> None:
    response = browser.goto("/desc?tablename=web_nothing")
    assert response.status == 404
    assert page.locator("#error").inner_text() == "No such table: web_nothing"


# ---------------------------------------------------------------- query


def test_query_typed_into_the_form_shows_its_rows(
    browser: Browser, page: Any, server: LiveServer
) -> None:
    browser.goto("/query")
    page.locator("#sql").fill("SELECT host, cpu FROM web_hosts WHERE dc = 'bos' ORDER BY cpu")
    with page.expect_navigation():
        page.locator("#run").click()
    assert column(page, "result", 1) == ["delta", "alpha"]
    assert column(page, "result", 2) == ["12", "30"]
    assert page.locator("#summary").inner_text().startswith("2 rows.")
    assert_generation_shown(page, server)


def test_ctrl_enter_in_the_sql_box_runs_the_query(browser: Browser, page: Any) -> None:
    browser.goto("/query")
    page.locator("#sql").fill("SELECT count(*) AS n FROM web_hosts")
    with page.expect_navigation():
        page.locator("#sql").press("Control+Enter")
    assert column(page, "result", 1) == ["4"]


def test_a_bad_query_shows_the_servers_error(browser: Browser, page: Any) -> None:
    browser.goto("/query")
    page.locator("#sql").fill("SELECT nope FROM web_hosts")
    with page.expect_navigation():
        page.locator("#run").click()
    assert "no such column: nope" in page.locator("#error").inner_text()
    assert page.locator("#result").count() == 0
    assert page.locator("#sql").input_value() == "SELECT nope FROM web_hosts"


def test_csv_json_and_ndjson_links_download_the_same_query(browser: Browser, page: Any) -> None:
    sql = "SELECT host, cpu FROM web_hosts ORDER BY host"
    browser.goto("/query?" + urllib.parse.urlencode({"sql": sql}))
    csv_href = page.locator("#csv-link").get_attribute("href")
    json_href = page.locator("#json-link").get_attribute("href")
    ndjson_href = page.locator("#ndjson-link").get_attribute("href")
    downloaded = page.request.get(browser.base + csv_href)
    assert downloaded.ok
    assert downloaded.headers["content-type"].startswith("text/csv")
    assert "attachment" in downloaded.headers["content-disposition"]
    assert list(csv.reader(io.StringIO(downloaded.text()))) == [
        ["host", "cpu"],
        *[[h, str(c)] for h, c, _ in sorted(HOSTS_ROWS)],
    ]
    reply = page.request.get(browser.base + json_href).json()
    assert reply["ok"] is True and reply["columns"] == ["host", "cpu"]
    assert reply["rows"] == [{"host": h, "cpu": c} for h, c, _ in sorted(HOSTS_ROWS)]
    lines = page.request.get(browser.base + ndjson_href).text().splitlines()
    assert [json.loads(line) for line in lines] == reply["rows"]


# ---------------------------------------------------------------- connections and views


def test_connections_page_lists_the_publishers(
    browser: Browser, page: Any, server: LiveServer
) -> None:
    """A persisted copy does not count as a publish, so an identity is listed
    in the snapshot that follows its publish: publish again, wait for the
    next generation and look (again, if that generation began before the
    publish was in)."""
    identities: list[str] = []
    for _ in range(5):
        publish_generation_tables(server)
        server.wait_generation()  # one that began after the publish
        assert browser.goto("/connections").status == 200
        identities = column(page, "connections", 1)
        if "webhost1" in identities:
            break
    assert "webhost1" in identities and EVIL_IDENTITY in identities, identities
    tables = dict(zip(identities, column(page, "connections", 2)))
    assert tables["webhost1"] == "1" and tables[EVIL_IDENTITY] == "1"
    last_update = column(page, "connections", 3)[identities.index("webhost1")]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", last_update)
    assert_generation_shown(page, server)
    assert page.locator("#connections img").count() == 0
    not_pwned(page)


def test_views_page_shows_the_loaded_view_and_the_broken_one_with_its_error(
    browser: Browser, page: Any, server: LiveServer
) -> None:
    assert browser.goto("/views").status == 200
    names = column(page, "views", 1)
    loaded = dict(zip(names, column(page, "views", 2)))
    errors = dict(zip(names, column(page, "views", 3)))
    assert loaded == {"web_broken": "no", "web_busy": "yes"}
    assert "web_no_such_table" in errors["web_broken"]
    assert errors["web_busy"] == ""
    assert "CREATE VIEW web_busy" in column(page, "views", 4)[names.index("web_busy")]
    assert_generation_shown(page, server)


def test_alerts_page_shows_the_firing_alert_and_the_broken_rule(
    browser: Browser, page: Any, server: LiveServer
) -> None:
    for _ in range(5):
        assert browser.goto("/alerts").status == 200
        if page.locator("#alerts").count() and "WebHot" in column(page, "alerts", 1):
            break
        server.wait_generation()
    assert column(page, "alerts", 1) == ["WebHot"]
    assert column(page, "alerts", 2) == ["firing"]
    assert column(page, "alerts", 4) == ["summary: charlie at 120% <b>hot</b>"]
    assert page.locator("#alerts b").count() == 0  # annotation text, not HTML
    assert "web_no_such_table" in column(page, "alert-errors", 3)[0]
    assert_generation_shown(page, server)


# ---------------------------------------------------------------- safety


def test_published_script_and_img_cells_show_as_text_and_never_run(
    browser: Browser, page: Any
) -> None:
    browser.goto("/query?" + urllib.parse.urlencode({"sql": "SELECT * FROM web_xss ORDER BY id"}))
    assert column(page, "result", 2) == [SCRIPT_PAYLOAD, IMG_PAYLOAD]
    assert page.locator("#result script, #result img").count() == 0
    assert page.locator("script").count() == 1  # /static/qasino.js only
    not_pwned(page)
    assert browser.dialogs == []


def test_every_page_shows_the_generation_and_loads_only_from_127_0_0_1(
    browser: Browser, page: Any, server: LiveServer
) -> None:
    for path in ALL_PAGES:
        browser.goto(path)
        assert_generation_shown(page, server)
        # The bundled assets loaded and ran (sortable headers, styles applied).
        assert page.evaluate("getComputedStyle(document.body).margin") == "0px"
        not_pwned(page)
    assert any(url.endswith("/static/qasino.css") for url in browser.requested)
    assert any(url.endswith("/static/qasino.js") for url in browser.requested)
    hosts = {urllib.parse.urlsplit(url).hostname for url in browser.requested}
    assert hosts == {HOST}, browser.requested

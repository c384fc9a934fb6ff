"""The web UI: twisted.web resources rendering the Jinja2 templates of ``qasino.web``.

Pages: ``/`` and ``/tables``, ``/desc?tablename=NAME``, ``/query?sql=...``,
``/connections``, ``/views``; the bundled CSS and JavaScript under
``/static/``. Every page asks the shared :class:`~qasino.ops.Dispatcher`
(so every query goes through the same read-only guard as the API), renders
one template and finishes the request, whatever happens: a failure renders
the error page (500) and is logged.

Autoescaping is on for every template, and every page is sent with a
Content-Security-Policy that allows scripts, styles and images only from
this server, so a published cell holding HTML is shown as text and a page
can load nothing from another host.
"""

from __future__ import annotations

import functools
import importlib.resources
import urllib.parse
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, Optional

from jinja2 import Environment, PackageLoader
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import pages, server
from twisted.web.resource import Resource
from twisted.web.static import File

from qasino.core.errors import InvalidInput, QasinoError
from qasino.core.identifiers import check_identifier, quote_ident
from qasino.core.model import Result
from qasino.core.render import cell_to_str
from qasino.ops import Dispatcher

log = Logger(namespace="qasino.web")

HTML_TYPE = b"text/html; charset=utf-8"
# The query page shows at most this many rows; the downloads have them all.
PAGE_ROW_LIMIT = 1000

SHOW_TABLES = "SHOW tables"
SHOW_CONNECTIONS = "SHOW connections"
VIEWS_SQL = 'SELECT viewname, loaded, errormsg, "view" FROM qasino_server_views ORDER BY viewname'

SECURITY_HEADERS = {
    b"Content-Security-Policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"Cache-Control": b"no-store",
}

Context = dict[str, Any]


@functools.cache
def template_environment() -> Environment:
    """The one Jinja2 environment of the process (templates from package data)."""
    env = Environment(
        loader=PackageLoader("qasino.web", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = format_utc
    env.filters["flag"] = is_set
    return env


def static_dir() -> str:
    """The folder of the bundled CSS and JavaScript."""
    return str(importlib.resources.files("qasino.web").joinpath("static"))


def format_utc(epoch: object) -> str:
    """An epoch second as ``YYYY-MM-DD HH:MM:SS UTC`` ("" if not a positive number)."""
    if isinstance(epoch, str):
        try:
            epoch = float(epoch)
        except ValueError:
            return ""
    if not isinstance(epoch, (int, float)) or isinstance(epoch, bool) or epoch <= 0:
        return ""  # 0: never (a static table from an earlier run)
    try:
        moment = datetime.fromtimestamp(epoch, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return ""
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def is_set(value: object) -> bool:
    """A 0/1 flag column as a bool (NULL, 0, "0" and "" are not set)."""
    return value not in (None, 0, "0", "", False)


def query_url(sql: str, fmt: Optional[str] = None) -> str:
    """The API address of a query: JSON (the result shape) or ``fmt`` (csv)."""
    params = {"op": "query", "sql": sql}
    if fmt:
        params["format"] = fmt
    return "/request?" + urllib.parse.urlencode(params)


def _records(result: Result) -> list[dict[str, object]]:
    names = result.column_names
    return [dict(zip(names, row)) for row in result.rows]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def result_grid(column_names: Sequence[str], rows: Sequence[Sequence[object]]) -> Context:
    """What the results macro needs: columns (numeric or not) and cells as
    (text, kind) where kind is "num", "null" or "text"."""
    numeric = [True] * len(column_names)
    cells: list[list[tuple[str, str]]] = []
    for row in rows:
        out = []
        for index, value in enumerate(row):
            if value is None:
                out.append(("", "null"))
            elif _is_number(value):
                out.append((cell_to_str(value), "num"))
            else:
                if index < len(numeric):
                    numeric[index] = False
                out.append((cell_to_str(value), "text"))
        cells.append(out)
    columns = [
        {"name": name, "numeric": bool(rows) and numeric[index]}
        for index, name in enumerate(column_names)
    ]
    return {"columns": columns, "rows": cells}


class WebUI:
    """Renders pages: the shared template environment, the generation
    banner, the security headers and the finishing of every request."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.env = template_environment()

    def common(self) -> Context:
        """The banner every page shows: identity, generation and its age."""
        engine = self.dispatcher.engine
        try:
            info = engine.snapshot_info()
        except Exception:
            log.failure("could not read the snapshot info")
            return {"identity": engine.identity, "generation": None}
        age = max(0.0, float(engine.clock.seconds()) - info.generation_start_epoch)
        return {
            "identity": engine.identity,
            "generation": {
                "number": info.generation_number,
                "duration_s": info.generation_duration_s,
                "start": format_utc(info.generation_start_epoch),
                "age_s": int(age),
            },
        }

    def render(self, template: str, context: Context) -> bytes:
        page = dict(self.common())
        page.update(context)
        return self.env.get_template(template).render(page).encode("utf-8")

    def send(self, request: server.Request, body: bytes) -> None:
        request.setHeader(b"Content-Type", HTML_TYPE)
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"Content-Length", str(len(body)).encode())
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    def respond(self, request: server.Request, d: Deferred[Context], template: str) -> None:
        """Render ``template`` with what ``d`` fires with; on a failure,
        log it and render the error page. Always finishes the request
        (unless the client went away)."""
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def write(context: Context) -> None:
            if not gone:
                self.send(request, self.render(template, context))

        def failed(failure: Failure) -> None:
            log.failure("web page {path} failed", failure, path=request.path)
            if gone:
                return
            request.setResponseCode(500)
            try:
                body = self.render(
                    "error.html",
                    {"title": "Internal error", "error": "Internal error: see the server log."},
                )
            except Exception:
                log.failure("could not render the error page")
                body = b"Internal error\n"
            self.send(request, body)

        d.addCallback(write).addErrback(failed)
        d.addErrback(lambda f: log.failure("could not answer {path}", f, path=request.path))


def query_args(request: server.Request) -> dict[str, str]:
    """The query-string arguments, first value of each, as text."""
    out: dict[str, str] = {}
    for key, values in (request.args or {}).items():
        if values:
            out[key.decode("utf-8", "replace")] = values[0].decode("utf-8", "replace")
    return out


class Page(Resource):
    """One page: :meth:`context` builds the template's context (or a
    Deferred of it); it may set the response code for an error it shows."""

    isLeaf = True
    template = ""
    active = ""

    def __init__(self, ui: WebUI) -> None:
        super().__init__()
        self.ui = ui

    @property
    def dispatcher(self) -> Dispatcher:
        return self.ui.dispatcher

    def render_GET(self, request: server.Request) -> Any:
        if request.postpath not in ([], [b""]):
            return NotFoundPage(self.ui).render(request)
        d = maybeDeferred(self.context, request, query_args(request))
        d.addCallback(self._with_active)
        self.ui.respond(request, d, self.template)
        return server.NOT_DONE_YET

    def _with_active(self, context: Context) -> Context:
        context.setdefault("active", self.active)
        return context

    def context(self, request: server.Request, args: dict[str, str]) -> Any:
        raise NotImplementedError

    def query_error(self, request: server.Request, failure: Failure, code: int = 400) -> str:
        """The message of a QasinoError (the page shows it); other failures go on."""
        failure.trap(QasinoError)
        error = failure.value
        assert isinstance(error, QasinoError)
        request.setResponseCode(code)
        return error.message


class FixedQueryPage(Page):
    """A page listing the rows of one fixed query under ``key``."""

    sql = ""
    key = ""
    title = ""

    def context(self, request: server.Request, args: dict[str, str]) -> Deferred[Context]:
        d = self.dispatcher.query_result(self.sql)
        return d.addCallback(lambda result: {"title": self.title, self.key: _records(result)})


class TablesPage(FixedQueryPage):
    """Every table of the snapshot (qasino_server_tables)."""

    template = "tables.html"
    active = "tables"
    sql, key, title = SHOW_TABLES, "tables", "Tables"


class ConnectionsPage(FixedQueryPage):
    """Every identity that published, and when it last did."""

    template = "connections.html"
    active = "connections"
    sql, key, title = SHOW_CONNECTIONS, "connections", "Connections"


class ViewsPage(FixedQueryPage):
    """The views of views.conf: loaded or not, the error, the definition."""

    template = "views.html"
    active = "views"
    sql, key, title = VIEWS_SQL, "views", "Views"


class DescPage(Page):
    """The columns and types of one table or view (the ``DESC`` shortcut)."""

    template = "desc.html"
    active = "tables"

    def context(self, request: server.Request, args: dict[str, str]) -> Any:
        name = args.get("tablename", "").strip()
        page: Context = {"title": f"Table {name}" if name else "Describe", "tablename": name}
        if not name:
            request.setResponseCode(400)
            page["error"] = "Give a table name: /desc?tablename=NAME"
            return page
        try:
            check_identifier(name, "table name")
        except InvalidInput as e:
            request.setResponseCode(400)
            page["error"] = e.message
            return page

        def described(result: Result) -> Context:
            page["columns"] = [{"name": row[0], "type": row[1]} for row in result.rows]
            page["sample_url"] = "/query?" + urllib.parse.urlencode(
                {"sql": f"SELECT * FROM {quote_ident(name)} LIMIT 100"}
            )
            return page

        def failed(failure: Failure) -> Context:
            message = self.query_error(request, failure)
            if message.startswith("No such table"):
                request.setResponseCode(404)
            page["error"] = message
            return page

        # The DESC shortcut checks the identifier again and reads the schema.
        return self.dispatcher.query_result(f"DESC {name}").addCallbacks(described, failed)


class QueryPage(Page):
    """An SQL box, the result (at most PAGE_ROW_LIMIT rows) or the error,
    and the same query as CSV and JSON downloads."""

    template = "query.html"
    active = "query"

    def context(self, request: server.Request, args: dict[str, str]) -> Any:
        sql = args.get("sql", "")
        page: Context = {"title": "Query", "sql": sql, "row_limit": PAGE_ROW_LIMIT}
        if not sql.strip():
            return page
        page["csv_url"] = query_url(sql, "csv")
        page["json_url"] = query_url(sql)

        def shown(result: Result) -> Context:
            rows = result.rows
            page["nr_rows"] = len(rows)
            page["cut"] = len(rows) > PAGE_ROW_LIMIT
            page["server_truncated"] = result.truncated
            page["result"] = result_grid(result.column_names, rows[:PAGE_ROW_LIMIT])
            return page

        def failed(failure: Failure) -> Context:
            page["error"] = self.query_error(request, failure)
            return page

        return self.dispatcher.query_result(sql).addCallbacks(shown, failed)


class NotFoundPage(Resource):
    """404, as a page of the UI."""

    isLeaf = True

    def __init__(self, ui: WebUI) -> None:
        super().__init__()
        self.ui = ui

    def render(self, request: server.Request) -> Any:
        request.setResponseCode(404)
        path = request.path.decode("utf-8", "replace") if request.path else ""
        body = self.ui.render(
            "error.html", {"title": "Not found", "error": f"No page at {path}", "active": ""}
        )
        self.ui.send(request, body)
        return server.NOT_DONE_YET


class StaticFiles(File):
    """The bundled assets; no directory listings."""

    def directoryListing(self) -> Any:
        return pages.notFound()

    def getChild(self, path: bytes, request: Any) -> Any:
        # A NUL (or a path the OS refuses) is simply not there.
        if b"\x00" in path:
            return pages.notFound()
        try:
            return super().getChild(path, request)
        except (ValueError, OSError):
            return pages.notFound()


def install_web_ui(root: Resource, dispatcher: Dispatcher) -> Resource:
    """Mount the UI's pages on ``root``; return the 404 resource for the
    paths that are not there."""
    ui = WebUI(dispatcher)
    tables = TablesPage(ui)
    root.putChild(b"", tables)
    root.putChild(b"tables", tables)
    root.putChild(b"desc", DescPage(ui))
    root.putChild(b"query", QueryPage(ui))
    root.putChild(b"connections", ConnectionsPage(ui))
    root.putChild(b"views", ViewsPage(ui))
    root.putChild(b"static", StaticFiles(static_dir()))
    return NotFoundPage(ui)

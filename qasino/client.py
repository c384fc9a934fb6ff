"""A Python API for publishers and queries.

    from qasino.client import Publisher

    with Publisher("http://stats1:15597", identity="web7") as qasino:
        qasino.publish(
            "disks",
            [["/", 71.5], ["/data", 93.0]],
            columns=["mount", "pct"],
            types=["text", "real"],
        )
        columns, rows = qasino.query("SELECT * FROM disks WHERE pct > 90")

``url`` is ``http://HOST:PORT``, ``https://HOST:PORT`` (basic auth with
``username``/``password``; ``verify`` may be False or a CA bundle path) or
``tcp://HOST:PORT`` (the ZeroMQ RPC port). Every call is blocking and
bounded by ``timeout_s``. An error reply raises :class:`ServerError` with
the server's message; no answer, or a broken one, raises
:class:`TransportError`; a table that cannot be valid raises
:class:`ValueError` before anything is sent.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Optional, Union

from qasino.clients.transport import (
    DEFAULT_TIMEOUT_S,
    Hints,
    HttpTransport,
    ServerError,
    TransportError,
    ZmqTransport,
)
from qasino.core.errors import InvalidInput
from qasino.core.tables import parse_json_publish
from qasino.identity import default_identity

__all__ = ["Publisher", "QueryResult", "ServerError", "TransportError"]

DEFAULT_PORTS = {"http": 15597, "https": 443, "tcp": 15598}

Row = Union[Sequence[Any], Mapping[str, Any]]


class QueryResult(NamedTuple):
    """Column names and rows (cells as the server's JSON reply has them:
    strings, NULL as ""). Unpacks as ``columns, rows``."""

    columns: list[str]
    rows: list[list[Any]]


def _type_of(value: Any) -> str:
    if isinstance(value, bool) or isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "real"
    return "text"


class Publisher:
    """A connection to one Qasino server (see the module docstring)."""

    def __init__(
        self,
        url: str,
        identity: Optional[str] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
        verify: Union[bool, str] = True,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        cacert: Optional[str] = None,
        hints: Hints = Hints(),
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"url must be http://, https:// or tcp://HOST:PORT, not {url!r}")
        try:
            port = parts.port or DEFAULT_PORTS[scheme]
        except ValueError as e:
            raise ValueError(f"bad port in {url!r}: {e}") from None
        host = parts.hostname
        self.url = f"{scheme}://{host}:{port}"
        self.identity = identity or default_identity()
        self.transport: Union[HttpTransport, ZmqTransport]
        if scheme == "tcp":
            self.transport = ZmqTransport(host, port, timeout_s)
        else:
            self.transport = HttpTransport(
                host,
                port,
                https=scheme == "https",
                username=username,
                password=password,
                verify=bool(verify),
                timeout_s=timeout_s,
                # verify may name a CA file, as requests' verify does.
                cacert=verify if isinstance(verify, str) else cacert,
                hints=hints,
            )

    # ------------------------------------------------------------ the API

    def publish(
        self,
        tablename: str,
        rows: Sequence[Row],
        columns: Optional[Sequence[str]] = None,
        types: Optional[Sequence[str]] = None,
        persist: bool = False,
        static: bool = False,
        update: bool = False,
        keycols: Optional[Sequence[str]] = None,
    ) -> None:
        """Publish one table into the generation being written.

        ``rows``: lists of cells, or dicts keyed by column name (then
        ``columns`` defaults to the first row's keys). ``types`` default to
        what the first row's values are (integer, real, text). Returns once
        the server acknowledged it; raises :class:`ServerError` if refused.
        """
        request = self.table_request(
            tablename, rows, columns, types, persist, static, update, keycols
        )
        self.request(request)

    def query(self, sql: str, use_write_db: bool = False) -> QueryResult:
        """Run one SELECT (or SHOW/DESC); :class:`ServerError` on an SQL error."""
        message: dict[str, Any] = {"op": "query", "sql": sql}
        if use_write_db:
            message["use_write_db"] = True
        reply = self.request(message)
        table = reply.get("table")
        if not isinstance(table, dict):
            raise TransportError("the server's reply has no result table")
        return QueryResult(list(table.get("column_names", [])), list(table.get("rows", [])))

    def table_request(
        self,
        tablename: str,
        rows: Sequence[Row],
        columns: Optional[Sequence[str]] = None,
        types: Optional[Sequence[str]] = None,
        persist: bool = False,
        static: bool = False,
        update: bool = False,
        keycols: Optional[Sequence[str]] = None,
    ) -> dict[str, Any]:
        """The ``add_table_data`` request :meth:`publish` sends, checked as
        the server would check it (ValueError if it is not valid)."""
        first = rows[0] if rows else None
        if columns is None:
            if not isinstance(first, Mapping):
                raise ValueError("give columns=, or rows as dicts keyed by column name")
            columns = list(first.keys())
        columns = list(columns)
        cells = [
            [row.get(c) for c in columns] if isinstance(row, Mapping) else list(row) for row in rows
        ]
        if types is None:
            if not cells:
                raise ValueError("give types= for a table without rows")
            types = [_type_of(v) for v in cells[0]]
        request: dict[str, Any] = {
            "op": "add_table_data",
            "identity": self.identity,
            "table": {
                "tablename": tablename,
                "column_names": columns,
                "column_types": list(types),
                "rows": cells,
            },
        }
        for flag, on in (("persist", persist), ("static", static), ("update", update)):
            if on:
                request[flag] = 1
        if keycols:
            request["keycols"] = ";".join(keycols)
        try:
            parse_json_publish(request)
        except InvalidInput as e:
            raise ValueError(f"Invalid input format: {e.message}") from None
        return request

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one protocol request; the reply dict (ServerError on an error reply)."""
        return self.transport.request(message)

    @property
    def endpoint(self) -> str:
        """Where requests go: the HTTP(S) /request URL or the ZeroMQ address."""
        if isinstance(self.transport, HttpTransport):
            return self.transport.url
        return self.transport.address

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

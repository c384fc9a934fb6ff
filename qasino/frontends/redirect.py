"""The plain HTTP port that sends browsers to HTTPS (the original's port 80)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from twisted.web import http, server
from twisted.web.resource import Resource
from twisted.web.util import redirectTo


class RedirectResource(Resource):
    """GET/HEAD of any path: 302 to the same path and query on HTTPS.

    ``https_port`` returns the HTTPS listener's real port, or None while it
    does not listen (then 503: a redirect to nothing helps nobody). Other
    methods get 405, as on the original server.
    """

    isLeaf = True

    def __init__(self, https_port: Callable[[], Optional[int]]) -> None:
        super().__init__()
        self.https_port = https_port

    def render_GET(self, request: server.Request) -> bytes:
        port = self.https_port()
        if port is None:
            request.setResponseCode(503)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"HTTPS is not listening\n"
        host = request.getRequestHostname().decode("ascii", "replace")
        if ":" in host:
            host = f"[{host}]"
        where = host if port == 443 else f"{host}:{port}"
        return redirectTo(f"https://{where}".encode("ascii") + request.uri, request)


class RedirectSite(server.Site):
    """A Site with only :class:`RedirectResource`, without access logs."""

    def __init__(self, https_port: Callable[[], Optional[int]]) -> None:
        super().__init__(RedirectResource(https_port))
        self.displayTracebacks = False
        self.noisy = False

    def log(self, request: http.Request) -> None:
        pass

"""Client transports: ZeroMQ REQ and HTTP(S), both blocking, both bounded.

No call waits forever: a ZeroMQ request that gets no reply within the
timeout raises :class:`TransportError` and the REQ socket is thrown away
(a REQ socket that missed its reply cannot send again).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

import requests
import zmq

DEFAULT_TIMEOUT_S = 10.0
POLL_SLICE_MS = 100


class TransportError(Exception):
    """The server could not be reached or did not answer in time."""


@dataclass(frozen=True)
class Hints:
    """How one client spells the flags its error messages point to."""

    http: str = "--use-http"
    https: str = "--use-https"
    zmq: str = "--use-zmq"
    skip_verify: str = "--skip-ssl-verify"
    cacert: str = "--cacert"
    credentials: str = "-u USER -w PASSWORD"


def explain_http_failure(error: Exception, url: str, https: bool, hints: Hints) -> str:
    """One line: what went wrong talking to ``url`` and what to do about it."""
    text = str(error)
    low = text.lower()
    if isinstance(error, requests.exceptions.SSLError) or "ssl" in low and https:
        if "hostname" in low and "match" in low:
            return (
                f"the certificate of {url} is for another host name: connect by the name "
                f"in the certificate, or skip the check with {hints.skip_verify}"
            )
        if "certificate verify failed" in low or "certificate_verify_failed" in low:
            why = "self-signed" if "self-signed" in low or "self signed" in low else "not trusted"
            return (
                f"the certificate of {url} is {why}: pass the CA that signed it with "
                f"{hints.cacert} FILE (or REQUESTS_CA_BUNDLE=FILE), or skip the check "
                f"with {hints.skip_verify}"
            )
        return (
            f"no TLS at {url} ({_short(text)}): if that is qasino_server's plain HTTP "
            f"port (default 15597) use {hints.http}; HTTPS listens only when the server "
            "was started with --tls-cert and --tls-key"
        )
    if isinstance(error, requests.exceptions.Timeout):
        if https:
            return (
                f"no answer from {url} within the time limit (--timeout): if that is "
                f"qasino_server's plain HTTP port (default 15597) use {hints.http}; HTTPS "
                "listens only when the server was started with --tls-cert and --tls-key"
            )
        return f"no answer from {url} within the time limit (--timeout): is qasino_server there?"
    if "refused" in low:
        default = (
            "HTTPS on --https-port, only with --tls-cert/--tls-key" if https else "HTTP on 15597"
        )
        return (
            f"cannot reach {url}: connection refused. Is qasino_server running there, on "
            f"that port ({default})? Use -H/-p to point elsewhere"
            + (f", {hints.http} for plain HTTP or {hints.zmq} for ZeroMQ" if https else "")
        )
    if any(w in low for w in ("name or service not known", "failed to resolve", "nodename")):
        return f"cannot reach {url}: unknown host name (-H)"
    if not https and any(w in low for w in ("remotedisconnected", "reset by peer", "aborted")):
        return (
            f"{url} closed the connection without an HTTP answer: if that port is HTTPS, "
            f"use {hints.https}"
        )
    return f"cannot reach {url}: {_short(text)}"


def _short(text: str) -> str:
    """The innermost reason of a requests/urllib3 error chain, on one line."""
    text = " ".join(text.split())
    for marker in ("(Caused by ", "Caused by "):
        if marker in text:
            text = text.split(marker, 1)[1].rstrip(")")
    return text[:300]


class ServerError(Exception):
    """The server answered with an error reply."""


def decode_frame(frame: bytes) -> Any:
    try:
        return json.loads(frame)
    except ValueError as e:
        raise TransportError(f"server sent a reply that is not JSON: {e}") from None


def check_reply(reply: Any) -> dict[str, Any]:
    """Return the reply dict, or raise ServerError with the server's message."""
    if not isinstance(reply, dict):
        raise TransportError("server sent a reply that is not a JSON object")
    if reply.get("response_op") == "error":
        raise ServerError(str(reply.get("error_message", "unknown error")))
    return reply


class ZmqTransport:
    """Requests over the server's ZeroMQ REP socket (default port 15598)."""

    def __init__(self, host: str, port: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.address = f"tcp://{host}:{port}"
        self.timeout_ms = int(timeout_s * 1000)
        self.context: zmq.Context[Any] = zmq.Context.instance()
        self.socket: Optional[zmq.Socket[bytes]] = None

    def _socket(self) -> zmq.Socket[bytes]:
        if self.socket is None:
            s = self.context.socket(zmq.REQ)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVTIMEO, self.timeout_ms)
            s.setsockopt(zmq.SNDTIMEO, self.timeout_ms)
            s.connect(self.address)
            self.socket = s
        return self.socket

    def request_frames(self, message: dict[str, Any]) -> list[Any]:
        """Send one JSON frame; return the decoded reply frames."""
        s = self._socket()
        try:
            s.send(json.dumps(message).encode("utf-8"))
            # Wait in short slices so Ctrl-C is noticed at once.
            deadline = time.monotonic() + self.timeout_ms / 1000
            while not s.poll(min(POLL_SLICE_MS, self.timeout_ms), zmq.POLLIN):
                if time.monotonic() >= deadline:
                    raise zmq.Again()
            frames = s.recv_multipart()
        except zmq.Again:
            self.close()
            raise TransportError(
                f"no reply from {self.address} within {self.timeout_ms / 1000:g}s: is "
                "qasino_server running there, and is that its ZeroMQ port (--zmq-port, "
                "default 15598)?"
            ) from None
        except zmq.ZMQError as e:
            self.close()
            raise TransportError(f"ZeroMQ error talking to {self.address}: {e}") from None
        except BaseException:
            self.close()  # interrupted mid-request: this REQ socket is spent
            raise
        return [decode_frame(f) for f in frames]

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        frames = self.request_frames(message)
        reply = check_reply(frames[0])
        if reply.get("response_op") == "tables_list" and len(frames) > 1:
            reply = dict(reply, tables=frames[1])
        return reply

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None


class HttpTransport:
    """Requests to ``/request`` over HTTP or HTTPS with optional basic auth."""

    def __init__(
        self,
        host: str,
        port: int,
        https: bool = False,
        username: Optional[str] = None,
        password: Optional[str] = None,
        verify: bool = True,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        cacert: Optional[str] = None,
        hints: Hints = Hints(),
    ) -> None:
        scheme = "https" if https else "http"
        self.https = https
        self.url = f"{scheme}://{host}:{port}/request"
        self.session = requests.Session()
        if username is not None:
            self.session.auth = (username, password or "")
        self.hints = hints
        # requests takes a CA bundle path where it takes verify=True.
        self.verify: bool | str = (cacert or True) if verify else False
        if not verify:
            # The user asked for it (-s/-k); don't print a warning per request.
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self.timeout_s = timeout_s

    def post(self, op: str, body: bytes, content_type: str = "application/json") -> Any:
        try:
            response = self.session.post(
                self.url,
                params={"op": op},
                data=body,
                headers={"Content-Type": content_type},
                timeout=self.timeout_s,
                # Per request: a session-level verify=False loses to
                # REQUESTS_CA_BUNDLE in the environment.
                verify=self.verify,
            )
        except requests.RequestException as e:
            raise TransportError(
                explain_http_failure(e, self.url, self.https, self.hints)
            ) from None
        except OSError as e:  # a --cacert file that cannot be read
            raise TransportError(f"cannot use the CA file {self.verify}: {e}") from None
        if response.status_code == 401:
            who = "no user name was given" if self.session.auth is None else "refused"
            raise ServerError(
                f"authentication failed (401, {who}): give the user name and password "
                f"of the server's htpasswd file with {self.hints.credentials}"
            )
        try:
            return response.json()
        except ValueError:
            raise TransportError(
                f"server answered {response.status_code} with a body that is not JSON"
            ) from None

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        op = str(message.get("op", ""))
        return check_reply(self.post(op, json.dumps(message).encode("utf-8")))

    def close(self) -> None:
        self.session.close()


def env_default(*names: str) -> Optional[str]:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None

"""Client transports: ZeroMQ REQ and HTTP(S), both blocking, both bounded.

No call waits forever: a ZeroMQ request that gets no reply within the
timeout raises :class:`TransportError` and the REQ socket is thrown away
(a REQ socket that missed its reply cannot send again).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

import requests
import zmq

DEFAULT_TIMEOUT_S = 10.0
POLL_SLICE_MS = 100


class TransportError(Exception):
    """The server could not be reached or did not answer in time."""


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
    if reply.get("ok") is False:  # the typed shapes' error
        raise ServerError(str(reply.get("error", "unknown error")))
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
                f"no reply from {self.address} within {self.timeout_ms / 1000:g}s"
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
    ) -> None:
        scheme = "https" if https else "http"
        self.url = f"{scheme}://{host}:{port}/request"
        self.session = requests.Session()
        if username is not None:
            self.session.auth = (username, password or "")
        self.verify = verify
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
            raise TransportError(f"cannot reach {self.url}: {e}") from None
        if response.status_code == 401:
            raise ServerError("authentication failed (401): check the user name and password")
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

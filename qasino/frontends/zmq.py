"""ZeroMQ front ends: the REP JSON RPC socket and the PUB generation signal.

The REP side is txzmq's ROUTER-based REP connection, so replies may come
back in any order and a slow query never holds up the others. Every
request gets exactly one reply, whatever it holds.
"""

from __future__ import annotations

from typing import Any, Optional

import zmq
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from txzmq import ZmqEndpoint, ZmqEndpointType, ZmqFactory, ZmqPubConnection, ZmqREPConnection

from qasino.ops import Dispatcher, Reply, decode_body, encode_json

log = Logger(namespace="qasino.zmq")

GENSIG_TAG = b"GENSIG"
ALERT_TAG = b"ALERT"


def zmq_address(host: str, port: int) -> str:
    """A tcp:// bind address; port 0 asks ZeroMQ for a free port."""
    return f"tcp://{host}:{port if port else '*'}"


def bound_port(connection: Any) -> int:
    endpoint = connection.socket.get(zmq.LAST_ENDPOINT).decode()
    return int(endpoint.rsplit(":", 1)[1])


class RPCConnection(ZmqREPConnection):
    """Requests in, one reply each; the ops come from the shared Dispatcher."""

    def __init__(self, factory: ZmqFactory, dispatcher: Dispatcher, max_message_bytes: int = 0):
        self.dispatcher = dispatcher
        self.max_message_bytes = max_message_bytes
        self._inflight: dict[tuple[tuple[bytes, ...], bytes], int] = {}
        super().__init__(factory)

    def messageReceived(self, message: list[bytes]) -> None:
        # The envelope is routing frames, the request id, an empty frame,
        # then the body. A peer that breaks it (a raw DEALER, say) cannot
        # be answered; drop it rather than let an exception reach txzmq.
        try:
            i = message.index(b"")
        except ValueError:
            log.info("dropped a ZeroMQ message without an envelope")
            return
        if i < 1:
            log.info("dropped a ZeroMQ message without a request id")
            return
        routing, msg_id, parts = message[: i - 1], message[i - 1], message[i + 1 :]
        # A pipelining peer may reuse a request id (a raw DEALER sends none,
        # so its identity is the id): count the requests in flight per id so
        # every one of them gets its reply.
        key = (tuple(routing), msg_id)
        self._inflight[key] = self._inflight.get(key, 0) + 1
        self.gotMessage(key, *parts)

    def reply(self, messageId: Any, *messageParts: bytes) -> None:
        routing, msg_id = messageId
        left = self._inflight.get(messageId, 0) - 1
        if left > 0:
            self._inflight[messageId] = left
        else:
            self._inflight.pop(messageId, None)
        self.send([*routing, msg_id, b"", *messageParts])

    def gotMessage(self, messageId: Any, *messageParts: bytes) -> None:
        if len(messageParts) != 1:
            self._send(
                messageId,
                self.dispatcher.error(
                    f"Failed to parse JSON message: expected one frame, got {len(messageParts)}"
                ),
            )
            return
        limit = getattr(self, "max_message_bytes", 0)
        if limit and len(messageParts[0]) > limit:
            self._send(
                messageId,
                self.dispatcher.error(f"Request too large (limit {limit} bytes)"),
            )
            return
        try:
            request, plain_bytes = decode_body(messageParts[0])
        except (ValueError, UnicodeDecodeError) as e:
            self._send(messageId, self.dispatcher.error(f"Failed to parse JSON message: {e}"))
            return
        d: Deferred[Any]
        if isinstance(request, dict) and request.get("op") == "query":
            d = self.dispatcher.query_encoded(request, "zmq")
        else:
            d = self.dispatcher.dispatch(request, "zmq", plain_bytes)
        d.addCallback(lambda reply: self._send(messageId, reply))
        d.addErrback(lambda f: self._send(messageId, self.dispatcher.error("Internal error")))

    def _send(self, message_id: Any, reply: Reply | bytes) -> None:
        if self.socket is None:  # shut down while the request ran
            self._inflight.pop(message_id, None)
            return
        try:
            if isinstance(reply, bytes):
                self.reply(message_id, reply)
            elif reply.get("response_op") == "tables_list":
                meta = {k: v for k, v in reply.items() if k != "tables"}
                self.reply(message_id, encode_json(meta), encode_json(reply.get("tables", {})))
            else:
                self.reply(message_id, encode_json(reply))
        except Exception:
            log.failure("could not send a ZeroMQ reply")


class ZmqServices(Service):
    """Binds the REP and PUB sockets in startService, closes them in stopService."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        reactor: Any,
        bind: str,
        rpc_port: Optional[int],
        pub_port: Optional[int],
        max_message_bytes: int = 0,
    ) -> None:
        self.dispatcher = dispatcher
        self.reactor = reactor
        self.bind = bind
        self.rpc_port = rpc_port
        self.pub_port = pub_port
        self.max_message_bytes = max_message_bytes
        self.factory: Optional[ZmqFactory] = None
        self.rpc: Optional[RPCConnection] = None
        self.pub: Optional[ZmqPubConnection] = None

    def startService(self) -> None:
        factory = ZmqFactory()
        factory.reactor = self.reactor
        self.factory = factory
        if self.rpc_port is not None:
            self.rpc = RPCConnection(factory, self.dispatcher, self.max_message_bytes)
            if self.max_message_bytes:
                # Past the limit a request gets an error reply; far past it
                # ZeroMQ itself drops the peer, so nothing huge is buffered.
                hard = max(4 * self.max_message_bytes, 16 * 1024 * 1024)
                self.rpc.socket.setsockopt(zmq.MAXMSGSIZE, hard)
            self.rpc_port = self._bind(self.rpc, self.rpc_port)
            log.info("ZeroMQ RPC listening on {bind}:{port}", bind=self.bind, port=self.rpc_port)
        if self.pub_port is not None:
            self.pub = ZmqPubConnection(factory)
            self.pub_port = self._bind(self.pub, self.pub_port)
            log.info(
                "ZeroMQ generation signal on {bind}:{port}", bind=self.bind, port=self.pub_port
            )
        super().startService()

    def _bind(self, connection: Any, port: int) -> int:
        """Bind a created connection; on failure close its socket (an open
        socket would make the ZeroMQ context hang at shutdown) and raise."""
        address = zmq_address(self.bind, port)
        try:
            connection.addEndpoints([ZmqEndpoint(ZmqEndpointType.bind, address)])
        except zmq.ZMQError as e:
            connection.shutdown()
            raise OSError(f"Couldn't listen on {self.bind}:{port}: {e}") from None
        return bound_port(connection)

    def publish_generation(self, generation_number: int, generation_duration_s: float) -> None:
        """Send the GENSIG frame (txzmq framing: tag, NUL, JSON)."""
        if self.pub is None or self.pub.socket is None:
            return
        duration: object = (
            int(generation_duration_s)
            if float(generation_duration_s).is_integer()
            else generation_duration_s
        )
        body = encode_json(
            {
                "op": "generation_signal",
                "identity": self.dispatcher.identity,
                "generation_number": generation_number,
                "generation_duration_s": duration,
            }
        )
        self.pub.publish(body, GENSIG_TAG)

    def publish_alert(self, message: dict[str, object]) -> None:
        """Send one alert state change: ``b"ALERT\\x00" + JSON``."""
        if self.pub is None or self.pub.socket is None:
            return
        self.pub.publish(encode_json(message), ALERT_TAG)

    def stopService(self) -> None:
        super().stopService()
        if self.factory is not None:
            self.factory.shutdown()
            self.factory = None
        self.rpc = None
        self.pub = None

"""The transport ceilings: servers that only parse the publish and ack it.

Run as ``python -m bench.bare http`` or ``python -m bench.bare zmq``; the
process prints ``PORT <n> <parser>`` once it listens on 127.0.0.1 and runs until
SIGTERM (or its stdin closes). What they do per request is what the real
server cannot avoid: receive the body, parse it (with orjson, the parser
the server uses, when it is installed; else the stdlib), send a small JSON
reply. The difference to the real server is the cost of Qasino itself.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import zmq
from twisted.internet import stdio
from twisted.internet.protocol import Protocol
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from txzmq import ZmqEndpoint, ZmqEndpointType, ZmqFactory, ZmqREPConnection

ACK = b'{"identity":"bare","response_op":"ok"}'


def json_parser() -> tuple[str, Callable[[bytes], Any]]:
    try:
        import orjson
    except ImportError:
        return "json", json.loads
    return "orjson", orjson.loads


PARSER_NAME, parse = json_parser()


class ParseOnly(Resource):
    """``POST /request``: parse the JSON body, answer ok."""

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        parse(request.content.read())
        request.setHeader(b"Content-Type", b"application/json")
        return ACK


class ParseOnlyREP(ZmqREPConnection):
    """txzmq's ROUTER-based REP: parse the JSON frame, reply ok."""

    def gotMessage(self, messageId: bytes, *messageParts: bytes) -> None:
        parse(messageParts[0])
        self.reply(messageId, ACK)


class StopOnEOF(Protocol):
    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def connectionLost(self, reason: Any = None) -> None:
        if self.reactor.running:
            self.reactor.stop()


def listen_http(reactor: Any) -> int:
    site = Site(ParseOnly(), parsePOSTFormSubmission=False)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return int(port.getHost().port)


def listen_zmq(reactor: Any) -> int:
    factory = ZmqFactory()
    factory.reactor = reactor
    connection = ParseOnlyREP(factory)
    connection.addEndpoints([ZmqEndpoint(ZmqEndpointType.bind, "tcp://127.0.0.1:*")])
    endpoint = connection.socket.get(zmq.LAST_ENDPOINT).decode()
    reactor.addSystemEventTrigger("during", "shutdown", factory.shutdown)
    return int(endpoint.rsplit(":", 1)[1])


def main(argv: list[str]) -> int:
    kinds = {"http": listen_http, "zmq": listen_zmq}
    if len(argv) != 1 or argv[0] not in kinds:
        sys.stderr.write("usage: python -m bench.bare http|zmq\n")
        return 2
    from twisted.internet import reactor as installed

    reactor: Any = installed
    port = kinds[argv[0]](reactor)
    sys.stdout.write(f"PORT {port} {PARSER_NAME}\n")
    sys.stdout.flush()
    stdio.StandardIO(StopOnEOF(reactor))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

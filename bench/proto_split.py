"""A miniature of the multi-core design in docs/performance.md, to measure
it before building it: N twisted.web worker processes (own ``SO_REUSEPORT``
sockets on one port) decode each publish and forward its body bytes, once
per reactor turn as one batch, over a Unix socket to one store process,
which decodes them again, inserts each table's rows in one transaction per
batch (a savepoint per publish) into a generation-like SQLite file, commits,
and acknowledges the batch; the worker answers the HTTP requests then.

No checks, no identities, no rotation: a lower bound on what the real
design costs. ``python -m bench.multicore --proto`` drives it.
"""

from __future__ import annotations

import selectors
import socket
import struct
import sys
from typing import Any

import apsw
import orjson

from bench.daemon import HOST

HEADER = struct.Struct("!II")  # frame length, sequence number
ACK = b'{"identity":"proto","response_op":"ok"}'


def store(path: str, db: str) -> int:
    """The store process: accept workers on ``path``, apply batches."""
    conn = apsw.Connection(db)
    conn.execute("PRAGMA page_size=16384; PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF")
    conn.execute("CREATE TABLE t(a TEXT, b TEXT, c INTEGER, d INTEGER, e REAL, ident TEXT)")
    sql = "INSERT INTO t VALUES(?,?,?,?,?,?)"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(sys.stdin, selectors.EVENT_READ)
    buffers: dict[socket.socket, bytearray] = {}
    while True:
        ready = sel.select()
        batches: list[tuple[socket.socket, list[tuple[int, bytes]]]] = []
        for key, _ in ready:
            if key.fileobj is sys.stdin:
                return 0
            if key.fileobj is listener:
                worker, _ = listener.accept()
                sel.register(worker, selectors.EVENT_READ)
                buffers[worker] = bytearray()
                continue
            sock: Any = key.fileobj
            data = sock.recv(1 << 20)
            if not data:
                sel.unregister(sock)
                sock.close()
                continue
            buf = buffers[sock]
            buf += data
            frames = []
            while len(buf) >= HEADER.size:
                length, seq = HEADER.unpack_from(buf)
                if len(buf) < HEADER.size + length:
                    break
                frames.append((seq, bytes(buf[HEADER.size : HEADER.size + length])))
                del buf[: HEADER.size + length]
            if frames:
                batches.append((sock, frames))
        if not batches:
            continue
        with conn:  # group commit: every frame that arrived, one transaction
            for _, frames in batches:
                for _, body in frames:
                    request = orjson.loads(body)
                    conn.execute("SAVEPOINT p")
                    ident = request["identity"]
                    conn.executemany(sql, [(*row, ident) for row in request["table"]["rows"]])
                    conn.execute("RELEASE p")
        for sock, frames in batches:
            sock.sendall(b"".join(struct.pack("!I", seq) for seq, _ in frames))


def worker(port: int, path: str) -> int:
    from twisted.internet import reactor as installed
    from twisted.internet import stdio
    from twisted.internet.protocol import ClientFactory, Protocol
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Request, Site

    from bench.bare import StopOnEOF

    reactor: Any = installed
    pending: dict[int, Request] = {}
    out: list[bytes] = []
    state: dict[str, Any] = {"seq": 0, "flush": None}

    class Channel(Protocol):
        buf = b""

        def dataReceived(self, data: bytes) -> None:
            self.buf += data
            whole = len(self.buf) // 4 * 4
            for (seq,) in struct.iter_unpack("!I", self.buf[:whole]):
                request = pending.pop(seq)
                if getattr(request, "_disconnected", False):
                    continue  # the client went away (wrk stopping)
                request.setHeader(b"Content-Type", b"application/json")
                request.write(ACK)
                request.finish()
            self.buf = self.buf[whole:]

    channel = Channel()

    def flush() -> None:
        state["flush"] = None
        data = b"".join(out)
        out.clear()
        assert channel.transport is not None
        channel.transport.write(data)

    class Forward(Resource):
        isLeaf = True

        def render_POST(self, request: Request) -> Any:
            assert request.content is not None
            body = request.content.read()
            orjson.loads(body)  # the worker's parse (and, in the design, checks)
            seq: int = state["seq"] + 1
            state["seq"] = seq
            pending[seq] = request
            out.append(HEADER.pack(len(body), seq) + body)
            if state["flush"] is None:
                state["flush"] = reactor.callLater(0, flush)
            return NOT_DONE_YET

    class Factory(ClientFactory):
        def buildProtocol(self, addr: Any) -> Protocol:
            return channel

    def start(_: object = None) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((HOST, port))
        sock.listen(128)
        sock.setblocking(False)
        site = Site(Forward(), parsePOSTFormSubmission=False)
        site.noisy = False
        reactor.adoptStreamPort(sock.fileno(), socket.AF_INET, site)
        sock.close()
        sys.stdout.write("READY\n")
        sys.stdout.flush()

    reactor.connectUNIX(path, Factory())
    reactor.callLater(0.2, start)
    stdio.StandardIO(StopOnEOF(reactor))
    reactor.run()
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "store":
        sys.exit(store(sys.argv[2], sys.argv[3]))
    sys.exit(worker(int(sys.argv[2]), sys.argv[3]))

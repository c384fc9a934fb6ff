"""``--workers N``: HTTP publishes read in N worker processes, applied by one.

Three kinds of process (docs/performance.md, "Worker processes"):

- **The supervisor** (``qasino_server --workers N``) binds the HTTP port and
  keeps that socket for its whole life, starts the store process with the
  socket inherited, and starts it again whenever it dies after it had come
  up (a store process that cannot start ends the supervisor with its exit
  code, as ``--workers 0`` would). SIGTERM, SIGINT and SIGHUP are passed on.
- **The store process** is the server as with ``--workers 0`` (store,
  rotation, queries, ZeroMQ, line protocol, HTTPS, web UI) except that it
  accepts nothing on the public HTTP socket: it hands the socket to N
  **workers** (:class:`WorkerPool`, which restarts any that exits) and
  answers what they forward over one Unix socket each.
- **A worker** (``python -m qasino.workers``) accepts HTTP connections on
  the shared socket. ``POST /request`` bodies go, framed, over its Unix
  socket to the store process, which answers them with
  :meth:`RequestResource.post_reply` (the same code, so the same reply
  bytes) once the publish is in the writer generation; the worker writes
  the HTTP reply. Everything else - the web UI, GET, queries (also
  ``op=query`` in a POST, which the store process sends back), chunked
  bodies, ``/metrics`` - is proxied byte for byte to a private loopback
  HTTP port of the store process.

A worker whose Unix socket closes (the store process died) answers every
publish still waiting with 503 and exits; the supervisor's new store
process starts new workers on the same socket, and connections that came
meanwhile wait in its backlog.
"""

from __future__ import annotations

import argparse
import marshal
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.protocol import (
    ClientFactory,
    Factory,
    ProcessProtocol,
    Protocol,
    connectionDone,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from qasino.core.errors import InvalidInput
from qasino.core.model import Publish, publish_fields, publish_from_fields
from qasino.core.render import error_shape
from qasino.core.tables import parse_json_publish
from qasino.frontends.fastpath import HAND_OFF, ApiFastFactory, query_string_args
from qasino.proc import GC_THRESHOLDS, set_parent_death_signal

log = Logger(namespace="qasino.workers")

# Frames on a worker's Unix socket: a 4-byte big-endian length, then the
# frame. A request: seq (4), kind (1), peer length (2), peer, query-string
# length (4), query string, body. Kind RAW: the POST /request as received;
# kind CHECKED: an add_table_data the worker decoded and checked, with an
# empty query string and encode_publish's bytes as the body. A reply: seq
# (4), status-line length (2), status line, body; an empty status line
# means "not a publish: proxy it".
_LEN = struct.Struct("!I")
_REQ = struct.Struct("!IcH")
RAW = b"R"
CHECKED = b"P"
_QLEN = struct.Struct("!I")
_REP = struct.Struct("!IH")
MAX_FRAME = 1 << 31

STORE_GONE = "the server is restarting its store process; publish again"

# A dead child is started again after this many seconds, doubled after each
# quick death (up to RESTART_MAX_S), reset once one stays up RESTART_RESET_S.
RESTART_FIRST_S = 0.25
RESTART_MAX_S = 8.0
RESTART_RESET_S = 30.0


class Backoff:
    """How long to wait before starting a dead child again."""

    def __init__(self) -> None:
        self._next = RESTART_FIRST_S

    def after(self, up_s: float) -> float:
        """The wait after a child that ran ``up_s`` seconds died."""
        if up_s >= RESTART_RESET_S:
            self._next = RESTART_FIRST_S
        delay = self._next
        self._next = min(RESTART_MAX_S, delay * 2)
        return delay


# How long a stopping store process gives its workers before SIGKILL.
WORKER_STOP_S = 10.0


def pack_request(
    seq: int, peer: Optional[str], query: bytes, body: bytes, kind: bytes = RAW
) -> bytes:
    p = (peer or "").encode("utf-8", "replace")[:65535]
    size = _REQ.size + len(p) + _QLEN.size + len(query) + len(body)
    return b"".join(
        (_LEN.pack(size), _REQ.pack(seq, kind, len(p)), p, _QLEN.pack(len(query)), query, body)
    )


def unpack_request(frame: bytes) -> tuple[int, bytes, Optional[str], bytes, bytes]:
    """(seq, kind, peer, query string, body) of a request frame."""
    seq, kind, plen = _REQ.unpack_from(frame)
    at = _REQ.size
    peer = frame[at : at + plen].decode("utf-8", "replace") or None
    at += plen
    (qlen,) = _QLEN.unpack_from(frame, at)
    at += _QLEN.size
    return seq, kind, peer, frame[at : at + qlen], frame[at + qlen :]


def encode_publish(publish: Publish) -> bytes:
    """A checked publish as marshal bytes: the worker sends its table as
    decoded (lists of plain cells), so the store process decodes it with one
    C call and runs no JSON decoding or checks of its own."""
    return marshal.dumps(publish_fields(publish))  # cells are plain JSON values


def decode_publish(data: bytes) -> Publish:
    return publish_from_fields(marshal.loads(data))


def pack_reply(seq: int, status: bytes, body: bytes) -> bytes:
    return b"".join(
        (_LEN.pack(_REP.size + len(status) + len(body)), _REP.pack(seq, len(status)), status, body)
    )


def unpack_reply(frame: bytes) -> tuple[int, bytes, bytes]:
    seq, slen = _REP.unpack_from(frame)
    at = _REP.size
    return seq, frame[at : at + slen], frame[at + slen :]


class FrameReader:
    """Whole frames out of a byte stream."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buffer
        buf += data
        frames: list[bytes] = []
        at = 0
        while len(buf) - at >= _LEN.size:
            (size,) = _LEN.unpack_from(buf, at)
            if size >= MAX_FRAME:
                raise ValueError(f"frame of {size} bytes")
            end = at + _LEN.size + size
            if end > len(buf):
                break
            frames.append(bytes(buf[at + _LEN.size : end]))
            at = end
        if at:
            del buf[:at]
        return frames


# ---------------------------------------------------------------- supervisor


def bind_listener(bind: str, port: int, backlog: int) -> socket.socket:
    """The HTTP listening socket the workers share (inheritable)."""
    infos = socket.getaddrinfo(bind or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    # Non-blocking for every process sharing it (the flag belongs to the
    # open socket): a worker woken for a connection another took must not
    # block in accept.
    sock.setblocking(False)
    return sock


class Supervisor:
    """Runs the store process and starts it again when it dies."""

    def __init__(self, command: Sequence[str], sock: socket.socket) -> None:
        self.command = list(command)
        self.sock = sock
        self.child: Optional[subprocess.Popen[bytes]] = None
        self.stopping = False

    def _say(self, text: str) -> None:
        sys.stderr.write(f"qasino_server: {text}\n")
        sys.stderr.flush()

    def _forward(self, signum: int, frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._forward)
        backoff = Backoff()
        came_up_once = False
        while True:
            ready_r, ready_w = os.pipe()
            command = [
                *self.command,
                "--http-fd",
                str(self.sock.fileno()),
                "--ready-fd",
                str(ready_w),
            ]
            started = time.monotonic()
            self.child = subprocess.Popen(command, pass_fds=(self.sock.fileno(), ready_w))
            os.close(ready_w)
            with os.fdopen(ready_r, "rb") as ready:
                up = ready.read(1) == b"1"
            code = self.child.wait()
            came_up_once = came_up_once or up
            if self.stopping:
                return code if code >= 0 else 0
            if not up and not came_up_once:
                return code if code > 0 else 1  # could not start: as --workers 0 would
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            delay = backoff.after(time.monotonic() - started)
            self._say(
                f"the store process (pid {self.child.pid}) ended ({how}); "
                f"starting it again in {delay:g}s"
            )
            deadline = time.monotonic() + delay
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            if self.stopping:
                return 0


def supervise(argv: Sequence[str], bind: str, port: int, backlog: int) -> int:
    try:
        sock = bind_listener(bind, port, backlog)
    except OSError as e:
        sys.stderr.write(f"qasino_server: cannot start: Couldn't listen on {bind}:{port}: {e}\n")
        return 1
    command = [sys.executable, "-m", "qasino.server_main", *argv]
    return Supervisor(command, sock).run()


# ---------------------------------------------------------------- store process side


class _Framed(Protocol):
    """One end of a worker's Unix socket: bytes in, whole frames out."""

    side = "channel"

    def __init__(self) -> None:
        self.frames = FrameReader()

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self.frames.feed(data)
        except ValueError as e:
            log.error("{side}: {error}; closing it", side=self.side, error=e)
            assert self.transport is not None
            self.transport.loseConnection()
            return
        self.frames_received(frames)

    def frames_received(self, frames: list[bytes]) -> None:
        """The whole frames of one read."""
        for frame in frames:
            self.frame_received(frame)

    def frame_received(self, frame: bytes) -> None:
        raise NotImplementedError


class StoreChannel(_Framed):
    """The store process's end of one worker's Unix socket."""

    side = "worker channel"

    def __init__(self, api: Any) -> None:
        super().__init__()
        self.api = api

    def frames_received(self, frames: list[bytes]) -> None:
        """Checked publishes of one read are applied as a group (one commit,
        replies after it); a raw request between them ends the group, so
        everything is applied in the order the worker sent it."""
        group: list[tuple[int, Publish, Optional[str]]] = []
        for frame in frames:
            seq, kind, peer, query, body = unpack_request(frame)
            if kind != CHECKED:
                self._apply_group(group)
                group = []
                self._raw(seq, peer, query, body)
                continue
            try:
                group.append((seq, decode_publish(body), peer))
            except Exception:
                self._done(Failure(), seq)
        self._apply_group(group)

    def _apply_group(self, group: list[tuple[int, Publish, Optional[str]]]) -> None:
        if not group:
            return
        dispatcher = self.api.dispatcher
        items = [(publish, peer) for _, publish, peer in group]
        d = dispatcher.add_checked_tables(items, self.api.transport)
        d.addBoth(self._group_done, [seq for seq, _, _ in group])

    def _group_done(self, replies: Any, seqs: list[int]) -> None:
        if isinstance(replies, Failure):
            replies = [replies] * len(seqs)
        for seq, reply in zip(seqs, replies):
            self._done(reply, seq)

    def _raw(self, seq: int, peer: Optional[str], query: bytes, body: bytes) -> None:
        try:
            d = self.api.post_reply(query_string_args(query), body, peer)
        except Exception:
            d = fail()
        if isinstance(d, dict):
            self._send(seq, b"", b"")  # op=query: the worker proxies it
            return
        d.addBoth(self._done, seq)

    def _done(self, result: Any, seq: int) -> None:
        status, body = self.api.reply_body(result)
        self._send(seq, status, body)

    def _send(self, seq: int, status: bytes, body: bytes) -> None:
        if self.transport is not None and self.connected:
            self.transport.write(pack_reply(seq, status, body))


class _WorkerProcess(ProcessProtocol):
    """spawnProcess's protocol for one worker: notes when it ends."""

    def __init__(self, pool: WorkerPool, slot: int) -> None:
        self.pool = pool
        self.slot = slot
        self.pid: Optional[int] = None
        self.started_at = time.monotonic()
        self.ended: Deferred[None] = Deferred()

    def signal(self, name: str) -> None:
        if self.transport is not None and not self.ended.called:
            try:
                self.transport.signalProcess(name)
            except Exception:  # already gone (ProcessExitedAlready)
                pass

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.pool._ended(self, reason)


class WorkerPool(Service):
    """N worker processes on the shared HTTP socket ``http_fd``, restarted
    when they exit; their publishes answered by ``api``."""

    name = "workers"

    def __init__(
        self,
        reactor: Any,
        count: int,
        http_fd: int,
        api: Any,
        proxy_port: Any,
        worker_args: Sequence[str],
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.http_fd = http_fd
        self.api = api
        self.proxy_port = proxy_port  # a callable: the private HTTP port
        self.worker_args = list(worker_args)
        self.children: dict[int, _WorkerProcess] = {}  # slot -> the running worker
        self.backoffs: dict[int, Backoff] = {}
        self.stopping = False

    def address(self) -> tuple[str, int]:
        sock = socket.socket(fileno=os.dup(self.http_fd))
        try:
            host, port = sock.getsockname()[:2]
        finally:
            sock.close()
        return str(host), int(port)

    def startService(self) -> None:
        super().startService()
        host, port = self.address()
        log.info(
            "HTTP listening on {bind}:{port} ({n} worker processes)",
            bind=host,
            port=port,
            n=self.count,
        )
        for slot in range(self.count):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        protocol = _WorkerProcess(self, slot)
        command = [
            sys.executable,
            "-m",
            "qasino.workers",
            "--listen-fd",
            "3",
            "--channel-fd",
            "4",
            "--proxy-port",
            str(self.proxy_port()),
            "--slot",
            str(slot),
            *self.worker_args,
        ]
        try:
            proc = self.reactor.spawnProcess(
                protocol,
                sys.executable,
                command,
                env=os.environ.copy(),
                childFDs={0: "w", 1: 1, 2: 2, 3: self.http_fd, 4: theirs.fileno()},
            )
        finally:
            theirs.close()
        channel = StoreChannel(self.api)
        factory = Factory.forProtocol(lambda: channel)
        self.reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, factory)
        ours.close()  # adopted as a copy
        protocol.pid = proc.pid
        self.children[slot] = protocol
        log.info("worker {slot} started (pid {pid})", slot=slot, pid=proc.pid)

    def _ended(self, child: _WorkerProcess, reason: Failure) -> None:
        slot = child.slot
        if self.children.get(slot) is child:
            del self.children[slot]
        if self.stopping:
            return
        backoff = self.backoffs.setdefault(slot, Backoff())
        delay = backoff.after(time.monotonic() - child.started_at)
        log.warn(
            "worker {slot} (pid {pid}) ended ({why}); starting it again in {delay}s",
            slot=slot,
            pid=child.pid,
            why=reason.getErrorMessage(),
            delay=delay,
        )
        self.reactor.callLater(delay, self._respawn, slot)

    def _respawn(self, slot: int) -> None:
        if not self.stopping and slot not in self.children:
            self._spawn(slot)

    def reload(self) -> None:
        """SIGHUP: the workers reopen their log file (after logrotate)."""
        for child in list(self.children.values()):
            child.signal("HUP")

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self.stopping = True
        waits = []
        for child in list(self.children.values()):
            child.signal("TERM")
            waits.append(child.ended)
            # One that does not stop in time is killed.
            self.reactor.callLater(WORKER_STOP_S, child.signal, "KILL")
        return DeferredList(waits)


# ---------------------------------------------------------------- worker side


class StoreLink(_Framed):
    """A worker's end of its Unix socket: forwards publishes, matches replies."""

    side = "store channel"

    def __init__(self, on_lost: Any) -> None:
        super().__init__()
        self.pending: dict[int, Deferred[Any]] = {}
        self.seq = 0
        self.on_lost = on_lost
        self.gone = False

    def forward(
        self, query: bytes, body: bytes, peer: Optional[str], kind: bytes = RAW
    ) -> Deferred[Any]:
        if self.gone or self.transport is None:
            return fail(ConnectionError(STORE_GONE))
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        d: Deferred[Any] = Deferred()
        self.pending[self.seq] = d
        self.transport.write(pack_request(self.seq, peer, query, body, kind))
        return d

    def frame_received(self, frame: bytes) -> None:
        seq, status, body = unpack_reply(frame)
        d = self.pending.pop(seq, None)
        if d is not None:
            d.callback(HAND_OFF if not status else (status, body))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone = True
        pending, self.pending = self.pending, {}
        for d in pending.values():
            d.errback(ConnectionError(STORE_GONE))
        self.on_lost()


class _Back(Protocol):
    """The proxy's connection to the store process's private HTTP port."""

    def __init__(self, front: StoreProxy) -> None:
        self.front = front

    def connectionMade(self) -> None:
        self.front.back_ready(self)

    def dataReceived(self, data: bytes) -> None:
        self.front.from_back(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.front.back_lost()


class _BackFactory(ClientFactory):
    noisy = False

    def __init__(self, front: StoreProxy) -> None:
        self.front = front

    def buildProtocol(self, addr: Any) -> _Back:
        return _Back(self.front)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.front.back_failed(reason)


class StoreProxy(Protocol):
    """A client connection handed off by the worker's lean path: every byte
    proxied to the store process's private HTTP port, both ways."""

    def __init__(self, reactor: Any, port: int) -> None:
        self.reactor = reactor
        self.port = port
        self.back: Optional[_Back] = None
        self.early: list[bytes] = []
        self.closed = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.pauseProducing()  # type: ignore[attr-defined]
        self.reactor.connectTCP("127.0.0.1", self.port, _BackFactory(self), timeout=10)

    def back_ready(self, back: _Back) -> None:
        if self.closed:
            assert back.transport is not None
            back.transport.loseConnection()
            return
        self.back = back
        assert back.transport is not None and self.transport is not None
        if self.early:
            back.transport.write(b"".join(self.early))
            self.early = []
        # Each side stops reading while the other cannot take more.
        back.transport.registerProducer(self.transport, True)  # type: ignore[attr-defined]
        self.transport.registerProducer(back.transport, True)  # type: ignore[attr-defined]
        self.transport.resumeProducing()  # type: ignore[attr-defined]

    def back_failed(self, reason: Failure) -> None:
        log.error("cannot reach the store process's HTTP port: {why}", why=reason.getErrorMessage())
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.back is not None and self.back.transport is not None:
            self.back.transport.write(data)
        else:
            self.early.append(data)

    def from_back(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def back_lost(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        if self.back is not None and self.back.transport is not None:
            self.back.transport.loseConnection()


class ProxySite:
    """Stands in for twisted.web's site in a worker's :class:`ApiFastFactory`:
    what the lean path does not answer is proxied."""

    timeOut = 60  # twisted.web's idle timeout

    def __init__(self, reactor: Any, port: int) -> None:
        self.reactor = reactor
        self.port = port

    def buildProtocol(self, addr: Any) -> StoreProxy:
        return StoreProxy(self.reactor, self.port)

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass


class WorkerFastFactory(ApiFastFactory):
    """A worker's lean path: publishes answered by the store process."""

    def answer(self, query: bytes, body: bytes, peer: Optional[str]) -> Any:
        api = self.api
        checked = api.checked(query, body)
        if checked is not None:
            return api.link.forward(b"", checked, peer, CHECKED)
        return api.link.forward(query, body, peer)


class ForwardingApi:
    """The lean path's ``api`` in a worker: publishes answered by the store
    process over ``link``. With ``limits`` (the store's ``--max-table-*``
    and ``--max-cell-bytes``), a valid ``add_table_data`` is decoded and
    checked here and sent as a compact table; anything else (other ops,
    CSV, and every request that fails a check, whose error reply the store
    process writes as ever) goes as received."""

    def __init__(self, link: StoreLink, limits: Optional[dict[str, int]] = None) -> None:
        from qasino.frontends.http import JSON_TYPE

        self.link = link
        self.reply_type = JSON_TYPE
        self.limits = limits

    def checked(self, query: bytes, body: bytes) -> Optional[bytes]:
        """encode_publish of a valid add_table_data request, else None."""
        if self.limits is None:
            return None
        from qasino.ops import merge_request

        args = query_string_args(query)
        if args.get("op") == "add_csv_table_data":
            return None
        try:
            request, plain_bytes = merge_request(args, body)
            if not isinstance(request, dict) or request.get("op") != "add_table_data":
                return None
            publish = parse_json_publish(request, **self.limits, decoded_from_bytes=plain_bytes)
            return encode_publish(publish)
        except (InvalidInput, ValueError, UnicodeDecodeError):
            return None  # the store process answers it, as without workers
        except Exception:
            log.failure("checking a publish in a worker failed; sending it as received")
            return None

    def reply_body(self, result: Any) -> tuple[bytes, bytes]:
        if isinstance(result, tuple):
            return result
        if isinstance(result, Failure) and result.check(ConnectionError):
            message = str(result.value) or STORE_GONE
            status = b"503 Service Unavailable"
        else:
            log.failure("forwarding a publish failed", result)
            message, status = "Internal error", b"500 Internal Server Error"
        from qasino.ops import encode_json

        return status, encode_json(error_shape(message, ""))


def worker_main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="qasino-worker", description="one qasino_server HTTP worker")
    p.add_argument("--listen-fd", type=int, required=True)
    p.add_argument("--channel-fd", type=int, required=True)
    p.add_argument("--proxy-port", type=int, required=True)
    p.add_argument("--slot", type=int, default=0)
    p.add_argument("--max-body-bytes", type=int, required=True)
    p.add_argument("--max-connections", type=int, default=0)
    # The store's table limits: with them, the worker checks publishes.
    p.add_argument("--max-table-rows", type=int, default=None)
    p.add_argument("--max-table-columns", type=int, default=None)
    p.add_argument("--max-cell-bytes", type=int, default=None)
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", default="text")
    p.add_argument("--log-file", default=None)
    args = p.parse_args(argv)
    set_parent_death_signal()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the handler below is in place

    import gc

    from qasino.logs import start_logging

    log_file = start_logging(args.log_level, args.log_format, args.log_file)

    gc.set_threshold(*GC_THRESHOLDS)

    from twisted.internet import reactor

    r: Any = reactor
    if log_file is not None:  # before the port: "starting on" means it is in place
        reopen = log_file.reopen
        signal.signal(signal.SIGHUP, lambda signum, frame: r.callFromThread(reopen))

    def lost() -> None:
        if r.running:
            log.warn("worker {slot}: the store process is gone; exiting", slot=args.slot)
            r.stop()

    limits = None
    if None not in (args.max_table_rows, args.max_table_columns, args.max_cell_bytes):
        limits = {
            "max_rows": args.max_table_rows,
            "max_columns": args.max_table_columns,
            "max_cell_bytes": args.max_cell_bytes,
        }
    link = StoreLink(lost)
    r.adoptStreamConnection(args.channel_fd, socket.AF_UNIX, Factory.forProtocol(lambda: link))
    os.close(args.channel_fd)
    listen = socket.socket(fileno=os.dup(args.listen_fd))
    family = listen.family
    listen.setblocking(False)
    listen.close()
    factory: Any = WorkerFastFactory(
        ProxySite(r, args.proxy_port),  # type: ignore[arg-type]
        ForwardingApi(link, limits),
        args.max_body_bytes,
    )
    if args.max_connections:
        from qasino.service import ConnectionLimitFactory

        factory = ConnectionLimitFactory(factory, args.max_connections, f"HTTP worker {args.slot}")
    r.adoptStreamPort(args.listen_fd, family, factory)
    os.close(args.listen_fd)
    log.info("worker {slot} (pid {pid}) serving HTTP", slot=args.slot, pid=os.getpid())
    gc.freeze()
    r.run()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())

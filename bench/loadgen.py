"""Publishers: the load generator, run in a worker process.

One process drives N concurrent publishers over HTTP (keep-alive
connections, one request in flight each) or ZeroMQ (DEALER sockets with a
window of requests in flight each). Publish ``n`` of publisher ``c`` comes
from host ``c + N * (n // T)`` and carries table ``n % T`` of the plan's T
tables, so every (identity, table) pair is published once and identities
and tables are shared the way a fleet shares them.

Sending stops at the plan's deadline (or when its hosts are used up, or
its count is reached); what is in flight is then drained, bounded by
``drain_s``. The result says what was acknowledged, per table, and when.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional

import zmq

from bench.workload import BodyTemplate, publish_template

OK_MARK = b'"response_op":"ok"'
HTTP_PATH = "/request?op=add_table_data"
# Connections are opened in small batches: a burst of more SYNs than the
# listen backlog (Twisted's default is 50) can cost a 1 s SYN retransmit.
CONNECT_BATCH = 32
CONNECT_PAUSE_S = 0.005
HANDSHAKE_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class LoadPlan:
    transport: str  # "http" or "zmq"
    port: int
    publishers: int
    rows: int
    tables: tuple[str, ...]
    identity_prefix: str
    hosts: int  # identities available to the plan (bounds the count)
    duration_s: float  # no new publish after this
    window: int = 1  # requests in flight per publisher (ZeroMQ only)
    rate: float = 0.0  # publishes per second in total; 0 = as fast as acks come
    max_publishes: int = 0  # 0 = no bound but hosts and duration
    drain_s: float = 30.0
    host: str = "127.0.0.1"
    record_acks: bool = False
    http_path: str = HTTP_PATH


@dataclass
class LoadResult:
    sent: int = 0
    acked: int = 0
    errors: int = 0
    timed_out: int = 0
    started: float = 0.0  # time.monotonic(), comparable across processes
    finished: float = 0.0  # the last reply
    cpu_s: float = 0.0  # the generator's own CPU time while it ran
    acked_per_table: Counter[str] = field(default_factory=Counter)
    ack_times: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    record_acks: bool = False

    @property
    def elapsed_s(self) -> float:
        return max(self.finished - self.started, 1e-9)

    @property
    def cpu_share(self) -> float:
        """How busy the generator was (1.0 = one core): near 1, it was the limit."""
        return self.cpu_s / self.elapsed_s

    def note_error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(text[:300])


class Schedule:
    """Hands out the next publish of each publisher, within the plan's bounds."""

    def __init__(self, plan: LoadPlan, template: BodyTemplate) -> None:
        self.plan = plan
        self.template = template
        self.counts = [0] * plan.publishers
        self.issued = 0
        self.t0 = time.monotonic()
        self.deadline = self.t0 + plan.duration_s

    def paced(self, now: float) -> bool:
        """True while the next publish must wait for its rate slot."""
        return bool(self.plan.rate) and now < self.t0 + self.issued / self.plan.rate

    def next_body(self, publisher: int, now: float) -> Optional[tuple[str, bytes]]:
        """(tablename, body) of the publisher's next publish; None once it is done."""
        plan = self.plan
        if now >= self.deadline or (plan.max_publishes and self.issued >= plan.max_publishes):
            return None
        n = self.counts[publisher]
        ntables = len(plan.tables)
        host = publisher + plan.publishers * (n // ntables)
        if host >= plan.hosts:
            return None
        tablename = plan.tables[n % ntables]
        self.counts[publisher] = n + 1
        self.issued += 1
        return tablename, self.template.body(f"{plan.identity_prefix}{host}", tablename)

    def wait_hint(self, now: float) -> float:
        """Seconds until the next rate slot opens, at most 50 ms."""
        if not self.plan.rate:
            return 0.05
        return max(0.0005, min(0.05, self.t0 + self.issued / self.plan.rate - now))


def wait_until(start_at: float) -> None:
    delay = start_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)


Reply = tuple[int, str, bool, bytes]  # publisher, tablename, ok, body


class Publishers:
    """The send loop shared by both transports: every publisher has
    ``window`` slots; a slot is refilled when its reply comes in."""

    window = 1

    def __init__(self, plan: LoadPlan) -> None:
        self.plan = plan
        self.result = LoadResult(record_acks=plan.record_acks)

    def connect(self) -> None:
        raise NotImplementedError

    def send(self, publisher: int, tablename: str, body: bytes) -> None:
        raise NotImplementedError

    def replies(self, timeout_s: float) -> Iterator[Reply]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def run(self, schedule: Schedule) -> LoadResult:
        cpu = time.process_time()
        try:
            return self.loop(schedule)
        finally:
            self.result.cpu_s = time.process_time() - cpu

    def loop(self, schedule: Schedule) -> LoadResult:
        result = self.result
        result.started = schedule.t0
        ready = deque(p for p in range(self.plan.publishers) for _ in range(self.window))
        inflight = 0
        hard_stop = schedule.deadline + self.plan.drain_s
        while True:
            now = time.monotonic()
            while ready and not schedule.paced(now):
                publisher = ready.popleft()
                nxt = schedule.next_body(publisher, now)
                if nxt is not None:
                    self.send(publisher, *nxt)
                    result.sent += 1
                    inflight += 1
            if not inflight and not ready:
                return result
            if now >= hard_stop:
                result.timed_out += inflight
                return result
            for publisher, tablename, ok, body in self.replies(schedule.wait_hint(now)):
                inflight -= 1
                record_reply(result, tablename, ok, body)
                if publisher >= 0:
                    ready.append(publisher)


def record_reply(result: LoadResult, tablename: str, ok: bool, body: bytes) -> None:
    now = time.monotonic()
    result.finished = now
    if ok:
        result.acked += 1
        result.acked_per_table[tablename] += 1
        if result.record_acks:
            result.ack_times.append(now)
    else:
        result.note_error(body.decode("utf-8", "replace"))


def run_load(plan: LoadPlan, start_at: float = 0.0) -> LoadResult:
    """Entry point for a worker process: connect, wait for ``start_at``
    (a ``time.monotonic()`` instant), run the plan, return what happened."""
    template = publish_template(plan.rows)
    kinds: dict[str, type[Publishers]] = {"http": HttpPublishers, "zmq": ZmqPublishers}
    publishers = kinds[plan.transport](plan)
    try:
        publishers.connect()
        wait_until(start_at)
        return publishers.run(Schedule(plan, template))
    finally:
        publishers.close()


# --------------------------------------------------------------------- HTTP


def split_reply(buf: bytearray) -> Optional[tuple[int, bytes]]:
    """Take one complete HTTP/1.1 reply (with Content-Length) off ``buf``."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).split(b"\r\n")
    status = int(head[0].split(b" ", 2)[1])
    length = 0
    for line in head[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    total = end + 4 + length
    if len(buf) < total:
        return None
    body = bytes(buf[end + 4 : total])
    del buf[:total]
    return status, body


class HttpConnection:
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, index: int, address: tuple[str, int]) -> None:
        self.index = index
        self.sock = socket.create_connection(address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.out = memoryview(b"")
        self.inbuf = bytearray()
        self.tablename = ""

    def flush(self) -> bool:
        """Send what the socket takes; True once everything is sent."""
        while self.out:
            try:
                sent = self.sock.send(self.out)
            except BlockingIOError:
                return False
            self.out = self.out[sent:]
        return True

    def read_reply(self) -> Optional[tuple[int, bytes]]:
        """(status, body) once a whole reply is in. Raises ConnectionError
        when the server closed the connection."""
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                raise ConnectionError("connection closed by the server")
            self.inbuf += chunk
        return split_reply(self.inbuf)


class HttpPublishers(Publishers):
    def __init__(self, plan: LoadPlan) -> None:
        super().__init__(plan)
        self.selector = selectors.DefaultSelector()
        self.conns: list[HttpConnection] = []
        self.head = (
            f"POST {plan.http_path} HTTP/1.1\r\nHost: {plan.host}:{plan.port}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()

    def connect(self) -> None:
        for i in range(self.plan.publishers):
            conn = HttpConnection(i, (self.plan.host, self.plan.port))
            self.conns.append(conn)
            self.selector.register(conn.sock, selectors.EVENT_READ, conn)
            if i % CONNECT_BATCH == CONNECT_BATCH - 1:
                time.sleep(CONNECT_PAUSE_S)

    def send(self, publisher: int, tablename: str, body: bytes) -> None:
        conn = self.conns[publisher]
        conn.tablename = tablename
        conn.out = memoryview(b"".join((self.head, str(len(body)).encode(), b"\r\n\r\n", body)))
        if not conn.flush():
            self.selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)

    def replies(self, timeout_s: float) -> Iterator[Reply]:
        for key, events in self.selector.select(timeout_s):
            conn: HttpConnection = key.data
            if events & selectors.EVENT_WRITE and conn.flush():
                self.selector.modify(conn.sock, selectors.EVENT_READ, conn)
            if not events & selectors.EVENT_READ:
                continue
            try:
                reply = conn.read_reply()
            except OSError as e:  # ConnectionError included: drop this publisher
                self.selector.unregister(conn.sock)
                yield -1, conn.tablename, False, f"publisher {conn.index}: {e}".encode()
                continue
            if reply is not None:
                status, body = reply
                yield conn.index, conn.tablename, status == 200 and OK_MARK in body, body

    def close(self) -> None:
        for conn in self.conns:
            conn.sock.close()
        self.selector.close()


# ------------------------------------------------------------------- ZeroMQ


class ZmqPublishers(Publishers):
    """DEALER sockets speaking the server's REQ envelope: [id, b"", body]."""

    PING = b'{"op":"get_table_list"}'

    def __init__(self, plan: LoadPlan) -> None:
        super().__init__(plan)
        self.window = max(1, plan.window)
        self.context = zmq.Context()
        self.sockets: list[zmq.Socket] = []
        self.index_of: dict[zmq.Socket, int] = {}
        self.inflight: dict[bytes, str] = {}
        self.poller = zmq.Poller()
        self.next_id = 0

    def connect(self) -> None:
        """Connect every socket, then one round trip each, so the clock
        starts with every connection up."""
        address = f"tcp://{self.plan.host}:{self.plan.port}"
        for i in range(self.plan.publishers):
            sock = self.context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(address)
            self.index_of[sock] = i
            self.sockets.append(sock)
            self.poller.register(sock, zmq.POLLIN)
            self.send(i, "", self.PING)
            if i % CONNECT_BATCH == CONNECT_BATCH - 1:
                time.sleep(CONNECT_PAUSE_S)
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
        while self.inflight and time.monotonic() < deadline:
            for _ in self.replies(0.05):
                pass
        if self.inflight:
            raise ConnectionError(f"{len(self.inflight)} ZeroMQ publishers got no reply")

    def send(self, publisher: int, tablename: str, body: bytes) -> None:
        self.next_id += 1
        msg_id = self.next_id.to_bytes(8, "big")
        self.inflight[msg_id] = tablename
        self.sockets[publisher].send_multipart([msg_id, b"", body], copy=False)

    def replies(self, timeout_s: float) -> Iterator[Reply]:
        for sock, _ in self.poller.poll(max(1, int(timeout_s * 1000))):
            index = self.index_of[sock]
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                tablename = self.inflight.pop(frames[0], None)
                if tablename is not None:
                    body = frames[2] if len(frames) > 2 else b""
                    yield index, tablename, OK_MARK in body, body

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
        self.context.term()

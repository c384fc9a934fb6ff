"""The NATS client (nats-py, asyncio) on its own thread and event loop.

Why a thread and not Twisted's asyncio reactor: the server's reactor is the
platform default (epoll), which txzmq and every existing test run on;
switching the whole daemon to the asyncio reactor only for --nats would
change the hot path of every front end. The NATS side needs little: publish
and wait for JetStream's ack, fetch batches of messages. Both cross threads
once per call or per batch (``callFromThread`` one way,
``run_coroutine_threadsafe`` the other), which is cheap next to applying a
batch (docs/scaling.md has the figures).

Everything here runs on the NATS thread except the methods that say they
are called from the reactor thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Optional, TypeVar

import nats
from nats.js import api
from nats.js.errors import NotFoundError
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from qasino.nats.messages import (
    KEEP_STREAM,
    KEEP_SUBJECTS,
    PUBLISH_SUBJECTS,
    TICK_SUBJECT,
    StreamMessage,
    parse_ack_reply,
)
from qasino.nats.publishing import publish_acked

log = Logger(namespace="qasino.nats")

T = TypeVar("T")

CONNECT_TIMEOUT_S = 2.0
RECONNECT_WAIT_S = 0.5
ACK_TIMEOUT_S = 5.0
# A consumer nobody fetched from for this long is removed by JetStream.
CONSUMER_IDLE_S = 600.0
# How a pull request's status arrives (nats-py's parsed header), and the
# one that is only an idle heartbeat.
STATUS_HEADER = api.Header.STATUS.value
HEARTBEAT_STATUS = "100"
# A lingering pull request is waited for this much past its expiry.
EXPIRES_GRACE_S = 0.2


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less if ``stop`` is set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


class PullReader:
    """Reads a pull consumer through one callback subscription.

    nats-py's ``PullSubscription.fetch`` waits for every message after the
    first with ``Subscription.next_msg``, which makes a ``uuid4`` name, an
    asyncio task and a ``wait_for`` timer per message: half of the NATS
    thread's time in a catch-up (docs/scaling.md). Here each pull request
    gets its own reply subject under one wildcard subscription, and the
    callback only collects. A fetch first asks with ``no_wait`` (what is
    there now, up to the batch, ended by a 404 status when short); when
    nothing was there it asks again with ``expires`` and returns at the
    first message. Messages of a request that arrive after its fetch
    returned are kept for the next fetch, in order. Only the status of the
    fetch's own request ends it: one left over from an earlier request
    must not make a fetch come back empty while messages are waiting.
    """

    def __init__(self, nc: Any, stream: str, consumer: str) -> None:
        self.nc = nc
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.inbox = nc.new_inbox()
        self.sub: Any = None
        self.buffer: list[Any] = []
        self.request = 0  # the number of the last request made
        self.want = 0  # messages that end the wait for it
        self.answered: Optional[asyncio.Future[None]] = None

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(self.inbox + ".*", cb=self._received)

    async def close(self) -> None:
        if self.sub is not None:
            sub, self.sub = self.sub, None
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection may be gone
                pass

    async def _received(self, msg: Any) -> None:
        headers = msg.headers
        status = headers.get(STATUS_HEADER) if headers and not msg.data else None
        if status is None:
            self.buffer.append(msg)
            if len(self.buffer) >= self.want:
                self._wake()
        elif status != HEARTBEAT_STATUS and msg.subject == f"{self.inbox}.{self.request}":
            self._wake()  # 404 no messages, 408 expired, 409: that request is over

    def _wake(self) -> None:
        if self.answered is not None and not self.answered.done():
            self.answered.set_result(None)

    async def _ask(self, batch: int, want: int, expires_s: Optional[float]) -> None:
        self.request += 1
        self.want = want
        self.answered = asyncio.get_running_loop().create_future()
        body: dict[str, Any] = {"batch": batch}
        if expires_s is None:
            body["no_wait"] = True
        else:
            body["expires"] = int(expires_s * 1e9)
        await self.nc.publish(
            self.next_subject, json.dumps(body).encode(), reply=f"{self.inbox}.{self.request}"
        )

    async def _wait(self, timeout: float) -> None:
        assert self.answered is not None
        try:
            await asyncio.wait_for(asyncio.shield(self.answered), timeout)
        except asyncio.TimeoutError:
            pass

    async def fetch(self, batch: int, timeout: float) -> list[Any]:
        """Up to ``batch`` messages, in stream order; [] after ``timeout``."""
        if not self.buffer:
            await self._ask(batch, batch, None)
            await self._wait(timeout)
        if not self.buffer:
            await self._ask(batch, 1, timeout)
            await self._wait(timeout + EXPIRES_GRACE_S)
        out, self.buffer = self.buffer[:batch], self.buffer[batch:]
        return out


class NatsBridge:
    """One NATS connection on a private asyncio loop; Deferreds out."""

    def __init__(
        self,
        reactor: Any,
        servers: list[str],
        name: str,
        own_loop: bool = True,
        consumers_made: int = 0,
    ) -> None:
        """``own_loop`` False: used from a running asyncio loop (the reader
        process), without a thread; ``reactor`` then only needs a
        ``callFromThread`` that calls at once. ``consumers_made``: how many
        consumers earlier readers of this server made (names go on from
        there)."""
        self.reactor = reactor
        self.servers = servers
        self.name = name
        self.loop = asyncio.new_event_loop() if own_loop else asyncio.get_running_loop()
        self.thread = threading.Thread(target=self._run, name="qasino-nats", daemon=True)
        self.nc: Any = None
        self.js: Any = None
        self._consumers = consumers_made  # consumers made so far this run
        self._consumer_name: Optional[str] = None
        self._reader: Optional[PullReader] = None
        # Set on the reactor thread through callFromThread.
        self.on_state: Callable[[bool, str], None] = lambda up, why: None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    # ------------------------------------------------------------ reactor side

    def start(self) -> None:
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Deferred[T]:
        """Run ``coro`` on the NATS loop; a Deferred that fires on the reactor."""
        d: Deferred[T] = Deferred()
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)

        def done(f: concurrent.futures.Future[T]) -> None:
            try:
                result = f.result()
            except BaseException as e:  # noqa: BLE001 - handed to the Deferred
                self.reactor.callFromThread(d.errback, Failure(e))
            else:
                self.reactor.callFromThread(d.callback, result)

        future.add_done_callback(done)
        return d

    def stop(self, timeout: float = 5.0) -> None:
        """Close the connection and end the thread (blocks up to ``timeout``)."""
        if not self.thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._close(), self.loop)
        try:
            future.result(timeout)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)

    # ------------------------------------------------------------ NATS side

    def _state(self, up: bool, why: str) -> None:
        self.reactor.callFromThread(self.on_state, up, why)

    async def connect(self, stop: asyncio.Event) -> bool:
        """Connect, retrying until connected or ``stop``; True when connected."""

        async def disconnected() -> None:
            self._state(False, "disconnected from NATS")

        async def reconnected() -> None:
            url = getattr(self.nc, "connected_url", None)
            self._state(True, f"reconnected to NATS at {url.netloc if url else '?'}")

        last_error: list[str] = []

        async def error(e: Exception) -> None:
            last_error[:] = [str(e) or type(e).__name__]
            log.debug("NATS client error: {error}", error=e)

        # With max_reconnect_attempts=-1 nats-py keeps trying the servers
        # until one answers; say so after a few seconds, then keep waiting.
        task = asyncio.ensure_future(
            nats.connect(
                servers=self.servers,
                name=self.name,
                connect_timeout=CONNECT_TIMEOUT_S,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=RECONNECT_WAIT_S,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
            )
        )
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait(
            {task, stopping}, timeout=CONNECT_TIMEOUT_S + 1, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            why = last_error[0] if last_error else "no answer"
            self._state(False, f"cannot reach NATS at {','.join(self.servers)}: {why}; retrying")
            done, _ = await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            return False
        stopping.cancel()
        try:
            self.nc = task.result()
        except Exception as e:  # noqa: BLE001 - reported; the server serves on
            self._state(False, f"cannot connect to NATS: {e!r}")
            return False
        self.js = self.nc.jetstream()
        url = self.nc.connected_url
        self._state(True, f"connected to NATS at {url.netloc if url else '?'}")
        return True

    async def ensure_stream(self, stream: str, replicas: int, max_age_s: float) -> None:
        """Create the stream if missing (an existing one is used as it is)."""
        try:
            await self.js.stream_info(stream)
            return
        except NotFoundError:
            pass
        config = api.StreamConfig(
            name=stream,
            subjects=[PUBLISH_SUBJECTS, TICK_SUBJECT],
            num_replicas=replicas,
            max_age=max_age_s,
            storage=api.StorageType.FILE,
            duplicate_window=min(120.0, max_age_s),
        )
        await self.js.add_stream(config)
        log.info(
            "created stream {stream} ({replicas} replicas, messages kept {age:g}s)",
            stream=stream,
            replicas=replicas,
            age=max_age_s,
        )

    async def ensure_keep_stream(self, replicas: int) -> None:
        """The stream of the last static/persist publish per identity and table."""
        try:
            await self.js.stream_info(KEEP_STREAM)
            return
        except NotFoundError:
            pass
        config = api.StreamConfig(
            name=KEEP_STREAM,
            subjects=[KEEP_SUBJECTS],
            num_replicas=replicas,
            max_msgs_per_subject=1,
            storage=api.StorageType.FILE,
            duplicate_window=120.0,
        )
        await self.js.add_stream(config)
        log.info(
            "created stream {stream} ({replicas} replicas)", stream=KEEP_STREAM, replicas=replicas
        )

    async def first_seq(self, stream: str) -> int:
        info = await self.js.stream_info(stream)
        return int(info.state.first_seq)

    async def read_all(self, stream: str) -> list[StreamMessage]:
        """Every message a stream holds now, in order (an ephemeral consumer)."""
        info = await self.js.stream_info(stream)
        if not info.state.messages:
            return []
        last = int(info.state.last_seq)
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=30.0,
            num_replicas=1,
        )
        consumer = await self.js.add_consumer(stream, config)
        reader = PullReader(self.nc, stream, consumer.name)
        await reader.start()
        out: list[StreamMessage] = []
        try:
            while not out or out[-1].seq < last:
                batch = await self.fetch(reader, 1000, 2.0)
                if not batch:
                    break
                out.extend(batch)
        finally:
            await reader.close()
            try:
                await self.js.delete_consumer(stream, consumer.name)
            except Exception:  # noqa: BLE001 - it expires by itself
                pass
        return out

    async def consumer(self, stream: str, durable: str, start_seq: Optional[int]) -> Any:
        """Make this server's durable consumer afresh, from ``start_seq`` (or
        the start of the stream), and bind a pull subscription to it.

        The first one of a run is named ``durable``; each one made again
        (its node died, a sequence gap) gets a new name, ``durable-N``, so
        that nothing waits for the old one, which may sit on a dead node:
        deleting it is tried briefly, and an abandoned one is removed by
        JetStream after ``inactive_threshold``."""
        name = durable if self._consumers == 0 else f"{durable}-{self._consumers}"
        if self._consumer_name is not None:
            try:
                await asyncio.wait_for(self.js.delete_consumer(stream, self._consumer_name), 2.0)
            except Exception:  # noqa: BLE001 - it expires by itself
                pass
        self._consumers += 1
        try:
            await asyncio.wait_for(self.js.delete_consumer(stream, name), 2.0)
        except Exception:  # noqa: BLE001 - absent, or on a dead node
            pass
        if start_seq is None:
            policy, opt_seq = api.DeliverPolicy.ALL, None
        else:
            policy, opt_seq = api.DeliverPolicy.BY_START_SEQUENCE, start_seq
        config = api.ConsumerConfig(
            durable_name=name,
            deliver_policy=policy,
            opt_start_seq=opt_seq,
            ack_policy=api.AckPolicy.NONE,
            max_waiting=16,
            # One replica: no quorum to wait for while a node is down; a
            # consumer lost with its node is made again (from the next
            # sequence) by the caller.
            num_replicas=1,
            inactive_threshold=CONSUMER_IDLE_S,
        )
        self._consumer_name = name
        await self.js.add_consumer(stream, config)
        if self._reader is not None:
            await self._reader.close()
        self._reader = PullReader(self.nc, stream, name)
        await self._reader.start()
        return self._reader

    async def fetch(self, reader: PullReader, batch: int, timeout: float) -> list[StreamMessage]:
        msgs = await reader.fetch(batch, timeout)
        out = []
        for m in msgs:
            parsed = parse_ack_reply(m.reply or "")
            if parsed is None:
                md = m.metadata
                seq, ts_ns = md.sequence.stream, int(md.timestamp.timestamp() * 1e9)
                pending = md.num_pending
            else:
                seq, ts_ns, pending = parsed
            out.append(StreamMessage(m.subject, m.data, m.headers, seq, ts_ns, pending))
        return out

    async def publish(
        self, subject: str, data: bytes, headers: Optional[dict[str, str]] = None
    ) -> Any:
        """Publish into the stream; returns JetStream's ack (raises without one)."""
        if self.js is None:
            raise ConnectionError("not connected to NATS")
        return await publish_acked(self.js, subject, data, headers, ACK_TIMEOUT_S)

    async def publish_plain(self, subject: str, data: bytes) -> None:
        """Core NATS publish (not stored): the generation signal."""
        if self.nc is not None and self.nc.is_connected:
            await self.nc.publish(subject, data)

    async def _close(self) -> None:
        if self.nc is not None:
            try:
                await self.nc.close()
            except Exception:  # noqa: BLE001 - closing anyway
                pass

    def wrap(self, fn: Callable[..., Awaitable[T]], *args: Any) -> Deferred[T]:
        async def run() -> T:
            return await fn(*args)

        return self.submit(run())

"""``--nats``: publishes go into the QASINO stream; snapshots are built from it.

:class:`NatsService` is one service under the server's MultiService:

- a *forwarder* for the dispatcher: a checked HTTP/ZeroMQ publish is put
  into the stream and answered ``ok`` only after JetStream's ack;
- a *consumer*: this server's durable pull consumer reads every message of
  the stream in order, in batches; each batch is applied on the reactor
  thread through the engine, with the message's stream timestamp as its
  time, and the generations are cut by stream time
  (:mod:`qasino.core.stream_time`), so every server on the stream builds
  the same snapshots with the same generation numbers;
- *ticks*: a tiny message about once a second (one per second across all
  servers, by de-duplication), so that generations are cut while idle;
- the generation signal, also on ``qasino.gensig``.

On start the consumer is made afresh from the beginning of the stream: a
server restarted (even with an empty --db-dir) replays what the stream
still holds and so rebuilds the current generation.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import deque
from collections.abc import Iterator
from typing import Any, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from qasino.core.errors import InvalidInput, PublishRejected, QasinoError
from qasino.core.model import Publish
from qasino.core.stream_time import StreamTimeline, check_duration
from qasino.engine import Engine, publish_cells
from qasino.nats.bridge import NatsBridge, sleep_unless_stopped
from qasino.nats.messages import (
    CSV_TYPE,
    GENSIG_SUBJECT,
    IDENTITY_HEADER,
    KEEP_STREAM,
    STREAM,
    TICK_SUBJECT,
    NameValue,
    StreamMessage,
    decode,
    keep_subject,
    kept_copy_headers,
    original_of,
    subject_for,
)
from qasino.nats.reader import load_frame, messages_of
from qasino.ops import Dispatcher, encode_json
from qasino.store.store import SnapshotInfo
from qasino.workers import Backoff, FrameReader

log = Logger(namespace="qasino.nats")

DEFAULT_RETENTION_GENERATIONS = 10
MIN_MAX_AGE_S = 60.0
# Messages younger than this (by the server's clock) are copied to
# QASINO_KEEP when static/persist; older ones were copied when they were
# new (copies are de-duplicated by JetStream for two minutes).
KEEP_LIVE_S = 60.0
CAUGHT_UP_S = 2.0
# A batch is written in transactions of at most this many cells, each on
# the reactor thread (the engine's inline bound): with the decoding in the
# reader process, a writer thread would only fight the reactor for the GIL
# (executemany lets go of it around every row; docs/scaling.md).
APPLY_CHUNK_CELLS = 10_000
# Entries of a reader frame turned into tables per reactor turn.
FEED_ENTRIES = 250
# Consumer names a reader process may use before the next one's (durable-N).
READER_CONSUMERS = 1000
# How long a stopping server waits for its reader process before SIGKILL.
READER_STOP_S = 5.0


def consumer_name(identity: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in identity)
    return "qasino_" + (safe or "server")


class ReaderProcess(ProcessProtocol):
    """The reader process (:mod:`qasino.nats.reader`) as the server sees
    it: batch frames on its stdout, log lines on its stderr, one byte on
    its stdin per batch applied."""

    def __init__(self, service: NatsService) -> None:
        self.service = service
        self.frames = FrameReader()
        self.partial = b""
        self.started_at = float(service.reactor.seconds())
        self.pid: Optional[int] = None
        self.ended: Deferred[None] = Deferred()
        self.dropped = False  # killed for garbage: what else it sent is ignored
        self._kill: Optional[Any] = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid

    def outReceived(self, data: bytes) -> None:
        if self.dropped:
            return
        try:
            frames = self.frames.feed(data)
        except ValueError as e:
            log.error("NATS reader process sent garbage ({error}); stopping it", error=e)
            self.drop()
            return
        for frame in frames:
            if self.dropped:
                return
            self.service.reader_frame(self, frame)

    def errReceived(self, data: bytes) -> None:
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            level, _, text = line.decode("utf-8", "replace").partition(" ")
            if level == "info":
                log.info("{text}", text=text)
            else:
                log.warn(
                    "{text}", text=text if level == "warn" else line.decode("utf-8", "replace")
                )

    def credit(self) -> None:
        """One more batch applied: the reader may send another."""
        if self.transport is not None and not self.ended.called:
            try:
                self.transport.write(b"\x01")
            except Exception:  # noqa: BLE001 - it is ending
                pass

    def signal(self, name: str) -> None:
        if self.transport is not None and not self.ended.called:
            try:
                self.transport.signalProcess(name)
            except Exception:  # noqa: BLE001 - already gone (ProcessExitedAlready)
                pass

    def drop(self) -> None:
        self.dropped = True
        self.signal("KILL")

    def stop(self) -> None:
        """EOF on its stdin and SIGTERM; SIGKILL if it is not gone in time."""
        if self.transport is not None and not self.ended.called:
            self.transport.closeStdin()
            self.signal("TERM")
            self._kill = self.service.reactor.callLater(READER_STOP_S, self.signal, "KILL")

    def processEnded(self, reason: Failure) -> None:
        if self._kill is not None and self._kill.active():
            self._kill.cancel()
        self.ended.callback(None)
        self.service.reader_ended(self, reason.getErrorMessage())


class NatsService(Service):
    """See the module docstring. Attributes ``up`` and ``reason`` say how
    the NATS side is (for /-/ready and the log)."""

    def __init__(
        self,
        engine: Engine,
        dispatcher: Dispatcher,
        reactor: Any,
        servers: str,
        replicas: int = 1,
        max_age_s: float = 0.0,
        generation_duration_s: float = 30.0,
        stream: str = STREAM,
    ) -> None:
        self.setName("NATS")
        self.engine = engine
        self.dispatcher = dispatcher
        self.reactor = reactor
        self.servers = [s.strip() for s in servers.split(",") if s.strip()]
        self.replicas = replicas
        self.duration = check_duration(generation_duration_s)
        self.max_age_s = max_age_s or max(
            MIN_MAX_AGE_S, DEFAULT_RETENTION_GENERATIONS * self.duration
        )
        self.stream = stream
        self.durable = consumer_name(engine.identity)
        self.timeline = StreamTimeline(self.duration)
        self.bridge = NatsBridge(reactor, self.servers, f"qasino-{engine.identity}")
        self.bridge.on_state = self._on_state
        self.up = False
        self.reason = "not connected to NATS yet"
        self.caught_up = False
        self.applied = 0
        # Stream messages not delivered to this server yet, as of its last
        # fetch: its lag behind the stream (/metrics).
        self.pending = 0
        self.tick_s = min(1.0, self.duration / 4)
        self._ticks = LoopingCall(self._tick)
        self._ticks.clock = reactor
        self._main: Optional[Any] = None
        self._stop: Optional[asyncio.Event] = None
        # The next stream sequence to read: set by the restore (NATS thread)
        # before the reader starts, then by the reader's batches (reactor).
        self._next_seq: Optional[int] = None
        self._handed = 0  # batches of the reader not yet applied
        self._reader: Optional[ReaderProcess] = None
        self._reader_starts = 0
        self._reader_backoff = Backoff()
        self._stopping = False
        # Frames of the reader not yet handed to the engine, and the call
        # that hands over the next piece.
        self._frames: deque[tuple[ReaderProcess, list[tuple[Any, ...]]]] = deque()
        self._feeding: Optional[Any] = None
        self.kept: set[str] = set()  # persist subjects with a copy in QASINO_KEEP
        dispatcher.forwarder = self
        engine.on_generation(self._gensig)

    # ------------------------------------------------------------ lifecycle

    def startService(self) -> None:
        super().startService()
        self.bridge.start()
        self._stop = asyncio.Event()
        self._main = asyncio.run_coroutine_threadsafe(self._run(), self.bridge.loop)
        self._ticks.start(self.tick_s, now=False)

    def stopService(self) -> Optional[Deferred[None]]:
        super().stopService()
        self._stopping = True
        if self._ticks.running:
            self._ticks.stop()
        if self._feeding is not None and self._feeding.active():
            self._feeding.cancel()
        self._feeding = None
        self._frames.clear()
        reader, self._reader = self._reader, None
        if self._stop is not None:
            self.bridge.loop.call_soon_threadsafe(self._stop.set)
        if self._main is not None:
            self._main.cancel()
        self.bridge.stop()
        if reader is None:
            return None
        reader.stop()
        return reader.ended

    def _on_state(self, up: bool, why: str) -> None:
        if up:
            log.info("{why}", why=why)
            self.reason = ""
        else:
            log.error("NATS unavailable: {why}; serving the last snapshot", why=why)
            self.reason = why
        self.up = up

    def metric_families(self) -> Iterator[Metric]:
        """The NATS figures of ``/metrics`` (docs/deploy.md)."""
        yield GaugeMetricFamily(
            "qasino_nats_up",
            "1 while the server is connected to NATS and reads its stream.",
            value=int(self.up),
        )
        yield CounterMetricFamily(
            "qasino_nats_applied_messages",
            "Stream messages applied since the server started.",
            value=self.applied,
        )
        yield GaugeMetricFamily(
            "qasino_nats_pending_messages",
            "Stream messages not delivered to this server yet, as of its last fetch.",
            value=self.pending,
        )
        yield GaugeMetricFamily(
            "qasino_nats_caught_up",
            "1 once the server has applied what the stream held when it started.",
            value=int(self.caught_up),
        )

    def status(self) -> tuple[bool, str]:
        """(ok, reason) for a readiness check."""
        if not self.up:
            return False, f"NATS unavailable: {self.reason}"
        return True, ""

    # ------------------------------------------------------------ consumer

    async def _run(self) -> None:
        stop = self._stop
        assert stop is not None
        try:
            await self._consume(stop)
        except asyncio.CancelledError:
            pass
        except Exception as e:  # noqa: BLE001 - logged, the server keeps serving
            self.reactor.callFromThread(log.error, "NATS consumer stopped: {error}", error=repr(e))

    async def _consume(self, stop: asyncio.Event) -> None:
        """Connect, make the streams, restore the kept copies; then the
        reader process reads the stream (:meth:`_start_reader`)."""
        if not await self.bridge.connect(stop):
            return
        while not stop.is_set():
            try:
                await self.bridge.ensure_stream(self.stream, self.replicas, self.max_age_s)
                break
            except Exception as e:  # noqa: BLE001 - retried
                self.bridge._state(False, f"cannot create stream {self.stream}: {e!r}")
                await sleep_unless_stopped(stop, 1.0)
        while not stop.is_set():
            try:
                await self._restore_kept()
                break
            except Exception as e:  # noqa: BLE001 - retried
                self.bridge._state(False, f"cannot read stream {KEEP_STREAM}: {e!r}")
                await sleep_unless_stopped(stop, 1.0)
        if stop.is_set():
            return
        # Up again if a failure above said otherwise.
        self.bridge._state(self.bridge.nc.is_connected, f"reading stream {self.stream}")
        self.reactor.callFromThread(self._start_reader)

    async def _restore_kept(self) -> None:
        """Before the stream: the last static/persist publishes per identity
        and table that stream QASINO no longer holds (older than its first
        message), from QASINO_KEEP, in their original order."""
        await self.bridge.ensure_keep_stream(self.replicas)
        first = await self.bridge.first_seq(self.stream)
        kept = await self.bridge.read_all(KEEP_STREAM)
        originals = []
        subjects = []
        for k in kept:
            original = original_of(k)
            if original is None:
                continue
            if k.subject.startswith("qasino.keep.p."):
                subjects.append(k.subject)
            if first and original.seq >= first:
                continue  # the stream replays it itself
            originals.append(original)
        originals.sort(key=lambda m: m.seq)
        if first:
            self._next_seq = first
        await self._hand_restore(originals, subjects)

    async def _hand_restore(self, msgs: list[StreamMessage], subjects: list[str]) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def on_reactor() -> None:
            self.kept.update(subjects)
            d = maybeDeferred(self.apply_batch, msgs, False)
            d.addErrback(lambda f: log.failure("restoring kept publishes failed", f))
            d.addBoth(lambda _: loop.call_soon_threadsafe(_resolve, done))
            log.info(
                "restored {n} static/persist publishes from {stream}",
                n=len(msgs),
                stream=KEEP_STREAM,
            )

        self.reactor.callFromThread(on_reactor)
        await done

    # ------------------------------------------------------------ reader process

    def _start_reader(self) -> None:
        if self._stopping or self._reader is not None:
            return
        limits = self.dispatcher.limits
        command = [
            sys.executable,
            "-m",
            "qasino.nats.reader",
            "--servers",
            ",".join(self.servers),
            "--name",
            f"qasino-{self.engine.identity}-reader",
            "--stream",
            self.stream,
            "--durable",
            self.durable,
            "--consumer-index",
            str(READER_CONSUMERS * self._reader_starts),
            "--tick-s",
            repr(self.tick_s),
            "--max-rows",
            str(limits["max_rows"]),
            "--max-columns",
            str(limits["max_columns"]),
            "--max-cell-bytes",
            str(limits["max_cell_bytes"]),
        ]
        if self._next_seq is not None:
            command += ["--start-seq", str(self._next_seq)]
        protocol = ReaderProcess(self)
        self._reader = protocol
        self._reader_starts += 1
        self.reactor.spawnProcess(
            protocol,
            sys.executable,
            command,
            env=os.environ.copy(),
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        log.info(
            "NATS reader process started (pid {pid}) from stream sequence {seq}",
            pid=protocol.pid,
            seq=self._next_seq if self._next_seq is not None else "1",
        )

    def reader_frame(self, reader: ReaderProcess, frame: bytes) -> None:
        """One frame from the reader process (reactor thread)."""
        try:
            entries = load_frame(frame)
        except ValueError as e:
            log.error("NATS reader process sent garbage ({error}); stopping it", error=e)
            reader.drop()
            return
        if entries is None:  # it found nothing more to read
            if not self.caught_up and not self._handed:
                self._caught_up()
            return
        if not entries:
            reader.credit()
            return
        self._next_seq = entries[-1][0] + 1
        self._handed += 1
        self._frames.append((reader, entries))
        if self._feeding is None:
            self._feeding = self.reactor.callLater(0, self._feed)

    def _feed(self) -> None:
        """Make the tables of the next piece of the oldest frame and hand
        them to the engine; one piece per reactor turn, so that a 2,000-table
        batch does not hold the reactor while it is turned into objects."""
        self._feeding = None
        if not self._frames:
            return
        reader, entries = self._frames[0]
        piece, rest = entries[:FEED_ENTRIES], entries[FEED_ENTRIES:]
        msgs, decoded = messages_of(piece, self.dispatcher.limits)
        d = maybeDeferred(self.apply_batch, msgs, True, decoded)
        d.addErrback(lambda f: log.failure("applying a NATS batch failed", f))
        if rest:
            self._frames[0] = (reader, rest)
        else:
            self._frames.popleft()
            # Caught up: nothing left to deliver, or (the pending count lags
            # behind while ticks keep coming) the last message is recent.
            if msgs[-1].pending == 0 or self.reactor.seconds() - msgs[-1].ts < CAUGHT_UP_S:
                d.addBoth(lambda _: self._caught_up())

            def applied(_: object) -> None:
                self._handed -= 1
                reader.credit()

            d.addBoth(applied)
        if self._frames:
            self._feeding = self.reactor.callLater(0, self._feed)

    def reader_ended(self, reader: ReaderProcess, why: str) -> None:
        if self._reader is reader:
            self._reader = None
        if self._stopping:
            return
        delay = self._reader_backoff.after(self.reactor.seconds() - reader.started_at)
        log.warn(
            "NATS reader process (pid {pid}) ended ({why}); starting it again in {delay}s "
            "from stream sequence {seq}",
            pid=reader.pid,
            why=why,
            delay=delay,
            seq=self._next_seq,
        )
        self.reactor.callLater(delay, self._start_reader)

    def _caught_up(self) -> None:
        if not self.caught_up:
            self.caught_up = True
            log.info(
                "caught up with stream {stream}: {n} messages applied",
                stream=self.stream,
                n=self.applied,
            )

    # ------------------------------------------------------------ apply (reactor)

    def apply_batch(
        self,
        msgs: list[StreamMessage],
        from_stream: bool = True,
        decoded_msgs: Optional[list[Any]] = None,
    ) -> Optional[Deferred[Any]]:
        """Apply messages in stream order: cut generations by their stream
        time, then publish each into the generation it falls in. Returns
        the Deferred of the last write (writes run in order).

        ``from_stream`` False: restored copies (no cuts, not copied again).
        ``decoded_msgs``: each message already decoded (or the InvalidInput
        it raised), as the NATS thread hands them."""
        last: Optional[Deferred[Any]] = None
        limits = self.dispatcher.limits
        store = self.engine.store
        calls: list[tuple[Any, tuple[Any, ...]]] = []
        applied: list[StreamMessage] = []
        cells = 0

        def flush() -> None:
            nonlocal last, calls, applied, cells
            if calls:
                last = self.engine.write_batch(calls, cells, in_turns=True)
                last.addCallback(self._batch_done, applied)
                last.addErrback(self._batch_failed, applied)
                calls, applied, cells = [], [], 0

        if from_stream and msgs:
            self.pending = msgs[-1].pending
        for i, m in enumerate(msgs):
            cut = self.timeline.place(m.ts) if from_stream else None
            if cut is not None:
                flush()
                last = self.engine.rotate(now=float(cut), next_number=cut)
                last.addErrback(self._rotate_failed)
            if m.subject == TICK_SUBJECT:
                continue
            self.applied += 1
            try:
                if decoded_msgs is None:
                    decoded = decode(m, limits)
                elif isinstance(decoded_msgs[i], InvalidInput):
                    raise decoded_msgs[i]
                else:
                    decoded = decoded_msgs[i]
            except InvalidInput as e:
                self.engine.count_publish_error()
                log.warn(
                    "refused message {seq} on {subject}: {error}",
                    seq=m.seq,
                    subject=m.subject,
                    error=e.message,
                )
                continue
            if from_stream:
                self._keep(m, decoded)
            if isinstance(decoded, Publish):
                size = publish_cells(decoded)
                if cells + size > APPLY_CHUNK_CELLS:
                    flush()
                calls.append((store.publish, (decoded, m.ts)))
                cells += size
            elif isinstance(decoded, NameValue):
                calls.append(
                    (
                        store.name_value_update,
                        (decoded.tablename, decoded.column, decoded.value, decoded.identity, m.ts),
                    )
                )
                cells += 2
            else:
                continue
            applied.append(m)
        flush()
        return last

    def _batch_done(self, errors: list[Any], msgs: list[StreamMessage]) -> None:
        for error, m in zip(errors, msgs):
            if error is not None:
                self._apply_failed(Failure(error), m)

    def _batch_failed(self, failure: Failure, msgs: list[StreamMessage]) -> None:
        log.error(
            "messages {first}..{last} could not be applied: {error}",
            first=msgs[0].seq,
            last=msgs[-1].seq,
            error=failure.getErrorMessage(),
        )

    def _keep(self, m: StreamMessage, decoded: Any) -> None:
        """Copy a static/persist/name-value publish to QASINO_KEEP (the last
        one per identity and table is kept there past the stream's age
        limit); an ordinary publish that ends a persisted table replaces its
        copy with an empty one."""
        tombstone = False
        if isinstance(decoded, Publish):
            opts, name = decoded.options, decoded.table.tablename
            if not (opts.static or opts.persist or self.kept):
                return  # the common case: nothing to copy or to end
            if opts.static:
                subject = keep_subject("s", opts.identity, name)
            else:
                subject = keep_subject("p", opts.identity, name)
                if opts.persist:
                    self.kept.add(subject)
                elif opts.update or subject not in self.kept:
                    return
                else:
                    self.kept.discard(subject)
                    tombstone = True
        elif isinstance(decoded, NameValue):
            subject = keep_subject("n", decoded.identity, decoded.tablename, decoded.column)
        else:
            return
        if self.reactor.seconds() - m.ts > KEEP_LIVE_S or not self.up:
            return
        if tombstone:
            data, headers = b"", {"Nats-Msg-Id": f"drop-{m.seq}"}
        else:
            data, headers = m.data, kept_copy_headers(m)
        d = self.bridge.submit(self.bridge.publish(subject, data, headers))
        d.addErrback(
            lambda f: log.warn(
                "could not copy message {seq} to {stream}: {e}",
                seq=m.seq,
                stream=KEEP_STREAM,
                e=f.getErrorMessage(),
            )
        )

    def _rotate_failed(self, failure: Failure) -> None:
        log.failure("rotation failed", failure)

    def _apply_failed(self, failure: Failure, m: StreamMessage) -> None:
        if failure.check(PublishRejected, InvalidInput):
            log.info(
                "message {seq} on {subject} not applied: {error}",
                seq=m.seq,
                subject=m.subject,
                error=_message(failure),
            )
        elif failure.check(QasinoError):
            log.error(
                "message {seq} on {subject} failed: {error}",
                seq=m.seq,
                subject=m.subject,
                error=_message(failure),
            )
        else:
            log.failure("message {seq} failed", failure, seq=m.seq)

    # ------------------------------------------------------------ forwarder

    def forward_json(self, identity: str, request: dict[str, Any]) -> Deferred[None]:
        return self._forward(subject_for(identity), encode_json(request), None)

    def forward_csv(self, identity: str, body: bytes) -> Deferred[None]:
        headers = {"Content-Type": CSV_TYPE, IDENTITY_HEADER: identity}
        return self._forward(subject_for(identity), body, headers)

    def _forward(
        self, subject: str, data: bytes, headers: Optional[dict[str, str]]
    ) -> Deferred[None]:
        if not self.up:
            return fail(QasinoError(f"NATS unavailable, publish not accepted: {self.reason}"))
        d = self.bridge.submit(self.bridge.publish(subject, data, headers))

        def failed(f: Failure) -> None:
            raise QasinoError(
                f"the publish was not acknowledged by NATS JetStream: "
                f"{f.getErrorMessage() or getattr(f.type, '__name__', 'no ack')}"
            )

        d.addCallbacks(lambda _: None, failed)
        return d

    # ------------------------------------------------------------ ticks, gensig

    def _tick(self) -> None:
        if not self.up:
            return
        slot = int(self.reactor.seconds() / self.tick_s)
        d = self.bridge.submit(
            self.bridge.publish(TICK_SUBJECT, b"", {"Nats-Msg-Id": f"tick-{slot}"})
        )
        d.addErrback(lambda f: log.debug("tick not published: {e}", e=f.getErrorMessage()))

    def _gensig(self, info: SnapshotInfo) -> None:
        # Not while replaying old generations: publishers would send for them.
        if not self.up or info.generation_number < self.reactor.seconds() - 3 * self.duration:
            return
        # As on ZeroMQ: the number of the generation that starts filling.
        number = info.filling_number or info.generation_number
        duration: object = (
            int(info.generation_duration_s)
            if float(info.generation_duration_s).is_integer()
            else info.generation_duration_s
        )
        body = encode_json(
            {
                "op": "generation_signal",
                "identity": self.engine.identity,
                "generation_number": number,
                "generation_duration_s": duration,
            }
        )
        d = self.bridge.submit(self.bridge.publish_plain(GENSIG_SUBJECT, body))
        d.addErrback(lambda f: log.debug("gensig not sent: {e}", e=f.getErrorMessage()))


def _message(failure: Failure) -> str:
    return str(getattr(failure.value, "message", None) or failure.getErrorMessage())


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)

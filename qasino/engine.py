"""The Twisted face of the store.

Writes (publishes, name/value updates, rotations) are applied one at a
time, in arrival order: small ones right on the reactor thread, long ones
(rotations, big tables) on one writer thread (see ``Engine._write`` for
why). Queries run on a pool of reader threads, each on its own read-only
connection. Front ends only ever call :class:`Engine`; it returns Deferreds
that fire on the reactor thread.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Optional, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from qasino.core.errors import QasinoError
from qasino.core.model import Publish, Result, ViewDef
from qasino.core.views import load_views_file
from qasino.store.query import RowStream
from qasino.store.store import SnapshotInfo, Store
from qasino.threads import CallThreads

log = Logger(namespace="qasino.engine")

T = TypeVar("T")

# Tables up to this many cells are written on the reactor thread (about
# 5 ms of SQLite work); bigger ones on the writer thread.
INLINE_MAX_CELLS = 50_000
# Queued inline writes run for at most this long per reactor turn.
INLINE_SLICE_S = 0.01
# With group_commit, publishes of at most this many cells wait for the end
# of the reactor turn to share one commit. A commit costs about as much as
# a 10-row insert, so for small tables it is half the write; bigger ones
# are applied at once (holding them would only hold their rows in memory).
GROUP_MAX_CELLS = 1_000


def publish_cells(publish: Publish) -> int:
    """A publish's size as the engine weighs it: rows x columns."""
    return len(publish.table.rows) * len(publish.table.column_names)


class Runner(Protocol):
    def write(self, fn: Callable[..., T], *args: Any) -> Deferred[T]: ...

    def read(self, fn: Callable[..., T], *args: Any) -> Deferred[T]: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


# Background readers (alert evaluation) run at this much lower CPU priority
# (a nice increment), so under CPU contention client queries, publishes and
# rotations win (bench/alerts.py).
BACKGROUND_NICE = int(os.environ.get("QASINO_BACKGROUND_NICE", "10"))


def _lower_thread_priority() -> None:
    """Renice the calling thread (Linux: a thread is a task with its own
    nice value); best effort."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except (OSError, AttributeError):
        pass


class ThreadRunner:
    """One writer thread (a queue, in order), a pool of reader threads, and
    a small pool of low-priority background readers (alerts)."""

    def __init__(self, reactor: IReactorThreads, readers: int = 4, background: int = 2) -> None:
        self.reactor = reactor
        self.writer = CallThreads(reactor, "qasino-writer", 1, minthreads=1)
        self.reader = CallThreads(reactor, "qasino-reader", readers, minthreads=1)
        self.background = CallThreads(
            reactor,
            "qasino-background-reader",
            max(1, background),
            on_thread_start=_lower_thread_priority,
        )

    def read_background(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """A read on a background reader thread (lower CPU priority)."""
        return self.background.call(fn, *args)

    def write(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        return self.writer.call(fn, *args)

    def read(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        return self.reader.call(fn, *args)

    def start(self) -> None:
        self.writer.start()
        self.reader.start()
        self.background.start()

    def stop(self) -> None:
        # Each pool lets its queued calls finish before its threads exit.
        self.writer.stop()
        self.reader.stop()
        self.background.stop()


def run_now(fn: Callable[..., T], *args: Any) -> Deferred[T]:
    """Call ``fn`` here and now; a fired Deferred of its result or failure."""
    try:
        return succeed(fn(*args))
    except BaseException:
        return fail(Failure())


class SyncRunner:
    """Runs everything at once on the calling thread (deterministic tests)."""

    def write(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        return run_now(fn, *args)

    read = write

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class ViewsSource:
    """The views file, re-read when its modification time or size changes.

    A file that fails to parse keeps the previous views; the error is logged
    once per change. Subclasses watch other files the same way (the alerts
    file) by overriding ``what``, :meth:`load` and the two log hooks.
    """

    what = "views"

    def __init__(self, path: Optional[str]) -> None:
        self.path = path
        self._stamp: Optional[tuple[int, ...]] = None
        self._polled = False  # the first poll always reports what it found
        self.views: list[Any] = []
        self.last_error: Optional[str] = None
        # A fixed set (views_from) is handed to the store at the first poll.
        self._fixed_pending = False

    def load(self, path: str) -> list[Any]:
        """Parse the file; raise a QasinoError if it cannot be used."""
        return load_views_file(path)

    def forget(self) -> None:
        """Make the next poll read the file even if it looks unchanged."""
        self._stamp = None

    def log_missing(self, where: str) -> None:
        log.warn("views file {path} not found: no views (it is read when it appears)", path=where)

    def log_loaded(self, items: list[Any]) -> None:
        for view in items:
            if view.warning:
                log.warn("view {viewname}: {warning}", viewname=view.viewname, warning=view.warning)

    def poll(self) -> bool:
        """Reload if the file changed; return True if the views changed."""
        if not self.path:
            pending, self._fixed_pending = self._fixed_pending, False
            return pending
        try:
            st = os.stat(self.path)
            stamp: Optional[tuple[int, ...]] = (
                st.st_mtime_ns,
                st.st_ctime_ns,
                st.st_size,
                st.st_ino,
            )
        except OSError:
            stamp = None
        if stamp == self._stamp and self._polled:
            return False
        self._stamp = stamp
        self._polled = True
        if stamp is None:
            where = os.path.abspath(self.path)
            if self.views:
                log.warn(
                    "{what} file {path} is gone; keeping the last {what}",
                    what=self.what,
                    path=where,
                )
            else:
                self.log_missing(where)
            return False
        try:
            items = self.load(self.path)
        except QasinoError as e:
            self.last_error = e.message
            log.error(
                "{what} file {path} not loaded, keeping the last good {what}: {error}",
                what=self.what,
                path=self.path,
                error=e.message,
            )
            return False
        self.last_error = None
        self.views = items
        log.info("loaded {n} {what} from {path}", n=len(items), what=self.what, path=self.path)
        self.log_loaded(items)
        return True


class Engine:
    """What every front end calls: publish, query, rotate, table list."""

    def __init__(
        self,
        store: Store,
        runner: Runner,
        clock: Any,
        identity: str,
        views: Optional[ViewsSource] = None,
        inline_max_cells: int = INLINE_MAX_CELLS,
        inline_slice_s: float = INLINE_SLICE_S,
        group_commit: bool = False,
    ) -> None:
        self.store = store
        self.runner = runner
        self.clock = clock
        self.identity = identity
        self.views = views or ViewsSource(None)
        self._generation_listeners: list[Callable[[SnapshotInfo], None]] = []
        # The AlertEvaluator, once the service has made one (web page, metrics).
        self.alerts: Optional[Any] = None
        self._rotation_timers: list[Callable[[float], None]] = []
        self._snapshot_ms: Optional[float] = None
        # Rotations done since this engine started (readiness needs one).
        self.rotations = 0
        self.inline_max_cells = inline_max_cells
        self.inline_slice_s = inline_slice_s
        # Writes waiting for the one on the writer thread (see _write).
        self._queue: deque[tuple[bool, Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = (
            deque()
        )
        self._on_thread = False
        self._pumping = False
        self._pump_call: Optional[Any] = None
        # group_commit: small publishes of one reactor turn wait here, to be
        # applied together with one commit (see publish).
        self.group_commit = group_commit
        self._group: list[tuple[Publish, Optional[str], Deferred[None]]] = []
        self._group_call: Optional[Any] = None

    def _now(self) -> float:
        """The engine clock's time (an IReactorTime: the reactor or a Clock)."""
        return float(self.clock.seconds())

    def publish(
        self, publish: Publish, remote_addr: Optional[str] = None, now: Optional[float] = None
    ) -> Deferred[None]:
        """Fires once the table is in the writer generation (or errbacks).

        ``now``: the publish's time if not the engine clock's (NATS mode:
        its stream timestamp).

        Tables of at most ``inline_max_cells`` cells are written on the
        calling (reactor) thread; bigger ones on the writer thread. Either
        way they are applied in arrival order, each atomically on its own.

        With ``group_commit``, small publishes (``GROUP_MAX_CELLS``) that
        arrive in one reactor turn (from any connection or transport) are
        applied at its end with one commit (``Store.publish_group``) and
        answered after it; any other write first applies them, so the order
        holds.
        """
        cells = publish_cells(publish)
        inline = cells <= self.inline_max_cells
        if self.group_commit and cells <= GROUP_MAX_CELLS and inline and now is None:
            d: Deferred[None] = Deferred()
            self._group.append((publish, remote_addr, d))
            if self._group_call is None:
                self._group_call = self.clock.callLater(0, self._flush_group)
            return d
        when = self._now() if now is None else now
        return self._write(inline, self.store.publish, publish, when, remote_addr)

    def _flush_group(self) -> None:
        call, self._group_call = self._group_call, None
        if call is not None and call.active():
            call.cancel()
        waiting, self._group = self._group, []
        # Applied in chunks of at most inline_max_cells cells, each one write
        # on the reactor thread, so a turn's worth of publishes stalls the
        # reactor no longer than one big table would (the pump yields
        # between writes).
        chunk: list[tuple[Publish, Optional[str], Deferred[None]]] = []
        cells = 0
        for entry in waiting:
            size = publish_cells(entry[0])
            if chunk and cells + size > self.inline_max_cells:
                self._apply_chunk(chunk)
                chunk, cells = [], 0
            chunk.append(entry)
            cells += size
        if chunk:
            self._apply_chunk(chunk)

    def _apply_chunk(self, chunk: list[tuple[Publish, Optional[str], Deferred[None]]]) -> None:
        items = [(publish, remote_addr) for publish, remote_addr, _ in chunk]
        done = self._enqueue(True, self.store.publish_group, items, self._now())

        def answer(errors: Any) -> None:
            if isinstance(errors, Failure):
                errors = [errors] * len(chunk)
            for (_, _, d), error in zip(chunk, errors):
                if error is None:
                    d.callback(None)
                else:
                    d.errback(error)

        done.addBoth(answer)

    def _write(
        self, inline: bool, fn: Callable[..., T], *args: Any, now_ok: bool = True
    ) -> Deferred[T]:
        """Run a writer method in order with every other write.

        Why not always on the writer thread: apsw lets go of the GIL around
        every SQLite call (for executemany, every row), and getting it back
        from a busy reactor thread takes up to a switch interval, so a
        writer thread competing with the reactor crawls (docs/performance.md).
        Small writes therefore run right here on the reactor thread, where
        they cost only their own CPU time; long ones (rotations, big tables)
        run on the writer thread so the reactor keeps serving meanwhile.
        Writes that arrive while one is on the thread wait in ``_queue``.
        """
        if self._group:
            self._flush_group()
        return self._enqueue(inline, fn, *args, now_ok=now_ok)

    def _enqueue(
        self, inline: bool, fn: Callable[..., T], *args: Any, now_ok: bool = True
    ) -> Deferred[T]:
        if inline and now_ok and not self._queue and not self._on_thread:
            return run_now(fn, *args)
        d: Deferred[T] = Deferred()
        self._queue.append((inline, fn, args, d))
        if not self._pumping and not self._on_thread and self._pump_call is None:
            if now_ok:
                self._pump()
            else:  # from the next turn on, a slice at a time
                self._pump_call = self.clock.callLater(0, self._pump)
        return d

    def _pump(self) -> None:
        """Run queued writes in order: inline ones here, for at most
        ``inline_slice_s`` per reactor turn; a thread one stops the pump
        until it is done."""
        self._pump_call = None
        self._pumping = True
        started = time.perf_counter()
        try:
            while self._queue and not self._on_thread:
                inline, fn, args, d = self._queue.popleft()
                if inline:
                    run_now(fn, *args).chainDeferred(d)
                    if self._queue and time.perf_counter() - started > self.inline_slice_s:
                        self._pump_call = self.clock.callLater(0, self._pump)
                        return
                else:
                    self._on_thread = True
                    self.runner.write(fn, *args).addBoth(self._thread_done, d)
        finally:
            self._pumping = False

    def _thread_done(self, result: Any, d: Deferred[Any]) -> None:
        self._on_thread = False
        d.callback(result)  # a Failure result errbacks
        if not self._pumping and self._pump_call is None:
            self._pump()

    def write_batch(
        self,
        calls: Sequence[tuple[Callable[..., object], tuple[Any, ...]]],
        cells: int,
        in_turns: bool = False,
    ) -> Deferred[list[Any]]:
        """Store writer calls applied in order in one transaction (see
        ``Store.write_batch``); fires with each call's error or None.

        ``in_turns``: always through the queue, so that many such batches
        in a row (a NATS catch-up) are written ``inline_slice_s`` at a time
        and the reactor serves queries between them."""
        return self._write(
            cells <= self.inline_max_cells, self.store.write_batch, calls, now_ok=not in_turns
        )

    def publish_group(
        self, items: Sequence[tuple[Publish, Optional[str]]]
    ) -> Deferred[list[Optional[QasinoError]]]:
        """(publish, remote_addr) pairs applied in order with as few commits
        as can be (``Store.publish_group``); fires with each one's error or
        None once all are in the writer generation."""
        cells = sum(publish_cells(p) for p, _ in items)
        return self._write(
            cells <= self.inline_max_cells, self.store.publish_group, items, self._now()
        )

    def name_value_update(
        self, tablename: str, column: str, value: str, identity: str, now: Optional[float] = None
    ) -> Deferred[None]:
        when = self._now() if now is None else now
        return self._write(
            True, self.store.name_value_update, tablename, column, value, identity, when
        )

    def query(self, sql: str, use_write_db: bool = False) -> Deferred[Result]:
        return self.runner.read(self.store.query, sql, use_write_db)

    def query_then(
        self, sql: str, use_write_db: bool, transform: Callable[[Result], T]
    ) -> Deferred[T]:
        """Query and apply ``transform`` (e.g. encoding) on the reader thread,
        so large results are never rendered on the reactor thread."""

        def job() -> T:
            return transform(self.store.query(sql, use_write_db))

        return self.runner.read(job)

    def query_timed(
        self, sql: str, use_write_db: bool, transform: Callable[[Result, float], T]
    ) -> Deferred[T]:
        """:meth:`query_then` whose ``transform`` also gets the query's own
        time in milliseconds (running the statement and reading its rows)."""

        def job() -> T:
            started = time.perf_counter()
            result = self.store.query(sql, use_write_db)
            return transform(result, (time.perf_counter() - started) * 1000)

        return self.runner.read(job)

    def query_into(
        self,
        sql: str,
        use_write_db: bool,
        feed: Callable[[list[tuple[object, ...]]], int],
        finish: Callable[[Result, float], T],
    ) -> Deferred[T]:
        """Query on a reader thread, handing the rows to ``feed`` chunk by
        chunk as they are read (it encodes them, see ``Store.query``), then
        ``finish(result, query_ms)`` there too."""

        def job() -> T:
            started = time.perf_counter()
            result = self.store.query(sql, use_write_db, feed)
            return finish(result, (time.perf_counter() - started) * 1000)

        return self.runner.read(job)

    def stream(
        self,
        sql: str,
        use_write_db: bool,
        max_rows: int,
        consume: Callable[[RowStream], T],
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Deferred[T]:
        """Open a :class:`RowStream` on a reader thread and run
        ``consume(stream)`` there; fires with what it returns (or errbacks
        with the query's error). ``consume`` hands the rows to the reactor
        itself (see the HTTP front end's streaming)."""

        def job() -> T:
            with self.store.stream(sql, use_write_db, max_rows, cancelled) as rows:
                return consume(rows)

        return self.runner.read(job)

    def table_list(self) -> dict[str, dict[str, object]]:
        return self.store.table_list()

    def identity_counts(self) -> dict[str, int]:
        """Live and stale identities of the snapshot served (for /metrics)."""
        return self.store.identity_counts()

    def snapshot_info(self) -> SnapshotInfo:
        return self.store.snapshot_info()

    def count_publish_error(self, nr_rows: int = 0) -> None:
        """A publish refused before it reached the store (bad input)."""
        self.store.counters.add(updates_received=1, update_errors=1, inserts_received=nr_rows)

    def count_query_error(self) -> None:
        self.store.counters.add(sql_received=1, sql_errors=1)

    def on_generation(self, listener: Callable[[SnapshotInfo], None]) -> None:
        """Call ``listener(info)`` on the reactor thread after each snapshot."""
        self._generation_listeners.append(listener)

    def reload_views(self) -> Deferred[bool]:
        """Read the views file now (SIGHUP), in order with the writes; the
        views apply from the next snapshot. Fires True if they changed."""

        def job() -> bool:
            self.views.forget()
            changed = self.views.poll()
            if changed:
                self.store.set_views(self.views.views)
            return changed

        return self._write(True, job)

    def on_rotation_timed(self, listener: Callable[[float], None]) -> None:
        """Call ``listener(seconds)`` on the reactor thread after each rotation."""
        self._rotation_timers.append(listener)

    def snapshot_age(self) -> float:
        """Seconds since the snapshot being served was taken."""
        return max(0.0, self._now() - self.store.snapshot_info().generation_start_epoch)

    def rotate(
        self, now: Optional[float] = None, next_number: Optional[int] = None
    ) -> Deferred[SnapshotInfo]:
        """Snapshot now; fires with the new snapshot's info after listeners ran.

        ``now``/``next_number``: the cut's time and the next generation's
        number when the caller decides them (NATS mode: stream time)."""
        when = self._now() if now is None else now
        d = self._write(False, self._rotate_job, when, next_number)
        d.addCallback(self._announce)
        return d

    def _rotate_job(self, now: float, next_number: Optional[int] = None) -> SnapshotInfo:
        if self.views.poll():
            self.store.set_views(self.views.views)
        started = time.perf_counter()
        if next_number is None:
            info = self.store.rotate(now)
        else:
            info = self.store.rotate(now, next_number)
        self._snapshot_ms = (time.perf_counter() - started) * 1000
        return info

    def announce_current(self) -> None:
        """Tell the generation listeners about the snapshot served now."""
        self._announce(self.store.snapshot_info())

    def _announce(self, info: SnapshotInfo) -> SnapshotInfo:
        took, self._snapshot_ms = self._snapshot_ms, None
        if took is not None:
            self.rotations += 1
            for timer in list(self._rotation_timers):
                try:
                    timer(took / 1000)
                except Exception:
                    log.failure("rotation timer failed")
        log.info(
            "generation {number} is being served (duration {duration}s{took})",
            number=info.generation_number,
            duration=info.generation_duration_s,
            took="" if took is None else f", snapshot took {took:.1f} ms",
        )
        for listener in list(self._generation_listeners):
            try:
                listener(info)
            except Exception:
                log.failure("generation listener failed")
        return info

    def close(self) -> Deferred[None]:
        """Close the store on the writer thread, after all queued writes."""
        return self._write(False, self.store.close)


class EngineService(Service):
    """Starts the threads and the generation timer; stops them in order.

    Rotates every ``generation_duration_s`` seconds by ``engine.clock``. A
    failed rotation is logged and the timer goes on.
    """

    def __init__(
        self, engine: Engine, generation_duration_s: float, rotate_on_timer: bool = True
    ) -> None:
        self.engine = engine
        self.generation_duration_s = generation_duration_s
        # False in NATS mode: the stream's timestamps cut the generations.
        self.rotate_on_timer = rotate_on_timer
        self._loop = LoopingCall(self._tick)
        self._loop.clock = engine.clock
        self._loop_done: Optional[Deferred[Any]] = None

    def _tick(self) -> Deferred[Any]:
        d: Deferred[Any] = self.engine.rotate()
        d.addErrback(self._rotate_failed)
        return d

    def _rotate_failed(self, failure: Failure) -> None:
        if failure.check(QasinoError):
            log.error("rotation failed: {error}", error=failure.value)
        else:
            log.failure("rotation failed", failure)

    def startService(self) -> None:
        super().startService()
        self.engine.runner.start()
        # The store served its first snapshot when it opened. If the views
        # it was given are not the file's, rotate at once so they apply;
        # otherwise just announce that snapshot (publishers learn at once
        # that a server is there). Then rotate every generation_duration_s.
        if self.engine.views.poll():
            self.engine.store.set_views(self.engine.views.views)
            now = True
        else:
            self.engine.announce_current()
            now = False
        if self.rotate_on_timer:
            self._loop_done = self._loop.start(self.generation_duration_s, now=now)
        elif now:
            self._tick()

    def stopService(self) -> Optional[Deferred[None]]:
        was_running = self.running
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if not was_running:
            # Never started (another service failed first): no threads to
            # go through, close the store here.
            self.engine.store.close()
            return None
        d = self.engine.close()

        def stop_threads(result: object) -> object:
            self.engine.runner.stop()
            return result

        d.addBoth(stop_threads)
        d.addErrback(lambda f: log.failure("closing the store failed", f))
        return d


def views_from(views: Sequence[ViewDef]) -> ViewsSource:
    """A ViewsSource with a fixed set of views (tests)."""
    source = ViewsSource(None)
    source.views = list(views)
    source._fixed_pending = True
    return source

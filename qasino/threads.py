"""Threads that run calls for the reactor and hand each result back to it.

Twisted's ``deferToThreadPool`` makes a reference cycle per call (its
``inContext`` closure refers to itself), so every query, rotation and
slow publish left four objects only the cyclic garbage collector frees.
At a query loop's rate they triggered a young collection every few
seconds, and each one held the GIL for 15-70 ms: a stall of every thread
(docs/performance.md, "Garbage collection and the GIL").
:class:`CallThreads` does the same job with no cycle, so what a call
allocates is freed by reference counting as soon as its Deferred has
fired.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Optional, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")

_STOP = None


def _fire(d: Deferred[Any], ok: bool, result: Any) -> None:
    if ok:
        d.callback(result)
    else:
        d.errback(result)


class CallThreads:
    """A pool of at most ``maxthreads`` threads named ``name-N``: ``call``
    queues a call and returns a Deferred that fires on the reactor thread
    with its result or failure, in the order the calls finish. Calls run
    in the order they were queued (with one thread: one at a time, in
    order). A thread is started when a call finds none idle, up to the
    maximum; ``minthreads`` start with the pool. ``stop`` lets the queued
    calls finish, then joins the threads."""

    def __init__(
        self,
        reactor: Any,
        name: str,
        maxthreads: int,
        minthreads: int = 0,
        on_thread_start: Optional[Callable[[], None]] = None,
    ) -> None:
        self.reactor = reactor
        self.name = name
        self.maxthreads = max(1, maxthreads)
        self.minthreads = min(minthreads, self.maxthreads)
        self._on_thread_start = on_thread_start
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a call and not yet promised one
        self._backlog = 0  # calls queued before start
        self._started = False
        self._stopped = False
        self._born = 0

    def start(self) -> None:
        with self._lock:
            self._started = True
            wanted = max(self.minthreads, min(self._backlog, self.maxthreads))
            self._idle = max(0, wanted - self._backlog)
            self._backlog = 0
            while len(self._threads) < wanted:
                self._spawn_locked()

    def call(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        d: Deferred[T] = Deferred()
        with self._lock:
            if self._stopped:
                d.errback(RuntimeError(f"{self.name}: stopped"))
                return d
            self._jobs.put((fn, args, d))
            if not self._started:
                self._backlog += 1
            elif self._idle:
                self._idle -= 1  # a waiting thread takes it
            elif len(self._threads) < self.maxthreads:
                self._spawn_locked()  # the new thread takes it
        return d

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            threads = list(self._threads)
            if not self._started and not self._jobs.empty():
                # Never started: run what was queued, as a started pool would.
                self._spawn_locked()
                threads = list(self._threads)
            for _ in threads:
                self._jobs.put(_STOP)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join()

    def _spawn_locked(self) -> None:
        thread = threading.Thread(target=self._work, name=f"{self.name}-{self._born}", daemon=True)
        self._born += 1
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        if self._on_thread_start is not None:
            self._on_thread_start()
        jobs = self._jobs
        call_from_thread = self.reactor.callFromThread
        try:
            while True:
                job = jobs.get()
                if job is _STOP:
                    return
                fn, args, d = job
                del job
                try:
                    result = fn(*args)
                    ok = True
                except BaseException:
                    result = Failure()
                    result.cleanFailure()  # no frames kept: no cycle through them
                    ok = False
                del fn, args
                call_from_thread(_fire, d, ok, result)
                del d, result
                with self._lock:
                    self._idle += 1
        finally:
            with self._lock:
                if threading.current_thread() in self._threads:
                    self._threads.remove(threading.current_thread())

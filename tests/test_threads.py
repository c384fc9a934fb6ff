"""CallThreads: real threads; the test thread plays the reactor, running
what the pool hands back through ``callFromThread``."""

from __future__ import annotations

import gc
import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.python.failure import Failure

from qasino.threads import CallThreads


class FakeReactor:
    def __init__(self) -> None:
        self.calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.current_thread()

    def callFromThread(self, fn: Any, *args: Any) -> None:
        self.calls.put((fn, args))

    def run_one(self, timeout: float = 10.0) -> None:
        fn, args = self.calls.get(timeout=timeout)
        fn(*args)

    def run_until(self, done: Any, timeout: float = 10.0) -> None:
        while not done():
            self.run_one(timeout)


@pytest.fixture
def reactor() -> FakeReactor:
    return FakeReactor()


@pytest.fixture
def pool(reactor: FakeReactor) -> Iterator[CallThreads]:
    threads = CallThreads(reactor, "test-pool", 3, minthreads=1)
    threads.start()
    yield threads
    threads.stop()


def results_of(deferreds: list[Any]) -> list[Any]:
    out: list[Any] = []
    for d in deferreds:
        d.addBoth(out.append)
    return out


def test_results_and_failures_fire_on_the_reactor_thread(
    reactor: FakeReactor, pool: CallThreads
) -> None:
    fired_on: list[threading.Thread] = []

    def note(value: Any) -> Any:
        fired_on.append(threading.current_thread())
        return value

    def boom() -> None:
        raise ValueError("bad")

    ok = pool.call(lambda a, b: a + b, 2, 3).addBoth(note)
    bad = pool.call(boom).addBoth(note)
    out = results_of([ok, bad])
    reactor.run_until(lambda: len(out) == 2)
    assert out[0] == 5
    assert isinstance(out[1], Failure) and out[1].check(ValueError)
    assert str(out[1].value) == "bad"
    assert fired_on == [reactor.thread, reactor.thread]


def test_one_thread_runs_calls_one_at_a_time_in_order(reactor: FakeReactor) -> None:
    pool = CallThreads(reactor, "test-writer", 1, minthreads=1)
    pool.start()
    try:
        seen: list[int] = []
        running = threading.Lock()

        def job(i: int) -> int:
            assert running.acquire(blocking=False), "two calls at once"
            try:
                seen.append(i)
                return i
            finally:
                running.release()

        out = results_of([pool.call(job, i) for i in range(200)])
        reactor.run_until(lambda: len(out) == 200)
        assert seen == list(range(200))
        assert out == list(range(200))
        assert {t.name for t in threading.enumerate() if t.name.startswith("test-writer")} == {
            "test-writer-0"
        }
    finally:
        pool.stop()


def test_threads_grow_to_the_maximum_and_no_further(reactor: FakeReactor) -> None:
    pool = CallThreads(reactor, "test-grow", 3)
    pool.start()
    release = threading.Event()
    entered: queue.SimpleQueue[str] = queue.SimpleQueue()
    try:

        def hold() -> str:
            entered.put(threading.current_thread().name)
            release.wait(10)
            return threading.current_thread().name

        out = results_of([pool.call(hold) for _ in range(5)])
        names = {entered.get(timeout=10) for _ in range(3)}
        assert names == {"test-grow-0", "test-grow-1", "test-grow-2"}
        assert entered.empty()  # the 4th and 5th wait for a free thread
        release.set()
        reactor.run_until(lambda: len(out) == 5)
        assert set(out) <= names
    finally:
        release.set()
        pool.stop()


def test_an_idle_thread_takes_the_next_call(reactor: FakeReactor) -> None:
    pool = CallThreads(reactor, "test-idle", 4, minthreads=1)
    pool.start()
    try:
        for _ in range(50):
            d = pool.call(lambda: threading.current_thread().name)
            out = results_of([d])
            reactor.run_until(lambda out=out: len(out) == 1)
        # Calls one after the other never needed a second thread.
        assert [t.name for t in threading.enumerate() if t.name.startswith("test-idle")] == [
            "test-idle-0"
        ]
    finally:
        pool.stop()


def test_stop_lets_queued_calls_finish_and_refuses_later_ones(reactor: FakeReactor) -> None:
    pool = CallThreads(reactor, "test-stop", 1, minthreads=1)
    pool.start()
    gate = threading.Event()
    done: list[int] = []

    def slow(i: int) -> int:
        gate.wait(10)
        done.append(i)
        return i

    out = results_of([pool.call(slow, i) for i in range(5)])
    gate.set()
    pool.stop()
    assert done == [0, 1, 2, 3, 4]
    assert not [t for t in threading.enumerate() if t.name.startswith("test-stop")]
    reactor.run_until(lambda: len(out) == 5)
    assert out == [0, 1, 2, 3, 4]
    late = results_of([pool.call(slow, 9)])
    assert isinstance(late[0], Failure) and late[0].check(RuntimeError)
    assert 9 not in done


def test_calls_queued_before_start_run_once_started(reactor: FakeReactor) -> None:
    pool = CallThreads(reactor, "test-early", 2)
    out = results_of([pool.call(lambda i=i: i * 10) for i in range(3)])
    assert reactor.calls.empty()
    pool.start()
    try:
        reactor.run_until(lambda: len(out) == 3)
        assert sorted(out) == [0, 10, 20]
    finally:
        pool.stop()


def test_each_thread_runs_the_start_hook_once(reactor: FakeReactor) -> None:
    started: list[str] = []
    pool = CallThreads(
        reactor,
        "test-hook",
        2,
        on_thread_start=lambda: started.append(threading.current_thread().name),
    )
    pool.start()
    try:
        release = threading.Event()
        out = results_of([pool.call(release.wait, 10) for _ in range(6)])
        release.set()
        reactor.run_until(lambda: len(out) == 6)
        assert sorted(started) == ["test-hook-0", "test-hook-1"]
    finally:
        pool.stop()


def test_calls_leave_nothing_for_the_cyclic_collector(
    reactor: FakeReactor, pool: CallThreads, no_cyclic_gc: None
) -> None:
    """What a call allocates goes with reference counting: Twisted's
    deferToThreadPool left four objects in a cycle per call, and the young
    collections they caused stalled every thread for 15-70 ms."""

    class Payload:
        pass

    def boom() -> None:
        raise KeyError("x")

    out: list[Any] = []
    for i in range(300):
        d = pool.call(Payload) if i % 10 else pool.call(boom)
        d.addErrback(lambda f: f.trap(KeyError))
        d.addBoth(lambda r: out.append(type(r).__name__))
        del d
    reactor.run_until(lambda: len(out) == 300)
    assert out.count("Payload") == 270
    out.clear()
    assert gc.collect() == 0

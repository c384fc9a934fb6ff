"""Fixtures shared by the in-memory tests: a real store on tmp_path, an
engine that runs store calls at once (SyncRunner) and a fake clock."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from qasino.engine import Engine, SyncRunner
from qasino.ops import Dispatcher
from qasino.store.store import Store, StoreConfig
from tests.helpers import IDENTITY, ManualRunner


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(1000.0)
    return c


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(StoreConfig(db_dir=str(tmp_path)), now=1000.0)
    yield s
    s.close()


@pytest.fixture
def engine(store: Store, clock: Clock) -> Engine:
    return Engine(store, SyncRunner(), clock, IDENTITY)


@pytest.fixture
def dispatcher(engine: Engine) -> Dispatcher:
    return Dispatcher(engine)


@pytest.fixture
def manual_runner() -> ManualRunner:
    return ManualRunner()


@pytest.fixture
def slow_dispatcher(store: Store, clock: Clock, manual_runner: ManualRunner) -> Dispatcher:
    """A dispatcher whose store calls only complete on ``manual_runner.run_pending()``."""
    return Dispatcher(Engine(store, manual_runner, clock, IDENTITY))


@pytest.fixture
def logged_failures() -> Iterator[list[dict[str, Any]]]:
    """Log events carrying a Failure (log.failure, unhandled errors in Deferreds)."""
    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            events.append(event)

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    """The cyclic collector collected now and then off, so a test's
    ``gc.collect()`` counts only the cyclic garbage it made itself."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()

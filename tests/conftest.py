"""Fixtures shared by the in-memory tests: a real store on tmp_path, an
engine that runs store calls at once (SyncRunner) and a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from qasino.engine import Engine, SyncRunner
from qasino.ops import Dispatcher
from qasino.store.store import Store, StoreConfig
from tests.helpers import IDENTITY


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

"""Shared test helpers for the in-memory (no reactor) front-end tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

IDENTITY = "testserver"


class ManualRunner:
    """Store calls wait in a queue until run (a slow store)."""

    def __init__(self) -> None:
        self.pending: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def write(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((d, fn, args))
        return d

    read = write

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def run_one(self) -> None:
        d, fn, args = self.pending.pop(0)
        try:
            result = fn(*args)
        except Exception:
            d.errback(Failure())
        else:
            d.callback(result)

    def run_pending(self) -> None:
        while self.pending:
            self.run_one()

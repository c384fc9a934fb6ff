"""What every Qasino process sets up the same way, importable cheaply (the
NATS reader process starts with it; docs/scaling.md)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import signal
import sys
from collections.abc import Iterator

# gc.set_threshold: young collections every 50,000 net allocations instead
# of 700, full ones a hundred times rarer than young ones.
GC_THRESHOLDS = (50_000, 20, 100)


@contextlib.contextmanager
def young_collections_paused() -> Iterator[None]:
    """Run the block with the cyclic collector off (the whole process).

    For a block that makes and drops tens of thousands of containers in
    one go (the snapshot switch): reference counting frees them at the end
    of the block and takes them off the collector's count, so no young
    collection has to examine them. One that fell inside the block held
    the GIL, and so every thread, for 10-30 ms (docs/performance.md).
    Leaves the collector alone if it was already off."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """Linux: get ``sig`` when the parent process dies (no orphans that
    hold the data directory or the ports)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

"""What every Qasino process sets up the same way, importable cheaply (the
NATS reader process starts with it; docs/scaling.md)."""

from __future__ import annotations

import ctypes
import signal
import sys

# gc.set_threshold: young collections every 50,000 net allocations instead
# of 700, full ones a hundred times rarer than young ones.
GC_THRESHOLDS = (50_000, 20, 100)


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

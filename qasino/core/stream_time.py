"""Generations cut by stream time (NATS mode), as pure functions of values.

Every server on one stream sees the same messages in the same order with
the same stream timestamps. A generation is the half-open interval
``[k * D, (k + 1) * D)`` of stream time (D = the generation duration in
whole seconds) and its ``generation_number`` is its start, ``k * D``; so
every server numbers and cuts its generations alike, whatever its own clock
says or when it started.

A message belongs to the generation its timestamp falls in, except that time
never runs backwards: a message stamped before the generation being filled
(a new stream leader whose clock is a little behind) joins the one being
filled. The generation being filled is cut when the first message stamped
at or past its end is seen; the servers publish tick messages into the
stream so that idle periods still cut generations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional


def generation_start(ts: float, duration_s: int) -> int:
    """The start (and number) of the generation stream time ``ts`` falls in."""
    return int(math.floor(ts / duration_s)) * duration_s


def check_duration(duration_s: float) -> int:
    """NATS mode needs whole-second generations (numbers are epoch seconds)."""
    if duration_s < 1 or duration_s != int(duration_s):
        raise ValueError(
            f"with --nats the generation duration must be a whole number of seconds >= 1, "
            f"not {duration_s:g}"
        )
    return int(duration_s)


@dataclass
class StreamTimeline:
    """Which generation the next message goes to, and when to cut."""

    duration_s: int
    filling: Optional[int] = None  # start of the generation being filled

    def place(self, ts: float) -> Optional[int]:
        """Place a message stamped ``ts``.

        Returns the start of a new generation to cut to *before* applying
        the message (the writer generation must then be numbered with it),
        or None when the message goes into the generation being filled.
        """
        start = generation_start(ts, self.duration_s)
        if self.filling is None or start > self.filling:
            self.filling = start
            return start
        return None

    def end(self) -> Optional[int]:
        """The end of the generation being filled."""
        return None if self.filling is None else self.filling + self.duration_s

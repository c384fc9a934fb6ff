"""The NATS reader process of ``--nats``: reads the stream, decodes, hands over.

One interpreter cannot both decode the fleet's publishes and write them
into SQLite fast enough (docs/scaling.md: it is CPU-bound on one core), so
a ``--nats`` server runs this process beside it (``python -m
qasino.nats.reader``, started and restarted by :class:`ReaderProcess`).
It reads the server's durable pull consumer in batches, in stream order,
decodes and checks every message exactly as the server would
(:func:`qasino.nats.messages.decode`), and writes each batch to its stdout
as one frame (a 4-byte length, then ``marshal`` bytes; see
:func:`encode_batch`). The server applies the batches in order and writes
one byte on the reader's stdin for each batch it has applied: the reader
has at most ``--in-flight`` batches not yet applied. Its log lines go to
stderr as ``LEVEL text``; the server logs them.

The reader keeps no state the server does not have: started again (it
died, its connection broke for good) it is told the next stream sequence
the server wants, and makes a fresh consumer from there.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import gc
import marshal
import os
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any, Optional

from qasino.core.errors import InvalidInput
from qasino.core.model import Publish, publish_fields, publish_from_fields
from qasino.nats.messages import TICK_SUBJECT, NameValue, StreamMessage, decode

FETCH_BATCH = 2000
FETCH_TIMEOUT_S = 0.5
IN_FLIGHT = 3
PIPE_BYTES = 4 << 20

_LEN = struct.Struct("!I")
# Frames, reader -> server: ("B", entries) a batch; ("I",) the fetch came
# back empty (caught up).
BATCH = "B"
IDLE = "I"
# Entry kinds: (seq, ts_ns, pending, subject, kind, payload, data, headers).
TICK, PUBLISH, NAME_VALUE, REFUSED, UNDECODED = range(5)


def in_order(
    msgs: Sequence[StreamMessage], next_seq: Optional[int]
) -> tuple[list[StreamMessage], bool]:
    """Drop what was handed over already; cut the batch at a sequence gap
    (True: the consumer must be made again after the last one kept).

    ``next_seq`` None (a fresh consumer): the first message is taken
    whatever its number (what came before it may have expired)."""
    expected = next_seq
    out: list[StreamMessage] = []
    for m in msgs:
        if expected is not None and m.seq < expected:
            continue
        if expected is not None and m.seq > expected:
            return out, True
        out.append(m)
        expected = m.seq + 1
    return out, False


def _entry(m: StreamMessage, limits: dict[str, int]) -> tuple[Any, ...]:
    """One message as the server needs it: what it decodes to, and its
    bytes only where the server copies them to QASINO_KEEP."""
    head = (m.seq, m.ts_ns, m.pending, m.subject)
    if m.subject == TICK_SUBJECT:
        return (*head, TICK, None, b"", None)
    try:
        decoded = decode(m, limits)
    except InvalidInput as e:
        return (*head, REFUSED, e.message, b"", None)
    if isinstance(decoded, Publish):
        keep = decoded.options.persist or decoded.options.static
        fields = publish_fields(decoded)
        return (*head, PUBLISH, fields, m.data if keep else b"", m.headers if keep else None)
    if isinstance(decoded, NameValue):
        payload = (decoded.tablename, decoded.column, decoded.value, decoded.identity)
        return (*head, NAME_VALUE, payload, m.data, m.headers)
    return (*head, TICK, None, b"", None)


def encode_batch(msgs: Sequence[StreamMessage], limits: dict[str, int]) -> bytes:
    """A batch frame (length included)."""
    entries = [_entry(m, limits) for m in msgs]
    try:
        body = marshal.dumps((BATCH, entries))
    except ValueError:
        # A cell marshal cannot hold (decode gives only plain values, so
        # this is a guard): such messages go as received, for the server
        # to decode itself.
        safe = []
        for m, entry in zip(msgs, entries):
            try:
                marshal.dumps(entry)
            except ValueError:
                entry = (m.seq, m.ts_ns, m.pending, m.subject, UNDECODED, None, m.data, m.headers)
            safe.append(entry)
        body = marshal.dumps((BATCH, safe))
    return _LEN.pack(len(body)) + body


def idle_frame() -> bytes:
    body = marshal.dumps((IDLE,))
    return _LEN.pack(len(body)) + body


def load_frame(frame: bytes) -> Optional[list[tuple[Any, ...]]]:
    """A frame's entries, checked for shape (None: an idle frame). Raises
    ValueError for a frame that is not one. Cheap: the tables are made
    from the entries later, a piece at a time (:func:`messages_of`)."""
    try:
        parsed = marshal.loads(frame)
    except (EOFError, TypeError, ValueError) as e:
        raise ValueError(f"not a reader frame: {e}") from None
    if parsed == (IDLE,):
        return None
    if not (
        isinstance(parsed, tuple)
        and len(parsed) == 2
        and parsed[0] == BATCH
        and isinstance(parsed[1], list)
    ):
        raise ValueError("not a reader frame")
    entries: list[tuple[Any, ...]] = parsed[1]
    for entry in entries:
        if not (
            isinstance(entry, tuple)
            and len(entry) == 8
            and type(entry[0]) is int
            and type(entry[1]) is int
            and type(entry[2]) is int
            and type(entry[3]) is str
            and type(entry[6]) is bytes
            and (entry[7] is None or isinstance(entry[7], dict))
        ):
            raise ValueError(f"not a reader entry: {str(entry)[:80]}")
    return entries


def messages_of(
    entries: Sequence[tuple[Any, ...]], limits: dict[str, int]
) -> tuple[list[StreamMessage], list[Any]]:
    """The messages of checked entries and what each decodes to (a Publish,
    a NameValue, None for a tick, or the InvalidInput it raised). Never
    raises: an entry whose payload is not what its kind says is refused
    like bad input."""
    msgs: list[StreamMessage] = []
    decoded: list[Any] = []
    for seq, ts_ns, pending, subject, kind, payload, data, headers in entries:
        m = StreamMessage(subject, data, headers, seq, ts_ns, pending)
        msgs.append(m)
        try:
            if kind == PUBLISH:
                decoded.append(publish_from_fields(payload))
            elif kind == NAME_VALUE:
                decoded.append(NameValue(*payload))
            elif kind == REFUSED:
                decoded.append(InvalidInput(str(payload)))
            elif kind == UNDECODED:
                try:
                    decoded.append(decode(m, limits))
                except InvalidInput as e:
                    decoded.append(e.with_traceback(None))  # no cycle through the frame
            elif kind == TICK:
                decoded.append(None)
            else:
                raise ValueError(f"kind {kind!r}")
        except (TypeError, ValueError) as e:
            decoded.append(InvalidInput(f"the reader process handed over a broken entry: {e}"))
    return msgs, decoded


# ---------------------------------------------------------------- the process


class _Now:
    """What NatsBridge calls ``callFromThread`` on: here there is one thread."""

    @staticmethod
    def callFromThread(fn: Any, *args: Any) -> None:
        fn(*args)


def say(level: str, text: str) -> None:
    sys.stderr.write(f"{level} {text}\n")
    sys.stderr.flush()


class _Credits(asyncio.Protocol):
    """The server's stdin bytes: one per batch applied; EOF: stop."""

    def __init__(self, credits: asyncio.Semaphore, stop: asyncio.Event) -> None:
        self.credits = credits
        self.stop = stop

    def data_received(self, data: bytes) -> None:
        for _ in range(len(data)):
            self.credits.release()

    def eof_received(self) -> bool:
        self.stop.set()
        return False

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.stop.set()


def widen_pipe(fd: int) -> None:
    """Make the pipe to the server hold a whole batch (Linux: up to
    /proc/sys/fs/pipe-max-size, 1 MiB by default; a batch of 2,000 ten-row
    tables is about 0.9 MB). With the default 64 KiB the server could read
    a batch only as fast as this process, busy decoding the next one, got
    round to writing the rest of it."""
    size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if size is None:
        return
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            most = int(f.read())
        fcntl.fcntl(fd, size, min(most, PIPE_BYTES))
    except (OSError, ValueError):
        pass  # not a pipe, or not allowed: the default size works, slower


async def read_stream(args: argparse.Namespace) -> int:
    from qasino.nats.bridge import NatsBridge, sleep_unless_stopped

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    widen_pipe(1)
    credits = asyncio.Semaphore(args.in_flight)
    await loop.connect_read_pipe(lambda: _Credits(credits, stop), os.fdopen(0, "rb", 0))
    out, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(1, "wb", 0))
    limits = {
        "max_rows": args.max_rows,
        "max_columns": args.max_columns,
        "max_cell_bytes": args.max_cell_bytes,
    }
    bridge = NatsBridge(
        _Now(),
        args.servers.split(","),
        args.name,
        own_loop=False,
        consumers_made=args.consumer_index,
    )
    bridge.on_state = lambda up, why: say("info" if up else "warn", f"reader: {why}")
    if not await bridge.connect(stop):
        return 0
    sub = None
    next_seq: Optional[int] = args.start_seq
    fresh = True
    last_message = time.monotonic()
    stall_s = max(3.0, 4 * args.tick_s)
    while not stop.is_set():
        if not bridge.nc.is_connected:
            # nats-py is reconnecting (logged once): wait for it quietly.
            await sleep_unless_stopped(stop, 0.5)
            last_message = time.monotonic()
            continue
        try:
            if sub is None:
                sub = await bridge.consumer(args.stream, args.durable, next_seq)
                fresh = True
            msgs = await bridge.fetch(sub, args.batch, FETCH_TIMEOUT_S)
            now = time.monotonic()
            if not msgs:
                out.write(idle_frame())
                if now - last_message > stall_s:
                    # Ticks come every tick_s: silence means the consumer
                    # is gone (its node died). Make it again.
                    say(
                        "warn",
                        f"no message from stream {args.stream} for {now - last_message:.0f}s: "
                        "making the consumer again",
                    )
                    sub = None
                    last_message = now
                continue
            last_message = now
            msgs, gap = in_order(msgs, None if fresh else next_seq)
            fresh = False
            if msgs:
                frame = encode_batch(msgs, limits)
                await credits.acquire()
                out.write(frame)
                next_seq = msgs[-1].seq + 1
            if gap:
                # A batch went missing (a node died under it): start the
                # consumer again right after the last message handed over.
                sub = None
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - retried
            say("warn", f"NATS consumer: {e!r}; retrying")
            sub = None
            await sleep_unless_stopped(stop, 0.5)
    return 0


def reader_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m qasino.nats.reader")
    p.add_argument("--servers", required=True)
    p.add_argument("--name", default="qasino-reader")
    p.add_argument("--stream", required=True)
    p.add_argument("--durable", required=True)
    p.add_argument("--consumer-index", type=int, default=0)
    p.add_argument("--start-seq", type=int, default=None)
    p.add_argument("--tick-s", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=FETCH_BATCH)
    p.add_argument("--in-flight", type=int, default=IN_FLIGHT)
    p.add_argument("--max-rows", type=int, required=True)
    p.add_argument("--max-columns", type=int, required=True)
    p.add_argument("--max-cell-bytes", type=int, required=True)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from qasino.proc import GC_THRESHOLDS, set_parent_death_signal

    set_parent_death_signal()
    gc.set_threshold(*GC_THRESHOLDS)
    args = reader_args(argv)
    try:
        return asyncio.run(read_stream(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())

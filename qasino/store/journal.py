"""The writer generation's journal: every publish the store applied and
acknowledged, so that a store process killed with SIGKILL (or a crash)
loses none of the generation it was filling.

One file per writer generation, ``DB_DIR/journal/RUN-SEQ.journal``
(``RUN``: when the store started, in nanoseconds; ``SEQ``: the writer
generation's sequence number). A record is appended - one ``write``, no
fsync: a killed process loses nothing the kernel took; a machine crash may -
after the publish is applied and before it is acknowledged. A file is
deleted once its generation has been served as a snapshot; a clean
``close`` deletes them all (a clean restart starts empty, as always).

At start-up a store replays the files a killed run left (if their last
record is recent: a journal older than two generations describes a fleet
that has moved on) into its first writer generation, through the normal
publish path, and then deletes them.

Records are JSON arrays: ``["p", publish, remote_addr, rows]`` (a
publish), ``["n", table, column, value, identity]`` (a name/value update),
``["c", publish, age, published_at, rows]`` (a persisted table carried into
this generation, ``age`` generations after it was published); ``publish``
is the table's name, columns and types and the options. Each record is a
4-byte big-endian length and the JSON; a torn last record is ignored.
Rows are encoded in slices, letting other threads run in between (a
million-row table takes ~80 ms to encode).
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import orjson

from qasino.core.model import Publish, PublishOptions, Table

DIR = "journal"
_LEN = struct.Struct("!I")
_NAME = re.compile(r"^(\d+)-(\d+)\.journal$")


# Rows encoded per slice: the GIL is let go between slices.
ROW_SLICE = 10_000


def describe(publish: Publish) -> list[Any]:
    """A publish without its rows, as JSON values."""
    t, o = publish.table, publish.options
    return [
        t.tablename,
        list(t.column_names),
        list(t.column_types),
        o.identity,
        o.persist,
        o.static,
        o.update,
        list(o.keycols),
    ]


def rebuild(data: list[Any], rows: list[Any]) -> Publish:
    name, cols, types, identity, persist, static, update, keycols = data
    table = Table(name, tuple(cols), tuple(types), rows)
    return Publish(table, PublishOptions(identity, persist, static, update, tuple(keycols)))


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # not orjson's (e.g. an int beyond 64 bits): the stdlib's
        return json.dumps(value).encode("ascii")


def encode_rows(rows: Sequence[Any]) -> bytes:
    """A JSON array of the rows (lists or tuples), in slices."""
    if len(rows) <= ROW_SLICE:
        return _dumps(rows if isinstance(rows, (list, tuple)) else list(rows))
    parts = []
    for at in range(0, len(rows), ROW_SLICE):
        part = _dumps(list(rows[at : at + ROW_SLICE]))
        parts.append(part[1:-1])
        time.sleep(0)  # let the reactor thread run
    return b"[" + b",".join(p for p in parts if p) + b"]"


def with_rows(record: list[Any], rows: Sequence[Any]) -> bytes:
    """``record`` with the rows as its last element, as JSON."""
    head = _dumps(record)
    return head[:-1] + b"," + encode_rows(rows) + b"]"


class Journal:
    """Appends records to the current writer generation's file."""

    def __init__(self, db_dir: str) -> None:
        self.directory = os.path.join(db_dir, DIR)
        os.makedirs(self.directory, exist_ok=True)
        self.run = time.time_ns()
        self._fd: Optional[int] = None
        self._size = 0  # of the open file: where the next record starts
        self.broken: Optional[str] = None  # why appends stopped (logged once by the store)

    def _path(self, seq: int) -> str:
        return os.path.join(self.directory, f"{self.run}-{seq:012d}.journal")

    def start(self, seq: int) -> None:
        """Records from now on belong to writer generation ``seq``."""
        self._close_fd()
        try:
            self._fd = os.open(self._path(seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._size = os.fstat(self._fd).st_size
        except OSError as e:
            self.broken = f"cannot open {self._path(seq)}: {e.strerror or e}"

    def append(self, record: list[Any], rows: Optional[Sequence[Any]] = None) -> None:
        """One record; ``rows``: appended to it as its last element."""
        if self._fd is None:
            return
        data = _dumps(record) if rows is None else with_rows(record, rows)
        try:
            self._size += os.write(self._fd, _LEN.pack(len(data)) + data)
        except OSError as e:
            self.broken = f"cannot write the journal: {e.strerror or e}"
            self._close_fd()

    def mark(self) -> Optional[int]:
        """Where the next record will start (for :meth:`cut`), or None."""
        return None if self._fd is None else self._size

    def cut(self, mark: Optional[int]) -> None:
        """Drop what was appended since :meth:`mark` (publishes whose
        group commit failed: they are not in the generation)."""
        if self._fd is None or mark is None:
            return
        try:
            os.ftruncate(self._fd, mark)
            self._size = mark
        except OSError as e:
            self.broken = f"cannot cut the journal back: {e.strerror or e}"
            self._close_fd()

    def retire_before(self, seq: int) -> None:
        """Delete this run's files of generations before ``seq`` (served)."""
        for run, file_seq, path in journal_files(self.directory):
            if run == self.run and file_seq < seq:
                _unlink(path)

    def close(self, delete: bool = True) -> None:
        self._close_fd()
        if delete:
            for _, _, path in journal_files(self.directory):
                _unlink(path)

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def journal_files(directory: str) -> list[tuple[int, int, str]]:
    """(run, seq, path) of every journal file, oldest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        m = _NAME.match(name)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), os.path.join(directory, name)))
    return sorted(found)


def read_records(path: str) -> Iterator[list[Any]]:
    with open(path, "rb") as f:
        data = f.read()
    at = 0
    while at + _LEN.size <= len(data):
        (size,) = _LEN.unpack_from(data, at)
        end = at + _LEN.size + size
        if end > len(data):
            return  # torn: the process died in the middle of this write
        try:
            record = orjson.loads(data[at + _LEN.size : end])
        except orjson.JSONDecodeError:
            try:
                record = json.loads(data[at + _LEN.size : end])
            except ValueError:
                return
        if isinstance(record, list) and record:
            yield record
        at = end


def left_behind(db_dir: str) -> list[str]:
    """The journal files a previous run left, oldest first."""
    return [path for _, _, path in journal_files(os.path.join(db_dir, DIR))]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

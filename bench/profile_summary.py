"""Summarise a ``--py-spy`` profile (py-spy's collapsed ``raw`` format).

``python -m bench.profile_summary FILE [--top N] [--match TEXT]`` prints
the share of busy samples per thread role (reactor, writer, reader) and
per kind of work (JSON, validation, SQLite, logging, ...), then
Qasino's functions with the most samples on the stack (inclusive) and all
functions with the most at its top (self). Idle samples (waiting in epoll or on a queue) are left out.
``--match`` keeps only stacks containing TEXT.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Optional

FRAME_RE = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::\d+)?\)$")
# Thread roles, told apart by what runs on them (py-spy's raw stacks carry
# no thread names). Waiting frames count as idle.
ROLES = (
    ("Store.rotate", "writer (rotation)"),
    ("Store.publish", "writer (publish)"),
    ("Store.query", "reader (query)"),
    ("Engine.query_then", "reader (query)"),
)
IDLE = ("EPollReactor.doPoll", "Condition.wait", "Lock.acquire", "select (")
# Where a sample's time goes: the first category with a marker on its stack.
CATEGORIES = (
    # A reply's send() on loopback also runs the receiver's side of TCP.
    ("socket send (kernel)", ("Connection.writeSomeData",)),
    ("log lines (access log, info)", ("HTTPFactory.log", "Logger.emit", "untilConcludes")),
    ("JSON decode", ("decode_json", "json/decoder.py", "orjson.loads")),
    ("result rendering + JSON encode", ("result_shape", "stringify_rows", "encode_json")),
    ("table validation", ("qasino/core/tables.py",)),
    ("rotation", ("Store.rotate",)),
    ("SQLite write (publish)", ("Store.publish",)),
    ("query (SQLite read)", ("Store.query",)),
    ("ZeroMQ (txzmq, pyzmq)", ("txzmq/", "zmq/")),
    ("HTTP (twisted.web) + dispatch", ("twisted/web/",)),
    ("Deferreds, threads, reactor", ("twisted/", "threading.py")),
)


def parse(path: str) -> Iterator[tuple[list[str], int]]:
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if stack and count.isdigit():
                yield stack.split(";"), int(count)


def frame_name(frame: str) -> str:
    """``func (path/file.py)`` without the line number."""
    m = FRAME_RE.match(frame)
    return f"{m.group('func')} ({m.group('file')})" if m else frame


def role(stack: list[str]) -> str:
    if stack[-1].startswith(IDLE):
        return "idle"
    joined = ";".join(stack)
    if "Thread._bootstrap" not in joined:
        return "reactor thread"
    for mark, name in ROLES:
        if mark in joined:
            return name
    return "other thread"


def category(stack: list[str]) -> str:
    joined = ";".join(stack)
    for name, markers in CATEGORIES:
        if any(m in joined for m in markers):
            return name
    return "other"


def summarise(path: str, top: int, match: Optional[str]) -> str:
    roles: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    for stack, count in parse(path):
        if match and match not in ";".join(stack):
            continue
        where = role(stack)
        roles[where] += count
        if where == "idle":
            continue
        total += count
        categories[category(stack)] += count
        self_time[frame_name(stack[-1])] += count
        for name in {frame_name(f) for f in stack if "qasino/" in f}:
            inclusive[name] += count
    if not total:
        return f"{path}: no samples"
    lines = [f"{path}: {total} busy samples ({roles['idle']} idle left out)"]
    lines += [f"  {n / total:6.1%}  {r}" for r, n in roles.most_common() if r != "idle"]
    lines.append("  where the time goes:")
    lines += [f"  {n / total:6.1%}  {c}" for c, n in categories.most_common()]
    lines.append("  inclusive, Qasino's own functions (on the stack):")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    lines.append("  self (top of the stack):")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in self_time.most_common(top)]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_summary", description=__doc__)
    p.add_argument("files", nargs="+")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--match", default=None)
    args = p.parse_args(argv)
    for path in args.files:
        print(summarise(path, args.top, args.match))
    return 0


if __name__ == "__main__":
    sys.exit(main())

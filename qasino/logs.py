"""Logging for every command: one spelling of levels, stderr by default,
``--log-file``, ``--log-format text|json``.

Levels are ``debug``, ``info``, ``warning``, ``error``, ``critical`` in all
four commands; ``warn`` (the server's old spelling) is accepted too.

The server logs through :mod:`twisted.logger`; the JSON format writes one
object per line: ``time`` (ISO 8601, UTC), ``level``, ``namespace``,
``message`` (the formatted text), then the event's own fields (the format
keys), and ``traceback`` for a failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from twisted.logger import FileLogObserver, LogLevel

# Twisted is imported inside the server's functions only: the clients use
# the level helpers and the standard library's logging.

LEVELS = ("debug", "info", "warning", "error", "critical")
ALIASES = {"warn": "warning", "fatal": "critical"}
FORMATS = ("text", "json")


def level_name(text: str) -> str:
    """The one spelling of a level name; ArgumentTypeError if unknown."""
    name = text.strip().lower()
    name = ALIASES.get(name, name)
    if name not in LEVELS:
        raise argparse.ArgumentTypeError(
            f"unknown log level {text!r} (choose from {', '.join(LEVELS)})"
        )
    return name


def add_log_level_argument(parser: argparse.ArgumentParser, default: str = "info") -> None:
    parser.add_argument(
        "--log-level",
        type=level_name,
        default=default,
        metavar="{" + ",".join(LEVELS) + "}",
        help="least severe messages logged (default %(default)s)",
    )


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """--log-level, --log-file and --log-format (the server's)."""
    add_log_level_argument(parser)
    parser.add_argument(
        "--log-file",
        default=None,
        help="append log lines to this file instead of stderr",
    )
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="text lines, or one JSON object per line (default %(default)s)",
    )


def twisted_level(name: str) -> LogLevel:
    from twisted.logger import LogLevel

    return LogLevel.levelWithName("warn" if name == "warning" else name)


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)


def event_as_json(event: dict[str, Any]) -> str:
    """One Twisted log event as one JSON line."""
    from twisted.logger import formatEvent

    level = event.get("log_level")
    name = "info" if level is None else level.name
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc).isoformat(
            timespec="milliseconds"
        ),
        "level": "warning" if name == "warn" else name,
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in record or key in ("format", "message"):
            continue
        record[key] = _json_safe(value)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:
            record["traceback"] = str(failure)
    return json.dumps(record, ensure_ascii=False) + "\n"


def json_file_observer(out: IO[str]) -> FileLogObserver:
    from twisted.logger import FileLogObserver

    return FileLogObserver(out, event_as_json)


class LogFile:
    """A log file opened for appending, line by line, that :meth:`reopen`
    opens again by name (after logrotate moved it: SIGHUP)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.file: IO[str] = self._open()

    def _open(self) -> IO[str]:
        return open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def write(self, text: str) -> int:
        return self.file.write(text)

    def flush(self) -> None:
        self.file.flush()

    def reopen(self) -> None:
        """Open the path again; keep the old file if that fails."""
        try:
            new = self._open()
        except OSError:
            return
        old, self.file = self.file, new
        old.close()


def start_logging(level: str, fmt: str = "text", path: Optional[str] = None) -> Optional[LogFile]:
    """Send Twisted's log to stderr or ``path``, filtered by ``level``;
    returns the LogFile (None for stderr). Raises OSError if it cannot be opened."""
    from twisted.logger import (
        FilteringLogObserver,
        ILogObserver,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    log_file = LogFile(path) if path else None
    out: Any = log_file if log_file is not None else sys.stderr
    observer: ILogObserver = json_file_observer(out) if fmt == "json" else textFileLogObserver(out)
    predicate = LogLevelFilterPredicate(defaultLogLevel=twisted_level(level_name(level)))
    filtered: ILogObserver = FilteringLogObserver(observer, [predicate])
    globalLogBeginner.beginLoggingTo([filtered], redirectStandardIO=False)
    return log_file


def start_stdlib_logging(level: str, fmt: str = "%(asctime)s %(levelname)s %(message)s") -> None:
    """The clients: the standard library's logging, to stderr."""
    logging.basicConfig(format=fmt, level=getattr(logging, level_name(level).upper()))

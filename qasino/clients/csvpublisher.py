"""``qasino_csvpublisher``: publish a folder of CSV files every generation.

A blocking agent (plain pyzmq, no Twisted). It subscribes to the server's
generation signal (``GENSIG`` on the PUB port); on each signal it waits a
random 0..``--send-delay-max`` seconds, then reads every table named by its
index files, checks each CSV file locally (a broken or missing file is
reported, not sent) and sends the good ones as ``add_table_data``. Every
round ends with two tables about the round itself:

* ``qasino_csvpublisher_info(identity, update_epoch, nr_tables, nr_errors)``
* ``qasino_csvpublisher_tables(identity, tablename, read_epoch, read_time_s,
  mtime, nr_errors, error_message, nr_rows, filepath)``

Decisions worth knowing:

* Index, index-list and table-list files are re-read every round. In index
  files blank lines and ``#`` comments are skipped too (after the version
  line). A table is published under the name its index line gives it (as
  the original agent did); the file's own tablename line is only checked.
* An index, index-list or table-list file that cannot be read is reported as
  a row of ``qasino_csvpublisher_tables`` with an empty ``tablename``, its
  path and the reason, and counted in ``nr_errors``. An unreadable
  table-list file leaves the whitelist in force (only ``-T`` tables), so a
  broken whitelist never publishes everything.
* Nothing is queued: a table that cannot be sent is counted as an error of
  its round and sent again (re-read) next round. After the first transport
  failure of a round (server down or silent), the rest of that round is not
  sent, so a dead server costs at most one ``--timeout`` per round.
* ``-x N`` sends a round at once and then every N seconds, without
  subscribing. N should not be shorter than the server's generation: the
  server refuses a second publish of a table by one identity in a
  generation, which is then counted as an error.
* SIGTERM/SIGINT stop the agent within a fraction of a second, also in the
  middle of a send; it exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Optional, Protocol

import zmq

from qasino import __version__
from qasino.client import Publisher
from qasino.clients.transport import (
    DEFAULT_TIMEOUT_S,
    Hints,
    ServerError,
    TransportError,
    env_default,
)
from qasino.core import identifiers
from qasino.core.errors import InvalidInput
from qasino.core.model import Cell, Publish
from qasino.core.tables import parse_csv_publish
from qasino.identity import default_identity
from qasino.logs import add_log_level_argument, start_stdlib_logging

log = logging.getLogger("qasino.csvpublisher")

ZMQ_RPC_PORT = 15598
ZMQ_PUBSUB_PORT = 15596
HTTP_PORT = 15597
HTTPS_PORT = 443
GENSIG_TAG = b"GENSIG"

INFO_TABLE = "qasino_csvpublisher_info"
TABLES_TABLE = "qasino_csvpublisher_tables"

INFO_COLUMNS = (
    ("identity", "text"),
    ("update_epoch", "integer"),
    ("nr_tables", "integer"),
    ("nr_errors", "integer"),
)
TABLES_COLUMNS = (
    ("identity", "text"),
    ("tablename", "text"),
    ("read_epoch", "real"),
    ("read_time_s", "real"),
    ("mtime", "integer"),
    ("nr_errors", "integer"),
    ("error_message", "text"),
    ("nr_rows", "integer"),
    ("filepath", "text"),
)

Clock = Callable[[], float]

HINTS = Hints(
    http="--use-http",
    https="-s/--use-https",
    zmq="no -s/--use-http",
    skip_verify="-k/--skip-ssl-verify",
    cacert="--cacert",
    credentials="-u USER -w PASSWORD (or QASINO_CLIENT_USERNAME / QASINO_CLIENT_PASSWORD)",
)


class Sender(Protocol):
    """Anything with the transports' ``request``: send one op, return the reply."""

    def request(self, message: dict[str, Any]) -> dict[str, Any]: ...


# ---------------------------------------------------------------------------
# Index, index-list and table-list files


@dataclass(frozen=True)
class IndexEntry:
    """One table line of an index file, its path resolved."""

    tablename: str
    filepath: str


@dataclass
class TableReport:
    """What happened to one table (or one unreadable list file) in a round."""

    tablename: str
    filepath: str
    read_epoch: float
    read_time_s: float = 0.0
    mtime: Optional[int] = None
    nr_rows: int = 0
    error: Optional[str] = None
    publish: Optional[Publish] = field(default=None, repr=False)
    sent: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def _list_lines(text: str) -> list[str]:
    """Non-blank lines that are not ``#`` comments, stripped."""
    lines = []
    for line in text.splitlines():
        item = line.strip()
        if item and not item.startswith("#"):
            lines.append(item)
    return lines


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class IndexFileError(Exception):
    """An index file that is not in the index format (its message names the file)."""


_VERSION_RE = re.compile(r"\d+(?:\.\d+)*\Z")


def parse_index(text: str, index_path: str) -> list[IndexEntry]:
    """The tables of an index file: the version line, then one table per
    line, ``FILENAME,TABLENAME`` or ``TABLENAME`` (file ``TABLENAME.csv``),
    relative to the index file's folder (absolute file names stay as they are).

    A first line that is not a version number (``1``, ``2.0``) raises
    IndexFileError naming the file: it would otherwise be a table silently
    taken for the version line. An empty file lists no tables.
    """
    folder = os.path.dirname(index_path)
    all_lines = text.splitlines()
    first = all_lines[0].strip() if all_lines else ""
    if all_lines and not _VERSION_RE.match(first):
        raise IndexFileError(
            f"index file {index_path}: the first line must be a version number "
            f"(e.g. 1), not {first[:80]!r}; none of its tables were read"
        )
    lines = all_lines[1:]
    entries = []
    for item in _list_lines("\n".join(lines)):
        if "," in item:
            filename, _, tablename = item.partition(",")
            filename, tablename = filename.strip(), tablename.strip()
        else:
            tablename, filename = item, item + ".csv"
        entries.append(IndexEntry(tablename=tablename, filepath=os.path.join(folder, filename)))
    return entries


def parse_list_file(text: str) -> list[str]:
    """An index-list or table-list file: one item per line, ``#`` comments and
    blank lines skipped."""
    return _list_lines(text)


def _source_error(path: str, what: str, exc: OSError, clock: Clock) -> TableReport:
    reason = f"cannot read {what} {path}: {_os_reason(exc)}"
    log.error("%s", reason)
    return TableReport(tablename="", filepath=path, read_epoch=clock(), error=reason)


@dataclass
class Sources:
    """The indexes and whitelist of one round, plus the list files that failed."""

    indexes: list[str]
    whitelist: Optional[set[str]]
    errors: list[TableReport]


def load_sources(
    indexes: Sequence[str],
    index_list: Optional[str],
    tables: Sequence[str],
    table_list: Optional[str],
    clock: Clock = time.time,
) -> Sources:
    """Combine ``-i`` with the ``-f`` file and ``-T`` with the ``-t`` file.

    The whitelist is None (publish every table) unless ``-T`` or ``-t`` is given.
    """
    errors: list[TableReport] = []
    all_indexes = list(indexes)
    if index_list:
        try:
            all_indexes.extend(parse_list_file(_read_text(index_list)))
        except OSError as e:
            errors.append(_source_error(index_list, "index list file", e, clock))
    whitelist: Optional[set[str]] = None
    if tables or table_list:
        whitelist = set(tables)
        if table_list:
            try:
                whitelist.update(parse_list_file(_read_text(table_list)))
            except OSError as e:
                errors.append(_source_error(table_list, "table list file", e, clock))
    return Sources(indexes=all_indexes, whitelist=whitelist, errors=errors)


# ---------------------------------------------------------------------------
# Reading the tables


def read_table(entry: IndexEntry, identity: str, clock: Clock = time.time) -> TableReport:
    """Read and check one CSV file; never raises."""
    report = TableReport(tablename=entry.tablename, filepath=entry.filepath, read_epoch=clock())
    try:
        try:
            report.mtime = int(os.stat(entry.filepath).st_mtime)
            with open(entry.filepath, "rb") as f:
                data = f.read()
        except OSError as e:
            report.error = f"cannot read file: {_os_reason(e)}"
            return report
        tablename = entry.tablename
        if not identifiers.is_identifier(tablename):
            report.error = (
                f"invalid tablename {tablename!r} in the index: must match [A-Za-z][A-Za-z0-9_]*"
            )
            return report
        if tablename.lower().startswith(identifiers.INTERNAL_PREFIX):
            report.error = f"tablename {tablename!r} in the index is reserved for the server"
            return report
        try:
            # The index names the table; the file's second line is not read
            # (old files keep a description there), as the original agent did.
            publish = parse_csv_publish(data, identity, tablename=tablename)
        except InvalidInput as e:
            report.error = f"invalid CSV: {e.message}"
            return report
        report.publish = publish
        report.nr_rows = len(publish.table.rows)
        return report
    finally:
        report.read_time_s = max(0.0, clock() - report.read_epoch)
        if report.error is not None:
            log.warning("table %s (%s): %s", entry.tablename, entry.filepath, report.error)


def read_tables(
    indexes: Iterable[str],
    whitelist: Optional[set[str]],
    identity: str,
    clock: Clock = time.time,
) -> list[TableReport]:
    """Read every (whitelisted) table of every index, in order.

    An index file that cannot be read gives one error report (empty tablename,
    the index path); a missing or broken CSV file gives its table's report
    with the reason; the others are read all the same.
    """
    reports: list[TableReport] = []
    for index_path in indexes:
        try:
            entries = parse_index(_read_text(index_path), index_path)
        except OSError as e:
            reports.append(_source_error(index_path, "index file", e, clock))
            continue
        except IndexFileError as e:
            log.error("%s", e)
            reports.append(
                TableReport(tablename="", filepath=index_path, read_epoch=clock(), error=str(e))
            )
            continue
        if not entries:
            log.warning("no tables listed in index %s", index_path)
        for entry in entries:
            if whitelist is not None and entry.tablename not in whitelist:
                continue
            reports.append(read_table(entry, identity, clock))
    return reports


# ---------------------------------------------------------------------------
# Messages


def publish_message(publish: Publish, tablename: Optional[str] = None) -> dict[str, Any]:
    """The JSON ``add_table_data`` request for a parsed table."""
    table = publish.table
    options = publish.options
    message: dict[str, Any] = {
        "op": "add_table_data",
        "identity": options.identity,
        "table": {
            "tablename": tablename or table.tablename,
            "column_names": list(table.column_names),
            "column_types": list(table.column_types),
            "rows": [list(row) for row in table.rows],
        },
    }
    if options.persist:
        message["persist"] = 1
    if options.static:
        message["static"] = 1
    if options.update:
        message["update"] = 1
    if options.keycols:
        message["keycols"] = ";".join(options.keycols)
    return message


def _table_message(
    identity: str,
    tablename: str,
    columns: Sequence[tuple[str, str]],
    rows: list[list[Cell]],
) -> dict[str, Any]:
    return {
        "op": "add_table_data",
        "identity": identity,
        "table": {
            "tablename": tablename,
            "column_names": [name for name, _ in columns],
            "column_types": [kind for _, kind in columns],
            "rows": rows,
        },
    }


def info_message(
    identity: str, update_epoch: float, nr_tables: int, nr_errors: int
) -> dict[str, Any]:
    return _table_message(
        identity, INFO_TABLE, INFO_COLUMNS, [[identity, int(update_epoch), nr_tables, nr_errors]]
    )


def tables_message(identity: str, reports: Sequence[TableReport]) -> dict[str, Any]:
    rows: list[list[Cell]] = [
        [
            identity,
            r.tablename,
            r.read_epoch,
            round(r.read_time_s, 6),
            r.mtime,
            0 if r.ok else 1,
            r.error or "",
            r.nr_rows,
            r.filepath,
        ]
        for r in reports
    ]
    return _table_message(identity, TABLES_TABLE, TABLES_COLUMNS, rows)


# ---------------------------------------------------------------------------
# One round


@dataclass
class RoundSettings:
    identity: str
    indexes: Sequence[str] = ()
    index_list: Optional[str] = None
    tables: Sequence[str] = ()
    table_list: Optional[str] = None


@dataclass
class RoundResult:
    reports: list[TableReport]
    nr_tables: int
    nr_errors: int
    info: dict[str, Any]
    tables: dict[str, Any]
    info_sent: bool = False


def run_round(
    sender: Sender,
    settings: RoundSettings,
    clock: Clock = time.time,
    stop: Optional[threading.Event] = None,
) -> RoundResult:
    """Read every table, send the good ones, then the two info tables.

    Counts: ``nr_tables`` tables read and sent, ``nr_errors`` tables (or list
    files) that could not be read or sent. After a transport failure the rest
    of the round is not sent (each such table is an error "not sent"); a
    server error reply fails only its table. Nothing is kept for later.
    """
    sources = load_sources(
        settings.indexes, settings.index_list, settings.tables, settings.table_list, clock
    )
    reports = sources.errors + read_tables(
        sources.indexes, sources.whitelist, settings.identity, clock
    )
    unreachable: Optional[str] = None
    for report in reports:
        if report.publish is None:
            continue
        if stop is not None and stop.is_set():
            report.error = "not sent: the agent is stopping"
            continue
        if unreachable is not None:
            report.error = f"not sent: server unreachable in this round ({unreachable})"
            continue
        log.debug("sending table %s (%d rows)", report.tablename, report.nr_rows)
        try:
            sender.request(publish_message(report.publish, report.tablename))
        except TransportError as e:
            unreachable = str(e)
            report.error = f"send failed: {e}"
            log.warning("sending table %s: %s", report.tablename, e)
        except ServerError as e:
            report.error = f"server refused the table: {e}"
            log.warning("server refused table %s: %s", report.tablename, e)
        else:
            report.sent = True
            log.debug("sent table %s", report.tablename)
    nr_tables = sum(1 for r in reports if r.sent)
    nr_errors = sum(1 for r in reports if not r.ok)
    result = RoundResult(
        reports=reports,
        nr_tables=nr_tables,
        nr_errors=nr_errors,
        info=info_message(settings.identity, clock(), nr_tables, nr_errors),
        tables=tables_message(settings.identity, reports),
    )
    if unreachable is None and not (stop is not None and stop.is_set()):
        result.info_sent = True
        for message in (result.info, result.tables):
            try:
                sender.request(message)
            except (TransportError, ServerError) as e:
                result.info_sent = False
                log.warning("sending table %s: %s", message["table"]["tablename"], e)
                if isinstance(e, TransportError):
                    break
    log.info(
        "round done: %d tables sent, %d errors%s",
        nr_tables,
        nr_errors,
        "" if result.info_sent else " (info tables not sent)",
    )
    return result


# ---------------------------------------------------------------------------
# Stopping


class Interrupted(BaseException):
    """Raised by the signal handler to abandon a send in progress."""


class Stopper:
    """SIGTERM/SIGINT set ``event``; during a send they also raise Interrupted."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._in_send = False

    def handle(self, signum: int, frame: Optional[FrameType]) -> None:
        log.info("got signal %d, stopping", signum)
        self.event.set()
        if self._in_send:
            self._in_send = False
            raise Interrupted()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self.handle)
        signal.signal(signal.SIGINT, self.handle)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if a stop was requested."""
        return self.event.wait(max(0.0, seconds))


class InterruptibleSender:
    """Wraps a transport so that a stop signal aborts a request in progress."""

    def __init__(self, sender: Sender, stopper: Stopper) -> None:
        self.sender = sender
        self.stopper = stopper

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        if self.stopper.event.is_set():
            raise Interrupted()
        self.stopper._in_send = True
        try:
            return self.sender.request(message)
        finally:
            self.stopper._in_send = False


# ---------------------------------------------------------------------------
# The loops


def _open_sub(context: zmq.Context[Any], address: str) -> zmq.Socket[Any]:
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, GENSIG_TAG)
    sub.connect(address)
    return sub


def _describe_signal(frame: bytes) -> str:
    _, _, body = frame.partition(b"\x00")
    try:
        info = json.loads(body)
        return f"generation {info.get('generation_number')} from {info.get('identity')}"
    except (ValueError, AttributeError):
        return "generation signal"


def run_on_signals(
    settings: RoundSettings,
    sender: Sender,
    stopper: Stopper,
    address: str,
    send_delay_max: float,
    gen_signal_timeout: float,
    poll_s: float = 0.2,
) -> None:
    """Wait for generation signals; after each, a random delay, then a round."""
    context: zmq.Context[Any] = zmq.Context.instance()
    log.info("subscribing to generation signals on %s", address)
    sub = _open_sub(context, address)
    last_signal = time.monotonic()
    try:
        while not stopper.event.is_set():
            if not sub.poll(int(poll_s * 1000)):
                if time.monotonic() - last_signal > gen_signal_timeout:
                    log.warning(
                        "no generation signal for %gs: resubscribing to %s",
                        gen_signal_timeout,
                        address,
                    )
                    sub.close(linger=0)
                    sub = _open_sub(context, address)
                    last_signal = time.monotonic()
                continue
            frames = []
            while True:  # several queued signals make one round
                try:
                    frames.append(sub.recv_multipart(zmq.NOBLOCK)[0])
                except zmq.Again:
                    break
            signals = [f for f in frames if f.startswith(GENSIG_TAG)]
            if not signals:
                continue
            last_signal = time.monotonic()
            delay = random.uniform(0.0, send_delay_max) if send_delay_max > 0 else 0.0
            log.info("%s: sending in %.1fs", _describe_signal(signals[-1]), delay)
            if stopper.wait(delay):
                break
            run_round(sender, settings, stop=stopper.event)
    finally:
        sub.close(linger=0)


def run_on_interval(
    settings: RoundSettings, sender: Sender, stopper: Stopper, interval: float
) -> None:
    """A round at once, then every ``interval`` seconds (missed ones are skipped)."""
    log.info("sending every %gs (no generation signal)", interval)
    next_round = time.monotonic()
    while not stopper.event.is_set():
        run_round(sender, settings, stop=stopper.event)
        next_round += interval
        now = time.monotonic()
        if next_round < now:
            next_round = now
        if stopper.wait(next_round - now):
            break


# ---------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qasino_csvpublisher",
        description="Publish the CSV files named by index files to a Qasino server "
        "after every generation signal (or every -x seconds). Index, list and CSV "
        "formats: docs/protocol.md.",
        epilog="Environment: QASINO_CLIENT_USERNAME and QASINO_CLIENT_PASSWORD give the "
        "user name and password when -u/-w are not given.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "-I", "--identity", default=None, help="identity (default: IP or MAC, as the original)"
    )
    p.add_argument("-H", "--hostname", default="localhost", help="server (default %(default)s)")
    p.add_argument(
        "-p",
        "--port",
        type=int,
        default=None,
        help=f"server port: ZeroMQ RPC (default {ZMQ_RPC_PORT}), or HTTPS "
        f"(default {HTTPS_PORT}) / HTTP (default {HTTP_PORT})",
    )
    p.add_argument(
        "-P",
        "--pubsub-port",
        type=int,
        default=ZMQ_PUBSUB_PORT,
        help="generation signal port (default %(default)s)",
    )
    p.add_argument(
        "-i",
        "--index",
        dest="indexes",
        action="append",
        default=[],
        help="index file: a version line, then FILENAME,TABLENAME or TABLENAME per line "
        "(repeatable; default: none)",
    )
    p.add_argument(
        "-f",
        "--index-list",
        default=None,
        help="file listing index files, one per line (default: none)",
    )
    p.add_argument(
        "-T",
        "--table",
        dest="tables",
        action="append",
        default=[],
        help="only publish this table (repeatable; default: every table)",
    )
    p.add_argument(
        "-t",
        "--table-list",
        default=None,
        help="file listing the tables to publish, one per line (default: every table)",
    )
    p.add_argument(
        "-d",
        "--send-delay-max",
        type=float,
        default=15.0,
        help="random delay 0..N seconds after a signal (default %(default)g)",
    )
    p.add_argument(
        "-x",
        "--interval",
        type=float,
        default=None,
        help="send every N seconds instead of waiting for generation signals "
        "(default: on each signal)",
    )
    transport = p.add_mutually_exclusive_group()
    transport.add_argument(
        "-s", "--use-https", action="store_true", help="send over HTTPS (default: ZeroMQ)"
    )
    transport.add_argument(
        "--use-http", action="store_true", help="send over plain HTTP (default: ZeroMQ)"
    )
    p.add_argument(
        "-k",
        "--skip-ssl-verify",
        action="store_true",
        help="do not check the server's certificate (default: checked)",
    )
    p.add_argument(
        "--cacert",
        default=None,
        metavar="FILE",
        help="PEM file of the CA(s) to trust for the server's certificate "
        "(default: the system's CAs)",
    )
    p.add_argument(
        "-u",
        "--username",
        default=None,
        help="HTTP(S) basic auth user (default: $QASINO_CLIENT_USERNAME, else none)",
    )
    p.add_argument(
        "-w",
        "--password",
        default=None,
        help="HTTP(S) basic auth password (default: $QASINO_CLIENT_PASSWORD, else none)",
    )
    p.add_argument(
        "-g",
        "--gen-signal-timeout",
        type=float,
        default=120.0,
        help="resubscribe when no generation signal came for N seconds (default %(default)g)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds to wait for each reply (default %(default)g)",
    )
    p.add_argument(
        "--nats",
        default=None,
        metavar="URL[,URL...]",
        help="publish into the NATS JetStream stream QASINO and take the generation "
        "signal from subject qasino.gensig, instead of -H/-p/-P (default: off)",
    )
    add_log_level_argument(p)
    return p


def make_sender(args: argparse.Namespace) -> tuple[Any, str]:
    """A :class:`qasino.client.Publisher` for the flags (or the NATS one), and
    where it sends (for the log)."""
    if args.nats:
        from qasino.nats import require_client

        require_client("qasino_csvpublisher")
        from qasino.nats.client import NatsPublisher

        client = NatsPublisher(args.nats, args.timeout, name="qasino_csvpublisher")
        return client, client.endpoint
    if args.use_https or args.use_http:
        scheme = "https" if args.use_https else "http"
        port = args.port or (HTTPS_PORT if args.use_https else HTTP_PORT)
        publisher = Publisher(
            f"{scheme}://{args.hostname}:{port}",
            identity=args.identity,
            username=args.username or env_default("QASINO_CLIENT_USERNAME"),
            password=args.password or env_default("QASINO_CLIENT_PASSWORD"),
            verify=not args.skip_ssl_verify,
            timeout_s=args.timeout,
            cacert=args.cacert,
            hints=HINTS,
        )
    else:
        publisher = Publisher(
            f"tcp://{args.hostname}:{args.port or ZMQ_RPC_PORT}",
            identity=args.identity,
            timeout_s=args.timeout,
        )
    return publisher, publisher.endpoint


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.indexes and not args.index_list:
        parser.error("give at least one index file (-i) or an index list file (-f)")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if args.interval is not None and args.interval <= 0:
        parser.error("-x/--interval must be positive")
    if args.send_delay_max < 0:
        parser.error("-d/--send-delay-max must not be negative")
    if args.gen_signal_timeout <= 0:
        parser.error("-g/--gen-signal-timeout must be positive")
    start_stdlib_logging(args.log_level)
    logging.getLogger("urllib3").setLevel(logging.WARNING)

    identity = args.identity or default_identity()
    settings = RoundSettings(
        identity=identity,
        indexes=list(args.indexes),
        index_list=args.index_list,
        tables=list(args.tables),
        table_list=args.table_list,
    )
    stopper = Stopper()
    stopper.install()
    transport, where = make_sender(args)
    sender = InterruptibleSender(transport, stopper)
    log.info("qasino_csvpublisher %s starting: sending to %s", identity, where)
    try:
        if args.interval is not None:
            run_on_interval(settings, sender, stopper, args.interval)
        elif args.nats:
            from qasino.nats.client import run_on_nats_signals

            run_on_nats_signals(
                settings, sender, stopper, transport, args.send_delay_max, args.gen_signal_timeout
            )
        else:
            address = f"tcp://{args.hostname}:{args.pubsub_port}"
            run_on_signals(
                settings,
                sender,
                stopper,
                address,
                args.send_delay_max,
                args.gen_signal_timeout,
            )
    except Interrupted:
        pass
    finally:
        transport.close()
    log.info("qasino_csvpublisher stopped")
    return 0

"""``qasinosql``: an SQL prompt (and a scripting tool) for a Qasino server."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Optional, TextIO

from qasino import __version__
from qasino.client import Publisher
from qasino.clients.transport import (
    DEFAULT_TIMEOUT_S,
    Hints,
    ServerError,
    TransportError,
    env_default,
)
from qasino.core.render import render_text
from qasino.logs import add_log_level_argument, start_stdlib_logging

PROMPT = "qasino> "
CONTINUATION = "      > "
HISTORY_FILE = os.path.join(os.path.expanduser("~"), ".qasinosql_history")


USER_ENV = "QASINO_SQLCLIENT_USERNAME"
PASSWORD_ENV = "QASINO_SQLCLIENT_PASSWORD"
HINTS = Hints(
    http="--use-http",
    https="-t/--use-https",
    zmq="-z/--use-zmq",
    skip_verify="-s/--skip-ssl-verify",
    cacert="--cacert",
    credentials=f"-u USER -w PASSWORD (or {USER_ENV} / {PASSWORD_ENV})",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qasinosql",
        description="Query a Qasino server with SQL: an interactive prompt on a terminal, "
        "statements from stdin otherwise, or -q QUERY.",
        epilog=f"Environment: {USER_ENV} and {PASSWORD_ENV} give the HTTPS user name and "
        "password when -u/-w are not given. With -u and no password on a terminal, "
        "qasinosql asks for it.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "-H", "--hostname", default="localhost", help="server host (default %(default)s)"
    )
    p.add_argument(
        "-p",
        "--port",
        type=int,
        default=None,
        help="server port (default: 15598 for ZeroMQ, 443 for HTTPS, 15597 for HTTP)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("-z", "--use-zmq", action="store_true", help="ZeroMQ JSON RPC (the default)")
    mode.add_argument(
        "-t",
        "--use-https",
        action="store_true",
        help="HTTPS with basic auth, port 443 (default: ZeroMQ)",
    )
    mode.add_argument(
        "--use-http", action="store_true", help="plain HTTP, port 15597 (default: ZeroMQ)"
    )
    p.add_argument(
        "-u",
        "--username",
        default=env_default(USER_ENV),
        help=f"HTTP(S) basic auth user name (default: ${USER_ENV}, else none)",
    )
    p.add_argument(
        "-w",
        "--password",
        default=env_default(PASSWORD_ENV),
        help=f"HTTP(S) basic auth password (default: ${PASSWORD_ENV}; asked for on a "
        "terminal when -u is given without it)",
    )
    p.add_argument(
        "-s",
        "--skip-ssl-verify",
        action="store_true",
        help="do not check the server's certificate (default: checked)",
    )
    p.add_argument(
        "--cacert",
        default=None,
        metavar="FILE",
        help="PEM file of the CA(s) to trust for the server's certificate, e.g. a "
        "self-signed one (default: the system's CAs)",
    )
    p.add_argument(
        "-q",
        "--query",
        action="append",
        default=[],
        help="run this statement and exit (repeatable; default: prompt)",
    )
    p.add_argument(
        "-I", "--identity", default=None, help="identity sent with requests (default: none)"
    )
    p.add_argument(
        "--format",
        choices=["text", "csv", "json"],
        default="text",
        help="how results are printed (default %(default)s)",
    )
    p.add_argument(
        "--use-write-db",
        action="store_true",
        help="query the generation being written, not the snapshot (default: off)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds to wait for each reply (default %(default)g)",
    )
    add_log_level_argument(p, default="warning")
    return p


def make_transport(args: argparse.Namespace) -> Any:
    """A :class:`qasino.client.Publisher` for the flags (its ``request``
    sends one protocol message)."""
    if args.use_https or args.use_http:
        scheme = "https" if args.use_https else "http"
        port = args.port or (443 if args.use_https else 15597)
        return Publisher(
            f"{scheme}://{args.hostname}:{port}",
            identity=args.identity,
            username=args.username,
            password=args.password,
            verify=not args.skip_ssl_verify,
            timeout_s=args.timeout,
            cacert=args.cacert,
            hints=HINTS,
        )
    return Publisher(
        f"tcp://{args.hostname}:{args.port or 15598}", args.identity, timeout_s=args.timeout
    )


def ask_password(args: argparse.Namespace, stdin: TextIO = sys.stdin) -> None:
    """-u without -w (nor its variable) on a terminal: ask, without echo."""
    if args.username is not None and args.password is None and stdin.isatty():
        import getpass

        try:
            args.password = getpass.getpass(f"Password for {args.username}: ")
        except (EOFError, KeyboardInterrupt):
            sys.stderr.write("\n")
            raise SystemExit(1) from None


def format_reply(reply: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(reply) + "\n"
    table = reply.get("table") or {}
    names = [str(n) for n in table.get("column_names", [])]
    rows = [["" if c is None else str(c) for c in row] for row in table.get("rows", [])]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        writer.writerows(rows)
        return out.getvalue()
    return render_text(names, rows, bool(reply.get("truncated")))


class Session:
    """One client session: its transport, settings and output streams."""

    def __init__(
        self,
        transport: Any,
        fmt: str = "text",
        use_write_db: bool = False,
        identity: Optional[str] = None,
        out: TextIO = sys.stdout,
        err: TextIO = sys.stderr,
    ) -> None:
        self.transport = transport
        self.fmt = fmt
        self.use_write_db = use_write_db
        self.identity = identity
        self.out = out
        self.err = err

    def handle_set(self, statement: str) -> Optional[bool]:
        """``SET use_write_db = true;``: a client-side setting. None if not a SET."""
        words = statement.rstrip(";").replace("=", " = ").split()
        if not words or words[0].lower() != "set":
            return None
        if len(words) == 4 and words[1].lower() == "use_write_db" and words[2] == "=":
            value = words[3].lower()
            if value in ("true", "1", "on", "yes", "false", "0", "off", "no"):
                self.use_write_db = value in ("true", "1", "on", "yes")
                self.out.write(f"use_write_db = {str(self.use_write_db).lower()}\n")
                return True
        self.err.write("SQL error: usage: SET use_write_db = true|false;\n")
        return False

    def run(self, statement: str) -> bool:
        """Run one statement; print its result or error. True on success."""
        handled = self.handle_set(statement)
        if handled is not None:
            return handled
        message: dict[str, Any] = {"op": "query", "sql": statement}
        if self.use_write_db:
            message["use_write_db"] = True
        if self.identity:
            message["identity"] = self.identity
        try:
            reply = self.transport.request(message)
        except ServerError as e:
            self.err.write(f"SQL error: {e}\n")
            return False
        except TransportError as e:
            self.err.write(f"qasinosql: {e}\n")
            return False
        self.out.write(format_reply(reply, self.fmt))
        self.out.flush()
        return True


def _setup_readline() -> None:
    try:
        import readline
    except ImportError:  # pragma: no cover - platforms without readline
        return
    try:
        readline.read_history_file(HISTORY_FILE)
    except OSError:
        pass
    readline.set_history_length(1000)
    import atexit

    def save() -> None:
        try:
            readline.write_history_file(HISTORY_FILE)
        except OSError:
            pass

    atexit.register(save)


def statement_complete(text: str) -> bool:
    return text.rstrip().endswith(";")


def interactive(session: Session) -> int:
    _setup_readline()
    buffer: list[str] = []
    while True:
        try:
            line = input(CONTINUATION if buffer else PROMPT)
        except EOFError:
            sys.stdout.write("\n")
            return 0
        except KeyboardInterrupt:
            # Ctrl-C clears the statement being typed, it does not quit.
            sys.stdout.write("\n")
            buffer = []
            continue
        if not buffer and not line.strip():
            continue
        buffer.append(line)
        text = "\n".join(buffer)
        if not statement_complete(text):
            continue
        buffer = []
        statement = text.strip()
        if statement.rstrip(";").strip().lower() in ("quit", "exit"):
            return 0
        try:
            session.run(statement)
        except KeyboardInterrupt:
            # The request was cut off: drop the connection, or the next
            # statement fails (a ZeroMQ REQ socket that missed its reply
            # cannot send again).
            session.transport.close()
            sys.stdout.write("\n")


def split_statements(lines: Iterable[str]) -> Iterator[str]:
    """Statements from lines: each ends with a line ending in ';'; a last
    statement without its ';' counts too."""
    buffer: list[str] = []
    for line in lines:
        if not buffer and not line.strip():
            continue
        buffer.append(line.rstrip("\n"))
        text = "\n".join(buffer)
        if statement_complete(text):
            buffer = []
            yield text.strip()
    rest = "\n".join(buffer).strip()
    if rest:
        yield rest


def batch(session: Session, stdin: TextIO) -> int:
    """Statements from a pipe or file: no prompts; exit 1 if any failed."""
    ok = True
    for statement in split_statements(stdin):
        if statement.rstrip(";").strip().lower() in ("quit", "exit"):
            break
        ok = session.run(statement) and ok
    return 0 if ok else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    start_stdlib_logging(args.log_level)
    if args.use_https or args.use_http:
        ask_password(args)
    transport = make_transport(args)
    session = Session(transport, args.format, args.use_write_db, args.identity)
    try:
        if args.query:
            ok = True
            for query in args.query:
                ok = session.run(query) and ok
            return 0 if ok else 1
        if not sys.stdin.isatty():
            return batch(session, sys.stdin)
        return interactive(session)
    finally:
        transport.close()

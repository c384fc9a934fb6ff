"""``qasino_publish``: publish one table (JSON or CSV) to a Qasino server."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, Optional

from qasino import __version__
from qasino.client import Publisher
from qasino.clients.transport import (
    DEFAULT_TIMEOUT_S,
    Hints,
    ServerError,
    TransportError,
    env_default,
)
from qasino.core.errors import InvalidInput
from qasino.core.tables import parse_csv_publish, parse_json_publish
from qasino.identity import default_identity
from qasino.logs import add_log_level_argument, start_stdlib_logging

USER_ENV = "QASINO_CLIENT_USERNAME"
PASSWORD_ENV = "QASINO_CLIENT_PASSWORD"
HINTS = Hints(
    http="-t/--use-http",
    https="-s/--use-https",
    zmq="-z/--use-zmq",
    skip_verify="-k/--skip-ssl-verify",
    cacert="--cacert",
    credentials=f"-u USER -w PASSWORD (or {USER_ENV} / {PASSWORD_ENV})",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qasino_publish",
        description="Publish one table to Qasino. JSON input is the table object "
        '{"tablename", "column_names", "column_types", "rows"}; CSV input is the '
        "publish format (docs/protocol.md). Sends over HTTPS to port 443 unless told "
        "otherwise, as the original did.",
        epilog=f"Environment: {USER_ENV} and {PASSWORD_ENV} give the user name and "
        "password when -u/-w are not given.",
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
        help="server port (default: 443 for HTTPS, 15597 for HTTP, 15598 for ZeroMQ)",
    )
    p.add_argument(
        "-I",
        "--identity",
        default=None,
        help="publisher identity (default: IP or MAC, as the original)",
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
        help=f"HTTP(S) basic auth password (default: ${PASSWORD_ENV}, else none)",
    )
    p.add_argument(
        "-P",
        "--persist",
        action="store_true",
        help="carry the table into every later generation (default: off)",
    )
    p.add_argument(
        "-S",
        "--static",
        action="store_true",
        help="store the table in the static DB, kept across restarts (default: off)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "-t", "--use-http", action="store_true", help="plain HTTP, port 15597 (default: HTTPS)"
    )
    mode.add_argument(
        "-s", "--use-https", action="store_true", help="HTTPS (the default, port 443)"
    )
    mode.add_argument(
        "-z", "--use-zmq", action="store_true", help="ZeroMQ, port 15598 (default: HTTPS)"
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
        "-d",
        "--data-format",
        choices=["json", "csv"],
        default="json",
        help="input format (default %(default)s)",
    )
    p.add_argument(
        "-f", "--file", "--filename", dest="file", default="-", help="input file (default: stdin)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds to wait for the reply (default %(default)g)",
    )
    p.add_argument(
        "--nats",
        default=None,
        metavar="URL[,URL...]",
        help="publish into the NATS JetStream stream QASINO (subject qasino.publish.IDENTITY) "
        "instead of to a server; sent once JetStream acknowledges it (default: off)",
    )
    add_log_level_argument(p, default="warning")
    return p


def build_request(data: bytes, args: argparse.Namespace) -> dict[str, Any]:
    """Check the table locally and build the add_table_data request.

    Raises InvalidInput with the same message the server would give.
    """
    identity = args.identity or default_identity()
    if args.data_format == "csv":
        publish = parse_csv_publish(data, identity)
        table = publish.table
        request: dict[str, Any] = {
            "op": "add_table_data",
            "identity": publish.options.identity,
            "table": {
                "tablename": table.tablename,
                "column_names": list(table.column_names),
                "column_types": [t.lower() for t in table.column_types],
                "rows": [list(r) for r in table.rows],
            },
        }
        for flag in ("persist", "static", "update"):
            if getattr(publish.options, flag):
                request[flag] = 1
        if publish.options.keycols:
            request["keycols"] = ";".join(publish.options.keycols)
    else:
        try:
            table_obj = json.loads(data)
        except ValueError as e:
            raise InvalidInput(f"input is not JSON: {e}") from None
        request = {"op": "add_table_data", "identity": identity, "table": table_obj}
    if args.persist:
        request["persist"] = 1
    if args.static:
        request["static"] = 1
    parse_json_publish(request)  # the server's own checks, before sending
    return request


def make_transport(args: argparse.Namespace) -> Any:
    """A :class:`qasino.client.Publisher` for the flags (or the NATS one)."""
    if args.nats:
        from qasino.nats import require_client

        require_client("qasino_publish")
        from qasino.nats.client import NatsPublisher

        return NatsPublisher(args.nats, args.timeout, name="qasino_publish")
    scheme = "tcp" if args.use_zmq else ("http" if args.use_http else "https")
    port = args.port or {"tcp": 15598, "http": 15597, "https": 443}[scheme]
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    start_stdlib_logging(args.log_level)
    try:
        if args.file == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as f:
                data = f.read()
    except OSError as e:
        sys.stderr.write(f"qasino_publish: cannot read {args.file}: {e}\n")
        return 1
    try:
        request = build_request(data, args)
    except InvalidInput as e:
        sys.stderr.write(f"qasino_publish: Invalid input format: {e.message}\n")
        return 1
    transport = make_transport(args)
    table = request["table"]
    where = transport.endpoint
    try:
        transport.request(request)
    except ServerError as e:
        sys.stderr.write(f"qasino_publish: server refused table {table['tablename']}: {e}\n")
        return 1
    except TransportError as e:
        default = ""
        if not (args.use_https or args.use_http or args.use_zmq):
            default = (
                " (qasino_publish uses HTTPS on port 443 unless told otherwise: "
                "-t for the server's HTTP port 15597, -z for ZeroMQ on 15598)"
            )
        sys.stderr.write(f"qasino_publish: {e}{default}\n")
        return 1
    finally:
        transport.close()
    options = [k for k in ("persist", "static", "update") if request.get(k)]
    sys.stdout.write(
        f"published table {table['tablename']} ({len(table['rows'])} rows"
        f"{', ' + ', '.join(options) if options else ''}) as {request['identity']} to {where}\n"
    )
    return 0

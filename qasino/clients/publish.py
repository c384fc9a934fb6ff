"""``qasino_publish``: publish one table (JSON or CSV) to a Qasino server."""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Sequence
from typing import Any, Optional

from qasino.clients.transport import (
    DEFAULT_TIMEOUT_S,
    HttpTransport,
    ServerError,
    TransportError,
    ZmqTransport,
    env_default,
)
from qasino.core.errors import InvalidInput
from qasino.core.tables import parse_csv_publish, parse_json_publish


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qasino_publish", description="Publish one table to Qasino.")
    p.add_argument("-H", "--hostname", default="localhost")
    p.add_argument("-p", "--port", type=int, default=None)
    p.add_argument("-I", "--identity", default=None, help="publisher identity (default hostname)")
    p.add_argument("-u", "--username", default=env_default("QASINO_CLIENT_USERNAME"))
    p.add_argument("-w", "--password", default=env_default("QASINO_CLIENT_PASSWORD"))
    p.add_argument("-P", "--persist", action="store_true", help="carry across generations")
    p.add_argument("-S", "--static", action="store_true", help="store in the static DB")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("-t", "--use-http", action="store_true", help="plain HTTP (port 15597)")
    mode.add_argument("-s", "--use-https", action="store_true", help="HTTPS (default, port 443)")
    mode.add_argument("-z", "--use-zmq", action="store_true", help="ZeroMQ (port 15598)")
    p.add_argument("-k", "--skip-ssl-verify", action="store_true")
    p.add_argument("-d", "--data-format", choices=["json", "csv"], default="json")
    p.add_argument("-f", "--file", default="-", help="input file (default stdin)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    p.add_argument(
        "--nats",
        default=None,
        metavar="URL[,URL...]",
        help="publish into the NATS JetStream stream QASINO (subject qasino.publish.IDENTITY) "
        "instead of to a server; sent once JetStream acknowledges it",
    )
    return p


def build_request(data: bytes, args: argparse.Namespace) -> dict[str, Any]:
    """Check the table locally and build the add_table_data request.

    Raises InvalidInput with the same message the server would give.
    """
    identity = args.identity or socket.gethostname()
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
    if args.nats:
        from qasino.nats import require_client

        require_client("qasino_publish")
        from qasino.nats.client import NatsPublisher

        return NatsPublisher(args.nats, args.timeout, name="qasino_publish")
    if args.use_zmq:
        return ZmqTransport(args.hostname, args.port or 15598, args.timeout)
    https = not args.use_http
    return HttpTransport(
        args.hostname,
        args.port or (443 if https else 15597),
        https=https,
        username=args.username,
        password=args.password,
        verify=not args.skip_ssl_verify,
        timeout_s=args.timeout,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
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
    where = getattr(transport, "url", None) or getattr(transport, "address", "")
    try:
        transport.request(request)
    except ServerError as e:
        sys.stderr.write(f"qasino_publish: server refused table {table['tablename']}: {e}\n")
        return 1
    except TransportError as e:
        sys.stderr.write(f"qasino_publish: {e}\n")
        return 1
    finally:
        transport.close()
    options = [k for k in ("persist", "static", "update") if request.get(k)]
    sys.stdout.write(
        f"published table {table['tablename']} ({len(table['rows'])} rows"
        f"{', ' + ', '.join(options) if options else ''}) as {request['identity']} to {where}\n"
    )
    return 0

"""``qasino_server``: flags, logging, start, run until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import gc
import os
import sys
import urllib.parse
from collections.abc import Sequence
from typing import Any, Optional, Union

from qasino import __version__
from qasino.config import parse_args as parse_config_args
from qasino.config import render as render_config
from qasino.core.errors import StoreError
from qasino.logs import add_logging_arguments, start_logging
from qasino.proc import GC_THRESHOLDS
from qasino.service import (
    DEFAULT_HTPASSWD_FILE,
    DEFAULT_KEYS_DIR,
    REDIRECT_AUTO,
    ServerConfig,
    default_db_dir,
)


def _port(text: str) -> Optional[int]:
    """A port number; 0 picks a free one; 'off' disables the listener."""
    if text.strip().lower() in ("off", "none", "-1"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port: give a number 1-65535, 0 (pick a free port) or off"
        ) from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"{value} is out of range: give a number 1-65535, 0 (pick a free port) or off"
        )
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


# argparse names a type function in its error ("invalid _port value"); this
# name is what a user reads instead.
_port.__name__ = "port"


def _port_help(what: str, default: Optional[int]) -> str:
    shown = "off" if default is None else str(default)
    return f"{what} port; 0 picks a free one (logged), off disables it (default {shown})"


def _redirect_port(text: str) -> Union[int, str, None]:
    """A port as for the listeners, or 'auto'."""
    if text.strip().lower() == "auto":
        return REDIRECT_AUTO
    return _port(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qasino_server",
        description="Qasino stats server: merges tables published by many hosts "
        "into one SQLite snapshot per generation and answers SQL about it. "
        "The protocol, publish formats and errors: docs/protocol.md in the Qasino source.",
    )
    d = ServerConfig()
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "-i",
        "--identity",
        default="",
        help="server identity (default: the IP of eth0/eth1, else the MAC, as the original)",
    )
    p.add_argument("--bind", default=d.bind, help="address to listen on (default %(default)s)")
    p.add_argument(
        "-d",
        "--db-dir",
        default="",
        help="data directory: generation files, the static DB and a lock file "
        f"(one server per directory) (default {default_db_dir()})",
    )
    p.add_argument(
        "-k",
        "--archive-db-dir",
        default=None,
        help="keep a copy of every retired snapshot here (default: none kept)",
    )
    p.add_argument(
        "-g",
        "--generation-duration",
        type=float,
        default=d.generation_duration_s,
        help="seconds per generation (default %(default)s)",
    )
    p.add_argument(
        "-v",
        "--views-file",
        default=d.views_file,
        help="views YAML file, re-read when it changes; a missing file means no views "
        "(default %(default)s in the working directory)",
    )
    p.add_argument(
        "--line-port",
        type=_port,
        default=d.line_port,
        help=_port_help("telnet line protocol (SQL in, text out)", d.line_port),
    )
    p.add_argument(
        "--pubsub-port",
        type=_port,
        default=d.pubsub_port,
        help=_port_help("ZeroMQ PUB generation signal", d.pubsub_port),
    )
    p.add_argument(
        "--http-port",
        type=_port,
        default=d.http_port,
        help=_port_help("HTTP API and web UI", d.http_port),
    )
    p.add_argument(
        "--zmq-port",
        type=_port,
        default=d.zmq_port,
        help=_port_help("ZeroMQ REP JSON RPC", d.zmq_port),
    )
    fleet = p.add_argument_group("fleet and history (docs/fleet.md)")
    fleet.add_argument(
        "--keep-stale",
        type=_non_negative,
        default=d.keep_stale,
        metavar="N",
        help="carry the last tables of an identity that stopped publishing into the "
        "next N snapshots, then drop them (default %(default)s: drop at once)",
    )
    fleet.add_argument(
        "--persist-ttl",
        type=_non_negative,
        default=d.persist_ttl,
        metavar="N",
        help="drop a persisted table not re-published by its identity for N "
        "generations (default %(default)s: keep forever)",
    )
    fleet.add_argument(
        "--history",
        type=_non_negative,
        default=d.history,
        metavar="N",
        help="keep the last N snapshots queryable as history.TABLE, with a "
        "generation_number column (default %(default)s: off)",
    )
    p.add_argument(
        "--alerts-file",
        default=d.alerts_file,
        help="alert rules YAML file, watched and reloaded (default %(default)s; "
        "none if it does not exist)",
    )
    p.add_argument(
        "--alertmanager-url",
        action="append",
        default=[],
        metavar="URL",
        help="send firing and resolved alerts to this Alertmanager (URL/api/v2/alerts); "
        "repeatable (default: none)",
    )
    p.add_argument(
        "--https-port",
        type=_port,
        default=d.https_port,
        help=_port_help(
            "HTTPS (API and web UI; with --tls-cert/--tls-key or the keys in --keys-dir)",
            d.https_port,
        ),
    )
    p.add_argument(
        "--tls-cert", default=None, help="PEM certificate (chain) for HTTPS (default: no HTTPS)"
    )
    p.add_argument("--tls-key", default=None, help="PEM private key for HTTPS (default: no HTTPS)")
    p.add_argument(
        "-p",
        "--htpasswd-file",
        default=None,
        help="htpasswd file (bcrypt, apr1, MD5-crypt, SHA, crypt) for HTTP basic auth on the "
        "HTTPS listener; without HTTPS it protects nothing and a warning is logged "
        f"(default {DEFAULT_HTPASSWD_FILE} when it exists)",
    )
    p.add_argument(
        "-K",
        "--keys-dir",
        default=DEFAULT_KEYS_DIR,
        help="the original's HTTPS set-up: with server.crt and server.key in this directory "
        "and an htpasswd file, HTTPS with basic auth listens on --https-port "
        "(default %(default)s; --tls-cert/--tls-key take precedence)",
    )
    p.add_argument(
        "--redirect-port",
        type=_redirect_port,
        default=REDIRECT_AUTO,
        help="plain HTTP port that redirects to HTTPS while HTTPS listens; 'auto' (the "
        "default): port 80 when HTTPS comes from --keys-dir, as the original did, "
        "otherwise off; a port that cannot be bound is logged and skipped",
    )
    original = p.add_argument_group(
        "accepted for the original's start scripts", "these change nothing; each logs one line"
    )
    original.add_argument(
        "-f",
        "--db-file",
        default=None,
        help="ignored: generation files are kept under DB_DIR/generations (default: none)",
    )
    original.add_argument(
        "-s",
        "--static-content-dir",
        default=None,
        help="ignored: the web UI's assets are built in (default: none)",
    )
    original.add_argument(
        "-t",
        "--templates-dir",
        default=None,
        help="ignored: the web UI's templates are built in (default: none)",
    )
    p.add_argument(
        "--http-loopback-only",
        action="store_true",
        help="bind the plain HTTP listener to 127.0.0.1 only (use --http-port off to "
        "disable it) (default: off, HTTP listens on --bind)",
    )
    limits = p.add_argument_group("limits")
    limits.add_argument(
        "--max-body-bytes",
        type=int,
        default=d.max_body_bytes,
        help="largest HTTP request body (413 past it) and ZeroMQ message (default %(default)s)",
    )
    limits.add_argument(
        "--max-table-rows",
        type=int,
        default=d.max_table_rows,
        help="most rows in one published table (default %(default)s)",
    )
    limits.add_argument(
        "--max-table-columns",
        type=int,
        default=d.max_table_columns,
        help="most columns in one published table (default %(default)s)",
    )
    limits.add_argument(
        "--max-cell-bytes",
        type=int,
        default=d.max_cell_bytes,
        help="largest text cell in UTF-8 bytes (default %(default)s)",
    )
    limits.add_argument(
        "--max-statement-bytes",
        type=int,
        default=d.max_statement_bytes,
        help="largest statement on the line protocol (default %(default)s)",
    )
    limits.add_argument(
        "--query-timeout",
        type=float,
        default=d.query_timeout_s,
        help="seconds before a query is stopped (default %(default)s)",
    )
    limits.add_argument(
        "--max-result-rows",
        type=int,
        default=d.max_result_rows,
        help="rows returned before a result is cut (default %(default)s)",
    )
    limits.add_argument(
        "--max-result-bytes",
        type=int,
        default=d.max_result_bytes,
        help="a result over about this many bytes is refused with an error (default %(default)s)",
    )
    limits.add_argument(
        "--max-stream-rows",
        type=int,
        default=d.max_stream_rows,
        help="rows a stream=1 query (format=csv or ndjson) sends at most; it ends there "
        "(default %(default)s)",
    )
    limits.add_argument(
        "--max-connections",
        type=int,
        default=d.max_connections,
        help="concurrent connections per TCP listener; 0 = no limit (default %(default)s)",
    )
    p.add_argument(
        "--reader-threads",
        type=int,
        default=d.reader_threads,
        help="threads answering queries at once, each with its own SQLite connection "
        "(default %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=_non_negative,
        default=d.workers,
        help="HTTP worker processes: they read and answer HTTP on the HTTP port and "
        "hand publishes to the process that owns the store, which a supervisor "
        "restarts if it dies; 0 = one process (docs/performance.md) (default %(default)s)",
    )
    # Set by the --workers supervisor on the store process it starts.
    p.add_argument("--http-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    nats = p.add_argument_group("NATS JetStream (docs/scaling.md)")
    nats.add_argument(
        "--nats",
        default=None,
        metavar="URL[,URL...]",
        help="join a NATS JetStream cluster: publishes go into stream QASINO and every "
        "server on it builds the same snapshots (default: off)",
    )
    nats.add_argument(
        "--nats-replicas",
        type=int,
        default=d.nats_replicas,
        help="replicas of stream QASINO when this server creates it (default %(default)s)",
    )
    nats.add_argument(
        "--nats-max-age",
        type=float,
        default=d.nats_max_age_s,
        help="seconds stream QASINO keeps a message when this server creates it "
        "(default 0: 10 generations, at least 60 s)",
    )
    add_logging_arguments(p)
    p.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="TOML file of settings: keys are the long flags with _ for - "
        "(http_port = 15597); env QASINO_<FLAG> overrides it, a flag overrides both "
        "(default: none, or $QASINO_CONFIG)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings (secrets masked) and exit (default: off)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    if args.generation_duration <= 0:
        raise SystemExit("qasino_server: --generation-duration must be positive")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("qasino_server: --tls-cert and --tls-key go together")
    for url in args.alertmanager_url:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise SystemExit(
                f"qasino_server: --alertmanager-url {url!r} must be http(s)://HOST[:PORT][/PATH]"
            )
    if args.nats and (
        args.generation_duration < 1 or args.generation_duration != int(args.generation_duration)
    ):
        raise SystemExit(
            "qasino_server: with --nats the generation duration must be a whole number of seconds"
        )
    if args.nats_replicas < 1:
        raise SystemExit("qasino_server: --nats-replicas must be at least 1")
    if args.nats:
        from qasino.nats import require_client

        require_client("qasino_server")
    return ServerConfig(
        identity=args.identity,
        bind=args.bind,
        db_dir=args.db_dir,
        archive_db_dir=args.archive_db_dir,
        generation_duration_s=args.generation_duration,
        views_file=args.views_file,
        alerts_file=args.alerts_file or None,
        alertmanager_urls=tuple(args.alertmanager_url),
        line_port=args.line_port,
        pubsub_port=args.pubsub_port,
        http_port=args.http_port,
        zmq_port=args.zmq_port,
        max_body_bytes=args.max_body_bytes,
        max_statement_bytes=args.max_statement_bytes,
        query_timeout_s=args.query_timeout,
        max_result_rows=args.max_result_rows,
        reader_threads=max(1, args.reader_threads),
        https_port=args.https_port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        htpasswd_file=args.htpasswd_file,
        keys_dir=args.keys_dir,
        redirect_port=args.redirect_port,
        http_loopback_only=args.http_loopback_only,
        max_table_rows=args.max_table_rows,
        max_table_columns=args.max_table_columns,
        max_cell_bytes=args.max_cell_bytes,
        max_connections=max(0, args.max_connections),
        max_result_bytes=args.max_result_bytes,
        max_stream_rows=max(0, args.max_stream_rows),
        keep_stale=args.keep_stale,
        persist_ttl=args.persist_ttl,
        history=args.history,
        nats=args.nats or None,
        nats_replicas=args.nats_replicas,
        nats_max_age_s=args.nats_max_age,
        workers=args.workers,
        http_fd=args.http_fd,
        worker_args=(
            "--log-level",
            args.log_level,
            "--log-format",
            args.log_format,
            *(("--log-file", args.log_file) if args.log_file else ()),
        ),
    ).resolved()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parse_config_args(parser, argv)
    if args.print_config:
        sys.stdout.write(render_config(parser, args))
        return 0
    config = config_from_args(args)
    if config.workers and config.http_fd is None:
        # The supervisor: it binds the HTTP port and runs the store process
        # (this program again, with --http-fd), restarting it if it dies.
        if config.http_port is None:
            sys.stderr.write("qasino_server: --workers needs the HTTP port (--http-port)\n")
            return 2
        from qasino.service import LISTEN_BACKLOG
        from qasino.store.lock import DataDirLock
        from qasino.workers import supervise

        # The data directory's owner is named before the port is bound, as
        # without --workers (the store process takes the lock itself).
        try:
            DataDirLock.acquire(config.db_dir).release()
        except StoreError as e:
            sys.stderr.write(f"qasino_server: {e.message}\n")
            return 1

        bind = "127.0.0.1" if config.http_loopback_only else config.bind
        return supervise(
            list(argv) if argv is not None else sys.argv[1:],
            bind,
            config.http_port,
            LISTEN_BACKLOG,
        )
    if config.http_fd is not None:
        from qasino.proc import set_parent_death_signal

        set_parent_death_signal()
    # One server per --db-dir, decided before anything (logging included)
    # happens: a second server exits with one line and touches nothing.
    from qasino.store.lock import DataDirLock

    try:
        dir_lock = DataDirLock.acquire(config.db_dir)
    except StoreError as e:
        sys.stderr.write(f"qasino_server: {e.message}\n")
        return 1
    try:
        log_file = start_logging(args.log_level, args.log_format, args.log_file)
    except OSError as e:
        sys.stderr.write(f"qasino_server: cannot open the log file: {e}\n")
        return 1
    # Reader threads hand the GIL back and forth with the busy reactor; a
    # shorter switch interval keeps query latency down under ingest.
    sys.setswitchinterval(0.001)
    # Every publish and query result is tens of thousands of short-lived
    # containers; at the default threshold (700) the cyclic GC ran so often
    # it took a quarter of a big query's time (docs/performance.md).
    gc.set_threshold(*GC_THRESHOLDS)

    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError
    from twisted.logger import Logger

    from qasino.service import make_service

    stop_on_early_sigterm(reactor)
    log = Logger(namespace="qasino.server")
    log.info(
        "qasino_server {identity} starting: db dir {db_dir}, generation {duration}s",
        identity=config.identity,
        db_dir=config.db_dir,
        duration=config.generation_duration_s,
    )
    for flag, value, meaning in (
        ("-f/--db-file", args.db_file, "generation files are kept under DB_DIR/generations"),
        ("-s/--static-content-dir", args.static_content_dir, "the web UI's assets are built in"),
        ("-t/--templates-dir", args.templates_dir, "the web UI's templates are built in"),
    ):
        if value is not None:
            log.info(
                "{flag} {value} is accepted and ignored: {meaning}",
                flag=flag,
                value=value,
                meaning=meaning,
            )
    from qasino.frontends.tls import TLSConfigError

    try:
        server = make_service(config, reactor, dir_lock=dir_lock)
    except StoreError as e:
        sys.stderr.write(f"qasino_server: {e.message}\n")
        return 1
    except TLSConfigError as e:
        sys.stderr.write(f"qasino_server: {e}\n")
        return 1
    try:
        server.startService()
    except (CannotListenError, OSError, Exception) as e:  # zmq.ZMQError is an Exception
        sys.stderr.write(f"qasino_server: cannot start: {e}\n")
        # Stop what did start (threads included) with the reactor running,
        # then exit 1.
        from twisted.internet.defer import maybeDeferred

        def shut_down() -> None:
            d = maybeDeferred(server.stopService)
            d.addErrback(lambda f: log.failure("stopping after a failed start", f))
            d.addBoth(lambda _: reactor.stop())

        reactor.callWhenRunning(shut_down)
        reactor.run(installSignalHandlers=False)  # type: ignore[call-arg]
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    if log_file is not None:
        server.reload_hooks.append(log_file.reopen)  # logrotate: move, then SIGHUP
    install_sighup(reactor, server)
    if args.ready_fd is not None:
        # Tell the --workers supervisor that this store process is up.
        try:
            os.write(args.ready_fd, b"1")
            os.close(args.ready_fd)
        except OSError:
            pass
    # What start-up built lives as long as the process: keep it out of the
    # cyclic GC's full collections.
    gc.freeze()
    reactor.run()
    log.info("qasino_server stopped")
    return 0


def stop_on_early_sigterm(reactor: Any) -> None:
    """A SIGTERM that comes between start-up and reactor.run (which installs
    Twisted's own handler) still stops cleanly, exit 0."""
    import signal

    def on_term(signum: int, frame: object) -> None:
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, on_term)


def install_sighup(reactor: Any, server: Any) -> None:
    """SIGHUP reloads (``server.reload``) instead of ending the process."""
    import signal

    if not hasattr(signal, "SIGHUP"):
        return

    def on_hup(signum: int, frame: object) -> None:
        reactor.callFromThread(server.reload)

    signal.signal(signal.SIGHUP, on_hup)


if __name__ == "__main__":
    sys.exit(main())

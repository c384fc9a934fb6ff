"""make_service(config, reactor): the whole daemon as one MultiService.

Start order: the ZeroMQ sockets, the engine (threads + generation timer),
then the TCP listeners. Stop order is the reverse: HTTP and telnet close
first, then the store, then the ZeroMQ sockets.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union, cast

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IHalfCloseableProtocol, IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import alsoProvides

from qasino.alerting import AlertEvaluator, AlertsSource
from qasino.core.tables import DEFAULT_MAX_CELL_BYTES, DEFAULT_MAX_COLUMNS, DEFAULT_MAX_ROWS
from qasino.engine import Engine, EngineService, ThreadRunner, ViewsSource
from qasino.frontends.fastpath import ApiFastFactory
from qasino.frontends.http import DEFAULT_MAX_BODY_BYTES, make_site
from qasino.frontends.line import DEFAULT_MAX_STATEMENT_BYTES, LineSQLFactory
from qasino.frontends.redirect import RedirectSite
from qasino.frontends.stream import DEFAULT_MAX_STREAM_ROWS
from qasino.frontends.tls import (
    HtpasswdChecker,
    HtpasswdStore,
    ReloadableTLSOptions,
    TLSConfigError,
    protect,
)
from qasino.frontends.zmq import ZmqServices
from qasino.identity import default_identity
from qasino.metrics import ServerMetrics, install_ops_pages
from qasino.ops import Dispatcher
from qasino.store.lock import DataDirLock
from qasino.store.query import QueryLimits
from qasino.store.store import Store, StoreConfig
from qasino.threads import CallThreads
from qasino.workers import WorkerPool

if TYPE_CHECKING:  # only for the annotation: nothing NATS is imported at run time
    from qasino.nats.service import NatsService

log = Logger(namespace="qasino.server")

# Where the original server looked for its HTTPS set-up.
DEFAULT_KEYS_DIR = "/opt/qasino/etc/keys/"
DEFAULT_HTPASSWD_FILE = "/opt/qasino/etc/htpasswd"
KEY_FILE = "server.key"
CERT_FILE = "server.crt"
# --redirect-port auto: port 80 when HTTPS comes from the keys dir, else off.
REDIRECT_AUTO = "auto"
ORIGINAL_REDIRECT_PORT = 80

# Twisted's default backlog of 50 drops SYNs when a fleet connects at once.
LISTEN_BACKLOG = 1024


def default_db_dir() -> str:
    """A per-user data dir: $XDG_DATA_HOME/qasino or ~/.local/share/qasino."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "qasino")


@dataclass(frozen=True)
class ServerConfig:
    identity: str = ""
    bind: str = "0.0.0.0"
    db_dir: str = ""
    archive_db_dir: Optional[str] = None
    generation_duration_s: float = 30.0
    views_file: Optional[str] = "views.conf"
    alerts_file: Optional[str] = "alerts.yaml"
    alertmanager_urls: tuple[str, ...] = ()
    line_port: Optional[int] = 15000
    pubsub_port: Optional[int] = 15596
    http_port: Optional[int] = 15597
    zmq_port: Optional[int] = 15598
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_statement_bytes: int = DEFAULT_MAX_STATEMENT_BYTES
    query_timeout_s: float = 5.0
    max_result_rows: int = 100_000
    max_result_bytes: int = 64 * 1024 * 1024
    reader_threads: int = 4
    https_port: Optional[int] = 443
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    htpasswd_file: Optional[str] = None
    keys_dir: Optional[str] = DEFAULT_KEYS_DIR
    redirect_port: Union[int, str, None] = REDIRECT_AUTO
    http_loopback_only: bool = False
    max_table_rows: int = DEFAULT_MAX_ROWS
    max_table_columns: int = DEFAULT_MAX_COLUMNS
    max_cell_bytes: int = DEFAULT_MAX_CELL_BYTES
    max_connections: int = 1024
    max_stream_rows: int = DEFAULT_MAX_STREAM_ROWS
    keep_stale: int = 0
    persist_ttl: int = 0
    history: int = 0
    nats: Optional[str] = None
    nats_replicas: int = 1
    nats_max_age_s: float = 0.0
    # --workers N (qasino/workers.py): set in the store process, which gets
    # the supervisor's HTTP socket as http_fd, and the workers' log flags.
    workers: int = 0
    http_fd: Optional[int] = None
    worker_args: tuple[str, ...] = ()

    def resolved(self) -> ServerConfig:
        """Fill the defaults that depend on the machine."""
        from dataclasses import replace

        htpasswd = self.htpasswd_file
        if htpasswd is None and os.path.isfile(DEFAULT_HTPASSWD_FILE):
            htpasswd = DEFAULT_HTPASSWD_FILE
        return replace(
            self,
            identity=self.identity or default_identity(),
            db_dir=self.db_dir or default_db_dir(),
            htpasswd_file=htpasswd,
        )

    def keys_dir_files(self) -> Optional[tuple[str, str]]:
        """(cert, key) of the original's HTTPS set-up, if both files exist."""
        if not self.keys_dir:
            return None
        cert = os.path.join(self.keys_dir, CERT_FILE)
        key = os.path.join(self.keys_dir, KEY_FILE)
        if os.path.isfile(cert) and os.path.isfile(key):
            return cert, key
        return None


class HalfCloseableWrapper(ProtocolWrapper):
    """A ProtocolWrapper that passes a half-close on to a protocol that
    handles one (the line protocol); others are closed as before."""

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            alsoProvides(self, IHalfCloseableProtocol)

    def readConnectionLost(self) -> None:
        cast(Any, self.wrappedProtocol).readConnectionLost()

    def writeConnectionLost(self) -> None:
        cast(Any, self.wrappedProtocol).writeConnectionLost()


class ConnectionLimitFactory(WrappingFactory):
    """Refuses (closes at once) connections beyond ``limit`` open ones."""

    noisy = False
    protocol = HalfCloseableWrapper

    def __init__(self, wrapped: Factory, limit: int, name: str) -> None:
        super().__init__(wrapped)
        self.limit = limit
        self.name = name
        self._refused = 0

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.protocols) >= self.limit:
            self._refused += 1
            if self._refused == 1 or self._refused % 1000 == 0:
                log.warn(
                    "{name}: {limit} connections open, refusing more ({n} refused so far)",
                    name=self.name,
                    limit=self.limit,
                    n=self._refused,
                )
            return None
        return super().buildProtocol(addr)


class TCPListenService(Service):
    """Listens in startService (raising CannotListenError if it can't) and
    logs the real address; stops listening in stopService."""

    def __init__(
        self,
        name: str,
        reactor: Any,
        port: int,
        factory: Any,
        bind: str,
        tls_options: Any = None,
        max_connections: int = 0,
        optional: bool = False,
    ):
        self.setName(name)
        self.optional = optional
        self.reactor = reactor
        self.port = port
        self.factory = factory
        self.bind = bind
        self.tls_options = tls_options
        self.max_connections = max_connections
        self.listening: Optional[IListeningPort] = None

    def startService(self) -> None:
        factory: Any = self.factory
        if self.tls_options is not None:
            # TLS inside the connection limit: the limit counts raw sockets.
            factory = TLSMemoryBIOFactory(self.tls_options, False, factory)
        if self.max_connections:
            factory = ConnectionLimitFactory(factory, self.max_connections, str(self.name))
        try:
            self.listening = self.reactor.listenTCP(
                self.port, factory, backlog=LISTEN_BACKLOG, interface=self.bind
            )
        except CannotListenError as e:
            if not self.optional:
                raise
            # As the original server did for its HTTPS and redirect ports.
            log.warn(
                "{name}: cannot listen on {bind}:{port}, going on without it: {error}",
                name=self.name,
                bind=self.bind,
                port=self.port,
                error=e.socketError,
            )
            super().startService()
            return
        self.port = int(getattr(self.listening.getHost(), "port", self.port))
        log.info(
            "{name} listening on {bind}:{port}", name=self.name, bind=self.bind, port=self.port
        )
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        if self.listening is not None:
            listening, self.listening = self.listening, None
            return listening.stopListening()
        return None


class ThreadPoolService(Service):
    """A thread pool started and stopped with the server."""

    def __init__(self, reactor: Any, name: str, maxthreads: int) -> None:
        self.pool = CallThreads(reactor, name, maxthreads)

    def startService(self) -> None:
        self.pool.start()
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


class QasinoServer(MultiService):
    """The daemon. ``engine``, ``zmq`` and the listeners are attributes so
    tests and the CLI can read the real ports."""

    def __init__(
        self, config: ServerConfig, reactor: Any, dir_lock: Optional[DataDirLock] = None
    ) -> None:
        super().__init__()
        self.config = config = config.resolved()
        self.reactor = reactor
        self.tls: Optional[ReloadableTLSOptions] = None
        self.htpasswd: Optional[HtpasswdStore] = None
        # Called by reload() (SIGHUP) after the built-in reloads; e.g. the
        # alerts file watcher's reload.
        self.reload_hooks: list[Callable[[], object]] = []
        views = ViewsSource(config.views_file)
        views.poll()  # the first snapshot, served at once, has the views
        store = Store(
            StoreConfig(
                db_dir=config.db_dir,
                generation_duration_s=config.generation_duration_s,
                archive_dir=config.archive_db_dir,
                limits=QueryLimits(
                    config.query_timeout_s, config.max_result_rows, config.max_result_bytes
                ),
                keep_stale=config.keep_stale,
                persist_ttl=config.persist_ttl,
                history=config.history,
                journal=not config.nats,
            ),
            now=reactor.seconds(),
            views=views.views,
            dir_lock=dir_lock,
        )
        self.engine = Engine(
            store,
            ThreadRunner(reactor, config.reader_threads, background=2),
            reactor,
            config.identity,
            views,
            # NATS mode applies the stream's batches with one commit itself.
            group_commit=not config.nats,
        )
        self.dispatcher = Dispatcher(
            self.engine,
            max_table_rows=config.max_table_rows,
            max_table_columns=config.max_table_columns,
            max_cell_bytes=config.max_cell_bytes,
        )
        self.metrics = ServerMetrics(self.engine, self.dispatcher)
        # qasino_identities{state}: live and stale identities (docs/fleet.md).
        self.metrics.set_identities_provider(self.engine.identity_counts)
        self.zmq = ZmqServices(
            self.dispatcher,
            reactor,
            config.bind,
            config.zmq_port,
            config.pubsub_port,
            max_message_bytes=config.max_body_bytes,
        )
        self.zmq.setServiceParent(self)
        # After the ZeroMQ sockets, so the PUB socket is bound when the
        # engine announces its first snapshot.
        EngineService(
            self.engine, config.generation_duration_s, rotate_on_timer=not config.nats
        ).setServiceParent(self)
        # The signal names the generation that starts filling, as the
        # original's did: publishers key their sends on it.
        self.engine.on_generation(
            lambda info: self.zmq.publish_generation(
                info.filling_number, info.generation_duration_s
            )
        )
        alerts_source = AlertsSource(config.alerts_file)
        alerts_source.poll()
        self.alerts = AlertEvaluator(
            self.engine,
            alerts_source,
            slots=2,
            alertmanager_urls=config.alertmanager_urls,
            publish=self.zmq.publish_alert,
            generator_url=self._alerts_url,
        )
        self.engine.alerts = self.alerts
        # After the generation signal: evaluation starts once the snapshot
        # is announced, on the readers.
        self.engine.on_generation(self.alerts.on_generation)
        self.reload_hooks.append(self.reload_alerts)
        self.metrics.set_alerts_provider(
            lambda: [(name, state, n) for (name, state), n in sorted(self.alerts.counts().items())]
        )
        self.nats: Optional[NatsService] = None
        if config.nats:
            # Only here: without --nats nothing NATS-related is imported.
            from qasino.nats.service import NatsService

            self.nats = NatsService(
                self.engine,
                self.dispatcher,
                reactor,
                config.nats,
                replicas=config.nats_replicas,
                max_age_s=config.nats_max_age_s,
                generation_duration_s=config.generation_duration_s,
            )
            self.nats.setServiceParent(self)
            self.metrics.readiness_checks.append(self.nats.status)
            self.metrics.add_families(self.nats.metric_families)
        self.http: Optional[TCPListenService] = None
        self.workers: Optional[WorkerPool] = None
        self.line: Optional[TCPListenService] = None
        if config.http_port is not None:
            site = make_site(
                self.dispatcher,
                config.max_body_bytes,
                max_stream_rows=config.max_stream_rows,
                reactor=reactor,
            )
            install_ops_pages(site.resource, self.metrics)
            bind = "127.0.0.1" if config.http_loopback_only else config.bind
            # Publishes read by the lean path, everything else by the site
            # (HTTPS keeps the site alone: its basic auth guards every path).
            api = site.resource.api
            with_workers = bool(config.workers and config.http_fd is not None)
            # With workers, they accept on the supervisor's socket; what they
            # do not answer comes here, on a private loopback port.
            self.http = TCPListenService(
                "worker proxy" if with_workers else "HTTP",
                reactor,
                0 if with_workers else config.http_port,
                ApiFastFactory(site, api, config.max_body_bytes),
                "127.0.0.1" if with_workers else bind,
                max_connections=config.max_connections,
            )
            self.http.setServiceParent(self)
            if with_workers and config.http_fd is not None:
                proxy = self.http
                self.workers = WorkerPool(
                    reactor,
                    config.workers,
                    config.http_fd,
                    api,
                    lambda: proxy.port,
                    [
                        "--max-body-bytes",
                        str(config.max_body_bytes),
                        "--max-connections",
                        str(config.max_connections),
                        # With --nats the stream wants requests as sent.
                        *(
                            ()
                            if config.nats
                            else (
                                "--max-table-rows",
                                str(config.max_table_rows),
                                "--max-table-columns",
                                str(config.max_table_columns),
                                "--max-cell-bytes",
                                str(config.max_cell_bytes),
                            )
                        ),
                        *config.worker_args,
                    ],
                )
                self.workers.setServiceParent(self)
                self.reload_hooks.append(self.workers.reload)
        self.https: Optional[TCPListenService] = None
        self.redirect: Optional[TCPListenService] = None
        if config.https_port is not None:
            self._setup_https(config, reactor)
        if self.https is None and config.htpasswd_file:
            # Not an error: the original's start lines pass -p without keys.
            log.warn(
                "-p/--htpasswd-file {path} protects nothing: there is no HTTPS listener "
                "(it needs --tls-cert and --tls-key or the keys in --keys-dir, and "
                "--https-port not off); plain HTTP stays open to anyone who can reach it",
                path=config.htpasswd_file,
            )
        if config.line_port is not None:
            factory = LineSQLFactory(self.dispatcher, config.max_statement_bytes)
            self.line = TCPListenService(
                "line protocol",
                reactor,
                config.line_port,
                factory,
                config.bind,
                max_connections=config.max_connections,
            )
            self.line.setServiceParent(self)

    def _setup_https(self, config: ServerConfig, reactor: Any) -> None:
        """HTTPS from --tls-cert/--tls-key, or, as the original server did,
        from server.crt + server.key in --keys-dir together with an htpasswd
        file (then a failure to load or listen is logged, not fatal), and
        the port that redirects to it."""
        from_keys_dir = False
        if config.tls_cert and config.tls_key:
            cert, key = config.tls_cert, config.tls_key
        else:
            files = config.keys_dir_files()
            if files is None:
                return
            if not config.htpasswd_file or not os.path.isfile(config.htpasswd_file):
                log.info(
                    "HTTPS off: {keys} has server.crt and server.key but there is no htpasswd "
                    "file ({htpasswd}); the original server needed both",
                    keys=config.keys_dir,
                    htpasswd=config.htpasswd_file or DEFAULT_HTPASSWD_FILE,
                )
                return
            (cert, key), from_keys_dir = files, True
        try:
            self.https = self._https_service(config, reactor, cert, key, optional=from_keys_dir)
        except TLSConfigError as e:
            if not from_keys_dir:
                raise
            log.error("HTTPS off: {error}", error=e)
            return
        self.https.setServiceParent(self)
        port: Optional[int]
        if config.redirect_port == REDIRECT_AUTO:
            port = ORIGINAL_REDIRECT_PORT if from_keys_dir else None
        else:
            port = int(config.redirect_port) if config.redirect_port is not None else None
        # (Never on the plain HTTP port itself: the original skipped port 80
        # when that was its HTTP port.)
        if port is not None and (port == 0 or port != config.http_port):
            https = self.https
            self.redirect = TCPListenService(
                "HTTP->HTTPS redirect",
                reactor,
                port,
                RedirectSite(lambda: https.port if https.listening is not None else None),
                config.bind,
                max_connections=config.max_connections,
                optional=True,
            )
            self.redirect.setServiceParent(self)

    def _https_service(
        self, config: ServerConfig, reactor: Any, cert: str, key: str, optional: bool = False
    ) -> TCPListenService:
        """HTTPS on --https-port: the same API and UI, behind basic auth when
        an htpasswd file is given. Raises TLSConfigError on bad files."""
        assert config.https_port is not None
        options = self.tls = ReloadableTLSOptions(cert, key)
        site = make_site(
            self.dispatcher,
            config.max_body_bytes,
            transport="https",
            max_stream_rows=config.max_stream_rows,
            reactor=reactor,
        )
        install_ops_pages(site.resource, self.metrics)
        if config.htpasswd_file:
            pool = ThreadPoolService(reactor, "qasino-auth", maxthreads=2)
            pool.setServiceParent(self)
            self.htpasswd = HtpasswdStore(config.htpasswd_file)
            checker = HtpasswdChecker(self.htpasswd, reactor, pool.pool)
            site.resource = protect(site.resource, checker)
        else:
            log.warn("HTTPS without --htpasswd-file: no authentication on the HTTPS listener")
        return TCPListenService(
            "HTTPS",
            reactor,
            config.https_port,
            site,
            config.bind,
            tls_options=options,
            max_connections=config.max_connections,
            optional=optional,
        )

    def alert_counts(self) -> dict[tuple[str, str], int]:
        """Alert instances per (alertname, state), errors included: the
        values of the ``qasino_alerts{alertname,state}`` metric (hook for
        /metrics)."""
        return self.alerts.counts()

    def reload_alerts(self) -> bool:
        """Re-read the alerts file now (hook for SIGHUP); True if it loaded."""
        return self.alerts.reload()

    def _alerts_url(self) -> str:
        """The generatorURL of alerts: this server's /alerts page."""
        if self.http is not None:
            scheme, port = "http", self.http.port
        elif self.https is not None:
            scheme, port = "https", self.https.port
        else:
            scheme, port = "http", 0
        host = urllib.parse.quote(self.config.identity or "localhost", safe=".-_")
        return f"{scheme}://{host}:{port}/alerts" if port else f"http://{host}/alerts"

    def reload(self) -> Deferred[None]:
        """SIGHUP: read the TLS certificate and key, the htpasswd file and
        the views again, then run ``reload_hooks``. Nothing stops listening
        and no connection is dropped; a file that fails to load is logged and
        the last good one kept. Reactor thread."""
        log.info("reloading (SIGHUP)")
        for what, thing in (("TLS certificate and key", self.tls), ("htpasswd", self.htpasswd)):
            if thing is None:
                continue
            try:
                thing.reload()
            except TLSConfigError as e:
                log.error(
                    "{what} not reloaded, keeping the last good one: {error}", what=what, error=e
                )
            else:
                log.info("reloaded the {what}", what=what)
        for hook in list(self.reload_hooks):
            try:
                hook()
            except Exception:
                log.failure("a reload hook failed")
        d = self.engine.reload_views()

        def done(changed: bool) -> None:
            log.info(
                "views file {path} {how}",
                path=self.config.views_file,
                how="reloaded" if changed else "not reloaded, the last good views stay",
            )

        reloaded: Deferred[None] = d.addCallback(done)
        reloaded.addErrback(lambda f: log.failure("reloading the views failed", f))
        return reloaded

    def ports(self) -> dict[str, Optional[int]]:
        """The real ports, once started."""
        return {
            "line": self.line.port if self.line else None,
            "http": (
                self.workers.address()[1]
                if self.workers
                else (self.http.port if self.http else None)
            ),
            "https": self.https.port if self.https else None,
            "redirect": self.redirect.port if self.redirect else None,
            "zmq": self.zmq.rpc_port,
            "pubsub": self.zmq.pub_port,
        }


def make_service(
    config: ServerConfig, reactor: Any, dir_lock: Optional[DataDirLock] = None
) -> QasinoServer:
    """The daemon; ``dir_lock``: the --db-dir lock if the caller took it
    already (otherwise the store takes it)."""
    return QasinoServer(config, reactor, dir_lock)

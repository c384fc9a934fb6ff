"""How the server chooses its HTTPS set-up: --tls-* or, as the original did,
the keys dir plus an htpasswd file; and the redirect port (no sockets: the
services are built, not started, except the listener stub)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from passlib.hash import apr_md5_crypt
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock

from qasino.frontends.tls import TLSConfigError
from qasino.service import QasinoServer, ServerConfig, TCPListenService
from tests.tls_helpers import make_cert


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    folder.mkdir()
    cert, key = make_cert(tmp_path)
    cert.rename(folder / "server.crt")
    key.rename(folder / "server.key")
    return folder


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    path.write_text(f"ops:{apr_md5_crypt.hash('pw')}\n")
    return path


@pytest.fixture
def build(tmp_path: Path) -> Iterator[Any]:
    made: list[QasinoServer] = []

    def make(**fields: Any) -> QasinoServer:
        # One data dir per server: each takes the directory's lock.
        db_dir = tmp_path / f"db{len(made)}"
        config = ServerConfig(identity="t", db_dir=str(db_dir), views_file=None, **fields)
        server = QasinoServer(config, MemoryReactorClock())
        made.append(server)
        return server

    yield make
    for server in made:
        server.engine.store.close()


def test_keys_dir_and_htpasswd_give_https_with_auth_and_the_port_80_redirect(
    build: Any, keys: Path, htpasswd: Path
) -> None:
    server = build(keys_dir=str(keys), htpasswd_file=str(htpasswd))
    assert server.https is not None and server.https.optional
    assert server.redirect is not None and server.redirect.port == 80
    assert type(server.https.factory.resource).__name__ == "HTTPAuthSessionWrapper"


def test_keys_dir_without_htpasswd_leaves_https_off(build: Any, keys: Path) -> None:
    server = build(keys_dir=str(keys), htpasswd_file=None)
    assert server.https is None and server.redirect is None


def test_a_bad_key_in_the_keys_dir_is_logged_not_fatal(
    build: Any, keys: Path, htpasswd: Path
) -> None:
    (keys / "server.key").write_text("not a key\n")
    server = build(keys_dir=str(keys), htpasswd_file=str(htpasswd))
    assert server.https is None


def test_tls_flags_give_https_without_a_redirect_unless_asked(
    build: Any, keys: Path, tmp_path: Path
) -> None:
    tls = {"tls_cert": str(keys / "server.crt"), "tls_key": str(keys / "server.key")}
    server = build(keys_dir=None, **tls)
    assert server.https is not None and not server.https.optional
    assert server.redirect is None
    asked = build(keys_dir=None, redirect_port=8080, **tls)
    assert asked.redirect is not None and asked.redirect.port == 8080


def test_bad_tls_flags_stop_the_server(build: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("nope\n")
    with pytest.raises(TLSConfigError):
        build(tls_cert=str(bad), tls_key=str(bad))


class RefusingReactor(MemoryReactorClock):
    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        raise CannotListenError(interface, port, OSError(13, "Permission denied"))


def test_an_optional_listener_that_cannot_bind_is_skipped() -> None:
    service = TCPListenService("x", RefusingReactor(), 80, Factory(), "127.0.0.1", optional=True)
    service.startService()
    assert service.listening is None and service.running
    required = TCPListenService("y", RefusingReactor(), 80, Factory(), "127.0.0.1")
    with pytest.raises(CannotListenError):
        required.startService()

"""HTTPS: TLS options from PEM files and HTTP basic auth against htpasswd.

Password hashes are checked by libpass (``passlib.apache.HtpasswdFile``:
bcrypt, apr1-MD5, {SHA}, crypt), never by code of ours, and off the reactor
thread: bcrypt is slow on purpose. A successful check is remembered for a
short while (keyed by a salted digest of the password, never the password)
so a client sending the same credentials on every request pays the hash
cost once; any change of the htpasswd file forgets everything.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

from OpenSSL import crypto
from passlib.apache import HtpasswdFile, htpasswd_context
from passlib.context import CryptContext
from twisted.cred import credentials, error, portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.web.guard import BasicCredentialFactory, HTTPAuthSessionWrapper
from twisted.web.resource import IResource, Resource
from zope.interface import implementer

from qasino.threads import CallThreads

log = Logger(namespace="qasino.https")

REALM = "qasino"
CACHE_TTL_S = 300.0
_PEM_CERT_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


class TLSConfigError(Exception):
    """The certificate or key could not be loaded."""


def load_tls_options(cert_path: str, key_path: str) -> ssl.CertificateOptions:
    """CertificateOptions from a PEM certificate (chain) file and a PEM key file."""
    try:
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
        with open(key_path, "rb") as f:
            key_pem = f.read()
    except OSError as e:
        raise TLSConfigError(f"cannot read TLS files: {e}") from None
    blocks = _PEM_CERT_RE.findall(cert_pem)
    if not blocks:
        raise TLSConfigError(f"no PEM certificate in {cert_path}")
    try:
        key = ssl.KeyPair.load(key_pem, crypto.FILETYPE_PEM)
        certs = [ssl.Certificate.loadPEM(b) for b in blocks]
        return ssl.CertificateOptions(
            privateKey=key.original,
            certificate=certs[0].original,
            extraCertChain=[c.original for c in certs[1:]],
        )
    except Exception as e:
        raise TLSConfigError(f"bad TLS certificate or key: {e}") from None


# htpasswd's own schemes plus "$1$" MD5-crypt (openssl passwd -1), which the
# original server accepted too; checked before plaintext, which matches anything.
HTPASSWD_CONTEXT = CryptContext(
    schemes=[s for s in htpasswd_context.schemes() if s != "plaintext"]
    + ["md5_crypt", "plaintext"],
    default="bcrypt",
)


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLSOptions:
    """The TLS settings of a listener, swappable while it listens (SIGHUP):
    each new connection uses the certificate loaded last; open ones keep theirs."""

    def __init__(self, cert_path: str, key_path: str) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.current = load_tls_options(cert_path, key_path)

    def reload(self) -> None:
        """Load the files again; raises TLSConfigError (keeping the old ones) if bad."""
        self.current = load_tls_options(self.cert_path, self.key_path)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Any:
        return self.current.serverConnectionForTLS(tlsProtocol)


class HtpasswdStore:
    """An htpasswd file, reloaded when it changes, with a short positive cache."""

    def __init__(
        self, path: str, clock: Callable[[], float] = time.monotonic, ttl_s: float = CACHE_TTL_S
    ) -> None:
        self.path = path
        self.clock = clock
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._salt = os.urandom(16)
        self._cache: dict[tuple[str, bytes], float] = {}
        self._stamp: Optional[tuple[int, ...]] = None
        self._file: Optional[HtpasswdFile] = None
        self._load()

    def _load(self) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
        except OSError as e:
            raise TLSConfigError(f"cannot read htpasswd file {self.path}: {e}") from None
        if stamp == self._stamp:
            return
        try:
            self._file = HtpasswdFile(self.path, context=HTPASSWD_CONTEXT)
        except (OSError, ValueError) as e:
            raise TLSConfigError(f"cannot load htpasswd file {self.path}: {e}") from None
        self._stamp = stamp
        self._cache.clear()

    def reload(self) -> None:
        """Read the file again now (SIGHUP); raises TLSConfigError, keeping the
        users loaded before, if it cannot be read."""
        with self._lock:
            stamp, self._stamp = self._stamp, None
            try:
                self._load()
            except TLSConfigError:
                self._stamp = stamp
                raise

    def _digest(self, password: bytes) -> bytes:
        return hashlib.sha256(self._salt + password).digest()

    def check(self, username: str, password: bytes) -> bool:
        """True if the pair matches the file (may take a bcrypt's time)."""
        key = (username, self._digest(password))
        with self._lock:
            try:
                self._load()
            except TLSConfigError as e:
                log.error("{error}; keeping the last loaded users", error=e)
            expiry = self._cache.get(key)
            if expiry is not None and expiry > self.clock():
                return True
            htfile = self._file
        if htfile is None:
            return False
        try:
            ok = bool(htfile.check_password(username, password.decode("utf-8", "replace")))
        except Exception:
            log.failure("htpasswd check failed for {user}", user=username)
            ok = False
        if ok:
            with self._lock:
                self._cache[key] = self.clock() + self.ttl_s
        return ok


@implementer(ICredentialsChecker)
class HtpasswdChecker:
    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, store: HtpasswdStore, reactor: Any, pool: CallThreads) -> None:
        self.store = store
        self.reactor = reactor
        self.pool = pool

    def requestAvatarId(self, creds: Any) -> Deferred[bytes | tuple[()]]:
        username = creds.username.decode("utf-8", "replace")
        password = creds.password

        def verdict(ok: bool) -> bytes:
            if not ok:
                log.info("HTTPS login failed for {user}", user=username)
                raise error.UnauthorizedLogin("bad user name or password")
            return bytes(creds.username)

        d = self.pool.call(self.store.check, username, password)
        result: Deferred[bytes | tuple[()]] = d.addCallback(verdict)
        return result


@implementer(portal.IRealm)
class _ResourceRealm:
    def __init__(self, resource: Resource) -> None:
        self.resource = resource

    def requestAvatar(self, avatarId: bytes | tuple[()], mind: Any, *interfaces: Any) -> Any:
        if IResource in interfaces:
            return (IResource, self.resource, lambda: None)
        raise NotImplementedError()


def protect(resource: Resource, checker: HtpasswdChecker) -> Resource:
    """Wrap a resource tree so every request needs valid basic auth (401 otherwise)."""
    wrapper = HTTPAuthSessionWrapper(
        portal.Portal(_ResourceRealm(resource), [checker]),
        [BasicCredentialFactory(REALM.encode())],
    )
    return wrapper  # type: ignore[return-value]

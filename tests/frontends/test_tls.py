"""HTTPS pieces: htpasswd checking (bcrypt, apr1-MD5, {SHA}), its cache, TLS files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import bcrypt
import pytest
from passlib.apache import HtpasswdFile
from passlib.hash import apr_md5_crypt, des_crypt, ldap_sha1, md5_crypt

from qasino.frontends.tls import HtpasswdStore, TLSConfigError, load_tls_options
from tests.tls_helpers import make_cert


def write_htpasswd(path: Path, entries: dict[str, str]) -> None:
    path.write_text("".join(f"{user}:{hashed}\n" for user, hashed in entries.items()))


@pytest.fixture()
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    write_htpasswd(
        path,
        {
            # htpasswd -B writes $2y$; bcrypt writes $2b$: the same scheme.
            "bee": bcrypt.hashpw(b"bee-pw", bcrypt.gensalt(rounds=4))
            .decode()
            .replace("$2b$", "$2y$"),
            "apr": apr_md5_crypt.hash("apr-pw"),
            "sha": ldap_sha1.hash("sha-pw"),
            # The two the original server checked: crypt(3) DES and "$1$" MD5.
            "des": des_crypt.hash("des-pw"),
            "md5": md5_crypt.hash("md5-pw"),
        },
    )
    return path


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("bee", b"bee-pw"),
        ("apr", b"apr-pw"),
        ("sha", b"sha-pw"),
        ("des", b"des-pw"),
        ("md5", b"md5-pw"),
    ],
)
def test_each_htpasswd_hash_format_accepts_its_password(
    htpasswd: Path, user: str, password: bytes
) -> None:
    assert HtpasswdStore(str(htpasswd)).check(user, password)


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("bee", b"wrong"),
        ("apr", b"bee-pw"),
        ("sha", b""),
        ("nobody", b"bee-pw"),
        ("des", b"md5-pw"),
        ("md5", b"des-pw"),
    ],
)
def test_wrong_password_or_unknown_user_is_refused(
    htpasswd: Path, user: str, password: bytes
) -> None:
    assert not HtpasswdStore(str(htpasswd)).check(user, password)


@pytest.fixture()
def file_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The user names whose password was verified against the loaded
    htpasswd file (passlib's HtpasswdFile.check_password, which still runs:
    this only counts the calls a cached check must not make)."""
    calls: list[str] = []
    real = HtpasswdFile.check_password

    def counted(self: HtpasswdFile, user: str, password: str) -> Optional[bool]:
        calls.append(user)
        return real(self, user, password)

    monkeypatch.setattr(HtpasswdFile, "check_password", counted)
    return calls


def test_a_good_check_is_cached_but_a_changed_file_is_read_again(
    htpasswd: Path, file_checks: list[str]
) -> None:
    now = [0.0]
    store = HtpasswdStore(str(htpasswd), clock=lambda: now[0], ttl_s=60)
    assert store.check("sha", b"sha-pw")
    assert file_checks == ["sha"]
    now[0] = 30.0
    assert store.check("sha", b"sha-pw")
    assert file_checks == ["sha"], "a repeated good check was not answered from the cache"
    assert not store.check("sha", b"wrong")  # a refusal is never cached
    assert not store.check("sha", b"wrong")
    assert file_checks == ["sha"] * 3
    write_htpasswd(htpasswd, {"sha": ldap_sha1.hash("new-pw")})
    os.utime(htpasswd, ns=(1, 1))  # a different stamp even within one tick
    assert not store.check("sha", b"sha-pw")
    assert store.check("sha", b"new-pw")
    assert file_checks == ["sha"] * 5


def test_cached_check_expires(htpasswd: Path, file_checks: list[str]) -> None:
    now = [0.0]
    store = HtpasswdStore(str(htpasswd), clock=lambda: now[0], ttl_s=60)
    assert store.check("apr", b"apr-pw")
    now[0] = 59.0
    assert store.check("apr", b"apr-pw")
    assert file_checks == ["apr"], "the check was not cached"
    now[0] = 61.0
    assert store.check("apr", b"apr-pw")  # checked again against the file, still good
    assert file_checks == ["apr", "apr"], "the cached check did not expire after ttl_s"
    now[0] = 62.0
    assert store.check("apr", b"apr-pw")  # cached again from 61 s on
    assert file_checks == ["apr", "apr"]
    assert not store.check("apr", b"other")


def test_missing_htpasswd_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match="htpasswd"):
        HtpasswdStore(str(tmp_path / "missing"))


def test_tls_options_load_from_pem_files(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    options = load_tls_options(str(cert), str(key))
    assert options.getContext() is not None


def test_tls_files_that_are_not_pem_are_a_config_error(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(TLSConfigError, match="no PEM certificate"):
        load_tls_options(str(tmp_path / "junk.pem"), str(key))
    with pytest.raises(TLSConfigError, match="bad TLS"):
        load_tls_options(str(cert), str(tmp_path / "junk.pem"))
    with pytest.raises(TLSConfigError, match="cannot read"):
        load_tls_options(str(tmp_path / "nope.pem"), str(key))

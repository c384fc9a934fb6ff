"""HTTPS with basic auth against the real daemon, with a self-signed certificate."""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import requests
from passlib.hash import apr_md5_crypt, ldap_sha1

from tests.e2e.conftest import HOST, QasinoProcess, make_table, new_server, server_env
from tests.tls_helpers import make_cert

USERS = {"bee": "bee-secret", "apr": "apr-secret", "sha": "sha-secret"}


def write_htpasswd(path: Path) -> None:
    bee = bcrypt.hashpw(USERS["bee"].encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text(
        f"bee:{bee.replace('$2b$', '$2y$')}\n"
        f"apr:{apr_md5_crypt.hash(USERS['apr'])}\n"
        f"sha:{ldap_sha1.hash(USERS['sha'])}\n"
    )


class HttpsServer:
    def __init__(self, proc: QasinoProcess, https_port: int, cert: Path) -> None:
        self.proc = proc
        self.https_port = https_port
        self.cert = cert

    def url(self, path: str = "/request") -> str:
        return f"https://{HOST}:{self.https_port}{path}"


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsServer]:
    workdir = tmp_path_factory.mktemp("https")
    cert, key = make_cert(workdir)
    htpasswd = workdir / "htpasswd"
    write_htpasswd(htpasswd)
    extra = ["--https-port", "0", "--tls-cert", str(cert), "--tls-key", str(key)]
    extra += ["-p", str(htpasswd), "--http-loopback-only"]
    proc = new_server(workdir, generation_s=600, extra_args=extra)
    try:
        proc.start()
        line = proc.wait_log(r"HTTPS listening on 127\.0\.0\.1:\d+")
        port = int(re.search(r"HTTPS listening on 127\.0\.0\.1:(\d+)", line).group(1))  # type: ignore[union-attr]
        yield HttpsServer(proc, port, cert)
    finally:
        proc.close()


def query(server: HttpsServer, auth: object, sql: str = "SELECT 1 AS one") -> requests.Response:
    return requests.get(
        server.url(),
        params={"op": "query", "sql": sql},
        auth=auth,  # type: ignore[arg-type]
        verify=str(server.cert),
        timeout=10,
    )


@pytest.mark.parametrize("user", sorted(USERS))
def test_https_answers_each_htpasswd_format_with_right_credentials(
    https_server: HttpsServer, user: str
) -> None:
    reply = query(https_server, (user, USERS[user]))
    assert reply.status_code == 200
    assert reply.json()["table"] == {"column_names": ["one"], "rows": [["1"]]}


@pytest.mark.parametrize(
    "auth", [None, ("bee", "wrong"), ("nobody", "bee-secret"), ("sha", "")], ids=str
)
def test_https_refuses_missing_or_wrong_credentials_with_401(
    https_server: HttpsServer, auth: object
) -> None:
    for path in ("/request", "/tables", "/static/qasino.css"):
        reply = requests.get(https_server.url(path), auth=auth, verify=str(https_server.cert))  # type: ignore[arg-type]
        assert reply.status_code == 401, path
        assert reply.headers["WWW-Authenticate"].lower().startswith("basic realm=")
        assert "one" not in reply.text


def test_web_ui_is_served_behind_https_auth(https_server: HttpsServer) -> None:
    reply = requests.get(
        https_server.url("/tables"), auth=("apr", USERS["apr"]), verify=str(https_server.cert)
    )
    assert reply.status_code == 200
    assert "qasino_server_tables" in reply.text


def test_publish_over_https_lands_in_the_writer_generation(https_server: HttpsServer) -> None:
    table = make_table("https_pub", [("a", "int")], [[7]])
    reply = requests.post(
        https_server.url(),
        params={"op": "add_table_data"},
        json={"op": "add_table_data", "identity": "h1", "table": table},
        auth=("bee", USERS["bee"]),
        verify=str(https_server.cert),
    )
    assert reply.json()["response_op"] == "ok"
    seen = requests.post(
        https_server.url(),
        json={"op": "query", "sql": "SELECT a FROM https_pub", "use_write_db": True},
        auth=("bee", USERS["bee"]),
        verify=str(https_server.cert),
    ).json()
    assert seen["table"]["rows"] == [["7"]]


# Linux routes all of 127.0.0.0/8 to the loopback interface: a --bind
# address that is not 127.0.0.1, without leaving the machine.
OTHER_LOOPBACK = "127.0.0.2"


def listening_on(log: str, words: str) -> tuple[str, int]:
    """The address and port a listener logged ("WORDS on HOST:PORT")."""
    match = re.search(re.escape(words) + r" on ([0-9.]+):(\d+)", log)
    assert match, f"no {words!r} line in the log:\n{log}"
    return match.group(1), int(match.group(2))


def tcp_listening(pid: int) -> set[tuple[str, int]]:
    """The IPv4 (address, port) pairs process ``pid`` listens on, from
    /proc/net/tcp and the process's socket fds. (Connecting is no proof:
    another server on this machine may hold the same port number on the
    other address.)"""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state != "0A" or inode not in inodes:  # 0A: LISTEN
            continue
        address, port = local.split(":")
        found.add((socket.inet_ntoa(struct.pack("<I", int(address, 16))), int(port, 16)))
    return found


@pytest.mark.parametrize("loopback_only", [True, False], ids=["loopback-only", "without-flag"])
def test_plain_http_listener_can_be_kept_on_loopback(tmp_path: Path, loopback_only: bool) -> None:
    """With --bind 127.0.0.2, --http-loopback-only puts plain HTTP (only it)
    on 127.0.0.1; without the flag it follows --bind like the others."""
    cert, key = make_cert(tmp_path)
    identity = f"loopback-{os.getpid()}-{int(loopback_only)}"
    extra = ["--bind", OTHER_LOOPBACK, "--https-port", "0", "--tls-cert", str(cert)]
    extra += ["--tls-key", str(key), "-i", identity]
    extra += ["--http-loopback-only"] if loopback_only else []
    proc = new_server(tmp_path / "server", generation_s=600, extra_args=extra)
    try:
        proc.start()
        log = proc.log_text()
        http_host, http_port = listening_on(log, "HTTP listening")
        https_host, https_port = listening_on(log, "HTTPS listening")
        line_host, line_port = listening_on(log, "line protocol listening")
        assert (https_host, line_host) == (OTHER_LOOPBACK, OTHER_LOOPBACK), log
        expected = "127.0.0.1" if loopback_only else OTHER_LOOPBACK
        assert http_host == expected, f"HTTP listens on {http_host}, not {expected}:\n{log}"
        # The sockets themselves, not only the log lines.
        assert proc.proc is not None
        listening = tcp_listening(proc.proc.pid)
        assert {(expected, http_port), (OTHER_LOOPBACK, https_port)} <= listening, listening
        assert (OTHER_LOOPBACK, line_port) in listening, listening
        assert [a for a, port in listening if port == http_port] == [expected], listening
        # And this server answers there.
        reply = requests.get(
            f"http://{expected}:{http_port}/request",
            params={"op": "query", "sql": "SELECT 1 AS one"},
            timeout=10,
        ).json()
        assert (reply["identity"], reply["table"]["rows"]) == (identity, [["1"]]), reply
    finally:
        proc.close()


def run_client(main: str, args: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    code = f"import sys; from qasino.cli import {main}; sys.exit({main}(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        input=stdin,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_qasinosql_over_https_with_user_password_and_skip_verify(
    https_server: HttpsServer,
) -> None:
    base = ["-H", HOST, "-t", "-p", str(https_server.https_port), "-s"]
    ok = run_client("sqlclient_main", [*base, "-u", "sha", "-w", USERS["sha"], "-q", "SHOW info"])
    assert ok.returncode == 0, ok.stderr
    assert "1 rows returned" in ok.stdout
    bad = run_client("sqlclient_main", [*base, "-u", "sha", "-w", "nope", "-q", "SHOW info"])
    assert bad.returncode != 0
    assert "401" in bad.stderr


def test_qasinosql_refuses_a_self_signed_certificate_without_skip_verify(
    https_server: HttpsServer,
) -> None:
    args = ["-H", HOST, "-t", "-p", str(https_server.https_port), "-u", "bee", "-w", "x"]
    done = run_client("sqlclient_main", [*args, "-q", "SHOW info"])
    assert done.returncode != 0
    assert "certificate" in done.stderr.lower()


def test_qasino_publish_over_https_default_transport(https_server: HttpsServer) -> None:
    table = (
        '{"tablename": "https_cli", "column_names": ["a"], "column_types": ["int"], "rows": [[1]]}'
    )
    args = ["-H", HOST, "-p", str(https_server.https_port), "-k", "-I", "cli", "-u", "apr"]
    done = run_client("publish_main", [*args, "-w", USERS["apr"]], stdin=table)
    assert done.returncode == 0, done.stderr
    assert "published table https_cli" in done.stdout
    refused = run_client("publish_main", [*args, "-w", "wrong"], stdin=table)
    assert refused.returncode != 0
    assert "401" in refused.stderr

"""What a new user trips over (issue 11, points 4 and 5): every client error
ends in one line that says what to do; --help documents every flag with its
default and the credential variables; --version everywhere."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import pexpect
import pytest
import requests

from qasino import __version__
from qasino.clients.csvpublisher import build_parser as csvpublisher_parser
from qasino.clients.publish import build_parser as publish_parser
from qasino.clients.sqlclient import build_parser as sqlclient_parser
from qasino.clients.transport import explain_http_failure
from qasino.server_main import build_parser as server_parser
from tests.e2e.conftest import HOST, new_server, server_env
from tests.e2e.test_https import USERS, HttpsServer, https_server, run_client  # noqa: F401
from tests.server_process import free_port

PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "server_main": server_parser,
    "sqlclient_main": sqlclient_parser,
    "publish_main": publish_parser,
    "csvpublisher_main": csvpublisher_parser,
}
TABLE = json.dumps(
    {"tablename": "newuser", "column_names": ["a"], "column_types": ["int"], "rows": [[1]]}
)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


# ---------------------------------------------------------------- --help, --version


@pytest.mark.parametrize("main", sorted(PARSERS))
def test_every_flag_has_help_text_with_its_default(main: str) -> None:
    parser = PARSERS[main]()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        if action.help == argparse.SUPPRESS:  # internal (--workers' --http-fd): not shown
            continue
        assert action.help and "default" in action.help, (main, action.option_strings)


@pytest.mark.parametrize("main", sorted(PARSERS))
def test_version_prints_the_package_version(main: str) -> None:
    done = run_client(main, ["--version"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{PARSERS[main]().prog} {__version__}"


def test_server_help_says_off_disables_a_port_and_names_the_lock() -> None:
    text = " ".join(server_parser().format_help().split())
    for flag in ("--line-port", "--http-port", "--pubsub-port", "--zmq-port", "--reader-threads"):
        assert flag in text
    assert text.count("off disables it") >= 5
    assert "one server per directory" in text


@pytest.mark.parametrize(
    ("main", "names"),
    [
        ("sqlclient_main", ("QASINO_SQLCLIENT_USERNAME", "QASINO_SQLCLIENT_PASSWORD", "--cacert")),
        ("publish_main", ("QASINO_CLIENT_USERNAME", "QASINO_CLIENT_PASSWORD", "--cacert")),
        ("csvpublisher_main", ("QASINO_CLIENT_USERNAME", "QASINO_CLIENT_PASSWORD", "--cacert")),
    ],
)
def test_client_help_names_its_credential_variables(main: str, names: tuple[str, ...]) -> None:
    text = PARSERS[main]().format_help()
    for name in names:
        assert name in text, name


@pytest.mark.parametrize("value", ["abc", "70000", "1.5"])
def test_a_bad_port_says_what_a_port_may_be(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        server_parser().parse_args(["--line-port", value])
    assert info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--line-port" in line and "0 (pick a free port) or off" in line, line
    assert "_port" not in line


# ---------------------------------------------------------------- client errors


def test_publish_to_a_closed_port_says_https_is_the_default_and_how_to_switch() -> None:
    port = free_port()
    done = run_client("publish_main", ["-H", HOST, "-p", str(port), "-I", "x"], stdin=TABLE)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "connection refused" in line and f"{HOST}:{port}" in line, line
    assert "HTTPS on port 443 unless told otherwise" in line and "-t" in line, line


def test_https_client_on_the_plain_http_port_is_told_to_use_http(
    https_server: HttpsServer,  # noqa: F811
) -> None:
    port = str(https_server.proc.ports["http"])
    # A TLS hello to a plain HTTP server gets no answer at all: the client
    # times out, and says which flag it probably needs.
    args = ["-H", HOST, "-p", port, "--timeout", "1"]
    published = run_client("publish_main", [*args, "-I", "x"], stdin=TABLE)
    assert published.returncode == 1
    assert "-t/--use-http" in one_line(published.stderr)
    queried = run_client("sqlclient_main", [*args, "-t", "-q", "SELECT 1"])
    assert queried.returncode == 1
    line = one_line(queried.stderr)
    assert "plain HTTP port" in line and "--use-http" in line, line


def test_http_client_on_the_https_port_is_told_to_use_https(https_server: HttpsServer) -> None:  # noqa: F811
    port = str(https_server.https_port)
    done = run_client("sqlclient_main", ["-H", HOST, "--use-http", "-p", port, "-q", "SELECT 1"])
    assert done.returncode == 1
    assert "-t/--use-https" in one_line(done.stderr)


def test_untrusted_certificate_says_how_to_pass_a_ca_file_or_skip(
    https_server: HttpsServer,  # noqa: F811
) -> None:
    base = ["-H", HOST, "-t", "-p", str(https_server.https_port), "-u", "bee", "-w", "bee-secret"]
    done = run_client("sqlclient_main", [*base, "-q", "SELECT 1"])
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "--cacert FILE" in line and "-s/--skip-ssl-verify" in line, line
    published = run_client(
        "publish_main", ["-H", HOST, "-p", str(https_server.https_port), "-I", "x"], stdin=TABLE
    )
    assert "-k/--skip-ssl-verify" in one_line(published.stderr)
    # And the CA file works as the message says.
    trusted = run_client(
        "sqlclient_main", [*base, "--cacert", str(https_server.cert), "-q", "SELECT 1 AS a"]
    )
    assert trusted.returncode == 0, trusted.stderr
    assert "1 rows returned" in trusted.stdout


def test_401_names_the_flags_and_variables_to_use(https_server: HttpsServer) -> None:  # noqa: F811
    base = [
        "-H",
        HOST,
        "-t",
        "-p",
        str(https_server.https_port),
        "--cacert",
        str(https_server.cert),
    ]
    done = run_client("sqlclient_main", [*base, "-q", "SELECT 1"])
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "401" in line and "QASINO_SQLCLIENT_USERNAME" in line and "-u USER" in line, line


def test_credentials_come_from_the_original_variables(https_server: HttpsServer) -> None:  # noqa: F811
    import os
    import subprocess
    import sys

    env = dict(
        server_env(), QASINO_SQLCLIENT_USERNAME="bee", QASINO_SQLCLIENT_PASSWORD="bee-secret"
    )
    args = [
        "-H",
        HOST,
        "-t",
        "-p",
        str(https_server.https_port),
        "--cacert",
        str(https_server.cert),
    ]
    code = (
        "import sys; from qasino.cli import sqlclient_main; sys.exit(sqlclient_main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args, "-q", "SELECT 2 AS b"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=os.getcwd(),
    )
    assert done.returncode == 0, done.stderr
    assert "1 rows returned" in done.stdout


def test_qasinosql_asks_for_the_password_on_a_terminal(https_server: HttpsServer) -> None:  # noqa: F811
    import sys

    code = (
        "import sys; from qasino.cli import sqlclient_main; sys.exit(sqlclient_main(sys.argv[1:]))"
    )
    args = [
        "-H",
        HOST,
        "-t",
        "-p",
        str(https_server.https_port),
        "--cacert",
        str(https_server.cert),
    ]
    env = {k: v for k, v in server_env().items() if not k.startswith("QASINO_SQLCLIENT")}
    child = pexpect.spawn(
        sys.executable,
        ["-c", code, *args, "-u", "bee", "-q", "SELECT 3 AS c"],
        env=env,
        encoding="utf-8",
        timeout=20,
    )
    try:
        child.expect("Password for bee: ")
        child.sendline("bee-secret")
        child.expect("1 rows returned")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_qasinosql_reading_a_pipe_prints_no_prompts(
    https_server: HttpsServer,  # noqa: F811
) -> None:
    args = ["-H", HOST, "-p", str(https_server.proc.ports["zmq"])]
    done = run_client("sqlclient_main", args, stdin="SELECT 1 AS a;\nSELECT\n 2 AS b;\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "a\n=\n1\n1 rows returned\nb\n=\n2\n1 rows returned\n"
    failing = run_client("sqlclient_main", args, stdin="SELECT * FROM nowhere;\n")
    assert failing.returncode == 1
    assert failing.stdout == ""
    assert "no such table: nowhere" in failing.stderr


def test_zmq_timeout_says_what_to_check() -> None:
    port = free_port()
    args = ["-H", HOST, "-p", str(port), "--timeout", "0.5", "-q", "SELECT 1"]
    done = run_client("sqlclient_main", args)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "--zmq-port" in line and "15598" in line, line


# ---------------------------------------------------------------- server -p without TLS


def test_htpasswd_without_tls_warns_at_start_and_still_serves(tmp_path: object) -> None:
    from pathlib import Path

    workdir = Path(str(tmp_path))
    (workdir / "htpasswd").write_text("bee:{SHA}x\n")
    proc = new_server(workdir, generation_s=600, extra_args=["-p", str(workdir / "htpasswd")])
    try:
        proc.start()
        log = proc.log_text()
        assert "protects nothing" in log and "plain HTTP stays open" in log, log
        assert proc.stop() == 0
    finally:
        proc.close()


# ---------------------------------------------------------------- messages, one by one


@pytest.mark.parametrize(
    ("error", "https", "wanted"),
    [
        (
            requests.exceptions.SSLError(
                "HTTPSConnectionPool(host='h', port=443): Max retries exceeded (Caused by "
                "SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] "
                "certificate verify failed: self-signed certificate')))"
            ),
            True,
            ("self-signed", "--cacert FILE", "-s/--skip-ssl-verify"),
        ),
        (
            requests.exceptions.SSLError(
                "certificate verify failed: Hostname mismatch, certificate is not valid "
                "for 'h'. hostname 'h' doesn't match"
            ),
            True,
            ("another host name", "-s/--skip-ssl-verify"),
        ),
        (
            requests.exceptions.SSLError("[SSL: WRONG_VERSION_NUMBER] wrong version number"),
            True,
            ("no TLS", "--use-http"),
        ),
        (
            requests.exceptions.ConnectionError("[Errno 111] Connection refused"),
            True,
            ("connection refused", "-H/-p", "--use-http", "-z/--use-zmq"),
        ),
        (
            requests.exceptions.ConnectionError("Failed to resolve 'nohost'"),
            False,
            ("unknown host name",),
        ),
        (
            requests.exceptions.ConnectionError(
                "('Connection aborted.', RemoteDisconnected('Remote end closed connection'))"
            ),
            False,
            ("-t/--use-https",),
        ),
        (requests.exceptions.ReadTimeout("read timed out"), True, ("--use-http", "--timeout")),
    ],
)
def test_transport_failures_are_explained_in_one_line(
    error: Exception, https: bool, wanted: tuple[str, ...]
) -> None:
    from qasino.clients.sqlclient import HINTS

    scheme = "https" if https else "http"
    line = explain_http_failure(error, f"{scheme}://h:1/request", https, HINTS)
    assert "\n" not in line
    for text in wanted:
        assert text in line, (text, line)

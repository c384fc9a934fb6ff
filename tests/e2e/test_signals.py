"""SIGHUP reloads TLS, htpasswd and views in the real process, dropping nothing;
SIGTERM/SIGINT still stop it with exit 0 (see test_server.py)."""

from __future__ import annotations

import shutil
import signal
import ssl
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import HOST, LineClient, http_query, new_server, poll_until, rows_of
from tests.e2e.test_https import USERS, write_htpasswd
from tests.tls_helpers import make_cert


def served_cert(port: int) -> str:
    return ssl.get_server_certificate((HOST, port))


def pem(path: Path) -> str:
    return ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(path.read_text()))


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_sighup_reloads_cert_htpasswd_and_views_without_dropping_anything(
    tmp_path: Path,
) -> None:
    work = tmp_path / "hup"
    work.mkdir()
    cert, key = make_cert(work)
    htpasswd = work / "htpasswd"
    write_htpasswd(htpasswd)
    (work / "views.conf").write_text(
        "- viewname: v_one\n  view: CREATE VIEW v_one AS SELECT 1 AS one\n"
    )
    extra = ["--https-port", "0", "--tls-cert", str(cert), "--tls-key", str(key)]
    extra += ["-p", str(htpasswd)]
    proc = new_server(work, generation_s=1, extra_args=extra)
    try:
        proc.start()
        https = proc.ports["https"]
        url = f"https://{HOST}:{https}/request"
        assert served_cert(https) == pem(cert)
        idle = LineClient(proc.ports["line"])
        session = requests.Session()  # a kept-alive HTTPS connection
        session.auth = ("bee", USERS["bee"])
        one = {"op": "query", "sql": "SELECT 1"}
        assert session.get(url, params=one, verify=False, timeout=10).status_code == 200
        before = proc.wait_generation()

        # New files: another certificate, only user "new", another view.
        other = work / "other"
        other.mkdir()
        new_cert, new_key = make_cert(other)
        shutil.copy(new_cert, cert)
        shutil.copy(new_key, key)
        htpasswd.write_text(htpasswd.read_text().split("\n")[1] + "\n")  # only "apr" stays
        (work / "views.conf").write_text(
            "- viewname: v_two\n  view: CREATE VIEW v_two AS SELECT 2 AS two\n"
        )
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_log("reloaded the TLS certificate and key")
        proc.wait_log("reloaded the htpasswd")
        proc.wait_log(r"views file .* reloaded")

        assert served_cert(https) == pem(new_cert)
        fresh = requests.get(url, params=one, verify=False, auth=("bee", USERS["bee"]), timeout=10)
        assert fresh.status_code == 401
        apr = requests.get(
            url,
            params=one,
            verify=False,
            auth=("apr", USERS["apr"]),
            timeout=10,
        )
        assert apr.status_code == 200
        # The connections opened before the reload still work (this one
        # authenticated before, its cached login is forgotten: 401 now).
        assert session.get(url, params=one, verify=False, timeout=10).status_code == 401
        idle.send("SELECT 7 AS seven;\n")
        assert "1 rows returned" in idle.read_answers(1)
        idle.close()
        # Generations went on, one after another.
        after = proc.wait_generation(after=before["generation_number"])
        assert after["generation_number"] > before["generation_number"]
        proc.wait_generation(after=after["generation_number"])
        views = rows_of(http_query(proc.ports["http"], "SHOW views;"))
        assert [v[:2] for v in views] == [["v_two", "1"]]
        assert proc.alive()
    finally:
        proc.close()


def test_sighup_with_a_broken_certificate_keeps_the_old_one(tmp_path: Path) -> None:
    work = tmp_path / "badhup"
    work.mkdir()
    cert, key = make_cert(work)
    extra = ["--https-port", "0", "--tls-cert", str(cert), "--tls-key", str(key)]
    proc = new_server(work, generation_s=600, extra_args=extra)
    try:
        proc.start()
        good = served_cert(proc.ports["https"])
        cert.write_text("not a certificate\n")
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_log("TLS certificate and key not reloaded, keeping the last good one")
        assert served_cert(proc.ports["https"]) == good
        assert proc.stop(signal.SIGTERM) == 0
    finally:
        proc.close()


def test_sighup_reopens_the_log_file_after_logrotate_moved_it(tmp_path: Path) -> None:
    proc = new_server(tmp_path / "rotate", generation_s=600)
    try:
        proc.start()
        assert proc.log_path is not None and proc.proc is not None
        moved = proc.log_path.with_suffix(".log.1")
        proc.log_path.rename(moved)
        proc.proc.send_signal(signal.SIGHUP)
        poll_until(proc.log_path.exists, 10, "a new log file")
        proc.wait_log(r"views file .* reloaded")
        assert "reloading (SIGHUP)" in moved.read_text()
        assert "listening on" not in proc.log_text()
        assert proc.stop() == 0
        assert "qasino_server stopped" in proc.log_text()
    finally:
        proc.close()

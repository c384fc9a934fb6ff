"""The wheel, built from a copy of the checkout and installed in a fresh venv
outside it, serves the web UI; the Docker image's entry command and health
check, run in that venv, start a server that becomes ready.

One wheel build and one venv for the module (about ten seconds). The
venv borrows the dependencies of the interpreter running the tests (a path
line in a .pth file, whose own .pth files, such as an editable install of
this checkout, are not processed), so nothing is downloaded but the build
backend.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.server_process import HOST, REPO_ROOT, free_port, poll_until

pytestmark = pytest.mark.packaging

BUILD_TIMEOUT = 300
SETUPTOOLS_WARNING = re.compile(r"_Warning|SetuptoolsDeprecationWarning|absent from the `packages`")


@dataclass
class Installed:
    venv: Path
    bin: Path
    build_log: str


def copy_checkout(dest: Path) -> None:
    """What the Dockerfile copies: the build files and the package."""
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO_ROOT / name, dest / name)
    shutil.copytree(
        REPO_ROOT / "qasino", dest / "qasino", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(REPO_ROOT / "contrib", dest / "contrib")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    copy_checkout(src)
    dist = root / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        cwd=root,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheels = list(dist.glob("qasino-*.whl"))
    assert len(wheels) == 1, wheels
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
        + [str(wheels[0])],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return Installed(venv, venv / "bin", build.stdout + build.stderr)


def clean_env(installed: Installed, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QASINO_", "PYTHON"))}
    env["PATH"] = f"{installed.bin}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError("server did not stop on SIGTERM") from None


def test_the_wheel_builds_without_setuptools_warnings(installed: Installed) -> None:
    assert not SETUPTOOLS_WARNING.search(installed.build_log), installed.build_log[-4000:]


def test_the_installed_package_has_its_data_and_metadata(installed: Installed) -> None:
    code = (
        "import json, qasino, importlib.metadata as m, importlib.resources as r;"
        "d = m.metadata('qasino');"
        "print(json.dumps({'file': qasino.__file__, 'version': qasino.__version__,"
        "'meta_version': d['Version'], 'license': d['License-Expression'],"
        "'requires_python': d['Requires-Python'],"
        "'typed': r.files('qasino').joinpath('py.typed').is_file(),"
        "'css': r.files('qasino.web.static').joinpath('qasino.css').is_file(),"
        "'templates': sorted(p.name for p in r.files('qasino.web.templates').iterdir())}))"
    )
    done = subprocess.run(
        [str(installed.bin / "python"), "-c", code],
        capture_output=True,
        text=True,
        env=clean_env(installed),
        cwd=installed.venv,
        check=True,
    )
    info = json.loads(done.stdout)
    assert info["file"].startswith(str(installed.venv)), info["file"]
    assert info["version"] == info["meta_version"]
    assert info["license"] == "MIT" and info["requires_python"] == ">=3.10"
    assert info["typed"] and info["css"]
    assert "base.html" in info["templates"] and "tables.html" in info["templates"]


def test_the_installed_server_serves_the_web_ui(installed: Installed, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    args = ["--bind", HOST, "--http-port", str(port), "--line-port", "0", "--zmq-port", "0"]
    args += ["--pubsub-port", "0", "-d", str(tmp_path / "db"), "--log-file", str(log)]
    proc = subprocess.Popen(
        [str(installed.bin / "qasino_server"), *args],
        cwd=tmp_path,
        env=clean_env(installed),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        poll_until(
            lambda: (
                proc.poll() is None and "HTTP listening" in log.read_text()
                if log.exists()
                else proc.poll() is not None
            ),
            30,
            "the installed server to listen",
        )
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        status, page = get(port, "/tables")
        assert status == 200 and b"<html" in page.lower()
        status, css = get(port, "/static/qasino.css")
        assert status == 200 and len(css) > 100
        assert get(port, "/-/healthy") == (200, b"OK\n")
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


# ---------------------------------------------------------------- the Docker image


def dockerfile() -> dict[str, object]:
    """ENV, ENTRYPOINT, CMD and the HEALTHCHECK command of the Dockerfile."""
    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found: dict[str, object] = {"env": {}}
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                found["env"][key] = value  # type: ignore[index]
        elif word in ("ENTRYPOINT", "CMD"):
            found[word] = json.loads(rest)
        elif word == "HEALTHCHECK":
            found["HEALTHCHECK"] = json.loads(rest.split(" CMD ", 1)[1])
        elif word == "EXPOSE":
            found["EXPOSE"] = sorted(int(p) for p in rest.split())
        elif word == "USER":
            found["USER"] = rest.strip()
        elif word == "VOLUME":
            found["VOLUME"] = json.loads(rest)
    return found


def in_tmp(value: str, root: Path) -> str:
    for volume in ("/config", "/data"):
        value = value.replace(volume, str(root) + volume)
    return value


def test_the_image_runs_as_a_user_exposes_every_port_and_keeps_data_in_volumes() -> None:
    image = dockerfile()
    assert image["USER"] not in ("root", "0")
    assert image["EXPOSE"] == [15000, 15443, 15596, 15597, 15598]
    assert image["VOLUME"] == ["/data", "/config"]
    assert image["env"]["QASINO_DB_DIR"] == "/data"  # type: ignore[index]
    assert "/-/ready" in " ".join(image["HEALTHCHECK"])  # type: ignore[arg-type]


def test_the_images_entry_command_and_health_check_work_in_a_venv(
    installed: Installed, tmp_path: Path
) -> None:
    """The image's command with its volumes under tmp_path (and the default
    ports moved to free ones): the health check passes once a snapshot was
    taken; SIGTERM exits 0."""
    image = dockerfile()
    (tmp_path / "config").mkdir()
    (tmp_path / "data").mkdir()
    shutil.copy(REPO_ROOT / "contrib" / "qasino.toml", tmp_path / "config" / "qasino.toml")
    (tmp_path / "config" / "views.conf").write_text("[]\n")
    env = {k: in_tmp(v, tmp_path) for k, v in image["env"].items()}  # type: ignore[attr-defined]
    http = free_port()
    env.update(
        QASINO_BIND=HOST,
        QASINO_HTTP_PORT=str(http),
        QASINO_LINE_PORT="0",
        QASINO_ZMQ_PORT="0",
        QASINO_PUBSUB_PORT="0",
        QASINO_GENERATION_DURATION="1",
    )
    command = [in_tmp(w, tmp_path) for w in image["ENTRYPOINT"] + image["CMD"]]  # type: ignore[operator]
    proc = subprocess.Popen(
        command,
        cwd=tmp_path / "data",
        env=clean_env(installed, **env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def healthy() -> bool:
        assert proc.poll() is None, "the server exited"
        check = subprocess.run(
            image["HEALTHCHECK"],  # type: ignore[arg-type]
            env=clean_env(installed, **env),
            capture_output=True,
            timeout=10,
        )
        return check.returncode == 0

    try:
        started = time.monotonic()
        poll_until(healthy, 30, "the image's health check to pass", interval=0.2)
        assert time.monotonic() - started < 30
        assert list((tmp_path / "data").iterdir()), "nothing written to the data volume"
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- systemd


def test_the_systemd_unit_is_valid_and_reloads_with_sighup(
    installed: Installed, tmp_path: Path
) -> None:
    text = (REPO_ROOT / "contrib" / "systemd" / "qasino.service").read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#"
    )
    assert settings["User"] == "qasino" and settings["Restart"] == "on-failure"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "--config /etc/qasino/qasino.toml" in settings["ExecStart"]
    assert settings["NoNewPrivileges"] == "yes" and settings["ProtectSystem"] == "strict"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "qasino.service"
    unit.write_text(
        text.replace("/usr/local/bin/qasino_server", str(installed.bin / "qasino_server"))
    )
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr

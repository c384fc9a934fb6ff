"""The reliability suite: the real daemon under load, crashes and faults.

Default mode is the short CI run. ``--soak`` (or ``QASINO_SOAK=1``) scales the
load and fault tests up: more publishers, more generations, more crash cycles.
Single figures of either mode can be overridden from the environment
(``QASINO_LOAD_PUBLISHERS``, ``QASINO_LOAD_GENERATIONS``,
``QASINO_CRASH_CYCLES``), e.g. to cap a soak run.

``--soak`` is registered by this conftest, so give pytest a path inside
``tests/reliability`` for it; ``QASINO_SOAK=1`` works from anywhere.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.server_process import QasinoProcess, base_flags, poll_until

SOAK_ENV = "QASINO_SOAK"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qasino reliability")
    group.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run the reliability load and fault tests in their long soak mode "
        f"(same as {SOAK_ENV}=1)",
    )


def soak_enabled(config: pytest.Config) -> bool:
    if config.getoption("soak", default=False):
        return True
    return os.environ.get(SOAK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Profile:
    """How hard the load and fault tests push."""

    name: str
    publishers: int  # concurrent publisher identities
    tables: int  # tables each publisher sends per generation
    rows: int  # rows per published table
    generations: int  # generations of load
    generation_s: float  # the server's -g
    zmq_share: float  # share of publishers on ZeroMQ REQ (the rest: HTTP keep-alive)
    crash_cycles: int  # kill -9 / restart cycles


CI_PROFILE = Profile(
    "ci",
    publishers=200,
    tables=2,
    rows=5,
    generations=6,
    generation_s=2.0,
    zmq_share=0.5,
    crash_cycles=3,
)
SOAK_PROFILE = Profile(
    "soak",
    publishers=300,
    tables=3,
    rows=10,
    generations=60,
    generation_s=3.0,
    zmq_share=0.5,
    crash_cycles=15,
)

_OVERRIDES = {
    "QASINO_LOAD_PUBLISHERS": "publishers",
    "QASINO_LOAD_GENERATIONS": "generations",
    "QASINO_CRASH_CYCLES": "crash_cycles",
}


def current_profile(config: pytest.Config) -> Profile:
    profile = SOAK_PROFILE if soak_enabled(config) else CI_PROFILE
    changes: dict[str, Any] = {}
    for env, field_name in _OVERRIDES.items():
        value = os.environ.get(env, "").strip()
        if value:
            changes[field_name] = max(1, int(value))
    return replace(profile, **changes) if changes else profile


def pytest_report_header(config: pytest.Config) -> str:
    p = current_profile(config)
    return (
        f"qasino reliability profile: {p.name} ({p.publishers} publishers x "
        f"{p.tables} tables x {p.generations} generations of {p.generation_s:g}s, "
        f"{p.crash_cycles} crash cycles)"
    )


@pytest.fixture(scope="session")
def profile(pytestconfig: pytest.Config) -> Profile:
    return current_profile(pytestconfig)


# ---------------------------------------------------------------- server processes


class ReliabilityProcess(QasinoProcess):
    """A QasinoProcess whose command may be wrapped (``prefix``): in a mount
    namespace, or behind a resource limit. The wrappers ``exec`` the server,
    so ``pid`` is the server's own pid."""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def fsize_limit_prefix(limit_bytes: int) -> list[str]:
    """Run the server with RLIMIT_FSIZE = ``limit_bytes`` (soft and hard), as a
    ``preexec_fn`` would: writes past it fail with EFBIG (Python ignores
    SIGXFSZ)."""
    code = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes})); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", code]


def new_process(
    workdir: Path,
    generation_s: float = 1,
    extra_args: Sequence[str] = (),
    prefix: Sequence[str] = (),
) -> ReliabilityProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    views = workdir / "views.conf"
    if not views.exists():
        views.write_text("[]\n")
    args = base_flags(workdir / "db", views, generation_s) + list(extra_args)
    return ReliabilityProcess(workdir, args, prefix)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    """Factory of (unstarted) servers; every one is killed at teardown."""
    made: list[ReliabilityProcess] = []

    def make(
        name: str = "server",
        generation_s: float = 1,
        extra_args: Sequence[str] = (),
        prefix: Sequence[str] = (),
    ) -> ReliabilityProcess:
        proc = new_process(tmp_path / name, generation_s, extra_args, prefix)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.close()


# ---------------------------------------------------------------- measurements


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def percentile(values: Sequence[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[k]


def latency_summary(values: Sequence[float]) -> str:
    if not values:
        return "n=0"
    return (
        f"n={len(values)} p50={percentile(values, 50) * 1000:.1f}ms "
        f"p99={percentile(values, 99) * 1000:.1f}ms max={max(values) * 1000:.1f}ms"
    )


def deadline_poll(check: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """``check()`` until truthy, else fail after ``timeout`` seconds."""
    return poll_until(check, timeout, what, interval)


@contextlib.contextmanager
def stopwatch(label: str) -> Iterator[None]:
    t0 = time.monotonic()
    try:
        yield
    finally:
        print(f"[timing] {label}: {time.monotonic() - t0:.2f}s")


# ---------------------------------------------------------------- mount namespaces


def _run_quiet(cmd: Sequence[str], timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)


@dataclass(frozen=True)
class MountNamespace:
    """How to start the server in its own mount namespace and run commands in it."""

    launch_prefix: tuple[str, ...]
    enter_prefix: tuple[str, ...]  # nsenter and its options, before "-t PID -m"

    def enter(self, pid: int, script: str) -> subprocess.CompletedProcess[str]:
        return _run_quiet([*self.enter_prefix, "-t", str(pid), "-m", "--", "sh", "-c", script])


SKIP_MOUNT_ENV = "QASINO_SKIP_MOUNT_TESTS"


def mount_namespace(probe_dir: Path) -> tuple[Optional[MountNamespace], str]:
    """A private mount namespace in which a read-only bind mount can be made
    (as root: ``unshare -m``; otherwise a user namespace: ``unshare -r -m``),
    or None and the reason this machine allows none."""
    probe_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        launch = ("unshare", "-m", "--propagation", "private", "--")
        enter: tuple[str, ...] = ("nsenter",)
    else:
        launch = ("unshare", "-r", "-m", "--propagation", "private", "--")
        enter = ("nsenter", "--preserve-credentials", "-U")
    script = (
        f"mount --bind '{probe_dir}' '{probe_dir}' && "
        f"mount -o remount,bind,ro '{probe_dir}' && "
        f"! touch '{probe_dir}/probe' 2>/dev/null"
    )
    command = [*launch, "sh", "-c", script]
    try:
        result = _run_quiet(command)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"{' '.join(command[:6])} ...: {e}"
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip() or f"exit code {result.returncode}"
        return None, f"{' '.join(command[:6])} ...: {output}"
    return MountNamespace(launch, enter), ""


def require_mount_namespace(probe_dir: Path) -> MountNamespace:
    """The mount namespace the full-disk and read-only-disk tests need.

    Without one these tests fail (never skip silently): CI runs as root,
    where ``unshare -m`` works. On a machine with neither root nor user
    namespaces, set QASINO_SKIP_MOUNT_TESTS=1 to skip them on purpose
    (``.ci/run`` clears it, so CI never does)."""
    ns, reason = mount_namespace(probe_dir)
    if ns is not None:
        return ns
    if os.environ.get(SKIP_MOUNT_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        pytest.skip(f"{SKIP_MOUNT_ENV} is set and no private mount namespace here: {reason}")
    pytest.fail(
        "the full-disk and read-only-disk tests need a private mount namespace (root, or "
        f"user namespaces and util-linux's unshare/nsenter), and this machine gave none: "
        f"{reason}. Run as root, enable user namespaces "
        "(sysctl kernel.unprivileged_userns_clone=1), or set "
        f"{SKIP_MOUNT_ENV}=1 to skip these tests on purpose.",
        pytrace=False,
    )

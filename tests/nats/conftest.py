"""Fixtures: one 3-node JetStream cluster per test module, Qasino servers on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.nats.cluster import NatsCluster, NatsNode, have_nats_server
from tests.server_process import QasinoProcess, free_port, new_server

GENERATION_S = 1


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    if not have_nats_server():
        pytest.fail(
            "nats-server is not installed (Debian package nats-server; .ci/run installs it)"
        )
    c = NatsCluster(tmp_path_factory.mktemp("nats"))
    c.start()
    try:
        yield c
    finally:
        c.stop()


def _maker(
    workdir: Path, cluster: NatsCluster, made: list[QasinoProcess]
) -> Callable[..., QasinoProcess]:
    def make(name: str, *extra: str, start: bool = True, **kwargs: Any) -> QasinoProcess:
        url = kwargs.pop("nats_url", cluster.url)
        caught_up = kwargs.pop("caught_up", True)
        args = ["--nats", url, "--nats-replicas", "3", *extra]
        server = new_server(workdir / name, GENERATION_S, args)
        server.args[server.args.index("-i") + 1] = name
        made.append(server)
        if start:
            server.start(**kwargs)
            if caught_up:
                server.wait_log("caught up with stream", timeout=20)
        return server

    return make


@pytest.fixture
def nats_server(tmp_path: Path, cluster: NatsCluster) -> Iterator[Callable[..., QasinoProcess]]:
    """Start Qasino servers on the cluster: ``make(name, *extra_args)``."""
    made: list[QasinoProcess] = []
    yield _maker(tmp_path, cluster, made)
    for server in made:
        server.close()
    cluster.ensure_all_alive()


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, cluster: NatsCluster
) -> Iterator[tuple[QasinoProcess, QasinoProcess]]:
    """Two servers on the module's cluster, shared by the tests that only
    publish and compare (each uses tables of its own)."""
    made: list[QasinoProcess] = []
    make = _maker(tmp_path_factory.mktemp("pair"), cluster, made)
    try:
        yield make("pa1"), make("pa2")
    finally:
        for server in made:
            server.close()


@pytest.fixture
def single_node(tmp_path: Path) -> Iterator[NatsNode]:
    """A one-node JetStream server of the test's own (to take away entirely)."""
    node = NatsNode("solo", tmp_path / "solo", free_port(), free_port())
    node.start()
    try:
        yield node
    finally:
        node.stop()

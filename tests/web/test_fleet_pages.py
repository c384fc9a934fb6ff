"""The identities page and history tables in the web UI (docs/fleet.md),
rendered in memory through the real resource tree (no reactor)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.web import server

from qasino.engine import Engine
from qasino.frontends.http import make_site
from qasino.ops import Dispatcher
from qasino.store.store import Store, StoreConfig
from tests.web.test_pages import fetch, publish


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(StoreConfig(db_dir=str(tmp_path), history=3), now=1000.0)
    yield s
    s.close()


@pytest.fixture
def site(dispatcher: Dispatcher) -> server.Site:
    return make_site(dispatcher)


def test_identities_page_lists_stale_identities_first_and_is_in_the_nav(
    site: server.Site, dispatcher: Dispatcher, engine: Engine, clock: Clock
) -> None:
    publish(dispatcher, "t1", ["a"], ["int"], [[1], [2]], identity="quiet")
    clock.advance(5)
    engine.rotate()
    publish(dispatcher, "t1", ["a"], ["int"], [[3]], identity="busy")
    clock.advance(5)
    engine.rotate()
    response = fetch(site, "/identities")
    assert response.code == 200
    rows = response.html.table("identities")
    assert rows[0][:5] == ["identity", "state", "generations missed", "tables", "rows"]
    assert [r[:5] for r in rows[1:]] == [
        ["quiet", "stale", "1", "0", "0"],
        ["busy", "live", "0", "1", "1"],
    ]
    assert "/identities" in {link["href"] for link in fetch(site, "/tables").html.links}


def test_history_tables_are_listed_and_described(
    site: server.Site, dispatcher: Dispatcher, engine: Engine, clock: Clock
) -> None:
    publish(dispatcher, "t1", ["a"], ["int"], [[1]])
    clock.advance(5)
    engine.rotate()
    links = {link["href"] for link in fetch(site, "/tables").html.links}
    assert "/desc?tablename=history.t1" in links
    response = fetch(site, "/desc?tablename=history.t1")
    assert response.code == 200
    assert response.html.table("columns")[1:] == [
        ["generation_number", "INTEGER"],
        ["a", "INTEGER"],
    ]
    assert fetch(site, "/desc?tablename=history.no_such").code == 404
    assert fetch(site, "/desc?tablename=history.a%20b").code == 400

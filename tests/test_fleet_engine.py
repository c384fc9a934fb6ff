"""Fleet bookkeeping driven by the generation timer on a fake clock
(twisted.internet.task.Clock): no reactor, no sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from qasino.core.model import Publish, PublishOptions, Table
from qasino.engine import Engine, EngineService, SyncRunner
from qasino.server_main import build_parser, config_from_args
from qasino.store.store import Store, StoreConfig

DURATION = 10.0


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(1_700_000_000)
    return c


@pytest.fixture
def engine(tmp_path: Path, clock: Clock) -> Iterator[Engine]:
    store = Store(
        StoreConfig(
            db_dir=str(tmp_path / "db"),
            generation_duration_s=DURATION,
            keep_stale=1,
            persist_ttl=2,
            history=3,
        ),
        now=clock.seconds(),
    )
    engine = Engine(store, SyncRunner(), clock, "server1")
    service = EngineService(engine, DURATION)
    service.startService()
    yield engine
    service.stopService()


def send(engine: Engine, identity: str, value: int, persist: bool = False) -> None:
    table = Table("t" if not persist else "p", ("v",), ("INTEGER",), [[value]])
    engine.publish(Publish(table, PublishOptions(identity, persist=persist)))


def rows(engine: Engine, sql: str) -> list[tuple[object, ...]]:
    return [tuple(r) for r in engine.store.query(sql).rows]


def test_timer_driven_generations_count_missed_carry_once_and_expire_persist(
    engine: Engine, clock: Clock
) -> None:
    send(engine, "a", 1)
    send(engine, "b", 2)
    send(engine, "a", 7, persist=True)
    clock.advance(DURATION)  # snapshot 1: a and b fresh
    states = []
    for step in range(4):
        send(engine, "b", 10 + step)
        clock.advance(DURATION)
        states.append(
            (
                rows(
                    engine,
                    "SELECT identity, generations_missed, stale FROM qasino_server_identities",
                ),
                rows(
                    engine,
                    "SELECT tablename, age_generations FROM qasino_server_table_identities"
                    " WHERE identity = 'a'",
                ),
                engine.identity_counts(),
            )
        )
    live_b = ("b", 0, 0)
    assert states[0] == ([("a", 1, 1), live_b], [("p", 1), ("t", 1)], {"live": 1, "stale": 1})
    assert states[1] == ([("a", 2, 1), live_b], [("p", 2)], {"live": 1, "stale": 1})
    assert states[2] == ([("a", 3, 1), live_b], [], {"live": 1, "stale": 1})
    # the history holds the last 3 snapshots of b's values
    assert rows(engine, "SELECT v FROM history.t WHERE v >= 10 ORDER BY generation_number") == [
        (11,),
        (12,),
        (13,),
    ]


@pytest.mark.parametrize("flag", ["--keep-stale", "--persist-ttl", "--history"])
def test_fleet_flags_default_to_the_original_behaviour_and_refuse_negatives(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args([])
    config = config_from_args(args)
    assert (config.keep_stale, config.persist_ttl, config.history) == (0, 0, 0)
    assert (
        getattr(
            config_from_args(build_parser().parse_args([flag, "3"])), flag[2:].replace("-", "_")
        )
        == 3
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args([flag, "-1"])
    assert "must be 0 or more" in capsys.readouterr().err

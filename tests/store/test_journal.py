"""The writer generation's journal (qasino/store/journal.py): a store that
dies without closing leaves what it acknowledged, and the next one on the
data directory applies it again. Real apsw files; a "kill" is a store
dropped without ``close`` (its lock and journal file let go as the kernel
would)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from qasino.core.errors import PublishRejected
from qasino.store import journal
from qasino.store.store import Store, StoreConfig
from tests.store.test_store import NOW, publish, rows, table


def config(tmp_path: Path, **options: int) -> StoreConfig:
    return StoreConfig(
        db_dir=str(tmp_path / "db"),
        generation_duration_s=30,
        journal=True,
        **options,  # type: ignore[arg-type]
    )


def killed(store: Store) -> None:
    """What SIGKILL leaves: files as they are, the lock released."""
    assert store._journal is not None
    store._journal.close(delete=False)
    store._writer.conn.close()
    store.dir_lock.release()


@pytest.fixture
def stores() -> Iterator[list[Store]]:
    made: list[Store] = []
    yield made
    for s in made:
        if not s._closed and s.dir_lock._fd is not None:
            s.close()


def cpu(host: str, n: int) -> object:
    return table("cpu", "host TEXT, n INTEGER", [[host, n]])


def test_a_killed_store_loses_no_acknowledged_publish(tmp_path: Path, stores: list[Store]) -> None:
    cfg = config(tmp_path)
    first = Store(cfg, now=NOW)
    stores.append(first)
    publish(first, cpu("a", 1), identity="a")
    publish(first, cpu("b", 2), identity="b")
    publish(
        first,
        table("up", "k TEXT, v INTEGER", [["x", 1]]),
        identity="c",
        update=True,
        keycols=("k",),
    )
    publish(
        first,
        table("up", "k TEXT, v INTEGER", [["x", 2]]),
        identity="c",
        update=True,
        keycols=("k",),
    )
    first.name_value_update("nv", "color", "red", "d", NOW + 2)
    with pytest.raises(PublishRejected):  # refused: not journaled, not replayed
        publish(first, cpu("a", 99), identity="a")
    killed(first)

    second = Store(cfg, now=NOW + 5)
    stores.append(second)
    assert rows(second, "SELECT host, n FROM cpu ORDER BY host", use_write_db=True) == [
        ("a", 1),
        ("b", 2),
    ]
    assert rows(second, "SELECT k, v FROM up", use_write_db=True) == [("x", 2)]
    assert rows(second, "SELECT identity, color FROM nv", use_write_db=True) == [("d", "red")]
    # Once per identity per generation still holds for what was replayed.
    with pytest.raises(PublishRejected):
        publish(second, cpu("a", 3), identity="a")
    # The next snapshot serves it.
    second.rotate(NOW + 30)
    assert rows(second, "SELECT count(*) FROM cpu") == [(2,)]


def test_persisted_tables_carried_from_earlier_generations_survive_a_kill(
    tmp_path: Path, stores: list[Store]
) -> None:
    cfg = config(tmp_path, persist_ttl=3)
    first = Store(cfg, now=NOW)
    stores.append(first)
    publish(first, table("p", "x INTEGER", [[7]]), identity="h", persist=True)
    first.rotate(NOW + 30)
    first.rotate(NOW + 60)  # carried into a third generation, age 2
    killed(first)

    second = Store(cfg, now=NOW + 61)
    stores.append(second)
    assert rows(second, "SELECT x FROM p", use_write_db=True) == [(7,)]
    second.rotate(NOW + 90)
    assert rows(second, "SELECT identity, age_generations FROM qasino_server_table_identities") == [
        ("h", 2)
    ]
    # --persist-ttl 3 counts on from the age it had: one more, then gone.
    second.rotate(NOW + 120)
    assert rows(second, "SELECT x FROM p") == [(7,)]
    second.rotate(NOW + 150)
    assert "p" not in {r[0] for r in rows(second, "SELECT tablename FROM qasino_server_tables")}


def test_served_generations_leave_no_journal_and_a_clean_close_none_at_all(
    tmp_path: Path, stores: list[Store]
) -> None:
    cfg = config(tmp_path)
    s = Store(cfg, now=NOW)
    stores.append(s)
    for i in range(3):
        publish(s, cpu("a", i), identity="a", now=NOW + 30 * i + 1)
        s.rotate(NOW + 30 * (i + 1))
    assert len(journal.left_behind(cfg.db_dir)) == 1  # the writer generation's
    s.close()
    assert journal.left_behind(cfg.db_dir) == []
    again = Store(cfg, now=NOW + 200)  # a clean restart starts empty, as always
    stores.append(again)
    assert rows(again, "SELECT name FROM sqlite_master WHERE name = 'cpu'", True) == []


def test_an_old_journal_is_not_replayed(tmp_path: Path, stores: list[Store]) -> None:
    cfg = config(tmp_path)
    first = Store(cfg, now=NOW)
    stores.append(first)
    publish(first, cpu("a", 1), identity="a")
    killed(first)
    old = time.time() - 61  # two generations of 30 s and more
    for path in journal.left_behind(cfg.db_dir):
        os.utime(path, (old, old))
    second = Store(cfg, now=NOW + 100)
    stores.append(second)
    assert rows(second, "SELECT name FROM sqlite_master WHERE name = 'cpu'", True) == []
    assert len(journal.left_behind(cfg.db_dir)) == 1  # only the new run's own file


def test_a_torn_last_record_is_ignored(tmp_path: Path, stores: list[Store]) -> None:
    cfg = config(tmp_path)
    first = Store(cfg, now=NOW)
    stores.append(first)
    publish(first, cpu("a", 1), identity="a")
    publish(first, cpu("b", 2), identity="b")
    killed(first)
    (path,) = journal.left_behind(cfg.db_dir)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 3)
    second = Store(cfg, now=NOW + 5)
    stores.append(second)
    assert rows(second, "SELECT host FROM cpu", use_write_db=True) == [("a",)]


def test_cells_of_every_kind_round_trip(tmp_path: Path, stores: list[Store]) -> None:
    cfg = config(tmp_path)
    first = Store(cfg, now=NOW)
    stores.append(first)
    cells = ["naïve \u2028 \x7f", '"quoted"', "", None, 2**62, 1.5e-300]
    publish(first, table("odd", "v TEXT", [[c] for c in cells]), identity="a")
    killed(first)
    second = Store(cfg, now=NOW + 5)
    stores.append(second)
    got = rows(second, "SELECT v FROM odd ORDER BY rowid", use_write_db=True)
    assert [r[0] for r in got] == [str(c) if isinstance(c, (int, float)) else c for c in cells]


@pytest.mark.parametrize("count", [0, 1, 3, 4, 7, 9])
def test_rows_encoded_in_slices_read_back_the_same(
    count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "ROW_SLICE", 3)
    rows = [(i, f"r{i}", None) if i % 2 else [i, f"r{i}", 1.5] for i in range(count)]
    data = journal.with_rows(["p", ["t"], None], rows)
    assert orjson.loads(data) == ["p", ["t"], None, [list(r) for r in rows]]


def test_a_big_table_survives_a_kill(tmp_path: Path, stores: list[Store]) -> None:
    cfg = config(tmp_path)
    first = Store(cfg, now=NOW)
    stores.append(first)
    big = table("big", "i INTEGER, s TEXT", [[i, f"row {i}"] for i in range(25_000)])
    publish(first, big, identity="a")
    killed(first)
    second = Store(cfg, now=NOW + 5)
    stores.append(second)
    assert rows(second, "SELECT count(*), sum(i) FROM big", use_write_db=True) == [
        (25_000, sum(range(25_000)))
    ]

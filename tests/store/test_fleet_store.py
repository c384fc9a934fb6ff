"""Identities, --keep-stale, --persist-ttl and --history in the store
(docs/fleet.md): real apsw files, time and generations passed in explicitly."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from qasino.core.errors import QueryError, QueryRefused, StoreError
from qasino.store.store import Store, StoreConfig
from tests.store.test_store import NOW, gen_files, publish, rows, table


def make(tmp_path: Path, **options: int) -> Store:
    return Store(StoreConfig(db_dir=str(tmp_path / "db"), **options), now=NOW)  # type: ignore[arg-type]


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[list[Store]]:
    made: list[Store] = []
    yield made
    for s in made:
        s.close()


def cpu(n: int, host: str = "h") -> object:
    return table("cpu", "host TEXT, n INTEGER", [[host, n]] * n)


def test_identities_count_missed_generations_and_mark_stale(
    tmp_path: Path, stores: list[Store]
) -> None:
    s = make(tmp_path)
    stores.append(s)
    publish(s, cpu(2), identity="a", now=NOW + 1)
    publish(s, cpu(3), identity="b", now=NOW + 2)
    first = s.rotate(NOW + 30)
    publish(s, cpu(1), identity="a", now=NOW + 31)
    second = s.rotate(NOW + 60)
    s.rotate(NOW + 90)
    assert rows(
        s,
        "SELECT identity, first_seen_epoch, last_seen_epoch, last_generation_number,"
        " generations_missed, nr_tables, nr_rows, stale FROM qasino_server_identities",
    ) == [
        ("a", NOW + 1, NOW + 31, second.generation_number, 1, 0, 0, 1),
        ("b", NOW + 2, NOW + 2, first.generation_number, 2, 0, 0, 1),
    ]
    assert s.identity_counts() == {"live": 0, "stale": 2}


def test_table_identities_say_who_contributed_what(tmp_path: Path, stores: list[Store]) -> None:
    s = make(tmp_path)
    stores.append(s)
    publish(s, cpu(2), identity="a")
    publish(s, cpu(3), identity="b")
    publish(s, table("st", "x INTEGER", [[1], [2]]), identity="c", static=True)
    s.rotate(NOW + 30)
    assert rows(s, "SELECT * FROM qasino_server_table_identities") == [
        ("cpu", "a", 2, 0),
        ("cpu", "b", 3, 0),
        ("st", "c", 2, 0),
    ]
    assert rows(s, "SELECT identity, nr_tables, nr_rows, stale FROM qasino_server_identities") == [
        ("a", 1, 2, 0),
        ("b", 1, 3, 0),
        ("c", 1, 2, 0),
    ]
    assert s.identity_counts() == {"live": 3, "stale": 0}


def test_show_identities_lists_stale_ones_first_with_datetimes(
    tmp_path: Path, stores: list[Store]
) -> None:
    s = make(tmp_path)
    stores.append(s)
    publish(s, cpu(1), identity="zz", now=NOW + 1)
    s.rotate(NOW + 30)
    publish(s, cpu(1), identity="aa", now=NOW + 31)
    s.rotate(NOW + 60)
    result = s.query("show identities;")
    assert result.column_names[:3] == ("identity", "stale", "generations_missed")
    assert "last_seen_datetime" in result.column_names
    assert [r[:3] for r in result.rows] == [("zz", 1, 1), ("aa", 0, 0)]


def test_without_keep_stale_a_silent_identity_s_tables_vanish(
    tmp_path: Path, stores: list[Store]
) -> None:
    s = make(tmp_path)
    stores.append(s)
    publish(s, cpu(2), identity="a")
    s.rotate(NOW + 30)
    s.rotate(NOW + 60)
    with pytest.raises(QueryError):
        s.query("SELECT * FROM cpu")


def test_keep_stale_carries_n_generations_counting_age_then_drops(
    tmp_path: Path, stores: list[Store]
) -> None:
    s = make(tmp_path, keep_stale=2)
    stores.append(s)
    publish(s, cpu(2, "a"), identity="a", now=NOW + 1)
    publish(s, cpu(3, "b"), identity="b", now=NOW + 2)
    s.rotate(NOW + 30)
    seen = []
    for k in range(1, 5):
        publish(s, cpu(3, "b"), identity="b", now=NOW + 30 * k + 1)
        s.rotate(NOW + 30 * (k + 1))
        seen.append(
            (
                rows(s, "SELECT count(*) FROM cpu WHERE host = 'a'")[0][0],
                rows(s, "SELECT age_generations, nr_rows FROM qasino_server_table_identities"),
            )
        )
    assert seen == [
        (2, [(1, 2), (0, 3)]),
        (2, [(2, 2), (0, 3)]),
        (0, [(0, 3)]),
        (0, [(0, 3)]),
    ]


def test_keep_stale_copy_is_replaced_when_the_identity_comes_back(
    tmp_path: Path, stores: list[Store]
) -> None:
    s = make(tmp_path, keep_stale=3)
    stores.append(s)
    publish(s, cpu(2, "a"), identity="a", now=NOW + 1)
    s.rotate(NOW + 30)
    s.rotate(NOW + 60)  # carried, age 1
    publish(s, cpu(1, "a"), identity="a", now=NOW + 61)
    s.rotate(NOW + 90)
    assert rows(s, "SELECT count(*) FROM cpu") == [(1,)]
    assert rows(s, "SELECT identity, age_generations FROM qasino_server_table_identities") == [
        ("a", 0)
    ]


def test_persist_ttl_drops_a_copy_not_republished_for_n_generations(
    tmp_path: Path, stores: list[Store]
) -> None:
    s = make(tmp_path, persist_ttl=2)
    stores.append(s)
    publish(s, cpu(2), identity="a", persist=True)
    counts = []
    for k in range(1, 5):
        s.rotate(NOW + 30 * k)
        got = rows(s, "SELECT age_generations FROM qasino_server_table_identities")
        counts.append(got)
    assert counts == [[(0,)], [(1,)], [(2,)], []]


def test_persist_without_ttl_is_kept_forever(tmp_path: Path, stores: list[Store]) -> None:
    s = make(tmp_path)
    stores.append(s)
    publish(s, cpu(2), identity="a", persist=True)
    for k in range(1, 6):
        s.rotate(NOW + 30 * k)
    assert rows(s, "SELECT count(*) FROM cpu") == [(2,)]


def test_history_keeps_the_last_n_snapshots_with_generation_number(
    tmp_path: Path, stores: list[Store]
) -> None:
    s = make(tmp_path, history=3)
    stores.append(s)
    numbers = []
    for k in range(1, 6):
        publish(s, table("net", "host TEXT, bytes INTEGER", [["a", 100 * k]]), identity="a")
        numbers.append(s.rotate(NOW + 30 * k).generation_number)
    got = rows(s, "SELECT generation_number, host, bytes FROM history.net ORDER BY 1")
    assert got == [(numbers[k], "a", 100 * (k + 1)) for k in (2, 3, 4)]
    # rates with a window function over the history
    rates = rows(
        s,
        "SELECT generation_number, bytes - LAG(bytes) OVER (ORDER BY generation_number)"
        " FROM history.net ORDER BY 1",
    )
    assert [r[1] for r in rates] == [None, 100, 100]
    # internal tables too; their own generation_number column is renamed
    info = rows(s, "SELECT generation_number, generation_number_ FROM history.qasino_server_info")
    assert [a for a, _ in info] == numbers[2:] and all(a == b for a, b in info)


def test_a_pinned_snapshot_keeps_its_history_window_readable(
    tmp_path: Path, stores: list[Store]
) -> None:
    """Alert rules run on a pinned snapshot (qasino.alerting) and may read
    history.T: the window as of that snapshot, even after later rotations
    pushed its oldest file out."""
    s = make(tmp_path, history=2)
    stores.append(s)
    for k in range(1, 3):
        publish(s, table("net", "host TEXT, bytes INTEGER", [["a", 100 * k]]), identity="a")
        s.rotate(NOW + 30 * k)
    pinned = s.pin_snapshot()
    try:
        for k in range(3, 6):  # the pinned window's older file leaves the window
            publish(s, table("net", "host TEXT, bytes INTEGER", [["a", 100 * k]]), identity="a")
            s.rotate(NOW + 30 * k)
        rule = (
            "SELECT bytes - LAG(bytes) OVER (ORDER BY generation_number) AS rate FROM history.net"
        )
        assert [tuple(r) for r in s.query_pinned(pinned, rule).rows] == [(None,), (100,)]
    finally:
        s.release_snapshot(pinned)
    assert rows(s, "SELECT bytes FROM history.net ORDER BY generation_number") == [(400,), (500,)]
    # Once released, only the current window's files (and the writer's) remain.
    assert len(gen_files(s.config)) == 3


def test_history_reads_a_table_whose_columns_changed(tmp_path: Path, stores: list[Store]) -> None:
    s = make(tmp_path, history=5)
    stores.append(s)
    publish(s, table("t", "a INTEGER", [[1]]), identity="x")
    g1 = s.rotate(NOW + 30).generation_number
    publish(s, table("t", "a INTEGER, b TEXT", [[2, "two"]]), identity="x")
    g2 = s.rotate(NOW + 60).generation_number
    assert rows(s, "SELECT * FROM history.t ORDER BY 1") == [(g1, 1, None), (g2, 2, "two")]
    assert rows(s, "DESC history.t") == [
        ("generation_number", "INTEGER"),
        ("a", "INTEGER"),
        ("b", "TEXT"),
    ]
    listed = {r[0]: r[1] for r in s.query("SHOW tables LIKE 'history.%'").rows}
    assert listed["history.t"] == 2
    assert "t" not in listed


def test_history_drops_a_table_absent_from_the_window(tmp_path: Path, stores: list[Store]) -> None:
    s = make(tmp_path, history=2)
    stores.append(s)
    publish(s, table("gone", "a INTEGER", [[1]]), identity="x")
    for k in range(1, 4):
        s.rotate(NOW + 30 * k)
    with pytest.raises(QueryError):
        s.query("SELECT * FROM history.gone")
    with pytest.raises(QueryError):
        s.query("DESC history.gone")


def test_history_is_read_only(tmp_path: Path, stores: list[Store]) -> None:
    s = make(tmp_path, history=2)
    stores.append(s)
    publish(s, table("t", "a INTEGER", [[1]]), identity="x")
    s.rotate(NOW + 30)
    for sql in (
        "DELETE FROM history.t",
        "WITH x AS (SELECT 1) INSERT INTO history.t SELECT 1, 2",
        "SELECT 1; DROP TABLE history.t",
    ):
        with pytest.raises(QueryRefused):
            s.query(sql)
    assert rows(s, "SELECT count(*) FROM history.t") == [(1,)]


def test_without_history_there_is_no_history_schema(tmp_path: Path, stores: list[Store]) -> None:
    s = make(tmp_path)
    stores.append(s)
    publish(s, table("t", "a INTEGER", [[1]]), identity="x")
    s.rotate(NOW + 30)
    with pytest.raises(QueryError):
        s.query("SELECT * FROM history.t")
    assert all(not r[0].startswith("history.") for r in s.query("SHOW tables").rows)


def test_history_keeps_exactly_the_window_s_snapshot_files(
    tmp_path: Path, stores: list[Store]
) -> None:
    s = make(tmp_path, history=2)
    stores.append(s)
    for k in range(1, 6):
        publish(s, table("t", "a INTEGER", [[k]]), identity="x")
        s.rotate(NOW + 30 * k)
    # the two snapshots of the window and the writer generation
    assert len(gen_files(s.config)) == 3
    assert rows(s, "SELECT a FROM history.t ORDER BY generation_number") == [(4,), (5,)]


def test_a_history_view_follows_the_window_on_each_new_snapshot(
    tmp_path: Path, stores: list[Store]
) -> None:
    s = make(tmp_path, history=3)
    stores.append(s)
    seen = []
    for k in range(1, 5):
        publish(s, table("t", "a INTEGER", [[k]]), identity="x")
        s.rotate(NOW + 30 * k)
        seen.append([r[0] for r in rows(s, "SELECT a FROM history.t ORDER BY 1")])
    assert seen == [[1], [1, 2], [1, 2, 3], [2, 3, 4]]


def test_history_needs_the_snapshot_not_the_writer(tmp_path: Path, stores: list[Store]) -> None:
    s = make(tmp_path, history=2)
    stores.append(s)
    publish(s, table("t", "a INTEGER", [[1]]), identity="x")
    s.rotate(NOW + 30)
    with pytest.raises(QueryError, match="use_write_db"):
        s.query("SELECT * FROM history.t", use_write_db=True)


def test_history_over_the_attach_limit_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="--history is at most 100"):
        make(tmp_path, history=101)


def test_a_table_only_older_snapshots_have_is_not_read_by_its_plain_name(
    tmp_path: Path, stores: list[Store]
) -> None:
    s = make(tmp_path, history=3)
    stores.append(s)
    publish(s, table("old", "a INTEGER", [[1]]), identity="x")
    s.rotate(NOW + 30)
    s.rotate(NOW + 60)  # "old" is only in the older snapshot now
    assert rows(s, "SELECT a FROM history.old") == [(1,)]
    for sql in ("SELECT * FROM old", "SELECT count(*) FROM history.old JOIN old USING (a)"):
        with pytest.raises(QueryError, match="no such table"):
            s.query(sql)
    # and nothing of the window stays on the pooled connection
    with pytest.raises(QueryError, match="no such table"):
        s.query("SELECT * FROM old")
    attached = "SELECT count(*) FROM pragma_database_list WHERE name LIKE 'qasino_h%'"
    assert rows(s, attached) == [(0,)]


def test_keep_stale_copies_plain_rows_from_the_snapshot_and_replays_upserts(
    tmp_path: Path, stores: list[Store]
) -> None:
    s = make(tmp_path, keep_stale=2)
    stores.append(s)
    publish(s, cpu(3, "a"), identity="a")
    kv = {"update": True, "keycols": ("k",)}
    publish(s, table("kv", "k TEXT, v INTEGER", [["x", 1]]), identity="a", **kv)
    publish(s, table("kv", "k TEXT, v INTEGER", [["x", 2], ["y", 3]]), identity="a", **kv)
    # plain rows are not kept in memory (they are copied from the snapshot file)
    assert [len(p) for _, p in s._last_publishes.values()] == [2]
    s.rotate(NOW + 30)
    for k in (2, 3):
        s.rotate(NOW + 30 * k)
        assert rows(s, "SELECT count(*) FROM cpu WHERE host = 'a'") == [(3,)]
        assert rows(s, "SELECT k, v FROM kv ORDER BY k") == [("x", 2), ("y", 3)]
    s.rotate(NOW + 120)
    for name in ("cpu", "kv"):
        with pytest.raises(QueryError):
            s.query(f"SELECT * FROM {name}")


def test_keep_stale_does_not_double_a_persisted_table(tmp_path: Path, stores: list[Store]) -> None:
    s = make(tmp_path, keep_stale=2)
    stores.append(s)
    publish(s, cpu(2, "a"), identity="a", persist=True)
    s.rotate(NOW + 30)
    s.rotate(NOW + 60)
    s.rotate(NOW + 90)
    assert rows(s, "SELECT count(*) FROM cpu") == [(2,)]
    assert rows(s, "SELECT age_generations FROM qasino_server_table_identities") == [(2,)]


def test_keep_stale_copy_keeps_the_columns_others_added(
    tmp_path: Path, stores: list[Store]
) -> None:
    s = make(tmp_path, keep_stale=1)
    stores.append(s)
    publish(s, table("t", "host TEXT", [["a"]]), identity="a")
    publish(s, table("t", "host TEXT, extra INTEGER", [["b", 5]]), identity="b")
    s.rotate(NOW + 30)
    publish(s, table("t", "host TEXT, extra INTEGER", [["b", 6]]), identity="b")
    s.rotate(NOW + 60)
    assert rows(s, "SELECT host, extra FROM t ORDER BY host") == [("a", None), ("b", 6)]


def test_an_older_file_in_use_by_a_history_statement_outlives_the_window(
    tmp_path: Path, stores: list[Store]
) -> None:
    s = make(tmp_path, history=2)
    stores.append(s)
    s.rotate(NOW + 30)
    served = s._snapshot
    assert served is not None and len(served.older_files) == 1
    older = served.older_files[0]
    s._hold(served.older_files, +1)  # what a history statement on it does
    s.rotate(NOW + 60)
    s.rotate(NOW + 90)  # the older file has left the window
    assert os.path.exists(older.path)
    s._hold(served.older_files, -1)
    assert not os.path.exists(older.path)


def test_the_identities_table_matches_its_definition_across_many_generations(
    tmp_path: Path, stores: list[Store]
) -> None:
    """The table SQLite builds from the cached JSON fragments is, after
    every rotation, what fleet.identity_rows computes from scratch."""
    import random

    from qasino.core.fleet import Contribution, identity_counts, identity_rows

    s = make(tmp_path, keep_stale=2)
    stores.append(s)
    rng = random.Random(7)
    hosts = [f"h{i:02d}" for i in range(30)] + ["\u00fc-host", "z\U0001d518"]
    now = NOW
    for generation in range(14):
        for host in rng.sample(hosts, rng.randint(0, len(hosts))):
            now += 0.25
            kind = rng.random()
            if kind < 0.1:
                publish(s, table("st", "x INTEGER", [[1]]), identity=host, static=True, now=now)
            elif kind < 0.2:
                publish(s, cpu(2, host), identity=host, persist=True, now=now)
            else:
                publish(s, cpu(rng.randint(1, 4), host), identity=host, now=now)
                if kind > 0.8:
                    publish(s, table("mem", "host TEXT", [[host]]), identity=host, now=now)
        now += 1
        s.rotate(now)
        contributions = [
            Contribution(t, i, n, age)
            for t, i, n, age in rows(s, "SELECT * FROM qasino_server_table_identities")
        ]
        seq = s._seq - 1  # the snapshot's own generation sequence number
        expected = identity_rows(s.identities, contributions, seq)
        assert rows(s, "SELECT * FROM qasino_server_identities") == expected, generation
        counts = rows(s, "SELECT count(*) FROM qasino_server_identities WHERE stale = 0")
        assert s.identity_counts()["live"] == counts[0][0]
        assert s.identity_counts() == identity_counts(s.identities, seq)
        listed = rows(
            s,
            "SELECT nr_rows FROM qasino_server_tables WHERE tablename = 'qasino_server_identities'",
        )
        assert listed == [(len(s.identities),)]

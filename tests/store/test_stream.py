"""Store.stream (stream=1): rows a slice at a time, no row cap up to
max_rows, the time limit over the whole stream, cancellation, counters."""

from __future__ import annotations

import pytest

from qasino.core.errors import QueryCancelled, QueryError, QueryTimeout
from qasino.core.model import Publish, PublishOptions, Table
from qasino.store.query import QueryLimits
from qasino.store.store import Store, StoreConfig

COUNT = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) SELECT x FROM c"
)
ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"


@pytest.fixture
def store(tmp_path) -> Store:  # type: ignore[no-untyped-def]
    limits = QueryLimits(timeout_s=5.0, max_rows=10)
    s = Store(StoreConfig(db_dir=str(tmp_path), limits=limits), now=1000.0)
    table = Table("t", ("a", "b"), ("INTEGER", "TEXT"), [[1, "x"], [2, None]])
    s.publish(Publish(table, PublishOptions("h1")), 1000.0)
    s.rotate(1001.0)
    yield s
    s.close()


def test_stream_has_no_row_cap_and_names_its_generation(store: Store) -> None:
    with store.stream(COUNT.format(n=25), max_rows=1000) as rows:
        assert rows.column_names == ("x",)
        assert rows.generation_number == store.snapshot_info().generation_number
        got = [r[0] for chunk in rows.chunks(7) for r in chunk]
    assert got == list(range(1, 26))  # the result cap (10) does not apply
    assert rows.cut is False and rows.nr_rows == 25
    assert store.query(COUNT.format(n=25)).truncated is True
    assert store.query("SELECT 1").generation_number == rows.generation_number


def test_stream_ends_at_max_rows_and_says_it_cut(store: Store) -> None:
    with store.stream(COUNT.format(n=25), max_rows=20) as rows:
        assert sum(len(chunk) for chunk in rows.chunks(8)) == 20
    assert rows.cut is True
    with store.stream(COUNT.format(n=20), max_rows=20) as rows:
        assert sum(len(chunk) for chunk in rows.chunks(8)) == 20
    assert rows.cut is False


def test_stream_of_a_table_a_shortcut_and_a_desc(store: Store) -> None:
    with store.stream("SELECT * FROM t ORDER BY a") as rows:
        assert list(rows.chunks()) == [[(1, "x"), (2, None)]]
    with store.stream("SHOW tables LIKE 't'") as rows:
        assert [r[0] for chunk in rows.chunks() for r in chunk] == ["t"]
    with store.stream("DESC t") as rows:
        assert list(rows.chunks()) == [[("a", "INTEGER"), ("b", "TEXT")]]


def test_a_bad_or_refused_statement_fails_before_any_row(store: Store) -> None:
    before = store.counters.peek()
    with pytest.raises(QueryError, match="no such column: nope"):
        with store.stream("SELECT nope FROM t"):
            raise AssertionError("must not be reached")
    with pytest.raises(QueryError, match="Only SELECT"):
        with store.stream("DELETE FROM t"):
            raise AssertionError("must not be reached")
    after = store.counters.peek()
    assert after["sql_errors"] - before["sql_errors"] == 2


def test_the_time_limit_holds_for_the_whole_stream(tmp_path) -> None:  # type: ignore[no-untyped-def]
    now = [0.0]
    limits = QueryLimits(timeout_s=5.0)
    s = Store(
        StoreConfig(db_dir=str(tmp_path), limits=limits), now=1000.0, monotonic=lambda: now[0]
    )
    try:
        with pytest.raises(QueryTimeout, match="time limit of 5 seconds"):
            with s.stream(ENDLESS) as rows:
                assert rows.next_chunk(100)
                now[0] = 6.0  # the client was slow: the stream's time is up
                rows.next_chunk(100)
    finally:
        s.close()


def test_a_cancelled_stream_is_interrupted_inside_sqlite(store: Store) -> None:
    """A statement busy inside SQLite (an endless count, no row yet) stops at
    the next progress check once its client is gone."""
    sql = "SELECT count(*) FROM (" + ENDLESS + ")"
    with pytest.raises(QueryCancelled, match="client went away"):
        with store.stream(sql, cancelled=lambda: True):
            raise AssertionError("must not be reached")


def test_time_spent_waiting_for_the_client_does_not_count(tmp_path) -> None:  # type: ignore[no-untyped-def]
    now = [0.0]
    s = Store(
        StoreConfig(db_dir=str(tmp_path), limits=QueryLimits(timeout_s=5.0)),
        now=1000.0,
        monotonic=lambda: now[0],
    )
    try:
        with s.stream(COUNT.format(n=50)) as rows:
            assert len(rows.next_chunk(10)) == 10
            now[0] = 100.0
            rows.waited(99.0)  # a slow client: 99 of those 100 s were waiting
            assert len(rows.next_chunk(10)) == 10
    finally:
        s.close()


SINK_CASES = [
    COUNT.format(n=3000),  # several chunks, cut at the cap of 10
    COUNT.format(n=10),  # exactly the cap: not cut
    COUNT.format(n=9),
    COUNT.format(n=5) + " WHERE x < 0",  # no rows
    "SELECT * FROM t ORDER BY a",
    "SELECT 1.5 AS r, NULL AS n, 'a\"b' AS t, 9e999 AS inf, x'00ff' AS b",
    "SHOW tables",
    "DESC t",  # answered whole: its rows are not given to the sink
]


@pytest.mark.parametrize("sql", SINK_CASES)
def test_rows_encoded_as_read_are_the_same_bytes_as_encoding_the_result(
    store: Store, sql: str
) -> None:
    from qasino.core import shapes
    from qasino.core.render import LegacyRenderer, legacy_body

    whole = store.query(sql)
    legacy = LegacyRenderer("srv")
    assert legacy.finish(store.query(sql, sink=legacy.feed)) == legacy_body(whole, "srv")
    arrays = shapes.ShapeRenderer("arrays")
    fed = store.query(sql, sink=arrays.feed)
    assert fed.truncated == whole.truncated
    body = arrays.finish(fed.column_names, fed.rows, 1, fed.truncated, 2.0)
    expected = shapes.table_body("arrays", whole.column_names, whole.rows, 1, whole.truncated, 2.0)
    assert body == expected


def test_rows_encoded_as_read_still_meet_the_result_byte_cap(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from qasino.core.render import LegacyRenderer

    limits = QueryLimits(max_bytes=10_000)
    s = Store(StoreConfig(db_dir=str(tmp_path), limits=limits), now=1000.0)
    try:
        with pytest.raises(QueryError, match="result larger than 10000 bytes"):
            s.query(COUNT.format(n=5000), sink=LegacyRenderer("srv").feed)
    finally:
        s.close()

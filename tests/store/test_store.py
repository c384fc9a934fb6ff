"""The generation store (PROTOCOL.md "Generations", "Tables, identities and
merging", "Views", "Queries"): real apsw files under pytest's tmp_path, time
always passed in explicitly."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import apsw
import pytest

from qasino.core.errors import InvalidInput, PublishRejected, QueryError, StoreError
from qasino.core.model import Cell, Publish, PublishOptions, Result, Table, ViewDef
from qasino.core.views import parse_views_yaml
from qasino.store import internal
from qasino.store import store as store_module
from qasino.store.sqlite import GENERATION_PAGE_SIZE
from qasino.store.store import GENERATIONS_DIR, Store, StoreConfig

NOW = 1_700_000_000.0
DURATION = 30

INTERNAL_TABLES = (
    "qasino_server_connections",
    "qasino_server_identities",
    "qasino_server_info",
    "qasino_server_sql_stats",
    "qasino_server_table_identities",
    "qasino_server_tables",
    "qasino_server_update_stats",
    "qasino_server_alerts",
    "qasino_server_views",
)


# --- helpers -------------------------------------------------------------------


def table(name: str, columns: str, rows: Sequence[Sequence[Cell]]) -> Table:
    """``columns`` like "a INTEGER, b TEXT" (types already normalised)."""
    pairs = [c.split() for c in columns.split(",")]
    return Table(
        tablename=name,
        column_names=tuple(p[0] for p in pairs),
        column_types=tuple(p[1] for p in pairs),
        rows=[list(r) for r in rows],
    )


def publish(
    store: Store,
    tbl: Table,
    identity: str = "host1",
    now: float = NOW + 1,
    **options: object,
) -> None:
    store.publish(Publish(tbl, PublishOptions(identity=identity, **options)), now)  # type: ignore[arg-type]


def rows(store: Store, sql: str, use_write_db: bool = False) -> list[tuple[object, ...]]:
    return [tuple(r) for r in store.query(sql, use_write_db=use_write_db).rows]


def view(name: str, select: str) -> ViewDef:
    return ViewDef(viewname=name, view=f"CREATE VIEW {name} AS {select}", select_sql=select)


def gen_files(config: StoreConfig) -> list[str]:
    folder = os.path.join(config.db_dir, GENERATIONS_DIR)
    return sorted(f for f in os.listdir(folder) if f.endswith(".sqlite"))


@pytest.fixture
def config(tmp_path: Path) -> StoreConfig:
    return StoreConfig(db_dir=str(tmp_path / "db"), generation_duration_s=DURATION)


@pytest.fixture
def store(config: StoreConfig) -> Iterator[Store]:
    s = Store(config, now=NOW)
    yield s
    s.close()


T_AB = "a INTEGER, b TEXT"


# --- merging -------------------------------------------------------------------


def test_two_identities_publishing_one_table_append_to_it(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "x"], [2, "y"]]), identity="host1")
    publish(store, table("t", T_AB, [[3, "z"]]), identity="host2")
    store.rotate(NOW + 30)
    assert rows(store, "SELECT a, b FROM t ORDER BY a") == [(1, "x"), (2, "y"), (3, "z")]


def test_tablenames_are_merged_case_insensitively(store: Store) -> None:
    publish(store, table("Stats", T_AB, [[1, "x"]]), identity="host1")
    publish(store, table("STATS", T_AB, [[2, "y"]]), identity="host2")
    store.rotate(NOW + 30)
    assert rows(store, "SELECT a FROM stats ORDER BY a") == [(1,), (2,)]
    assert list(store.table_list()).count("Stats") == 1
    assert "STATS" not in store.table_list()


def test_second_publish_from_same_identity_is_rejected_and_its_rows_absent(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "first"]]), identity="host1")
    with pytest.raises(PublishRejected, match="already published"):
        publish(store, table("t", T_AB, [[2, "second"]]), identity="host1")
    assert rows(store, "SELECT a, b FROM t", use_write_db=True) == [(1, "first")]
    store.rotate(NOW + 30)
    assert rows(store, "SELECT a, b FROM t") == [(1, "first")]


def test_second_publish_check_ignores_tablename_case(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "first"]]), identity="host1")
    with pytest.raises(PublishRejected):
        publish(store, table("T", T_AB, [[2, "second"]]), identity="host1")


def test_same_identity_may_publish_the_table_again_in_the_next_generation(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "old"]]))
    store.rotate(NOW + 30)
    publish(store, table("t", T_AB, [[2, "new"]]), now=NOW + 31)
    store.rotate(NOW + 60)
    assert rows(store, "SELECT a, b FROM t") == [(2, "new")]


def test_update_publishes_may_repeat_in_one_generation(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "x"]]), update=True, keycols=("a",))
    publish(store, table("t", T_AB, [[1, "y"], [2, "z"]]), update=True, keycols=("a",))
    assert rows(store, "SELECT a, b FROM t ORDER BY a", use_write_db=True) == [(1, "y"), (2, "z")]


def test_static_publishes_may_repeat_in_one_generation(store: Store) -> None:
    publish(store, table("s", T_AB, [[1, "x"]]), static=True)
    publish(store, table("s", T_AB, [[2, "y"]]), static=True)
    assert rows(store, "SELECT a, b FROM s") == [(2, "y")]


def test_table_not_published_again_disappears_at_the_next_snapshot(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "x"]]))
    store.rotate(NOW + 30)
    assert rows(store, "SELECT a FROM t") == [(1,)]
    store.rotate(NOW + 60)
    with pytest.raises(QueryError, match="no such table"):
        store.query("SELECT a FROM t")
    assert "t" not in store.table_list()


@pytest.mark.parametrize("static", [False, True])
def test_publish_into_an_internal_table_name_is_refused(store: Store, static: bool) -> None:
    with pytest.raises(InvalidInput, match="reserved"):
        publish(store, table("Qasino_Server_Tables", T_AB, [[1, "x"]]), static=static)
    store.rotate(NOW + 30)
    assert rows(
        store,
        "SELECT tablename, static, nr_updates FROM qasino_server_tables"
        " WHERE tablename LIKE 'qasino_server_tables'",
    ) == [("qasino_server_tables", 0, 1)]


# --- schema union ----------------------------------------------------------------


def test_new_columns_are_added_and_missing_columns_are_null(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "x"]]), identity="host1")
    publish(store, table("t", "a INTEGER, c REAL", [[2, 2.5]]), identity="host2")
    store.rotate(NOW + 30)
    result = store.query("SELECT * FROM t ORDER BY a")
    assert result.column_names == ("a", "b", "c")
    assert result.rows == [(1, "x", None), (2, None, 2.5)]
    assert rows(store, "DESC t") == [("a", "INTEGER"), ("b", "TEXT"), ("c", "REAL")]


def test_column_names_are_matched_case_insensitively(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "x"]]), identity="host1")
    publish(store, table("t", "A INTEGER, B TEXT", [[2, "y"]]), identity="host2")
    store.rotate(NOW + 30)
    result = store.query("SELECT * FROM t ORDER BY a")
    assert result.column_names == ("a", "b")
    assert result.rows == [(1, "x"), (2, "y")]


def test_changing_a_column_type_does_not_crash(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "x"]]), identity="host1")
    publish(store, table("t", "a TEXT, b INTEGER", [["two", 2]]), identity="host2")
    store.rotate(NOW + 30)
    assert rows(store, "SELECT typeof(a), a FROM t ORDER BY typeof(a)") == [
        ("integer", 1),
        ("text", "two"),
    ]


# --- persist -----------------------------------------------------------------------


def test_persisted_table_is_carried_into_later_generations(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "x"], [2, "y"]]), persist=True)
    for n in range(1, 4):
        store.rotate(NOW + 30 * n)
        assert rows(store, "SELECT a, b FROM t ORDER BY a") == [(1, "x"), (2, "y")]


def test_new_publish_replaces_the_carried_copy_and_is_not_a_duplicate(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "old"], [2, "old"]]), persist=True)
    store.rotate(NOW + 30)
    assert rows(store, "SELECT a FROM t ORDER BY a", use_write_db=True) == [(1,), (2,)]
    publish(store, table("t", T_AB, [[3, "new"]]), now=NOW + 31, persist=True)
    assert rows(store, "SELECT a, b FROM t", use_write_db=True) == [(3, "new")]
    # The replacement is this generation's publish: a second one is refused.
    with pytest.raises(PublishRejected):
        publish(store, table("t", T_AB, [[4, "again"]]), now=NOW + 32, persist=True)
    store.rotate(NOW + 60)
    assert rows(store, "SELECT a, b FROM t") == [(3, "new")]
    store.rotate(NOW + 90)
    assert rows(store, "SELECT a, b FROM t") == [(3, "new")]


def test_replacing_a_carried_copy_keeps_other_identities_rows(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "h1"]]), identity="host1", persist=True)
    publish(store, table("t", T_AB, [[2, "h2"], [3, "h2"]]), identity="host2", persist=True)
    store.rotate(NOW + 30)
    publish(store, table("t", T_AB, [[4, "h3"]]), identity="host3", now=NOW + 31)
    publish(store, table("t", T_AB, [[5, "h1"]]), identity="host1", now=NOW + 32, persist=True)
    store.rotate(NOW + 60)
    assert rows(store, "SELECT a, b FROM t ORDER BY a") == [
        (2, "h2"),
        (3, "h2"),
        (4, "h3"),
        (5, "h1"),
    ]


def test_publish_without_persist_stops_the_carrying(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "persisted"]]), persist=True)
    store.rotate(NOW + 30)
    publish(store, table("t", T_AB, [[2, "plain"]]), now=NOW + 31)
    store.rotate(NOW + 60)
    assert rows(store, "SELECT a, b FROM t") == [(2, "plain")]
    store.rotate(NOW + 90)
    with pytest.raises(QueryError, match="no such table"):
        store.query("SELECT * FROM t")


def test_persist_is_per_identity(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "kept"]]), identity="host1", persist=True)
    publish(store, table("t", T_AB, [[2, "dropped"]]), identity="host2")
    store.rotate(NOW + 30)
    store.rotate(NOW + 60)
    assert rows(store, "SELECT a, b FROM t") == [(1, "kept")]


# --- update / keycols -------------------------------------------------------------


def test_update_upserts_on_keycols(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "x"], [2, "y"]]), update=True, keycols=("a",))
    publish(store, table("t", T_AB, [[2, "changed"], [3, "z"]]), update=True, keycols=("a",))
    store.rotate(NOW + 30)
    assert rows(store, "SELECT a, b FROM t ORDER BY a") == [(1, "x"), (2, "changed"), (3, "z")]


def test_update_keycols_are_matched_case_insensitively(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "x"]]), update=True, keycols=("A",))
    publish(store, table("t", T_AB, [[1, "y"]]), update=True, keycols=("a",))
    assert rows(store, "SELECT a, b FROM t", use_write_db=True) == [(1, "y")]


def test_update_without_keycols_keys_on_all_columns(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "x"], [2, "y"]]), update=True)
    publish(store, table("t", T_AB, [[1, "x"], [1, "other"]]), update=True)
    assert rows(store, "SELECT a, b FROM t ORDER BY a, b", use_write_db=True) == [
        (1, "other"),
        (1, "x"),
        (2, "y"),
    ]


def test_update_from_several_identities_shares_one_keyed_table(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "h1"]]), identity="host1", update=True, keycols=("a",))
    publish(store, table("t", T_AB, [[1, "h2"]]), identity="host2", update=True, keycols=("a",))
    assert rows(store, "SELECT a, b FROM t", use_write_db=True) == [(1, "h2")]


def test_update_with_persist_carries_the_merged_table(store: Store) -> None:
    publish(
        store, table("t", T_AB, [[1, "x"], [2, "y"]]), update=True, persist=True, keycols=("a",)
    )
    publish(
        store, table("t", T_AB, [[2, "new"], [3, "z"]]), update=True, persist=True, keycols=("a",)
    )
    store.rotate(NOW + 30)
    store.rotate(NOW + 60)
    assert rows(store, "SELECT a, b FROM t ORDER BY a") == [(1, "x"), (2, "new"), (3, "z")]
    # A carried update table still takes upserts in a later generation.
    publish(
        store,
        table("t", T_AB, [[1, "later"]]),
        now=NOW + 61,
        update=True,
        persist=True,
        keycols=("a",),
    )
    store.rotate(NOW + 90)
    store.rotate(NOW + 120)
    assert rows(store, "SELECT a, b FROM t ORDER BY a") == [(1, "later"), (2, "new"), (3, "z")]


# --- name_value_update ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "42",
        "-7",
        "0.5",
        "degraded",
        "01000",
        "1.00",
        "1E+02",
        "9" * 39,
        "99999999999999999999",
        "1_000",
        "nan",
        "inf",
        "0x10",
        "\u0661\u0662",
        "",
        "9" * 5000,
    ],
)
def test_name_value_update_stores_the_value_exactly_as_sent(store: Store, value: str) -> None:
    """As the original server did (varchar columns): text, never a number."""
    store.name_value_update("nv", "v", value, "host1", NOW + 1)
    assert rows(store, "SELECT typeof(v), v FROM nv", use_write_db=True) == [("text", value)]
    assert rows(store, "DESC nv", use_write_db=True) == [("identity", "TEXT"), ("v", "TEXT")]


def test_name_value_update_columns_are_text_whatever_the_first_value(store: Store) -> None:
    store.name_value_update("nv", "count", "42", "host1", NOW + 1)
    store.name_value_update("nv", "count", "042", "host2", NOW + 1)
    got = rows(store, "SELECT identity, count FROM nv ORDER BY identity", use_write_db=True)
    assert got == [("host1", "42"), ("host2", "042")]


def test_name_value_update_into_an_internal_table_is_refused(store: Store) -> None:
    with pytest.raises(InvalidInput, match="reserved"):
        store.name_value_update("qasino_server_info", "x", "1", "host1", NOW + 1)
    store.rotate(NOW + 30)
    assert rows(
        store, "SELECT count(*) FROM qasino_server_tables WHERE tablename = 'qasino_server_info'"
    ) == [(1,)]
    assert store.query("SELECT * FROM qasino_server_info").column_names == (
        "generation_number",
        "generation_duration_s",
        "generation_start_epoch",
    )


def test_name_value_update_merges_columns_into_the_identity_row(store: Store) -> None:
    store.name_value_update("nv", "a", "1", "host1", NOW + 1)
    store.name_value_update("nv", "b", "x", "host1", NOW + 2)
    store.name_value_update("nv", "a", "2", "host1", NOW + 3)
    store.name_value_update("nv", "a", "9", "host2", NOW + 4)
    assert rows(store, "SELECT identity, a, b FROM nv ORDER BY identity", use_write_db=True) == [
        ("host1", "2", "x"),
        ("host2", "9", None),
    ]


def test_name_value_update_is_carried_across_generations(store: Store) -> None:
    store.name_value_update("nv", "a", "1", "host1", NOW + 1)
    store.name_value_update("nv", "b", "x", "host1", NOW + 2)
    store.rotate(NOW + 30)
    store.rotate(NOW + 60)
    assert rows(store, "SELECT identity, a, b FROM nv") == [("host1", "1", "x")]
    store.name_value_update("nv", "a", "5", "host1", NOW + 61)
    store.rotate(NOW + 90)
    assert rows(store, "SELECT identity, a, b FROM nv") == [("host1", "5", "x")]
    store.rotate(NOW + 120)
    assert rows(store, "SELECT identity, a, b FROM nv") == [("host1", "5", "x")]


def test_name_value_update_refuses_the_reserved_identity_column(store: Store) -> None:
    with pytest.raises(InvalidInput, match="reserved"):
        store.name_value_update("nv", "Identity", "x", "host1", NOW + 1)
    with pytest.raises(QueryError):
        store.query("SELECT * FROM nv", use_write_db=True)


@pytest.mark.parametrize(
    ("tablename", "column"), [("bad name", "c"), ("nv", "c;drop"), ("1nv", "c"), ("nv", "")]
)
def test_name_value_update_refuses_invalid_identifiers(
    store: Store, tablename: str, column: str
) -> None:
    with pytest.raises(InvalidInput):
        store.name_value_update(tablename, column, "1", "host1", NOW + 1)


# --- static tables --------------------------------------------------------------------


def test_static_publish_replaces_the_rows_and_keeps_the_union_of_columns(store: Store) -> None:
    """As the original server did: a re-publish replaces every row, and a
    column it leaves out stays in the table (NULL in the new rows)."""
    publish(store, table("s", T_AB, [[1, "x"], [2, "y"]]), identity="host1", static=True)
    publish(store, table("s", "a INTEGER, c REAL", [[3, 0.5]]), identity="host2", static=True)
    result = store.query("SELECT * FROM s")
    assert result.column_names == ("a", "b", "c")
    assert result.rows == [(3, None, 0.5)]


def test_static_update_upserts_into_the_static_table(store: Store) -> None:
    publish(store, table("s", T_AB, [[1, "x"], [2, "y"]]), static=True)
    publish(store, table("s", T_AB, [[2, "new"]]), static=True, update=True, keycols=("a",))
    assert rows(store, "SELECT a, b FROM s ORDER BY a") == [(1, "x"), (2, "new")]


def test_static_table_is_queryable_at_once_and_survives_rotations(store: Store) -> None:
    publish(store, table("s", T_AB, [[1, "x"]]), static=True)
    assert rows(store, "SELECT a, b FROM s") == [(1, "x")]
    assert rows(store, "SELECT a, b FROM s", use_write_db=True) == [(1, "x")]
    for n in range(1, 4):
        store.rotate(NOW + 30 * n)
        assert rows(store, "SELECT a, b FROM s") == [(1, "x")]


def test_static_table_survives_close_and_reopen(config: StoreConfig) -> None:
    first = Store(config, now=NOW)
    publish(first, table("s", T_AB, [[1, "x"], [2, "y"]]), static=True)
    publish(first, table("t", T_AB, [[9, "gen"]]), persist=True)
    first.rotate(NOW + 30)
    first.close()

    second = Store(config, now=NOW + 100)
    try:
        assert rows(second, "SELECT a, b FROM s ORDER BY a") == [(1, "x"), (2, "y")]
        # persist is lost on restart, by design.
        with pytest.raises(QueryError, match="no such table"):
            second.query("SELECT * FROM t")
        # The reopened static table still takes publishes (schema cache loaded).
        publish(second, table("s", "a INTEGER, c TEXT", [[3, "z"]]), static=True, now=NOW + 101)
        assert rows(second, "SELECT * FROM s") == [(3, None, "z")]
    finally:
        second.close()


def test_static_table_is_listed_with_static_flag(store: Store) -> None:
    publish(store, table("s", T_AB, [[1, "x"], [2, "y"]]), static=True, now=NOW + 5)
    publish(store, table("t", T_AB, [[1, "x"]]), now=NOW + 6)
    store.rotate(NOW + 30)
    got = rows(
        store,
        "SELECT tablename, nr_rows, nr_updates, last_update_epoch, static"
        " FROM qasino_server_tables WHERE tablename IN ('s', 't') ORDER BY tablename",
    )
    assert got == [("s", 2, 1, NOW + 5, 1), ("t", 1, 1, NOW + 6, 0)]
    assert store.table_list()["s"] == {"nr_rows": 2, "updates": 1, "last_update_epoch": NOW + 5}


def test_stale_generation_files_are_cleared_at_start(config: StoreConfig) -> None:
    folder = Path(config.db_dir) / GENERATIONS_DIR
    folder.mkdir(parents=True)
    (folder / "gen-1.sqlite").write_bytes(b"left over")
    s = Store(config, now=NOW)
    try:
        assert "gen-1.sqlite" not in gen_files(config)
    finally:
        s.close()


# --- atomicity -------------------------------------------------------------------------


def test_failed_publish_leaves_nothing_and_the_schema_cache_consistent(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "x"], [1, "y"]]), identity="host1")
    # Keying t on a is impossible (two rows with a = 1); the new column c must
    # not survive the failed publish either.
    bad = table("t", "a INTEGER, c TEXT", [[2, "c"]])
    with pytest.raises(PublishRejected, match="not unique"):
        publish(store, bad, identity="host2", update=True, keycols=("a",))
    assert store.query("SELECT * FROM t", use_write_db=True).column_names == ("a", "b")
    assert rows(store, "SELECT count(*) FROM t", use_write_db=True) == [(2,)]
    # The failed publish did not count as host2's publish, and the cache still
    # knows c is missing: adding it again works.
    publish(store, table("t", "a INTEGER, c TEXT", [[3, "c"]]), identity="host2")
    store.rotate(NOW + 30)
    assert rows(store, "SELECT a, b, c FROM t ORDER BY a, b") == [
        (1, "x", None),
        (1, "y", None),
        (3, None, "c"),
    ]
    got = rows(store, "SELECT nr_updates FROM qasino_server_tables WHERE tablename = 't'")
    assert got == [(2,)]


def test_publish_failing_after_creating_its_table_leaves_no_table(store: Store) -> None:
    # The second row cannot be bound: the table was created and one row
    # inserted before the failure; all of it must be rolled back.
    ragged = Table("t", ("a", "b"), ("INTEGER", "TEXT"), [[1, "x"], [2]])
    with pytest.raises(PublishRejected):
        publish(store, ragged)
    with pytest.raises(QueryError, match="no such table"):
        store.query("SELECT * FROM t", use_write_db=True)
    publish(store, table("t", "z REAL", [[1.5]]))
    assert store.query("SELECT * FROM t", use_write_db=True).column_names == ("z",)


@pytest.mark.parametrize("static", [False, True])
def test_keycols_must_be_columns_of_the_published_table(store: Store, static: bool) -> None:
    """Unchecked, SQLite reads "nope" as a string and keys the table on a constant."""
    publish(store, table("t", T_AB, [[1, "x"]]), identity="host1", static=static)
    for tbl, keycol in [
        (table("t", T_AB, [[2, "y"]]), "nope"),
        (table("t", "a INTEGER", [[3]]), "b"),
    ]:
        with pytest.raises(InvalidInput, match=f"key column '{keycol}'"):
            publish(store, tbl, "host2", update=True, static=static, keycols=(keycol,))
    assert rows(store, "SELECT a, b FROM t", use_write_db=True) == [(1, "x")]


def test_failed_static_publish_keeps_the_previous_content(store: Store) -> None:
    publish(store, table("s", T_AB, [[1, "x"]]), static=True)
    dup = table("s", "a INTEGER, c TEXT", [[2, "y"], [2, "z"]])
    with pytest.raises(PublishRejected):
        publish(store, dup, static=True, keycols=("a",))
    assert store.query("SELECT * FROM s").column_names == ("a", "b")
    assert rows(store, "SELECT a, b FROM s") == [(1, "x")]
    publish(store, table("s", "a INTEGER, c TEXT", [[3, "ok"]]), static=True)
    assert rows(store, "SELECT a, c FROM s") == [(3, "ok")]


# --- rotation and snapshots ----------------------------------------------------------------


def test_rows_are_seen_only_after_the_rotate_unless_use_write_db(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "x"]]))
    with pytest.raises(QueryError, match="no such table"):
        store.query("SELECT * FROM t")
    assert rows(store, "SELECT a FROM t", use_write_db=True) == [(1,)]
    store.rotate(NOW + 30)
    assert rows(store, "SELECT a FROM t") == [(1,)]
    publish(store, table("t", T_AB, [[2, "y"]]), now=NOW + 31)
    assert rows(store, "SELECT a FROM t") == [(1,)]
    assert rows(store, "SELECT a FROM t", use_write_db=True) == [(2,)]


def test_query_running_across_a_rotation_keeps_its_snapshot(config: StoreConfig) -> None:
    """A rotation while a query runs: the query still reads its own snapshot,
    whose file is removed only once the query is done."""

    class RotateDuringQuery:
        """A monotonic clock that, once armed, rotates the store when first read."""

        def __init__(self) -> None:
            self.store: Store | None = None
            self.rotate_at: float | None = None
            self.old_path = ""
            self.old_file_kept_while_read = False

        def __call__(self) -> float:
            if self.store is not None and self.rotate_at is not None:
                number = self.store.snapshot_info().generation_number
                self.old_path = os.path.join(self.store.gen_dir, f"gen-{number}.sqlite")
                self.store.rotate(self.rotate_at)
                self.rotate_at = None
                self.old_file_kept_while_read = os.path.exists(self.old_path)
            return 0.0

    clock = RotateDuringQuery()
    s = Store(config, now=NOW, monotonic=clock)
    clock.store = s
    try:
        publish(s, table("t", T_AB, [[1, "old"]]))
        s.rotate(NOW + 30)
        publish(s, table("t", T_AB, [[2, "new"]]), now=NOW + 31)
        clock.rotate_at = NOW + 60
        assert rows(s, "SELECT a, b FROM t") == [(1, "old")]
        assert clock.rotate_at is None  # the rotation did happen mid-query
        assert clock.old_file_kept_while_read
        assert not os.path.exists(clock.old_path)
        assert rows(s, "SELECT a, b FROM t") == [(2, "new")]
    finally:
        s.close()


def test_old_generation_files_are_removed(store: Store, config: StoreConfig) -> None:
    for n in range(1, 5):
        publish(store, table("t", T_AB, [[n, "x"]]), now=NOW + 30 * n - 1)
        store.rotate(NOW + 30 * n)
    snapshot = store.snapshot_info().generation_number
    files = gen_files(config)
    assert len(files) == 2  # the snapshot and the writer generation
    assert f"gen-{snapshot}.sqlite" in files
    stems = {f.removesuffix(".sqlite") for f in files}
    for name in os.listdir(os.path.join(config.db_dir, GENERATIONS_DIR)):
        assert name.split(".")[0] in stems, name


def test_archive_dir_gets_a_copy_of_each_retired_generation(tmp_path: Path) -> None:
    config = StoreConfig(db_dir=str(tmp_path / "db"), archive_dir=str(tmp_path / "archive"))
    s = Store(config, now=NOW)
    try:
        publish(s, table("t", T_AB, [[1, "x"]]))
        s.rotate(NOW + 30)
        number = s.snapshot_info().generation_number
        s.rotate(NOW + 60)
        archived = tmp_path / "archive" / f"gen-{number}.sqlite"
        assert archived.exists()
        assert f"gen-{number}.sqlite" not in gen_files(config)
        conn = apsw.Connection(str(archived), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            assert conn.execute("SELECT a, b FROM t").fetchall() == [(1, "x")]
            info = conn.execute("SELECT generation_number FROM qasino_server_info").fetchall()
            assert info == [(number,)]
        finally:
            conn.close()
    finally:
        s.close()


def test_generation_numbers_strictly_increase_even_with_the_same_now(store: Store) -> None:
    numbers = [store.snapshot_info().generation_number]
    for _ in range(3):
        numbers.append(store.rotate(NOW).generation_number)
    assert numbers == sorted(set(numbers))
    assert numbers[0] == int(NOW)


def test_generation_number_is_the_second_the_generation_started(store: Store) -> None:
    store.rotate(NOW + 1000)  # this writer generation was opened at NOW
    info = store.rotate(NOW + 2000)  # this one at NOW + 1000
    assert info.generation_number == int(NOW + 1000)
    assert info.generation_start_epoch == NOW + 2000
    assert info.generation_duration_s == DURATION


def test_rotate_returns_the_info_that_is_then_served(store: Store) -> None:
    info = store.rotate(NOW + 30.5)
    assert store.snapshot_info() == info
    assert rows(store, "SELECT * FROM qasino_server_info") == [
        (info.generation_number, DURATION, NOW + 30.5)
    ]


# --- internal tables -----------------------------------------------------------------------


def test_internal_tables_describe_the_generation(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "x"], [2, "y"]]), identity="host1", now=NOW + 1)
    publish(store, table("t", T_AB, [[3, "z"]]), identity="host2", now=NOW + 2)
    publish(store, table("u", "c REAL", [[0.5]]), identity="host2", now=NOW + 3)
    publish(store, table("s", T_AB, [[1, "x"]]), identity="host3", static=True, now=NOW + 4)
    with pytest.raises(PublishRejected):
        publish(store, table("u", "c REAL", [[1.5], [2.5]]), identity="host2", now=NOW + 5)
    store.query("SELECT 1")
    with pytest.raises(QueryError):
        store.query("SELECT * FROM missing")
    info = store.rotate(NOW + 30)

    assert rows(store, "SELECT * FROM qasino_server_info") == [
        (info.generation_number, DURATION, NOW + 30)
    ]
    tables = rows(store, "SELECT * FROM qasino_server_tables ORDER BY tablename")
    assert tables == sorted(
        [
            ("s", 1, 1, NOW + 4, 1),
            ("t", 3, 2, NOW + 2, 0),
            ("u", 1, 1, NOW + 3, 0),
            ("qasino_server_alerts", 0, 1, NOW + 30, 0),
            ("qasino_server_connections", 3, 1, NOW + 30, 0),
            ("qasino_server_identities", 3, 1, NOW + 30, 0),
            ("qasino_server_info", 1, 1, NOW + 30, 0),
            ("qasino_server_sql_stats", 1, 1, NOW + 30, 0),
            ("qasino_server_table_identities", 4, 1, NOW + 30, 0),
            ("qasino_server_tables", 12, 1, NOW + 30, 0),
            ("qasino_server_update_stats", 1, 1, NOW + 30, 0),
            ("qasino_server_views", 0, 1, NOW + 30, 0),
        ]
    )
    assert rows(store, "SELECT * FROM qasino_server_connections ORDER BY identity") == [
        ("host1", 1, NOW + 1),
        ("host2", 2, NOW + 3),
        ("host3", 1, NOW + 4),
    ]
    assert rows(store, "SELECT * FROM qasino_server_sql_stats") == [(2, 1, 1)]
    # received, completed, errors; rows received, rows completed
    assert rows(store, "SELECT * FROM qasino_server_update_stats") == [(5, 4, 1, 7, 5)]
    assert rows(store, "SELECT * FROM qasino_server_views") == []


def test_qasino_server_tables_nr_rows_match_the_tables(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "x"], [2, "y"]]))
    publish(store, table("s", T_AB, [[1, "x"]]), static=True)
    store.rotate(NOW + 30)
    listed = {
        str(name): nr_rows
        for name, nr_rows in rows(store, "SELECT tablename, nr_rows FROM qasino_server_tables")
    }
    assert set(listed) == {"t", "s", *INTERNAL_TABLES}
    for name, nr_rows in listed.items():
        assert rows(store, f"SELECT count(*) FROM {name}") == [(nr_rows,)], name


def test_internal_table_stats_start_again_each_generation(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "x"]]), persist=True)
    store.query("SELECT 1")
    store.rotate(NOW + 30)
    store.query("SELECT 1")  # counted in the generation that is now being written
    store.rotate(NOW + 60)
    assert rows(store, "SELECT * FROM qasino_server_sql_stats") == [(1, 1, 0)]
    assert rows(store, "SELECT * FROM qasino_server_update_stats") == [(0, 0, 0, 0, 0)]
    # The carried copy is there, but nobody published it in this generation.
    assert rows(store, "SELECT * FROM qasino_server_connections") == []
    assert rows(
        store, "SELECT nr_rows, nr_updates FROM qasino_server_tables WHERE tablename = 't'"
    ) == [(1, 0)]


def test_internal_tables_exist_from_the_start(store: Store) -> None:
    info = store.snapshot_info()
    assert info.generation_number == int(NOW)
    assert rows(store, "SELECT generation_number FROM qasino_server_info") == [(int(NOW),)]
    names = [str(r[0]) for r in rows(store, "SELECT tablename FROM qasino_server_tables")]
    assert sorted(names) == sorted(INTERNAL_TABLES)


def test_many_identities_fill_the_internal_tables_exactly(store: Store) -> None:
    # More rows than JSON_FILL_MIN_ROWS: connections and table_identities are
    # filled from one JSON text; every value must read back as published.
    n = internal.JSON_FILL_MIN_ROWS + 8
    names = [f"host{i:03d}" for i in range(n - 3)] + [
        "nul\x00byte",
        "line\u2028sep",
        "emoji\U0001f600",
    ]
    times = {name: NOW + 1 + i / 7 for i, name in enumerate(names)}  # 1/7: every bit used
    for name in names:
        publish(store, table("t", T_AB, [[1, "x"]]), identity=name, now=times[name])
    store.rotate(NOW + 30)
    assert rows(
        store, "SELECT identity, nr_tables, last_update_epoch FROM qasino_server_connections"
    ) == [(name, 1, times[name]) for name in sorted(names)]
    assert rows(store, "SELECT * FROM qasino_server_table_identities") == [
        ("t", name, 1, 0) for name in sorted(names)
    ]


@pytest.mark.parametrize("many", [False, True])
def test_internal_fill_keeps_every_value_and_type(many: bool) -> None:
    odd: list[tuple[object, ...]] = [
        ("a\x00b", 2**63 - 1, NOW / 3),
        ('q"uote\\', -(2**63), 1e-300),
        ("\u00e9\u2028", 0, None),
        (None, 1, 12345678901234567.0),
    ]
    filler = [(f"h{i}", i, NOW + i / 7) for i in range(internal.JSON_FILL_MIN_ROWS)]
    data = odd + (filler if many else [])
    conn = apsw.Connection(":memory:")
    for name in ("qasino_server_connections", "by_row"):
        conn.execute(f'CREATE TABLE "{name}" (identity varchar, nr_tables int, last int)')
    internal._fill(conn, "qasino_server_connections", data)
    conn.executemany('INSERT INTO "by_row" VALUES (?, ?, ?)', data)
    got = list(conn.execute('SELECT * FROM "qasino_server_connections" ORDER BY rowid'))
    by_row = list(conn.execute('SELECT * FROM "by_row" ORDER BY rowid'))
    assert got == by_row == data
    # the same storage classes as bound row by row (INT affinity included)
    assert [tuple(map(type, r)) for r in got] == [tuple(map(type, r)) for r in by_row]


def test_internal_fill_goes_row_by_row_for_what_json_cannot_hold() -> None:
    data: list[tuple[object, ...]] = [(f"h{i}", i, b"\x00blob") for i in range(50)]
    conn = apsw.Connection(":memory:")
    conn.execute(
        'CREATE TABLE "qasino_server_connections" (identity varchar, nr_tables int, last int)'
    )
    internal._fill(conn, "qasino_server_connections", data)
    assert list(conn.execute('SELECT * FROM "qasino_server_connections"')) == data


def test_table_list_lists_the_tables_of_the_served_snapshot(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "x"], [2, "y"]]), now=NOW + 7)
    assert "t" not in store.table_list()
    store.rotate(NOW + 30)
    listed = store.table_list()
    assert listed == {"t": {"nr_rows": 2, "updates": 1, "last_update_epoch": NOW + 7}}


# --- views ----------------------------------------------------------------------------------


def test_good_view_is_queryable_and_listed_as_loaded(config: StoreConfig) -> None:
    v = view("big", "SELECT a FROM t WHERE a > 1")
    s = Store(config, now=NOW, views=[v])
    try:
        publish(s, table("t", T_AB, [[1, "x"], [2, "y"], [3, "z"]]))
        s.rotate(NOW + 30)
        assert rows(s, "SELECT a FROM big ORDER BY a") == [(2,), (3,)]
        assert rows(s, "SELECT * FROM qasino_server_views") == [("big", 1, "", v.view)]
    finally:
        s.close()


def test_view_over_a_missing_table_is_not_loaded_and_its_error_recorded(
    config: StoreConfig,
) -> None:
    good = view("good", "SELECT 1 AS one")
    bad = view("bad", "SELECT * FROM nowhere")
    s = Store(config, now=NOW, views=[bad, good])
    try:
        s.rotate(NOW + 30)
        got = rows(
            s, "SELECT viewname, loaded, errormsg FROM qasino_server_views ORDER BY viewname"
        )
        assert got[0][:2] == ("bad", 0)
        assert "nowhere" in str(got[0][2])
        assert got[1] == ("good", 1, "")
        assert rows(s, "SELECT one FROM good") == [(1,)]
        with pytest.raises(QueryError):
            s.query("SELECT * FROM bad")
    finally:
        s.close()


def test_view_becomes_loaded_once_its_table_is_published(config: StoreConfig) -> None:
    s = Store(config, now=NOW, views=[view("v", "SELECT a FROM t")])
    try:
        s.rotate(NOW + 30)
        assert rows(s, "SELECT loaded FROM qasino_server_views") == [(0,)]
        publish(s, table("t", T_AB, [[1, "x"]]), now=NOW + 31)
        s.rotate(NOW + 60)
        assert rows(s, "SELECT loaded, errormsg FROM qasino_server_views") == [(1, "")]
        assert rows(s, "SELECT a FROM v") == [(1,)]
    finally:
        s.close()


def test_malformed_view_entry_is_listed_with_its_error(config: StoreConfig) -> None:
    broken = ViewDef(viewname="oops", view="nonsense", select_sql="", error="not a view")
    s = Store(config, now=NOW, views=[broken, view("ok", "SELECT 2 AS two")])
    try:
        s.rotate(NOW + 30)
        assert rows(s, "SELECT viewname, loaded, errormsg FROM qasino_server_views") == [
            ("oops", 0, "not a view"),
            ("ok", 1, ""),
        ]
        assert rows(s, "SELECT two FROM ok") == [(2,)]
    finally:
        s.close()


def test_view_joins_a_generation_table_with_a_static_table(config: StoreConfig) -> None:
    v = view("joined", "SELECT t.a, s.label FROM t JOIN s ON s.a = t.a")
    s = Store(config, now=NOW, views=[v])
    try:
        publish(s, table("s", "a INTEGER, label TEXT", [[1, "one"], [2, "two"]]), static=True)
        publish(s, table("t", T_AB, [[2, "x"], [3, "y"]]))
        s.rotate(NOW + 30)
        assert rows(s, "SELECT * FROM joined") == [(2, "two")]
        assert rows(s, "SELECT loaded FROM qasino_server_views") == [(1,)]
    finally:
        s.close()


def test_view_may_read_the_internal_tables(config: StoreConfig) -> None:
    v = view("gen", "SELECT generation_number * 10 AS g FROM qasino_server_info")
    s = Store(config, now=NOW, views=[v])
    try:
        info = s.rotate(NOW + 30)
        assert rows(s, "SELECT g FROM gen") == [(info.generation_number * 10,)]
        assert rows(s, "SELECT loaded FROM qasino_server_views") == [(1,)]
    finally:
        s.close()


def test_view_whose_statement_names_another_view_loads_under_that_name(
    config: StoreConfig,
) -> None:
    """As the original server did; qasino_server_views lists it under its
    viewname, loaded, with the warning; a clash with another entry's view is
    that entry's error only."""
    views = parse_views_yaml(
        "- {viewname: listed, view: CREATE VIEW actual AS SELECT 5 AS five}\n"
        "- {viewname: actual2, view: CREATE VIEW actual2 AS SELECT 6 AS six}\n"
        "- {viewname: clash, view: CREATE VIEW actual2 AS SELECT 7 AS seven}\n"
    )
    s = Store(config, now=NOW, views=views)
    try:
        assert rows(s, "SELECT five FROM actual") == [(5,)]
        assert rows(s, "SELECT six FROM actual2") == [(6,)]
        got = rows(s, "SELECT viewname, loaded, errormsg FROM qasino_server_views ORDER BY 1")
        assert [(r[0], r[1]) for r in got] == [("actual2", 1), ("clash", 0), ("listed", 1)]
        assert got[2][2].startswith("warning: ") and "'actual'" in got[2][2]
        assert "already exists" in got[1][2]
    finally:
        s.close()


def test_set_views_takes_effect_at_the_next_rotate(store: Store) -> None:
    store.set_views([view("v", "SELECT 7 AS seven")])
    with pytest.raises(QueryError, match="no such table"):
        store.query("SELECT * FROM v")
    store.rotate(NOW + 30)
    assert rows(store, "SELECT seven FROM v") == [(7,)]
    store.set_views([view("w", "SELECT 8 AS eight")])
    assert rows(store, "SELECT seven FROM v") == [(7,)]
    store.rotate(NOW + 60)
    assert rows(store, "SELECT eight FROM w") == [(8,)]
    with pytest.raises(QueryError, match="no such table"):
        store.query("SELECT * FROM v")
    assert rows(store, "SELECT viewname FROM qasino_server_views") == [("w",)]


def test_view_definition_change_is_used_by_pooled_connections(store: Store) -> None:
    """Reader connections kept from before a rotate must not serve an old view."""
    store.set_views([view("v", "SELECT 1 AS x")])
    store.rotate(NOW + 30)
    assert rows(store, "SELECT x FROM v") == [(1,)]
    store.set_views([view("v", "SELECT 2 AS x")])
    store.rotate(NOW + 60)
    assert rows(store, "SELECT x FROM v") == [(2,)]


# --- SHOW / DESC ------------------------------------------------------------------------------


@pytest.fixture
def shown(config: StoreConfig) -> Iterator[Store]:
    """A store serving tables t, tab2, s (static) and two views."""
    views = [view("v1", "SELECT a FROM t"), view("v2", "SELECT * FROM nowhere")]
    s = Store(config, now=NOW, views=views)
    publish(s, table("t", T_AB, [[1, "x"]]), identity="host1", now=86400.0 + NOW)
    publish(s, table("tab2", "c REAL", [[1.5]]), identity="host2", now=NOW + 2)
    publish(s, table("s", "k TEXT, v INTEGER", [["a", 1]]), identity="host2", static=True)
    s.rotate(NOW + 30)
    yield s
    s.close()


def test_show_tables_lists_all_tables_by_name_with_datetime(shown: Store) -> None:
    result = shown.query("SHOW tables;")
    assert result.column_names == (
        "tablename",
        "nr_rows",
        "nr_updates",
        "last_update_epoch",
        "static",
        "last_update_datetime",
    )
    names = [r[0] for r in result.rows]
    assert names == sorted(["t", "tab2", "s", *INTERNAL_TABLES])
    by_name = {r[0]: r for r in result.rows}
    assert by_name["t"] == ("t", 1, 1, 86400.0 + NOW, 0, "2023-11-15 22:13:20.000 UTC")
    assert by_name["s"][4] == 1


def test_show_tables_like_filters(shown: Store) -> None:
    assert [r[0] for r in shown.query("show TABLES like 't%'").rows] == ["t", "tab2"]
    assert [r[0] for r in shown.query("SHOW tables LIKE 'qasino_server_v%';").rows] == [
        "qasino_server_views"
    ]
    empty = shown.query("SHOW tables LIKE 'zz%'")
    assert empty.rows == []
    assert empty.column_names[0] == "tablename"


def test_show_connections(shown: Store) -> None:
    result = shown.query("SHOW connections;")
    assert result.column_names == (
        "identity",
        "nr_tables",
        "last_update_epoch",
        "last_update_datetime",
    )
    assert [r[:2] for r in result.rows] == [("host1", 1), ("host2", 2)]
    assert result.rows[0][3] == "2023-11-15 22:13:20.000 UTC"


def test_show_info(shown: Store) -> None:
    result = shown.query("show info")
    assert result.column_names == (
        "generation_number",
        "generation_duration_s",
        "generation_start_epoch",
        "generation_start_datetime",
    )
    info = shown.snapshot_info()
    assert result.rows == [
        (info.generation_number, DURATION, NOW + 30, "2023-11-14 22:13:50.000 UTC")
    ]


def test_show_views(shown: Store) -> None:
    result = shown.query("SHOW views;")
    assert result.column_names == ("viewname", "loaded", "errormsg")
    assert [r[:2] for r in result.rows] == [("v1", 1), ("v2", 0)]
    assert "nowhere" in str(result.rows[1][2])


def test_desc_table(shown: Store) -> None:
    result = shown.query("DESC t;")
    assert result.column_names == ("column_name", "column_type")
    assert result.rows == [("a", "INTEGER"), ("b", "TEXT")]
    assert shown.query("describe TAB2").rows == [("c", "REAL")]


def test_desc_static_table(shown: Store) -> None:
    assert shown.query("DESC s").rows == [("k", "TEXT"), ("v", "INTEGER")]


def test_desc_internal_table_shows_the_original_type_words(shown: Store) -> None:
    assert shown.query("DESC qasino_server_tables").rows == [
        ("tablename", "varchar"),
        ("nr_rows", "INT"),
        ("nr_updates", "INT"),
        ("last_update_epoch", "INT"),
        ("static", "INT"),
    ]


def test_desc_view_gives_its_definition(shown: Store) -> None:
    result = shown.query("DESC VIEW v1;")
    assert result.column_names == ("view",)
    assert result.rows == [("CREATE VIEW v1 AS SELECT a FROM t",)]
    # A view that failed to load can still be described.
    assert shown.query("desc view V2").rows == [("CREATE VIEW v2 AS SELECT * FROM nowhere",)]


def test_desc_of_a_missing_view_is_an_error(shown: Store) -> None:
    with pytest.raises(QueryError, match="nope"):
        shown.query("DESC VIEW nope")


def test_desc_of_a_missing_table_is_an_error(shown: Store) -> None:
    with pytest.raises(QueryError, match="nope"):
        shown.query("DESC nope")


def test_desc_on_the_writer_generation(shown: Store) -> None:
    publish(shown, table("fresh", "x INTEGER", [[1]]), now=NOW + 31)
    with pytest.raises(QueryError):
        shown.query("DESC fresh")
    assert shown.query("DESC fresh", use_write_db=True).rows == [("x", "INTEGER")]


def test_zero_row_results_keep_their_column_names(shown: Store) -> None:
    result = shown.query("SELECT a, b AS bee FROM t WHERE a > 100")
    assert result == Result(column_names=("a", "bee"), rows=[], truncated=False)
    assert shown.query("SELECT * FROM t WHERE 0").column_names == ("a", "b")
    assert shown.query("SELECT a FROM v1 WHERE 0").column_names == ("a",)


# --- last update of tables that outlive a generation -------------------------------


def test_static_table_keeps_its_last_update_time_in_later_generations(store: Store) -> None:
    publish(store, table("st_time", T_AB, [[1, "x"]]), now=NOW + 5, static=True)
    store.rotate(NOW + 30)
    store.rotate(NOW + 60)
    assert rows(
        store,
        "SELECT nr_updates, last_update_epoch FROM qasino_server_tables "
        "WHERE tablename = 'st_time'",
    ) == [(0, NOW + 5)]


def test_carried_persisted_table_reports_when_it_was_last_published(store: Store) -> None:
    publish(store, table("pt_time", T_AB, [[1, "x"]]), now=NOW + 7, persist=True)
    store.rotate(NOW + 30)
    store.rotate(NOW + 60)
    assert rows(
        store,
        "SELECT nr_updates, last_update_epoch FROM qasino_server_tables "
        "WHERE tablename = 'pt_time'",
    ) == [(0, NOW + 7)]


def test_generation_files_use_big_pages_and_the_static_db_keeps_its_own(store: Store) -> None:
    publish(store, table("t", T_AB, [[1, "x"]]), identity="host1")
    store.rotate(NOW + DURATION)
    for name in os.listdir(store.gen_dir):
        if name.endswith(".sqlite"):
            with open(os.path.join(store.gen_dir, name), "rb") as f:
                header = f.read(18)
            # The page size is bytes 16-17 of the header, big-endian.
            assert int.from_bytes(header[16:18], "big") == GENERATION_PAGE_SIZE, name
    assert store.static.conn.pragma("page_size") == 4096


def test_a_failed_rotation_keeps_its_counts_for_the_next_one(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(store, table("t", T_AB, [[1, "x"], [2, "y"]]), identity="host1")
    store.query("SELECT 1")
    real = store_module.write_internal_tables
    calls: list[int] = []

    def full_once(conn: Any, report: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise apsw.FullError("database or disk is full")
        real(conn, report)

    monkeypatch.setattr(store_module, "write_internal_tables", full_once)
    with pytest.raises(StoreError):
        store.rotate(NOW + DURATION)
    publish(store, table("t", T_AB, [[3, "z"]]), identity="host2")
    store.rotate(NOW + DURATION + 1)
    # received, completed, errors; rows received, rows completed
    assert rows(store, "SELECT * FROM qasino_server_update_stats") == [(2, 2, 0, 3, 3)]
    assert rows(store, "SELECT sql_received FROM qasino_server_sql_stats") == [(1,)]
    assert rows(store, "SELECT count(*) FROM t") == [(3,)]

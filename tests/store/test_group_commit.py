"""Group commit (``Store.publish_group``, used with ``--workers``): many
publishes under one commit of the writer generation, each still atomic on
its own, and a failed commit that leaves the store as it was. Real apsw
files; a commit is made to fail with SQLite's commit hook (SQLite then
rolls the transaction back, as after a storage error at commit)."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from qasino.core.errors import InvalidInput, PublishRejected, QasinoError, StoreError
from qasino.core.model import Publish, PublishOptions
from qasino.store.store import Store, StoreConfig
from tests.store.test_journal import killed
from tests.store.test_store import NOW, rows, table


def cpu(host: str, n: object = 1, name: str = "cpu") -> Publish:
    return Publish(table(name, "host TEXT, n INTEGER", [[host, n]]), PublishOptions(host))


def items(*publishes: Publish) -> list[tuple[Publish, Optional[str]]]:
    return [(p, "10.0.0.1") for p in publishes]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(
        StoreConfig(db_dir=str(tmp_path / "db"), generation_duration_s=30, journal=True), now=NOW
    )
    yield s
    if not s._closed and s.dir_lock._fd is not None:
        s.close()


class Commits:
    """Counts the writer's commits; vetoes the next one when asked."""

    def __init__(self, store: Store) -> None:
        self.count = 0
        self.veto = False
        store._writer.conn.set_commit_hook(self.hook)

    def hook(self) -> bool:
        self.count += 1
        veto, self.veto = self.veto, False
        return veto


def messages(errors: list[Optional[QasinoError]]) -> list[Optional[str]]:
    return [None if e is None else type(e).__name__ for e in errors]


def test_a_group_is_one_commit_and_each_publish_keeps_its_own_outcome(store: Store) -> None:
    commits = Commits(store)
    errors = store.publish_group(
        items(
            cpu("a", 1),
            cpu("b", 2),
            cpu("a", 3),  # the same identity again: refused, as one by one
            cpu("c", {"not": "a cell"}),  # refused by SQLite's binding
            cpu("d", 4, name="mem"),  # a new table, created inside the group
        ),
        NOW + 1,
    )
    assert messages(errors) == [None, None, "PublishRejected", "InvalidInput", None]
    assert isinstance(errors[3], InvalidInput)
    assert commits.count == 1
    assert rows(store, "SELECT host, n FROM cpu ORDER BY host", use_write_db=True) == [
        ("a", 1),
        ("b", 2),
    ]
    assert rows(store, "SELECT host, n FROM mem", use_write_db=True) == [("d", 4)]
    store.rotate(NOW + 30)
    assert rows(store, "SELECT count(*) FROM cpu") == [(2,)]
    assert rows(
        store,
        "SELECT identity, remote_addr FROM qasino_server_identities ORDER BY identity",
    ) == [("a", "10.0.0.1"), ("b", "10.0.0.1"), ("d", "10.0.0.1")]


def test_publishes_that_cannot_be_grouped_are_applied_alone_in_their_place(
    store: Store,
) -> None:
    kv = table("kv", "k TEXT, v INTEGER", [["x", 1]])
    kv2 = table("kv", "k TEXT, v INTEGER", [["x", 2]])
    keyed = PublishOptions("p", persist=True, update=True, keycols=("k",))
    kept = Publish(table("pp", "k TEXT", [["old"]]), PublishOptions("p", persist=True))
    commits = Commits(store)
    errors = store.publish_group(
        items(
            cpu("a"), cpu("b"), Publish(kv, keyed), Publish(kv2, keyed), kept, cpu("c"), cpu("d")
        ),
        NOW + 1,
    )
    assert errors == [None] * 7
    # a+b, the two updates and the persisted table alone, c+d.
    assert commits.count == 5
    assert rows(store, "SELECT k, v FROM kv", use_write_db=True) == [("x", 2)]
    # A persisted table is carried into the next generation, and a plain
    # publish over its carried copy replaces it (alone, not grouped), as
    # does the same identity's publish of another table.
    store.rotate(NOW + 30)
    commits = Commits(store)
    plain = Publish(table("pp", "k TEXT", [["new"]]), PublishOptions("p"))
    other = Publish(table("q", "k TEXT", [["q"]]), PublishOptions("p"))
    assert store.publish_group(items(cpu("e"), plain, other, cpu("f")), NOW + 31) == [None] * 4
    assert commits.count == 3  # e, the plain pp alone, then q+f
    assert rows(store, "SELECT k FROM pp", use_write_db=True) == [("new",)]


def state(store: Store) -> Any:
    gen = store._writer
    return (
        {k: list(v) for k, v in gen.contrib.items()},
        set(gen.published),
        dict(gen.schemas),
        {k: (v.nr_updates, v.last_update_epoch) for k, v in gen.table_stats.items()},
        {k: list(v) for k, v in gen.identity_stats.items()},
        dict(store.identities),
        set(store._identities_seen_now),
        store.counters.peek()["updates_completed"],
    )


def test_a_failed_group_commit_leaves_the_store_as_before_the_group(
    store: Store, tmp_path: Path
) -> None:
    assert store.publish_group(items(cpu("a", 1), cpu("b", 2)), NOW + 1) == [None, None]
    before = state(store)
    journal_size = store._journal.mark() if store._journal else None
    commits = Commits(store)
    commits.veto = True
    errors = store.publish_group(
        items(cpu("c", 3), cpu("c", 9), cpu("e", {"not": "a cell"}), cpu("d", 4, name="mem")),
        NOW + 2,
    )
    assert commits.count == 1
    # Every publish of the group fails with the commit (c's second too: it
    # was refused only because of the first), but for bad input of its own.
    assert messages(errors) == [
        "PublishRejected",
        "PublishRejected",
        "InvalidInput",
        "PublishRejected",
    ]
    assert all("could not store" in e.message for e in errors if isinstance(e, PublishRejected))
    assert state(store) == before
    assert store._journal is not None and store._journal.mark() == journal_size
    # The same publishers publish again, and the table created in the
    # rolled-back group is created again.
    assert store.publish_group(items(cpu("c", 3), cpu("d", 4, name="mem")), NOW + 3) == [
        None,
        None,
    ]
    assert rows(store, "SELECT host, n FROM cpu ORDER BY host", use_write_db=True) == [
        ("a", 1),
        ("b", 2),
        ("c", 3),
    ]
    assert rows(store, "SELECT host FROM mem", use_write_db=True) == [("d",)]
    store.rotate(NOW + 30)
    assert rows(store, "SELECT count(*) FROM cpu") == [(3,)]


def test_a_failed_group_is_not_replayed_after_a_kill(store: Store, tmp_path: Path) -> None:
    assert store.publish_group(items(cpu("a", 1), cpu("b", 2)), NOW + 1) == [None, None]
    commits = Commits(store)
    commits.veto = True
    assert None not in store.publish_group(items(cpu("c", 3), cpu("d", 4)), NOW + 2)
    killed(store)
    again = Store(store.config, now=NOW + 5)
    try:
        assert rows(again, "SELECT host FROM cpu ORDER BY host", use_write_db=True) == [
            ("a",),
            ("b",),
        ]
    finally:
        again.close()


def test_no_keep_stale_copy_is_made_of_a_failed_group(tmp_path: Path) -> None:
    s = Store(
        StoreConfig(db_dir=str(tmp_path / "db"), generation_duration_s=30, keep_stale=2),
        now=NOW,
    )
    try:
        assert s.publish_group(items(cpu("a", 1), cpu("b", 2)), NOW + 1) == [None, None]
        commits = Commits(s)
        commits.veto = True
        assert None not in s.publish_group(items(cpu("c", 3), cpu("e", 4)), NOW + 2)
        # f's row takes the rowid the rolled-back c had.
        assert s.publish_group(items(cpu("f", 5)), NOW + 3) == [None]
        s.rotate(NOW + 30)
        s.rotate(NOW + 60)  # nobody published: stale copies of a, b and f
        assert rows(s, "SELECT host, n FROM cpu ORDER BY host") == [
            ("a", 1),
            ("b", 2),
            ("f", 5),
        ]
        assert rows(s, "SELECT identity FROM qasino_server_identities ORDER BY 1") == [
            ("a",),
            ("b",),
            ("f",),
        ]
    finally:
        s.close()


def test_a_group_whose_commit_meets_a_full_disk_fails_whole_and_can_be_sent_again(
    store: Store,
) -> None:
    """A real storage error at commit: a file-size limit (RLIMIT_FSIZE; the
    write fails with EFBIG, as on a full disk) that lets the WAL grow by one
    page at most, set only around the group's publish."""
    assert store.publish_group(items(cpu("a", 1), cpu("b", 2)), NOW + 1) == [None, None]
    before = state(store)
    wal = store._writer.file.path + "-wal"
    group = items(*[cpu(f"c{i}", i, name=f"t{i}") for i in range(30)])  # 30 new tables
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(wal) + 4096, hard))
    try:
        errors = store.publish_group(group, NOW + 2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert errors and all(isinstance(e, StoreError) for e in errors), messages(errors)
    assert all("storage error" in e.message for e in errors if e is not None)
    assert state(store) == before
    # Space again: the same publishes go in, tables created anew.
    assert store.publish_group(group, NOW + 3) == [None] * 30
    assert rows(store, "SELECT host FROM t29", use_write_db=True) == [("c29",)]
    store.rotate(NOW + 30)
    assert rows(store, "SELECT count(*) FROM cpu") == [(2,)]


def test_refused_publishes_leave_nothing_for_the_cyclic_collector(
    store: Store, no_cyclic_gc: None
) -> None:
    """A refusal is handed back as a value without its traceback: with it,
    its frames held the list of errors that held it, and every refused
    publish kept its whole group (rows and all) alive until a collection
    that stalled every thread."""
    import gc

    store.publish_group(items(cpu("a"), cpu("b")), NOW + 1)
    gc.collect()  # what the first publishes of the generation leave (caches)
    errors = store.publish_group(items(cpu("a"), cpu("c"), cpu("b")), NOW + 2)
    assert [type(e).__name__ for e in errors] == ["PublishRejected", "NoneType", "PublishRejected"]
    for round_ in range(3):
        errors = store.publish_group(items(cpu("a"), cpu("c"), cpu("b")), NOW + 3 + round_)
        assert [type(e) for e in errors] == [PublishRejected] * 3
        assert all(e is not None and e.__traceback__ is None for e in errors)
    batch = store.write_batch([(store.publish, (cpu("a"), NOW + 9))])
    assert isinstance(batch[0], PublishRejected) and batch[0].__traceback__ is None
    del errors, batch
    assert gc.collect() == 0

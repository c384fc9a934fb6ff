"""The --db-dir lock and the store healing its own files (issue 11, point 1)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
from twisted.logger import globalLogPublisher

from qasino.core.errors import StoreError
from qasino.core.model import Publish, PublishOptions, Table
from qasino.store.lock import LOCK_FILE, DataDirBusy, DataDirLock
from qasino.store.store import Store, StoreConfig


def table(name: str, n: int) -> Table:
    return Table(name, ("host", "n"), ("text", "integer"), [["h1", n]])


def pub(name: str, n: int, identity: str = "h1", **opts: Any) -> Publish:
    return Publish(table(name, n), PublishOptions(identity=identity, **opts))


def rows(store: Store, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in store.query(sql).rows]


@pytest.fixture
def logged() -> Iterator[list[str]]:
    from twisted.logger import formatEvent

    lines: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


def snapshot_of(path: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            st = os.stat(os.path.join(root, name))
            out[os.path.join(root, name)] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def test_second_store_on_a_locked_dir_raises_naming_dir_and_pid_and_changes_nothing(
    tmp_path: Path,
) -> None:
    store = Store(StoreConfig(db_dir=str(tmp_path)), now=1000.0)
    try:
        store.publish(pub("t", 1), 1001.0)
        before = snapshot_of(tmp_path)
        with pytest.raises(DataDirBusy) as info:
            Store(StoreConfig(db_dir=str(tmp_path)), now=1002.0)
        assert str(tmp_path) in info.value.message
        assert f"process {os.getpid()}" in info.value.message
        assert "\n" not in info.value.message
        assert snapshot_of(tmp_path) == before
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    finally:
        store.close()
    # Closed: the directory is free again.
    Store(StoreConfig(db_dir=str(tmp_path)), now=1003.0).close()


def test_lock_without_a_pid_in_the_file_still_refuses(tmp_path: Path) -> None:
    lock = DataDirLock.acquire(str(tmp_path))
    try:
        (tmp_path / LOCK_FILE).write_text("")
        with pytest.raises(DataDirBusy, match="PID is not known"):
            DataDirLock.acquire(str(tmp_path))
    finally:
        lock.release()
    DataDirLock.acquire(str(tmp_path)).release()


def test_deleted_generations_dir_is_healed_at_the_next_rotate_with_every_acked_row(
    tmp_path: Path, logged: list[str]
) -> None:
    store = Store(StoreConfig(db_dir=str(tmp_path)), now=1000.0)
    try:
        store.publish(pub("acked", 3), 1001.0)
        store.publish(pub("kept", 1, persist=True), 1001.0)
        shutil.rmtree(tmp_path / "generations")
        store.publish(pub("after", 4), 1002.0)  # into the deleted file: still acked
        store.rotate(1030.0)
        assert rows(store, "SELECT host, n FROM acked") == [("h1", 3)]
        assert rows(store, "SELECT host, n FROM after") == [("h1", 4)]
        assert any("nothing lost" in line for line in logged), logged
        store.publish(pub("acked", 5), 1031.0)
        store.rotate(1060.0)
        assert rows(store, "SELECT host, n FROM acked") == [("h1", 5)]
        assert rows(store, "SELECT host, n FROM kept") == [("h1", 1)]
    finally:
        store.close()


def test_broken_writer_file_is_replaced_the_loss_logged_and_persisted_tables_kept(
    tmp_path: Path, logged: list[str]
) -> None:
    store = Store(StoreConfig(db_dir=str(tmp_path)), now=1000.0)
    try:
        store.publish(pub("kept", 1, persist=True), 1001.0)
        store.rotate(1030.0)
        store.publish(pub("lost", 2), 1031.0)
        # The file breaks: garbage over it, and the writer sees it afresh.
        writer = store._writer
        writer.conn.close()
        with open(writer.file.path, "r+b") as f:
            f.write(os.urandom(os.path.getsize(writer.file.path)))
        for suffix in ("-wal", "-shm"):
            if os.path.exists(writer.file.path + suffix):
                os.unlink(writer.file.path + suffix)
        writer.conn = apsw.Connection(writer.file.path)
        with pytest.raises(Exception):  # noqa: B017 - any error: the file is junk
            writer.conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()

        info = store.rotate(1060.0)  # heals: no exception
        assert info.generation_number > 1030
        text = "\n".join(logged)
        assert "is broken" in text and "lost from h1" in text, text
        assert rows(store, "SELECT host, n FROM kept") == [("h1", 1)]
        with pytest.raises(Exception, match="no such table"):
            store.query("SELECT * FROM lost")
        # And it goes on normally.
        store.publish(pub("lost", 6), 1061.0)
        store.rotate(1090.0)
        assert rows(store, "SELECT host, n FROM lost") == [("h1", 6)]
    finally:
        store.close()


def test_deleted_files_that_cannot_be_copied_yet_are_kept_for_the_next_rotate(
    tmp_path: Path,
) -> None:
    """The generations directory deleted and a file put in its place: no
    new file can be made. The rows stay in the open generation; the
    rotation fails, and the next one (once the path is free) serves them."""
    store = Store(StoreConfig(db_dir=str(tmp_path)), now=1000.0)
    try:
        store.publish(pub("acked", 3), 1001.0)
        gen_dir = tmp_path / "generations"
        shutil.rmtree(gen_dir)
        gen_dir.write_text("in the way")
        with pytest.raises(StoreError, match="cannot be copied out yet"):
            store.rotate(1030.0)
        gen_dir.unlink()
        store.rotate(1031.0)
        assert rows(store, "SELECT host, n FROM acked") == [("h1", 3)]
    finally:
        store.close()


def test_static_tables_report_their_last_publish_time_after_a_restart(tmp_path: Path) -> None:
    store = Store(StoreConfig(db_dir=str(tmp_path)), now=1000.0)
    store.publish(pub("stat", 1, static=True), 1234.0)
    store.rotate(1300.0)
    store.close()  # shutting down touches the file; its mtime is now
    again = Store(StoreConfig(db_dir=str(tmp_path)), now=5000.0)
    try:
        assert rows(
            again, "SELECT last_update_epoch FROM qasino_server_tables WHERE tablename = 'stat'"
        ) == [(1234.0,)]
        assert rows(again, "SHOW tables")  # the bookkeeping table is not listed
        listed = [r[0] for r in rows(again, "SELECT tablename FROM qasino_server_tables")]
        assert not any(name.startswith("_") for name in listed), listed
    finally:
        again.close()


def test_a_deleted_data_dir_is_locked_again_at_the_next_rotate(
    tmp_path: Path, logged: list[str]
) -> None:
    db_dir = tmp_path / "db"
    store = Store(StoreConfig(db_dir=str(db_dir)), now=1000.0)
    try:
        store.publish(pub("acked", 3), 1001.0)
        shutil.rmtree(db_dir)
        store.rotate(1030.0)
        assert rows(store, "SELECT host, n FROM acked") == [("h1", 3)]
        assert any("locked a new one" in line for line in logged), logged
        with pytest.raises(DataDirBusy):
            DataDirLock.acquire(str(db_dir))
    finally:
        store.close()

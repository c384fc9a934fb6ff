"""The static DB's file: the original Qasino's name, its layout, and the move
from our first release's ``static.sqlite`` (docs/migrating.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import apsw

from qasino.core.model import Publish, PublishOptions, Table
from qasino.store.store import FIRST_RELEASE_STATIC_FILE, STATIC_FILE, Store, StoreConfig

NOW = 1_700_000_000.0


def original_static_db(path: Path) -> None:
    """A static DB as the original server wrote it: rollback journal, quoted
    names, its own type words, DEFAULT NULL, a unique index from an update."""
    conn = apsw.Connection(str(path))
    conn.execute(
        "CREATE TABLE IF NOT EXISTS 'hosts' ( \n"
        "'host' varchar DEFAULT NULL,\n'rack' int DEFAULT NULL,\n'load' real DEFAULT NULL)"
    )
    conn.execute("INSERT INTO hosts (host, rack, load) VALUES ('a1', 3, 0.5), ('b2', 4, NULL)")
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS hosts_unique_index_host ON hosts (host)")
    conn.close()


def test_an_original_static_db_is_served_as_the_static_tables(tmp_path: Path) -> None:
    db_dir = tmp_path / "dbs"
    db_dir.mkdir()
    original_static_db(db_dir / "qasino_table_store_static.db")
    store = Store(StoreConfig(db_dir=str(db_dir)), now=NOW)
    try:
        got = store.query("SELECT host, rack, load FROM hosts ORDER BY host").rows
        assert [tuple(r) for r in got] == [("a1", 3, 0.5), ("b2", 4, None)]
        listed = store.query(
            "SELECT tablename, nr_rows, static FROM qasino_server_tables WHERE tablename = 'hosts'"
        ).rows
        assert [tuple(r) for r in listed] == [("hosts", 2, 1)]
        desc = store.query("DESC hosts;").rows
        # (SQLite itself spells the standard type words in capitals.)
        assert [tuple(r) for r in desc] == [("host", "varchar"), ("rack", "INT"), ("load", "REAL")]
        # A re-publish keeps the union of columns and the existing key index.
        table = Table("hosts", ("host", "os"), ("TEXT", "TEXT"), [["c3", "linux"]])
        store.publish(Publish(table, PublishOptions(identity="h", static=True)), NOW + 1)
        got = store.query("SELECT * FROM hosts").rows
        assert [tuple(r) for r in got] == [("c3", None, None, "linux")]
    finally:
        store.close()


def test_a_first_release_static_sqlite_is_moved_to_the_original_name(tmp_path: Path) -> None:
    db_dir = tmp_path / "dbs"
    db_dir.mkdir()
    old = db_dir / FIRST_RELEASE_STATIC_FILE
    # What a killed first-release server leaves: the rows still in the WAL.
    scratch = tmp_path / "scratch.sqlite"
    conn = apsw.Connection(str(scratch))
    conn.pragma("journal_mode", "wal")
    conn.pragma("wal_autocheckpoint", 0)
    conn.execute("CREATE TABLE s (a INTEGER)")
    conn.execute("INSERT INTO s VALUES (7)")
    shutil.copy(scratch, old)
    shutil.copy(str(scratch) + "-wal", str(old) + "-wal")
    conn.close()
    store = Store(StoreConfig(db_dir=str(db_dir)), now=NOW)
    try:
        assert [tuple(r) for r in store.query("SELECT a FROM s").rows] == [(7,)]
        assert (db_dir / STATIC_FILE).exists()
        assert not old.exists() and not Path(str(old) + "-wal").exists()
    finally:
        store.close()


def test_when_both_files_exist_the_original_name_wins(tmp_path: Path) -> None:
    db_dir = tmp_path / "dbs"
    db_dir.mkdir()
    original_static_db(db_dir / STATIC_FILE)
    stray = apsw.Connection(str(db_dir / FIRST_RELEASE_STATIC_FILE))
    stray.execute("CREATE TABLE other (a INTEGER)")
    stray.close()
    store = Store(StoreConfig(db_dir=str(db_dir)), now=NOW)
    try:
        names = {r[0] for r in store.query("SELECT tablename FROM qasino_server_tables").rows}
        assert "hosts" in names and "other" not in names
        assert (db_dir / FIRST_RELEASE_STATIC_FILE).exists()
    finally:
        store.close()

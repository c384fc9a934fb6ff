"""The generation store: writer generation, snapshots, static DB, queries.

Threading contract (see docs/concurrency.md):

- ``publish``, ``name_value_update``, ``rotate`` and ``close`` are *writer*
  methods: call them one at a time, never concurrently (the engine runs
  small writes on the reactor thread and long ones on its writer thread,
  strictly in turn).
- ``query``, ``table_list`` and ``snapshot_info`` may be called from any
  number of threads at once; each query borrows a read-only connection of
  the snapshot it started on, so a rotation never waits for it and it never
  sees a half-built generation.
- Time comes in as arguments (``now``); the store never reads the clock
  except ``monotonic`` for query deadlines, which is injectable.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import apsw
from twisted.logger import Logger

from qasino.core.commands import Command, parse_command
from qasino.core.errors import (
    InvalidInput,
    PublishRejected,
    QasinoError,
    QueryError,
    StoreError,
)
from qasino.core.identifiers import (
    INTERNAL_PREFIX,
    TEXT,
    check_identifier,
    is_identifier,
    quote_ident,
)
from qasino.core.model import Publish, PublishOptions, Result, Table, ViewDef
from qasino.core.persist import PersistRegistry
from qasino.core.tables import explain_cells
from qasino.store.internal import (
    GenerationReport,
    TableEntry,
    write_internal_tables,
    write_views_table,
)
from qasino.store.lock import DataDirLock
from qasino.store.query import QueryLimits, describe_table, run_select
from qasino.store.schema import TableSchema, count_rows, ensure_table, insert_rows, load_schemas
from qasino.store.sqlite import (
    copy_connection,
    copy_database,
    open_reader,
    open_writer,
    reclaim_wal,
    sqlite_message,
)
from qasino.store.views import build_views, create_temp_view

# The original Qasino's name for the static DB, so an existing data dir is
# served as it is; our first release called it static.sqlite (migrated).
STATIC_FILE = "qasino_table_store_static.db"
FIRST_RELEASE_STATIC_FILE = "static.sqlite"
GENERATIONS_DIR = "generations"
# The static DB's own bookkeeping table (not an identifier: never a user table).
STATIC_META = "_qasino_static_updates"

log = Logger(namespace="qasino.store")


@dataclass(frozen=True)
class StoreConfig:
    db_dir: str
    generation_duration_s: float = 30.0
    archive_dir: Optional[str] = None
    limits: QueryLimits = QueryLimits()


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot being served; ``filling_number`` is the number of the writer
    generation opened with it (what the generation signal announces)."""

    generation_number: int
    generation_duration_s: float
    generation_start_epoch: float
    filling_number: int = 0


class Counters:
    """The per-generation statistics of the two sql/update stats tables."""

    NAMES = (
        "sql_received",
        "sql_completed",
        "sql_errors",
        "updates_received",
        "updates_completed",
        "update_errors",
        "inserts_received",
        "inserts_completed",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.NAMES, 0)
        # Since the start, never reset: what /metrics reports.
        self._totals = dict.fromkeys(self.NAMES, 0)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, n in deltas.items():
                self._values[name] += n
                self._totals[name] += n

    def give_back(self, values: dict[str, int]) -> None:
        """Undo a :meth:`take` (the generation was not served); totals keep them once."""
        with self._lock:
            for name, n in values.items():
                self._values[name] += n

    def totals(self) -> dict[str, int]:
        """Every count since the store opened."""
        with self._lock:
            return dict(self._totals)

    def take(self) -> dict[str, int]:
        """Return the counts so far and start again from zero."""
        with self._lock:
            values = self._values
            self._values = dict.fromkeys(self.NAMES, 0)
        return values

    def peek(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class GenFile:
    """One generation DB file and the read-only connections open on it.

    It is the writer generation first (readable with ``use_write_db``), then
    the snapshot. ``refs`` counts borrowed connections; once retired and no
    longer borrowed, the file is removed or archived.
    """

    def __init__(self, path: str, number: int, static_path: str) -> None:
        self.path = path
        self.number = number
        self.static_path = static_path
        self.refs = 0
        self.retired = False
        self.views: tuple[ViewDef, ...] = ()
        self.views_version = 0
        self.info: Optional[SnapshotInfo] = None
        self.table_list: dict[str, dict[str, object]] = {}
        # (st_dev, st_ino) of the file once created: tells a file deleted or
        # replaced under the server from the one it wrote.
        self.file_id: Optional[tuple[int, int]] = None
        self.nr_identities = 0
        self._idle: list[tuple[int, apsw.Connection]] = []
        self._lock = threading.Lock()

    def set_views(self, views: Sequence[ViewDef]) -> None:
        with self._lock:
            self.views = tuple(views)
            self.views_version += 1
            stale, self._idle = self._idle, []
        for _, conn in stale:
            conn.close()

    def take(self) -> tuple[int, apsw.Connection]:
        with self._lock:
            version, views = self.views_version, self.views
            while self._idle:
                v, conn = self._idle.pop()
                if v == version:
                    return v, conn
                conn.close()
        try:
            conn = open_reader(self.path, self.static_path)
        except apsw.Error as e:
            gone = (
                ""
                if os.path.exists(self.path)
                else " (its file is gone; the next generation heals it)"
            )
            raise StoreError(
                f"cannot open generation {self.number}: {sqlite_message(e)}{gone}"
            ) from None
        for view in views:
            create_temp_view(conn, view)
        return version, conn

    def give_back(self, version: int, conn: apsw.Connection) -> None:
        with self._lock:
            if version == self.views_version and not self.retired:
                self._idle.append((version, conn))
                return
        conn.close()

    def close_connections(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, conn in idle:
            conn.close()


@dataclass
class _TableStat:
    tablename: str
    nr_updates: int = 0
    last_update_epoch: float = 0.0


@dataclass
class WriterGeneration:
    """The generation being filled, and its bookkeeping (all in one place)."""

    file: GenFile
    conn: apsw.Connection
    opened_at: float
    schemas: dict[str, TableSchema] = field(default_factory=dict)
    published: set[tuple[str, str]] = field(default_factory=set)
    carried: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    table_stats: dict[str, _TableStat] = field(default_factory=dict)
    identity_stats: dict[str, list[float]] = field(default_factory=dict)  # [nr_tables, last]

    def note_publish(self, tablename: str, identity: str, now: float, static: bool) -> None:
        key = ("static:" if static else "") + tablename.lower()
        stat = self.table_stats.get(key)
        if stat is None:
            stat = self.table_stats[key] = _TableStat(tablename)
        stat.nr_updates += 1
        stat.last_update_epoch = now
        ident = self.identity_stats.setdefault(identity, [0, 0.0])
        ident[0] += 1
        ident[1] = now

    def note_carried(self, tablename: str, published_at: float) -> None:
        """A persisted copy: its last update is its identity's last publish
        (not counted as an update of this generation)."""
        stat = self.table_stats.get(tablename.lower())
        if stat is None:
            stat = self.table_stats[tablename.lower()] = _TableStat(tablename, 0, 0.0)
        stat.last_update_epoch = max(stat.last_update_epoch, published_at)


class StaticDB:
    """The persistent static tables, in their own durable DB file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn = open_writer(path, durable=True)
        self.file_id = file_id(path)
        self.schemas = load_schemas(self.conn)
        # When each table was last published, kept in the file itself (a
        # name that is not an identifier, so never listed as a table). A
        # file from before that has only its modification time to go by.
        with self.conn:
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS {STATIC_META} "
                "(tablename TEXT PRIMARY KEY, last_update_epoch REAL)"
            )
        mtime = os.path.getmtime(path)
        self.last_update: dict[str, float] = dict.fromkeys(self.schemas, mtime)
        for name, epoch in self.conn.execute(
            f"SELECT tablename, last_update_epoch FROM {STATIC_META}"
        ):
            if isinstance(name, str) and name.lower() in self.schemas:
                self.last_update[name.lower()] = float(epoch or 0.0)

    def apply(self, publish: Publish, now: float) -> None:
        """Replace (or, with ``update``, upsert into) a static table.

        As the original server did, the table keeps the union of the columns
        of every publish: a re-publish without a column empties that column
        (its rows are gone) but keeps it in the schema.
        """
        table, opts = publish.table, publish.options
        lower = table.tablename.lower()
        current = self.schemas.get(lower)
        with self.conn:
            if opts.update:
                keycols = opts.keycols or table.column_names
                schema = ensure_table(self.conn, current, table, keycols)
                insert_rows(self.conn, table, "replace", target=schema.name)
            else:
                if current is not None:
                    # Rows first, so a new key index is built on an empty table.
                    self.conn.execute(f"DELETE FROM {quote_ident(current.name)}")
                schema = ensure_table(self.conn, current, table, opts.keycols or None)
                insert_rows(self.conn, table, "insert", target=schema.name)
            self.conn.execute(f"INSERT OR REPLACE INTO {STATIC_META} VALUES (?, ?)", (lower, now))
        self.schemas[lower] = schema
        self.last_update[lower] = now

    def close(self) -> None:
        self.conn.close()


def static_db_path(db_dir: str) -> str:
    """The static DB of ``db_dir``: ``qasino_table_store_static.db``.

    A ``static.sqlite`` left by our first release is moved to that name
    (after folding its WAL in) when the new name does not exist yet; if both
    exist the original's name wins and the other file is left alone.
    """
    path = os.path.join(db_dir, STATIC_FILE)
    old = os.path.join(db_dir, FIRST_RELEASE_STATIC_FILE)
    if os.path.exists(path):
        if os.path.exists(old):
            log.warn(
                "both {path} and {old} exist: serving {path}, ignoring {old}",
                path=path,
                old=old,
            )
        return path
    if os.path.exists(old):
        conn = apsw.Connection(old)
        try:
            conn.pragma("wal_checkpoint", "TRUNCATE")
        finally:
            conn.close()
        os.rename(old, path)
        for suffix in ("-wal", "-shm"):
            try:
                os.unlink(old + suffix)
            except FileNotFoundError:
                pass
        log.info("moved the static DB {old} to {path}", old=old, path=path)
    return path


class Store:
    """Qasino's SQLite state. See the module docstring for the threading rules."""

    def __init__(
        self,
        config: StoreConfig,
        now: float,
        views: Sequence[ViewDef] = (),
        monotonic: Callable[[], float] = time.monotonic,
        dir_lock: Optional[DataDirLock] = None,
    ) -> None:
        self.config = config
        self.monotonic = monotonic
        self.counters = Counters()
        self.persisted = PersistRegistry()
        self._lock = threading.Lock()
        self._views: tuple[ViewDef, ...] = tuple(views)
        self._last_number = 0
        self._closed = False
        self._file_seq = 0
        # One store per directory: the lock comes before anything else
        # touches it (raises DataDirBusy naming the holder's PID).
        self.dir_lock = dir_lock or DataDirLock.acquire(config.db_dir)
        try:
            self.gen_dir = os.path.join(config.db_dir, GENERATIONS_DIR)
            # Generation files are transient: whatever a previous run left is stale.
            shutil.rmtree(self.gen_dir, ignore_errors=True)
            os.makedirs(self.gen_dir)
            if config.archive_dir:
                os.makedirs(config.archive_dir, exist_ok=True)
            self.static = StaticDB(static_db_path(config.db_dir))
        except (OSError, apsw.Error) as e:
            self.dir_lock.release()
            raise StoreError(f"cannot open the db dir {config.db_dir!r}: {e}") from None
        self._snapshot: Optional[GenFile] = None
        self._writer = self._open_generation(now)
        # Serve an (empty) snapshot at once: static tables and the internal
        # tables are queryable from the first second.
        self.rotate(now)

    # ------------------------------------------------------------------ writer

    def _new_gen_path(self, number: int, healing: bool = False) -> str:
        """A file name for generation ``number`` with no file (nor -wal/-shm
        file) there. A healed generation never reuses its lost file's name:
        SQLite would pair a new file with the old one's WAL."""
        # The directory may have been deleted under the server: make it again.
        os.makedirs(self.gen_dir, exist_ok=True)
        while True:
            if healing:
                self._file_seq += 1
                name = f"gen-{number}.{self._file_seq}.sqlite"
            else:
                name = f"gen-{number}.sqlite"
            path = os.path.join(self.gen_dir, name)
            if not any(os.path.lexists(path + x) for x in ("", "-wal", "-shm")):
                return path
            healing = True

    def _open_generation(self, now: float, number: Optional[int] = None) -> WriterGeneration:
        # ``number``: chosen by the caller (NATS mode: stream time); it may
        # be one an earlier generation of this run had (_new_gen_path then
        # gives it a file of its own).
        if number is None:
            number = max(int(now), self._last_number + 1)
        self._last_number = max(number, self._last_number)
        try:
            path = self._new_gen_path(number)
        except OSError as e:
            raise StoreError(f"cannot make {self.gen_dir}: {e.strerror or e}") from None
        gen_file = GenFile(path, number, self.static.path)
        gen_file.set_views(self._views)
        gen = WriterGeneration(gen_file, open_writer(path), now)
        gen_file.file_id = file_id(path)
        for carried in self.persisted.carried():
            try:
                self._apply(gen, carried.publish, now, carried=True)
                gen.note_carried(carried.publish.table.tablename, carried.published_at)
            except QasinoError as e:
                log.error(
                    "could not carry persisted table {table} of {identity} forward: {error}",
                    table=carried.publish.table.tablename,
                    identity=carried.publish.options.identity,
                    error=e.message,
                )
        return gen

    def publish(self, publish: Publish, now: float) -> None:
        """Apply one table to the writer generation (or the static DB).

        Atomic: all its rows or none. Raises PublishRejected, InvalidInput
        or StoreError; returns once the rows are committed.
        """
        nrows = len(publish.table.rows)
        self.counters.add(updates_received=1, inserts_received=nrows)
        try:
            _check_tablename(publish.table.tablename)
            _check_keycols(publish)
            if publish.options.static:
                self._apply_static(publish, now)
            else:
                self._apply(self._writer, publish, now)
                self.persisted.record(publish, now=now)
        except QasinoError:
            self.counters.add(update_errors=1)
            raise
        self.counters.add(updates_completed=1, inserts_completed=nrows)

    def _apply_static(self, publish: Publish, now: float) -> None:
        try:
            self.static.apply(publish, now)
        except _BINDING_ERRORS as e:
            raise _refused_cell(e, publish.table) from None
        except apsw.Error as e:
            raise _failed_write(e, self.static.conn) from None
        self._writer.note_publish(publish.table.tablename, publish.options.identity, now, True)

    def _apply(
        self,
        gen: WriterGeneration,
        publish: Publish,
        now: float,
        carried: bool = False,
        merge_cells: bool = False,
    ) -> None:
        table, opts = publish.table, publish.options
        lower = table.tablename.lower()
        key = (lower, opts.identity)
        if not carried and not opts.update and key in gen.published:
            raise PublishRejected(
                f"table {table.tablename} was already published by identity "
                f"{opts.identity} in this generation; this publish is ignored"
            )
        current = gen.schemas.get(lower)
        keycols = (opts.keycols or table.column_names) if opts.update else None
        conn = gen.conn
        span: Optional[tuple[int, int]] = None
        try:
            with conn:
                schema = ensure_table(conn, current, table, keycols)
                if not carried and not opts.update and key in gen.carried:
                    lo, hi = gen.carried[key]
                    conn.execute(
                        f"DELETE FROM {quote_ident(schema.name)} WHERE rowid BETWEEN ? AND ?",
                        (lo, hi),
                    )
                if opts.update:
                    mode = "merge" if merge_cells else "replace"
                    insert_rows(conn, table, mode, keycols or (), target=schema.name)
                elif carried and table.rows:
                    # A carried copy's rows are replaced if its identity
                    # publishes again: remember their rowids (contiguous,
                    # as the one writer appends them). A bare max(rowid) is
                    # O(log n); wrapped in another function it scans.
                    top = conn.execute(
                        f"SELECT max(rowid) FROM {quote_ident(schema.name)}"
                    ).fetchall()[0][0]
                    before = top if isinstance(top, int) else 0
                    insert_rows(conn, table, "insert", target=schema.name)
                    span = (before + 1, conn.last_insert_rowid())
                elif table.rows:
                    insert_rows(conn, table, "insert", target=schema.name)
        except _BINDING_ERRORS as e:
            raise _refused_cell(e, table) from None
        except apsw.Error as e:
            raise _failed_write(e, conn) from None
        gen.schemas[lower] = schema
        if carried:
            if span is not None:
                gen.carried[key] = span
            return
        gen.carried.pop(key, None)
        if not opts.update:
            gen.published.add(key)
        gen.note_publish(schema.name, opts.identity, now, False)

    def name_value_update(
        self, tablename: str, column: str, value: str, identity: str, now: float
    ) -> None:
        """Upsert (identity, column=value) into a persisted table keyed by identity.

        The value is stored exactly as sent, as TEXT (the original's columns
        were varchar): "01000" stays "01000". Other columns of the identity's
        row keep their values.
        """
        _check_tablename(check_identifier(tablename, "table name"))
        check_identifier(column, "column name")
        for what, text in (("identity", identity), ("value", value)):
            try:
                text.encode("utf-8")
            except UnicodeError:
                raise InvalidInput(f"{what} is not valid UTF-8 text") from None
        if not identity or any(ord(c) < 32 or ord(c) == 127 for c in identity):
            raise InvalidInput("identity must be non-empty, without control characters")
        if column.lower() == "identity":
            raise InvalidInput("the column name 'identity' is reserved for the key")
        table = Table(tablename, ("identity", column), (TEXT, TEXT), [[identity, value]])
        opts = PublishOptions(identity=identity, persist=True, update=True, keycols=("identity",))
        publish = Publish(table, opts)
        self.counters.add(updates_received=1, inserts_received=1)
        try:
            self._apply(self._writer, publish, now, merge_cells=True)
        except QasinoError:
            self.counters.add(update_errors=1)
            raise
        self.persisted.record(publish, merge_cells=True, now=now)
        self.counters.add(updates_completed=1, inserts_completed=1)

    def write_batch(
        self, calls: Sequence[tuple[Callable[..., object], tuple[object, ...]]]
    ) -> list[Optional[QasinoError]]:
        """Run writer calls (``publish``, ``name_value_update``) in order in
        one transaction of the writer generation: each call stays atomic on
        its own (a savepoint), but the generation commits once, not once per
        table. Returns each call's error (None when applied). NATS mode
        applies stream batches this way."""
        errors: list[Optional[QasinoError]] = []
        try:
            with self._writer.conn:
                for fn, args in calls:
                    try:
                        fn(*args)
                    except QasinoError as e:
                        errors.append(e)
                    else:
                        errors.append(None)
        except apsw.Error as e:
            raise _failed_write(e, self._writer.conn) from None
        return errors

    def set_views(self, views: Sequence[ViewDef]) -> None:
        """Use these views from the next snapshot on (any thread)."""
        with self._lock:
            self._views = tuple(views)

    def rotate(self, now: float, next_number: Optional[int] = None) -> SnapshotInfo:
        """Snapshot the writer generation and start a new one.

        Builds the internal tables and the views into the finished
        generation, then swaps it in as the snapshot in one step.
        ``next_number``: the new writer generation's number, when the caller
        decides it (NATS mode: generations cut by stream time); by default
        ``now`` in whole seconds, above every earlier number.
        """
        renewed = self.dir_lock.renew_if_gone()
        if renewed:
            log.warn("{what}", what=renewed)
        self._heal_static()
        gen = self._heal_writer(self._writer, now)
        try:
            return self._rotate(gen, now, next_number)
        except (QasinoError, apsw.Error) as e:
            if not self._is_broken(gen, e):
                raise  # disk full, read-only, ...: keep the generation, retry later
            reason = e.message if isinstance(e, QasinoError) else sqlite_message(e)
            fresh = self._replace_broken_writer(gen, now, reason)
        return self._rotate(fresh, now, next_number)

    def _rotate(
        self, gen: WriterGeneration, now: float, next_number: Optional[int] = None
    ) -> SnapshotInfo:
        with self._lock:
            views = self._views
        report = GenerationReport(
            generation_number=gen.file.number,
            generation_duration_s=self.config.generation_duration_s,
            generation_start_epoch=now,
        )
        report.tables = self._table_entries(gen)
        report.connections = sorted(
            (ident, int(s[0]), s[1]) for ident, s in gen.identity_stats.items()
        )
        counts = self.counters.take()
        try:
            info, new_gen = self._finish_generation(gen, report, views, counts, now, next_number)
        except BaseException:
            # Nothing was served: the next attempt reports these counts.
            self.counters.give_back(counts)
            raise
        gen.conn.close()
        with self._lock:
            old = self._snapshot
            self._snapshot = gen.file
            self._writer = new_gen
            dispose = old is not None and self._retire_locked(old)
        if dispose:
            assert old is not None
            self._dispose(old)
        return info

    # ------------------------------------------------------------ self-healing

    def _heal_writer(self, gen: WriterGeneration, now: float) -> WriterGeneration:
        """The writer generation, moved to a new file if its file was deleted
        or replaced under the server.

        The writer's connection still holds the deleted file open, so SQLite
        can copy every acknowledged row out of it (backup API) into a new
        file. If even that fails the generation is replaced, and what is
        lost is logged (``_replace_broken_writer``).
        """
        if gen.file.file_id is not None and file_id(gen.file.path) == gen.file.file_id:
            return gen
        old_path = gen.file.path
        try:
            path = self._new_gen_path(gen.file.number, healing=True)
            copy_connection(gen.conn, path)
            conn = open_writer(path)
        except (OSError, apsw.Error) as e:
            message = (e.strerror or str(e)) if isinstance(e, OSError) else sqlite_message(e)
            if isinstance(e, _BROKEN_FILE_ERRORS):
                return self._replace_broken_writer(
                    gen, now, f"its file was deleted or replaced, and is corrupt: {message}"
                )
            # The disk, not the file: the rows are still in the open
            # connection; keep them and try again at the next rotation.
            raise StoreError(
                f"generation {gen.file.number}: its file {old_path} was deleted or replaced "
                f"under the server and cannot be copied out yet: {message}"
            ) from None
        gen.conn.close()
        with self._lock:
            gen.file.retired = True
        gen.file.close_connections()
        new_file = GenFile(path, gen.file.number, self.static.path)
        new_file.set_views(gen.file.views)
        new_file.file_id = file_id(path)
        healed = WriterGeneration(
            new_file,
            conn,
            gen.opened_at,
            gen.schemas,
            gen.published,
            gen.carried,
            gen.table_stats,
            gen.identity_stats,
        )
        with self._lock:
            self._writer = healed
        log.warn(
            "generation {number}: its file {old} was deleted or replaced under the server; "
            "its {tables} tables were copied to {new}, nothing lost",
            number=gen.file.number,
            old=old_path,
            new=path,
            tables=len(gen.schemas),
        )
        return healed

    def _heal_static(self) -> None:
        """Put the static DB back at its path if it was deleted under the server
        (its connection still reads it), so readers can attach it again."""
        static = self.static
        if static.file_id is not None and file_id(static.path) == static.file_id:
            return
        tmp = static.path + ".healing"
        try:
            os.makedirs(self.config.db_dir, exist_ok=True)
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp + suffix)
            copy_connection(static.conn, tmp)
        except (OSError, apsw.Error) as e:
            log.error(
                "the static DB {path} was deleted or replaced under the server and could "
                "not be written again: {error}",
                path=static.path,
                error=e,
            )
            return
        # Close the old connection first: closing it removes its -wal and
        # -shm files by name, which must not be the new file's.
        static.conn.close()
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(static.path + suffix)
        os.replace(tmp, static.path)
        static.conn = open_writer(static.path, durable=True)
        static.file_id = file_id(static.path)
        # Pooled readers attached the old file: let them go.
        with self._lock:
            pooled = [g for g in (self._snapshot, self._writer.file) if g is not None]
        for gen_file in pooled:
            gen_file.set_views(gen_file.views)
        log.warn(
            "the static DB {path} was deleted or replaced under the server; "
            "written again from the server's open copy ({n} tables)",
            path=static.path,
            n=len(static.schemas),
        )

    def _is_broken(self, gen: WriterGeneration, error: BaseException) -> bool:
        """Whether a failed rotation means the writer's file is broken (not
        the disk): corrupt, not a database, or gone."""
        cause: Optional[BaseException] = error
        while cause is not None:
            if isinstance(cause, _BROKEN_FILE_ERRORS):
                return True
            cause = cause.__cause__ or cause.__context__
        return file_id(gen.file.path) != gen.file.file_id

    def _replace_broken_writer(
        self, gen: WriterGeneration, now: float, reason: str
    ) -> WriterGeneration:
        """Give up a broken writer generation for a fresh one (persisted
        tables carried in again); log what was lost, loudly."""
        lost = sorted(gen.published)
        log.error(
            "generation {number}: its file {path} is broken ({reason}); started a fresh "
            "writer generation. Lost: {n} acknowledged publishes of this generation "
            "({tables}); persisted and static tables are kept",
            number=gen.file.number,
            path=gen.file.path,
            reason=reason,
            n=len(lost),
            tables=", ".join(f"{t} from {i}" for t, i in lost[:20])
            + (" ..." if len(lost) > 20 else ""),
        )
        with contextlib.suppress(apsw.Error):
            gen.conn.close()
        gen.file.close_connections()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.unlink(gen.file.path + suffix)
        fresh = self._open_generation(now)
        with self._lock:
            self._writer = fresh
        return fresh

    def _finish_generation(
        self,
        gen: WriterGeneration,
        report: GenerationReport,
        views: tuple[ViewDef, ...],
        counts: dict[str, int],
        now: float,
        next_number: Optional[int] = None,
    ) -> tuple[SnapshotInfo, WriterGeneration]:
        """Write the internal tables and check the views into the finished
        generation, and open the next one; nothing is swapped yet."""
        report.sql_stats = (counts["sql_received"], counts["sql_completed"], counts["sql_errors"])
        report.update_stats = (
            counts["updates_received"],
            counts["updates_completed"],
            counts["update_errors"],
            counts["inserts_received"],
            counts["inserts_completed"],
        )
        report.views = [(v.viewname, 0, "", v.view) for v in views]
        try:
            # The views may read the internal tables: write those first, then
            # check the views on a reader of the finished generation and
            # record their verdicts.
            write_internal_tables(gen.conn, report)
            checker = open_reader(gen.file.path, self.static.path)
            try:
                status = build_views(checker, views)
            finally:
                checker.close()
            report.views = [
                (
                    v.viewname,
                    int(status[v.viewname] is None),
                    status[v.viewname] or v.warning or "",
                    v.view,
                )
                for v in views
            ]
            write_views_table(gen.conn, report.views)
            gen.conn.pragma("wal_checkpoint", "PASSIVE")
        except apsw.Error as e:
            raise _failed_write(e, gen.conn, always_reclaim=True) from None
        new_gen = self._open_generation(now, next_number)
        info = SnapshotInfo(
            gen.file.number, self.config.generation_duration_s, now, new_gen.file.number
        )
        gen.file.info = info
        gen.file.nr_identities = len(report.connections)
        gen.file.table_list = {
            t.tablename: {
                "nr_rows": t.nr_rows,
                "updates": t.nr_updates,
                "last_update_epoch": t.last_update_epoch,
            }
            for t in report.tables
        }
        loaded = [v for v in views if status.get(v.viewname) is None]
        gen.file.set_views(loaded)
        return info, new_gen

    def _table_entries(self, gen: WriterGeneration) -> list[TableEntry]:
        entries = []
        for lower, schema in sorted(gen.schemas.items()):
            stat = gen.table_stats.get(lower) or _TableStat(schema.name, 0, gen.opened_at)
            entries.append(
                TableEntry(
                    schema.name,
                    count_rows(gen.conn, schema.name),
                    stat.nr_updates,
                    stat.last_update_epoch,
                    False,
                )
            )
        for lower, schema in sorted(self.static.schemas.items()):
            stat = gen.table_stats.get("static:" + lower) or _TableStat(
                schema.name, 0, self.static.last_update.get(lower, 0.0)
            )
            entries.append(
                TableEntry(
                    schema.name,
                    count_rows(self.static.conn, schema.name),
                    stat.nr_updates,
                    stat.last_update_epoch,
                    True,
                )
            )
        return entries

    def close(self) -> None:
        """Close every connection; the static DB is left consistent."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            snapshot, writer = self._snapshot, self._writer
        writer.conn.close()
        writer.file.close_connections()
        if snapshot is not None:
            snapshot.close_connections()
        self.static.close()
        self.dir_lock.release()

    # ------------------------------------------------------------------ readers

    def snapshot_info(self) -> SnapshotInfo:
        with self._lock:
            assert self._snapshot is not None and self._snapshot.info is not None
            return self._snapshot.info

    def nr_identities(self) -> int:
        """How many identities published into the snapshot being served."""
        with self._lock:
            return self._snapshot.nr_identities if self._snapshot is not None else 0

    def table_list(self) -> dict[str, dict[str, object]]:
        """get_table_list: the tables of the snapshot being served."""
        with self._lock:
            assert self._snapshot is not None
            return dict(self._snapshot.table_list)

    def query(self, text: str, use_write_db: bool = False) -> Result:
        """Run one client statement (SELECT or shortcut) read-only."""
        self.counters.add(sql_received=1)
        try:
            command = parse_command(text)
            result = self._run(command, use_write_db)
        except QasinoError:
            self.counters.add(sql_errors=1)
            raise
        self.counters.add(sql_completed=1)
        return result

    def _run(self, command: Command, use_write_db: bool) -> Result:
        with self._lock:
            gen_file = self._writer.file if use_write_db else self._snapshot
            assert gen_file is not None
            gen_file.refs += 1
        try:
            version, conn = gen_file.take()
            try:
                if command.kind == "desc_table":
                    assert command.name is not None
                    return describe_table(conn, command.name)
                result = run_select(
                    conn,
                    command.sql,
                    command.params,
                    self.config.limits,
                    self.monotonic,
                    guard=command.kind == "select",
                )
                if command.kind == "desc_view" and not result.rows:
                    raise QueryError(f"No such view: {command.name}")
                return result
            finally:
                gen_file.give_back(version, conn)
        finally:
            with self._lock:
                gen_file.refs -= 1
                dispose = gen_file.retired and gen_file.refs == 0
            if dispose:
                self._dispose(gen_file)

    def _retire_locked(self, gen_file: GenFile) -> bool:
        gen_file.retired = True
        return gen_file.refs == 0

    def _dispose(self, gen_file: GenFile) -> None:
        """Remove (or archive) a snapshot nobody reads any more."""
        gen_file.close_connections()
        if self.config.archive_dir:
            target = os.path.join(self.config.archive_dir, f"gen-{gen_file.number}.sqlite")
            try:
                copy_database(gen_file.path, target)
            except apsw.Error as e:
                log.error(
                    "could not archive {path} to {target}: {error}",
                    path=gen_file.path,
                    target=target,
                    error=sqlite_message(e),
                )
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(gen_file.path + suffix)
            except FileNotFoundError:
                pass


def _check_tablename(tablename: str) -> None:
    """The internal tables are the server's: a publish may not write into them."""
    if tablename.lower().startswith(INTERNAL_PREFIX):
        raise InvalidInput(
            f"tablename {tablename!r} is reserved: names starting with "
            f"{INTERNAL_PREFIX!r} belong to the server"
        )


def _check_keycols(publish: Publish) -> None:
    """keycols must name columns of the published table.

    Otherwise SQLite would read a quoted unknown name as a string literal and
    key the table on a constant, and the persist registry could not key rows.
    """
    columns = {c.lower() for c in publish.table.column_names}
    for keycol in publish.options.keycols:
        if keycol.lower() not in columns:
            raise InvalidInput(
                f"key column {keycol!r} is not a column of table {publish.table.tablename!r}"
            )


# A generation file that SQLite finds broken: no use retrying it.
_BROKEN_FILE_ERRORS = (apsw.CorruptError, apsw.NotADBError)

_STORAGE_ERRORS = (apsw.FullError, apsw.ReadOnlyError, apsw.IOError, apsw.CantOpenError)


# What apsw raises for a cell it cannot bind (a list, an int beyond 64 bits,
# a lone surrogate, ...); the transaction then rolls back, nothing applied.
_BINDING_ERRORS = (UnicodeError, ValueError, TypeError, OverflowError)


def _refused_cell(error: BaseException, table: Table) -> InvalidInput:
    """The error for a table whose cell SQLite would not take: the checker's
    own words (row and column) when it had left the cells to SQLite."""
    if not table.cells_checked:
        try:
            explain_cells(table)
        except InvalidInput as e:
            return e
    return InvalidInput(f"a cell cannot be stored: {error}")


def _failed_write(
    e: BaseException, conn: apsw.Connection, always_reclaim: bool = False
) -> QasinoError:
    """The error for a failed write on ``conn``; after a storage failure
    (or always, if asked) give the WAL's space back first."""
    error = _write_error(e)
    if always_reclaim or isinstance(error, StoreError):
        reclaim_wal(conn)
    return error


def _write_error(e: BaseException) -> QasinoError:
    """The error a publisher gets for a failed write.

    When a storage failure makes SQLite roll back by itself, apsw's
    ``with conn:`` then fails its own rollback and raises that instead,
    with the real failure chained: report the real one.
    """
    cause: Optional[BaseException] = e
    while cause is not None and not isinstance(cause, _STORAGE_ERRORS):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        return StoreError(f"storage error: {sqlite_message(cause)}")
    return PublishRejected(f"could not store the table: {sqlite_message(e)}")


def file_id(path: str) -> Optional[tuple[int, int]]:
    """(st_dev, st_ino) of ``path``, or None if there is no such file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


__all__ = ["Store", "StoreConfig", "SnapshotInfo", "is_identifier"]

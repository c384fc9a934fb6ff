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
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import apsw
from twisted.logger import Logger

from qasino.core.commands import HISTORY_PREFIX, Command, parse_command
from qasino.core.errors import (
    InvalidInput,
    PublishRejected,
    QasinoError,
    QueryError,
    StoreError,
)
from qasino.core.fleet import (
    Contribution,
    IdentityFragments,
    IdentitySeen,
    identity_rows,
    keep_stale_age,
    keep_stale_expired,
    seen,
    table_identity_rows,
)
from qasino.core.history_sql import rewrite_history
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
from qasino.proc import young_collections_paused
from qasino.store import history, journal
from qasino.store.internal import (
    GenerationReport,
    TableEntry,
    write_internal_tables,
    write_views_table,
)
from qasino.store.lock import DataDirLock
from qasino.store.query import QueryLimits, RowStream, describe_table, open_stream, run_select
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

# Takes a chunk of rows, encodes it, returns its size in bytes.
Sink = Callable[[list[tuple[object, ...]]], int]

log = Logger(namespace="qasino.store")


@dataclass(frozen=True)
class StoreConfig:
    db_dir: str
    generation_duration_s: float = 30.0
    archive_dir: Optional[str] = None
    limits: QueryLimits = QueryLimits()
    # docs/fleet.md: carry a silent identity's tables this many generations;
    # drop persisted copies not re-published for this many (0 = forever);
    # keep this many snapshots queryable as history.T (0 = off).
    keep_stale: int = 0
    persist_ttl: int = 0
    history: int = 0
    # Journal the writer generation's publishes (qasino/store/journal.py) and
    # replay what a killed run left; off under NATS (the stream is the log).
    journal: bool = False


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

    def add_pair(self, first: str, n: int, second: str, m: int) -> None:
        """``add(first=n, second=m)`` without the keyword dict: once or
        twice per publish, where ``add`` cost about 1.5 µs a call."""
        with self._lock:
            values, totals = self._values, self._totals
            values[first] += n
            values[second] += m
            totals[first] += n
            totals[second] += m

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

    def __init__(self, path: str, number: int, static_path: str, history_on: bool = False) -> None:
        self.path = path
        self.number = number
        self.static_path = static_path
        # --history: the older snapshots in the window (number, path), oldest
        # first, attached to this snapshot's query connections.
        self.history_on = history_on
        self.history: tuple[tuple[int, str], ...] = ()
        self.older_files: tuple[GenFile, ...] = ()  # the same, as held while attached
        self.kept = False  # in the history window: not removed when retired
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

    def generations(self) -> list[history.Generation]:
        """The history window as seen from this snapshot, oldest first."""
        older = [(n, history.alias(i)) for i, (n, _) in enumerate(self.history)]
        return older + [(self.number, "main")]

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
    seq: int = 0  # the generation's sequence number (0, 1, 2, ... since start)
    # (lower tablename, identity) -> [tablename, nr_rows, age_generations]
    contrib: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    # --keep-stale: rowid spans of each identity's plainly inserted rows, so
    # the next generation can copy them from this one's snapshot file.
    spans: dict[tuple[str, str], list[tuple[int, int]]] = field(default_factory=dict)
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


class _GroupUndo:
    """What applying a group of plain publishes of new (table, identity)
    keys changes in the store's bookkeeping, as it was before
    (:meth:`Store.publish_group`); ``restore`` puts it back after the
    group's commit failed and SQLite rolled its rows back."""

    def __init__(
        self, store: Store, gen: WriterGeneration, group: Sequence[tuple[Publish, Optional[str]]]
    ) -> None:
        self.store, self.gen = store, gen
        self.keys = {(p.table.tablename.lower(), p.options.identity) for p, _ in group}
        lowers = {key[0] for key in self.keys}
        identities = {key[1] for key in self.keys}
        self.schemas = {name: gen.schemas.get(name) for name in lowers}
        # note_publish changes a table's stat in place: keep its fields.
        self.table_stats = {
            name: None
            if (t := gen.table_stats.get(name)) is None
            else (t, t.nr_updates, t.last_update_epoch)
            for name in lowers
        }
        self.identity_stats = {
            i: None if (v := gen.identity_stats.get(i)) is None else list(v) for i in identities
        }
        self.seen = {i: store.identities.get(i) for i in identities}
        self.seen_now = {i: i in store._identities_seen_now for i in identities}
        self.last = {i: store._last_publishes.get(i) for i in identities}
        self.journal_mark = store._journal.mark() if store._journal is not None else None

    def restore(self) -> None:
        gen, store = self.gen, self.store
        for key in self.keys:
            gen.published.discard(key)
            gen.contrib.pop(key, None)
            gen.spans.pop(key, None)
        _put_back(gen.schemas, self.schemas)
        for name, before in self.table_stats.items():
            if before is None:
                gen.table_stats.pop(name, None)
            else:
                stat, updates, last = before
                stat.nr_updates, stat.last_update_epoch = updates, last
                gen.table_stats[name] = stat
        _put_back(gen.identity_stats, self.identity_stats)
        _put_back(store.identities, self.seen)
        _put_back(store._last_publishes, self.last)
        for identity, was in self.seen_now.items():
            if not was:
                store._identities_seen_now.discard(identity)
        if store._journal is not None:
            store._journal.cut(self.journal_mark)


def _put_back(d: dict[Any, Any], before: dict[Any, Any]) -> None:
    for key, value in before.items():
        if value is None:
            d.pop(key, None)
        else:
            d[key] = value


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
        self._alert_rows: list[tuple[object, ...]] = []
        self._last_number = 0
        self._closed = False
        self._seq = -1
        # docs/fleet.md: every identity heard from since start; the
        # non-static, non-persisted publishes of each identity's last
        # generation (for --keep-stale); who last published each static table.
        self.identities: dict[str, IdentitySeen] = {}
        self._last_publishes: dict[str, tuple[int, list[Publish]]] = {}
        # The snapshot served now, for --keep-stale copies: its file, tables
        # and rowid spans.
        self._prev: Optional[
            tuple[str, dict[str, TableSchema], dict[tuple[str, str], list[tuple[int, int]]]]
        ] = None
        self._static_by: dict[str, tuple[str, str, int]] = {}
        self._identity_counts: dict[str, int] = {"live": 0, "stale": 0}
        # qasino_server_identities as JSON array fragments, one per identity,
        # re-encoded only for those that changed: a rotation's cost grows
        # with the identities active in it, not with every one ever heard
        # from (SQLite reads them from one JSON text, see fleet.py).
        self._identity_fragments = IdentityFragments()
        self._identities_seen_now: set[str] = set()
        # --history: the snapshots in the window, oldest first (the served one last).
        self._window: deque[GenFile] = deque()
        if config.history > history.MAX_HISTORY:
            raise StoreError(f"--history is at most {history.MAX_HISTORY}")
        self._file_seq = 0
        # One store per directory: the lock comes before anything else
        # touches it (raises DataDirBusy naming the holder's PID).
        self.dir_lock = dir_lock or DataDirLock.acquire(config.db_dir)
        try:
            self.gen_dir = os.path.join(config.db_dir, GENERATIONS_DIR)
            leftover = journal.left_behind(config.db_dir) if config.journal else []
            self._journal = journal.Journal(config.db_dir) if config.journal else None
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
        if leftover:
            self._replay(leftover, now)

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
        self._seq += 1
        seq = self._seq
        try:
            path = self._new_gen_path(number)
        except OSError as e:
            raise StoreError(f"cannot make {self.gen_dir}: {e.strerror or e}") from None
        gen_file = GenFile(path, number, self.static.path, self.config.history > 0)
        gen_file.set_views(self._views)
        gen = WriterGeneration(gen_file, open_writer(path), now, seq)
        gen_file.file_id = file_id(path)
        if self._journal is not None:
            self._journal.start(seq)
        for key in self.persisted.expire(seq, self.config.persist_ttl):
            log.info(
                "persisted table {table} of {identity} dropped: not re-published "
                "for {ttl} generations (--persist-ttl)",
                table=key[0],
                identity=key[1],
                ttl=self.config.persist_ttl,
            )
        for carried in self.persisted.carried():
            try:
                age = max(1, seq - carried.published_seq)
                self._apply(gen, carried.publish, now, carried=True, age=age)
                gen.note_carried(carried.publish.table.tablename, carried.published_at)
                self._journal_add(
                    ["c", journal.describe(carried.publish), age, carried.published_at],
                    carried.publish.table.rows,
                )
            except QasinoError as e:
                log.error(
                    "could not carry persisted table {table} of {identity} forward: {error}",
                    table=carried.publish.table.tablename,
                    identity=carried.publish.options.identity,
                    error=e.message,
                )
        return gen

    def publish(self, publish: Publish, now: float, remote_addr: Optional[str] = None) -> None:
        """Apply one table to the writer generation (or the static DB).

        Atomic: all its rows or none. Raises PublishRejected, InvalidInput
        or StoreError; returns once the rows are committed. ``remote_addr``:
        the publisher's address, if the transport knows it.
        """
        nrows = len(publish.table.rows)
        self.counters.add_pair("updates_received", 1, "inserts_received", nrows)
        try:
            _check_tablename(publish.table.tablename)
            _check_keycols(publish)
            if publish.options.static:
                self._apply_static(publish, now)
            else:
                self._apply(self._writer, publish, now)
                self.persisted.record(publish, now=now, seq=self._writer.seq)
                if self._journal is not None:
                    record: list[object] = ["p", journal.describe(publish), remote_addr]
                    self._journal_add(record, publish.table.rows)
        except QasinoError:
            self.counters.add(update_errors=1)
            raise
        self._note_seen(publish, now, remote_addr)
        self.counters.add_pair("updates_completed", 1, "inserts_completed", nrows)

    def _journal_add(self, record: list[object], rows: Optional[Sequence[object]] = None) -> None:
        j = self._journal
        if j is None:
            return
        j.append(record, rows)
        if j.broken is not None:
            log.error(
                "the journal is off until the next generation ({why}): a kill -9 now "
                "would lose this generation's publishes",
                why=j.broken,
            )
            j.broken = None

    def _replay(self, paths: list[str], now: float) -> None:
        """Apply what a killed run's journal holds to the writer generation."""
        try:
            age_s = time.time() - max(os.path.getmtime(p) for p in paths)
        except OSError:
            age_s = 0.0
        if age_s > 2 * self.config.generation_duration_s:
            log.info(
                "a journal of a run that ended {age:.0f}s ago is older than two "
                "generations: not replayed",
                age=age_s,
            )
        else:
            applied = refused = 0
            for path in paths:
                for record in journal.read_records(path):
                    try:
                        self._replay_one(record, now)
                        applied += 1
                    except (QasinoError, ValueError, TypeError, IndexError) as e:
                        refused += 1
                        log.warn("journal record not replayed: {error}", error=e)
            log.info(
                "replayed {applied} publishes of the generation a stopped run was "
                "filling (journal; {refused} refused)",
                applied=applied,
                refused=refused,
            )
        for path in paths:
            try:
                os.unlink(path)
            except OSError:
                pass

    def _replay_one(self, record: list[Any], now: float) -> None:
        kind = record[0]
        if kind == "p":
            self.publish(journal.rebuild(record[1], record[3]), now, record[2])
        elif kind == "n":
            self.name_value_update(record[1], record[2], record[3], record[4], now)
        elif kind == "c":
            publish = journal.rebuild(record[1], record[4])
            age, published_at = int(record[2]), float(record[3])
            gen = self._writer
            self._apply(gen, publish, now, carried=True, age=age)
            gen.note_carried(publish.table.tablename, published_at)
            self.persisted.record(publish, now=published_at, seq=gen.seq - age)
            self._journal_add(record[:4], publish.table.rows)
        else:
            raise ValueError(f"unknown journal record {kind!r}")

    def _note_seen(self, publish: Publish, now: float, remote_addr: Optional[str]) -> None:
        """Fleet bookkeeping of an applied publish (docs/fleet.md)."""
        gen = self._writer
        identity = publish.options.identity
        self.identities[identity] = seen(
            self.identities.get(identity), identity, now, gen.seq, gen.file.number, remote_addr
        )
        self._identities_seen_now.add(identity)
        if self.config.keep_stale <= 0:
            return
        last = self._last_publishes.get(identity)
        if last is None or last[0] != gen.seq:
            last = self._last_publishes[identity] = (gen.seq, [])
        opts = publish.options
        if opts.update and not opts.static and not opts.persist:
            # Upserts cannot be found again by rowid: keep them to replay.
            # Plain tables are copied from the snapshot file (_carry_stale).
            last[1].append(publish)

    def _carry_stale(self, gen: WriterGeneration, now: float) -> None:
        """--keep-stale: put the last tables of identities that did not
        publish in ``gen`` into it (``age_generations`` = generations
        missed), or forget them once too old. Plain tables are copied from
        the snapshot served now (which holds them, fresh or carried) by
        rowid span, in SQLite; upserts are replayed from memory."""
        keep = self.config.keep_stale
        ages: dict[str, int] = {}
        for identity, rec in self.identities.items():
            if keep_stale_expired(rec.last_seq, gen.seq, keep):
                self._last_publishes.pop(identity, None)
                continue
            age = keep_stale_age(rec.last_seq, gen.seq, keep)
            if age is not None:
                ages[identity] = age
        if not ages:
            return
        if self._prev is not None:
            self._copy_stale_rows(gen, ages, now)
        for identity, age in sorted(ages.items()):
            _, publishes = self._last_publishes.get(identity, (0, []))
            for publish in publishes:
                try:
                    self._apply(gen, publish, now, carried=True, age=age)
                    gen.note_carried(
                        publish.table.tablename, self.identities[identity].last_seen_epoch
                    )
                except QasinoError as e:
                    log.error(
                        "could not carry table {table} of stale {identity}: {error}",
                        table=publish.table.tablename,
                        identity=identity,
                        error=e.message,
                    )

    def _copy_stale_rows(self, gen: WriterGeneration, ages: dict[str, int], now: float) -> None:
        assert self._prev is not None
        path, schemas, spans = self._prev
        wanted = sorted(
            (key, ranges) for key, ranges in spans.items() if key[1] in ages and key[0] in schemas
        )
        if not wanted:
            return
        conn = gen.conn
        try:
            conn.execute(f"ATTACH DATABASE ? AS {_PREV}", (path,))
        except apsw.Error as e:
            log.error(
                "--keep-stale: cannot read the last snapshot: {error}", error=sqlite_message(e)
            )
            return
        try:
            for key, ranges in wanted:
                identity = key[1]
                try:
                    self._copy_span(gen, schemas[key[0]], key, ranges, ages[identity])
                    gen.note_carried(
                        schemas[key[0]].name, self.identities[identity].last_seen_epoch
                    )
                except (apsw.Error, QasinoError) as e:
                    log.error(
                        "could not carry table {table} of stale {identity}: {error}",
                        table=key[0],
                        identity=identity,
                        error=str(e),
                    )
        finally:
            conn.execute(f"DETACH DATABASE {_PREV}")

    def _copy_span(
        self,
        gen: WriterGeneration,
        prev: TableSchema,
        key: tuple[str, str],
        ranges: list[tuple[int, int]],
        age: int,
    ) -> None:
        conn = gen.conn
        shape = Table(
            prev.name, tuple(c for c, _ in prev.columns), tuple(t for _, t in prev.columns), []
        )
        cols = ", ".join(quote_ident(c) for c, _ in prev.columns)
        with conn:
            schema = ensure_table(conn, gen.schemas.get(key[0]), shape)
            before = _max_rowid(conn, schema.name)
            copied = 0
            for lo, hi in ranges:
                conn.execute(
                    f"INSERT INTO main.{quote_ident(schema.name)} ({cols}) SELECT {cols} "
                    f"FROM {_PREV}.{quote_ident(prev.name)} WHERE rowid BETWEEN ? AND ?",
                    (lo, hi),
                )
                copied += conn.changes()
            after = conn.last_insert_rowid() if copied else before
        gen.schemas[key[0]] = schema
        gen.spans[key] = [(before + 1, after)] if copied else []
        if copied:
            gen.carried[key] = (before + 1, after)
        gen.contrib[key] = [schema.name, copied, age]

    def _apply_static(self, publish: Publish, now: float) -> None:
        try:
            self.static.apply(publish, now)
        except _BINDING_ERRORS as e:
            raise _refused_cell(e, publish.table) from None
        except apsw.Error as e:
            raise _failed_write(e, self.static.conn) from None
        self._writer.note_publish(publish.table.tablename, publish.options.identity, now, True)
        self._static_by[publish.table.tablename.lower()] = (
            publish.table.tablename,
            publish.options.identity,
            self._writer.seq,
        )

    def _apply(
        self,
        gen: WriterGeneration,
        publish: Publish,
        now: float,
        carried: bool = False,
        merge_cells: bool = False,
        age: int = 0,
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
                elif table.rows and (carried or self.config.keep_stale > 0):
                    # A carried copy's rows are replaced if its identity
                    # publishes again, and --keep-stale copies an identity's
                    # rows into the next generation: remember their rowids
                    # (contiguous, as the one writer appends them).
                    before = _max_rowid(conn, schema.name)
                    insert_rows(conn, table, "insert", target=schema.name)
                    span = (before + 1, conn.last_insert_rowid())
                elif table.rows:
                    insert_rows(conn, table, "insert", target=schema.name)
        except _BINDING_ERRORS as e:
            raise _refused_cell(e, table) from None
        except apsw.Error as e:
            raise _failed_write(e, conn) from None
        gen.schemas[lower] = schema
        nrows = len(table.rows)
        if carried:
            if span is not None:
                gen.carried[key] = span
            have = gen.contrib.get(key)
            if have is not None and have[2] == age:
                have[1] += nrows  # several (update) publishes carried together
            else:
                gen.contrib[key] = [schema.name, nrows, age]
            return
        contrib = gen.contrib.get(key)
        if contrib is not None and contrib[2] > 0 and not opts.update:
            gen.spans.pop(key, None)  # the carried copy was deleted above
        if span is not None and not opts.update and not opts.persist:
            # (persisted tables are carried by the registry, not --keep-stale)
            gen.spans.setdefault(key, []).append(span)
        if contrib is None or (contrib[2] > 0 and not opts.update):
            gen.contrib[key] = [schema.name, nrows, 0]
        else:
            contrib[1] += nrows
            contrib[2] = 0
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
        self.persisted.record(publish, merge_cells=True, now=now, seq=self._writer.seq)
        self._journal_add(["n", tablename, column, value, identity])
        self._note_seen(publish, now, None)
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
                        # Kept as a value: without its traceback, whose frames
                        # would hold ``errors`` and so make a cycle that only
                        # the cyclic collector frees.
                        errors.append(e.with_traceback(None))
                    else:
                        errors.append(None)
        except apsw.Error as e:
            raise _failed_write(e, self._writer.conn) from None
        return errors

    def publish_group(
        self, items: Sequence[tuple[Publish, Optional[str]]], now: float
    ) -> list[Optional[QasinoError]]:
        """Apply (publish, remote_addr) pairs in order, as many as can be
        under one commit of the writer generation (group commit: a commit
        costs as much as a 10-row insert; the engine groups the small
        publishes of a reactor turn, the store process with ``--workers``
        those of a read from a worker). Each
        publish stays atomic on its own (a savepoint) and gets its own error,
        or None when applied.

        Grouped are plain publishes of an identity new to the table in this
        generation - the bulk of a fleet's - because their bookkeeping can
        be put back exactly (:class:`_GroupUndo`): if the commit fails,
        every publish of the group gets the storage error and the store is
        as before the group. Any other publish (persist, update, static, or
        over a carried or persisted table) is applied on its own, in its
        place.
        """
        errors: list[Optional[QasinoError]] = []
        group: list[tuple[Publish, Optional[str]]] = []
        for item in items:
            if self._groupable(item[0]):
                group.append(item)
                continue
            errors += self._commit_group(group, now)
            group = []
            errors.append(self._try_publish(item, now))
        errors += self._commit_group(group, now)
        return errors

    def _groupable(self, publish: Publish) -> bool:
        opts = publish.options
        if opts.static or opts.persist or opts.update:
            return False
        key = (publish.table.tablename.lower(), opts.identity)
        gen = self._writer
        return key not in gen.contrib and key not in gen.carried and key not in self.persisted

    def _try_publish(
        self, item: tuple[Publish, Optional[str]], now: float
    ) -> Optional[QasinoError]:
        try:
            self.publish(item[0], now, item[1])
        except QasinoError as e:
            return e.with_traceback(None)  # a value: see write_batch
        return None

    def _commit_group(
        self, group: Sequence[tuple[Publish, Optional[str]]], now: float
    ) -> list[Optional[QasinoError]]:
        if len(group) <= 1:
            return [self._try_publish(item, now) for item in group]
        gen = self._writer
        undo = _GroupUndo(self, gen, group)
        errors: list[Optional[QasinoError]] = []
        try:
            with gen.conn:
                for item in group:
                    errors.append(self._try_publish(item, now))
        except BaseException as e:
            undo.restore()
            applied = [p for (p, _), error in zip(group, errors) if error is None]
            rows = sum(len(p.table.rows) for p in applied)
            self.counters.add(
                updates_completed=-len(applied),
                inserts_completed=-rows,
                update_errors=len(applied),
            )
            if not isinstance(e, apsw.Error):
                raise
            failed = _failed_write(e, gen.conn)
            log.error(
                "a group of {n} publishes could not be committed: {error}",
                n=len(group),
                error=failed.message,
            )
            # Every publish fails with the commit, but for bad input of its
            # own (a publish refused as the group's second of an identity
            # was refused because of the first, which is not there now).
            errors += [None] * (len(group) - len(errors))
            return [e if isinstance(e, InvalidInput) else failed for e in errors]
        return errors

    def set_views(self, views: Sequence[ViewDef]) -> None:
        """Use these views from the next snapshot on (any thread)."""
        with self._lock:
            self._views = tuple(views)

    def set_alert_rows(self, rows: Sequence[tuple[object, ...]]) -> None:
        """The rows of qasino_server_alerts for the next snapshot (any thread)."""
        with self._lock:
            self._alert_rows = list(rows)

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
        # The per-identity bookkeeping makes and drops a few containers per
        # identity: no young collection in the middle of it.
        with young_collections_paused():
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
            alert_rows = self._alert_rows
        report = GenerationReport(
            generation_number=gen.file.number,
            generation_duration_s=self.config.generation_duration_s,
            generation_start_epoch=now,
            alerts=alert_rows,
        )
        if self.config.keep_stale > 0:
            self._carry_stale(gen, now)
        report.tables = self._table_entries(gen)
        contributions = [Contribution(c[0], key[1], c[1], c[2]) for key, c in gen.contrib.items()]
        static_rows = {t.tablename.lower(): t.nr_rows for t in report.tables if t.static}
        for lower, (name, identity, seq) in self._static_by.items():
            if lower in static_rows:
                contributions.append(
                    Contribution(name, identity, static_rows[lower], gen.seq - seq)
                )
        # Cleared once the snapshot is served (a failed rotation is retried).
        seen_now = self._identities_seen_now
        encoded = self._identity_fragments.update(self.identities, seen_now, contributions)
        if encoded is not None:
            report.identities_json = encoded
            report.identities_seq = gen.seq
            report.identities_count = len(self.identities)
        else:  # an identity orjson cannot encode: the rows the slow way
            report.identities = identity_rows(self.identities, contributions, gen.seq)
        report.table_identities = table_identity_rows(contributions)
        live = sum(1 for name in seen_now if self.identities[name].last_seq >= gen.seq)
        counts_now = {"live": live, "stale": len(self.identities) - live}
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
            self._identity_counts = counts_now
            self._identities_seen_now = set()
            if self.config.keep_stale > 0:
                self._prev = (gen.file.path, dict(gen.schemas), gen.spans)
            retired = [old] if old is not None else []
            if self.config.history > 0:
                gen.file.kept = True
                self._window.append(gen.file)
                while len(self._window) > self.config.history:
                    gone = self._window.popleft()
                    gone.kept = False
                    if gone is not old:
                        retired.append(gone)
            disposable = [f for f in retired if self._retire_locked(f)]
        if self._journal is not None:
            self._journal.retire_before(new_gen.seq)  # those generations are served
        if old is not None:
            # Its query connections are of no more use (history attaches
            # the file again where it is needed).
            old.close_connections()
        for gen_file in disposable:
            self._dispose(gen_file)
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
        new_file = GenFile(path, gen.file.number, self.static.path, gen.file.history_on)
        new_file.set_views(gen.file.views)
        new_file.file_id = file_id(path)
        healed = WriterGeneration(
            new_file,
            conn,
            gen.opened_at,
            seq=gen.seq,
            contrib=gen.contrib,
            spans=gen.spans,
            schemas=gen.schemas,
            published=gen.published,
            carried=gen.carried,
            table_stats=gen.table_stats,
            identity_stats=gen.identity_stats,
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
        keep = self.config.history
        if keep > 1:
            older = list(self._window)[-(keep - 1) :]
            gen.file.history = tuple((f.number, f.path) for f in older)
            gen.file.older_files = tuple(older)
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
        for kept in list(self._window):
            kept.close_connections()
        if self._journal is not None:
            self._journal.close(delete=True)  # a clean stop: the next start is empty
        self.dir_lock.release()

    # ------------------------------------------------------------------ readers

    def snapshot_info(self) -> SnapshotInfo:
        with self._lock:
            assert self._snapshot is not None and self._snapshot.info is not None
            return self._snapshot.info

    def identity_counts(self) -> dict[str, int]:
        """``{"live": n, "stale": m}`` as of the snapshot served (any thread);
        what ``/metrics`` exposes as ``qasino_identities{state}``."""
        return dict(self._identity_counts)

    def nr_identities(self) -> int:
        """How many identities published into the snapshot being served."""
        with self._lock:
            return self._snapshot.nr_identities if self._snapshot is not None else 0

    def table_list(self) -> dict[str, dict[str, object]]:
        """get_table_list: the tables of the snapshot being served."""
        with self._lock:
            assert self._snapshot is not None
            return dict(self._snapshot.table_list)

    def query(self, text: str, use_write_db: bool = False, sink: Optional[Sink] = None) -> Result:
        """Run one client statement (SELECT or shortcut) read-only.

        ``sink``: hand the rows of a SELECT or SHOW to it chunk by chunk as
        they are read (see :func:`run_select`); the Result then holds only
        what DESC answers (its rows, if any, were not given to the sink)."""
        self.counters.add(sql_received=1)
        try:
            command = parse_command(text)
            result = self._run(command, use_write_db, sink)
        except QasinoError:
            self.counters.add(sql_errors=1)
            raise
        self.counters.add(sql_completed=1)
        return result

    def pin_snapshot(self) -> GenFile:
        """Keep the snapshot served now readable, with the older snapshots
        of its --history window, until :meth:`release_snapshot`, even after
        later rotations (alert evaluation reads one snapshot)."""
        with self._lock:
            gen_file = self._snapshot
            assert gen_file is not None
            for pinned in (gen_file, *gen_file.older_files):
                pinned.refs += 1
        return gen_file

    def release_snapshot(self, gen_file: GenFile) -> None:
        """End a :meth:`pin_snapshot`."""
        self._hold((gen_file, *gen_file.older_files), -1)

    def pin_again(self, gen_file: GenFile) -> None:
        with self._lock:
            gen_file.refs += 1

    def unpin(self, gen_file: GenFile) -> None:
        """Stop counting a reader of ``gen_file``; remove it if it is no
        longer served, kept in the history window or read."""
        with self._lock:
            gen_file.refs -= 1
            dispose = gen_file.retired and gen_file.refs == 0 and not gen_file.kept
        if dispose:
            self._dispose(gen_file)

    def query_pinned(self, gen_file: GenFile, sql: str) -> Result:
        """Run one client-style SELECT (same guard and limits as a query) on a
        pinned snapshot; not counted in the sql stats."""
        command = parse_command(sql)
        if command.kind != "select":
            raise QueryError("only a SELECT can be run here")
        self.pin_again(gen_file)
        return self._run_on(gen_file, command)

    def _pick(self, use_write_db: bool) -> GenFile:
        """The snapshot (or the writer generation), its reader counted."""
        with self._lock:
            gen_file = self._writer.file if use_write_db else self._snapshot
            assert gen_file is not None
            gen_file.refs += 1
        return gen_file

    @contextlib.contextmanager
    def _borrow(self, gen_file: GenFile) -> Iterator[apsw.Connection]:
        """A read-only connection on ``gen_file``, whose refs the caller
        raised, held until the block ends; then the reader is uncounted
        (a retired file is disposed of after its last reader)."""
        try:
            version, conn = gen_file.take()
            try:
                yield conn
            finally:
                gen_file.give_back(version, conn)
        finally:
            self.unpin(gen_file)

    def _run(self, command: Command, use_write_db: bool, sink: Optional[Sink] = None) -> Result:
        return self._run_on(self._pick(use_write_db), command, sink)

    def _run_on(self, gen_file: GenFile, command: Command, sink: Optional[Sink] = None) -> Result:
        """Run ``command`` on ``gen_file``, whose refs the caller raised
        (this lowers them again)."""
        with self._borrow(gen_file) as conn:
            sql, window = command.sql, None
            if self.config.history > 0:
                sql, window = self._open_history(command, gen_file, conn)
            try:
                if command.kind == "desc_table":
                    assert command.name is not None
                    if window is not None:
                        table = command.name[len(HISTORY_PREFIX) :].lower()
                        rows = history.describe(conn, window.generations, table)
                        result = Result(("column_name", "column_type"), list(rows))
                    else:
                        result = describe_table(conn, command.name)
                else:
                    result = run_select(
                        conn,
                        sql,
                        command.params,
                        self.config.limits,
                        self.monotonic,
                        guard=command.kind == "select",
                        sink=None if command.kind == "desc_view" else sink,
                    )
                    if command.kind == "desc_view" and not result.rows:
                        raise QueryError(f"No such view: {command.name}")
            finally:
                self._close_history(gen_file, window)
            return replace(result, generation_number=gen_file.number)

    @contextlib.contextmanager
    def stream(
        self,
        text: str,
        use_write_db: bool = False,
        max_rows: int = 10_000_000,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Iterator[RowStream]:
        """Run one client statement read-only and yield its :class:`RowStream`
        (no row cap up to ``max_rows``, the time limit for the whole stream).
        Raises QasinoError before yielding if the statement fails at once;
        errors while the rows are read come from the stream. Use it on one
        thread: the connection stays borrowed until the block ends."""
        self.counters.add(sql_received=1)
        try:
            command = parse_command(text)
            gen_file = self._pick(use_write_db)
            with self._borrow(gen_file) as conn:
                sql, window = command.sql, None
                if self.config.history > 0 and command.kind != "desc_table":
                    sql, window = self._open_history(command, gen_file, conn)
                try:
                    if command.kind.startswith("show_") or command.kind == "select":
                        stream = open_stream(
                            conn,
                            sql,
                            command.params,
                            self.config.limits,
                            self.monotonic,
                            guard=command.kind == "select",
                            max_rows=max_rows,
                            cancelled=cancelled,
                        )
                    else:  # DESC: a few rows, answered whole, from the same snapshot
                        self.pin_again(gen_file)
                        result = self._run_on(gen_file, command)
                        stream = RowStream(
                            result.column_names,
                            iter(result.rows),
                            self.monotonic() + self.config.limits.timeout_s,
                            self.monotonic,
                            self.config.limits.timeout_s,
                            max_rows,
                        )
                    stream.generation_number = gen_file.number
                    try:
                        yield stream
                    finally:
                        stream.close()
                finally:
                    self._close_history(gen_file, window)
        except QasinoError:
            self.counters.add(sql_errors=1)
            raise
        self.counters.add(sql_completed=1)

    def _open_history(
        self, command: Command, gen_file: GenFile, conn: apsw.Connection
    ) -> tuple[str, Optional[history.Window]]:
        """--history: for a statement that needs them, the older snapshots
        attached and the ``history.T`` views made on ``conn`` (a Window to
        close after it), and the statement with ``history.T`` renamed to
        those views (docs/fleet.md)."""
        sql = command.sql
        tables: tuple[str, ...] = ()
        wants_tables_view = False
        if command.kind == "select":
            sql, tables = rewrite_history(command.sql)
        elif command.kind == "desc_table" and (command.name or "").lower().startswith(
            HISTORY_PREFIX
        ):
            tables = (str(command.name)[len(HISTORY_PREFIX) :].lower(),)
        elif command.kind == "show_tables":
            wants_tables_view = True
        if not tables and not wants_tables_view:
            return sql, None
        if not gen_file.history_on or gen_file.info is None:
            if wants_tables_view:
                return command.sql, None
            raise QueryError("history tables are read from the snapshot, not use_write_db")
        window = history.Window(conn, gen_file.history, gen_file.generations())
        # The older files must not be removed while attached here (a
        # rotation may push the oldest out of the window meanwhile).
        self._hold(gen_file.older_files, +1)
        try:
            # DESC needs no view: history.describe reads the attached files.
            window.open(
                tables=() if command.kind == "desc_table" else tables,
                tables_view=wants_tables_view,
            )
        except BaseException as e:
            self._hold(gen_file.older_files, -1)
            if isinstance(e, apsw.Error):
                raise QueryError(sqlite_message(e)) from None
            raise
        if wants_tables_view:
            sql = command.history_sql or command.sql
        return sql, window

    def _close_history(self, gen_file: GenFile, window: Optional[history.Window]) -> None:
        """Detach what :meth:`_open_history` attached and let the files go."""
        if window is not None:
            window.close()
            self._hold(gen_file.older_files, -1)

    def _hold(self, files: Sequence[GenFile], delta: int) -> None:
        """Count (or stop counting) a reader of each of ``files``; remove
        those no longer served, kept or read."""
        with self._lock:
            gone = []
            for gen_file in files:
                gen_file.refs += delta
                if delta < 0 and gen_file.retired and gen_file.refs == 0 and not gen_file.kept:
                    gone.append(gen_file)
        for gen_file in gone:
            self._dispose(gen_file)

    def _retire_locked(self, gen_file: GenFile) -> bool:
        """Mark a snapshot no longer served; True if it can go now."""
        gen_file.retired = True
        return gen_file.refs == 0 and not gen_file.kept

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


_PREV = "qasino_prev"


def _max_rowid(conn: apsw.Connection, tablename: str) -> int:
    """The table's largest rowid (0 if empty). A bare max(rowid) is O(log n);
    wrapped in another function it scans."""
    top = conn.execute(f"SELECT max(rowid) FROM main.{quote_ident(tablename)}").fetchall()[0][0]
    return top if isinstance(top, int) else 0


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
    if not publish.options.keycols:
        return
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
            return e.with_traceback(None)
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

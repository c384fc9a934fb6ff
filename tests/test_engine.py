"""Engine and EngineService on a fake clock, with SyncRunner (no reactor, no
threads): the generation timer, listeners, publishes, failed rotations,
views file reloads and shutdown."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import apsw
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from qasino.core.errors import PublishRejected, QueryError, StoreError
from qasino.core.model import Publish, PublishOptions, Result, Table
from qasino.core.views import parse_views_yaml
from qasino.engine import (
    GROUP_MAX_CELLS,
    Engine,
    EngineService,
    SyncRunner,
    ViewsSource,
    views_from,
)
from qasino.store.store import SnapshotInfo, Store, StoreConfig
from tests.helpers import ManualRunner

START = 1_700_000_000.0
DURATION = 30.0

GOOD_VIEWS = "- viewname: v\n  view: CREATE VIEW v AS SELECT 1 AS one\n"
OTHER_VIEWS = "- viewname: w\n  view: CREATE VIEW w AS SELECT 2 AS two, 'longer' AS pad\n"
BROKEN_YAML = "- viewname: v\n  view: [unclosed\n"


def write_views(path: Path, text: str, mtime: float) -> None:
    """Write the views file with an explicit mtime, so a change is always seen."""
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def fired(d: Deferred[Any]) -> list[Any]:
    """The result of an already fired Deferred (a Failure if it failed), in a list."""
    out: list[Any] = []
    d.addBoth(out.append)
    return out


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(START)
    return c


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    s = Store(
        StoreConfig(db_dir=str(tmp_path / "db"), generation_duration_s=DURATION),
        now=clock.seconds(),
    )
    yield s
    s.close()


@pytest.fixture
def views_path(tmp_path: Path) -> Path:
    return tmp_path / "views.conf"


@pytest.fixture
def engine(store: Store, clock: Clock, views_path: Path) -> Engine:
    return Engine(store, SyncRunner(), clock, "server1", views=ViewsSource(str(views_path)))


@pytest.fixture
def service(engine: Engine) -> Iterator[EngineService]:
    svc = EngineService(engine, DURATION)
    yield svc
    if svc.running:
        svc.stopService()


@pytest.fixture
def log_events() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def errors_logged(events: list[LogEvent]) -> list[str]:
    return [
        formatEvent(e)
        for e in events
        if e.get("log_level") in (LogLevel.error, LogLevel.critical)
        and str(e.get("log_namespace", "")).startswith("qasino")
    ]


def table(name: str, rows: list[list[Any]]) -> Table:
    return Table(name, ("a",), ("INTEGER",), rows)


def query(engine: Engine, sql: str, use_write_db: bool = False) -> list[tuple[object, ...]]:
    result = fired(engine.query(sql, use_write_db))
    assert isinstance(result[0], Result), result
    return [tuple(r) for r in result[0].rows]


# --- the generation timer ---------------------------------------------------------


def test_service_rotates_once_at_start_then_every_generation_duration(
    engine: Engine, service: EngineService, clock: Clock
) -> None:
    infos: list[SnapshotInfo] = []
    engine.on_generation(infos.append)
    service.startService()
    assert [i.generation_start_epoch for i in infos] == [START]
    clock.advance(DURATION - 1)
    assert len(infos) == 1
    clock.advance(1)
    assert [i.generation_start_epoch for i in infos] == [START, START + DURATION]
    clock.pump([DURATION] * 3)
    assert [i.generation_start_epoch for i in infos] == [START + DURATION * n for n in range(5)]
    numbers = [i.generation_number for i in infos]
    assert numbers == sorted(set(numbers))


def test_generation_listeners_get_the_info_of_the_snapshot_now_served(
    engine: Engine, service: EngineService, clock: Clock
) -> None:
    seen: list[tuple[SnapshotInfo, SnapshotInfo]] = []
    engine.on_generation(lambda info: seen.append((info, engine.snapshot_info())))
    service.startService()
    clock.advance(DURATION)
    assert len(seen) == 2
    for info, served in seen:
        assert isinstance(info, SnapshotInfo)
        assert info == served
        assert info.generation_duration_s == DURATION
    assert seen[-1][0].generation_start_epoch == START + DURATION
    assert query(engine, "SELECT generation_number FROM qasino_server_info") == [
        (seen[-1][0].generation_number,)
    ]


def test_failing_listener_is_logged_and_other_listeners_still_run(
    engine: Engine, service: EngineService, clock: Clock, log_events: list[LogEvent]
) -> None:
    def broken(info: SnapshotInfo) -> None:
        raise RuntimeError("listener bug")

    infos: list[SnapshotInfo] = []
    engine.on_generation(broken)
    engine.on_generation(infos.append)
    service.startService()
    clock.advance(DURATION)
    assert len(infos) == 2
    assert any("generation listener failed" in m for m in errors_logged(log_events))


def test_engine_rotate_fires_with_the_new_snapshot_info(engine: Engine, clock: Clock) -> None:
    clock.advance(5)
    (info,) = fired(engine.rotate())
    assert info == engine.snapshot_info()
    assert info.generation_start_epoch == START + 5


# --- publishes and queries ----------------------------------------------------------


def test_small_publish_is_applied_at_once_when_the_writer_is_idle(
    store: Store, clock: Clock
) -> None:
    runner = ManualRunner()
    engine = Engine(store, runner, clock, "server1")
    acked = fired(engine.publish(Publish(table("t", [[1], [2]]), PublishOptions("host1"))))
    assert acked == [None]
    assert runner.pending == [], "no trip to the writer thread"
    assert store.query("SELECT a FROM t ORDER BY a", use_write_db=True).rows == [(1,), (2,)]


def test_big_publish_goes_to_the_writer_thread_and_fires_only_once_applied(
    store: Store, clock: Clock
) -> None:
    runner = ManualRunner()
    engine = Engine(store, runner, clock, "server1", inline_max_cells=2)
    acked = fired(engine.publish(Publish(table("t", [[1], [2], [3]]), PublishOptions("host1"))))
    assert acked == []
    with pytest.raises(QueryError, match="no such table"):
        store.query("SELECT * FROM t", use_write_db=True)
    runner.run_pending()
    assert acked == [None]
    assert store.query("SELECT count(*) FROM t", use_write_db=True).rows == [(3,)]


def test_writes_behind_a_thread_job_wait_and_keep_their_order(store: Store, clock: Clock) -> None:
    """A small publish after a big one is applied after it, not at once."""
    runner = ManualRunner()
    engine = Engine(store, runner, clock, "server1", inline_max_cells=2)
    big = fired(engine.publish(Publish(table("t", [[1], [2], [3]]), PublishOptions("host1"))))
    again = fired(engine.publish(Publish(table("t", [[4]]), PublishOptions("host1"))))
    other = fired(engine.publish(Publish(table("t", [[5]]), PublishOptions("host2"))))
    assert big == again == other == []
    runner.run_pending()
    assert big == [None] and other == [None]
    assert isinstance(again[0], Failure) and again[0].check(PublishRejected)
    assert store.query("SELECT a FROM t ORDER BY rowid", use_write_db=True).rows == [
        (1,),
        (2,),
        (3,),
        (5,),
    ]
    assert fired(engine.publish(Publish(table("u", [[6]]), PublishOptions("host1")))) == [None]


def test_publish_during_a_rotation_lands_in_the_next_generation(store: Store, clock: Clock) -> None:
    """Writes run in order: a publish before a rotation is in its snapshot,
    one that arrives while the rotation runs waits and goes to the next."""
    runner = ManualRunner()
    engine = Engine(store, runner, clock, "server1")
    acked = fired(engine.publish(Publish(table("t", [[7]]), PublishOptions("host1"))))
    assert acked == [None]
    rotated = fired(engine.rotate())
    later = fired(engine.publish(Publish(table("t", [[8]]), PublishOptions("host1"))))
    assert rotated == [] and later == []
    runner.run_pending()
    assert isinstance(rotated[0], SnapshotInfo)
    assert later == [None]
    assert store.query("SELECT a FROM t").rows == [(7,)]
    assert store.query("SELECT a FROM t", use_write_db=True).rows == [(8,)]


def test_a_queue_of_inline_writes_yields_to_the_reactor_between_slices(
    store: Store, clock: Clock
) -> None:
    runner = ManualRunner()
    engine = Engine(store, runner, clock, "server1", inline_slice_s=0.0)
    rotated = fired(engine.rotate())
    acks = [
        fired(engine.publish(Publish(table("t", [[n]]), PublishOptions(f"host{n}"))))
        for n in range(3)
    ]
    runner.run_pending()
    assert rotated and [len(a) for a in acks] == [1, 0, 0]
    assert len(clock.getDelayedCalls()) == 1, "the rest waits for the next reactor turn"
    clock.advance(0)
    assert acks == [[None], [None], [None]]
    assert clock.getDelayedCalls() == []


def test_batches_written_in_turns_start_at_the_next_turn_a_slice_at_a_time(
    store: Store, clock: Clock
) -> None:
    engine = Engine(store, SyncRunner(), clock, "server1", inline_slice_s=0.0)
    batches = [
        [(store.publish, (Publish(table("t", [[n]]), PublishOptions(f"host{n}")), 1.0))]
        for n in range(3)
    ]
    turns: list[float] = []
    real_call_later = clock.callLater

    def call_later(delay: float, fn: Any, *args: Any) -> Any:
        turns.append(delay)
        return real_call_later(delay, fn, *args)

    clock.callLater = call_later  # type: ignore[method-assign]
    done = [fired(engine.write_batch(b, 1, in_turns=True)) for b in batches]
    assert done == [[], [], []], "nothing written in the caller's turn"
    assert turns == [0]
    clock.advance(0)
    assert done == [[[None]], [[None]], [[None]]]
    assert turns == [0, 0, 0], "one batch per turn (a slice of 0 s)"
    assert clock.getDelayedCalls() == []
    # Without in_turns a batch is written at once, as before.
    now = fired(engine.write_batch(batches[0], 1))
    assert now and isinstance(now[0][0], PublishRejected)


def test_publish_uses_the_engine_clock(engine: Engine, clock: Clock) -> None:
    clock.advance(12.5)
    fired(engine.publish(Publish(table("t", [[1]]), PublishOptions("host1"))))
    fired(engine.rotate())
    assert query(
        engine, "SELECT last_update_epoch FROM qasino_server_tables WHERE tablename='t'"
    ) == [(START + 12.5,)]


def test_rejected_publish_errbacks(engine: Engine) -> None:
    publish = Publish(table("t", [[1]]), PublishOptions("host1"))
    assert fired(engine.publish(publish)) == [None]
    (failure,) = fired(engine.publish(publish))
    assert isinstance(failure, Failure)
    assert failure.check(PublishRejected)


def test_failed_query_errbacks(engine: Engine) -> None:
    (failure,) = fired(engine.query("DROP TABLE t"))
    assert isinstance(failure, Failure)
    assert failure.check(QueryError)


def test_name_value_update_through_the_engine(engine: Engine, clock: Clock) -> None:
    assert fired(engine.name_value_update("nv", "load", "0.25", "host1")) == [None]
    assert query(engine, "SELECT identity, load FROM nv", use_write_db=True) == [("host1", "0.25")]


def test_table_list_and_error_counts_through_the_engine(engine: Engine) -> None:
    fired(engine.publish(Publish(table("t", [[1], [2]]), PublishOptions("host1"))))
    engine.count_publish_error(nr_rows=3)
    engine.count_query_error()
    fired(engine.rotate())
    assert engine.table_list()["t"]["nr_rows"] == 2
    assert query(engine, "SELECT * FROM qasino_server_update_stats") == [(2, 1, 1, 5, 2)]
    assert query(engine, "SELECT * FROM qasino_server_sql_stats") == [(1, 0, 1)]


# --- failing rotations ---------------------------------------------------------------


@pytest.mark.parametrize(
    "error", [StoreError("disk full"), RuntimeError("unexpected")], ids=["store", "other"]
)
def test_failing_rotation_is_logged_and_the_loop_goes_on(
    engine: Engine,
    service: EngineService,
    store: Store,
    clock: Clock,
    log_events: list[LogEvent],
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
) -> None:
    infos: list[SnapshotInfo] = []
    engine.on_generation(infos.append)
    service.startService()
    assert len(infos) == 1

    real_rotate = store.rotate
    calls: list[float] = []

    def flaky(now: float) -> SnapshotInfo:
        calls.append(now)
        if len(calls) == 1:
            raise error
        return real_rotate(now)

    monkeypatch.setattr(store, "rotate", flaky)
    clock.advance(DURATION)
    assert len(infos) == 1
    assert any("rotation failed" in m for m in errors_logged(log_events))
    clock.advance(DURATION)
    clock.advance(DURATION)
    assert calls == [START + DURATION, START + 2 * DURATION, START + 3 * DURATION]
    assert [i.generation_start_epoch for i in infos] == [
        START,
        START + 2 * DURATION,
        START + 3 * DURATION,
    ]


# --- the views file ----------------------------------------------------------------


def test_views_file_is_loaded_for_the_first_snapshot(
    engine: Engine, service: EngineService, views_path: Path
) -> None:
    write_views(views_path, GOOD_VIEWS, START - 100)
    service.startService()
    assert query(engine, "SELECT one FROM v") == [(1,)]
    assert query(engine, "SELECT viewname, loaded FROM qasino_server_views") == [("v", 1)]


def test_changed_views_file_is_picked_up_at_the_next_rotation(
    engine: Engine, service: EngineService, clock: Clock, views_path: Path
) -> None:
    write_views(views_path, GOOD_VIEWS, START - 100)
    service.startService()
    write_views(views_path, OTHER_VIEWS, START - 50)
    assert query(engine, "SELECT one FROM v") == [(1,)]  # not before the rotation
    clock.advance(DURATION)
    assert query(engine, "SELECT two FROM w") == [(2,)]
    (failure,) = fired(engine.query("SELECT one FROM v"))
    assert isinstance(failure, Failure) and failure.check(QueryError)


def test_views_file_changed_in_place_with_same_size_is_picked_up(
    engine: Engine, service: EngineService, clock: Clock, views_path: Path
) -> None:
    write_views(views_path, "- viewname: v\n  view: CREATE VIEW v AS SELECT 1 AS one\n", START)
    service.startService()
    write_views(views_path, "- viewname: v\n  view: CREATE VIEW v AS SELECT 2 AS one\n", START + 1)
    clock.advance(DURATION)
    assert query(engine, "SELECT one FROM v") == [(2,)]


def test_broken_views_file_keeps_the_last_good_views(
    engine: Engine,
    service: EngineService,
    clock: Clock,
    views_path: Path,
    log_events: list[LogEvent],
) -> None:
    write_views(views_path, GOOD_VIEWS, START - 100)
    service.startService()
    write_views(views_path, BROKEN_YAML, START - 50)
    clock.advance(DURATION)
    assert query(engine, "SELECT one FROM v") == [(1,)]
    assert query(engine, "SELECT viewname, loaded FROM qasino_server_views") == [("v", 1)]
    assert engine.views.last_error is not None
    logged = errors_logged(log_events)
    assert any("views file" in m and "keeping the last good views" in m for m in logged)
    # Logged once per change, not at every rotation.
    clock.advance(DURATION)
    assert len(errors_logged(log_events)) == len(logged)
    # Fixed again: the new views are used.
    write_views(views_path, OTHER_VIEWS, START - 10)
    clock.advance(DURATION)
    assert query(engine, "SELECT two FROM w") == [(2,)]
    assert engine.views.last_error is None


def test_removed_views_file_keeps_the_last_views(
    engine: Engine, service: EngineService, clock: Clock, views_path: Path
) -> None:
    write_views(views_path, GOOD_VIEWS, START - 100)
    service.startService()
    views_path.unlink()
    clock.advance(DURATION)
    assert query(engine, "SELECT one FROM v") == [(1,)]


def test_engine_without_views_file_serves_no_views(
    store: Store, clock: Clock, log_events: list[LogEvent]
) -> None:
    engine = Engine(store, SyncRunner(), clock, "server1")
    svc = EngineService(engine, DURATION)
    svc.startService()
    try:
        assert query(engine, "SELECT count(*) FROM qasino_server_views") == [(0,)]
        assert errors_logged(log_events) == []
    finally:
        svc.stopService()


def test_fixed_views_source_is_served_from_the_next_rotation(store: Store, clock: Clock) -> None:
    views = views_from(parse_views_yaml(GOOD_VIEWS))
    engine = Engine(store, SyncRunner(), clock, "server1", views=views)
    fired(engine.rotate())
    assert query(engine, "SELECT one FROM v") == [(1,)]
    fired(engine.rotate())
    assert query(engine, "SELECT one FROM v") == [(1,)]


# --- shutdown ------------------------------------------------------------------------


def test_stop_service_closes_the_store_and_stops_rotating(
    engine: Engine, service: EngineService, store: Store, clock: Clock
) -> None:
    infos: list[SnapshotInfo] = []
    engine.on_generation(infos.append)
    service.startService()
    assert fired(service.stopService()) == [None]
    assert not service.running
    with pytest.raises(apsw.ConnectionClosedError):
        store.static.conn.execute("SELECT 1")
    assert clock.getDelayedCalls() == []
    clock.advance(DURATION * 3)
    assert len(infos) == 1


def test_stop_service_runs_after_queued_writes(store: Store, clock: Clock) -> None:
    runner = ManualRunner()
    engine = Engine(store, runner, clock, "server1")
    svc = EngineService(engine, DURATION)
    svc.startService()
    acked = fired(engine.publish(Publish(table("s", [[1]]), PublishOptions("host1", static=True))))
    stopped = fired(svc.stopService())
    assert stopped == []
    runner.run_pending()
    assert acked == [None]
    assert stopped == [None]
    with pytest.raises(apsw.ConnectionClosedError):
        store.static.conn.execute("SELECT 1")


def test_missing_views_file_is_logged_once_with_its_full_path(
    tmp_path: Path, log_events: list[LogEvent]
) -> None:
    source = ViewsSource(str(tmp_path / "missing.yaml"))
    assert source.poll() is False
    assert source.poll() is False
    said = [formatEvent(e) for e in log_events if "missing.yaml" in formatEvent(e)]
    assert said == [
        f"views file {tmp_path / 'missing.yaml'} not found: no views (it is read when it appears)"
    ], said


# --- group commit (the server's engine: group_commit=True) ----------------------


def cpu(identity: str, n: object = 1) -> Publish:
    table = Table("cpu", ("host", "n"), ("TEXT", "INTEGER"), [[identity, n]])
    return Publish(table, PublishOptions(identity))


def commits(store: Store) -> list[int]:
    counted = [0]

    def hook() -> bool:
        counted[0] += 1
        return False

    store._writer.conn.set_commit_hook(hook)
    return counted


def test_publishes_of_one_turn_are_applied_at_its_end_with_one_commit(
    store: Store, clock: Clock
) -> None:
    engine = Engine(store, SyncRunner(), clock, "server1", group_commit=True)
    counted = commits(store)
    ds = [engine.publish(cpu(h, n)) for h, n in (("a", 1), ("b", 2), ("a", 3), ("c", {"x": 1}))]
    assert [d.called for d in ds] == [False] * 4  # nothing answered before it is in
    clock.advance(0)
    outcomes = [fired(d)[0] for d in ds]
    assert outcomes[:2] == [None, None]
    assert isinstance(outcomes[2], Failure) and outcomes[2].check(PublishRejected)
    assert isinstance(outcomes[3], Failure)
    assert counted == [1]
    rows = fired(engine.query("SELECT host, n FROM cpu ORDER BY host", use_write_db=True))
    assert rows[0].rows == [("a", 1), ("b", 2)]


def test_any_other_write_first_applies_the_waiting_group(store: Store, clock: Clock) -> None:
    engine = Engine(store, SyncRunner(), clock, "server1", group_commit=True)
    d = engine.publish(cpu("a", 1))
    # A rotation in the same turn: the publish goes into the generation it
    # arrived in, and is answered, before the snapshot is taken.
    info = fired(engine.rotate())[0]
    assert fired(d) == [None]
    assert info.generation_number is not None
    result = fired(engine.query("SELECT host FROM cpu"))[0]
    assert result.rows == [("a",)]
    assert not clock.getDelayedCalls()  # the end-of-turn call was cancelled


def test_publishes_with_their_own_time_or_too_big_are_not_held(store: Store, clock: Clock) -> None:
    engine = Engine(store, SyncRunner(), clock, "server1", inline_max_cells=4, group_commit=True)
    assert fired(engine.publish(cpu("a"), now=clock.seconds())) == [None]  # NATS mode
    big = Publish(
        Table("cpu", ("host", "n"), ("TEXT", "INTEGER"), [["b", i] for i in range(3)]),
        PublishOptions("b"),
    )
    assert fired(engine.publish(big)) == [None]  # on the writer (here: at once)


def test_bigger_tables_are_applied_at_once_not_held_for_the_turn(
    store: Store, clock: Clock
) -> None:
    engine = Engine(store, SyncRunner(), clock, "server1", group_commit=True)
    rows = [[f"r{i}", i] for i in range(GROUP_MAX_CELLS // 2 + 1)]
    big = Publish(Table("cpu", ("host", "n"), ("TEXT", "INTEGER"), rows), PublishOptions("b"))
    small = engine.publish(cpu("a"))
    assert fired(engine.publish(big)) == [None]
    # The small one waiting was applied first, in arrival order.
    assert fired(small) == [None]


def test_a_big_turn_is_applied_in_chunks_of_at_most_the_inline_size(
    store: Store, clock: Clock
) -> None:
    engine = Engine(store, SyncRunner(), clock, "server1", inline_max_cells=5, group_commit=True)
    counted = commits(store)
    ds = [engine.publish(cpu(f"h{i}")) for i in range(5)]  # 2 cells each
    clock.advance(0)
    assert [fired(d) for d in ds] == [[None]] * 5
    assert counted == [3]  # h0+h1, h2+h3, h4

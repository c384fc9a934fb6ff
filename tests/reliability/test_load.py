"""Load: hundreds of concurrent publishers for several generations (issue 6, item 3).

One real server (``-g 2`` in CI mode). Every publisher identity runs in its
own thread, on an HTTP keep-alive session or a ZeroMQ REQ socket, and sends
its tables once per generation, right after each generation signal. Every
published row carries a unique publish id (``pid``) and its row index, so
each snapshot can be counted row by row.

Checked:

- every acknowledged table is, row by row and exactly once, in the snapshot
  that follows its acknowledgement (see :func:`check_placement` for what
  "follows" means when the ack and the signal race on two sockets);
- every "already published" refusal is earned: the identity's previous
  publish of that table is in the generation that was still being written
  when the refused one was sent (see :func:`check_refusals`);
- no publisher times out (10 s client timeouts, none allowed);
- queries over HTTP, ZeroMQ and telnet keep answering during the load
  (all must succeed; latencies are printed, not asserted);
- the server's RSS stays bounded across generations (printed and asserted
  with a generous margin).

Each snapshot is read live after its generation signal; if the reader was too
late (the next snapshot was already served), the copy the server archived
(``-k``) is read instead, once the server has stopped, so a slow test machine never loses evidence.
"""

from __future__ import annotations

import itertools
import json
import queue
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import apsw
import requests
import zmq

from tests.e2e.conftest import (
    HOST,
    ZMQ_CONTEXT,
    LineClient,
    parse_gensig,
)
from tests.reliability.conftest import (
    Profile,
    ReliabilityProcess,
    latency_summary,
    rss_kib,
)

CLIENT_TIMEOUT_S = 10.0
# An ack may be read before the signal of the rotation that followed the
# commit (two sockets race inside this process): within this window the
# table may be in the snapshot after the first one announced after the ack.
RACE_WINDOW_S = 1.0
COLUMNS = (("ident", "text"), ("round", "integer"), ("pid", "integer"), ("r", "integer"))
REJECTED_TEXT = "already published"


def table_names(profile: Profile) -> list[str]:
    return [f"load_t{k}" for k in range(profile.tables)]


@dataclass
class Ack:
    pid: int
    ident: str
    table: str
    round: int
    nrows: int
    before_idx: int  # signals seen when the publish was sent
    after_idx: int  # signals seen when the ack arrived
    t_sent: float
    t_ack: float
    outcome: str  # "ok", "rejected"


@dataclass
class Snapshot:
    number: int
    source: str  # "live" or "archive"
    rows: dict[str, Counter[tuple[int, int]]]  # table -> (pid, r) -> count


@dataclass
class LoadRun:
    server: ReliabilityProcess
    profile: Profile
    archive_dir: Path
    stop: threading.Event = field(default_factory=threading.Event)
    cond: threading.Condition = field(default_factory=threading.Condition)
    announced: list[tuple[int, float]] = field(default_factory=list)  # (number, t_received)
    acks: list[Ack] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    snapshots: dict[int, Snapshot] = field(default_factory=dict)
    missed: list[int] = field(default_factory=list)  # read from the archive at the end
    rss: list[tuple[int, int]] = field(default_factory=list)  # (signal index, KiB)
    query_latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    query_failures: list[str] = field(default_factory=list)
    publish_latency: list[float] = field(default_factory=list)
    pids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    to_read: queue.Queue[tuple[int, int]] = field(default_factory=queue.Queue)

    def fail(self, message: str) -> None:
        self.failures.append(message)

    def seen(self) -> int:
        return len(self.announced)

    def wait_seen(self, count: int, timeout: float) -> bool:
        with self.cond:
            self.cond.wait_for(lambda: len(self.announced) >= count or self.stop.is_set(), timeout)
            return len(self.announced) >= count

    def url(self) -> str:
        return f"http://{HOST}:{self.server.ports['http']}/request"


# ---------------------------------------------------------------- watcher and reader


def watch_signals(run: LoadRun) -> None:
    """Record every snapshot a generation signal announces (number, receive
    time) and queue it. A signal names the generation that starts filling,
    so the snapshot it announces is the one the signal before named; the
    first signal seen only tells that number."""
    sock = ZMQ_CONTEXT.socket(zmq.SUB)
    filling: Optional[int] = None
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"GENSIG")
        sock.connect(f"tcp://{HOST}:{run.server.ports['pubsub']}")
        while not run.stop.is_set():
            if not sock.poll(200):
                continue
            message = parse_gensig(sock.recv())
            t = time.monotonic()
            served, filling = filling, int(message["generation_number"])
            if served is None:
                continue
            with run.cond:
                run.announced.append((served, t))
                idx = len(run.announced) - 1
                run.cond.notify_all()
            run.to_read.put((idx, served))
    except Exception as e:  # pragma: no cover - reported by the test
        run.fail(f"signal watcher died: {e!r}")
    finally:
        sock.close(linger=0)


SNAPSHOT_SQL = (
    "SELECT i.generation_number, t.pid, t.r FROM qasino_server_info AS i "
    "LEFT JOIN {table} AS t ON 1"
)
PRESENT_SQL = (
    "SELECT i.generation_number, count(t.tablename) FROM qasino_server_info AS i "
    "LEFT JOIN qasino_server_tables AS t ON t.tablename = '{table}'"
)


def read_live(session: requests.Session, run: LoadRun, number: int) -> Optional[Snapshot]:
    """The snapshot's rows through the query API, or None if it is no longer
    the one served. Every statement names the generation it read."""
    rows: dict[str, Counter[tuple[int, int]]] = {}
    for table in table_names(run.profile):
        reply = session.get(
            run.url(),
            params={"op": "query", "sql": SNAPSHOT_SQL.format(table=table)},
            timeout=CLIENT_TIMEOUT_S,
        ).json()
        if reply.get("response_op") == "error" and "no such table" in reply["error_message"]:
            reply = session.get(
                run.url(),
                params={"op": "query", "sql": PRESENT_SQL.format(table=table)},
                timeout=CLIENT_TIMEOUT_S,
            ).json()
            assert reply.get("response_op") == "result_table", reply
            [[gen, present]] = reply["table"]["rows"]
            if int(gen) != number:
                return None
            assert present == "0", f"{table} listed but not queryable in {number}: {reply}"
            rows[table] = Counter()
            continue
        assert reply.get("response_op") == "result_table", reply
        counted: Counter[tuple[int, int]] = Counter()
        for gen, pid, r in reply["table"]["rows"]:
            if int(gen) != number:
                return None
            if pid != "":
                counted[(int(pid), int(r))] += 1
        rows[table] = counted
    return Snapshot(number, "live", rows)


def read_archive(run: LoadRun, number: int) -> Snapshot:
    """The snapshot as the server archived it when it retired it (read after
    the server stopped, so every copy is complete)."""
    path = run.archive_dir / f"gen-{number}.sqlite"
    assert path.exists(), f"snapshot {number} was neither read live nor archived"
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows: dict[str, Counter[tuple[int, int]]] = {}
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table in table_names(run.profile):
            counted: Counter[tuple[int, int]] = Counter()
            if table in names:
                for pid, r in conn.execute(f"SELECT pid, r FROM {table}"):
                    counted[(int(pid), int(r))] += 1
            rows[table] = counted
        return Snapshot(number, "archive", rows)
    finally:
        conn.close()


def read_snapshots(run: LoadRun) -> None:
    """After every signal: the server's RSS, then that snapshot's rows."""
    session = requests.Session()
    try:
        while not (run.stop.is_set() and run.to_read.empty()):
            try:
                idx, number = run.to_read.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                run.rss.append((idx, rss_kib(run.server.pid)))
            except OSError as e:
                run.fail(f"no RSS for the server: {e!r}")
            try:
                snap = read_live(session, run, number)
            except requests.RequestException as e:
                run.fail(f"reading snapshot {number} failed: {e!r}")
                snap = None
            if snap is None:
                run.missed.append(number)
            else:
                run.snapshots[number] = snap
    except Exception as e:
        run.fail(f"snapshot reader died: {e!r}")
    finally:
        session.close()


# ---------------------------------------------------------------- publishers


class HttpPublisher:
    def __init__(self, run: LoadRun) -> None:
        self.url = run.url()
        self.session = requests.Session()

    def publish(self, body: bytes) -> dict[str, Any]:
        reply = self.session.post(
            self.url,
            params={"op": "add_table_data"},
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=CLIENT_TIMEOUT_S,
        )
        assert reply.status_code == 200, (reply.status_code, reply.text[:200])
        result: dict[str, Any] = reply.json()
        return result

    def close(self) -> None:
        self.session.close()


class ZmqPublisher:
    def __init__(self, run: LoadRun) -> None:
        self.address = f"tcp://{HOST}:{run.server.ports['zmq']}"
        self.sock = self._connect()

    def _connect(self) -> zmq.Socket:
        sock = ZMQ_CONTEXT.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(CLIENT_TIMEOUT_S * 1000))
        sock.setsockopt(zmq.SNDTIMEO, int(CLIENT_TIMEOUT_S * 1000))
        sock.connect(self.address)
        return sock

    def publish(self, body: bytes) -> dict[str, Any]:
        try:
            self.sock.send(body)
            frames = self.sock.recv_multipart()
        except zmq.Again:
            # A REQ socket that missed its reply is stuck: start a new one.
            self.sock.close(linger=0)
            self.sock = self._connect()
            raise TimeoutError(f"no ZeroMQ reply within {CLIENT_TIMEOUT_S:g}s") from None
        assert len(frames) == 1, frames
        result: dict[str, Any] = json.loads(frames[0])
        return result

    def close(self) -> None:
        self.sock.close(linger=0)


def publisher(run: LoadRun, number: int, use_zmq: bool, first_signal: int) -> None:
    """One identity: after each of ``generations`` signals, wait a random
    part of the generation, then send every table once."""
    profile = run.profile
    ident = f"pub{number:04d}"
    rng = random.Random(number)
    spread = profile.generation_s * 0.35
    client: Any = None
    try:
        client = ZmqPublisher(run) if use_zmq else HttpPublisher(run)
        for rnd in range(profile.generations):
            if not run.wait_seen(first_signal + rnd + 1, timeout=profile.generation_s * 4 + 10):
                if not run.stop.is_set():
                    run.fail(f"{ident}: no generation signal for round {rnd}")
                return
            if run.stop.wait(rng.uniform(0, spread)):
                return
            for table in table_names(profile):
                pid = next(run.pids)
                rows = [[ident, rnd, pid, r] for r in range(profile.rows)]
                body = json.dumps(
                    {
                        "op": "add_table_data",
                        "identity": ident,
                        "table": {
                            "tablename": table,
                            "column_names": [c for c, _ in COLUMNS],
                            "column_types": [t for _, t in COLUMNS],
                            "rows": rows,
                        },
                    }
                ).encode()
                before, t_sent = run.seen(), time.monotonic()
                try:
                    reply = client.publish(body)
                except (TimeoutError, requests.Timeout) as e:
                    run.fail(f"{ident}: publish {pid} timed out: {e}")
                    continue
                except Exception as e:
                    run.fail(f"{ident}: publish {pid} failed: {e!r}")
                    continue
                t_ack = time.monotonic()
                after = run.seen()
                run.publish_latency.append(t_ack - t_sent)
                if reply.get("response_op") == "ok":
                    outcome = "ok"
                elif REJECTED_TEXT in str(reply.get("error_message", "")):
                    # Protocol: one publish per identity and table per
                    # generation; a round that spilled over is refused.
                    outcome = "rejected"
                else:
                    run.fail(f"{ident}: publish {pid} got {reply}")
                    continue
                run.acks.append(
                    Ack(pid, ident, table, rnd, profile.rows, before, after, t_sent, t_ack, outcome)
                )
    except Exception as e:
        run.fail(f"{ident}: publisher died: {e!r}")
    finally:
        if client is not None:
            client.close()


# ---------------------------------------------------------------- queries during the load


def query_loop(run: LoadRun) -> None:
    """Queries over HTTP, ZeroMQ and telnet in turn until told to stop."""
    session = requests.Session()
    zsock = ZMQ_CONTEXT.socket(zmq.REQ)
    zsock.setsockopt(zmq.LINGER, 0)
    zsock.setsockopt(zmq.RCVTIMEO, int(CLIENT_TIMEOUT_S * 1000))
    zsock.setsockopt(zmq.SNDTIMEO, int(CLIENT_TIMEOUT_S * 1000))
    zsock.connect(f"tcp://{HOST}:{run.server.ports['zmq']}")
    sql = "SELECT tablename, nr_rows FROM qasino_server_tables ORDER BY tablename"
    try:
        for kind in itertools.cycle(("http", "zmq", "line")):
            if run.stop.wait(0.02):
                return
            t0 = time.monotonic()
            try:
                if kind == "http":
                    reply = session.get(
                        run.url(), params={"op": "query", "sql": sql}, timeout=CLIENT_TIMEOUT_S
                    ).json()
                    ok = reply.get("response_op") == "result_table"
                elif kind == "zmq":
                    zsock.send(json.dumps({"op": "query", "sql": sql}).encode())
                    reply = json.loads(zsock.recv())
                    ok = reply.get("response_op") == "result_table"
                else:
                    with LineClient(run.server.ports["line"], CLIENT_TIMEOUT_S) as line:
                        line.send(sql + ";\n")
                        reply = line.read_answers(1)
                    ok = "rows returned" in reply
            except Exception as e:
                run.query_failures.append(f"{kind}: {e!r}")
                if kind == "zmq":
                    return  # the REQ socket is stuck; the failure is recorded
                continue
            run.query_latency[kind].append(time.monotonic() - t0)
            if not ok:
                run.query_failures.append(f"{kind}: {str(reply)[:300]}")
    finally:
        session.close()
        zsock.close(linger=0)


# ---------------------------------------------------------------- checks


def check_placement(run: LoadRun) -> dict[str, int]:
    """Every acknowledged publish is in exactly one snapshot, each row once,
    and that snapshot is the one that follows the ack.

    With ``before``/``after`` the signals seen at send and at ack time, the
    snapshot's signal index ``s`` must satisfy ``before <= s`` (an earlier
    rotation finished before the publish was sent) and ``s <= after`` (it is
    at the latest the first snapshot announced after the ack). ``s == after
    + 1`` is allowed only when that first signal arrived within
    RACE_WINDOW_S of the ack: the server sent the signal before the reply,
    and this process read them in the other order.
    """
    index_of = {number: idx for idx, (number, _) in enumerate(run.announced)}
    where: dict[int, list[tuple[int, str, Counter[int]]]] = defaultdict(list)
    # Signal index of the snapshot that holds each placed acknowledged publish.
    placed: dict[int, int] = {}
    for number, snap in run.snapshots.items():
        for table, counted in snap.rows.items():
            per_pid: dict[int, Counter[int]] = defaultdict(Counter)
            for (pid, r), n in counted.items():
                per_pid[pid][r] += n
            for pid, rs in per_pid.items():
                where[pid].append((number, table, rs))
    stats = Counter[str]()
    problems: list[str] = []
    acked_pids = set()
    for ack in run.acks:
        acked_pids.add(ack.pid)
        found = where.get(ack.pid, [])
        if ack.outcome == "rejected":
            if found:
                problems.append(f"refused publish {ack} is in snapshots {found}")
            continue
        if len(found) != 1:
            problems.append(f"acked publish {ack} found {len(found)} times: {found}")
            continue
        number, table, rs = found[0]
        expected = Counter(range(ack.nrows))
        if table != ack.table or rs != expected:
            problems.append(f"acked publish {ack} rows differ in {table}@{number}: {dict(rs)}")
            continue
        s = index_of.get(number)
        if s is None:
            problems.append(f"snapshot {number} holding {ack} was never announced")
            continue
        placed[ack.pid] = s
        if s < ack.before_idx:
            problems.append(f"{ack} is in snapshot {number} (#{s}), announced before the send")
        elif s < ack.after_idx:
            stats["in the snapshot announced before the ack was read"] += 1
        elif s == ack.after_idx:
            stats["in the first snapshot announced after the ack"] += 1
        elif (
            s == ack.after_idx + 1 and run.announced[ack.after_idx][1] - ack.t_ack <= RACE_WINDOW_S
        ):
            stats["one later: ack and signal raced"] += 1
        else:
            problems.append(
                f"{ack} is in snapshot {number} (#{s}); the first announced after the ack is "
                f"#{ack.after_idx}"
            )
    problems += check_refusals(run, placed, stats)
    strays = sorted(set(where) - acked_pids)
    if strays:
        problems.append(f"rows of publishes never acknowledged: pids {strays[:20]}")
    assert not problems, f"{len(problems)} placement problems:\n" + "\n".join(problems[:30])
    return dict(stats)


def check_refusals(run: LoadRun, placed: dict[int, int], stats: Counter[str]) -> list[str]:
    """Every "already published" refusal is earned: the same identity's
    previous publish of that table was acknowledged and went into the
    generation that was still being written when the refused one was sent
    (its snapshot was announced at or after the refused send: ``before <=
    s``; the round spilled over into the next one's generation). A server
    that refused a repeat it should have taken fails here."""
    problems: list[str] = []
    last_ok: dict[tuple[str, str], Ack] = {}
    for ack in sorted(run.acks, key=lambda a: (a.ident, a.table, a.round)):
        key = (ack.ident, ack.table)
        if ack.outcome == "ok":
            last_ok[key] = ack
            continue
        previous = last_ok.get(key)
        if previous is None:
            problems.append(f"{ack} refused, but no publish of it was acknowledged before")
        elif previous.pid not in placed:
            problems.append(f"{ack} refused after {previous}, which is in no snapshot")
        elif placed[previous.pid] < ack.before_idx:
            problems.append(
                f"{ack} refused as a repeat of {previous}, but that one is in snapshot "
                f"#{placed[previous.pid]}, announced before the refused publish was sent "
                f"(#{ack.before_idx}): a new generation had started"
            )
        else:
            stats["refused (the round before spilled into this generation)"] += 1
    return problems


# ---------------------------------------------------------------- the test


def test_hundreds_of_publishers_lose_nothing_and_queries_and_memory_hold_up(
    make_server: Any, profile: Profile, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    server: ReliabilityProcess = make_server(
        "load", generation_s=profile.generation_s, extra_args=["-k", str(archive)]
    )
    t_start = time.monotonic()
    server.start()
    run = LoadRun(server, profile, archive)
    helpers = [
        threading.Thread(target=watch_signals, args=(run,), name="signals", daemon=True),
        threading.Thread(target=read_snapshots, args=(run,), name="reader", daemon=True),
    ]
    publishers: list[threading.Thread] = []
    try:
        for t in helpers:
            t.start()
        # The subscriber is connected once it has seen a signal.
        assert run.wait_seen(1, timeout=profile.generation_s * 3 + 10), "no generation signal"
        first = run.seen()
        n_zmq = round(profile.publishers * profile.zmq_share)
        for i in range(profile.publishers):
            publishers.append(
                threading.Thread(
                    target=publisher,
                    args=(run, i, i < n_zmq, first),
                    name=f"pub{i}",
                    daemon=True,
                )
            )
        querier = threading.Thread(target=query_loop, args=(run,), name="queries", daemon=True)
        for t in publishers:
            t.start()
        querier.start()
        t_load = time.monotonic()
        budget = profile.generations * profile.generation_s * 3 + 60
        for t in publishers:
            t.join(max(0.1, t_load + budget - time.monotonic()))
        assert not any(t.is_alive() for t in publishers), (
            f"publishers still running after {budget}s"
        )
        t_load_end = time.monotonic()
        # Two more signals after the last ack: its snapshot has been announced
        # (and read) even if the ack raced the signal.
        last_after = max((a.after_idx for a in run.acks), default=run.seen())
        assert run.wait_seen(last_after + 2, timeout=profile.generation_s * 3 + 10)
        run.stop.set()
        querier.join(CLIENT_TIMEOUT_S + 5)
        for t in helpers:
            t.join(60)
        assert server.alive(), "the server died under load"
        assert server.stop() == 0
        for number in run.missed:
            run.snapshots[number] = read_archive(run, number)
    finally:
        run.stop.set()
        with run.cond:
            run.cond.notify_all()
        for t in publishers:
            t.join(CLIENT_TIMEOUT_S + 5)

    acks = [a for a in run.acks if a.outcome == "ok"]
    expected = profile.publishers * profile.tables * profile.generations
    sources = Counter(s.source for s in run.snapshots.values())
    rss = [kib for _, kib in run.rss]
    load_rss = [kib for idx, kib in run.rss if idx >= first]
    print(
        f"\n[load] profile {profile.name}: {profile.publishers} publishers "
        f"({round(profile.publishers * profile.zmq_share)} ZeroMQ), {profile.tables} tables x "
        f"{profile.rows} rows, {profile.generations} generations of {profile.generation_s:g}s"
    )
    print(
        f"[load] publishes sent {expected}, acked {len(acks)}, "
        f"refused as repeats {len(run.acks) - len(acks)}, failures {len(run.failures)}; "
        f"load phase {t_load_end - t_load:.1f}s, whole test {time.monotonic() - t_start:.1f}s"
    )
    print(f"[load] publish latency: {latency_summary(run.publish_latency)}")
    for kind in ("http", "zmq", "line"):
        print(f"[load] query latency {kind}: {latency_summary(run.query_latency[kind])}")
    print(f"[load] snapshots read: {dict(sources)} ({len(run.snapshots)} of {run.seen()} signals)")
    print(f"[load] server RSS per generation (MiB): {[round(k / 1024, 1) for k in rss]}")

    assert not run.failures, f"{len(run.failures)} failures:\n" + "\n".join(run.failures[:30])
    assert len(run.acks) == expected, f"{len(run.acks)} replies for {expected} publishes"
    stats = check_placement(run)
    print(f"[load] placement: {stats}")
    assert not run.query_failures, "queries failed during the load:\n" + "\n".join(
        run.query_failures[:20]
    )
    for kind in ("http", "zmq", "line"):
        assert run.query_latency[kind], f"no {kind} query ran during the load"
    # Memory: after the 2nd loaded generation the working set is warm; the
    # last one must not have grown past it by more than a generous margin.
    assert len(load_rss) >= 3, load_rss
    limit = load_rss[1] * 1.5 + 50 * 1024
    assert load_rss[-1] <= limit, (
        f"server RSS grew from {load_rss[1]} KiB (2nd generation) to {load_rss[-1]} KiB "
        f"(limit {limit:.0f} KiB)"
    )

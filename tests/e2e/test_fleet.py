"""Identities, --keep-stale and --history on the real server (docs/fleet.md):
short generations, waits on the generation signal or a polled condition."""

from __future__ import annotations

import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import (
    HOST,
    QasinoProcess,
    assert_ok,
    http_publish,
    http_query,
    http_request,
    line_query,
    make_table,
    new_server,
    poll_until,
    rows_of,
    zmq_call,
)

CPU = [("host", "text"), ("load", "int")]
NET = [("host", "text"), ("bytes", "int")]


@pytest.fixture(scope="module")
def fleet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QasinoProcess]:
    """One server for the module: 1 s generations, --keep-stale 2,
    --persist-ttl 2, --history 8."""
    proc = new_server(
        tmp_path_factory.mktemp("fleet"),
        generation_s=1,
        extra_args=["--keep-stale", "2", "--persist-ttl", "2", "--history", "8"],
    )
    try:
        proc.start()
        yield proc
    finally:
        proc.close()


def query_rows(proc: QasinoProcess, sql: str) -> list[list[str]]:
    return rows_of(http_query(proc.ports["http"], sql))


def publish(proc: QasinoProcess, identity: str, tablename: str, columns: Any, rows: Any) -> None:
    request = {"identity": identity, "table": make_table(tablename, columns, rows)}
    assert_ok(http_publish(proc.ports["http"], request))


def test_a_silent_host_goes_stale_is_carried_with_age_then_dropped(
    fleet_server: QasinoProcess,
) -> None:
    proc = fleet_server
    publish(proc, "quiet", "cpu", CPU, [["quiet", 1], ["quiet", 2]])
    published_by_busy: set[str] = set()

    def quiet_missed_four() -> bool:
        # "busy" publishes once per generation, so cpu goes on existing.
        generation = query_rows(proc, "SELECT generation_number FROM qasino_server_info")[0][0]
        if generation not in published_by_busy:
            published_by_busy.add(generation)
            http_publish(
                proc.ports["http"],
                {"identity": "busy", "table": make_table("cpu", CPU, [["busy", 9]])},
                status=None,
            )
        missed = query_rows(
            proc,
            "SELECT generations_missed FROM qasino_server_identities WHERE identity = 'quiet'",
        )
        return bool(missed) and int(missed[0][0]) >= 4

    poll_until(quiet_missed_four, timeout=30, what="the quiet host missing 4 generations")
    # Every snapshot of the window, read back from the history (no snapshot
    # can slip between two polls).
    sql = (
        "SELECT i.generations_missed, i.stale, i.nr_tables, i.nr_rows, i.remote_addr,"
        " (SELECT group_concat(t.age_generations) FROM history.qasino_server_table_identities t"
        "  WHERE t.generation_number = i.generation_number AND t.identity = 'quiet'),"
        " (SELECT count(*) FROM history.cpu c"
        "  WHERE c.generation_number = i.generation_number AND c.host = 'quiet')"
        " FROM history.qasino_server_identities i WHERE i.identity = 'quiet'"
        " ORDER BY i.generation_number"
    )
    by_missed = {int(row[0]): row[1:] for row in query_rows(proc, sql)}
    assert {0, 1, 2, 3, 4}.issubset(by_missed), by_missed
    # fresh, then carried twice with age 1 and 2 (its 2 rows in cpu), then dropped
    assert by_missed[0] == ["0", "1", "2", HOST, "0", "2"]
    assert by_missed[1] == ["1", "1", "2", HOST, "1", "2"]
    assert by_missed[2] == ["1", "1", "2", HOST, "2", "2"]
    assert by_missed[3] == ["1", "0", "0", HOST, "", "0"]
    assert by_missed[4] == ["1", "0", "0", HOST, "", "0"]
    # SHOW identities puts the stale host first
    shown = rows_of(http_query(proc.ports["http"], "SHOW identities;"))
    assert shown[0][:2] == ["quiet", "1"]
    assert ["busy", "0"] in [r[:2] for r in shown] or ["busy", "1"] in [r[:2] for r in shown]


def test_a_persisted_table_not_republished_expires_after_the_ttl(
    fleet_server: QasinoProcess,
) -> None:
    proc = fleet_server
    request = {"identity": "pers", "persist": 1, "table": make_table("kept", CPU, [["pers", 1]])}
    assert_ok(http_publish(proc.ports["http"], request))

    def missed_four() -> bool:
        missed = query_rows(
            proc, "SELECT generations_missed FROM qasino_server_identities WHERE identity = 'pers'"
        )
        return bool(missed) and int(missed[0][0]) >= 4

    poll_until(missed_four, timeout=30, what="pers missing 4 generations")
    ages = query_rows(
        proc,
        "SELECT i.generations_missed, (SELECT group_concat(t.age_generations)"
        " FROM history.qasino_server_table_identities t"
        " WHERE t.generation_number = i.generation_number AND t.tablename = 'kept')"
        " FROM history.qasino_server_identities i WHERE i.identity = 'pers'"
        " ORDER BY i.generation_number",
    )
    by_missed = dict((int(m), age) for m, age in ages)
    assert {0, 1, 2, 3}.issubset(by_missed), ages
    assert [by_missed[m] for m in (0, 1, 2, 3)] == ["0", "1", "2", ""]
    reply = http_query(proc.ports["http"], "SELECT * FROM kept")
    assert "no such table" in reply.get("error_message", ""), reply


def wait_served(proc: QasinoProcess, host: str, value: int) -> str:
    """The generation_number of the first snapshot that serves ``value``."""

    def served() -> Any:
        reply = http_query(
            proc.ports["http"],
            "SELECT (SELECT generation_number FROM qasino_server_info), bytes FROM net"
            f" WHERE host = '{host}'",
        )
        if reply["response_op"] != "result_table":  # no net table yet
            return None
        rows = reply["table"]["rows"]
        return rows[0][0] if rows and rows[0][1] == str(value) else None

    return str(poll_until(served, timeout=15, what=f"{host} bytes={value} served"))


def test_rates_with_lag_over_history_match_what_was_published(
    fleet_server: QasinoProcess,
) -> None:
    proc = fleet_server
    published = [1000, 1700, 3100, 3200]
    generations = []
    for value in published:
        publish(proc, "router", "net", NET, [["router", value]])
        generations.append(wait_served(proc, "router", value))
    sql = (
        "SELECT generation_number, bytes - LAG(bytes) OVER (ORDER BY generation_number)"
        " FROM history.net WHERE host = 'router' ORDER BY generation_number"
    )
    got = [row for row in query_rows(proc, sql) if row[0] in generations]
    # every published value is in the history, in its generation, each once
    assert [row[0] for row in got][-len(published) :] == generations
    deltas = [str(b - a) for a, b in zip(published, published[1:])]
    assert [row[1] for row in got][-3:] == deltas

    # the same from every query path
    # (later snapshots carry router's table: --keep-stale; pin the generation)
    text = f"SELECT * FROM ({sql}) WHERE generation_number = {generations[-1]}"
    zmq = rows_of(zmq_call(proc.ports["zmq"], {"op": "query", "sql": text}))
    assert zmq[0][1] == deltas[-1]
    assert deltas[-1] in line_query(proc.ports["line"], text + ";\n")
    page = http_request(
        proc.ports["http"], "GET", "/query?" + urllib.parse.urlencode({"sql": text})
    )
    assert page.status == 200 and f'<td class="num">{deltas[-1]}</td>' in page.body.decode()
    cli = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from qasino.cli import sqlclient_main; "
            "sys.exit(sqlclient_main(sys.argv[1:]))",
            "-H",
            HOST,
            "-p",
            str(proc.ports["zmq"]),
            "-q",
            text,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cli.returncode == 0 and deltas[-1] in cli.stdout, cli


def test_history_is_listed_described_and_read_only(fleet_server: QasinoProcess) -> None:
    proc = fleet_server
    publish(proc, "router2", "net2", NET, [["router2", 5]])
    poll_until(
        lambda: query_rows(proc, "SHOW tables LIKE 'history.net2'"),
        timeout=15,
        what="history.net2 listed",
    )
    desc = query_rows(proc, "DESC history.net2")
    assert desc == [["generation_number", "INTEGER"], ["host", "TEXT"], ["bytes", "INTEGER"]]
    reply = http_query(proc.ports["http"], "DELETE FROM history.net2")
    assert reply["response_op"] == "error"
    assert "allowed" in reply["error_message"]
    internal = query_rows(
        proc, "SELECT count(DISTINCT generation_number) FROM history.qasino_server_info"
    )
    assert 1 <= int(internal[0][0]) <= 8


def test_metrics_count_live_and_stale_identities(fleet_server: QasinoProcess) -> None:
    """The earlier tests' publishers have all gone quiet by now."""
    proc = fleet_server
    publish(proc, "fresh", "fresh_t", CPU, [["fresh", 1]])

    def counts() -> Any:
        stale = query_rows(proc, "SELECT sum(stale), sum(1 - stale) FROM qasino_server_identities")
        body = http_request(proc.ports["http"], "GET", "/metrics").body.decode()
        shown = {
            state: line.split()[-1]
            for line in body.splitlines()
            for state in ("live", "stale")
            if line.startswith(f'qasino_identities{{state="{state}"}}')
        }
        want = {"stale": stale[0][0], "live": stale[0][1]}
        got = {k: str(int(float(v))) for k, v in shown.items()}
        return got if got == want and want["live"] == "1" else None

    got = poll_until(counts, timeout=15, what="/metrics matching qasino_server_identities")
    assert int(got["stale"]) >= 3

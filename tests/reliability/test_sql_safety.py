"""SQL safety (issue 6, item 2): a corpus of statements that try to write, to
escape the read-only guard or to exhaust the server, sent through every query
path of a real server. Every attempt is refused or harmless:

* refused where it must be (writes, second statements, ATTACH, VACUUM,
  PRAGMA writes, load_extension, file functions, ...), stopped by the time
  limit where it would run forever, never an internal error;
* no file is created (the corpus names its files with a token unique to the
  run, under the test's tmp dir, under /tmp and relative to the server);
* the snapshot, the writer generation (``use_write_db``) and the static DB
  serve exactly what they served before, and every DB file under the db dir
  is byte-for-byte unchanged;
* the server still answers on the same path.

The server runs with ``--query-timeout 1`` and a generation of 600 s, so no
rotation changes the state while the module runs: a normal and a persisted
table sit in the writer generation, a static table in the static DB, and the
snapshot holds the internal tables of the first generation.
"""

from __future__ import annotations

import html
import http.client
import json
import re
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability.safety_helpers import (
    DiskState,
    QasinoProcess,
    files_named,
    http_request,
    make_table,
    new_server,
    publish_request,
    request_target,
    served_state,
    state_differences,
    tcp_exchange,
    vm_hwm_kib,
    zmq_json,
    zmq_request,
)

QUERY_TIMEOUT_S = 1
TIME_LIMIT_SLACK_S = 4.0  # a stopped query answers within QUERY_TIMEOUT_S + this
REQUEST_TIMEOUT_S = 15.0
HUGE = 2_000_000


# ---------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Attempt:
    name: str
    sql: str
    expect: str  # "refused", "time limit" or "harmless" (either answer is fine)


def corpus(attack_dir: Path, token: str) -> list[Attempt]:
    """Every attempt; every file it names contains ``token``."""
    tmp_file = f"{attack_dir}/{token}"
    slash_tmp = f"/tmp/{token}"
    char_path = "char(" + ",".join(str(ord(c)) for c in f"{slash_tmp}-char.db") + ")"
    refused = [
        # stacked statements
        ("stacked drop", "SELECT 1; DROP TABLE t"),
        ("stacked delete", "SELECT * FROM t; DELETE FROM t"),
        ("stacked drop static", "SELECT 1;DROP TABLE s;"),
        ("stacked attach", f"SELECT 1; ATTACH '{tmp_file}-stacked.db' AS x"),
        ("stacked after values", "VALUES (1); DROP TABLE p"),
        ("stacked after show", "SHOW tables; DROP TABLE t"),
        ("stacked after desc", "DESC t; DROP TABLE t"),
        ("stacked insert into snapshot", "SELECT 1; INSERT INTO qasino_server_info VALUES (1,2,3)"),
        # ATTACH
        ("attach tmp path", f"ATTACH '{tmp_file}-attach.db' AS x"),
        ("attach /tmp path", f"ATTACH DATABASE '{slash_tmp}-attach.db' AS x"),
        ("attach uri rwc", f"ATTACH 'file:{tmp_file}-uri.db?mode=rwc' AS x"),
        ("attach relative", f"ATTACH '{token}-relative.db' AS x"),
        ("attach memory", "ATTACH ':memory:' AS x"),
        (
            "attach after cte",
            f"WITH a AS (SELECT 1) SELECT * FROM a; ATTACH '{tmp_file}-cte.db' AS x",
        ),
        ("attach char path", f"ATTACH {char_path} AS x"),
        ("attach subquery path", f"ATTACH (SELECT '{slash_tmp}-sub.db') AS x"),
        ("detach static", "DETACH static"),
        # VACUUM
        ("vacuum", "VACUUM"),
        ("vacuum static", "VACUUM static"),
        ("vacuum into tmp", f"VACUUM INTO '{tmp_file}-vacuum.db'"),
        ("vacuum static into /tmp", f"VACUUM static INTO '{slash_tmp}-vacuum.db'"),
        ("vacuum into relative", f"VACUUM INTO '{token}-vacuum-rel.db'"),
        ("stacked vacuum into", f"SELECT 1; VACUUM INTO '{tmp_file}-vacuum2.db'"),
        # PRAGMA writes
        ("pragma journal_mode", "PRAGMA journal_mode = DELETE"),
        ("pragma static journal_mode", "PRAGMA static.journal_mode = MEMORY"),
        ("pragma writable_schema", "PRAGMA writable_schema = 1"),
        (
            "pragma writable_schema then update",
            "PRAGMA writable_schema = ON; UPDATE sqlite_master SET sql = 'x'",
        ),
        ("pragma user_version", "PRAGMA user_version = 5"),
        ("pragma static user_version", "PRAGMA static.user_version = 5"),
        ("pragma query_only", "PRAGMA query_only = 0"),
        ("pragma query_only off", "PRAGMA query_only = OFF"),
        ("pragma schema_version", "PRAGMA schema_version = 99"),
        ("pragma locking_mode", "PRAGMA locking_mode = EXCLUSIVE"),
        ("pragma wal_checkpoint", "PRAGMA static.wal_checkpoint(TRUNCATE)"),
        ("pragma temp_store_directory", f"PRAGMA temp_store_directory = '{attack_dir}'"),
        ("pragma read", "PRAGMA user_version"),
        # load_extension and other denied functions
        ("load_extension /tmp", f"SELECT load_extension('{slash_tmp}-ext')"),
        (
            "load_extension entry",
            f"SELECT load_extension('{tmp_file}-ext', 'sqlite3_extension_init')",
        ),
        ("load_extension in where", "SELECT * FROM t WHERE load_extension('x') IS NULL"),
        ("fts3_tokenizer", "SELECT fts3_tokenizer('simple')"),
        ("readfile", "SELECT readfile('/etc/passwd')"),
        ("writefile", f"SELECT writefile('{tmp_file}-writefile.txt', 'x')"),
        ("writefile /tmp", f"SELECT writefile('{slash_tmp}-writefile', zeroblob(10))"),
        ("edit", "SELECT edit('x')"),
        ("fsdir", "SELECT * FROM fsdir('/')"),
        ("zipfile", f"SELECT * FROM zipfile('{tmp_file}.zip')"),
        # DML, also inside CTEs
        ("cte delete", "WITH x AS (SELECT 1) DELETE FROM t"),
        ("cte insert", "WITH x AS (SELECT 1) INSERT INTO t (a) SELECT 1 FROM x"),
        ("cte update", "WITH x AS (SELECT 1) UPDATE t SET b = 'changed'"),
        ("cte replace static", "WITH x AS (SELECT 1) REPLACE INTO s SELECT * FROM s"),
        ("cte delete static", "WITH x AS (SELECT 1) DELETE FROM static.s"),
        ("cte delete persisted", "WITH RECURSIVE x(n) AS (SELECT 1) DELETE FROM p"),
        ("insert returning", "INSERT INTO t SELECT * FROM t RETURNING *"),
        ("delete snapshot table", "DELETE FROM qasino_server_info"),
        ("update snapshot table", "UPDATE qasino_server_tables SET nr_rows = 0"),
        ("insert or replace", "INSERT OR REPLACE INTO s SELECT * FROM s"),
        # CREATE / ALTER / DROP
        ("create temp table", "CREATE TEMP TABLE x (a)"),
        ("create temp table as", "CREATE TEMP TABLE x AS SELECT * FROM t"),
        ("create temp view", "CREATE TEMP VIEW v AS SELECT 1"),
        (
            "create temp trigger",
            "CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM t; END",
        ),
        ("create table in static", "CREATE TABLE static.x (a)"),
        ("create index", "CREATE INDEX i ON t (a)"),
        ("create virtual table", "CREATE VIRTUAL TABLE temp.x USING fts5(a)"),
        ("alter rename", "ALTER TABLE t RENAME TO u"),
        ("alter add column", "ALTER TABLE s ADD COLUMN z"),
        ("drop static", "DROP TABLE s"),
        ("drop view", "DROP VIEW IF EXISTS v"),
        # transactions and maintenance
        ("begin exclusive", "BEGIN EXCLUSIVE"),
        ("savepoint", "SAVEPOINT x"),
        ("rollback", "ROLLBACK"),
        ("reindex", "REINDEX"),
        ("analyze", "ANALYZE"),
        ("explain delete", "EXPLAIN DELETE FROM t"),
        ("explain query plan delete", "EXPLAIN QUERY PLAN DELETE FROM t"),
        # comment tricks
        ("comment before drop", "/**/DROP TABLE t"),
        ("select in comment", "/* SELECT */ DELETE FROM t"),
        ("select in line comment", "-- SELECT\nDELETE FROM t"),
        ("line comment then stacked", "SELECT 1 --\n; DROP TABLE t"),
        ("semicolon in comment then stacked", "SELECT 1 /* ; */ ; DELETE FROM t"),
        ("nested-looking comment", "SELECT 1 /* /* */ ; DROP TABLE t */"),
        ("comments as spaces", "SELECT/**/1;/**/DROP/**/TABLE/**/t"),
        # unicode look-alikes and odd whitespace
        ("nbsp in select", "SELECT\u00a01; DROP TABLE t"),
        ("nbsp after semicolon", "SELECT 1;\u00a0DROP TABLE t"),
        ("nbsp first", "\u00a0DELETE FROM t"),
        ("bom first", "\ufeffDELETE FROM t"),
        ("zero-width space first", "\u200bDROP TABLE t"),
        ("fullwidth select", "ＳＥＬＥＣＴ 1; DROP TABLE t"),
        ("fullwidth drop", "SELECT 1; ＤＲＯＰ TABLE t"),
        ("greek question mark", "SELECT 1\u037e DROP TABLE t"),
        ("line separator", "SELECT 1;\u2028DROP TABLE t"),
        ("tabs", "\tDELETE\tFROM\tt"),
        ("newlines", "\n\nDROP\nTABLE\nt\n"),
        ("vertical tab", "SELECT 1;\x0bDROP TABLE t"),
        ("form feed", "SELECT 1;\x0cDELETE FROM t"),
        # case mixing
        ("mixed case delete", "dElEtE fRoM t"),
        ("mixed case stacked", "sElEcT 1; dRoP tAbLe t"),
        ("mixed case attach", f"AtTaCh '{tmp_file}-case.db' aS x"),
        ("mixed case vacuum into", f"vAcUuM iNtO '{tmp_file}-case2.db'"),
        ("mixed case cte delete", "wItH x aS (sElEcT 1) dElEtE fRoM t"),
        ("mixed case pragma", "pRaGmA uSeR_vErSiOn = 5"),
        # huge values
        ("2 MB string literal", "SELECT '" + "x" * HUGE + "'"),
        ("2 MB literal then drop", "SELECT '" + "x" * HUGE + "'; DROP TABLE t"),
        ("zeroblob 2e9", "SELECT zeroblob(2000000000)"),
        ("randomblob 1e9", "SELECT randomblob(1e9)"),
        ("length of randomblob 1e9", "SELECT length(randomblob(1e9))"),
        ("printf 2e9 wide", "SELECT printf('%.*c', 2000000000, 'x')"),
        ("hex of zeroblob 1e8", "SELECT hex(zeroblob(100000000))"),
        ("deep parentheses", "SELECT " + "(" * 100_000 + "1" + ")" * 100_000),
        ("shortcut with huge name", "DESC " + "x" * HUGE),
    ]
    harmless = [
        ("sqlite_master", "SELECT * FROM sqlite_master"),
        ("static sqlite_master", "SELECT * FROM static.sqlite_master"),
        ("temp schema", "SELECT * FROM temp.sqlite_schema"),
        ("database list", "SELECT * FROM pragma_database_list"),
        ("table_info", "SELECT * FROM pragma_table_info('s')"),
        ("integrity check", "SELECT * FROM pragma_integrity_check"),
        ("user_version read", "SELECT * FROM pragma_user_version"),
        ("show tables like injection", "SHOW tables LIKE 'x''; DROP TABLE t; --'"),
        ("trailing comment hides drop", "SELECT 1 -- ; DROP TABLE t"),
        ("unterminated comment hides drop", "SELECT 1 /* ; DROP TABLE t"),
        ("carriage return inside comment", "SELECT 1 -- x\r; DELETE FROM t"),
        ("comment slashes hide drop", "SELECT 1 /*/ ; DROP TABLE t /*/"),
        ("read the static table", "SELECT * FROM static.s"),
        ("huge number", "SELECT 99999999999999999999999999999999999999"),
        ("many terms", "SELECT 1 WHERE 1 IN (" + ",".join(["1"] * 50_000) + ")"),
        (
            "limited recursion",
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c LIMIT 5",
        ),
    ]
    bombs = [
        (
            "recursive count",
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
        ),
        (
            "recursive string growth",
            "WITH RECURSIVE c(x, s) AS (VALUES (1, 'a') UNION ALL"
            " SELECT x + 1, substr(s || s, 1, 1000) FROM c) SELECT max(length(s)) FROM c",
        ),
    ]
    return (
        [Attempt(n, q, "refused") for n, q in refused]
        + [Attempt(n, q, "harmless") for n, q in harmless]
        + [Attempt(n, q, "time limit") for n, q in bombs]
    )


# ---------------------------------------------------------------- query paths


@dataclass
class Answer:
    ran: bool  # the statement ran and a result came back
    message: str  # the error message, or a short description of the result
    internal: bool = False  # a 5xx status or an "Internal error" message


def _json_answer(reply: dict) -> Answer:
    if reply.get("response_op") == "result_table":
        return Answer(True, f"{len(reply['table']['rows'])} rows")
    message = str(reply.get("error_message", reply))
    return Answer(False, message, message.startswith("Internal error"))


def _http(proc: QasinoProcess, method: str, target: str, body: bytes | None = None):
    return http_request(
        proc.ports["http"],
        method,
        target,
        body,
        {"Content-Type": "application/json"} if body is not None else None,
        timeout=REQUEST_TIMEOUT_S,
    )


def _status_answer(status: int) -> Answer:
    return Answer(False, f"HTTP status {status}", status >= 500)


def sql_target(path: str = "/request", **params: str) -> str:
    """``path?params``, a lone surrogate in a value sent as its UTF-8 bytes
    (``surrogatepass``), as a client with broken text would send it."""
    return path + "?" + urllib.parse.urlencode(params, errors="surrogatepass")


def via_http_get(proc: QasinoProcess, sql: str, use_write_db: bool = False) -> Answer:
    params = {"op": "query", "sql": sql}
    if use_write_db:
        params["use_write_db"] = "true"
    reply = _http(proc, "GET", sql_target(**params))
    return _json_answer(reply.json()) if reply.status == 200 else _status_answer(reply.status)


def via_http_post(proc: QasinoProcess, sql: str, use_write_db: bool = False) -> Answer:
    body = json.dumps({"op": "query", "sql": sql, "use_write_db": use_write_db}).encode()
    reply = _http(proc, "POST", request_target(op="query"), body)
    return _json_answer(reply.json()) if reply.status == 200 else _status_answer(reply.status)


def via_http_text(proc: QasinoProcess, sql: str) -> Answer:
    reply = _http(proc, "GET", sql_target(op="query", format="text", sql=sql))
    if reply.status != 200:
        return _status_answer(reply.status)
    text = reply.body.decode("utf-8", "replace")
    if text.startswith("SQL error: "):
        message = text[len("SQL error: ") :].strip()
        return Answer(False, message, message.startswith("Internal error"))
    return Answer(True, text.strip().splitlines()[-1] if text.strip() else "")


def via_http_csv(proc: QasinoProcess, sql: str) -> Answer:
    reply = _http(proc, "GET", sql_target(op="query", format="csv", sql=sql))
    if reply.status == 400:
        # The second release's error shape for format=csv: {"ok": false, "error": MSG}.
        try:
            error = json.loads(reply.body).get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, str):
            return Answer(False, error, error.startswith("Internal error"))
    if reply.status != 200:
        return _status_answer(reply.status)
    if reply.content_type.startswith("text/csv"):
        return Answer(True, f"{len(reply.body.splitlines())} CSV lines")
    message = reply.body.decode("utf-8", "replace").removeprefix("SQL error: ").strip()
    return Answer(False, message, message.startswith("Internal error"))


def via_zmq(proc: QasinoProcess, sql: str, use_write_db: bool = False) -> Answer:
    request = {"op": "query", "sql": sql, "use_write_db": use_write_db}
    return _json_answer(zmq_json(proc.ports["zmq"], request, REQUEST_TIMEOUT_S))


def via_line(proc: QasinoProcess, sql: str) -> Answer:
    statement = sql if sql.rstrip().endswith(";") else sql + ";"
    ex = tcp_exchange(
        proc.ports["line"],
        (statement + "\nquit;\n").encode("utf-8", "surrogatepass"),
        REQUEST_TIMEOUT_S,
        half_close=False,
    )
    text = ex.data.replace(b"\r\n", b"\n").decode("utf-8", "replace")
    errors = re.findall(r"^SQL error: (.*)$", text, re.MULTILINE)
    if not ex.closed:
        return Answer(False, f"no end of the conversation: {text[-200:]!r}", True)
    if errors:
        return Answer(False, "; ".join(errors), any(e.startswith("Internal error") for e in errors))
    if re.search(r"^\d+ rows returned$", text, re.MULTILINE):
        return Answer(True, "rows returned")
    # The server may cut an oversized statement before we finish sending it.
    return Answer(False, f"connection closed: {ex.error or text[-200:]!r}")


ERROR_RE = re.compile(r'<p id="error"[^>]*>(.*?)</p>', re.S)


def via_web(proc: QasinoProcess, sql: str) -> Answer:
    reply = _http(proc, "GET", sql_target("/query", sql=sql))
    if reply.status == 200 and b'id="result"' in reply.body:
        return Answer(True, "result page")
    found = ERROR_RE.search(reply.body.decode("utf-8", "replace"))
    message = html.unescape(found.group(1)).strip() if found else f"HTTP status {reply.status}"
    return Answer(False, message, reply.status >= 500 or message.startswith("Internal error"))


PATHS: dict[str, Callable[[QasinoProcess, str], Answer]] = {
    "http-get": via_http_get,
    "http-get-write-db": lambda proc, sql: via_http_get(proc, sql, use_write_db=True),
    "http-post": via_http_post,
    "http-post-write-db": lambda proc, sql: via_http_post(proc, sql, use_write_db=True),
    "http-text": via_http_text,
    "http-csv": via_http_csv,
    "zmq": via_zmq,
    "zmq-write-db": lambda proc, sql: via_zmq(proc, sql, use_write_db=True),
    "telnet": via_line,
    "web-query-page": via_web,
}


def ask(path: str, proc: QasinoProcess, sql: str) -> Answer:
    """One attempt on one path; a transport failure is an answer too (the
    server may close on an oversized request while it is being sent)."""
    try:
        return PATHS[path](proc, sql)
    except (OSError, http.client.HTTPException) as e:
        return Answer(False, f"transport: {type(e).__name__}: {e}")


# ---------------------------------------------------------------- the server


@dataclass
class SafetyServer:
    proc: QasinoProcess
    root: Path
    attack_dir: Path
    db_dir: Path
    token: str
    served: dict
    disk: DiskState


@pytest.fixture(scope="module")
def safety(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SafetyServer]:
    root = tmp_path_factory.mktemp("sql-safety")
    attack_dir = root / "attack"  # exists and is writable: an escaped write would land
    attack_dir.mkdir()
    proc = new_server(
        root / "server", generation_s=600, extra_args=["--query-timeout", str(QUERY_TIMEOUT_S)]
    )
    try:
        proc.start()
        columns = [("a", "int"), ("b", "text")]
        for name, options in (("t", {}), ("p", {"persist": 1}), ("s", {"static": 1})):
            table = make_table(name, columns, [[1, f"{name} one"], [2, f"{name} two"]])
            reply = zmq_json(proc.ports["zmq"], publish_request("publisher", table, **options))
            assert reply.get("response_op") == "ok", reply
        served = served_state(proc)  # also opens the pooled reader connections
        assert served["writer:main.t"] == [["1", "t one"], ["2", "t two"]], served
        assert served["writer:main.p"] == [["1", "p one"], ["2", "p two"]], served
        assert served["snapshot:static.s"] == served["writer:static.s"] != [], served
        db_dir = root / "server" / "db"
        disk = DiskState.take(db_dir, [root])
        yield SafetyServer(
            proc, root, attack_dir, db_dir, f"qsafety{uuid.uuid4().hex[:12]}", served, disk
        )
    finally:
        proc.close()


def assert_unchanged(safety: SafetyServer, what: str) -> None:
    proc = safety.proc
    assert proc.proc is not None and proc.proc.poll() is None, f"the server died {what}"
    served = state_differences(safety.served, served_state(proc))
    assert not served, f"what the server serves changed {what}: {served}"
    disk = safety.disk.differences(DiskState.take(safety.db_dir, [safety.root]))
    assert not disk, f"files changed {what}: {disk}"
    made = files_named(safety.token, [safety.root], [Path("/tmp"), Path.cwd()])
    assert not made, f"files created {what}: {made}"


@pytest.mark.parametrize("path", list(PATHS))
def test_every_write_or_escape_attempt_is_refused_or_harmless_and_changes_nothing(
    safety: SafetyServer, path: str
) -> None:
    proc = safety.proc
    # Every path must first be able to run a plain read: a path that answers
    # nothing at all (a missing page: 404) would "refuse" the whole corpus.
    first = ask(path, proc, "SELECT a, b FROM s ORDER BY a")
    assert first.ran, f"{path} does not run a plain SELECT: {first.message}"
    problems = []
    for attempt in corpus(safety.attack_dir, safety.token):
        started = time.monotonic()
        answer = ask(path, proc, attempt.sql)
        elapsed = time.monotonic() - started
        shown = f"{attempt.name} ({attempt.sql[:80]!r}): {answer.message[:200]}"
        if answer.internal:
            problems.append(f"internal error: {shown}")
        if attempt.expect in ("refused", "time limit") and answer.ran:
            problems.append(f"not refused: {shown}")
        if attempt.expect == "time limit":
            if "time limit" not in answer.message:
                problems.append(f"not stopped by the time limit: {shown}")
            if elapsed > QUERY_TIMEOUT_S + TIME_LIMIT_SLACK_S:
                problems.append(f"stopped only after {elapsed:.1f}s: {shown}")
        if answer.message.startswith("transport") and len(attempt.sql) < 10_000:
            problems.append(f"connection failed: {shown}")
    assert not problems, "\n".join(problems)
    assert_unchanged(safety, f"by the corpus on {path}")
    answer = ask(path, proc, "SELECT a, b FROM s ORDER BY a")
    assert answer.ran, f"the server no longer answers on {path}: {answer.message}"


# A NUL can be sent on every path. A lone surrogate only inside JSON (the
# escape "\\ud800"): a URL or a telnet line can only carry its would-be
# UTF-8 bytes, which are invalid UTF-8 and read as U+FFFD like any other
# invalid byte (tests/frontends/test_line.py), so there it is only checked
# that the server answers.
NUL_SQL = [
    "SELECT 1\x00",
    "SELECT a FROM t WHERE b = 'x\x00y'",
    "SELECT 1;\x00",
    "SELECT 1 -- \x00",
]
SURROGATE_SQL = ["SELECT '\ud800'", "SELECT a FROM t WHERE b = '\udfff'", 'SELECT 1 AS "\udbff"']
JSON_PATHS = {"http-post", "http-post-write-db", "zmq", "zmq-write-db"}


@pytest.mark.parametrize("path", list(PATHS))
def test_nul_and_lone_surrogates_get_a_clear_sql_error_and_change_nothing(
    safety: SafetyServer, path: str
) -> None:
    proc = safety.proc
    problems = []
    for sql in NUL_SQL:
        answer = ask(path, proc, sql)
        if answer.ran or answer.internal or "NUL character" not in answer.message:
            problems.append(f"{sql!r}: {answer}")
    for sql in SURROGATE_SQL:
        answer = ask(path, proc, sql)
        if path in JSON_PATHS:
            if answer.ran or answer.internal or "surrogates not allowed" not in answer.message:
                problems.append(f"{sql!r}: {answer}")
        elif answer.internal or answer.message.startswith("transport"):
            problems.append(f"{sql!r}: {answer}")
    assert not problems, "\n".join(problems)
    assert_unchanged(safety, f"by NUL and lone surrogates on {path}")
    answer = ask(path, proc, "SELECT a, b FROM s ORDER BY a")
    assert answer.ran, f"the server no longer answers on {path}: {answer.message}"


def test_refused_statements_get_the_documented_refusal_messages(safety: SafetyServer) -> None:
    """PROTOCOL.md: a write or a second statement is refused with an error,
    not merely failing by accident (e.g. a syntax error)."""
    proc = safety.proc
    cases = {
        "DELETE FROM s": "Only SELECT statements",
        "SELECT 1; DROP TABLE s": "Only one statement per request",
        "WITH x AS (SELECT 1) DELETE FROM s": "not allowed",
        "SELECT load_extension('/tmp/x')": "not allowed",
        f"VACUUM INTO '{safety.attack_dir}/{safety.token}.db'": "Only SELECT statements",
        "PRAGMA user_version = 5": "Only SELECT statements",
    }
    for sql, message in cases.items():
        for use_write_db in (False, True):
            answer = via_zmq(proc, sql, use_write_db)
            assert not answer.ran and message in answer.message, (sql, use_write_db, answer)
    assert_unchanged(safety, "by the refusal checks")


def test_a_query_of_huge_rows_cannot_make_the_server_hold_hundreds_of_megabytes(
    tmp_path: Path,
) -> None:
    proc = new_server(tmp_path / "memory", generation_s=600, extra_args=["--query-timeout", "5"])
    try:
        proc.start()
        before = vm_hwm_kib(proc.proc.pid)  # type: ignore[union-attr]
        # 39 rows of 10 MB, then a runtime error: nothing is sent back, so the
        # growth is what the server held while running the query.
        sql = (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 40)"
            " SELECT CASE WHEN x < 40 THEN zeroblob(10000000) ELSE json('{' || x) END FROM c"
        )
        frames = zmq_request(proc.ports["zmq"], {"op": "query", "sql": sql}, timeout=60)
        reply = json.loads(frames[0])
        assert reply.get("response_op") == "error", str(reply)[:200]
        growth_mib = (vm_hwm_kib(proc.proc.pid) - before) / 1024  # type: ignore[union-attr]
        assert proc.proc is not None and proc.proc.poll() is None
        assert growth_mib < 200, f"the server's peak memory grew by {growth_mib:.0f} MiB"
    finally:
        proc.close()

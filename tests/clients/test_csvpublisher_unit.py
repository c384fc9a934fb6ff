"""qasino_csvpublisher round logic, without sockets."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from qasino.clients import csvpublisher as cp
from qasino.clients.transport import HttpTransport, ServerError, TransportError

GOOD_A = "1\ntbl_a\nhost,val\nstring,integer\nHost,Value\nh1,1\nh2,2\n"
GOOD_B = "1\ntbl_b\nx,y\nreal,text\nX,Y\n1.5,foo\n\n"
BROKEN = "1\ntbl_broken\nx,y\nint,int\nX,Y\n1,2\n3,notanint\n"


class FakeClock:
    def __init__(self, start: float = 1000.0, step: float = 0.5) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> float:
        value = self.now
        self.now += self.step
        return value


class RecordingSender:
    """Records every message; fails the tables named in ``fail``."""

    def __init__(self, fail: dict[str, Exception] | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.fail = fail or {}

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        name = message["table"]["tablename"]
        if name in self.fail:
            raise self.fail[name]
        self.sent.append(message)
        return {"response_op": "ok", "identity": "server"}

    def names(self) -> list[str]:
        return [m["table"]["tablename"] for m in self.sent]

    def table(self, name: str) -> dict[str, Any]:
        (message,) = [m for m in self.sent if m["table"]["tablename"] == name]
        return message


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """index.txt with both line forms, a subfolder, a missing and a broken file."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.csv").write_text(GOOD_A)
    (tmp_path / "tbl_b.csv").write_text(GOOD_B)
    (tmp_path / "tbl_broken.csv").write_text(BROKEN)
    (tmp_path / "index.txt").write_text(
        "1\nsub/a.csv,tbl_a\ntbl_b\n\n# a comment\ntbl_missing\ntbl_broken\n"
    )
    return tmp_path


def rows_by_table(message: dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = message["table"]["column_names"]
    return {row[1]: dict(zip(names, row)) for row in message["table"]["rows"]}


# ---------------------------------------------------------------------------
# Files


def test_parse_index_both_forms_relative_to_the_index_folder() -> None:
    text = "2\nsub/a.csv,tbl_a\n  tbl_b  \n/abs/c.csv , tbl_c\n\n# comment\n"
    entries = cp.parse_index(text, "/data/idx/index.txt")
    assert entries == [
        cp.IndexEntry("tbl_a", "/data/idx/sub/a.csv"),
        cp.IndexEntry("tbl_b", "/data/idx/tbl_b.csv"),
        cp.IndexEntry("tbl_c", "/abs/c.csv"),
    ]


@pytest.mark.parametrize("version", ["1", "2.0", " 3 "])
def test_parse_index_first_line_is_the_version(version: str) -> None:
    text = f"{version}\ntbl_y\n"
    assert cp.parse_index(text, "i.txt") == [cp.IndexEntry("tbl_y", "tbl_y.csv")]
    assert cp.parse_index("", "i.txt") == []


@pytest.mark.parametrize("first", ["tbl_x", "", "v1", "# tables"])
def test_index_whose_first_line_is_not_a_version_is_an_error_naming_the_file(
    first: str,
) -> None:
    """Not silently dropped as if it were the version line."""
    with pytest.raises(cp.IndexFileError) as info:
        cp.parse_index(f"{first}\ntbl_y\n", "/data/index.txt")
    assert "/data/index.txt" in str(info.value)
    assert "version" in str(info.value)


def test_index_without_version_is_reported_in_the_round(tmp_path: Any) -> None:
    index = tmp_path / "index.txt"
    index.write_text("tbl_a\n")
    (tmp_path / "tbl_a.csv").write_text("1\ntbl_a\na\nint\nA\n1\n")
    reports = cp.read_tables([str(index)], None, "me")
    assert len(reports) == 1
    assert reports[0].filepath == str(index) and reports[0].tablename == ""
    assert reports[0].error is not None and "first line must be a version" in reports[0].error


def test_list_files_skip_comments_and_blank_lines() -> None:
    text = "# indexes\n/a/index.txt\n\n   \n  # indented comment\n b/index.txt \r\n"
    assert cp.parse_list_file(text) == ["/a/index.txt", "b/index.txt"]


def test_load_sources_combines_flags_and_files(tmp_path: Path) -> None:
    (tmp_path / "indexes").write_text("# list\n/x/one.txt\n\n/x/two.txt\n")
    (tmp_path / "tables").write_text("tbl_b\n# not this\n")
    sources = cp.load_sources(
        ["/x/zero.txt"],
        str(tmp_path / "indexes"),
        ["tbl_a"],
        str(tmp_path / "tables"),
    )
    assert sources.indexes == ["/x/zero.txt", "/x/one.txt", "/x/two.txt"]
    assert sources.whitelist == {"tbl_a", "tbl_b"}
    assert sources.errors == []
    assert cp.load_sources(["/x/zero.txt"], None, [], None).whitelist is None


def test_unreadable_list_files_are_reported_and_whitelist_stays_in_force(
    tmp_path: Path,
) -> None:
    sources = cp.load_sources(
        [], str(tmp_path / "no_indexes"), [], str(tmp_path / "no_tables"), FakeClock()
    )
    assert sources.indexes == []
    assert sources.whitelist == set()  # publishes nothing rather than everything
    assert [e.filepath for e in sources.errors] == [
        str(tmp_path / "no_indexes"),
        str(tmp_path / "no_tables"),
    ]
    assert all(e.error and "cannot read" in e.error for e in sources.errors)


# ---------------------------------------------------------------------------
# read_tables


def test_read_tables_reports_good_missing_and_broken(tree: Path) -> None:
    reports = cp.read_tables([str(tree / "index.txt")], None, "agent1", FakeClock())
    by_name = {r.tablename: r for r in reports}
    assert [r.tablename for r in reports] == ["tbl_a", "tbl_b", "tbl_missing", "tbl_broken"]

    a = by_name["tbl_a"]
    assert a.ok and a.nr_rows == 2
    assert a.filepath == str(tree / "sub" / "a.csv")
    assert a.mtime == int(os.stat(tree / "sub" / "a.csv").st_mtime)
    assert a.read_epoch == 1000.0 and a.read_time_s == 0.5
    assert a.publish is not None and a.publish.options.identity == "agent1"
    assert a.publish.table.rows == [["h1", 1], ["h2", 2]]

    b = by_name["tbl_b"]
    assert b.ok and b.nr_rows == 1  # trailing blank line ignored

    missing = by_name["tbl_missing"]
    assert not missing.ok and missing.publish is None
    assert missing.mtime is None
    assert "No such file" in (missing.error or "")

    broken = by_name["tbl_broken"]
    assert not broken.ok and broken.publish is None and broken.nr_rows == 0
    assert "line 7" in (broken.error or "") and "notanint" in (broken.error or "")


def test_read_tables_whitelist(tree: Path) -> None:
    reports = cp.read_tables([str(tree / "index.txt")], {"tbl_b", "tbl_nowhere"}, "agent1")
    assert [r.tablename for r in reports] == ["tbl_b"]


def test_missing_index_file_is_reported(tree: Path) -> None:
    reports = cp.read_tables([str(tree / "nope.txt"), str(tree / "index.txt")], {"tbl_a"}, "id")
    assert [r.tablename for r in reports] == ["", "tbl_a"]
    assert reports[0].filepath == str(tree / "nope.txt")
    assert "cannot read index file" in (reports[0].error or "")


def test_identity_from_the_options_line_wins(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("identity=other,persist=1\nt\nx\nint\nX\n1\n")
    (tmp_path / "index").write_text("1\nt\n")
    (report,) = cp.read_tables([str(tmp_path / "index")], None, "agent1")
    assert report.publish is not None
    assert report.publish.options.identity == "other"
    message = cp.publish_message(report.publish, report.tablename)
    assert message["identity"] == "other"
    assert message["persist"] == 1
    assert message["op"] == "add_table_data"


def test_index_names_the_table(tmp_path: Path) -> None:
    (tmp_path / "file.csv").write_text("1\nname_in_file\nx\nint\nX\n1\n")
    (tmp_path / "index").write_text("1\nfile.csv,name_in_index\nfile.csv,bad-name\n")
    good, bad = cp.read_tables([str(tmp_path / "index")], None, "agent1")
    assert good.publish is not None
    assert cp.publish_message(good.publish, good.tablename)["table"]["tablename"] == (
        "name_in_index"
    )
    assert not bad.ok and "invalid tablename" in (bad.error or "")


@pytest.mark.parametrize(
    "second_line",
    [
        "Disk usage per host, by mount",
        '"An unclosed quote, then commas',
        "",
        "qasino_server_tables",
    ],
)
def test_an_old_file_with_free_text_on_its_second_line_is_published(
    tmp_path: Path, second_line: str
) -> None:
    """The original agent never read that line: the index names the table."""
    (tmp_path / "disk.csv").write_text(
        f"1\n{second_line}\nhost,pct\nstring,int\nHost,Percent\nh1,91\nh2,15\n"
    )
    (tmp_path / "index").write_text("1\ndisk.csv,disk_usage\n")
    (report,) = cp.read_tables([str(tmp_path / "index")], None, "agent1")
    assert report.ok, report.error
    message = cp.publish_message(report.publish, report.tablename)
    assert message["table"]["tablename"] == "disk_usage"
    assert message["table"]["rows"] == [["h1", 91], ["h2", 15]]


def test_a_broken_data_line_is_reported_with_its_file_line_number(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("1\nfree text\nx\nint\nX\n1\nnope\n")
    (tmp_path / "index").write_text("1\nt\n")
    (report,) = cp.read_tables([str(tmp_path / "index")], None, "agent1")
    assert not report.ok and "line 7" in (report.error or "")


def test_files_are_reread_every_round(tree: Path) -> None:
    index = str(tree / "index.txt")
    (first,) = cp.read_tables([index], {"tbl_a"}, "agent1")
    assert first.nr_rows == 2
    (tree / "sub" / "a.csv").write_text(GOOD_A + "h3,3\n")
    (second,) = cp.read_tables([index], {"tbl_a"}, "agent1")
    assert second.nr_rows == 3


# ---------------------------------------------------------------------------
# run_round


def test_run_round_sends_good_tables_then_info_tables(tree: Path) -> None:
    sender = RecordingSender()
    settings = cp.RoundSettings(identity="agent1", indexes=[str(tree / "index.txt")])
    result = cp.run_round(sender, settings, FakeClock())

    assert sender.names() == ["tbl_a", "tbl_b", cp.INFO_TABLE, cp.TABLES_TABLE]
    assert (result.nr_tables, result.nr_errors) == (2, 2)
    assert result.info_sent

    a = sender.table("tbl_a")
    assert a["identity"] == "agent1"
    assert a["table"]["column_names"] == ["host", "val"]
    assert a["table"]["rows"] == [["h1", 1], ["h2", 2]]

    info = sender.table(cp.INFO_TABLE)
    assert info["identity"] == "agent1"
    assert info["table"]["column_names"] == ["identity", "update_epoch", "nr_tables", "nr_errors"]
    ((identity, update_epoch, nr_tables, nr_errors),) = info["table"]["rows"]
    assert (identity, nr_tables, nr_errors) == ("agent1", 2, 2)
    assert isinstance(update_epoch, int)

    tables = sender.table(cp.TABLES_TABLE)
    assert tables["table"]["column_names"] == [
        "identity",
        "tablename",
        "read_epoch",
        "read_time_s",
        "mtime",
        "nr_errors",
        "error_message",
        "nr_rows",
        "filepath",
    ]
    rows = rows_by_table(tables)
    assert set(rows) == {"tbl_a", "tbl_b", "tbl_missing", "tbl_broken"}
    assert rows["tbl_a"]["nr_errors"] == 0 and rows["tbl_a"]["error_message"] == ""
    assert rows["tbl_a"]["nr_rows"] == 2 and rows["tbl_a"]["identity"] == "agent1"
    assert rows["tbl_a"]["filepath"] == str(tree / "sub" / "a.csv")
    assert rows["tbl_a"]["read_epoch"] == 1000.0 and rows["tbl_a"]["read_time_s"] == 0.5
    assert rows["tbl_missing"]["nr_errors"] == 1 and rows["tbl_missing"]["mtime"] is None
    assert "No such file" in rows["tbl_missing"]["error_message"]
    assert rows["tbl_broken"]["nr_errors"] == 1
    assert "line 7" in rows["tbl_broken"]["error_message"]
    # Every error has its row.
    assert sum(r["nr_errors"] for r in rows.values()) == nr_errors


def test_run_round_whitelist_and_list_files(tree: Path) -> None:
    (tree / "indexes").write_text("# the list\n\n" + str(tree / "index.txt") + "\n")
    (tree / "tables").write_text("# wanted\ntbl_b\n")
    sender = RecordingSender()
    settings = cp.RoundSettings(
        identity="agent1",
        index_list=str(tree / "indexes"),
        tables=["tbl_missing"],
        table_list=str(tree / "tables"),
    )
    result = cp.run_round(sender, settings)
    assert sender.names() == ["tbl_b", cp.INFO_TABLE, cp.TABLES_TABLE]
    assert set(rows_by_table(sender.table(cp.TABLES_TABLE))) == {"tbl_b", "tbl_missing"}
    assert (result.nr_tables, result.nr_errors) == (1, 1)


def test_server_error_fails_only_its_table(tree: Path) -> None:
    sender = RecordingSender(fail={"tbl_a": ServerError("already published in this generation")})
    settings = cp.RoundSettings(identity="agent1", indexes=[str(tree / "index.txt")])
    result = cp.run_round(sender, settings)
    assert sender.names() == ["tbl_b", cp.INFO_TABLE, cp.TABLES_TABLE]
    assert (result.nr_tables, result.nr_errors) == (1, 3)
    row = rows_by_table(sender.table(cp.TABLES_TABLE))["tbl_a"]
    assert row["nr_errors"] == 1
    assert "already published" in row["error_message"]


def test_transport_failure_counts_errors_and_queues_nothing(tree: Path) -> None:
    class DeadServer:
        def __init__(self) -> None:
            self.calls = 0

        def request(self, message: dict[str, Any]) -> dict[str, Any]:
            self.calls += 1
            raise TransportError("no reply from tcp://127.0.0.1:1 within 1s")

    dead = DeadServer()
    settings = cp.RoundSettings(identity="agent1", indexes=[str(tree / "index.txt")])
    result = cp.run_round(dead, settings)
    # One failed attempt, the rest of the round is not sent (no info tables either).
    assert dead.calls == 1
    assert (result.nr_tables, result.nr_errors) == (0, 4)
    assert not result.info_sent
    by_name = {r.tablename: r for r in result.reports}
    assert "send failed" in (by_name["tbl_a"].error or "")
    assert "not sent: server unreachable" in (by_name["tbl_b"].error or "")
    assert result.info["table"]["rows"][0][2:] == [0, 4]

    # Next round, with the server back: everything is read and sent again, once.
    sender = RecordingSender()
    again = cp.run_round(sender, settings)
    assert sender.names() == ["tbl_a", "tbl_b", cp.INFO_TABLE, cp.TABLES_TABLE]
    assert (again.nr_tables, again.nr_errors) == (2, 2)


def test_round_stops_sending_when_asked(tree: Path) -> None:
    stop = threading.Event()
    stop.set()
    sender = RecordingSender()
    settings = cp.RoundSettings(identity="agent1", indexes=[str(tree / "index.txt")])
    result = cp.run_round(sender, settings, stop=stop)
    assert sender.sent == []
    assert result.nr_tables == 0


def test_info_table_failure_does_not_raise(tree: Path) -> None:
    sender = RecordingSender(fail={cp.INFO_TABLE: ServerError("nope")})
    settings = cp.RoundSettings(identity="agent1", indexes=[str(tree / "index.txt")])
    result = cp.run_round(sender, settings)
    assert not result.info_sent
    assert result.nr_tables == 2
    assert sender.names() == ["tbl_a", "tbl_b", cp.TABLES_TABLE]  # the other one still goes


# ---------------------------------------------------------------------------
# Command line


def test_flags_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    args = cp.build_parser().parse_args(["-i", "a", "-i", "b", "-T", "t1", "-T", "t2"])
    assert args.indexes == ["a", "b"] and args.tables == ["t1", "t2"]
    assert args.hostname == "localhost" and args.port is None
    assert args.pubsub_port == 15596 and args.send_delay_max == 15
    assert args.gen_signal_timeout == 120 and args.interval is None
    assert args.timeout == 10

    sender, where = cp.make_sender(args)
    assert where == "tcp://localhost:15598"
    sender.close()

    monkeypatch.setenv("QASINO_CLIENT_USERNAME", "bob")
    monkeypatch.setenv("QASINO_CLIENT_PASSWORD", "secret")
    args = cp.build_parser().parse_args(["-i", "a", "-s", "-k", "-H", "example"])
    sender, where = cp.make_sender(args)
    assert where == "https://example:443/request"
    assert isinstance(sender.transport, HttpTransport)
    assert sender.transport.session.auth == ("bob", "secret")
    assert sender.transport.verify is False
    sender.close()

    args = cp.build_parser().parse_args(["-i", "a", "--use-http", "-u", "al", "-w", "pw"])
    sender, where = cp.make_sender(args)
    assert where == "http://localhost:15597/request"
    assert isinstance(sender.transport, HttpTransport)
    assert sender.transport.session.auth == ("al", "pw")
    sender.close()


def test_needs_an_index() -> None:
    with pytest.raises(SystemExit) as exc:
        cp.main([])
    assert exc.value.code == 2

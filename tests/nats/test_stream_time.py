"""Pure parts of NATS mode: generations by stream time, message decoding."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qasino.core.errors import InvalidInput
from qasino.core.model import Publish
from qasino.core.stream_time import StreamTimeline, check_duration, generation_start
from qasino.nats.messages import (
    TICK_SUBJECT,
    NameValue,
    StreamMessage,
    decode,
    identity_from_subject,
    parse_ack_reply,
    subject_for,
)
from tests.server_process import REPO_ROOT

LIMITS = {"max_rows": 1000, "max_columns": 100, "max_cell_bytes": 1000}


def test_generation_start_is_aligned_to_the_duration() -> None:
    assert generation_start(1000.0, 30) == 990
    assert generation_start(1019.999, 30) == 1020 - 30
    assert generation_start(1020.0, 30) == 1020


def test_timeline_cuts_when_a_message_is_past_the_end() -> None:
    t = StreamTimeline(10)
    assert t.place(101.5) == 100  # the first message opens its generation
    assert t.place(109.9) is None
    assert t.end() == 110
    assert t.place(110.0) == 110
    # Idle generations are skipped, not opened one by one.
    assert t.place(151.0) == 150


def test_timeline_never_goes_back_in_time() -> None:
    t = StreamTimeline(10)
    t.place(125.0)
    assert t.place(119.0) is None  # a leader whose clock is behind: current generation
    assert t.filling == 120


def test_two_timelines_started_at_different_times_agree() -> None:
    stamps = [100.2, 100.9, 103.1, 104.0, 104.2, 111.0]
    first, late = StreamTimeline(2), StreamTimeline(2)
    cuts_first = [first.place(ts) for ts in stamps]
    cuts_late = [late.place(ts) for ts in stamps]
    assert cuts_first == cuts_late == [100, None, 102, 104, None, 110]


@pytest.mark.parametrize("bad", [0.5, 1.5, 0, -1])
def test_nats_mode_needs_whole_second_generations(bad: float) -> None:
    with pytest.raises(ValueError, match="whole number"):
        check_duration(bad)


def test_subject_for_identity_replaces_what_subjects_cannot_hold() -> None:
    assert subject_for("10.0.0.1") == "qasino.publish.10.0.0.1"
    assert subject_for("web 1*>") == "qasino.publish.web_1__"
    assert subject_for("a..b.") == "qasino.publish.a.b"
    assert subject_for("") == "qasino.publish._"
    assert identity_from_subject("qasino.publish.h1") == "h1"


def msg(subject: str, data: bytes, headers: dict[str, str] | None = None) -> StreamMessage:
    return StreamMessage(subject, data, headers, seq=1, ts_ns=1_000_000_000_500)


def test_decode_json_publish_takes_identity_from_subject_when_missing() -> None:
    body = b'{"table": {"tablename": "t", "column_names": ["a"], "column_types": ["int"], "rows": [[1]]}}'
    decoded = decode(msg("qasino.publish.h1", body), LIMITS)
    assert isinstance(decoded, Publish)
    assert decoded.options.identity == "h1"
    assert decoded.table.rows == [[1]]


def test_decode_csv_publish_by_content_type() -> None:
    csv = b"persist=1\nt\na,b\nint,text\nA,B\n1,x\n"
    decoded = decode(msg("qasino.publish.h2", csv, {"Content-Type": "text/csv"}), LIMITS)
    assert isinstance(decoded, Publish)
    assert decoded.options.identity == "h2" and decoded.options.persist
    assert decoded.table.column_names == ("a", "b")


def test_decode_name_value_update_and_tick() -> None:
    body = b'{"op": "name_value_update", "name": "nv.x", "value": "3", "identity": "h"}'
    assert decode(msg("qasino.publish.h", body), LIMITS) == NameValue("nv", "x", "3", "h")
    assert decode(msg(TICK_SUBJECT, b""), LIMITS) is None


@pytest.mark.parametrize("body", [b"{not json", b"[1]", b'{"op": "query", "sql": "x"}'])
def test_decode_refuses_bad_messages_with_a_clear_error(body: bytes) -> None:
    with pytest.raises(InvalidInput):
        decode(msg("qasino.publish.h", body), LIMITS)


def test_parse_ack_reply_both_forms() -> None:
    assert parse_ack_reply("$JS.ACK.QASINO.c.1.42.7.1700000000123456789.5") == (
        42,
        1700000000123456789,
        5,
    )
    assert parse_ack_reply("$JS.ACK.dom.hash.QASINO.c.1.42.7.1700000000123456789.5.tok") == (
        42,
        1700000000123456789,
        5,
    )
    assert parse_ack_reply("_INBOX.x") is None


def test_without_nats_nothing_nats_is_imported() -> None:
    """Building a whole server without --nats imports neither nats-py nor qasino.nats."""
    code = (
        "import sys, tempfile\n"
        "from twisted.internet.task import Clock\n"
        "from qasino.service import ServerConfig, make_service\n"
        "d = tempfile.mkdtemp()\n"
        "make_service(ServerConfig(identity='x', db_dir=d, views_file=None), Clock())\n"
        "bad = [m for m in sys.modules if m == 'nats' or m.startswith(('nats.', 'qasino.nats'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_server_flags_nats_needs_whole_second_generations_and_a_replica() -> None:
    from qasino.server_main import build_parser, config_from_args

    parser = build_parser()
    with pytest.raises(SystemExit, match="whole number of seconds"):
        config_from_args(parser.parse_args(["--nats", "nats://h:4222", "-g", "1.5"]))
    with pytest.raises(SystemExit, match="at least 1"):
        config_from_args(parser.parse_args(["--nats", "nats://h:4222", "--nats-replicas", "0"]))
    config = config_from_args(
        parser.parse_args(["--nats", "nats://a:1,nats://b:2", "--nats-replicas", "3", "-g", "5"])
    )
    assert (config.nats, config.nats_replicas) == ("nats://a:1,nats://b:2", 3)
    assert config_from_args(parser.parse_args([])).nats is None


def test_nats_without_the_client_library_is_one_clear_line() -> None:
    code = (
        "import sys; sys.modules['nats'] = None\n"
        "from qasino.server_main import build_parser, config_from_args\n"
        "config_from_args(build_parser().parse_args(['--nats', 'nats://h:4222']))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "qasino_server: --nats needs the NATS client library: pip install 'qasino[nats]' (nats-py)"
    )

"""The alert evaluator on a real store, driven without a reactor (a fake
clock, runners that run at once or when told)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from twisted.internet.task import Clock

from qasino.alerting import AlertEvaluator, AlertsSource, rules_source
from qasino.core.alerts import parse_alerts_yaml, rfc3339
from qasino.core.errors import QueryError, QueryRefused
from qasino.core.model import Publish, PublishOptions, Table
from qasino.engine import Engine
from qasino.store.store import Store
from tests.helpers import IDENTITY, ManualRunner

RULES = """\
- alert: Hot
  sql: SELECT host, temp FROM temps WHERE temp > 80
  key: host
  annotations: {summary: "{host} at {temp}"}
- alert: Broken
  sql: SELECT * FROM nowhere
- alert: Cold
  sql: SELECT host FROM temps WHERE temp < 0
  for: 2
"""


def publish_temps(store: Store, rows: list[list[Any]], now: float) -> None:
    table = Table("temps", ("host", "temp"), ("TEXT", "INTEGER"), rows)
    store.publish(Publish(table, PublishOptions(identity="agent")), now)


def make(engine: Engine, text: str = RULES, **kwargs: Any) -> tuple[AlertEvaluator, list[Any]]:
    frames: list[Any] = []
    evaluator = AlertEvaluator(
        engine, rules_source(parse_alerts_yaml(text)), publish=frames.append, **kwargs
    )
    return evaluator, frames


def rotate(engine: Engine, clock: Clock) -> Any:
    clock.advance(30)
    return engine.store.rotate(clock.seconds())


def table(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    for row in engine.store.query("SELECT * FROM qasino_server_alerts").rows:
        out.setdefault(str(row[0]), []).append(tuple(row))
    return out


def test_one_failing_alert_does_not_hold_the_others_and_rows_reach_the_next_snapshot(
    engine: Engine, clock: Clock
) -> None:
    evaluator, frames = make(engine)
    publish_temps(engine.store, [["h1", 90], ["h2", 20], ["h3", -5]], clock.seconds())
    info = rotate(engine, clock)
    evaluator.on_generation(info)
    assert evaluator.running is None and evaluator.rounds == 1
    assert [(f["alertname"], f["state"], f["labels"]) for f in frames] == [
        ("Hot", "firing", {"host": "h1"}),
        ("Cold", "pending", {"host": "h3"}),
    ]
    assert frames[0]["annotations"] == {"summary": "h1 at 90"}
    assert frames[0]["generation_number"] == info.generation_number
    # The snapshot being served predates the evaluation; the next one has it.
    assert table(engine) == {}
    rotate(engine, clock)
    rows = table(engine)
    assert rows["Broken"][0][2] == "error" and "no such table" in rows["Broken"][0][6]
    assert rows["Hot"][0][2] == "firing" and json.loads(rows["Hot"][0][1]) == {"host": "h1"}
    shown = engine.store.query("SHOW alerts;")
    assert shown.column_names[:4] == ("alertname", "state", "labels", "annotations")
    assert [r[:2] for r in shown.rows] == [
        ("Broken", "error"),
        ("Cold", "pending"),
        ("Hot", "firing"),
    ]
    assert evaluator.counts() == {
        ("Broken", "error"): 1,
        ("Cold", "pending"): 1,
        ("Hot", "firing"): 1,
    }


def test_alert_sql_gets_the_query_guard(engine: Engine) -> None:
    pin = engine.store.pin_snapshot()
    try:
        with pytest.raises(QueryRefused):
            engine.store.query_pinned(
                pin, "WITH x AS (SELECT 1) INSERT INTO qasino_server_info SELECT 1, 2, 3 FROM x"
            )
        with pytest.raises(QueryRefused):
            engine.store.query_pinned(pin, "SELECT 1; DROP TABLE qasino_server_info")
        with pytest.raises(QueryError):
            engine.store.query_pinned(pin, "SHOW tables")
    finally:
        engine.store.release_snapshot(pin)


def test_pinned_snapshot_outlives_rotations_until_unpinned(engine: Engine, clock: Clock) -> None:
    pin = engine.store.pin_snapshot()
    rotate(engine, clock)
    rotate(engine, clock)
    assert os.path.exists(pin.path)
    result = engine.store.query_pinned(pin, "SELECT generation_number FROM qasino_server_info")
    assert result.rows == [(pin.number,)]
    engine.store.release_snapshot(pin)
    assert not os.path.exists(pin.path)


def test_rules_run_one_at_a_time_a_slow_one_opens_a_second_lane_and_rounds_never_pile_up(
    store: Store, clock: Clock
) -> None:
    runner = ManualRunner()
    engine = Engine(store, runner, clock, IDENTITY)
    text = "".join(f"- alert: A{i}\n  sql: SELECT {i} AS n\n" for i in range(6))
    evaluator, frames = make(engine, text, slots=2)
    evaluator.on_generation(rotate(engine, clock))
    assert len(runner.pending) == 1  # one rule at a time
    clock.advance(0.3)  # it is slow: a second lane opens, the others go on
    assert len(runner.pending) == 2
    evaluator.on_generation(rotate(engine, clock))
    assert evaluator.skipped == 1
    # A query run meanwhile goes to the runner at once, not behind the alerts.
    engine.query("SELECT 1")
    assert len(runner.pending) == 3
    clock.advance(0.3)
    assert len(runner.pending) == 3  # never more than two lanes
    runner.run_one()  # the slow rule ends: back to one lane
    runner.run_one()
    runner.run_one()
    assert len(runner.pending) == 1
    while runner.pending:
        runner.run_one()
    assert evaluator.running is None and evaluator.rounds == 1
    assert sorted(f["alertname"] for f in frames) == [f"A{i}" for i in range(6)]


def test_broken_file_keeps_the_rules_and_adds_a_file_error_row(
    engine: Engine, clock: Clock, tmp_path: Any
) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text("- alert: One\n  sql: SELECT 1 AS one\n")
    source = AlertsSource(str(path))
    evaluator = AlertEvaluator(engine, source)
    evaluator.on_generation(rotate(engine, clock))
    path.write_text("- alert: [\n")
    assert evaluator.reload() is False
    evaluator.on_generation(rotate(engine, clock))
    rotate(engine, clock)
    rows = table(engine)
    assert rows["One"][0][2] == "firing"
    assert rows["alerts_file"][0][2] == "error" and "not valid YAML" in rows["alerts_file"][0][6]
    path.write_text("- alert: Two\n  sql: SELECT 2 AS two\n")
    assert evaluator.reload() is True
    evaluator.on_generation(rotate(engine, clock))
    rotate(engine, clock)
    rows = table(engine)
    assert "alerts_file" not in rows and rows["One"][0][2] == "resolved"
    assert rows["Two"][0][2] == "firing"


class _Response:
    """Just enough of an IResponse for readBody."""

    def __init__(self, code: int, body: bytes = b"") -> None:
        self.code = code
        self.phrase = b"OK"
        self.length = len(body)
        self.body = body

    def deliverBody(self, protocol: Any) -> None:
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseDone

        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


class _Agent:
    """Records each request's JSON body; answers when told."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, Any]] = []

    def request(self, method: bytes, uri: bytes, headers: Any, producer: Any) -> Any:
        from twisted.internet.defer import Deferred

        d: Deferred[Any] = Deferred()
        self.sent.append((json.loads(producer._inputFile.getvalue()), d))
        return d


def test_resolved_alert_is_sent_until_a_send_succeeds_and_firing_ones_every_time(
    engine: Engine, clock: Clock
) -> None:
    from twisted.internet.error import ConnectionRefusedError

    evaluator = AlertEvaluator(
        engine,
        rules_source(
            parse_alerts_yaml("- {alert: Hot, sql: SELECT host FROM temps WHERE temp > 80}")
        ),
        alertmanager_urls=["http://127.0.0.1:9"],
        generator_url=lambda: "http://q:1/alerts",
    )
    agent = _Agent()
    evaluator.senders[0].agent = agent  # type: ignore[assignment]

    def generation(rows: list[list[Any]]) -> None:
        publish_temps(engine.store, rows, clock.seconds())
        evaluator.on_generation(rotate(engine, clock))

    generation([["h1", 90]])
    ((body, d),) = agent.sent
    assert [a["labels"] for a in body] == [{"alertname": "Hot", "host": "h1"}]
    assert body[0]["generatorURL"] == "http://q:1/alerts?alertname=Hot"
    d.errback(ConnectionRefusedError())
    generation([])  # resolved; Alertmanager still down
    body, d = agent.sent[-1]
    assert [a["labels"]["host"] for a in body] == ["h1"]
    assert body[0]["endsAt"] == rfc3339(clock.seconds())  # when it resolved
    d.errback(ConnectionRefusedError())
    generation([])  # nothing fires; the resolved one is sent again
    body, d = agent.sent[-1]
    assert [a["labels"]["host"] for a in body] == ["h1"]
    d.callback(_Response(200))
    generation([])  # delivered: nothing left to send
    assert len(agent.sent) == 3
    assert evaluator.senders[0].failed == 2 and evaluator.senders[0].sent == 1


def test_alertmanager_url_is_repeatable_and_alerts_file_defaults_to_alerts_yaml() -> None:
    from qasino.server_main import build_parser, config_from_args

    args = build_parser().parse_args(
        ["--alertmanager-url", "http://a:9093", "--alertmanager-url", "http://b:9093/"]
    )
    config = config_from_args(args)
    assert config.alertmanager_urls == ("http://a:9093", "http://b:9093/")
    assert config.alerts_file == "alerts.yaml"
    off = config_from_args(build_parser().parse_args(["--alerts-file", ""]))
    assert off.alerts_file is None and off.alertmanager_urls == ()
    with pytest.raises(SystemExit, match="must be http"):
        config_from_args(build_parser().parse_args(["--alertmanager-url", "localhost:9093"]))


def test_one_sender_per_alertmanager(engine: Engine) -> None:
    evaluator = AlertEvaluator(
        engine, rules_source([]), alertmanager_urls=["http://a:9093", "http://b:9093/"]
    )
    assert [s.url for s in evaluator.senders] == [
        "http://a:9093/api/v2/alerts",
        "http://b:9093/api/v2/alerts",
    ]


def test_user_and_password_in_the_url_are_basic_auth_not_logged(engine: Engine) -> None:
    import base64

    evaluator = AlertEvaluator(
        engine, rules_source([]), alertmanager_urls=["https://ops:s%40cret@am.example:9443/am/"]
    )
    sender = evaluator.senders[0]
    assert sender.url == "https://am.example:9443/am/api/v2/alerts"
    assert sender.auth == b"Basic " + base64.b64encode(b"ops:s@cret")


def test_server_hooks_for_metrics_and_sighup(tmp_path: Any) -> None:
    from twisted.internet.testing import MemoryReactorClock

    from qasino.service import ServerConfig, make_service

    rules = tmp_path / "rules.yaml"
    rules.write_text("- {alert: One, sql: SELECT 1 AS one}\n")
    config = ServerConfig(
        identity="t",
        db_dir=str(tmp_path / "db"),
        views_file=None,
        alerts_file=str(rules),
        line_port=None,
        http_port=None,
        zmq_port=0,
        pubsub_port=0,
    )
    server = make_service(config, MemoryReactorClock())
    try:
        assert [r.alert for r in server.alerts.source.rules] == ["One"]
        rules.write_text("- {alert: Two, sql: SELECT 2 AS two}\n- [broken\n")
        assert server.reload_alerts() is False
        assert server.alert_counts() == {("alerts_file", "error"): 1}
        rules.write_text("- {alert: Two, sql: SELECT 2 AS two}\n")
        assert server.reload_alerts() is True
        assert [r.alert for r in server.alerts.source.rules] == ["Two"]
    finally:
        server.engine.store.close()

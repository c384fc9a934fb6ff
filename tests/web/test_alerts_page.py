"""The /alerts page, rendered in memory from a real evaluation (no reactor)."""

from __future__ import annotations

from twisted.internet.task import Clock

from qasino.alerting import AlertEvaluator, rules_source
from qasino.core.alerts import parse_alerts_yaml
from qasino.engine import Engine
from qasino.frontends.http import make_site
from qasino.ops import Dispatcher
from tests.web.test_pages import IMG_PAYLOAD, fetch

RULES = """\
- alert: Html
  sql: SELECT '<img src=x onerror=alert(1)>' AS payload
  annotations: {summary: "got {payload}"}
- alert: Missing
  sql: SELECT * FROM not_there
"""


def test_alerts_page_lists_instances_and_errors_escaped(
    dispatcher: Dispatcher, engine: Engine, clock: Clock
) -> None:
    evaluator = AlertEvaluator(engine, rules_source(parse_alerts_yaml(RULES)))
    engine.alerts = evaluator
    site = make_site(dispatcher)
    page = fetch(site, "/alerts")
    assert page.code == 200 and "not evaluated yet" in page.text
    clock.advance(30)
    evaluator.on_generation(engine.store.rotate(clock.seconds()))
    page = fetch(site, "/alerts")
    assert page.code == 200
    html = page.html
    header, *rows = html.table("alerts")
    assert header[:2] == ["alert", "state"]
    assert rows[0][:2] == ["Html", "firing"]
    assert f"got {IMG_PAYLOAD}" in rows[0][3]
    assert IMG_PAYLOAD not in page.text  # autoescaped
    _, *errors = html.table("alert-errors")
    assert errors[0][0] == "Missing" and "no such table" in errors[0][2]
    only = fetch(site, "/alerts?alertname=Missing").html
    assert "alerts" not in only.by_id and "alert-errors" in only.by_id
    assert 'href="/alerts"' in fetch(site, "/tables").text  # in the navigation


def test_alerts_page_without_an_evaluator_says_no_alerts(dispatcher: Dispatcher) -> None:
    page = fetch(make_site(dispatcher), "/alerts")
    assert page.code == 200 and "No alert is pending" in page.text

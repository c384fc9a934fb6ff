"""The repository's example alerts.yaml loads, and every rule runs against
the example views of views.conf and the CSV publisher agent's own tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.task import Clock

from qasino.alerting import AlertEvaluator, AlertsSource
from qasino.clients.csvpublisher import INFO_COLUMNS, INFO_TABLE, TABLES_COLUMNS, TABLES_TABLE
from qasino.core.alerts import load_alerts_file
from qasino.core.model import Publish, PublishOptions, Table
from qasino.core.views import load_views_file
from qasino.engine import Engine, SyncRunner
from qasino.store.store import Store, StoreConfig
from tests.helpers import IDENTITY

ROOT = Path(__file__).resolve().parents[1]


def test_example_alerts_file_parses_without_rule_errors() -> None:
    rules = load_alerts_file(ROOT / "alerts.yaml")
    assert len(rules) >= 4
    assert [r.alert for r in rules if r.error] == []


def _table(name: str, columns: Any, rows: list[list[Any]]) -> Table:
    types = {"text": "TEXT", "integer": "INTEGER", "real": "REAL"}
    return Table(name, tuple(c for c, _ in columns), tuple(types[t] for _, t in columns), rows)


def test_example_rules_run_on_the_example_views_and_agent_tables(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(1_700_000_000)
    store = Store(
        StoreConfig(db_dir=str(tmp_path / "db"), generation_duration_s=30),
        now=clock.seconds(),
        views=load_views_file(ROOT / "views.conf"),
    )
    try:
        engine = Engine(store, SyncRunner(), clock, IDENTITY)
        evaluator = AlertEvaluator(engine, AlertsSource(str(ROOT / "alerts.yaml")))
        info_rows = [["web1", int(clock.seconds()), 1, 1]]
        table_rows = [
            [
                "web1",
                "disks",
                clock.seconds(),
                0.01,
                1,
                1,
                "cannot read disks.csv",
                0,
                "/x/disks.csv",
            ]
        ]
        for _ in range(3):
            now = clock.seconds()
            for name, columns, rows in (
                (INFO_TABLE, INFO_COLUMNS, info_rows),
                (TABLES_TABLE, TABLES_COLUMNS, table_rows),
            ):
                store.publish(Publish(_table(name, columns, rows), PublishOptions("web1")), now)
            clock.advance(30)
            evaluator.on_generation(store.rotate(clock.seconds()))
        states = {(name, state) for name, _, state, *_ in evaluator.rows()}
        errors = [row for row in evaluator.rows() if row[2] == "error"]
        assert errors == []
        assert ("CsvPublisherTableFailing", "firing") in states
        assert not any(name in ("NoPublishers", "TableNotUpdated") for name, _ in states)
        failing = [r for r in evaluator.rows() if r[0] == "CsvPublisherTableFailing"]
        assert "cannot read disks.csv" in str(failing[0][5])
    finally:
        store.close()


def test_the_history_rule_of_docs_alerts_md_fires_for_the_host_whose_traffic_dropped(
    tmp_path: Path,
) -> None:
    import re

    import yaml

    text = (ROOT / "docs" / "alerts.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    rules = [r for b in blocks for r in yaml.safe_load(b) if "history." in r["sql"]]
    assert [r["alert"] for r in rules] == ["TrafficDropped"]
    store = Store(StoreConfig(db_dir=str(tmp_path / "db"), history=3), now=1_700_000_000.0)
    try:
        now = 1_700_000_000.0
        for k, (a, b) in enumerate([(100, 100), (110, 100), (120, 40)]):
            for host, value in (("a", a), ("b", b)):
                table = _table("net", [("host", "text"), ("bytes", "integer")], [[host, value]])
                store.publish(Publish(table, PublishOptions(identity=host)), now + k * 30 + 1)
            store.rotate(now + (k + 1) * 30)
        pinned = store.pin_snapshot()
        try:
            result = store.query_pinned(pinned, rules[0]["sql"])
        finally:
            store.release_snapshot(pinned)
        assert [tuple(r) for r in result.rows] == [("b", -60)]
    finally:
        store.close()

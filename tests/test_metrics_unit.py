"""Readiness and the metrics registry, on a real store with a fake clock."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from qasino import __version__
from qasino.engine import Engine
from qasino.metrics import READY_SLACK_S, ServerMetrics
from qasino.ops import Dispatcher


def samples(metrics: ServerMetrics) -> dict[str, float]:
    text = metrics.exposition()[0].decode()
    return {
        s.name + str(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_not_ready_before_a_rotation_then_ready_then_stale(engine: Engine, clock: Clock) -> None:
    metrics = ServerMetrics(engine, Dispatcher(engine))
    ready, reason = metrics.readiness()
    assert not ready and reason == "no snapshot taken yet since the server started"
    engine.rotate()
    assert metrics.readiness() == (True, "OK")
    duration = engine.snapshot_info().generation_duration_s
    clock.advance(2 * duration + READY_SLACK_S - 0.5)
    assert metrics.readiness()[0]
    clock.advance(1)
    ready, reason = metrics.readiness()
    assert not ready and "old (limit" in reason


def test_rotation_histogram_and_generation_gauge_follow_rotations(
    engine: Engine, clock: Clock
) -> None:
    metrics = ServerMetrics(engine, Dispatcher(engine))
    engine.rotate()
    clock.advance(30)
    engine.rotate()
    got = samples(metrics)
    assert got["qasino_rotation_duration_seconds_count[]"] == 2
    assert got["qasino_rotations_total[]"] == 2
    assert got["qasino_generation_number[]"] == engine.snapshot_info().generation_number
    assert got["qasino_snapshot_age_seconds[]"] == 0
    assert got[f"qasino_build_info[('version', '{__version__}')]"] == 1


def test_providers_fill_identities_and_alerts(engine: Engine) -> None:
    metrics = ServerMetrics(engine, Dispatcher(engine))
    assert "qasino_alerts" not in str(samples(metrics))
    metrics.set_identities_provider(lambda: {"live": 3, "stale": 1})
    metrics.set_alerts_provider(lambda: [("DiskFull", "firing", 2), ("DiskFull", "pending", 1)])
    got = samples(metrics)
    assert got["qasino_identities[('state', 'live')]"] == 3
    assert got["qasino_identities[('state', 'stale')]"] == 1
    assert got["qasino_alerts[('alertname', 'DiskFull'), ('state', 'firing')]"] == 2


def test_a_failing_provider_does_not_break_the_scrape(engine: Engine) -> None:
    metrics = ServerMetrics(engine, Dispatcher(engine))

    def broken() -> dict[str, int]:
        raise RuntimeError("boom")

    metrics.set_identities_provider(broken)
    got = samples(metrics)
    assert got["qasino_identities[('state', 'live')]"] == 0
    assert "qasino_generation_number[]" in got

"""The benchmark's verdict logic (bench/report.py, bench/ingest.py's fleet
bookkeeping): pure functions of the figures, no server needed.

The fleet target says "<= 24 s, all verified": a fleet round that lost an
acknowledged publish must miss however fast it was, and a figure
extrapolated from a smaller fleet (quick mode: 200 hosts, x50) must say so
in its table row, its verdict, ``fleet_fits_30s`` and the JSON.
"""

from __future__ import annotations

from typing import Any

from bench.ingest import FLEET_TABLES, fleet_fits, record_fleet_round
from bench.loadgen import LoadResult
from bench.report import Results, summary_json, table_rows

FULL_HOSTS = 10_000
QUICK_HOSTS = 200


def fleet_round(
    results: Results,
    hosts: int,
    seconds: float,
    *,
    missing: int = 0,
    errors: int = 0,
    timed_out: int = 0,
    sent: int | None = None,
    transport: str = "zmq",
) -> None:
    publishes = hosts * FLEET_TABLES if sent is None else sent
    acked = publishes - errors - timed_out
    result = LoadResult(
        sent=publishes, acked=acked, errors=errors, timed_out=timed_out, finished=seconds
    )
    record_fleet_round(results, transport, hosts, result, acked - missing)


def fleet_target(results: Results, transport: str = "zmq") -> dict[str, Any]:
    target: dict[str, Any] = summary_json(results, {})["targets"][
        f"fleet_{transport}_well_inside_30s"
    ]
    return target


def row_of(results: Results, label: str) -> list[str]:
    [row] = [r for r in table_rows(results) if r[0] == label]
    return row


def test_a_fleet_absorbed_in_time_with_every_publish_verified_passes() -> None:
    results = Results()
    for _ in range(3):
        fleet_round(results, FULL_HOSTS, 10.0)
    target = fleet_target(results)
    assert target["pass"] is True and target["value"] == 10.0
    assert target["extrapolated"] is None and target["unverified"] == []
    assert row_of(results, "fleet_absorb_s[zmq]")[1] == "10.0 s"
    assert row_of(results, "fleet_absorb_s[zmq]")[-1] == "pass"
    assert fleet_fits(results, ["zmq"]) == {
        "zmq": {"fits": True, "absorb_s": 10.0, "all_verified": True, "extrapolated": None}
    }


def test_one_acknowledged_publish_missing_fails_the_fleet_verdict_however_fast() -> None:
    """The old verdict looked at the time only: 10 s passed "<= 24 s, all
    verified" with an acknowledged publish missing from the snapshots."""
    results = Results()
    fleet_round(results, FULL_HOSTS, 10.0)
    fleet_round(results, FULL_HOSTS, 10.0, missing=1)
    fleet_round(results, FULL_HOSTS, 10.0)
    target = fleet_target(results)
    assert target["value"] <= 24.0
    assert target["pass"] is False
    assert target["unverified"] == ["1 of 100000 acknowledged publishes missing from the snapshots"]
    assert row_of(results, "fleet_absorb_s[zmq]")[-1] == "MISS (not all verified: 1 rounds)"
    fits = fleet_fits(results, ["zmq"])["zmq"]
    assert fits["fits"] is False and fits["all_verified"] is False
    assert any("not all verified" in note for note in results.notes)


def test_error_replies_or_timeouts_fail_the_fleet_verdict() -> None:
    for failure in ({"errors": 3}, {"timed_out": 2}):
        results = Results()
        fleet_round(results, FULL_HOSTS, 10.0, **failure)
        assert fleet_target(results)["pass"] is False, failure
        assert fleet_fits(results, ["zmq"])["zmq"]["fits"] is False


def test_the_other_transport_keeps_its_own_verdict() -> None:
    results = Results()
    fleet_round(results, FULL_HOSTS, 10.0, missing=5, transport="http")
    fleet_round(results, FULL_HOSTS, 10.0, transport="zmq")
    assert fleet_target(results, "http")["pass"] is False
    assert fleet_target(results, "zmq")["pass"] is True


def test_a_slow_fleet_misses_on_time() -> None:
    results = Results()
    fleet_round(results, FULL_HOSTS, 25.0)
    target = fleet_target(results)
    assert target["pass"] is False and target["unverified"] == []
    assert fleet_fits(results, ["zmq"])["zmq"]["fits"] is True  # 25 s <= 30 s


def test_quick_fleet_is_marked_extrapolated_x50_wherever_it_is_shown() -> None:
    results = Results()
    for _ in range(3):
        fleet_round(results, QUICK_HOSTS, 0.2)  # 2,000 publishes in 0.2 s, x50: 10 s
    mark = "extrapolated x50 from 200 hosts"
    row = row_of(results, "fleet_absorb_s[zmq]")
    assert row[1] == f"10.0 s ({mark})"
    assert row[-1] == f"pass ({mark})"
    target = fleet_target(results)
    assert target["pass"] is True and target["extrapolated"] == mark
    assert fleet_fits(results, ["zmq"])["zmq"]["extrapolated"] == mark
    summary = summary_json(results, {})
    assert summary["extrapolated"] == {"fleet_absorb_s[zmq]": mark}
    # The rate itself was measured, not extrapolated.
    assert row_of(results, "fleet_tables_per_s[zmq]")[1] == "10,000 /s"


def test_a_fleet_cut_off_by_the_generation_time_is_marked_extrapolated_from_the_rate() -> None:
    results = Results()
    fleet_round(results, FULL_HOSTS, 30.0, sent=60_000)
    mark = "extrapolated from the rate: time ran out"
    assert row_of(results, "fleet_absorb_s[zmq]")[1] == f"50.0 s ({mark})"
    assert fleet_target(results)["extrapolated"] == mark
    assert fleet_target(results)["pass"] is False

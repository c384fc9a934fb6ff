"""The peer section's pure parts (bench/peer.py, bench/run.py key selection,
bench/report.py's verdict): wrk's output, the Gensig window and the target
"Qasino >= 1.0x Pushgateway no-check, all verified". No server needed."""

from __future__ import annotations

import pytest

from bench.daemon import BenchError, Gensig
from bench.peer import KEYS, RATIO_KEY, parse_wrk, pushgateway_payload, qasino_payload
from bench.report import Results, summary_json
from bench.run import selected_keys

WRK_STDOUT = """Running 3s test @ http://127.0.0.1:40123
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.91ms    2.10ms  31.20ms   91.02%
    Req/Sec     4.12k   310.55     4.60k    70.00%
  12360 requests in 3.00s, 1.61MB read
Requests/sec:   4118.95
Transfer/sec:    548.21KB
PEER {"requests":12360,"acked":12350,"refused":10,"sent":12376,"duration_us":3000721,\
"connect_errors":0,"read_errors":1,"write_errors":0,"status_errors":10,"timeouts":2,\
"latency_p50_us":3702,"latency_p99_us":12480}
"""


def test_parse_wrk_reads_the_peer_line() -> None:
    s = parse_wrk(WRK_STDOUT)
    assert (s.requests, s.acked, s.refused, s.sent) == (12360, 12350, 10, 12376)
    assert s.duration_s == pytest.approx(3.000721)
    assert s.socket_errors == 3  # read errors and timeouts; status errors are refusals
    assert (s.latency_p50_ms, s.latency_p99_ms) == (3.702, 12.48)
    assert s.acked_per_s == pytest.approx(12350 / 3.000721)


def test_parse_wrk_without_a_peer_line_is_an_error() -> None:
    with pytest.raises(BenchError, match="no PEER line"):
        parse_wrk("Usage: wrk <options> <url>\n")


@pytest.mark.parametrize(
    "line", ['PEER {"requests":1}', "PEER not json", 'PEER {"requests":"x","acked":1}']
)
def test_parse_wrk_with_a_broken_peer_line_is_an_error(line: str) -> None:
    with pytest.raises(BenchError, match="unreadable wrk summary"):
        parse_wrk(WRK_STDOUT.split("PEER")[0] + line + "\n")


def test_payloads_carry_ten_values() -> None:
    assert qasino_payload().count(".example.com") == 10
    assert qasino_payload().endswith("]]}}")
    lines = pushgateway_payload().splitlines()
    assert len(lines) == 10 and all(line.startswith("peer_value{") for line in lines)


def test_gensig_serves_the_generation_before_the_one_filling() -> None:
    signal_ = Gensig(received=0.0, generation=1_000)
    assert signal_.serves(998, generation_s=2.0)
    assert signal_.serves(999, generation_s=1.0)
    assert not signal_.serves(1_000, generation_s=2.0)  # the one filling now
    assert not signal_.serves(990, generation_s=2.0)  # long gone


def test_only_the_ratio_measures_qasino_and_no_check() -> None:
    assert selected_keys(RATIO_KEY) == {KEYS["qasino"], KEYS["no_check"]}
    assert KEYS["no_check"] in selected_keys(KEYS["qasino"])
    assert selected_keys(KEYS["default"]) == {KEYS["default"]}


def peer_results(qasino: float, no_check: float) -> Results:
    results = Results()
    results.add(KEYS["qasino"], qasino)
    results.add(KEYS["no_check"], no_check)
    return results


def test_verdict_against_pushgateway_no_check() -> None:
    target = summary_json(peer_results(5_000, 13_000), {})["targets"]
    assert target["peer_qasino_vs_pushgateway_no_check"]["pass"] is False
    out = summary_json(peer_results(14_000, 13_000), {})
    assert out["targets"]["peer_qasino_vs_pushgateway_no_check"]["pass"] is True
    assert out["ratios"]["peer_qasino_per_s/peer_pushgateway_no_check_per_s"] == pytest.approx(
        14_000 / 13_000, abs=1e-4
    )


def test_a_lost_acknowledged_publish_misses_however_fast() -> None:
    results = peer_results(20_000, 13_000)
    results.unverify((KEYS["qasino"], None), "round 0: 1 acknowledged publishes missing")
    verdict = summary_json(results, {})["targets"]["peer_qasino_vs_pushgateway_no_check"]
    assert verdict["pass"] is False and len(verdict["unverified"]) == 1

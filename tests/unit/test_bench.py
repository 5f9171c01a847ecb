"""Pure functions of ``iotctl bench``: wrk output parsing, the Lua script, the table."""

from __future__ import annotations

import pytest

from iot.cli.bench import (
    POLL_GOAL,
    LatencyRecord,
    WrkResult,
    delivery_summary,
    latency_ms,
    lua_script,
    note_delivery,
    parse_wrk,
    percentile,
    render_poll_table,
    render_table,
)

WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:8080/sensors
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   123.45ms   50.00ms   1.20s    80.00%
    Req/Sec   260.00     40.00   400.00     70.00%
  Latency Distribution
     50%  118.29ms
     75%  150.00ms
     90%  200.00ms
     99%    1.02s
  2641 requests in 5.10s, 500.00KB read
  Socket errors: connect 0, read 1, write 0, timeout 3
  Non-2xx or 3xx responses: 12
Requests/sec:    518.05
Transfer/sec:     98.00KB
bench-status 201 2629
bench-status 429 12
bench-duration-us 5097991
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [("812.00us", 0.812), ("1.20ms", 1.2), ("2.01s", 2010.0), ("1.00m", 60_000.0)],
)
def test_latency_ms_converts_wrk_units(text: str, expected: float) -> None:
    assert latency_ms(text) == pytest.approx(expected)


def test_latency_ms_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        latency_ms("fast")


def test_parse_wrk_reads_every_figure() -> None:
    r = parse_wrk(WRK_OUTPUT)
    assert r.requests_per_s == 518.05
    assert r.p50_ms == pytest.approx(118.29)
    assert r.p99_ms == pytest.approx(1020.0)
    assert r.requests == 2641
    assert r.duration_s == pytest.approx(5.097991)
    assert r.non_2xx == 12
    assert r.socket_errors == 4
    assert r.statuses == {201: 2629, 429: 12}


def test_parse_wrk_without_optional_lines() -> None:
    minimal = (
        "     50%  9.34ms\n     99%  184.63ms\n  100 requests in 2.00s, 1KB read\n"
        "Requests/sec:   50.00\n"
    )
    r = parse_wrk(minimal)
    assert (r.non_2xx, r.socket_errors, r.statuses) == (0, 0, {})
    assert r.requests == 100
    assert r.duration_s == pytest.approx(2.0)


def test_parse_wrk_fails_clearly_on_missing_figures() -> None:
    with pytest.raises(ValueError, match="Requests/sec"):
        parse_wrk("unable to connect to 127.0.0.1:8080 Connection refused\n")


def test_lua_script_embeds_tokens_and_escapes_formats() -> None:
    script = lua_script("POST", "/sensors", ["dvc_a", "dvc_b"], batch=10, base=1_700_000_000)
    assert 'local tokens = {"dvc_a", "dvc_b"}' in script
    assert '"POST", "/sensors", 10, 1700000000' in script
    assert 'os.date("!%Y-%m-%dT%H:%M:%S"' in script
    assert '"ts":"%s.%06dZ"' in script
    assert "%%" not in script


def test_render_table_shows_ratios_and_missing_rows() -> None:
    ping = WrkResult(1000.0, 1.0, 10.0, 5000, 5.0, statuses={200: 5000})
    post = WrkResult(100.0, 10.0, 50.0, 500, 5.0, non_2xx=3, statuses={201: 497, 429: 3})
    report = {
        "ping": vars(ping),
        "ingest": {**vars(post), "readings_per_s": 994.0},
        "end_to_end": {
            "expected": 4970,
            "rows": 4960,
            "missing": 10,
            "extra": 0,
            "seconds": 6.0,
            "drain_s": 1.0,
            "readings_per_s": 826.7,
        },
        "ratios": {"requests_per_s": 0.1, "p50": 10.0, "p99": 5.0},
    }
    table = render_table(report)
    assert "requests/s" in table and "0.10" in table and "10.00" in table
    assert "missing 10" in table
    assert "429 rate limited" in table


def test_lua_script_keeps_a_query_string_in_the_path() -> None:
    script = lua_script("GET", "/commands?wait=0", ["dvc_a"])
    assert '"GET", "/commands?wait=0", 1, 0' in script


@pytest.mark.parametrize(
    ("q", "expected"), [(50, 5.0), (90, 9.0), (99, 10.0), (100, 10.0), (1, 1.0)]
)
def test_percentile_is_nearest_rank(q: float, expected: float) -> None:
    assert percentile([float(v) for v in range(10, 0, -1)], q) == expected


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 50) is None


def _record() -> LatencyRecord:
    """Three commands sent 1 s apart; seq 0 and 1 arrive, seq 2 (accepted) never does,
    seq 3 failed to send."""
    r = LatencyRecord()
    for seq in range(4):
        r.target[seq], r.sent[seq], r.answered[seq] = seq, float(seq), seq + 0.01
        r.post_status[seq] = 201
    r.post_status[3] = 0
    r.received = {0: 0.02, 1: 1.05}
    r.acks_ok, r.polls = 2, 7
    return r


def test_delivery_summary_counts_and_percentiles() -> None:
    s = delivery_summary(_record(), 30)
    assert (s["commands"], s["accepted"], s["delivered"], s["missing"]) == (4, 3, 2, 1)
    assert s["post_statuses"] == {201: 3, 0: 1}
    assert s["p50_ms"] == pytest.approx(20.0)
    assert s["max_ms"] == pytest.approx(50.0)
    assert s["post_p50_ms"] == pytest.approx(10.0)


def test_delivery_summary_without_deliveries() -> None:
    s = delivery_summary(LatencyRecord(), 30)
    assert s["p50_ms"] is None and s["max_ms"] is None and s["missing"] == 0


def test_note_delivery_keeps_the_first_arrival_and_flags_anomalies() -> None:
    r = LatencyRecord(target={5: 1})
    note_delivery(r, 1, {"id": "a", "name": "bench", "args": {"seq": 5}, "attempt": 1}, 2.0)
    note_delivery(r, 1, {"id": "a", "name": "bench", "args": {"seq": 5}, "attempt": 2}, 3.0)
    note_delivery(r, 2, {"id": "b", "name": "bench", "args": {"seq": 5}, "attempt": 1}, 4.0)
    note_delivery(r, 1, {"id": "c", "name": "other", "args": {}, "attempt": 1}, 5.0)
    assert r.received == {5: 2.0}
    assert (r.duplicates, r.redeliveries, r.misrouted) == (2, 1, 1)


def test_render_poll_table_shows_ratio_goal_and_latency() -> None:
    ping = WrkResult(1000.0, 1.0, 10.0, 5000, 5.0, statuses={200: 5000})
    idle = WrkResult(800.0, 1.5, 12.0, 4000, 5.0, statuses={204: 3990, 429: 10}, non_2xx=10)
    report = {
        "config": {"waiters": 1000, "rate": 30.0},
        "goal": POLL_GOAL,
        "ping": vars(ping),
        "idle_poll": vars(idle),
        "ratios": {"requests_per_s": 0.8, "p50": 1.5, "p99": 1.2},
        "latency": delivery_summary(_record(), 30),
    }
    table = render_poll_table(report)
    assert "GET /commands?wait=0" in table and "0.80" in table
    assert "goal ≥ 0.70: meets it" in table
    assert "429 rate limited" in table and "10" in table
    assert "1,000 devices waiting" in table
    assert "missing 1 after a 30.00 s drain" in table
    report["ratios"]["requests_per_s"] = 0.5
    assert "BELOW it" in render_poll_table(report)

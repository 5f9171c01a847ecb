"""``iotctl bench`` (loadtest/bench.py): wrk's results read as JSON from the Lua ``done()``
hook, the bench's tables and the long-poll bookkeeping; then real wrk for a second against
GET /ping through nginx (the Lua hook itself), and a one-second ``iotctl bench ingest``."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from iot.settings import get_settings
from loadtest import wrk
from loadtest.bench import POLL_GOAL, app, render_poll_table, render_table
from loadtest.pollbench import (
    LONG_POLL_WAIT,
    LatencyRecord,
    delivery_summary,
    first_wait,
    note_delivery,
    percentile,
)
from loadtest.wrk import WrkError, WrkResult, read_result, result_from_json

# What bench.lua's done() writes (durations in microseconds).
DONE_JSON = {
    "duration_us": 5097991,
    "requests": 2641,
    "bytes": 512000,
    "errors": {"connect": 0, "read": 1, "write": 0, "status": 12, "timeout": 3},
    "latency_us": {
        "min": 812,
        "mean": 123450.5,
        "max": 1200000,
        "stdev": 50000.0,
        "p50": 118290,
        "p75": 150000,
        "p90": 200000,
        "p99": 1020000,
    },
    "statuses": {"201": 2629, "429": 12},
}


def test_results_come_from_the_json_of_the_lua_done_hook(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(DONE_JSON) + "\n")
    r = read_result(path)
    assert r.requests_per_s == pytest.approx(2641 / 5.097991, abs=0.01)
    assert r.p50_ms == pytest.approx(118.29)
    assert r.p99_ms == pytest.approx(1020.0)
    assert r.requests == 2641
    assert r.duration_s == pytest.approx(5.097991)
    assert r.non_2xx == 12
    assert r.socket_errors == 4
    assert r.statuses == {201: 2629, 429: 12}


def test_results_without_answers_have_no_statuses() -> None:
    r = result_from_json({**DONE_JSON, "statuses": {}})
    assert r.statuses == {}


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "no readable results"),  # wrk ended before done() ran
        ("Running 1s test @ http://127.0.0.1:8080/ping", "no readable results"),
        ("[]", "not a JSON object"),
        (json.dumps({k: v for k, v in DONE_JSON.items() if k != "latency_us"}), "latency_us"),
    ],
)
def test_unreadable_results_fail_clearly(tmp_path: Path, content: str | None, match: str) -> None:
    path = tmp_path / "result.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(WrkError, match=match):
        read_result(path)


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


# ----- against the running stack, through nginx -----


@pytest.mark.integration
def test_real_wrk_for_a_second_against_ping_reports_through_the_lua_hook() -> None:
    get_settings.cache_clear()
    base_url = get_settings().base_url
    tokens = [f"bench-ping-{n}" for n in range(50)]
    r = wrk.run(base_url, "GET", "/ping", tokens, connections=4, duration=1)
    assert r.requests > 0 and r.requests_per_s > 0
    assert 0.9 <= r.duration_s < 5
    # answers counted by response() in every thread, summed in done(), match wrk's own count
    # (a 502 while a replica restarts, or a timeout on a busy machine, may come too)
    assert sum(r.statuses.values()) == r.requests and r.statuses.get(200, 0) > 0
    assert r.non_2xx == sum(n for status, n in r.statuses.items() if status >= 400)
    assert 0 < r.p50_ms <= r.p99_ms


@pytest.mark.integration
def test_bench_ingest_for_a_second_stores_every_accepted_reading() -> None:
    out = CliRunner().invoke(
        app, ["ingest", "--duration", "1", "--connections", "4", "--devices", "20", "--batch", "3"]
    )
    assert out.exit_code == 0, out.output
    assert "GET /ping" in out.output and "POST /sensors" in out.output
    assert "readings/s POST -> Postgres" in out.output
    assert "(missing 0;" in out.output


def test_first_long_polls_end_spread_over_the_wait_not_all_at_once() -> None:
    waits = [first_wait(n, 1000) for n in range(1000)]
    assert min(waits) == 1 and max(waits) == LONG_POLL_WAIT
    # every second of the wait ends about the same share of the polls: no burst
    per_second = [waits.count(w) for w in range(1, LONG_POLL_WAIT + 1)]
    assert max(per_second) <= 2 * min(per_second)
    assert first_wait(0, 1) == 1


def test_cpu_per_request_per_process_and_for_the_stack() -> None:
    from loadtest.bench import cpu_per_request

    before = {"api-1": 10.0, "nginx": 2.0, "worker-sensors": 5.0}
    after = {"api-1": 10.5, "nginx": 2.1, "worker-sensors": 4.0, "redis": 1.0}
    out = cpu_per_request(before, after, 1000)
    # worker-sensors went backwards (restarted) and redis was not seen before: left out
    assert out == {"api-1": 0.5, "nginx": 0.1, "stack": 0.6}
    assert cpu_per_request(before, after, 0) == {}


@pytest.mark.integration
def test_bench_commit_for_two_seconds_reports_latency_and_postgres_cpu(tmp_path: Path) -> None:
    figures = tmp_path / "commit.json"
    out = CliRunner().invoke(
        app, ["commit", "--seconds", "2", "--clients", "2", "--out", str(figures)]
    )
    assert out.exit_code == 0, out.output
    report = json.loads(figures.read_text())
    assert report["commits"] > 0 and report["mode"] in ("single", "ha")
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    server = [
        ms
        for name, ms in report["cpu_ms_per_commit"].items()
        if name == "postgres" or name.startswith("patroni-")
    ]
    assert sum(server) > 0  # the server's work is seen
    with psycopg.connect(get_settings().database_direct_url) as conn:  # the scratch is gone
        left = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'iot_commitbench%'"
        ).fetchone()
    assert left == (0,)

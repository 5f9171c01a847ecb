"""Pure functions of ``iotctl bench``: wrk output parsing, the Lua script, the table."""

from __future__ import annotations

import pytest

from iot.cli.bench import WrkResult, latency_ms, lua_script, parse_wrk, render_table

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

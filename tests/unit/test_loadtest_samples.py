"""What a load run measures: per-second samples aggregated into percentiles, and CPU per
component from process tables (restarts skipped, children summed)."""

from __future__ import annotations

from loadtest import cpu, samples


def test_recorder_buckets_per_second_and_aggregate_percentiles():
    rec = samples.Recorder("n1")
    for i in range(100):
        rec.record(1000.2, "POST", "/sensors", i + 1, "201", False)
    rec.record(1001.5, "POST", "/sensors", 3000, "503", True)
    rec.record(1001.7, "COMMAND", "end-to-end", 40, "ok", False)
    assert [r["t"] for r in rec.drain(now=1001.9)] == [1000]  # second 1001 is not finished
    rows = rec.drain()
    rows = [
        {
            "t": 1000,
            "method": "POST",
            "name": "/sensors",
            "node": "n1",
            "count": 100,
            "failures": 0,
            "statuses": {"201": 100},
            "hist": {str(i + 1): 1 for i in range(100)},
        },
    ] + rows
    agg = samples.aggregate(rows, 1000, 1002)
    sensors = agg["POST /sensors"]
    assert sensors["count"] == 101 and sensors["failures"] == 1
    assert sensors["statuses"] == {"201": 100, "503": 1}
    assert sensors["p50"] == 51 and sensors["p99"] == 100 and sensors["max"] == 3000
    assert sensors["rps"] == 50.5
    assert agg["total"]["count"] == 101  # the COMMAND entry is not a request
    assert agg["COMMAND end-to-end"]["p99"] == 40
    assert samples.rounded_ms(147.4) == 150 and samples.rounded_ms(3432) == 3400


# ----- CPU windows -----


def test_cores_per_component_skip_restarts_and_count_the_machine():
    rows = [
        {
            "t": 0,
            "cpu": {"api-1": 10.0, "pg": 5.0},
            "pids": {"api-1": 1, "pg": 2},
            "busy": 0,
            "total": 0,
            "cpus": 2,
        },
        {
            "t": 10,
            "cpu": {"api-1": 15.0, "pg": 6.0},
            "pids": {"api-1": 1, "pg": 2},
            "busy": 1000,
            "total": 2000,
            "cpus": 2,
        },
        {
            "t": 20,
            "cpu": {"api-1": 1.0, "pg": 7.0},
            "pids": {"api-1": 9, "pg": 2},
            "busy": 2000,
            "total": 4000,
            "cpus": 2,
        },
        {
            "t": 30,
            "cpu": {"api-1": 6.0, "pg": 8.0},
            "pids": {"api-1": 9, "pg": 2},
            "busy": 3000,
            "total": 6000,
            "cpus": 2,
        },
    ]
    used = cpu.cores(rows, 0, 30)
    assert used["api-1"] == 0.5  # 10 s of CPU over the 20 s without a restart
    assert used["pg"] == 0.1
    assert used["machine"] == 1.0


def test_restarts_are_pid_changes():
    rows = [
        {"t": 1, "pids": {"api-1": 5, "pg": 7}},
        {"t": 2, "pids": {"api-1": 5, "pg": 7}},
        {"t": 3, "pids": {"api-1": 9, "pg": 7}},
    ]
    assert cpu.restarts(rows) == [{"component": "api-1", "t": 3, "pid": 9}]


def test_tree_seconds_sums_descendants():
    table = {1: (0, 1.0), 2: (1, 2.0), 3: (2, 4.0), 4: (0, 8.0)}
    assert cpu.tree_seconds(table, 1) == 7.0
    assert cpu.tree_seconds(table, 5) is None

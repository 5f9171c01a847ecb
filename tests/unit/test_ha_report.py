"""The failover bench's arithmetic (``iot.ha.report``) and its reading of client errors
(``iot.ha.writer.error_class``): no services, no namespaces."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from iot.ha import report
from iot.ha.writer import error_class

OLD, NEW = "10.77.0.11", "10.77.0.12"


def _ok(seq: int, t: float, server: str = OLD) -> dict[str, object]:
    return {"seq": seq, "sent": t - 0.01, "done": t, "server": server, "error": ""}


def _failed(seq: int, t: float, error: str = "OperationalError: timeout") -> dict[str, object]:
    return {"seq": seq, "sent": t - 1, "done": t, "server": "", "error": error}


def test_failover_is_last_ack_before_to_first_ack_after_on_the_new_primary() -> None:
    attempts = [_ok(1, 99.0), _ok(2, 99.5), _failed(3, 103.0), _failed(0, 105.0),
                _ok(4, 112.5, NEW), _ok(5, 113.0, NEW)]
    s = report.summarize(attempts, 100.0, OLD, present={1, 2, 4, 5})
    assert s["failover_s"] == 13.0
    assert s["longest_gap_s"] == 13.0
    assert s["resumed_on"] == NEW and s["resumed_on_old_primary"] is False
    assert s["acked_by_after_fault"] == [NEW]
    assert (s["writes_acked"], s["writes_failed"], s["connect_failures"]) == (4, 1, 1)
    assert s["errors"] == {"OperationalError: timeout": 2}
    assert s["lost"] == [] and s["committed_unacked"] == 0
    assert s["fencing"] is None


def test_acknowledged_rows_missing_afterwards_are_lost_and_failed_ones_present_counted() -> None:
    attempts = [_ok(1, 99.0), _ok(2, 99.9), _failed(3, 103.0), _ok(4, 110.0, NEW)]
    s = report.summarize(attempts, 100.0, OLD, present={1, 3, 4})
    assert s["lost"] == [2]
    restarted_then_replaced = [_ok(1, 99.0), _ok(2, 101.0), _ok(3, 102.0, NEW)]
    s2 = report.summarize(restarted_then_replaced, 100.0, OLD, present={1, 3})
    assert s2["acked_by_after_fault"] == [OLD, NEW] and s2["lost"] == [2]
    assert s["committed_unacked"] == 1  # seq 3: the client saw an error, the row is there


def test_writes_that_never_resume_have_no_failover_time() -> None:
    s = report.summarize([_ok(1, 99.0), _failed(2, 101.0)], 100.0, OLD, present={1})
    assert s["failover_s"] is None and s["resumed_on"] is None


def test_fencing_counts_what_the_cut_off_primary_accepted_after_the_cut() -> None:
    probe = [
        {"t": 99.0, "done": 99.0, "result": "ok"},  # before the cut: not counted
        {"t": 100.2, "done": 100.2, "result": "ok"},
        {"t": 101.0, "done": 103.0, "result": "local-only"},
        {"t": 121.0, "done": 121.0, "result": "OperationalError: connection refused"},
        {"t": 122.0, "done": 122.0, "result": "OperationalError: connection refused"},
    ]
    f = report.fencing(probe, 100.0)
    assert f == {"acked_after_cut": 1, "local_only_after_cut": 1, "accepting_for_s": 3.0,
                 "refusing_after_s": 21.0,
                 "refusals": {"OperationalError: connection refused": 2}}
    assert report.fencing([{"t": 99.0, "done": 99.0, "result": "ok"}], 100.0) is None
    # after the link came back: not the cut-off primary's doing any more
    assert report.fencing(probe, 100.0, healed_at=101.0)["local_only_after_cut"] == 0


def test_the_report_is_markdown_and_json(tmp_path: Path) -> None:
    summary = report.summarize([_ok(1, 99.0), _ok(2, 110.0, NEW)], 100.0, OLD, {1, 2},
                               [{"t": 101.0, "done": 101.0, "result": "ReadOnly: x"}])
    results = [
        {"engine": "patroni", "mode": "sync", "fault": "cut", "summary": summary,
         "rejoin": "standby 5 s after the link came back", "notes": ["a note"]},
        {"engine": "pg_auto_failover", "mode": "sync", "fault": "kill", "error": "no primary"},
    ]
    path = report.write(tmp_path, results, {"started": "now", "rate": 20})
    text = path.read_text()
    assert "| patroni | sync | cut | 11.0 |" in text
    assert "standby (promoted)" in text and "no writes accepted" in text
    assert "failed: no primary" in text and "a note" in text
    assert json.loads((tmp_path / "report.json").read_text())["results"][0]["engine"] == "patroni"


@pytest.mark.parametrize(("exc", "expected"), [
    (psycopg.OperationalError('connection to server at "10.77.0.11", port 6451 failed: '
                              "timeout expired\nconnection to server at \"10.77.0.12\" ... "
                              "server is in hot standby mode"), "OperationalError: timeout"),
    (psycopg.OperationalError("connection failed: connection to server at \"10.77.0.12\", "
                              "port 6452 failed: session is read-only"),
     "OperationalError: no read-write server"),
    (psycopg.OperationalError("connection refused"), "OperationalError: connection refused"),
    (psycopg.OperationalError("server closed the connection unexpectedly"),
     "OperationalError: connection lost"),
    (psycopg.OperationalError("something else entirely"),
     "OperationalError: something else entirely"),
])
def test_client_errors_are_counted_by_their_gist(exc: Exception, expected: str) -> None:
    assert error_class(exc) == expected

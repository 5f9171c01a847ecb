"""The chaos results table sums what SREs read first: loss over every kind of item."""

from __future__ import annotations

from chaos import report


def _report(name: str, lost: int, alert_at: float | None) -> dict:
    return {
        "experiment": name,
        "fault_seconds": 10.0,
        "ledger": {"readings_accepted": 700, "commands_accepted": 90},
        "counts": {
            "commands": {"lost": 0, "duplicated": 1, "unexpected": 0},
            "readings": {"lost": lost, "duplicated": 0, "unexpected": 2},
            "command_log": {"lost": 0, "duplicated": 0, "unexpected": 0},
        },
        "error_causes": {"commands: 503": 4, "polls: ReadTimeout": 1},
        "recovery_seconds": 3.5,
        "time_to_detect": {"PostgresDown": alert_at},
    }


def test_summary_table_sums_counts_and_names_missed_alerts():
    table = report.summary_table([_report("pg-a", 3, 31.0), _report("pg-b", 0, None)])
    rows = table.splitlines()
    assert len(rows) == 4
    assert rows[2] == "| pg-a | 10 | 700 | 90 | 3 | 1 | 2 | 5 | 3.5 | PostgresDown 31.0 s |"
    assert rows[3].endswith("| 0 | 1 | 2 | 5 | 3.5 | PostgresDown not fired |")


def test_the_report_names_alerts_still_firing_after_the_recovery_window():
    r = {
        **_report("rabbitmq-down", 0, 17.5),
        "title": "RabbitMQ unreachable",
        "method": [{"action": "proxy_disable", "target": "rabbitmq"}],
        "recovery_bound_seconds": 45.0,
        "expected_alerts": ["RabbitMQDown"],
        "alerts_fired": {"RabbitMQDown": 17.5, "APIHighErrorRate": 40.0},
        "alerts_after_recovery": {
            "left_firing": ["APIHighErrorRate"],
            "since_before": ["CommandsDead"],
            "by_design": [],
            "seconds_after_rollback": 45.2,
        },
        "problems": ["alert(s) still firing 45.2 s after the rollback: APIHighErrorRate"],
    }
    for counts in r["counts"].values():
        counts["accepted"] = 1
    text = report.markdown(r)
    assert (
        "- still firing 45.2 s after the rollback, the end of the recovery window: "
        "APIHighErrorRate\n  - firing since before the fault, not counted: CommandsDead\n"
    ) in text
    silent = {**r, "alerts_after_recovery": {**r["alerts_after_recovery"], "left_firing": []}}
    assert "the end of the recovery window: none" in report.markdown(silent)

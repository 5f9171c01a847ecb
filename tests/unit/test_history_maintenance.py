"""What the history maintenance relies on outside itself, checked without a database."""

from __future__ import annotations

import re
from datetime import date

from prometheus_client import CollectorRegistry

from iot import maintenance
from iot.commands import cleanup, lifecycle
from iot.stack import setup as stack_setup


def test_the_retention_deletes_every_final_status_and_only_those() -> None:
    assert set(cleanup.FINISHED) == set(lifecycle.TERMINAL)


def test_the_partial_index_covers_exactly_what_the_retention_asks_for() -> None:
    # The planner uses a partial index only when the query's predicate implies the index's.
    text = (stack_setup.MIGRATIONS / "0005_commands_retention.sql").read_text()
    predicate = re.search(r"WHERE status IN \(([^)]*)\)", text)
    assert predicate is not None
    assert f"({predicate.group(1)})" == cleanup._FINISHED_SQL


def test_partition_names_sort_by_day() -> None:
    days = [date(2026, 12, 31), date(2027, 1, 1), date(2026, 2, 3)]
    names = [maintenance.partition_name(d) for d in days]
    assert sorted(names) == [maintenance.partition_name(d) for d in sorted(days)]
    assert names[0] == "readings_p20261231"


def _exported(measured: maintenance.Measured) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(measured)
    return {sample.name: sample.value for family in registry.collect() for sample in family.samples}


def test_a_process_exports_only_what_its_own_rounds_measured() -> None:
    # The sensors workers and Flower load the module but run no round: no 0 that an alert
    # taking the minimum over workers would read as "no partitions ahead".
    measured = maintenance.Measured()
    assert _exported(measured) == {}
    measured.set(maintenance.DAYS_AHEAD, 7)
    measured.set(maintenance.LAST_SUCCESS, 1_796_000_000.0)
    assert _exported(measured) == {
        maintenance.DAYS_AHEAD: 7.0,
        maintenance.LAST_SUCCESS: 1_796_000_000.0,
    }

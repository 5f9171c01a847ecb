"""Shared fixtures. Integration tests run against the stack that `iotctl up` started."""

from __future__ import annotations

import pytest

from tests.integration import containers


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Here, not in tests/integration: `pytest tests/chaos` alone must skip them too, never run
    # chaos against the native stack while the containers backend was asked for.
    if containers.wanted():
        for item in items:
            if item.get_closest_marker("chaos"):
                item.add_marker(pytest.mark.skip(reason=containers.CHAOS_SKIP))

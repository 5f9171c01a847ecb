"""Shared fixtures. Integration tests run against the stack that `iotctl up` started; the
backing services of the session (`backend`, native or containers) are set up here, for every
folder whose tests use the stack (integration, firmware, security, browser)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from iot.settings import get_settings
from tests.integration import containers


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Here, not in tests/integration: `pytest tests/chaos` alone must skip them too, never run
    # chaos against the native stack while the containers backend was asked for.
    if containers.wanted():
        for item in items:
            if item.get_closest_marker("chaos"):
                item.add_marker(pytest.mark.skip(reason=containers.CHAOS_SKIP))


def pytest_report_header(config: pytest.Config) -> str:
    if containers.wanted():
        return "backing services: containers (IOT_TEST_BACKEND), the rest of the stack native"
    return f"backing services: native (IOT_TEST_BACKEND={containers.BACKEND})"


def _say(config: pytest.Config) -> Callable[[str], None]:
    reporter = config.pluginmanager.getplugin("terminalreporter")
    return lambda line: reporter.write_line(f"[containers] {line}")


def pytest_collection_finish(session: pytest.Session) -> None:
    # Images missing (a first run builds them for minutes): before any test's timeout starts.
    if containers.wanted() and session.items:
        capture = session.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            containers.ensure_images(_say(session.config))


@pytest.fixture(scope="session", autouse=True)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The backing services of this session: the running stack's own (native), or containers
    with the rest of the stack started against them, stopped and removed at the end."""
    if not containers.wanted():
        yield "native"
        return
    capture = request.config.pluginmanager.getplugin("capturemanager")
    saved = dict(os.environ)
    run = containers.running_stack(_say(request.config))
    refused = ""
    with capture.global_and_fixture_disabled():  # progress and iotctl's output, as they come
        try:
            os.environ.update(run.__enter__())
        except containers.NoEngine as exc:
            refused = str(exc)
    if refused:
        pytest.fail(refused, pytrace=False)
    get_settings.cache_clear()
    try:
        yield "containers"
    finally:
        with capture.global_and_fixture_disabled():
            run.__exit__(None, None, None)
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()

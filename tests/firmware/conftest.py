"""The integration fixtures (the running stack, people, Postgres) for test_devices.py."""

from tests.integration.conftest import (  # noqa: F401 - fixtures used by name
    alice,
    api,
    make_person,
    pg,
    restart_guard,
    settings,
    stack,
)

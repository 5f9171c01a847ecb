"""Which machine runs which program: the role (IOT_ROLES) each program belongs to, and the
backing service (IOT_EXTERNAL_SERVICES) each one is part of."""

from __future__ import annotations

import re

from iot.settings import Settings

_DATA_MEMBER = re.compile(r"^(?:etcd|patroni|redis|sentinel)-(\d)$")


def role_of(program: str) -> str | None:
    """The role (IOT_ROLES) a program belongs to: data-N for host N's members of the HA data
    tier; None for the backing services and toxiproxy, which IOT_EXTERNAL_SERVICES and
    IOT_VIA_TOXIPROXY decide, and haproxy (:func:`runs_here`)."""
    member = _DATA_MEMBER.match(program)
    if member:
        return f"data-{member.group(1)}"
    if program.startswith("api-"):
        return "api"
    if program.startswith("worker-sensors"):
        return "sensors"
    if program == "worker-commandlog":
        return "commandlog"
    if program in ("nginx", "nginx-exporter"):
        return "edge"
    if program in ("prometheus", "alertmanager", "flower", "postgres-exporter", "redis-exporter"):
        return "monitoring"
    return None


def runs_here(s: Settings, program: str) -> bool:
    """Whether this machine runs the program, by its roles. toxiproxy runs when our
    processes reach the services through it, or (as always before roles) on a machine of
    every role."""
    role = role_of(program)
    if role is not None:
        return role in s.roles
    if program == "toxiproxy":
        return s.via_toxiproxy or s.every_role
    if program == "haproxy":  # where the product's processes need the primary's address
        return s.product_role
    return True


def service_of(program: str) -> str:
    """The backing service a program is (``rabbitmq-2`` is RabbitMQ, ``patroni-1`` Postgres,
    ``sentinel-3`` Redis), else the program."""
    for prefix, service in (
        ("rabbitmq", "rabbitmq"),
        ("patroni-", "postgres"),
        ("etcd-", "postgres"),
        ("redis-", "redis"),
        ("sentinel-", "redis"),
    ):
        if program.startswith(prefix) and program != "redis-exporter":
            return service
    return program

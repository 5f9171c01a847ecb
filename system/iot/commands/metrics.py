"""Prometheus metrics of the command core (kept in the API process's registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

COMMANDS_ACCEPTED = Counter("iot_commands_accepted_total", "Commands answered with 201 (queued)")
COMMAND_EVENTS = Counter(
    "iot_command_events_total", "Command transitions recorded by this replica", ["status"]
)
COMMANDS_ACKED = Counter("iot_commands_acked_total", "Device acks recorded", ["status"])
COMMANDS_REDELIVERED = Counter(
    "iot_commands_redelivered_total", "Commands handed to a device again (attempt > 1)"
)
COMMANDS_DEAD = Counter("iot_commands_dead_total", "Commands dead after too many attempts")
LEASES_EXPIRED = Counter(
    "iot_command_leases_expired_total", "Leases that ran out without an ack (claimed again or dead)"
)
COMMAND_LATENCY = Histogram(
    "iot_command_delivery_latency_seconds",
    "From POST /commands to the device receiving the command (first delivery only)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
POLL_WAITERS = Gauge("iot_command_polls_in_progress", "GET /commands polls being answered")
WAKEUPS = Counter(
    "iot_command_wakeups_total", "Notifications that a device has new commands, received"
)
LISTENING = Gauge(
    "iot_command_listener_up", "1 while this replica listens for new-command notifications"
)
for _status in (
    "queued",
    "delivered",
    "succeeded",
    "failed",
    "rejected",
    "expired",
    "cancelled",
    "dead",
):
    COMMAND_EVENTS.labels(_status)
# Every ack status from the start, so the first acks of a fresh replica show in increase()
# and rate() (a series that appears at 1 has no earlier sample to count from).
for _status in ("succeeded", "failed", "rejected"):
    COMMANDS_ACKED.labels(_status)

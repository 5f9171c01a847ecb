"""The message contract between the API and the workers.

The API publishes Celery-protocol (v2) messages by task name and body shape; it never imports
the workers' modules. Both sides import only the names and shapes defined here.

Queues (all durable, on the direct exchange ``iot``):

- ``sensors.data``  task ``iot.sensors.store``  kwargs ``{"batch": SensorBatch}``
- ``commands.log``  task ``iot.commands.log``   kwargs ``{"event": CommandEvent}``

``SensorBatch``: ``{"device_id": str, "received_at": RFC 3339,
"readings": [{"sensor": str, "value": float, "ts": RFC 3339, "id": str | None}]}``

``CommandEvent``: ``{"event_id": str, "command_id": str, "device_id": str, "status": str,
"at": RFC 3339, "attempt": int, "detail": dict}``
"""

from __future__ import annotations

import socket
import uuid
from typing import Any

import orjson

EXCHANGE = "iot"
SENSORS_QUEUE = "sensors.data"
SENSORS_TASK = "iot.sensors.store"
COMMAND_LOG_QUEUE = "commands.log"
COMMAND_LOG_TASK = "iot.commands.log"

_ORIGIN = f"api@{socket.gethostname()}"


def celery_message(
    task: str, kwargs: dict[str, Any], task_id: str | None = None
) -> tuple[bytes, dict[str, Any], str]:
    """Build a Celery protocol-2 message: (body, headers, task id)."""
    task_id = task_id or str(uuid.uuid4())
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": "()",
        "kwargsrepr": "{...}",
        "origin": _ORIGIN,
        "ignore_result": True,
    }
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = orjson.dumps([[], kwargs, embed])
    return body, headers, task_id


# ----- commands data: one quorum queue per device -----
#
# Published to the default exchange with routing key = queue name. Caps, the delivery limit and
# dead-lettering come from the RabbitMQ policy ``commands`` (see COMMANDS_POLICY), so operators
# can change them without redeclaring queues. Only what a policy cannot set is declared here.
COMMAND_QUEUE_PREFIX = "commands.dev."
COMMANDS_DLX = "commands.dlx"
DEAD_LETTER_QUEUE = "commands.dead-letters"
COMMAND_QUEUE_ARGS: dict[str, Any] = {"x-queue-type": "quorum", "x-single-active-consumer": True}
TERMINAL = frozenset({"succeeded", "failed", "rejected", "expired", "cancelled", "dead"})
ACK_STATUSES = ("succeeded", "failed", "rejected")
# A command with one of these is never handed to its device again. (Expired and dead ones can
# be back in a queue only because an operator requeued them.)
NEVER_AGAIN = frozenset({"succeeded", "failed", "rejected", "cancelled"})
_EVENT_NS = uuid.UUID("6f1d3c52-8f0e-4c55-9a57-0d1d2a7f3b10")


def command_queue(device_id: uuid.UUID | str) -> str:
    return f"{COMMAND_QUEUE_PREFIX}{device_id}"


def commands_policy(max_length: int, max_attempts: int) -> dict[str, Any]:
    """The RabbitMQ policy applied to every device command queue."""
    return {
        "pattern": "^" + COMMAND_QUEUE_PREFIX.replace(".", r"\.") + ".*",
        "apply-to": "queues",
        "priority": 10,
        "definition": {
            "max-length": max_length,
            "overflow": "reject-publish",
            # A quorum queue dead-letters a message returned more than delivery-limit times,
            # so the limit is one less than the number of attempts.
            "delivery-limit": max_attempts - 1,
            "dead-letter-exchange": COMMANDS_DLX,
            "dead-letter-strategy": "at-least-once",
        },
    }


def event_id(command_id: str, kind: str) -> str:
    """A deterministic event id: publishing the same transition twice stores one event."""
    return str(uuid.uuid5(_EVENT_NS, f"{command_id}:{kind}"))


def command_event(
    command: dict[str, Any],
    status: str,
    at: str,
    *,
    kind: str | None = None,
    attempt: int = 0,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``commands log`` event. It carries the command's descriptor, so the log can create the
    command's row from whichever event reaches it first."""
    return {
        "event_id": event_id(command["id"], kind or status),
        "command_id": command["id"],
        "device_id": command["device_id"],
        "status": status,
        "at": at,
        "attempt": attempt,
        "detail": detail or {},
        "command": command,
    }

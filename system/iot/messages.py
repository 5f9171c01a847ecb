"""The message contract between the API and the workers.

The API publishes Celery-protocol (v2) messages by task name and body shape; it never imports
the workers' modules. Both sides import only the names and shapes defined here.

Queues (all durable, on the direct exchange ``iot``):

- ``sensors.data``   task ``iot.sensors.store``   kwargs ``{"batch": SensorBatch}``
- ``commands.data``  task ``iot.commands.store``  kwargs ``{"command": Command}`` (quorum queue)
- ``commands.log``   task ``iot.commands.log``    kwargs ``{"event": CommandEvent}``: events of
  transitions made elsewhere; the command core writes its own events with each row change

``SensorBatch``: ``{"device_id": str, "received_at": RFC 3339,
"readings": [{"sensor": str, "value": float, "ts": RFC 3339, "id": str | None}]}``

``Command``: ``{"id", "device_id", "owner_id", "name", "args": dict, "ttl": int,
"created_at": RFC 3339, "expires_at": RFC 3339}``

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


# ----- commands data: the durable hand-off of POST /commands -----
#
# One quorum queue for every device (docs/design.md §5 Commands: a device costs rows, not queues).
# The commands worker stores each command as a row and wakes its device's long polls; from then on
# the row is the command's state. Declared with the same arguments by the API and the workers.
COMMANDS_DATA_QUEUE = "commands.data"
COMMANDS_STORE_TASK = "iot.commands.store"
COMMANDS_DATA_ARGS: dict[str, Any] = {"x-queue-type": "quorum"}
QUEUE_ARGUMENTS: dict[str, dict[str, Any]] = {COMMANDS_DATA_QUEUE: COMMANDS_DATA_ARGS}


# The descriptor of a command accepted moments ago, kept in Redis by the API (JSON, for an hour).
# With ``"stored": true`` the API wrote the command's row itself after RabbitMQ's confirm: the
# commands worker, finding that, acks the message without its own insert, which would find the
# row and do nothing for a round trip to Postgres (against a database 1.5 s away, one thread
# stored fewer commands a second than were accepted; docs/decisions.md, "Commands through a slow
# database"). Without the mark, or without Redis, the worker inserts as always.
def command_descriptor_key(command_id: object) -> str:
    return f"cmd:{command_id}"


DESCRIPTOR_STORED = "stored"

"""The product's error hierarchy.

Library exceptions (aio-pika, psycopg, redis) are translated where they enter our code; the
API turns these into HTTP answers in one exception handler (``iot.api.app``)::

    IotError
    ├── Unavailable              503 + Retry-After: try again, nothing was accepted
    │   ├── BrokerUnavailable    RabbitMQ down, slow, or did not confirm
    │   ├── DatabaseUnavailable  Postgres down or slow
    │   └── CacheUnavailable     Redis down or slow (callers usually fall back)
    ├── QueueFull                429: the device's queue is at its cap
    ├── AuthError                401: missing, malformed or wrong credentials
    ├── Forbidden                403: authenticated, but not allowed
    ├── NotFound                 404: unknown, or belongs to someone else
    ├── Conflict                 409: e.g. a user name already taken
    │   └── TransitionRefused    a command's status does not allow the change asked for
    └── InvalidInput             422: input the schema could not catch

Raised outside the API too (the command core, ``iotctl``), where ``detail`` is what the
operator reads.
"""

from __future__ import annotations


class IotError(Exception):
    status_code = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Unavailable(IotError):
    status_code = 503
    cause = "other"  # what could not serve: the label of iot_unavailable_answers_total


class BrokerUnavailable(Unavailable):
    cause = "broker"


class DatabaseUnavailable(Unavailable):
    cause = "database"


class DatabaseBusy(DatabaseUnavailable):
    """Every pooled connection is in use (overload, not an outage)."""

    cause = "database_busy"


class CacheUnavailable(Unavailable):
    cause = "cache"


class QueueFull(IotError):
    status_code = 429


class AuthError(IotError):
    status_code = 401


class Forbidden(IotError):
    status_code = 403


class NotFound(IotError):
    status_code = 404


class Conflict(IotError):
    status_code = 409


class TransitionRefused(Conflict):
    """The requested change is not allowed from the command's current ``status``
    (``iot.commands.lifecycle``: a cancel of a final command, a requeue of one not dead)."""

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class InvalidInput(IotError):
    status_code = 422

"""The command core as one API process uses it: send, poll (claim + long poll), ack, cancel,
and the sweep that expires and kills what nobody claims.

It takes its collaborators explicitly (a Postgres pool, a confirmed-publish function, a Redis
client for descriptors, the wake-ups listener) and knows nothing of HTTP: the routes translate.

How a command travels (docs/design.md §5 Commands):

1. ``send`` publishes it to `commands data` and returns after RabbitMQ confirmed it (the 201).
2. The commands worker stores its row (idempotent insert) and notifies its device id.
3. A poll claims the device's commands in one statement (:data:`store._CLAIM`), leasing each;
   a long poll with nothing to claim waits for the notification (or for its own lease to
   lapse), not in a loop of queries.
4. The ack, a cancel, expiry and death are row updates, each with its event, in one
   transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from iot import db, messages
from iot.commands import batch, lifecycle, metrics, store
from iot.commands.wakeups import Wakeups
from iot.errors import Conflict, DatabaseBusy, DatabaseUnavailable, NotFound, QueueFull

log = logging.getLogger(__name__)
PublishTask = Callable[[str, str, dict[str, Any]], Awaitable[str]]
_IDEMPOTENCY_NS = uuid.UUID("1c7f6f0e-3f55-4f53-9d7b-55a1f2a0c0de")


def command_id_for(owner_id: uuid.UUID, idempotency_key: str) -> uuid.UUID:
    """The id of the command a person sends with an Idempotency-Key: the same for every retry
    (rollouts derive their commands' ids this way, one per device)."""
    return uuid.uuid5(_IDEMPOTENCY_NS, f"{owner_id}:{idempotency_key}")


_REDIS_ERRORS = (redis.RedisError, OSError)
DESCRIPTOR_TTL_SECONDS = 3600  # only until the worker has stored the row
NO_LISTENER_RECHECK_SECONDS = 1.0
BUSY_RETRY_SECONDS = 1.0  # a long poll that found the pool busy claims again after about this
SWEEP_SECONDS = 2.0
SWEEP_BATCH = 1000


def _descriptor_key(command_id: uuid.UUID | str) -> str:
    return messages.command_descriptor_key(command_id)


class Commands:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        publish_task: PublishTask,
        cache: aioredis.Redis,
        wakeups: Wakeups,
        *,
        max_attempts: int,
        queue_cap: int,
    ) -> None:
        self.pool = pool
        self.publish_task = publish_task
        self.cache = cache
        self.wakeups = wakeups
        self.max_attempts = max_attempts
        self.queue_cap = queue_cap
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.wakeups.start()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="command-sweeper")

    def drain(self) -> None:
        """The replica is about to stop: waiting polls answer now (see Wakeups.drain)."""
        self.wakeups.drain()

    async def stop(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.wakeups.stop()

    # ----- people -----
    async def send(
        self,
        owner_id: uuid.UUID,
        device_id: uuid.UUID,
        name: str,
        args: dict[str, Any],
        ttl: int,
        idempotency_key: str | None = None,
        *,
        pending: int | None,
    ) -> dict[str, Any]:
        """Accept a command; returns its descriptor once RabbitMQ confirmed it.

        ``pending`` is the device's count of commands not yet final, taken by the caller with
        its check that the device is the sender's (:func:`store.owner_and_pending`): None when
        Postgres could not be asked, and then the cap is not applied.

        With an ``idempotency_key`` the id is derived from (owner, key): a retry finds the
        command it already sent and is answered with it, and the worker's insert would ignore
        a second copy anyway.

        Raises:
            Conflict: the key was used before for a different command (device, name, args, ttl).
            QueueFull: the device has ``queue_cap`` commands not yet final.
            BrokerUnavailable: not confirmed; nothing was accepted, retry.
        """
        if idempotency_key:
            command_id = command_id_for(owner_id, idempotency_key)
            try:
                existing = await self.descriptor(command_id)
            except DatabaseUnavailable:
                existing = None
            if existing is not None:
                asked = (str(device_id), name, args, ttl)
                if (
                    existing["device_id"],
                    existing["name"],
                    existing["args"],
                    existing["ttl"],
                ) != asked:
                    raise Conflict(
                        "Idempotency-Key already used for a different command; use a new key"
                    )
                return existing
        else:
            command_id = uuid.uuid4()
        self._check_cap(pending)
        command = self.new_command(command_id, owner_id, device_id, name, args, ttl)
        await self.publish_task(
            messages.COMMANDS_DATA_QUEUE, messages.COMMANDS_STORE_TASK, {"command": command}
        )
        metrics.COMMANDS_ACCEPTED.inc()
        metrics.COMMAND_EVENTS.labels(lifecycle.QUEUED).inc()
        stored = await self._store_accepted(command)
        descriptor = {**command, messages.DESCRIPTOR_STORED: True} if stored else command
        try:
            await self.cache.set(
                _descriptor_key(command_id), orjson.dumps(descriptor), ex=DESCRIPTOR_TTL_SECONDS
            )
        except _REDIS_ERRORS:
            pass  # only the minutes before the worker stores the row would miss it
        return command

    def new_command(
        self,
        command_id: uuid.UUID,
        owner_id: uuid.UUID,
        device_id: uuid.UUID,
        name: str,
        args: dict[str, Any],
        ttl: int,
    ) -> dict[str, Any]:
        """A command as it is handed to the workers (and answered), created now."""
        now = datetime.now(UTC)
        return {
            "id": str(command_id),
            "device_id": str(device_id),
            "owner_id": str(owner_id),
            "name": name,
            "args": args,
            "ttl": ttl,
            "created_at": now.isoformat(),
            "expires_at": (now + timedelta(seconds=ttl)).isoformat(),
        }

    async def accept_many(self, commands: list[dict[str, Any]]) -> None:
        """Accept many commands (of :meth:`new_command`, their devices checked and under the
        cap) at once: one message for the workers, one confirm, one pipelined insert of their
        rows, one Redis pipeline of their descriptors. All or none are accepted; ids already
        accepted before are harmless again (the insert ignores them).

        Raises:
            BrokerUnavailable: not confirmed; nothing was accepted, retry.
        """
        if not commands:
            return
        await self.publish_task(
            messages.COMMANDS_DATA_QUEUE, messages.COMMANDS_STORE_TASK, {"commands": commands}
        )
        metrics.COMMANDS_ACCEPTED.inc(len(commands))
        metrics.COMMAND_EVENTS.labels(lifecycle.QUEUED).inc(len(commands))
        try:
            async with db.connection(self.pool) as conn:
                await batch.store_accepted_many(conn, commands)
        except DatabaseUnavailable:
            pass  # the workers store them from the message
        try:
            async with self.cache.pipeline(transaction=False) as pipe:
                for c in commands:
                    pipe.set(_descriptor_key(c["id"]), orjson.dumps(c), ex=DESCRIPTOR_TTL_SECONDS)
                await pipe.execute()
        except _REDIS_ERRORS:
            pass

    async def _store_accepted(self, command: dict[str, Any]) -> bool:
        """Write the confirmed command's row at once when Postgres answers (else the commands
        worker writes it from `commands data`). A device's next poll can claim it without
        waiting for the worker, and a command sent after this one was answered is always
        stored after it: FIFO per device holds even when the worker stores two messages out of
        order (one of them retried after a database blip while the other went through).

        Returns whether the row is there now (written here, or found written)."""
        try:
            async with db.connection(self.pool) as conn:
                await store.store_accepted(conn, command)
        except DatabaseUnavailable:
            return False
        return True

    def _check_cap(self, pending: int | None) -> None:
        """Refuse a command for a device that has ``pending`` commands not yet final, at or
        over the cap. None (Postgres was down, the cap could not be counted): accepted, the
        command waits in `commands data`.

        Raises:
            QueueFull: ``pending`` reached ``queue_cap``.
        """
        if pending is not None and pending >= self.queue_cap:
            raise QueueFull(f"the device's command queue is full ({pending} pending); retry later")

    async def descriptor(self, command_id: uuid.UUID) -> dict[str, Any] | None:
        """The command as sent: from its row, or (accepted moments ago) from Redis.

        Raises:
            DatabaseUnavailable: Redis does not have it and Postgres cannot be asked.
        """
        try:
            raw = await self.cache.get(_descriptor_key(command_id))
            if raw:
                descriptor: dict[str, Any] = orjson.loads(raw)
                descriptor.pop(messages.DESCRIPTOR_STORED, None)
                return descriptor
        except _REDIS_ERRORS:
            pass
        async with db.connection(self.pool) as conn:
            row = await store.get_command(conn, command_id)
        return store.descriptor_from_row(row) if row else None

    async def cancel(self, command: dict[str, Any], by: str) -> str:
        """Cancel a command not yet final (the caller checked ownership).

        Raises:
            TransitionRefused: already final (a Conflict; its status is in the detail).
            NotFound: no such command.
            DatabaseUnavailable: retry.
        """
        async with db.connection(self.pool) as conn:
            status = await store.cancel(conn, uuid.UUID(command["id"]), by, command)
        if status is None:
            raise NotFound("no such command")
        metrics.COMMAND_EVENTS.labels(status).inc()
        return status

    async def requeue(self, command: dict[str, Any], by: str) -> str:
        """Give a dead command (the caller checked who may) a fresh ttl and another round of
        attempts; the device's waiting poll gets it at once. Returns ``queued``.

        Runs the operators' transaction (:func:`store.requeue`, shared with ``iotctl``) on a
        connection of its own in a thread, cut after the API's database deadline.

        Raises:
            TransitionRefused: the command is not dead (a Conflict; its status is in the
                detail).
            Conflict: no row yet (accepted moments ago: it is still queued).
            DatabaseUnavailable: retry.
        """
        url = self.pool.conninfo
        assert isinstance(url, str)  # db.open_pool gives the settings' URL

        def run() -> list[dict[str, Any]]:
            with db.translated(), db.connect(url) as conn:
                watchdog = threading.Timer(db.API_TIMEOUT_SECONDS, db.sever, (conn,))
                watchdog.start()
                try:
                    return store.requeue(
                        conn, uuid.UUID(command["device_id"]), [uuid.UUID(command["id"])], by
                    )
                finally:
                    watchdog.cancel()

        try:
            await asyncio.to_thread(run)
        except NotFound as exc:  # accepted moments ago: its row is not stored yet
            raise Conflict("only dead commands can be requeued (not queued)") from exc
        metrics.COMMAND_EVENTS.labels(lifecycle.QUEUED).inc()
        return lifecycle.QUEUED

    # ----- devices -----
    async def poll(
        self, device_id: uuid.UUID, wait: float, limit: int, lease: float
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` commands for the device, oldest first, each leased for ``lease``
        seconds; waits up to ``wait`` seconds for one to arrive.

        Raises:
            DatabaseUnavailable: Postgres cannot be reached; retry.
        """
        key = str(device_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        metrics.POLL_WAITERS.inc()
        try:
            with self.wakeups.waiting(key) as woken:
                # Registered first, then asked: a notification in between clears the idle
                # mark or sets the event, never neither. A device known to be idle costs no
                # query at all until something arrives for it (or the knowledge ages out).
                while True:
                    next_lapse = None
                    busy = False
                    if woken.is_set() or not self.wakeups.surely_idle(key):
                        woken.clear()
                        try:
                            async with db.connection(self.pool) as conn:
                                rows, next_lapse = await store.claim(
                                    conn, device_id, limit, lease, self.max_attempts
                                )
                        except DatabaseBusy:
                            # Every connection is in use: a long poll has time, so it claims
                            # again a little later instead of adding a 503 to the overload;
                            # out of time, it answers "nothing yet" (the commands stay stored
                            # for its next poll). A short poll (wait=0) answers busy.
                            if wait <= 0:
                                raise
                            if deadline - loop.time() < BUSY_RETRY_SECONDS * 2:
                                return []
                            busy, rows = True, []
                        delivered = self._account(rows)
                        if delivered:
                            return delivered
                        if not busy and next_lapse is None and not woken.is_set():
                            self.wakeups.mark_idle(key)
                    remaining = deadline - loop.time()
                    if remaining <= 0 or self.wakeups.draining:
                        return []
                    if next_lapse is not None:
                        lapse_in = (next_lapse - datetime.now(UTC)).total_seconds()
                        remaining = min(remaining, max(lapse_in, 0.0) + 0.05)
                    if not self.wakeups.listening:
                        remaining = min(remaining, NO_LISTENER_RECHECK_SECONDS)
                    if busy:
                        woken.set()  # claim again after the pause below, woken or not
                        await asyncio.sleep(random.uniform(0.5, 1.5) * BUSY_RETRY_SECONDS)
                        continue
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(woken.wait(), remaining)
        finally:
            metrics.POLL_WAITERS.dec()

    def surely_idle(self, device_id: str) -> bool:
        """True when a short poll of this device would surely find nothing (see Wakeups)."""
        return self.wakeups.surely_idle(device_id)

    def _account(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Count what a claim did; returns the delivered commands as the device sees them."""
        now = datetime.now(UTC)
        delivered = []
        for r in rows:
            metrics.COMMAND_EVENTS.labels(r["status"]).inc()
            if r["status"] == lifecycle.DEAD:
                metrics.COMMANDS_DEAD.inc()
                metrics.LEASES_EXPIRED.inc()
            elif r["status"] == lifecycle.DELIVERED:
                if r["attempt"] > 1:
                    metrics.COMMANDS_REDELIVERED.inc()
                    metrics.LEASES_EXPIRED.inc()
                else:
                    metrics.COMMAND_LATENCY.observe(max((now - r["created_at"]).total_seconds(), 0))
                delivered.append(
                    {
                        "id": r["id"],
                        "name": r["name"],
                        "args": r["args"],
                        "created_at": r["created_at"],
                        "expires_at": r["expires_at"],
                        "attempt": r["attempt"],
                    }
                )
        return delivered

    async def ack(
        self, device_id: uuid.UUID, command_id: uuid.UUID, outcome: str, result: Any
    ) -> str:
        """Record the device's outcome; returns the command's status afterwards. Repeating
        an ack is harmless.

        Raises:
            NotFound: not a command of this device.
            DatabaseUnavailable: retry.
        """
        async with db.connection(self.pool) as conn:
            status = await store.ack(conn, device_id, command_id, outcome, result)
        if status is None:
            raise NotFound("no such command")
        metrics.COMMANDS_ACKED.labels(outcome).inc()
        return status

    # ----- housekeeping -----
    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS * random.uniform(0.75, 1.25))
            try:
                async with db.connection(self.pool) as conn:
                    expired, dead = await store.sweep(conn, self.max_attempts, SWEEP_BATCH)
            except DatabaseUnavailable:
                continue  # the next sweep tries again
            except Exception:  # noqa: BLE001 - keep sweeping; say what went wrong
                log.exception("command sweep failed")
                continue
            if expired:
                metrics.COMMAND_EVENTS.labels(lifecycle.EXPIRED).inc(expired)
            if dead:
                metrics.COMMAND_EVENTS.labels(lifecycle.DEAD).inc(dead)
                metrics.COMMANDS_DEAD.inc(dead)
                metrics.LEASES_EXPIRED.inc(dead)

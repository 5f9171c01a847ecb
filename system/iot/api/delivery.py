"""Command delivery from one API replica: consumers, leases, long polls and dead letters.

How a command reaches its device (DESIGN §4):

- Each device has a quorum queue ``commands.dev.<id>`` with single active consumer. The first
  time a device polls a replica, that replica starts consuming the device's queue (prefetch
  bounded). RabbitMQ pushes commands to the replica, which keeps them *unacked* in memory, so:
  an idle poll is a memory lookup (no broker round trip), a long poll is woken by the delivery
  itself, and if the replica dies RabbitMQ puts every command it held back in the queue.
- Handing a command to the device starts a lease (default 60 s). The device's ack acks the
  message; a lease that runs out nacks it back (requeue), and the quorum queue counts the
  delivery (``x-delivery-count``, our ``attempt``). Past the delivery limit the queue
  dead-letters it to ``commands.dead-letters``, as it does with an expired message; every
  replica consumes that queue and logs ``dead`` or ``expired``.
- Before handing out, a replica drops commands that are final (acked, cancelled: Redis mark or
  Postgres status) or past their expiry. nginx routes a device to the same replica (hash on
  its credential), so its ack reaches the replica holding its lease.
- A replica stops consuming a device's queue when it has not polled for a while
  (``command_consumer_idle_seconds``), so after a failover the device's queue moves on.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from iot import messages
from iot.api import amqp, command_state, metrics
from iot.api.deps import State
from iot.errors import BrokerUnavailable, NotFound, Unavailable

log = logging.getLogger(__name__)
SWEEP_SECONDS = 0.25


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Held:
    """A command this replica holds unacked: buffered, or leased to its device."""

    message: AbstractIncomingMessage
    command: dict[str, Any]
    attempt: int
    generation: int
    leased_until: float = 0.0

    @property
    def id(self) -> str:
        return str(self.command["id"])

    @property
    def order(self) -> tuple[str, str]:
        return (self.command["created_at"], self.id)

    def expired(self, wall: float) -> bool:
        return datetime.fromisoformat(self.command["expires_at"]).timestamp() <= wall


@dataclass
class Slot:
    """One device's commands on this replica."""

    device_id: str
    buffer: list[Held] = field(default_factory=list)  # FIFO by (created_at, id)
    leased: dict[str, Held] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    consumer_tag: str | None = None
    queue: Any = None
    generation: int = -1
    polls: int = 0
    last_seen: float = field(default_factory=time.monotonic)


class Deliveries:
    def __init__(self, state: State) -> None:
        self.state = state
        self.s = state.settings
        self._slots: dict[str, Slot] = {}
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._generation = 0
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    # ----- lifecycle -----
    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="deliveries-connection"),
            asyncio.create_task(self._sweep_forever(), name="deliveries-sweeper"),
        ]
        try:
            await asyncio.wait_for(self._ready.wait(), 5)
        except TimeoutError:
            log.warning("command delivery not connected yet; polls answer 503 until it is")

    async def stop(self) -> None:
        """Give every held command back to RabbitMQ, then close."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for slot in self._slots.values():
            for held in [*slot.buffer, *slot.leased.values()]:
                await self._nack(held)
        if self._connection and not self._connection.is_closed:
            await self._connection.close()

    async def _run(self) -> None:
        await amqp.keep_connected(
            self.s.broker_url,
            "iot-api-deliveries",
            self._setup,
            self._forget_everything,
            lambda: self._closing,
        )

    async def _setup(
        self, connection: AbstractConnection, watch: Callable[[AbstractChannel], None]
    ) -> None:
        """A consuming channel (per-consumer prefetch) and the dead-letter consumer."""
        channel = await connection.channel()
        watch(channel)
        await channel.set_qos(prefetch_count=self.s.command_prefetch)
        dead = await channel.declare_queue(messages.DEAD_LETTER_QUEUE, durable=True)
        self._connection, self._channel = connection, channel
        self._generation += 1
        await dead.consume(self._on_dead_letter, no_ack=False)
        self._ready.set()

    def _forget_everything(self) -> None:
        # The broker requeues whatever the dead channel held; our copies are stale.
        self._ready.clear()
        self._connection = self._channel = None
        for slot in self._slots.values():
            slot.buffer.clear()
            slot.leased.clear()
            slot.consumer_tag = None
            slot.arrived.set()  # wake long polls so they notice
        self._update_gauges()

    # ----- consuming -----
    async def _ensure_consumer(self, slot: Slot) -> int | None:
        """Consume the device's queue if this replica does not yet; returns the number of
        messages waiting when it just started, else None.

        Raises:
            BrokerUnavailable: no connection to RabbitMQ.
        """
        async with slot.lock:
            if slot.consumer_tag and slot.generation == self._generation:
                return None
            channel = self._channel
            if channel is None or not self._ready.is_set():
                raise BrokerUnavailable("message broker unavailable; retry later")
            generation = self._generation
            try:
                queue = await asyncio.wait_for(
                    channel.declare_queue(
                        messages.command_queue(slot.device_id),
                        durable=True,
                        arguments=dict(messages.COMMAND_QUEUE_ARGS),
                    ),
                    self.s.publish_timeout_seconds,
                )
                slot.consumer_tag = await queue.consume(
                    self._receiver(slot, generation), no_ack=False
                )
            except Exception as exc:  # noqa: BLE001 - AMQP, connection or timeout errors
                raise BrokerUnavailable("message broker unavailable; retry later") from exc
            slot.generation, slot.queue = generation, queue
            declared = queue.declaration_result
            return int(declared.message_count or 0) if declared else 0

    def _receiver(self, slot: Slot, generation: int) -> Callable[[AbstractIncomingMessage], Any]:
        async def receive(message: AbstractIncomingMessage) -> None:
            if generation != self._generation:
                return  # from a channel that is gone; the broker has requeued it
            try:
                command = orjson.loads(message.body)
            except orjson.JSONDecodeError:
                log.error("dropping a malformed command message on %s", slot.device_id)
                await message.reject(requeue=False)
                return
            count = (message.headers or {}).get("x-delivery-count", 0)
            held = Held(message, command, int(count or 0) + 1, generation)  # type: ignore[arg-type]
            bisect.insort(slot.buffer, held, key=lambda h: h.order)
            slot.arrived.set()
            self._update_gauges()

        return receive

    # ----- the device's side -----
    def _slot(self, device_id: str) -> Slot:
        slot = self._slots.get(device_id)
        if slot is None:
            slot = self._slots[device_id] = Slot(device_id)
        return slot

    def surely_idle(self, device_id: str) -> bool:
        """True when this replica is consuming the device's queue and holds nothing for it: a
        short poll can answer 204 at once. Counts as the device's poll (keeps the consumer)."""
        slot = self._slots.get(device_id)
        if (
            slot is None
            or slot.buffer
            or slot.consumer_tag is None
            or slot.generation != self._generation
            or not self._ready.is_set()
        ):
            return False
        slot.last_seen = time.monotonic()
        return True

    async def poll(
        self, device_id: str, wait: float, limit: int, lease: float
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` commands for the device, waiting up to ``wait`` seconds for one.

        Raises:
            BrokerUnavailable: RabbitMQ is not reachable.
            Unavailable: the commands' state cannot be checked (Redis and Postgres down).
        """
        slot = self._slot(device_id)
        slot.polls += 1
        slot.last_seen = time.monotonic()
        metrics.POLL_WAITERS.inc()
        try:
            waiting = await self._ensure_consumer(slot)
            deadline = time.monotonic() + wait
            if waiting:
                # Just subscribed with commands waiting: give RabbitMQ a moment to push them.
                deadline = max(deadline, time.monotonic() + 1.0)
            while True:
                slot.arrived.clear()
                taken = await self._take(slot, limit, lease)
                if taken:
                    return taken
                if slot.consumer_tag is None:
                    raise BrokerUnavailable("message broker connection lost; retry")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                try:
                    await asyncio.wait_for(slot.arrived.wait(), remaining)
                except TimeoutError:
                    pass
        finally:
            metrics.POLL_WAITERS.dec()
            slot.polls -= 1
            slot.last_seen = time.monotonic()

    async def _take(self, slot: Slot, limit: int, lease: float) -> list[dict[str, Any]]:
        candidates = [h for h in slot.buffer[:limit] if h.generation == self._generation]
        del slot.buffer[:limit]
        if not candidates:
            return []
        try:
            final = await command_state.finals(self.state, [h.id for h in candidates])
        except Unavailable:
            self._put_back(slot, candidates)
            raise
        wall = time.time()
        chosen: dict[str, Held] = {}
        for held in candidates:
            if held.id in final or held.id in slot.leased or held.id in chosen:
                await self._ack(held)  # final already, or a duplicate of a leased command
            elif held.expired(wall):
                await self._expire(held)
            else:
                chosen[held.id] = held
        give = list(chosen.values())
        if not give:
            return []
        events = [
            messages.command_event(
                h.command,
                "delivered",
                now_iso(),
                kind=f"delivered:{h.command.get('requeues', 0)}:{h.attempt}",
                attempt=h.attempt,
            )
            for h in give
        ]
        try:
            await asyncio.gather(*(self._log(e) for e in events))
        except BrokerUnavailable:
            self._put_back(slot, give)
            raise
        until = time.monotonic() + lease
        for held in give:
            held.leased_until = until
            slot.leased[held.id] = held
            if held.attempt > 1:
                metrics.COMMANDS_REDELIVERED.inc()
            else:
                created = datetime.fromisoformat(held.command["created_at"]).timestamp()
                metrics.COMMAND_LATENCY.observe(max(wall - created, 0.0))
        self._update_gauges()
        return [
            {
                "id": h.id,
                "name": h.command["name"],
                "args": h.command["args"],
                "created_at": h.command["created_at"],
                "expires_at": h.command["expires_at"],
                "attempt": h.attempt,
            }
            for h in give
        ]

    def _put_back(self, slot: Slot, held: list[Held]) -> None:
        for h in held:
            bisect.insort(slot.buffer, h, key=lambda x: x.order)

    async def ack(
        self, device_id: str, command_id: str, status: str, result: dict[str, Any] | None
    ) -> str:
        """Record the device's outcome; returns the command's status afterwards.

        A repeated ack changes nothing. An ack for a command this replica does not hold (its
        lease ran out, or another replica held it) is still recorded: the device did run it.

        Raises:
            NotFound: not a command of this device.
            BrokerUnavailable: the outcome could not be logged durably; retry.
        """
        slot = self._slots.get(device_id)
        held = slot.leased.get(command_id) if slot else None
        if held is not None:
            command, attempt = held.command, held.attempt
        else:
            found = await command_state.descriptor(self.state, uuid.UUID(command_id))
            if found is None or found["device_id"] != device_id:
                raise NotFound("no such command")
            command, attempt = found, 0
        known = await command_state.finals(self.state, [command_id])
        if known.get(command_id) in messages.ACK_STATUSES:
            if held is not None and slot is not None:
                slot.leased.pop(command_id, None)
                await self._ack(held)
            return known[command_id]  # a repeated ack
        event = messages.command_event(
            command, status, now_iso(), kind="ack", attempt=attempt, detail={"result": result}
        )
        await self._log(event)
        holds = await command_state.mark_final(self.state, command_id, status)
        if held is not None and slot is not None:
            slot.leased.pop(command_id, None)
            await self._ack(held)
        metrics.COMMANDS_ACKED.labels(status).inc()
        self._update_gauges()
        return holds

    # ----- housekeeping -----
    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self._sweep()
            except Exception:  # noqa: BLE001 - keep sweeping; log what went wrong
                log.exception("delivery sweep failed")

    async def _sweep(self) -> None:
        now, wall = time.monotonic(), time.time()
        idle = self.s.command_consumer_idle_seconds
        for device_id, slot in list(self._slots.items()):
            for command_id, held in list(slot.leased.items()):
                if held.leased_until <= now:
                    del slot.leased[command_id]
                    metrics.LEASES_EXPIRED.inc()
                    await self._nack(held)  # back to the queue; the next delivery is attempt + 1
            for held in [h for h in slot.buffer if h.expired(wall)]:
                slot.buffer.remove(held)
                await self._expire(held)
            if slot.polls == 0 and not slot.leased and now - slot.last_seen > idle:
                await self._release(slot)
                del self._slots[device_id]
        self._update_gauges()

    async def _release(self, slot: Slot) -> None:
        """Stop consuming the device's queue and give back what was buffered."""
        channel = self._channel
        if slot.consumer_tag and channel is not None and slot.generation == self._generation:
            try:
                await slot.queue.cancel(slot.consumer_tag)
            except Exception as exc:  # noqa: BLE001 - the channel may be gone: same effect
                log.info("cancelling consumer of %s: %s", slot.device_id, exc)
        for held in slot.buffer:
            await self._nack(held)
        slot.buffer.clear()
        slot.consumer_tag = None

    async def _expire(self, held: Held) -> None:
        event = messages.command_event(held.command, "expired", now_iso(), kind="expired")
        try:
            await self._log(event)
        except BrokerUnavailable:
            await self._nack(held)  # the broker will expire it (dead letter) instead
            return
        await self._ack(held)

    async def _on_dead_letter(self, message: AbstractIncomingMessage) -> None:
        """Log a command RabbitMQ dead-lettered: ``expired`` or ``dead`` (too many attempts)."""
        try:
            command = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            await message.ack()
            return
        headers = message.headers or {}
        reason = headers.get("x-first-death-reason", b"")
        reason = reason.decode() if isinstance(reason, bytes) else str(reason)
        if reason == "expired":
            status, kind = "expired", "expired"
        else:
            status, kind = "dead", f"dead:{command.get('requeues', 0)}"
        event = messages.command_event(
            command, status, now_iso(), kind=kind, detail={"reason": reason}
        )
        try:
            await self._log(event)
        except BrokerUnavailable:
            await message.nack(requeue=True)
            return
        if status == "dead":
            metrics.COMMANDS_DEAD.inc()
        await message.ack()

    async def _log(self, event: dict[str, Any]) -> None:
        await self.state.publisher.publish_task(
            messages.COMMAND_LOG_QUEUE, messages.COMMAND_LOG_TASK, {"event": event}
        )
        metrics.COMMAND_EVENTS.labels(event["status"]).inc()

    async def _ack(self, held: Held) -> None:
        if held.generation != self._generation:
            return
        try:
            await held.message.ack()
        except Exception as exc:  # noqa: BLE001 - channel gone: the broker requeued it
            log.info("ack of %s not sent: %s", held.id, exc.__class__.__name__)

    async def _nack(self, held: Held) -> None:
        if held.generation != self._generation:
            return
        try:
            await held.message.nack(requeue=True)
        except Exception as exc:  # noqa: BLE001 - channel gone: the broker requeued it
            log.info("nack of %s not sent: %s", held.id, exc.__class__.__name__)

    def _update_gauges(self) -> None:
        metrics.LEASES.set(sum(len(s.leased) for s in self._slots.values()))
        metrics.BUFFERED.set(sum(len(s.buffer) for s in self._slots.values()))

"""Rollouts: create, follow and steer them, and the driver that sends their commands.

Every API replica runs a driver. Each tick (``TICK_SECONDS``) it takes the lease of the
running rollouts nobody else holds (``store.hold``: one actor per rollout at a time; a
replica that dies loses its lease within ``LEASE_SECONDS``) and, for each, applies
:mod:`iot.rollouts.rules` to what Postgres says: stop it when too many commands failed, send
the next targets of the current phase within the rate, or move to the next phase (at once,
after a wait, or once a person approves). A target's command goes through the command core
with an Idempotency-Key made of the rollout and the device, so a driver that crashes between
the broker's confirm and noting it sent only finds the same command again: a device gets at
most one command of a rollout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from iot import db
from iot.commands.service import Commands, command_id_for
from iot.errors import (
    InvalidInput,
    NotFound,
    TransitionRefused,
    Unavailable,
)
from iot.rollouts import metrics, rules, store
from iot.sql import devices as devices_sql

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
LEASE_SECONDS = 10.0
BATCH = 500  # commands sent by one tick of one rollout at most (one message)
DRIVER = "driver"


def idempotency_key(rollout_id: uuid.UUID | str, device_id: uuid.UUID | str) -> str:
    return f"rollout:{rollout_id}:{device_id}"


@dataclass(frozen=True)
class Person:
    """Who acts: their id, whether they are an admin (sees and steers every rollout), name."""

    user_id: uuid.UUID
    is_admin: bool
    username: str

    @property
    def owner_filter(self) -> uuid.UUID | None:
        return None if self.is_admin else self.user_id


class Rollouts:
    def __init__(self, pool: AsyncConnectionPool, commands: Commands, replica: str) -> None:
        self.pool = pool
        self.commands = commands
        self.me = f"{replica or 'api'}:{uuid.uuid4().hex[:8]}"
        self._task: asyncio.Task[None] | None = None

    # --- people --------------------------------------------------------------------------

    async def create(self, who: Person, spec: dict[str, Any]) -> dict[str, Any]:
        """Fix the targets now and store the rollout (``running`` unless ``start`` is false).

        Raises:
            InvalidInput: no device matches the target.
            NotFound: a named device is not the person's.
        """
        target = spec["target"]
        ids = target.get("device_ids")
        async with db.connection(self.pool) as conn:
            # a rollout reaches its owner's devices only (admins' too)
            devices = await devices_sql.matching(conn, who.user_id, ids, target.get("labels"))
            if ids and len(devices) != len(set(ids)):
                raise NotFound("no such device (or not yours) among device_ids")
            if not devices:
                raise InvalidInput("the target matches no device")
            rollout_id = uuid.uuid4()
            ordered = rules.order(str(rollout_id), [str(d) for d in devices])
            by_count = spec["phase_unit"] == "count"
            ends = rules.phase_ends(len(ordered), spec["phases"], counts=by_count)
            targets = []
            for position, device in enumerate(ordered):
                phase = next(i for i, end in enumerate(ends) if position < end)
                key = idempotency_key(rollout_id, device)
                targets.append((uuid.UUID(device), phase, command_id_for(who.user_id, key)))
            rollout = {
                "id": rollout_id,
                "owner_id": who.user_id,
                "state": rules.RUNNING if spec.get("start", True) else rules.SCHEDULED,
                "command_name": spec["command"]["name"],
                "command_args": spec["command"]["args"],
                "command_ttl": spec["command"]["ttl"],
                "target": target,
                "total": len(ordered),
                "phase_ends": ends,
                "rate_per_minute": spec["rate_per_minute"],
                "phase_wait_seconds": spec["phase_wait_seconds"],
                "approval": spec["approval"],
                "max_failure_share": spec["max_failure_share"],
                "min_finished": spec["min_finished"],
            }
            await store.create(conn, rollout, targets, who.username)
        return await self.view(rollout_id, who)

    async def _owned(self, conn: Any, rollout_id: uuid.UUID, who: Person) -> dict[str, Any]:
        row = await store.get(conn, rollout_id)
        if row is None or (not who.is_admin and row["owner_id"] != who.user_id):
            raise NotFound("no such rollout")
        return row

    async def view(self, rollout_id: uuid.UUID, who: Person, limit: int = 100) -> dict[str, Any]:
        """The rollout, counts per command status per phase, its newest ``limit`` decisions,
        its first ``limit`` failed devices (and how many failed)."""
        async with db.connection(self.pool) as conn:
            return await full_view(conn, await self._owned(conn, rollout_id, who), limit)

    async def page(self, who: Person, limit: int) -> list[dict[str, Any]]:
        async with db.connection(self.pool) as conn:
            rows = await store.page(conn, who.owner_filter, limit)
        return [describe(r, {}, [], []) for r in rows]

    async def act(self, rollout_id: uuid.UUID, who: Person, action: str) -> dict[str, Any]:
        """A person's pause, resume, approve, start or cancel (see :func:`apply`).

        Raises:
            NotFound: no such rollout of theirs.
            TransitionRefused: the action does not apply now (a Conflict).
        """
        async with db.connection(self.pool) as conn:
            await apply(conn, await self._owned(conn, rollout_id, who), action, who.username)
        return await self.view(rollout_id, who)

    # --- the driver ----------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._drive_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Unavailable, OSError):
            async with db.connection(self.pool) as conn:
                await store.release(conn, self.me)

    async def _drive_forever(self) -> None:
        while True:
            try:
                await self.tick()
            except Unavailable as exc:
                log.warning("rollouts: %s; next tick", exc)
            except Exception:
                log.exception("rollouts: a tick failed")
            await asyncio.sleep(TICK_SECONDS)

    async def tick(self) -> None:
        """One pass over the running rollouts this replica holds (or can take over)."""
        async with db.connection(self.pool) as conn:
            held = await store.hold(conn, self.me, LEASE_SECONDS)
            stopped = await store.to_clean(conn)
            ids = [r["id"] for r in held]
            since = await store.last_progress(conn, metrics.PROGRESS.unknown(ids))
        metrics.PROGRESS.held(ids, since, LEASE_SECONDS)
        for rollout in held:
            await self._drive(rollout)
        for rollout_id in stopped:
            await self._cancel_pending(rollout_id)

    async def _drive(self, r: dict[str, Any]) -> None:
        async with db.connection(self.pool) as conn:
            counts = await store.counts(conn, r["id"])
        overall: dict[str, int] = {}
        for c in counts.values():
            for status, n in c.items():
                overall[status] = overall.get(status, 0) + n
        phase = r["phase"]
        criteria = rules.Criteria(r["max_failure_share"], r["min_finished"])
        reason = rules.abort_reason(counts.get(phase, {}), overall, criteria)
        if reason is not None:
            async with db.connection(self.pool) as conn:
                moved = await store.move(
                    conn, r["id"], rules.RUNNING, rules.ABORTED, DRIVER, "aborted", reason
                )
            if moved:
                log.warning("rollout %s aborted: %s", r["id"], reason)
            return
        ends = r["phase_ends"]
        start = ends[phase - 1] if phase else 0
        running = r["seconds_running"] or 0.0
        n = rules.allowance(r["rate_per_minute"], running, r["sent"] - start)
        in_wait = r["phase_done_at"] is not None and (
            (r["seconds_since_phase"] or 0.0) < r["phase_wait_seconds"]
        )
        metrics.PROGRESS.note(
            r["id"],
            (
                phase,
                r["sent"],
                r["phase_done_at"],
                sorted((p, sorted(c.items())) for p, c in counts.items()),
            ),
            waiting=in_wait or (r["sent"] < ends[phase] and n == 0),
        )
        if r["sent"] < ends[phase]:
            await self._send(r, min(n, ends[phase] - r["sent"], BATCH))
            return
        if not rules.phase_finished(counts.get(phase, {}), ends[phase] - start):
            return
        await self._phase_done(r, phase, len(ends))

    async def _phase_done(self, r: dict[str, Any], phase: int, phases: int) -> None:
        async with db.connection(self.pool) as conn:
            if phase + 1 >= phases:
                await store.move(
                    conn,
                    r["id"],
                    rules.RUNNING,
                    rules.COMPLETED,
                    DRIVER,
                    "completed",
                    "every phase finished",
                )
            elif r["approval"]:
                await store.move(
                    conn,
                    r["id"],
                    rules.RUNNING,
                    rules.PAUSED,
                    DRIVER,
                    "awaiting approval",
                    f"phase {phase + 1} finished; approve phase {phase + 2} to go on",
                )
            elif r["phase_wait_seconds"] > 0 and r["phase_done_at"] is None:
                await store.mark_phase_done(conn, r["id"])
                await store.decide(
                    conn,
                    r["id"],
                    DRIVER,
                    "waiting",
                    f"phase {phase + 1} finished; phase {phase + 2} in "
                    f"{r['phase_wait_seconds']:g} s",
                )
            elif (r["seconds_since_phase"] or 0.0) >= r["phase_wait_seconds"]:
                await store.move(
                    conn,
                    r["id"],
                    rules.RUNNING,
                    rules.RUNNING,
                    DRIVER,
                    "advanced",
                    f"phase {phase + 2} started",
                    next_phase=True,
                )

    async def _send(self, r: dict[str, Any], n: int) -> None:
        """Send the next ``n`` targets' commands at once: one statement reads what sending
        needs to know of them (:func:`store.unsent`), one message carries the commands
        (:meth:`Commands.accept_many`), one statement notes them handled. A target whose
        command is stored already (the broker confirmed it before a crash) is noted without
        sending it again. An outage stops the tick; the next tick sends the same targets with
        the same command ids."""
        if n <= 0:
            return
        async with db.connection(self.pool) as conn:
            targets = await store.unsent(conn, r, n)
        outcomes: dict[int, str | None] = {}
        fresh = []
        asked = (r["command_name"], r["command_args"], r["command_ttl"])
        for t in targets:
            reason = None
            if not t["owned"]:
                reason, kind = "the device was deleted (or changed owner)", "deleted"
            elif t["stored"]:
                same = (t["stored_device"], t["name"], t["args"], t["ttl_seconds"])
                if same != (t["device_id"], *asked):
                    reason = "Idempotency-Key already used for a different command"
                    kind = "conflict"
            elif t["pending"] >= self.commands.queue_cap:
                reason, kind = "the device has too many commands not yet final", "queue_full"
            else:
                fresh.append(
                    self.commands.new_command(
                        t["command_id"], r["owner_id"], t["device_id"], *asked
                    )
                )
            if reason is not None:
                metrics.TARGETS_REFUSED.labels(kind).inc()
            outcomes[t["position"]] = reason
        await self.commands.accept_many(fresh)
        metrics.COMMANDS_SENT.inc(len(fresh))
        async with db.connection(self.pool) as conn:
            await store.handled(conn, r["id"], outcomes)

    async def _cancel_pending(self, rollout_id: uuid.UUID) -> None:
        """Cancel the commands not yet final of an aborted or cancelled rollout, then note it
        done. Any replica may do it, again after a crash: a cancel is harmless twice, and a
        command that a device acks meanwhile stays as acked."""
        async with db.connection(self.pool) as conn:
            pending = await store.pending_commands(conn, rollout_id)
        for command_id in pending:
            descriptor = await self.commands.descriptor(command_id)
            if descriptor is not None:
                with contextlib.suppress(TransitionRefused, NotFound):
                    await self.commands.cancel(descriptor, f"rollout {rollout_id}")
        async with db.connection(self.pool) as conn:
            await store.cleaned(conn, rollout_id)


async def full_view(conn: Any, row: dict[str, Any], limit: int) -> dict[str, Any]:
    """A rollout with counts per command status per phase, its newest ``limit`` decisions and
    first ``limit`` failed devices (and how many failed)."""
    counts = await store.counts(conn, row["id"])
    decisions = await store.decisions(conn, row["id"], limit)
    failed = await store.failed(conn, row["id"], sorted(rules.BAD), limit)
    total = sum(n for c in counts.values() for s, n in c.items() if s in rules.BAD)
    return {**describe(row, counts, decisions, failed), "failed_total": total}


async def apply(conn: Any, row: dict[str, Any], action: str, actor: str) -> str:
    """A person's ``action`` on a rollout (a row of :func:`store.get`); returns the new state.
    ``approve`` at the end of a phase starts the next one; a cancelled rollout's commands not
    yet final are cancelled by a driver moments later.

    Raises:
        TransitionRefused: the action does not apply in the rollout's state, or another actor
            changed it meanwhile (a Conflict).
    """
    after = rules.act(row["state"], action)
    at_phase_end = row["sent"] >= row["phase_ends"][row["phase"]]
    more = row["phase"] + 1 < len(row["phase_ends"])
    next_phase = action == "approve" and at_phase_end and more
    reason = f"phase {row['phase'] + 2} approved" if next_phase else ""
    moved = await store.move(
        conn, row["id"], row["state"], after, actor, action, reason, next_phase=next_phase
    )
    if not moved:
        raise TransitionRefused(row["state"], "the rollout changed meanwhile; look again")
    return after


def describe(
    row: dict[str, Any],
    counts: dict[int, dict[str, int]],
    decisions: list[dict[str, Any]],
    failed: list[dict[str, Any]],
) -> dict[str, Any]:
    ends = row["phase_ends"]
    return {
        "id": row["id"],
        "state": row["state"],
        "command": {
            "name": row["command_name"],
            "args": row["command_args"],
            "ttl": row["command_ttl"],
        },
        "target": row["target"],
        "total": row["total"],
        "sent": row["sent"],
        "phase": row["phase"],
        "phases": [
            {
                "index": i,
                "size": end - (ends[i - 1] if i else 0),
                "counts": counts.get(i, {}),
            }
            for i, end in enumerate(ends)
        ],
        "rate_per_minute": row["rate_per_minute"],
        "phase_wait_seconds": row["phase_wait_seconds"],
        "approval": row["approval"],
        "max_failure_share": row["max_failure_share"],
        "min_finished": row["min_finished"],
        "created_at": row["created_at"],
        "finished_at": row["finished_at"],
        "decisions": decisions,
        "failed": failed,
    }

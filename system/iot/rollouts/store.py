"""The rollout tables' statements (migration 0008): rollouts, their targets and decisions.

Command statuses are read through the command core (:func:`iot.commands.store.statuses`),
the devices a rollout targets through :func:`iot.sql.devices.matching`.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

import orjson
import psycopg

from iot.rollouts import metrics

_COLUMNS = (
    "id, owner_id, state, command_name, command_args, command_ttl, target, total, phase_ends,"
    " phase, rate_per_minute, phase_wait_seconds, approval, max_failure_share, min_finished,"
    " sent, run_seconds, running_since, phase_done_at, created_at, finished_at"
)


async def create(
    conn: psycopg.AsyncConnection[Any],
    rollout: dict[str, Any],
    targets: list[tuple[uuid.UUID, int, uuid.UUID]],
    actor: str,
) -> None:
    """Insert a rollout, its ``targets`` (device, phase, command id; in order) and the
    decision that created it, in one transaction."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO rollouts (id, owner_id, state, command_name, command_args, command_ttl,"
            " target, total, phase_ends, rate_per_minute, phase_wait_seconds, approval,"
            " max_failure_share, min_finished, running_since)"
            " VALUES (%(id)s, %(owner_id)s, %(state)s, %(command_name)s, %(command_args)s,"
            " %(command_ttl)s, %(target)s, %(total)s, %(phase_ends)s, %(rate_per_minute)s,"
            " %(phase_wait_seconds)s, %(approval)s, %(max_failure_share)s, %(min_finished)s,"
            " CASE WHEN %(state)s = 'running' THEN now() END)",
            {
                **rollout,
                "command_args": orjson.dumps(rollout["command_args"]).decode(),
                "target": orjson.dumps(rollout["target"]).decode(),
            },
        )
        await conn.execute(
            "INSERT INTO rollout_targets (rollout_id, position, device_id, phase, command_id)"
            " SELECT %s, t.n - 1, t.device, t.phase, t.command"
            " FROM unnest(%s::uuid[], %s::int[], %s::uuid[]) WITH ORDINALITY"
            " AS t(device, phase, command, n)",
            (
                rollout["id"],
                [t[0] for t in targets],
                [t[1] for t in targets],
                [t[2] for t in targets],
            ),
        )
        await _log(conn, rollout["id"], actor, "created", f"{len(targets)} targets")
    metrics.decided("created")


async def decide(
    conn: psycopg.AsyncConnection[Any],
    rollout_id: uuid.UUID,
    actor: str,
    decision: str,
    reason: str,
) -> None:
    """Log a decision (and count it: ``iot_rollout_decisions_total``)."""
    await _log(conn, rollout_id, actor, decision, reason)
    metrics.decided(decision)


async def _log(
    conn: psycopg.AsyncConnection[Any],
    rollout_id: uuid.UUID,
    actor: str,
    decision: str,
    reason: str,
) -> None:
    """Log a decision inside the caller's transaction, which counts it once committed."""
    await conn.execute(
        "INSERT INTO rollout_decisions (rollout_id, actor, decision, reason) VALUES (%s,%s,%s,%s)",
        (rollout_id, actor, decision, reason),
    )


async def get(conn: psycopg.AsyncConnection[Any], rollout_id: uuid.UUID) -> dict[str, Any] | None:
    cur = await conn.execute(f"SELECT {_COLUMNS} FROM rollouts WHERE id = %s", (rollout_id,))
    row = await cur.fetchone()
    return dict(row) if row else None


async def page(
    conn: psycopg.AsyncConnection[Any], owner_id: uuid.UUID | None, limit: int
) -> list[dict[str, Any]]:
    """The newest rollouts of ``owner_id`` (None: everyone's)."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM rollouts WHERE (%(owner)s::uuid IS NULL OR owner_id = %(owner)s)"
        " ORDER BY created_at DESC LIMIT %(limit)s",
        {"owner": owner_id, "limit": limit},
    )
    return [dict(r) for r in await cur.fetchall()]


async def move(
    conn: psycopg.AsyncConnection[Any],
    rollout_id: uuid.UUID,
    before: str,
    after: str,
    actor: str,
    decision: str,
    reason: str = "",
    *,
    next_phase: bool = False,
) -> bool:
    """Change the state from ``before`` to ``after`` (nothing when it is no longer ``before``:
    another actor moved first) and log the decision, in one transaction. Running time (the
    rate counts it) is banked when leaving ``running`` and counted again from now when
    entering it; ``next_phase`` starts the next phase, its running time from 0. Returns
    whether it moved."""
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE rollouts SET state = %(after)s,"
            " run_seconds = CASE WHEN %(step)s = 1 THEN 0 ELSE run_seconds + CASE WHEN state ="
            "   'running' AND running_since IS NOT NULL"
            "   THEN extract(epoch FROM now() - running_since) ELSE 0 END END,"
            " running_since = CASE WHEN %(after)s = 'running' THEN now() END,"
            " phase = phase + %(step)s,"
            " phase_done_at = CASE WHEN %(step)s = 1 THEN NULL ELSE phase_done_at END,"
            " finished_at = CASE WHEN %(after)s IN ('completed', 'aborted', 'cancelled')"
            "   THEN now() END,"
            " driver = CASE WHEN %(after)s = 'running' THEN driver END,"
            " driver_until = CASE WHEN %(after)s = 'running' THEN driver_until END"
            " WHERE id = %(id)s AND state = %(before)s",
            {"id": rollout_id, "before": before, "after": after, "step": int(next_phase)},
        )
        if cur.rowcount != 1:
            return False
        await _log(conn, rollout_id, actor, decision, reason)
    metrics.decided(decision)
    return True


async def hold(
    conn: psycopg.AsyncConnection[Any], driver: str, lease_seconds: float
) -> list[dict[str, Any]]:
    """The running rollouts this ``driver`` holds now: those it held, and those whose driver's
    lease lapsed (a replica that stopped or died). One actor per rollout at a time."""
    cur = await conn.execute(
        f"UPDATE rollouts SET driver = %(me)s, driver_until = now() + %(lease)s * interval '1 s'"
        " WHERE state = 'running' AND (driver IS NULL OR driver = %(me)s OR driver_until < now())"
        f" RETURNING {_COLUMNS}, extract(epoch FROM now() - running_since) + run_seconds"
        " AS seconds_running, extract(epoch FROM now() - phase_done_at) AS seconds_since_phase",
        {"me": driver, "lease": lease_seconds},
    )
    return [dict(r) for r in await cur.fetchall()]


async def last_progress(
    conn: psycopg.AsyncConnection[Any], rollout_ids: list[uuid.UUID]
) -> dict[uuid.UUID, float]:
    """When each of these rollouts last made progress, in epoch seconds: the newest of its
    last send, last decision and its commands' last change (``commands.updated_at``, read
    here only for this). Asked once per rollout a replica takes over (metrics.Progress)."""
    if not rollout_ids:
        return {}
    cur = await conn.execute(
        "SELECT r.id, extract(epoch FROM greatest(r.running_since,"
        " (SELECT max(t.sent_at) FROM rollout_targets t WHERE t.rollout_id = r.id),"
        " (SELECT max(d.at) FROM rollout_decisions d WHERE d.rollout_id = r.id),"
        " (SELECT max(c.updated_at) FROM rollout_targets t JOIN commands c ON c.id = t.command_id"
        "   WHERE t.rollout_id = r.id AND t.sent_at IS NOT NULL))) AS at"
        " FROM rollouts r WHERE r.id = ANY(%s::uuid[])",
        (rollout_ids,),
    )
    return {r["id"]: float(r["at"]) for r in await cur.fetchall() if r["at"] is not None}


async def to_clean(conn: psycopg.AsyncConnection[Any]) -> list[uuid.UUID]:
    """Aborted or cancelled rollouts whose commands not yet final are still to be cancelled."""
    cur = await conn.execute(
        "SELECT id FROM rollouts WHERE state IN ('aborted', 'cancelled') AND NOT commands_cancelled"
    )
    return [r["id"] for r in await cur.fetchall()]


async def cleaned(conn: psycopg.AsyncConnection[Any], rollout_id: uuid.UUID) -> None:
    await conn.execute("UPDATE rollouts SET commands_cancelled = true WHERE id = %s", (rollout_id,))


async def release(conn: psycopg.AsyncConnection[Any], driver: str) -> None:
    await conn.execute(
        "UPDATE rollouts SET driver = NULL, driver_until = NULL WHERE driver = %s", (driver,)
    )


async def unsent(
    conn: psycopg.AsyncConnection[Any],
    rollout: dict[str, Any],
    limit: int,
) -> list[dict[str, Any]]:
    """The next ``limit`` targets not yet handled, of phases up to the rollout's current one, in
    order, each with what sending needs to know, in one statement: ``owned`` (the device still
    exists and is the rollout owner's), ``pending`` (its commands not yet final, the cap counts
    them) and ``stored`` (its command's row exists already: sent before a crash; with the
    stored ``name``, ``args`` and ``ttl_seconds``)."""
    cur = await conn.execute(
        "SELECT t.position, t.device_id, t.command_id, d.id IS NOT NULL AS owned,"
        " c.id IS NOT NULL AS stored, c.device_id AS stored_device, c.name, c.args,"
        " c.ttl_seconds,"
        " (SELECT count(*) FROM commands p WHERE p.device_id = t.device_id"
        "   AND p.status IN ('queued', 'delivered')) AS pending"
        " FROM rollout_targets t"
        " LEFT JOIN devices d ON d.id = t.device_id AND d.owner_id = %(owner)s"
        " LEFT JOIN commands c ON c.id = t.command_id"
        " WHERE t.rollout_id = %(id)s AND t.phase <= %(phase)s AND t.sent_at IS NULL"
        " ORDER BY t.position LIMIT %(limit)s",
        {
            "id": rollout["id"],
            "owner": rollout["owner_id"],
            "phase": rollout["phase"],
            "limit": limit,
        },
    )
    return [dict(r) for r in await cur.fetchall()]


async def handled(
    conn: psycopg.AsyncConnection[Any], rollout_id: uuid.UUID, outcomes: dict[int, str | None]
) -> None:
    """Targets (by position) were sent their command (None) or refused one (the reason):
    each counted once, in one transaction."""
    if not outcomes:
        return
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE rollout_targets t SET sent_at = now(), refused = o.refused"
            " FROM unnest(%s::int[], %s::text[]) AS o(position, refused)"
            " WHERE t.rollout_id = %s AND t.position = o.position AND t.sent_at IS NULL",
            (list(outcomes), list(outcomes.values()), rollout_id),
        )
        if cur.rowcount:
            await conn.execute(
                "UPDATE rollouts SET sent = sent + %s WHERE id = %s", (cur.rowcount, rollout_id)
            )


async def mark_phase_done(conn: psycopg.AsyncConnection[Any], rollout_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE rollouts SET phase_done_at = now() WHERE id = %s AND phase_done_at IS NULL",
        (rollout_id,),
    )


async def counts(
    conn: psycopg.AsyncConnection[Any], rollout_id: uuid.UUID
) -> dict[int, dict[str, int]]:
    """phase -> command status -> count, for handled targets, counted by Postgres (``refused``
    for a target that got no command; ``queued`` for a command whose row is not stored yet)."""
    cur = await conn.execute(
        "SELECT t.phase, CASE WHEN t.refused IS NOT NULL THEN 'refused'"
        " ELSE coalesce(c.status, 'queued') END AS status, count(*) AS n"
        " FROM rollout_targets t LEFT JOIN commands c ON c.id = t.command_id"
        " WHERE t.rollout_id = %s AND t.sent_at IS NOT NULL GROUP BY 1, 2",
        (rollout_id,),
    )
    out: dict[int, dict[str, int]] = defaultdict(dict)
    for r in await cur.fetchall():
        out[r["phase"]][r["status"]] = int(r["n"])
    return dict(out)


async def failed(
    conn: psycopg.AsyncConnection[Any], rollout_id: uuid.UUID, bad: list[str], limit: int
) -> list[dict[str, Any]]:
    """The first ``limit`` handled targets that were refused or whose command ended in one of
    the ``bad`` statuses, in order."""
    cur = await conn.execute(
        "SELECT t.device_id, CASE WHEN t.refused IS NULL THEN t.command_id END AS command_id,"
        " CASE WHEN t.refused IS NOT NULL THEN 'refused' ELSE c.status END AS status,"
        " coalesce(t.refused, '') AS reason"
        " FROM rollout_targets t LEFT JOIN commands c ON c.id = t.command_id"
        " WHERE t.rollout_id = %s AND t.sent_at IS NOT NULL"
        " AND (t.refused IS NOT NULL OR c.status = ANY(%s))"
        " ORDER BY t.position LIMIT %s",
        (rollout_id, bad, limit),
    )
    return [dict(r) for r in await cur.fetchall()]


async def pending_commands(
    conn: psycopg.AsyncConnection[Any], rollout_id: uuid.UUID
) -> list[uuid.UUID]:
    """The rollout's commands not yet final (queued or delivered)."""
    cur = await conn.execute(
        "SELECT c.id FROM rollout_targets t JOIN commands c ON c.id = t.command_id"
        " WHERE t.rollout_id = %s AND t.sent_at IS NOT NULL AND t.refused IS NULL"
        " AND c.status IN ('queued', 'delivered') ORDER BY t.position",
        (rollout_id,),
    )
    return [r["id"] for r in await cur.fetchall()]


async def decisions(
    conn: psycopg.AsyncConnection[Any], rollout_id: uuid.UUID, limit: int
) -> list[dict[str, Any]]:
    """The newest ``limit`` decisions, oldest first."""
    cur = await conn.execute(
        "SELECT * FROM (SELECT at, actor, decision, reason FROM rollout_decisions"
        " WHERE rollout_id = %s ORDER BY at DESC LIMIT %s) newest ORDER BY at",
        (rollout_id, limit),
    )
    return [dict(r) for r in await cur.fetchall()]

"""The command core's statements for many commands at once (a rollout's tick): the same
idempotent insert as :mod:`iot.commands.store`'s, pipelined."""

from __future__ import annotations

from typing import Any

import psycopg

from iot.commands.store import _INSERT, _insert_params


async def store_accepted_many(
    conn: psycopg.AsyncConnection[Any], commands: list[dict[str, Any]]
) -> None:
    """:func:`store_accepted` for many confirmed commands, pipelined (one round trip)."""
    async with conn.cursor() as cur:
        await cur.executemany(_INSERT, [_insert_params(c) for c in commands])


def insert_many(conn: psycopg.Connection[Any], commands: list[dict[str, Any]]) -> int:
    """:func:`insert` for a message of many commands, pipelined; returns how many were new."""
    if not commands:
        return 0
    added = 0
    with conn.cursor() as cur:
        cur.executemany(_INSERT, [_insert_params(c) for c in commands], returning=True)
        while True:
            added += len(cur.fetchall())
            if not cur.nextset():
                break
    return added

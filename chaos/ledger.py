"""The ledger of everything the system accepted (every 2xx), and the checker (docs/design.md
§6 Failure behaviour).

After the fault is removed and the system has drained, the checker compares the ledger with
what the simulated devices executed and what Postgres holds:

- **lost**: accepted, never executed / stored;
- **duplicated**: executed or stored twice (for commands: also handed to the device again after
  its ack was answered 2xx);
- **unexpected**: present, but never accepted.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

ReadingKey = tuple[str, str, int]  # (device id, sensor, ts in microseconds since the epoch)


@dataclass
class Counts:
    accepted: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return self.lost == self.duplicated == self.unexpected == 0


@dataclass
class Ledger:
    """What the fleet saw. Thread-safe: the fleet runs in its own thread."""

    devices: list[str] = field(default_factory=list)
    readings: set[ReadingKey] = field(default_factory=set)
    commands: dict[str, str] = field(default_factory=dict)  # command id -> device id
    executions: Counter[str] = field(default_factory=Counter)
    executed_by: dict[str, str] = field(default_factory=dict)
    acked: set[str] = field(default_factory=set)
    after_ack: Counter[str] = field(default_factory=Counter)
    # when each reading key / command id was accepted (epoch s), for the game day's checks
    accepted_at: dict[Any, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def accept_readings(self, keys: list[ReadingKey]) -> None:
        now = time.time()
        with self._lock:
            self.readings.update(keys)
            for k in keys:
                self.accepted_at.setdefault(k, now)

    def accept_command(self, command_id: str, device_id: str) -> None:
        with self._lock:
            self.commands[command_id] = device_id
            self.accepted_at.setdefault(command_id, time.time())

    def unaccounted(self, stored: set[ReadingKey]) -> dict[Any, float]:
        """Readings accepted but not in ``stored`` and commands accepted but not executed,
        with the time each was accepted."""
        with self._lock:
            items = (self.readings - stored) | (set(self.commands) - set(self.executed_by))
            return {k: self.accepted_at.get(k, 0.0) for k in items}

    def delivered(self, command_id: str, device_id: str) -> bool:
        """A device received a command; returns True if it must execute it (first time)."""
        with self._lock:
            if command_id in self.acked:
                self.after_ack[command_id] += 1
            if command_id in self.executed_by:
                return False
            self.executed_by[command_id] = device_id
            self.executions[command_id] += 1
            return True

    def ack_accepted(self, command_id: str) -> None:
        with self._lock:
            self.acked.add(command_id)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "devices": len(self.devices),
                "readings_accepted": len(self.readings),
                "commands_accepted": len(self.commands),
                "commands_executed": len(self.executed_by),
                "commands_acked": len(self.acked),
            }

    def drained(self) -> bool:
        """Every accepted command was executed and its ack accepted."""
        with self._lock:
            return set(self.commands) <= self.acked


def _examples(items: Any, n: int = 5) -> list[str]:
    return [str(x) for x in sorted(items, key=str)[:n]]


def check_readings(ledger: Ledger, conn: psycopg.Connection[Any]) -> Counts:
    rows = conn.execute(
        "SELECT device_id::text, sensor, (extract(epoch FROM ts) * 1000000)::bigint"
        " FROM readings WHERE device_id = ANY(%s)",
        ([uuid.UUID(d) for d in ledger.devices],),
    ).fetchall()
    stored = [(r[0], r[1], int(r[2])) for r in rows]
    stored_set = set(stored)
    lost = ledger.readings - stored_set
    unexpected = stored_set - ledger.readings
    return Counts(
        accepted=len(ledger.readings),
        lost=len(lost),
        duplicated=len(stored) - len(stored_set),
        unexpected=len(unexpected),
        examples={"lost": _examples(lost), "unexpected": _examples(unexpected)},
    )


def check_commands(ledger: Ledger) -> Counts:
    accepted = set(ledger.commands)
    executed = set(ledger.executed_by)
    lost = accepted - executed
    wrong_device = {c for c, d in ledger.executed_by.items() if ledger.commands.get(c, d) != d}
    unexpected = (executed - accepted) | wrong_device
    twice = {c for c, n in ledger.executions.items() if n > 1}
    return Counts(
        accepted=len(accepted),
        lost=len(lost),
        duplicated=len(twice) + sum(ledger.after_ack.values()),
        unexpected=len(unexpected),
        examples={
            "lost": _examples(lost),
            "unexpected": _examples(unexpected),
            "redelivered_after_ack": _examples(ledger.after_ack),
        },
    )


def check_command_log(ledger: Ledger, conn: psycopg.Connection[Any]) -> Counts:
    """Every accepted command has its row, final as ``succeeded`` with exactly one such event;
    no event is stored twice; no row exists that was never accepted."""
    devices = [uuid.UUID(d) for d in ledger.devices]
    rows = {
        str(r[0]): r[1]
        for r in conn.execute(
            "SELECT id, status FROM commands WHERE device_id = ANY(%s)", (devices,)
        ).fetchall()
    }
    repeated = conn.execute(
        "SELECT command_id::text, status, attempt, count(*) FROM command_events"
        " WHERE device_id = ANY(%s) GROUP BY 1, 2, 3 HAVING count(*) > 1",
        (devices,),
    ).fetchall()
    accepted = set(ledger.commands)
    lost = {c for c in accepted if rows.get(c) != "succeeded"}
    unexpected = set(rows) - accepted
    return Counts(
        accepted=len(accepted),
        lost=len(lost),
        duplicated=sum(int(r[3]) - 1 for r in repeated),
        unexpected=len(unexpected),
        examples={
            "lost": [f"{c} ({rows.get(c, 'no row')})" for c in _examples(lost)],
            "unexpected": _examples(unexpected),
            "duplicated": [f"{r[0]} {r[1]} attempt {r[2]} x{r[3]}" for r in repeated[:5]],
        },
    )


def check(ledger: Ledger, database_url: str) -> dict[str, dict[str, Any]]:
    """All three checks; a dict of Counts as plain dicts (for the JSON report)."""
    with psycopg.connect(database_url) as conn:
        results = {
            "commands": check_commands(ledger),
            "readings": check_readings(ledger, conn),
            "command_log": check_command_log(ledger, conn),
        }
    return {k: {**asdict(v), "clean": v.clean} for k, v in results.items()}


def loss_problems(counts: dict[str, dict[str, Any]]) -> list[str]:
    """One line per check of :func:`check` that found loss, duplicates or unexpected items."""
    return [
        f"{k}: lost {v['lost']}, duplicated {v['duplicated']}, unexpected {v['unexpected']}"
        for k, v in counts.items()
        if not v["clean"]
    ]

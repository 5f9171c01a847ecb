"""A rollout through a fault: an experiment with a ``rollout:`` section sends one to its whole
fleet just before the fault, and checks afterwards that it ended as expected.

The rollout's command ids are known as soon as it is created (``command_id_for(owner,
"rollout:<rollout>:<device>")``, the command core's Idempotency-Key ids), so every targeted
device's command goes into the ledger at once, as accepted: the usual check then proves that
each device ran its command exactly once, on the right device, with its row final in Postgres,
and the fleet does not drain until every device acked it. Here: the rollout reached the state
expected (``completed`` unless the experiment says otherwise) and sent to every target.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from chaos.identity import Identity
from chaos.ledger import Ledger
from iot.commands.service import command_id_for
from iot.rollouts.service import idempotency_key

COMMAND = "chaos"  # the fleet's devices run it (chaos.fleet registers it)
UNDER_WAY_TIMEOUT = 60
END_TIMEOUT = 120


class RolloutError(RuntimeError):
    """The rollout could not be created or did not get under way."""


@dataclass
class RolloutRun:
    id: str
    devices: int
    expect_state: str
    created_at: float
    sent_at_fault: int = 0  # targets sent when the fault started
    view: dict[str, Any] = field(default_factory=dict)


def body(spec: dict[str, Any]) -> dict[str, Any]:
    """The POST /rollouts body of an experiment's ``rollout:`` section (its keys override)."""
    out = {
        "command": {"name": COMMAND, "args": {"rollout": True}, "ttl": 3600},
        "target": {"all": True},
        "phases": [10, 50, 100],
        "rate_per_minute": 120,
        "max_failure_share": 0.5,
        "min_finished": 5,
    }
    out.update({k: v for k, v in spec.items() if k not in ("expect_state", "under_way")})
    return out


def begin(
    base_url: str,
    identity: Identity,
    ledger: Ledger,
    spec: dict[str, Any],
    name: str,
    progress: Callable[[str], None],
) -> RolloutRun:
    """Create the rollout to ``identity``'s devices, put its commands in the ledger, and wait
    until it sent to ``under_way`` devices (default: its first phase) so that the fault finds
    it sending.

    Raises:
        RolloutError: the rollout could not be created or did not get under way.
    """
    headers = identity.headers
    with httpx.Client(base_url=base_url, timeout=30) as http:
        r = http.post("/rollouts", json=body(spec), headers=headers)
        if r.status_code != 201:
            raise RolloutError(f"POST /rollouts answered {r.status_code}: {r.text}")
        view = r.json()
        run = RolloutRun(
            view["id"], int(view["total"]), spec.get("expect_state", "completed"), time.time()
        )
        for device in ledger.devices:
            key = idempotency_key(run.id, device)
            ledger.accept_command(str(command_id_for(identity.user_id, key)), device)
        under_way = int(spec.get("under_way", view["phases"][0]["size"]))
        deadline = time.monotonic() + UNDER_WAY_TIMEOUT
        while view["sent"] < under_way:
            if time.monotonic() > deadline:
                raise RolloutError(f"rollout {run.id} sent {view['sent']} of {under_way} in time")
            time.sleep(0.5)
            view = http.get(f"/rollouts/{run.id}", headers=headers).json()
    run.sent_at_fault = int(view["sent"])
    progress(f"[{name}] rollout {run.id} to {run.devices} devices under way: {view['sent']} sent")
    return run


def finish(base_url: str, headers: dict[str, str], run: RolloutRun) -> list[str]:
    """Wait (up to ``END_TIMEOUT``) for the rollout to end; returns the problems found."""
    deadline = time.monotonic() + END_TIMEOUT
    with httpx.Client(base_url=base_url, timeout=30) as http:
        while True:
            try:
                run.view = http.get(f"/rollouts/{run.id}", headers=headers).json()
            except httpx.HTTPError:
                run.view = {}
            ended = run.view.get("state") in ("completed", "aborted", "cancelled")
            if ended or time.monotonic() > deadline:
                break
            time.sleep(1)
    problems = []
    state = run.view.get("state")
    if state != run.expect_state:
        problems.append(f"rollout {run.id} ended {state}, expected {run.expect_state}")
    if run.expect_state == "completed" and run.view.get("sent") != run.devices:
        problems.append(f"rollout {run.id} sent {run.view.get('sent')} of {run.devices}")
    return problems


def summary(run: RolloutRun) -> dict[str, Any]:
    """The rollout's part of the report."""
    v = run.view
    counts: dict[str, int] = {}
    for phase in v.get("phases", []):
        for status, n in phase["counts"].items():
            counts[status] = counts.get(status, 0) + n
    return {
        "id": run.id,
        "state": v.get("state"),
        "targets": run.devices,
        "sent": v.get("sent"),
        "sent_when_the_fault_started": run.sent_at_fault,
        "counts": counts,
        "decisions": [f"{d['decision']}: {d['reason']}" for d in v.get("decisions", [])],
    }


def rollout_markdown(s: dict[str, Any]) -> list[str]:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(s["counts"].items()))
    return [
        "",
        f"Rollout `{s['id']}`: {s.get('sent_when_the_fault_started', '?')} of {s['targets']}"
        f" devices sent when the fault started; ended **{s['state']}**, sent to {s['sent']};"
        f" their commands: {counts}. Decisions:",
        *(f"- {d}" for d in s["decisions"]),
    ]

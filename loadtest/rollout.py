"""The rollout scenario's figures (``rollout.jsonl``, written by ``locustfiles/rollout.py``):
how long the rollout took to send to and to reach every device, and the rate it held."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FINAL = frozenset({"succeeded", "failed", "rejected", "expired", "dead", "cancelled", "refused"})


def summary(path: Path) -> dict[str, Any] | None:
    """None when the run had no rollout (another scenario, or it never started)."""
    if not path.exists():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    created = next((r for r in records if "created" in r), None)
    if created is None:
        return None
    t0 = created["t"]
    samples = [r for r in records if "state" in r]
    total = created["targets"]
    all_sent = next((r["t"] for r in samples if r["sent"] >= total), None)
    finished = [
        (r["t"], sum(n for c in r["phases"] for s, n in c.items() if s in FINAL)) for r in samples
    ]
    reached = next((t for t, n in finished if n >= total), None)
    last = samples[-1] if samples else {}
    return {
        "rollout": created["created"],
        "targets": total,
        "rate_asked_per_minute": created["rate_per_minute"],
        "state": last.get("state"),
        "sent": last.get("sent", 0),
        "seconds_to_send_all": None if all_sent is None else round(all_sent - t0, 1),
        "seconds_to_reach_all": None if reached is None else round(reached - t0, 1),
        "rate_held_per_minute": _rate(t0, total, all_sent, last),
        "counts": _merged(last.get("phases") or []),
    }


def _rate(t0: float, total: int, all_sent: float | None, last: dict[str, Any]) -> float | None:
    """Devices sent per minute from the rollout's creation to the last send (or, when it did
    not send to all within the run, to the last sample)."""
    if all_sent is not None:
        return round(total / (all_sent - t0) * 60, 1) if all_sent > t0 else None
    if not last or last["t"] <= t0:
        return None
    return round(last["sent"] / (last["t"] - t0) * 60, 1)


def _merged(phases: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in phases:
        for status, n in c.items():
            out[status] = out.get(status, 0) + n
    return out


def markdown(s: dict[str, Any] | None) -> list[str]:
    if not s:
        return []

    def sec(v: float | None) -> str:
        return "not within the run" if v is None else f"{v:,.1f} s"

    return [
        "## Rollout",
        "",
        f"Rollout `{s['rollout']}` to {s['targets']:,} running devices in phases of 1 %, 10 %, "
        f"100 % at {s['rate_asked_per_minute']:,.0f} devices/min: ended **{s['state']}**.",
        f"Sent to every device in {sec(s['seconds_to_send_all'])} (rate held "
        f"{s['rate_held_per_minute'] or 0:,.0f} devices/min, phases' waits for completion "
        f"included; {s.get('sent', s['targets']):,} sent); every device's command final in "
        f"{sec(s['seconds_to_reach_all'])}. "
        f"Commands: {', '.join(f'{k} {v:,}' for k, v in sorted(s['counts'].items()))}.",
        "",
    ]

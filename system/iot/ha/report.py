"""The figures of one fault, from what the client and the probe recorded (pure arithmetic), and
the report of a whole bench as Markdown and JSON."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def summarize(attempts: Iterable[Mapping[str, Any]], fault_at: float, old_primary: str,
              present: set[int], probe: Iterable[Mapping[str, Any]] = (),
              healed_at: float | None = None) -> dict[str, Any]:
    """Failover time, what the client saw, data loss and the cut-off primary's writes.

    ``attempts``: the client's (``seq``, ``sent``, ``done``, ``server``, ``error``), seq 0 a
    failed connection. ``present``: the seqs the primary holds afterwards. ``probe``: the writes
    made inside the faulty host (``t``, ``done``, ``result``), counted until ``healed_at``."""
    rows = sorted(attempts, key=lambda a: a["done"])
    acked = [a for a in rows if not a["error"]]
    before = [a for a in acked if a["done"] <= fault_at]
    after = [a for a in acked if a["sent"] >= fault_at]
    last_before = before[-1]["done"] if before else None
    first_after = after[0] if after else None
    failover = (round(first_after["done"] - last_before, 2)
                if first_after and last_before is not None else None)
    gaps = [b["done"] - a["done"] for a, b in zip(acked, acked[1:], strict=False)]
    acked_seqs = {int(a["seq"]) for a in acked}
    failed_seqs = {int(a["seq"]) for a in rows if a["error"] and a["seq"]}
    errors = Counter(a["error"] for a in rows if a["error"])
    servers: list[str] = []  # who acknowledged writes after the fault, in order
    for a in after:
        if not servers or servers[-1] != a["server"]:
            servers.append(a["server"])
    return {
        "failover_s": failover,
        "longest_gap_s": round(max(gaps), 2) if gaps else None,
        "resumed_on": first_after["server"] if first_after else None,
        "resumed_on_old_primary": (first_after["server"] == old_primary
                                   if first_after else None),
        "acked_by_after_fault": servers,
        "writes_acked": len(acked_seqs),
        "writes_failed": len(failed_seqs),
        "connect_failures": sum(1 for a in rows if a["error"] and not a["seq"]),
        "errors": dict(errors.most_common()),
        "lost": sorted(acked_seqs - present),
        "committed_unacked": len(failed_seqs & present),
        "fencing": fencing(probe, fault_at, healed_at),
    }


def fencing(probe: Iterable[Mapping[str, Any]], fault_at: float,
            healed_at: float | None = None) -> dict[str, Any] | None:
    """Did the cut-off primary accept writes while it was cut off, and for how long?"""
    end = healed_at if healed_at is not None else float("inf")
    lines = [p for p in probe if fault_at <= p["t"] < end]
    if not lines:
        return None
    ok = [p for p in lines if p["result"] == "ok"]
    local = [p for p in lines if p["result"] == "local-only"]
    accepted = ok + local
    refused = [p for p in lines if p["result"] not in ("ok", "local-only")]
    last = max((p["done"] for p in accepted), default=None)
    first_refusal = min((p["t"] for p in refused), default=None)
    return {
        "acked_after_cut": len(ok),
        "local_only_after_cut": len(local),
        "accepting_for_s": round(last - fault_at, 1) if last is not None else 0.0,
        "refusing_after_s": (round(first_refusal - fault_at, 1)
                             if first_refusal is not None else None),
        "refusals": dict(Counter(p["result"] for p in refused).most_common(3)),
    }


def _cell(value: Any, unit: str = "") -> str:
    return "–" if value is None else f"{value}{unit}"


def _errors(errors: Mapping[str, int]) -> str:
    return "; ".join(f"{n}× {e}" for e, n in list(errors.items())[:3]) or "none"


def _fence(f: Mapping[str, Any] | None) -> str:
    if f is None:
        return "–"
    if not f["acked_after_cut"] and not f["local_only_after_cut"]:
        return "no writes accepted"
    parts = []
    if f["acked_after_cut"]:
        parts.append(f"{f['acked_after_cut']} acked")
    if f["local_only_after_cut"]:
        parts.append(f"{f['local_only_after_cut']} committed locally, not acked")
    fenced = f["refusing_after_s"]
    tail = f"refused from {fenced} s" if fenced is not None else "never refused"
    return f"{', '.join(parts)} for {f['accepting_for_s']} s, {tail}"


def markdown(results: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    lines = [
        "# Postgres failover engines on the same faults",
        "",
        f"Run {meta.get('started', '')}; {meta.get('rate', '')} writes a second from one "
        "client (libpq multi-host, `target_session_attrs=read-write`), each fault on a fresh "
        "cluster. Failover: the last acknowledged write before the fault to the first one "
        "after it. Lost: acknowledged to the client, absent afterwards.",
        "",
        "| engine | replication | fault | failover s | longest gap s | resumed on | acked | "
        "failed | lost | committed, not acked | client saw | cut-off primary | "
        "old primary after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.get("summary") or {}
        if r.get("error"):
            lines.append(f"| {r['engine']} | {r['mode']} | {r['fault']} | failed: "
                         f"{r['error'][:120]} |" + " |" * 9)
            continue
        resumed = ("old primary (restarted)" if s.get("resumed_on_old_primary")
                   else "standby (promoted)" if s.get("resumed_on") else "never")
        if len(s.get("acked_by_after_fault", [])) > 1:
            resumed += ", then " + " → ".join(s["acked_by_after_fault"][1:])
        lines.append(
            f"| {r['engine']} | {r['mode']} | {r['fault']} | {_cell(s['failover_s'])} | "
            f"{_cell(s['longest_gap_s'])} | {resumed} | {s['writes_acked']} | "
            f"{s['writes_failed']} | {len(s['lost'])} | {s['committed_unacked']} | "
            f"{_errors(s['errors'])} | {_fence(s['fencing'])} | {r.get('rejoin', '–')} |"
        )
    lines += ["", "Notes per run:", ""]
    for r in results:
        for note in r.get("notes", []):
            lines.append(f"- {r['engine']} {r['mode']} {r['fault']}: {note}")
    return "\n".join(lines) + "\n"


def write(folder: Path, results: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(
        json.dumps({"meta": dict(meta), "results": list(results)}, indent=2, default=str))
    (folder / "report.md").write_text(markdown(results, meta))
    return folder / "report.md"

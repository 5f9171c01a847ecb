"""Reports of chaos runs: JSON (everything), Markdown (for people) and a plot."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

from chaos.rollout import rollout_markdown  # noqa: E402

REPORTS = Path(__file__).resolve().parents[1] / "reports" / "chaos"


def write(report: dict[str, Any], root: Path = REPORTS) -> Path:
    """Write report.json, report.md and timeline.png into a new folder; returns the folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(report.get("fault_start", time.time())))
    folder = root / f"{stamp}-{label(report).replace(' ', '-')}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str))
    plot(report, folder / "timeline.png")
    (folder / "report.md").write_text(markdown(report))
    return folder


def label(r: dict[str, Any]) -> str:
    """The experiment's name, with `` load N`` when it ran under a background load."""
    load = r.get("load")
    return f"{r['experiment']} load {load['devices']}" if load else r["experiment"]


def _statuses(by_status: dict[str, int]) -> str:
    return ", ".join(f"{n:,} × {s}" for s, n in sorted(by_status.items())) or "none"


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f} ms"


def load_line(load: dict[str, Any]) -> str:
    """One line about the background load: devices, what happened during the fault, the
    readings check and where locust's reports are."""
    f = load["windows"].get("fault") or {}
    r = load.get("readings") or {}
    failed = _statuses(f.get("failures_by_status") or {})
    return (
        f"load: {load['devices']} devices, {load['run']['requests_per_s']:g} req/s; during the "
        f"fault {f.get('requests_per_s', 0):g} req/s, failures {failed}"
        f", p99 POST /sensors {_ms(f.get('sensors_p99_ms'))}; readings answered 201 "
        f"{r.get('accepted', '?')}, missing in Postgres {r.get('missing', 'not checked')}; "
        f"locust reports {load['reports']}"
    )


def _load_markdown(load: dict[str, Any]) -> list[str]:
    r = load.get("readings") or {}
    lines = [
        "",
        f"## Background load: {load['devices']} emulated devices (locust)",
        "",
        "The ledger above covers the experiment's own fleet; the load's failed requests are "
        "expected during the fault and not counted as loss, but every reading it got a 201 "
        "for must be in Postgres. A request counts in the phase in which it started: failures "
        "under *before* are mostly requests in flight when the fault began (long polls of up "
        "to 10 s, POSTs waiting for the broker's confirm).",
        "",
        "| phase | seconds | requests/s | failed | failures by status | POST /sensors p99 "
        "| command e2e p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    phases = {**load["windows"], "locust run": load["run"]}
    for name, w in phases.items():
        if not w["seconds"]:  # e.g. no recovery phase after a kill
            continue
        lines.append(
            f"| {name} | {w['seconds']:g} | {w['requests_per_s']:g} | {w['failures']} | "
            f"{_statuses(w['failures_by_status'])} | {_ms(w['sensors_p99_ms'])} | "
            f"{_ms(w['command_e2e_p99_ms'])} |"
        )
    lines += [
        "",
        f"- readings answered 201: {r.get('accepted', '?')} from {r.get('devices', '?')} "
        f"devices; in Postgres {r.get('stored', '?')}, missing {r.get('missing', 'not checked')}"
        f" (extra rows {r.get('extra', '?')}: attempts stored although their answer was lost)",
        f"- locust's reports (CSV, HTML, capacity report): `{load['reports']}`",
    ]
    return lines


def _after_recovery_markdown(after: dict[str, Any] | None) -> list[str]:
    """What still fired at the end of the recovery window (reports since that check)."""
    if not after:
        return []
    lines = [
        f"- still firing {after['seconds_after_rollback']:g} s after the rollback, the end of "
        f"the recovery window: {', '.join(after['left_firing']) or 'none'}"
    ]
    for kind, what in (
        ("since_before", "firing since before the fault, not counted"),
        ("by_design", "outlasting their cause by design, not counted"),
        ("within_window", "still averaging over the fault (their own window), not counted"),
    ):
        if after.get(kind):
            lines.append(f"  - {what}: {', '.join(after[kind])}")
    return lines


def counts_table(counts: dict[str, dict[str, Any]]) -> list[str]:
    """The ledger's counts as a Markdown table."""
    return [
        "| what | accepted | lost | duplicated | unexpected |",
        "|---|---|---|---|---|",
        *(
            f"| {kind} | {c['accepted']} | {c['lost']} | {c['duplicated']} | {c['unexpected']} |"
            for kind, c in counts.items()
        ),
    ]


def markdown(r: dict[str, Any]) -> str:
    verdict = "PASSED" if r.get("passed") else "FAILED"
    lines = [
        f"# {r['title']} — {verdict}",
        "",
        r.get("description", "").strip(),
        "",
        f"- fault: {', '.join(a['action'] + ' ' + a['target'] for a in r['method'])}"
        f" for {r['fault_seconds']:g} s",
        f"- recovery: {r.get('recovery_seconds')} s (bound {r['recovery_bound_seconds']:g} s)",
        f"- drained: {r.get('drained')} in {r.get('drain_seconds')} s",
        f"- accepted: {r['ledger']['readings_accepted']} readings, "
        f"{r['ledger']['commands_accepted']} commands",
        "",
        *counts_table(r["counts"]),
    ]
    lines += ["", "Alerts (seconds after the fault started):"]
    for name in r.get("expected_alerts", []):
        t = r["time_to_detect"].get(name)
        lines.append(f"- expected {name}: " + ("not fired" if t is None else f"fired at {t} s"))
    others = {
        k: v for k, v in r.get("alerts_fired", {}).items() if k not in r.get("expected_alerts", [])
    }
    for name, t in sorted(others.items()):
        lines.append(f"- also {name}: fired at {t} s")
    lines += _after_recovery_markdown(r.get("alerts_after_recovery"))
    if r.get("load"):
        lines += _load_markdown(r["load"])
    if r.get("rollout"):
        lines += rollout_markdown(r["rollout"])
    if r.get("problems"):
        lines += ["", "Problems:"] + [f"- {p}" for p in r["problems"]]
    lines += ["", "![timeline](timeline.png)", ""]
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> None:
    series = r.get("timeline", [])
    if not series:
        return
    t0 = r["started_at"]
    xs = [s["t"] - t0 for s in series]
    load = (r.get("load") or {}).get("series") or []
    if load:  # the load's answers on a plot of their own below (ten times the fleet's)
        fig, (ax, below) = plt.subplots(2, 1, figsize=(10, 7.5), sharex=True)
        below.plot([x[0] - t0 for x in load], [x[1] for x in load], color="tab:green",
                   label=f"load ({r['load']['devices']:,} devices): 2xx/s")  # fmt: skip
        below.plot([x[0] - t0 for x in load], [x[2] for x in load], color="tab:red",
                   label="load: failed/s")  # fmt: skip
        below.axvspan(r["fault_start"] - t0, r["fault_end"] - t0, color="tab:orange", alpha=0.2)
        below.set_xlabel("seconds")
        below.set_ylabel("load requests per second")
        below.legend(loc="upper left")
    else:
        fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot(xs, [sum(s["ok"].values()) for s in series], label="2xx answers/s", color="tab:green")
    ax.plot(xs, [sum(s["err"].values()) for s in series], label="errors/s", color="tab:red")
    ax.axvspan(
        r["fault_start"] - t0, r["fault_end"] - t0, color="tab:orange", alpha=0.2, label="fault"
    )
    if not load:
        ax.set_xlabel("seconds")
    ax.set_ylabel("answers per second")
    backlog = [(t - t0, d) for t, d in r.get("backlog", []) if d is not None]
    if backlog:
        ax2 = ax.twinx()
        ax2.plot(
            [b[0] for b in backlog],
            [b[1] for b in backlog],
            color="tab:blue",
            linestyle="--",
            label="backlog (messages)",
        )
        ax2.set_ylabel("backlog (messages)")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title(f"{r['title']} ({'passed' if r.get('passed') else 'FAILED'})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def latest(root: Path = REPORTS) -> dict[str, dict[str, Any]]:
    """The newest report of each experiment under ``root``, by :func:`label` (the experiment's
    name, and its load if it ran under one)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(root.glob("*/report.json")):  # folder names start with the UTC time
        try:
            r = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if "counts" in r:
            found[label(r)] = r
    return found


def summary_table(reports: list[dict[str, Any]]) -> str:
    """The results table of chaos/README.md: one row per report."""
    lines = [
        "| experiment | fault s | readings accepted | commands accepted | lost | duplicated "
        "| unexpected | error answers | recovery s | expected alert, time to detect |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        counts = r["counts"].values()
        alerts = ", ".join(
            f"{a} " + ("not fired" if t is None else f"{t} s")
            for a, t in r.get("time_to_detect", {}).items()
        )
        cells = [
            r["experiment"],
            f"{r['fault_seconds']:g}",
            r["ledger"]["readings_accepted"],
            r["ledger"]["commands_accepted"],
            sum(c["lost"] for c in counts),
            sum(c["duplicated"] for c in counts),
            sum(c["unexpected"] for c in counts),
            sum(r.get("error_causes", {}).values()),
            r.get("recovery_seconds"),
            alerts or "–",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def load_table(reports: list[dict[str, Any]]) -> str:
    """The table of experiments under a background load (chaos/README.md): loss in the
    experiment's ledger, recovery, and what the load saw during the fault."""
    lines = [
        "| experiment | load devices | fault s | s under load | lost / duplicated / unexpected "
        "| recovery s | load req/s during the fault | load failures during the fault "
        "| POST /sensors p99 during the fault | load readings 201 / missing in Postgres |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        load = r["load"]
        counts = r["counts"].values()
        f = load["windows"].get("fault") or {}
        before = (load["windows"].get("before") or {}).get("failures", 0)
        readings = load.get("readings") or {}
        loss = "{} / {} / {}".format(
            sum(c["lost"] for c in counts),
            sum(c["duplicated"] for c in counts),
            sum(c["unexpected"] for c in counts),
        )
        cells = [
            r["experiment"],
            f"{load['devices']:,}",
            f"{r['fault_seconds']:g}",
            f"{load['windows'].get('whole', {}).get('seconds', 0):g}",
            loss,
            r.get("recovery_seconds"),
            f"{f.get('requests_per_s', 0):g}",
            f"{f.get('failures', 0):,} ({_statuses(f.get('failures_by_status') or {})})"
            + (f" + {before:,} begun before it" if before else ""),
            _ms(f.get("sensors_p99_ms")),
            f"{readings.get('accepted', '?'):,} / {readings.get('missing', 'not checked')}",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)

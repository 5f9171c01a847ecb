"""Reports of chaos runs: JSON (everything), Markdown (for people) and a plot."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

REPORTS = Path(__file__).resolve().parents[1] / "reports" / "chaos"


def write(report: dict[str, Any], root: Path = REPORTS) -> Path:
    """Write report.json, report.md and timeline.png into a new folder; returns the folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(report.get("fault_start", time.time())))
    folder = root / f"{stamp}-{report['experiment']}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str))
    plot(report, folder / "timeline.png")
    (folder / "report.md").write_text(markdown(report))
    return folder


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
        "| what | accepted | lost | duplicated | unexpected |",
        "|---|---|---|---|---|",
    ]
    for kind, c in r["counts"].items():
        lines.append(
            f"| {kind} | {c['accepted']} | {c['lost']} | {c['duplicated']} | {c['unexpected']} |"
        )
    lines += ["", "Alerts (seconds after the fault started):"]
    for name in r.get("expected_alerts", []):
        t = r["time_to_detect"].get(name)
        lines.append(f"- expected {name}: " + ("not fired" if t is None else f"fired at {t} s"))
    others = {
        k: v for k, v in r.get("alerts_fired", {}).items() if k not in r.get("expected_alerts", [])
    }
    for name, t in sorted(others.items()):
        lines.append(f"- also {name}: fired at {t} s")
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
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot(xs, [sum(s["ok"].values()) for s in series], label="2xx answers/s", color="tab:green")
    ax.plot(xs, [sum(s["err"].values()) for s in series], label="errors/s", color="tab:red")
    ax.axvspan(
        r["fault_start"] - t0, r["fault_end"] - t0, color="tab:orange", alpha=0.2, label="fault"
    )
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
    """The newest report of each experiment under ``root``, by experiment name."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(root.glob("*/report.json")):  # folder names start with the UTC time
        try:
            r = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if "counts" in r:
            found[r["experiment"]] = r
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

"""The game day's report: ``schedule.json`` (written before it starts), ``report.json``,
``report.md`` and ``timeline.png`` (faults as bars per kind, the fleet's answers and errors per
second, the SLIs from Prometheus) in ``reports/chaos/gameday-<time>-seed<S>/``."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

from chaos import gameday  # noqa: E402
from chaos.fleet import Timeline  # noqa: E402
from chaos.ledger import loss_problems  # noqa: E402
from chaos.report import REPORTS, counts_table  # noqa: E402
from loadtest.prom import PromError, Prometheus  # noqa: E402

ROUTES = 'job="api",route!~"/ping|/health|/metrics"'
SLIS = {
    "availability": (
        f'1 - (sum(rate(iot_http_requests_total{{{ROUTES},status=~"5.."}}[1m])) or vector(0))'
        f" / sum(rate(iot_http_requests_total{{{ROUTES}}}[1m]))"
    ),
    "POST /sensors p99 s": (
        "histogram_quantile(0.99, sum by (le) (rate(iot_http_request_duration_seconds_bucket"
        '{job="api",route="/sensors",method="POST"}[1m])))'
    ),
    "command end to end p99 s": (
        "histogram_quantile(0.99, sum by (le) (rate("
        'iot_command_delivery_latency_seconds_bucket{job="api"}[1m])))'
    ),
    "ingest lag p99 s": (
        "histogram_quantile(0.99, sum by (le) (rate("
        'iot_ingest_lag_seconds_bucket{job="worker"}[1m])))'
    ),
}


def folder_for(seed: int, root: Path = REPORTS) -> Path:
    return root / f"gameday-{time.strftime('%Y%m%d-%H%M%S')}-seed{seed}"


def write_schedule(folder: Path, o: gameday.Options, plan: list[gameday.Window]) -> None:
    (folder / "schedule.json").write_text(
        json.dumps({"options": asdict(o), "windows": [w.as_dict() for w in plan]}, indent=2)
    )


def _errors_per_second(timeline: Timeline) -> list[tuple[float, int]]:
    return [(float(s["t"]), sum(s["err"].values())) for s in timeline.series()]


def build(
    o: gameday.Options,
    plan: list[gameday.Window],
    t0: float,
    healed_at: float,
    end: float,
    counts: dict[str, dict[str, Any]],
    breaches: list[dict[str, Any]],
    checks: int,
    timeline: Timeline,
    alert_samples: list[tuple[float, set[tuple[str, str]]]],
    left: set[str],
    sticky: frozenset[str],
    drained: bool,
    halted: str | None,
    load: dict[str, Any] | None,
    prom: Prometheus,
    alerts_end: dict[str, Any],
) -> dict[str, Any]:
    spans = gameday.spans(alert_samples)
    errors = _errors_per_second(timeline)
    faults = []
    for w in plan:
        if w.started is None:
            continue
        faults.append(
            {
                **w.as_dict(),
                "time_to_detect": gameday.time_to_detect(w, spans, 60.0),
                "time_to_recover": gameday.time_to_recover(w, errors),
                "errors": sum(n for t, n in errors if w.started <= t <= (w.ended or end)),
            }
        )
    missed = [
        {"window": f["index"], "kind": f["kind"], "alert": a}
        for f in faults
        for a, t in f["time_to_detect"].items()
        if t is None
    ]
    sli: dict[str, list[tuple[float, float]]] = {}
    for name, expr in SLIS.items():
        try:
            series = prom.series(expr, t0, end, max(5.0, (end - t0) / 400))
            sli[name] = next(iter(series.values()), [])
        except PromError:
            sli[name] = []
    problems = loss_problems(counts)
    if breaches:
        problems.append(f"{len(breaches)} breach(es) of the continuous ledger")
    if not drained:
        problems.append("the fleet did not drain")
    still = sorted(left - sticky)
    if still:
        problems.append(f"alert(s) still firing after the recovery window: {', '.join(still)}")
    if halted:
        problems.append(f"halted: {halted}")
    if load and load.get("readings", {}).get("missing"):
        problems.append(f"load: {load['readings']['missing']} readings answered 201 not stored")
    return {
        "options": asdict(o),
        "started_at": t0,
        "healed_at": healed_at,
        "ended_at": end,
        "faults": faults,
        "overlapping": gameday.overlaps(plan),
        "counts": counts,
        "breaches": breaches,
        "ledger_checks": checks,
        "alerts": [asdict(s) for s in spans],
        "alerts_expected_but_missing": missed,
        "alerts_left_firing": still,
        "alerts_before": alerts_end["before"],
        "alerts_judged": bool(o.settle),
        "alerts_quiet_after_heal_s": alerts_end["quiet_after_heal_s"],
        "halted": halted,
        "drained": drained,
        "sli": sli,
        "timeline": timeline.series(),
        "load": load,
        "problems": problems,
        "passed": not problems,
    }


def markdown(r: dict[str, Any]) -> str:
    o = r["options"]
    verdict = "PASSED" if r["passed"] else "FAILED"
    lines = [
        f"# Game day, seed {o['seed']} — {verdict}",
        "",
        f"{len(r['faults'])} faults in {o['duration']:g} s ({r['overlapping']} started while "
        f"another was active; at most {o['max_concurrent']} at once), {o['devices']} devices "
        f"and an operator at {o['command_rate']:g} commands/s"
        + (f", {o['load']} load devices" if o["load"] else "")
        + f"; the ledger checked {r['ledger_checks']} times while it ran.",
        "",
        *counts_table(r["counts"]),
    ]
    lines += [
        "",
        "## Faults",
        "",
        "| # | kind | start s | length s | errors | time to detect | recovered s after heal |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in r["faults"]:
        ttd = (
            ", ".join(
                f"{a} {'missed' if t is None else f'{t:g} s'}"
                for a, t in f["time_to_detect"].items()
            )
            or "–"
        )
        ttr = "–" if f["time_to_recover"] is None else f"{f['time_to_recover']:g}"
        lines.append(
            f"| {f['index']} | {f['kind']} | {f['started'] - r['started_at']:.0f} | "
            f"{(f['ended'] or r['ended_at']) - f['started']:.0f} | {f['errors']} | {ttd} | {ttr} |"
        )
    lines += ["", "## Alerts", ""]
    names = sorted({a["name"] for a in r["alerts"]})
    lines.append("Fired: " + (", ".join(names) or "none") + ".")
    if r["alerts_expected_but_missing"]:
        lines.append(
            "Expected but missing: "
            + ", ".join(
                f"{m['alert']} (fault {m['window']}, {m['kind']})"
                for m in r["alerts_expected_but_missing"]
            )
            + "."
        )
    if not r["alerts_judged"]:
        lines.append("Alerts left firing: not judged (no settle time given).")
    else:
        lines.append(
            f"Left firing {r['alerts_quiet_after_heal_s']:g} s after the last heal (recovery "
            f"window {o['recovery']:g} s, then up to {o['settle']:g} s for burn-rate alerts' "
            "short windows): " + (", ".join(r["alerts_left_firing"]) or "none") + "."
        )
    if r["alerts_before"]:
        lines.append("Firing before the game day, not judged: " + ", ".join(r["alerts_before"]))
    if r["breaches"]:
        lines += ["", "## Breaches of the continuous ledger", ""]
        for b in r["breaches"]:
            lines.append(
                f"- at {b['at'] - r['started_at']:.0f} s: {b['items']} items (readings "
                f"{b['readings']}, commands {b['commands']}), first {', '.join(b['first_ids'])};"
                " faults around: " + (", ".join(w["kind"] for w in b["windows"]) or "none")
            )
    if r["problems"]:
        lines += ["", "Problems:"] + [f"- {p}" for p in r["problems"]]
    lines += ["", "![timeline](timeline.png)", ""]
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> None:
    t0 = r["started_at"]
    kinds = sorted({f["kind"] for f in r["faults"]})
    fig, axes = plt.subplots(
        2 + len(r["sli"]), 1, figsize=(12, 3 + 2 * (1 + len(r["sli"]))), sharex=True
    )
    lanes = axes[0]
    for f in r["faults"]:
        start = f["started"] - t0
        length = (f["ended"] or r["ended_at"]) - f["started"]
        lanes.broken_barh(
            [(start, length)], (kinds.index(f["kind"]) - 0.4, 0.8), color="tab:red", alpha=0.6
        )
    lanes.set_yticks(range(len(kinds)), kinds, fontsize=7)
    lanes.set_title("faults")
    answers = axes[1]
    series = r["timeline"]
    xs = [s["t"] - t0 for s in series]
    answers.plot(xs, [sum(s["ok"].values()) for s in series], label="2xx", color="tab:green")
    answers.plot(xs, [sum(s["err"].values()) for s in series], label="errors", color="tab:red")
    answers.set_ylabel("answers/s")
    answers.legend(loc="upper right")
    for ax, (name, points) in zip(axes[2:], r["sli"].items(), strict=True):
        ax.plot([p[0] - t0 for p in points], [p[1] for p in points], color="tab:blue")
        ax.set_ylabel(name, fontsize=8)
    for ax in axes[1:]:
        for f in r["faults"]:
            ax.axvspan(
                f["started"] - t0, (f["ended"] or r["ended_at"]) - t0, color="tab:red", alpha=0.08
            )
    axes[-1].set_xlabel("seconds since the game day started")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(r: dict[str, Any], folder: Path) -> None:
    (folder / "report.json").write_text(json.dumps(r, indent=2, default=str))
    (folder / "report.md").write_text(markdown(r))
    plot(r, folder / "timeline.png")

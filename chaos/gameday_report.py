"""The game day's report: ``schedule.json`` (written before it starts), ``report.json``,
``report.md`` and ``timeline.png`` (faults as bars per kind, the fleet's answers and errors per
second, the SLIs from Prometheus) in ``reports/chaos/gameday-<time>-seed<S>/``."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

from chaos import alertwindows, gameday  # noqa: E402
from chaos.fleet import Timeline  # noqa: E402
from chaos.ledger import loss_problems  # noqa: E402
from chaos.report import REPORTS, counts_table  # noqa: E402
from loadtest.prom import PromError, Prometheus, Slo, load_slos, slo_figures  # noqa: E402

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


GRACE = 60.0  # seconds after a heal an alert may start and still be the fault's
COUNTED = 30.0  # seconds after a heal its slow events are still being counted
PERIOD = 30 * 86400.0  # the SLOs' period: their budget is spent over 30 days at burn 1x
PAGE_SPEND = 0.02  # the fast-burn page's policy: 2 % of the period's budget (1 h at 14.4x)


def judge_faults(
    r: dict[str, Any], prom: Prometheus, slos: list[Slo], sticky: frozenset[str]
) -> list[dict[str, Any]]:
    """For each fault of report ``r``: the SLOs broken over its window (its start to
    ``COUNTED`` s after its heal), their burn rates and the share of the 30-day budget spent;
    the alerts that started within it (or ``GRACE`` s after), or were already firing then
    (not the ``sticky`` ones, which fire for minutes after any earlier fault). Returns the
    silent breaches: faults that spent a page's worth of budget (2 %, the fast-burn policy)
    with no alert at all. A shorter blip burns less than the pages are for, by design."""
    spans = [gameday.AlertSpan(**a) for a in r["alerts"]]
    silent = []
    for f in r["faults"]:
        start, healed = f["started"], f["ended"] or r["ended_at"]
        try:
            figures = slo_figures(prom, slos, start, healed + COUNTED)
        except PromError:
            figures = {}
        seconds = healed + COUNTED - start
        broken = {}
        for name, v in figures.items():
            if v["held"] is False and v["error_ratio"] is not None:
                burn = v["error_ratio"] / (1 - v["objective"])
                broken[name] = {"burn": round(burn, 1), "spent": burn * seconds / PERIOD}
        f["slos_broken"] = broken
        f["alerts_during"] = sorted(
            {
                a.name
                for a in spans
                if start <= a.start <= healed + GRACE
                or (a.name not in sticky and a.start < start and (a.end or math.inf) >= start)
            }
        )
        spent = max((b["spent"] for b in broken.values()), default=0.0)
        if spent >= PAGE_SPEND and not f["alerts_during"]:
            silent.append({"window": f["index"], "kind": f["kind"], "slos": broken})
    return silent


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
    if halted:
        problems.append(f"halted: {halted}")
    if load and load.get("readings", {}).get("missing"):
        problems.append(f"load: {load['readings']['missing']} readings answered 201 not stored")
    r = {
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
    judge(r, prom, sticky)
    return r


LEFT = "alert(s) still firing after the recovery window"


def left_firing(
    r: dict[str, Any], prom: Prometheus, sticky: frozenset[str]
) -> tuple[list[str], list[str]] | None:
    """The alerts firing when the game day stopped waiting for them (``quiet_after_heal_s``
    after the last heal), from Prometheus's ALERTS series: (left firing, still within their
    own window). A burn-rate alert outlasts its cause by its short window by design (30
    minutes for the 6h/30m page), as any alert does by the range its expression averages
    over (``alertwindows``): those are reported, not counted. None if Prometheus does not
    answer."""
    at = r["healed_at"] + r["alerts_quiet_after_heal_s"]
    try:
        firing = prom.query('ALERTS{alertstate="firing"}', at)
    except PromError:
        return None
    windows = alertwindows.load()
    left, within = set(), set()
    for labels, _ in firing:
        name = labels.get("alertname", "")
        if name in sticky or name in r.get("alerts_before", []):
            continue
        if at - r["healed_at"] < alertwindows.clears_within({"labels": labels}, windows):
            within.add(name)
        else:
            left.add(name)
    return sorted(left - within), sorted(within)


def judge(r: dict[str, Any], prom: Prometheus, sticky: frozenset[str]) -> None:
    """Add each fault's SLO breaches and alerts to report ``r``, and the alerts left firing
    by their own windows; a silent breach is a problem (every fault that spends a page's
    worth of budget must alert someone), as is an alert left firing past its window."""
    try:
        slos = load_slos()
    except PromError:
        slos = []
    r["silent_breaches"] = judge_faults(r, prom, slos, sticky)
    r["problems"] = [
        p for p in r["problems"] if not p.startswith("silent breach") and not p.startswith(LEFT)
    ]
    found = left_firing(r, prom, sticky) if r.get("alerts_judged") else None
    if found is not None:
        r["alerts_left_firing"], r["alerts_within_window"] = found
    if r.get("alerts_left_firing"):
        r["problems"].append(f"{LEFT}: {', '.join(r['alerts_left_firing'])}")
    for b in r["silent_breaches"]:
        r["problems"].append(
            f"silent breach: fault {b['window']} ({b['kind']}) broke "
            f"{', '.join(b['slos'])} with no alert"
        )
    r["passed"] = not r["problems"]


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
        "| # | kind | start s | length s | errors | time to detect | recovered s after heal "
        "| SLOs broken (burn, budget spent) | alerts then |",
        "|---|---|---|---|---|---|---|---|---|",
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
        broken = (
            ", ".join(
                f"{n} ({b['burn']:g}x, {100 * b['spent']:.2f} %)"
                for n, b in f.get("slos_broken", {}).items()
            )
            or "none"
        )
        alerts = ", ".join(f.get("alerts_during", [])) or "none"
        lines.append(
            f"| {f['index']} | {f['kind']} | {f['started'] - r['started_at']:.0f} | "
            f"{(f['ended'] or r['ended_at']) - f['started']:.0f} | {f['errors']} | {ttd} | {ttr} "
            f"| {broken} | {alerts} |"
        )
    lines += [
        "",
        "SLOs broken: over the fault's window (its start to 30 s after its heal); the burn rate "
        "is the error ratio over the budget, the spend the share of the 30-day budget it used. "
        "A fault that spends 2 % (what the fast-burn page is for) must have an alert. ",
    ]
    silent = r.get("silent_breaches", [])
    lines.append(
        "Silent breaches (2 % spent, no alert): "
        + (", ".join(f"fault {b['window']} ({b['kind']})" for b in silent) or "none")
        + "."
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
        if r.get("alerts_within_window"):
            lines.append(
                "Still firing within their own window (a burn-rate alert until its short window "
                "has passed since the heal; not counted): "
                + ", ".join(r["alerts_within_window"])
                + "."
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
    """One figure, time on a shared axis: a lane per fault kind (its windows as bars), a lane
    per alert (its firing spans), the fleet's answers and errors per second, then each SLI.
    Lanes get height by their count so that an hour of a hundred faults stays readable."""
    t0 = r["started_at"]
    kinds = sorted({f["kind"] for f in r["faults"]})
    names = sorted({a["name"] for a in r["alerts"]})
    heights = [max(1.0, 0.22 * len(kinds)), max(0.8, 0.22 * len(names)), 1.8]
    heights += [1.3] * len(r["sli"])
    width = 16 if r["ended_at"] - t0 > 900 else 12
    fig, axes = plt.subplots(
        len(heights),
        1,
        figsize=(width, sum(heights) + 1),
        sharex=True,
        gridspec_kw={"height_ratios": heights},
    )
    lanes = axes[0]
    for f in r["faults"]:
        start = f["started"] - t0
        length = (f["ended"] or r["ended_at"]) - f["started"]
        lanes.broken_barh(
            [(start, length)], (kinds.index(f["kind"]) - 0.4, 0.8), color="tab:red", alpha=0.7
        )
    lanes.set_yticks(range(len(kinds)), kinds, fontsize=7)
    lanes.set_ylim(-0.6, max(len(kinds), 1) - 0.4)
    lanes.set_title("faults (bars), alerts firing, the fleet's answers, SLIs", fontsize=10)
    alerts = axes[1]
    for a in r["alerts"]:
        end = a["end"] if a["end"] is not None else r["ended_at"]
        alerts.broken_barh(
            [(a["start"] - t0, end - a["start"])],
            (names.index(a["name"]) - 0.4, 0.8),
            color="tab:orange",
        )
    alerts.set_yticks(range(len(names)), names, fontsize=7)
    alerts.set_ylim(-0.6, max(len(names), 1) - 0.4)
    answers = axes[2]
    series = r["timeline"]
    xs = [s["t"] - t0 for s in series]
    answers.plot(xs, [sum(s["ok"].values()) for s in series], label="2xx", color="tab:green")
    answers.plot(xs, [sum(s["err"].values()) for s in series], label="errors", color="tab:red")
    answers.set_ylabel("fleet answers/s", fontsize=8)
    answers.legend(loc="upper right", fontsize=7)
    for ax, (name, points) in zip(axes[3:], r["sli"].items(), strict=True):
        ax.plot([p[0] - t0 for p in points], [p[1] for p in points], color="tab:blue")
        ax.set_ylabel(name, fontsize=8)
    if len(r["faults"]) <= 30:  # more would only grey the plots
        for ax in axes[2:]:
            for f in r["faults"]:
                end = (f["ended"] or r["ended_at"]) - t0
                ax.axvspan(f["started"] - t0, end, color="tab:red", alpha=0.08)
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel("seconds since the game day started")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(r: dict[str, Any], folder: Path) -> None:
    (folder / "report.json").write_text(json.dumps(r, indent=2, default=str))
    (folder / "report.md").write_text(markdown(r))
    plot(r, folder / "timeline.png")

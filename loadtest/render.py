"""``report.md``: the capacity report of one run in Markdown, from ``report.json``."""

from __future__ import annotations

from typing import Any

from loadtest import rollout

KEY_ROUTES = (
    "POST /sensors",
    "GET /commands",
    "POST /commands/[id]/ack",
    "POST /commands",
    "COMMAND end-to-end",
)


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _ms(value: Any) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _counts(counts: dict[str, int] | None) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items()) if counts else "none"


def _check(ok: bool | None) -> str:
    return {True: "held", False: "**broken**", None: "not judged (< 20 events)"}[ok]


def _conclusion(report: dict[str, Any]) -> list[str]:
    a = report["analysis"]
    lines = []
    knee = a.get("knee")
    if knee and knee.get("at_least"):
        g = a["generator_bound"]
        lines.append(
            f"- **Knee**: at least {knee['devices']:,} devices (step {knee['index']}): the "
            "product held all SLOs and checks up to there; from "
            f"{g['devices']:,} devices the generator, not the product, was the limit "
            "(generator-bound), so the product's knee lies beyond what this run measured."
        )
    elif knee:
        lines.append(
            f"- **Knee**: {knee['devices']:,} devices (step {knee['index']}): the largest step "
            "that, with every smaller one, held all SLOs and checks."
        )
    else:
        lines.append("- **Knee**: none: the first step already broke a check.")
    if a.get("first_break"):
        b = a["first_break"]
        bound = " (generator-bound: not the product's)" if b.get("generator_bound") else ""
        lines.append(
            f"- First broken at {b['devices']:,} devices{bound}: {', '.join(b['broken'])}."
        )
    else:
        lines.append("- No step broke an SLO or check.")
    if a.get("first_saturated"):
        s = a["first_saturated"]
        who = s["component"] + (
            f" (largest user: {s['largest_user']})" if s.get("largest_user") else ""
        )
        lines.append(
            f"- First to saturate: **{who}**, {s['cores']:.2f} of {s['capacity']:.0f} core(s) "
            f"at {s['devices']:,} devices."
        )
    else:
        lines.append("- No component reached 85 % of its capacity.")
    if a.get("bottleneck"):
        lines.append(
            f"- Bottleneck: **{a['bottleneck']['component']}**: {a['bottleneck']['reason']}."
        )
    if report["meta"].get("cut_short"):
        lines.insert(0, f"- **Not a capacity measurement**: {report['meta']['cut_short']}.")
    if report.get("restarts"):
        start = report["steps"][0]["window"][0] if report.get("steps") else 0
        names = ", ".join(
            f"{r['component']} (at {r['t'] - start:+.0f} s)" for r in report["restarts"]
        )
        lines.append(
            f"- Warning: restarted during the run (the step figures around it are disturbed): "
            f"{names}."
        )
    if a.get("generator_saturated"):
        g = a["generator_saturated"]
        lines.append(
            f"- Warning: the generator itself was saturated from {g['devices']:,} devices on; "
            "run it with more processes (--processes) or on other machines."
        )
    return lines


def _cost_line(report: dict[str, Any]) -> list[str]:
    """The CPU per request of the generator and of the product at the largest step."""
    steps = [s for s in report["steps"] if s.get("cpu_ms_per_request")]
    if not steps:
        return []
    s = max(steps, key=lambda s: s["devices"])
    c = s["cpu_ms_per_request"]
    ratio = c["product"] / c["generator"] if c.get("generator") else None
    return [
        f"- CPU per request at {s['devices']:,} devices: **generator {c['generator']:.3f} ms**, "
        f"**product {c['product']:.3f} ms** (monitoring {c['monitoring']:.3f} ms)"
        + (f"; the product costs {ratio:.1f}x the generator" if ratio else "")
        + "."
    ] + _marginal_line(report.get("marginal_cost"))


def _marginal_line(m: dict[str, Any] | None) -> list[str]:
    """The cost of one more request, the fixed part of each side set apart (fit over steps)."""
    if not m:
        return []
    g, p = m["generator"], m["product"]
    return [
        f"- One more request, fitted over the steps (fixed cores apart): **generator "
        f"{g['ms_per_request']:.3f} ms** + {g['fixed_cores']:.3f} cores fixed (its operator, "
        f"viewers and statistics), **product {p['ms_per_request']:.3f} ms** + "
        f"{p['fixed_cores']:.3f} cores fixed."
    ]


def _summary_table(steps: list[dict[str, Any]]) -> list[str]:
    head = (
        "| step | devices | req/s | failures | POST /sensors p50/p99 ms | GET /commands p99 ms "
        "| command e2e p50/p99 ms | ingest lag p99 s | machine cores | CPU ms/request: "
        "product / generator | checks |"
    )
    lines = [head, "|" + "---|" * 11]
    for s in steps:
        r = s["routes"]
        sensors = r.get("POST /sensors", {})
        polls = r.get("GET /commands", {})
        e2e = r.get("COMMAND end-to-end", {})
        lag = ((s.get("prometheus") or {}).get("ingest_lag_s") or {}).get("p99")
        broken = [n for n, ok in s["checks"].items() if ok is False]
        verdict = "all held" if not broken else "broken: " + ", ".join(broken)
        if s.get("generator_bound"):
            verdict += "; **generator-bound**"
        cost = s.get("cpu_ms_per_request") or {}
        lines.append(
            f"| {s['index']} | {s['devices']:,} | {_n(s['requests_per_s'], 1)} | "
            f"{s['failures']} | {_ms(sensors.get('p50'))} / {_ms(sensors.get('p99'))} | "
            f"{_ms(polls.get('p99'))} | {_ms(e2e.get('p50'))} / {_ms(e2e.get('p99'))} | "
            f"{_n(lag, 2)} | {_n(s['cpu'].get('machine'), 2)} | "
            f"{_n(cost.get('product'), 3)} / {_n(cost.get('generator'), 3)} | {verdict} |"
        )
    return lines


def _cost_table(steps: list[dict[str, Any]]) -> list[str]:
    """ms of CPU per request served: the product's components, then the sums per role."""
    costed = [s for s in steps if s.get("cpu_ms_per_request")]
    if not costed:
        return ["No requests were served."]
    names = sorted({n for s in costed for n in s["cpu_ms_per_request"]["components"]})
    head = "| ms of CPU per request | " + " | ".join(f"{s['devices']:,} dev" for s in costed)
    lines = [head + " |", "|" + "---|" * (len(costed) + 1)]
    for name in names:
        cells = " | ".join(_n(s["cpu_ms_per_request"]["components"].get(name), 3) for s in costed)
        lines.append(f"| {name} | {cells} |")
    for role in ("product", "generator", "monitoring", "unaccounted", "machine"):
        cells = " | ".join(_n(s["cpu_ms_per_request"].get(role), 3) for s in costed)
        lines.append(f"| **{role}** | {cells} |")
    return lines


def _routes_table(step: dict[str, Any]) -> list[str]:
    lines = [
        "| route | requests/s | count | failures | p50 ms | p95 ms | p99 ms | max ms | answers |",
        "|" + "---|" * 9,
    ]
    for key, r in step["routes"].items():
        statuses = ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())
        lines.append(
            f"| {key} | {_n(r['rps'], 2)} | {r['count']:,} | {r['failures']} | {_ms(r['p50'])} | "
            f"{_ms(r['p95'])} | {_ms(r['p99'])} | {_ms(r['max'])} | {statuses} |"
        )
    return lines


def _cpu_table(steps: list[dict[str, Any]]) -> list[str]:
    names = sorted({n for s in steps for n in s["cpu"]} - {"machine"})
    names.append("machine")
    head = "| component | " + " | ".join(f"{s['devices']:,} dev" for s in steps) + " |"
    lines = [head, "|" + "---|" * (len(steps) + 1)]
    for name in names:
        cells = " | ".join(_n(s["cpu"].get(name), 3) for s in steps)
        lines.append(f"| {name} | {cells} |")
    return lines


def _prom_table(steps: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| step | SLOs (error ratio) | queues: max ready (growth/s) | ingest lag p50/p99 s "
        "| delivery p50/p99 s | acked/s | expired+dead | confirm p99 s |",
        "|" + "---|" * 8,
    ]
    for s in steps:
        p = s.get("prometheus") or {}
        if "error" in p:
            lines.append(f"| {s['index']} | Prometheus: {p['error']} | | | | | | |")
            continue
        slos = "; ".join(
            f"{n}: {_check(v['held'])} ({_n(v.get('error_ratio'), 4)} of {_n(v.get('events'))})"
            for n, v in (p.get("slos") or {}).items()
        )
        queues = "; ".join(
            f"{q}: {_n(v['max_ready'])} ({_n(v['growth_per_s'], 2)})"
            for q, v in (p.get("queues") or {}).items()
        )
        lag = p.get("ingest_lag_s") or {}
        d = p.get("command_delivery") or {}
        lines.append(
            f"| {s['index']} | {slos} | {queues} | {_n(lag.get('p50'), 3)} / "
            f"{_n(lag.get('p99'), 3)} | {_n(d.get('p50_s'), 3)} / {_n(d.get('p99_s'), 3)} | "
            f"{_n(d.get('acked_per_s'), 2)} | {_n(d.get('expired_or_dead'))} | "
            f"{_n(p.get('broker_confirm_p99_s'), 3)} |"
        )
    return lines


def markdown(report: dict[str, Any], plots: list[str]) -> str:
    """The whole report as Markdown; ``plots`` are PNG file names in the same folder."""
    m = report["meta"]
    steps = report["steps"]
    r = report.get("readings") or {}
    lines = [
        f"# Capacity report: {m['scenario']}, {m['shape']} shape, up to {m['devices']:,} devices",
        "",
        f"Run {m['run']} against {m['base_url']} on {report['cpus']} cores; generator: locust "
        f"{m.get('locust_version', '')} with {m.get('processes') or 1} process(es). Each device "
        f"sends {m['batch']} readings every {m['reading_interval']:g} s, long-polls "
        f"`GET /commands?wait={m['poll_wait']}`, and gets {m['commands_per_device_hour']:g} "
        f"commands per hour. Steps are measured from {m['reading_interval']:g} s after their "
        "devices are all running (at most 30 % of the step) to their end.",
        "",
        "## Conclusion",
        "",
        *_conclusion(report),
        *_cost_line(report),
        "",
        f"Readings answered 201: {r.get('accepted', 0):,} from {r.get('devices', 0):,} devices; "
        f"dropped {r.get('dropped', 0):,}; still unsent at the end {r.get('unsent', 0):,}.",
        "",
        "Commands sent near the end, cancelled afterwards so that they do not expire into a "
        f"later run: {_counts(m.get('cancelled_at_end'))}.",
        "",
        *rollout.markdown(report.get("rollout")),
        "## Steps",
        "",
        *_summary_table(steps),
        "",
        "## CPU per request, product and generator apart",
        "",
        "Milliseconds of CPU per request served (all routes), per component of the product, "
        "then summed: the product (nginx, API replicas, workers, Postgres, RabbitMQ, Redis, "
        "toxiproxy when in the path), the generator (the locust processes), monitoring "
        "(Prometheus, Alertmanager, Flower, exporters) and what none of them explains (the "
        "kernel's network work, other processes). A step is **generator-bound** when the "
        "generator's own processes reached 85 % of their cores, or the machine reached 85 % "
        "and would not have without the generator: such a step does not measure the product.",
        "",
        *_cost_table(steps),
        "",
        "## CPU per component (cores; generator = the locust processes)",
        "",
        *_cpu_table(steps),
        "",
        "## What Prometheus saw (SLOs of monitoring/rules/slos.yml over each step's window)",
        "",
        *_prom_table(steps),
        "",
    ]
    for s in steps:
        lines += [f"### Step {s['index']}: {s['devices']:,} devices", "", *_routes_table(s), ""]
        if s["errors_by_status"]:
            errors = ", ".join(f"{k}: {v}" for k, v in s["errors_by_status"].items())
            lines += [f"Errors by status: {errors}", ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)

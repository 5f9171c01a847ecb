"""PNG plots of a capacity report (matplotlib, no display needed)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from loadtest import samples  # noqa: E402

LATENCY_ROUTES = (
    "POST /sensors",
    "POST /commands/[id]/ack",
    "POST /commands",
    "COMMAND end-to-end",
)


def _timeline(run_dir: Path, report: dict[str, Any]) -> str | None:
    per_second: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for row in samples.read(run_dir / "samples.jsonl"):
        if row["method"] == "COMMAND":
            continue
        per_second[row["t"]][0] += row["count"]
        per_second[row["t"]][1] += row["failures"]
    if not per_second:
        return None
    t0 = min(per_second)
    xs = sorted(per_second)
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot([x - t0 for x in xs], [per_second[x][0] for x in xs], lw=0.8, label="requests/s")
    ax.plot([x - t0 for x in xs], [per_second[x][1] for x in xs], lw=0.8, c="red", label="failed/s")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("per second")
    ax2 = ax.twinx()
    for s in report["steps"]:
        a, b = s["window"]
        ax2.hlines(s["devices"], a - t0, b - t0, colors="gray", lw=3)
    ax2.set_ylabel("devices (measured windows)")
    ax.legend(loc="upper left")
    ax.set_title("Requests per second and devices")
    fig.tight_layout()
    fig.savefig(run_dir / "timeline.png", dpi=100)
    plt.close(fig)
    return "timeline.png"


def _latency(run_dir: Path, report: dict[str, Any]) -> str | None:
    steps = report["steps"]
    if not steps:
        return None
    fig, ax = plt.subplots(figsize=(10, 4))
    devices = [s["devices"] for s in steps]
    for route in LATENCY_ROUTES + ("GET /commands",):
        for q, style in (("p50", "--"), ("p99", "-")):
            ys = [s["routes"].get(route, {}).get(q) for s in steps]
            if any(y is not None for y in ys):
                ax.plot(
                    devices,
                    [y if y is not None else float("nan") for y in ys],
                    style,
                    marker="o",
                    label=f"{route} {q}",
                )
    ax.set_xlabel("devices")
    ax.set_ylabel("ms (log)")
    ax.set_yscale("log")
    ax.set_title("Latency per step (GET /commands includes the long-poll wait)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(run_dir / "latency.png", dpi=100)
    plt.close(fig)
    return "latency.png"


def _cpu(run_dir: Path, report: dict[str, Any]) -> str | None:
    steps = report["steps"]
    names = sorted({n for s in steps for n in s["cpu"]} - {"machine"})
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(10, 5))
    labels = [f"{s['devices']:,}" for s in steps]
    bottom = [0.0] * len(steps)
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(names):
        values = [s["cpu"].get(name, 0.0) for s in steps]
        ax.bar(labels, values, bottom=bottom, label=name, color=cmap(i % 20))
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.plot(
        labels,
        [s["cpu"].get("machine", float("nan")) for s in steps],
        "k_",
        ms=30,
        mew=2,
        label="machine busy",
    )
    ax.axhline(report.get("cpus", 1), color="red", lw=0.8, ls=":", label="cores")
    ax.set_xlabel("devices")
    ax.set_ylabel("cores")
    ax.set_title("CPU per component and step")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(run_dir / "cpu.png", dpi=100)
    plt.close(fig)
    return "cpu.png"


def _backlog(run_dir: Path, report: dict[str, Any]) -> str | None:
    series = report.get("series") or {}
    queues = series.get("queues") or {}
    lag = series.get("ingest_lag_p99") or {}
    if not queues and not lag:
        return None
    t0 = report["steps"][0]["window"][0] if report["steps"] else 0
    fig, ax = plt.subplots(figsize=(10, 4))
    for key, points in queues.items():
        if points:
            ax.plot([t - t0 for t, _ in points], [v for _, v in points], label=key)
    ax.set_xlabel("seconds since the first measured window")
    ax.set_ylabel("messages ready")
    top = max((v for points in queues.values() for _, v in points), default=0)
    ax.set_ylim(0, max(10, top * 1.1))
    ax2 = ax.twinx()
    for points in lag.values():
        ax2.plot([t - t0 for t, _ in points], [v for _, v in points], "k:", label="ingest lag p99")
    ax2.set_ylabel("ingest lag p99 (s)")
    ax.legend(loc="upper left", fontsize=7)
    ax2.legend(loc="upper right", fontsize=7)
    ax.set_title("Queue depths and ingest lag (Prometheus)")
    fig.tight_layout()
    fig.savefig(run_dir / "backlog.png", dpi=100)
    plt.close(fig)
    return "backlog.png"


def draw(run_dir: Path, report: dict[str, Any]) -> list[str]:
    """Draw every plot the report has data for; returns the PNG file names."""
    made = []
    for plot in (_timeline, _latency, _cpu, _backlog):
        name = plot(run_dir, report)
        if name:
            made.append(name)
    return made

"""How long after its cause an alert may keep firing by design: the window its expression
averages over. An alert on a 5-minute rate stays true until the fault's errors leave those 5
minutes; a multi-window burn-rate alert stops with its short window (its ``short`` label).
Read from the alert rules themselves (``monitoring/alerts/*.yml``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

RULES = Path(__file__).resolve().parents[1] / "monitoring" / "alerts"
SLACK_SECONDS = 30.0  # a scrape and an evaluation after the window, and a backlog's drain
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RANGE = re.compile(r"\[(\d+)([smhd])(?::[^\]]*)?\]")


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    return float(match.group(1)) * _UNITS[match.group(2)] if match else 0.0


def load(folder: Path = RULES) -> dict[str, float]:
    """Alert name -> the shortest range window of its expression (seconds; 0 without one),
    the longest of those over its rules of the same name."""
    out: dict[str, float] = {}
    for path in sorted(folder.glob("*.yml")):
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            for rule in group.get("rules", []):
                if "alert" not in rule:
                    continue
                windows = [
                    float(n) * _UNITS[u] for n, u in _RANGE.findall(str(rule.get("expr", "")))
                ]
                shortest = min(windows, default=0.0)
                out[rule["alert"]] = max(out.get(rule["alert"], 0.0), shortest)
    return out


def clears_within(alert: dict[str, Any], windows: dict[str, float]) -> float:
    """Seconds after its cause ended that this firing alert may still fire by design."""
    labels = alert.get("labels", {})
    window = seconds(labels["short"]) if "short" in labels else windows.get(labels["alertname"], 0)
    return window + SLACK_SECONDS if window else 0.0

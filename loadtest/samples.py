"""Per-second samples of every request, merged into per-step figures.

Every locust process records each request into one-second buckets per (method, name): count,
failures, answers by status and a histogram of response times rounded the way locust rounds
them. Buckets go to the master (or only) process, which appends them to ``samples.jsonl``; the
capacity report merges the buckets of a step's window into requests/s and percentiles. Free of
locust so that the report and the tests can use it.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def rounded_ms(ms: float) -> int:
    """Response times rounded like locust's stats: exact below 100 ms, then 2 significant
    digits (e.g. 147 → 150, 3,432 → 3,400)."""
    value = int(round(ms))
    if value < 100:
        return value
    digits = len(str(value)) - 2
    return int(round(value, -digits))


@dataclass
class Bucket:
    count: int = 0
    failures: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    hist: Counter[int] = field(default_factory=Counter)


class Recorder:
    """Collects requests into one-second buckets; :meth:`drain` hands out finished ones."""

    def __init__(self, node: str = "local") -> None:
        self.node = node
        self._buckets: dict[tuple[int, str, str], Bucket] = defaultdict(Bucket)

    def record(
        self, t: float, method: str, name: str, ms: float, status: str, failed: bool
    ) -> None:
        """One request that started at ``t`` (epoch seconds) and took ``ms``; ``status`` is the
        HTTP status as text, or ``"error"`` when no answer came."""
        b = self._buckets[(int(t), method, name)]
        b.count += 1
        b.failures += int(failed)
        b.statuses[status] += 1
        b.hist[rounded_ms(ms)] += 1

    def drain(self, now: float | None = None) -> list[dict[str, Any]]:
        """The buckets of seconds before ``int(now)`` (all of them when ``now`` is None), as
        JSON-ready dicts; they are forgotten here."""
        out = []
        for key in sorted(self._buckets):
            second, method, name = key
            if now is not None and second >= int(now):
                continue
            b = self._buckets.pop(key)
            out.append(
                {
                    "t": second,
                    "method": method,
                    "name": name,
                    "node": self.node,
                    "count": b.count,
                    "failures": b.failures,
                    "statuses": dict(b.statuses),
                    "hist": {str(k): v for k, v in b.hist.items()},
                }
            )
        return out


def append(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append sample rows to a JSON-lines file."""
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")


def read(path: Path) -> Iterator[dict[str, Any]]:
    """The sample rows of a JSON-lines file (none if it does not exist); a torn last line
    (the writer was killed) is skipped."""
    if not path.exists():
        return
    with path.open() as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def percentile(hist: dict[int, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram {value: count}; None when it is empty."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return float(value)
    return float(max(hist))


def route_key(method: str, name: str) -> str:
    return f"{method} {name}"


def aggregate(rows: Iterable[dict[str, Any]], start: float, end: float) -> dict[str, Any]:
    """Per route (``"METHOD name"``) over the seconds ``[start, end)``: count, failures,
    requests/s, answers by status, p50/p95/p99 and max (ms). A ``"total"`` entry sums the HTTP
    routes (not the ``COMMAND`` latency entries, which are not requests)."""
    seconds = max(end - start, 1e-9)
    acc: dict[str, dict[str, Any]] = {}
    for row in rows:
        if not start <= row["t"] < end:
            continue
        for key in (route_key(row["method"], row["name"]),) + (
            ("total",) if row["method"] != "COMMAND" else ()
        ):
            a = acc.setdefault(
                key, {"count": 0, "failures": 0, "statuses": Counter(), "hist": Counter()}
            )
            a["count"] += row["count"]
            a["failures"] += row["failures"]
            a["statuses"].update(row["statuses"])
            a["hist"].update({int(k): v for k, v in row["hist"].items()})
    out: dict[str, Any] = {}
    for key, a in sorted(acc.items()):
        hist = a["hist"]
        out[key] = {
            "count": a["count"],
            "failures": a["failures"],
            "rps": round(a["count"] / seconds, 2),
            "statuses": dict(sorted(a["statuses"].items())),
            "p50": percentile(hist, 0.50),
            "p95": percentile(hist, 0.95),
            "p99": percentile(hist, 0.99),
            "max": float(max(hist)) if hist else None,
        }
    return out

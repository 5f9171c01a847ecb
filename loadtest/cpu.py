"""CPU time of the stack's components and of the load generator, read from /proc.

A component's CPU is the user + system time of its process and every descendant, including
children it already reaped (``cutime``/``cstime``), so short-lived children (e.g. Postgres
backends) still count. :class:`Sampler` writes one JSON line per sample to ``cpu.jsonl``;
:func:`cores` turns a window of samples into cores used per component.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


def proc_table(proc: Path = Path("/proc")) -> dict[int, tuple[int, float]]:
    """Every process: pid → (parent pid, CPU seconds of it and its reaped children)."""
    table: dict[int, tuple[int, float]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = raw.rsplit(")", 1)[1].split()
        # fields[0] is the state (field 3 of proc(5)); utime..cstime are fields 14..17
        ticks = sum(int(x) for x in fields[11:15])
        table[int(entry.name)] = (int(fields[1]), ticks / TICK)
    return table


def tree_seconds(table: dict[int, tuple[int, float]], root: int) -> float | None:
    """CPU seconds of ``root`` and all its descendants; None if ``root`` does not exist."""
    if root not in table:
        return None
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _) in table.items():
        children[ppid].append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += table[pid][1]
        todo.extend(children.get(pid, ()))
    return total


def machine_jiffies(stat: Path = Path("/proc/stat")) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    first = stat.read_text().splitlines()[0].split()[1:]
    values = [int(x) for x in first]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return total - idle, total


class Sampler(threading.Thread):
    """Samples every ``interval`` s the CPU of the processes ``roots()`` names (name → pid)
    and of the machine into ``path`` until :meth:`stop`."""

    def __init__(
        self, path: Path, roots: Callable[[], dict[str, int]], interval: float = 5.0
    ) -> None:
        super().__init__(name="cpu-sampler", daemon=True)
        self.path = path
        self.roots = roots
        self.interval = interval
        self._stop_event = threading.Event()
        self.errors = 0

    def sample(self) -> dict[str, Any]:
        table = proc_table()
        busy, total = machine_jiffies()
        pids, seconds = {}, {}
        for name, pid in self.roots().items():
            value = tree_seconds(table, pid) if pid else None
            if value is not None:
                pids[name], seconds[name] = pid, round(value, 3)
        return {
            "t": time.time(),
            "cpu": seconds,
            "pids": pids,
            "busy": busy,
            "total": total,
            "cpus": os.cpu_count() or 1,
        }

    def run(self) -> None:
        with self.path.open("a") as f:
            while True:
                try:
                    f.write(json.dumps(self.sample()) + "\n")
                    f.flush()
                except Exception:  # noqa: BLE001 - a failed sample must not end the run
                    self.errors += 1
                if self._stop_event.wait(self.interval):
                    break

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=self.interval * 2)


def read(path: Path) -> list[dict[str, Any]]:
    """The samples of a ``cpu.jsonl`` (empty if missing); a torn last line is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def cores(rows: Iterable[dict[str, Any]], start: float, end: float) -> dict[str, Any]:
    """Cores used per component between ``start`` and ``end`` (epoch s), from consecutive
    samples inside the window; an interval in which a component's pid changed (a restart) is
    left out for that component. Adds ``"machine"``: cores busy on the whole machine."""
    inside = sorted((r for r in rows if start <= r["t"] <= end), key=lambda r: r["t"])
    used: dict[str, float] = defaultdict(float)
    spent: dict[str, float] = defaultdict(float)
    busy = total = 0
    for prev, cur in zip(inside, inside[1:], strict=False):
        dt = cur["t"] - prev["t"]
        if dt <= 0:
            continue
        for name, seconds in cur["cpu"].items():
            before = prev["cpu"].get(name)
            if before is None or prev["pids"].get(name) != cur["pids"].get(name):
                continue
            if seconds < before:
                continue
            used[name] += seconds - before
            spent[name] += dt
        busy += cur["busy"] - prev["busy"]
        total += cur["total"] - prev["total"]
    out: dict[str, Any] = {
        name: round(used[name] / spent[name], 3) for name in sorted(used) if spent[name] > 0
    }
    if total > 0:
        cpus = inside[-1].get("cpus") or os.cpu_count() or 1
        out["machine"] = round(busy / total * cpus, 3)
    return out


def restarts(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Components whose pid changed between two samples (restarted, e.g. by the supervisor),
    with the time of the first sample that saw the new pid."""
    out = []
    last: dict[str, int] = {}
    for row in sorted(rows, key=lambda r: r["t"]):
        for name, pid in row["pids"].items():
            if name in last and last[name] != pid:
                out.append({"component": name, "t": row["t"], "pid": pid})
            last[name] = pid
    return out

"""One fault on one engine, end to end, and the whole bench: every engine and replication mode
on the same faults, each on a fresh cluster, in namespaces of its own (``netns``), data under
var/ha-bench/ (removed at the end), the report under reports/ha-engines/<timestamp>/.

Faults: ``kill`` (SIGKILL to the primary's postmaster and its children) and ``cut`` (the
primary's host cut off the bridge for ``hold`` seconds, then joined again)."""

from __future__ import annotations

import fcntl
import json
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from iot.ha import probe as probe_module
from iot.ha import report
from iot.ha.autofailover import AutoFailover
from iot.ha.engines import Engine, Member, role
from iot.ha.netns import Measuring, Net, sleep, wait_while_measuring
from iot.ha.patroni import Patroni
from iot.ha.writer import SCHEMA, Writer, as_dicts, present

ENGINES: dict[str, type[Engine]] = {"patroni": Patroni, "pg_auto_failover": AutoFailover}
FAULTS = ("kill", "cut")
Say = Callable[[str], None]


def _prepare(primary: Member) -> None:
    with psycopg.connect(primary.dsn(), autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(probe_module.SCHEMA)


def _wait_resumed(writer: Writer, since: float, timeout: float) -> float | None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(not a.error and a.sent >= since for a in list(writer.attempts)):
            return time.time()
        sleep(0.5)
    return None


def _wait_role(member: Member, wanted: tuple[str, ...],
               timeout: float) -> tuple[str, float] | None:
    """The first of the ``wanted`` roles ``member`` takes, and when."""
    start = time.time()
    while time.time() - start < timeout:
        now = role(member)
        if now in wanted:
            return now, time.time()
        sleep(0.5)
    return None


def run_fault(engine: Engine, fault: str, folder: Path, say: Say, rate: float = 20,
              warmup: float = 10, hold: float = 60, settle: float = 120) -> dict[str, Any]:
    """Start ``engine`` fresh, write, inject ``fault`` into its primary, measure."""
    result: dict[str, Any] = {"engine": engine.name + engine.variant,
                              "mode": "sync" if engine.synchronous else "async",
                              "fault": fault, "notes": []}
    tag = f"{engine.name}-{result['mode']}-{fault}"
    say(f"{tag}: starting the cluster")
    engine.start()
    primary = engine.wait_healthy()
    _prepare(primary)
    probe_out = folder / f"{tag}.probe.jsonl"
    probe_out.unlink(missing_ok=True)
    writer = Writer(engine.hosts_dsn(), rate).start()
    try:
        if fault == "cut":
            engine.net.spawn(primary.host, [
                sys.executable, "-m", "iot.ha.probe", str(primary.port), str(probe_out),
                str(warmup + hold + settle)], engine.root / "log" / "probe.log")
        sleep(warmup)
        say(f"{tag}: fault on {primary.name} ({primary.address})")
        if fault == "kill":
            engine.kill_postgres(primary)
        else:
            engine.net.cut(primary.host)
        fault_at = time.time()  # the fault in place: nothing sent after it reaches the old
        _follow(engine, primary, writer, fault, fault_at, result, hold, settle)
        sleep(5)
    finally:
        attempts = as_dicts(writer.stop())
    held = present(engine.hosts_dsn())
    probe_lines = ([json.loads(line) for line in probe_out.read_text().splitlines()]
                   if probe_out.exists() else [])
    result["roles_after"] = engine.roles()
    if isinstance(engine, AutoFailover):
        result["notes"].append("monitor: " + " / ".join(
            " ".join(line.split()) for line in engine.state().splitlines()[2:]))
    result["summary"] = report.summarize(attempts, fault_at, primary.address, held,
                                         probe_lines, result.get("healed_at"))
    (folder / f"{tag}.attempts.json").write_text(json.dumps(
        {"fault_at": fault_at, "old_primary": primary.address, "attempts": attempts}))
    say(f"{tag}: {json.dumps(result['summary'])[:400]} rejoin: {result.get('rejoin')}")
    return result


def _follow(engine: Engine, primary: Member, writer: Writer, fault: str, fault_at: float,
            result: dict[str, Any], hold: float, settle: float) -> None:
    """After the fault: writes resuming, the cut ending, the old primary coming back."""
    notes: list[str] = result["notes"]
    if _wait_resumed(writer, fault_at, settle) is None:
        notes.append(f"no write acknowledged within {settle:.0f} s of the fault")
    if fault == "cut":
        sleep(max(0.0, fault_at + hold - time.time()))
        notes.append(f"roles while cut off: {engine.roles()}")
        engine.net.heal(primary.host)
        healed_at = result["healed_at"] = time.time()
        back = _wait_role(primary, ("standby",), settle)
        result["rejoin"] = (f"standby {back[1] - healed_at:.0f} s after the link came back"
                            if back else f"{role(primary)} {settle:.0f} s after the link "
                            "came back")
        return
    first = next((a for a in list(writer.attempts) if not a.error and a.sent >= fault_at), None)
    restarted = first is not None and first.server == primary.address
    back = _wait_role(primary, ("primary",) if restarted else ("standby",), settle)
    if back is None:
        result["rejoin"] = f"{role(primary)} {settle:.0f} s after the kill"
    elif back[0] == "primary":
        result["rejoin"] = f"primary again {back[1] - fault_at:.0f} s after the kill (restarted)"
    else:
        result["rejoin"] = f"standby {back[1] - fault_at:.0f} s after the kill"


def bench_engines(home: Path, engines: list[str], modes: list[str], faults: list[str],
                  say: Say, rate: float = 20, hold: float = 60, keep: bool = False,
                  patroni_timing: tuple[int, int, int] | None = None,
                  patroni_dcs: str = "etcd3") -> Path:
    """Every engine × mode × fault; returns the Markdown report's path. ``patroni_timing``:
    Patroni's ttl, loop_wait and retry_timeout instead of its defaults; ``patroni_dcs``:
    ``etcd3`` (etcd's v3 API) or ``etcd`` (v2)."""
    started = datetime.now(UTC)
    folder = home / "reports" / "ha-engines" / started.strftime("%Y%m%dT%H%M%SZ")
    folder.mkdir(parents=True, exist_ok=True)
    root = home / "var" / "ha-bench"
    meta = {"started": started.isoformat(timespec="seconds"), "rate": rate, "hold_s": hold,
            "engines": engines, "modes": modes, "faults": faults,
            "patroni_timing": patroni_timing or "defaults (30, 10, 10)",
            "patroni_dcs": patroni_dcs}
    results: list[dict[str, Any]] = []
    net = Net(3)
    lock_path = home / "var" / "ha-bench.lock"  # one bench at a time: the hosts' names are fixed
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_path.open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        lock.close()
        raise RuntimeError(f"another bench is running ({lock_path})") from exc
    try:
        net.open()
        for name in engines:
            for mode in modes:
                for fault in faults:
                    results.append(_run_one(net, root, folder, name, mode, fault, say,
                                            rate, hold, patroni_timing, patroni_dcs))
                    report.write(folder, results, meta)
    finally:
        net.close()
        if not keep and root.exists():
            shutil.rmtree(root)
        lock_path.unlink(missing_ok=True)
        lock.close()
    return report.write(folder, results, meta)


def _run_one(net: Net, root: Path, folder: Path, name: str, mode: str, fault: str, say: Say,
             rate: float, hold: float, timing: tuple[int, int, int] | None = None,
             dcs: str = "etcd3", tries: int = 3) -> dict[str, Any]:
    """One run; again from the start when a CPU measurement interrupted it."""
    for _ in range(tries):
        wait_while_measuring(say)
        engine = (Patroni(net, root, mode == "sync", *(timing or (30, 10, 10)), dcs=dcs)
                  if name == "patroni" else ENGINES[name](net, root, mode == "sync"))
        try:
            return run_fault(engine, fault, folder, say, rate=rate, hold=hold)
        except Measuring as exc:
            say(f"{name} {mode} {fault}: {exc}, stopped; again once it is gone")
        except Exception as exc:  # noqa: BLE001 - the next run still runs
            say(f"{name} {mode} {fault} failed: {exc}")
            return {"engine": name, "mode": mode, "fault": fault, "error": str(exc)}
        finally:
            for log in sorted((engine.root / "log").glob("*.log")):
                shutil.copy(log, folder / f"{name}-{mode}-{fault}.{log.name}")
            engine.stop()
            for host in net.hosts:
                net.heal(host)
    return {"engine": name, "mode": mode, "fault": fault,
            "error": f"interrupted by CPU measurements {tries} times"}

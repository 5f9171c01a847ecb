"""``iotctl chaos gameday``: run a schedule of overlapping faults under load, check the ledger
continuously, halt on a burning error budget, and report (``chaos/gameday.py`` plans and
judges; ``chaos/gameday_report.py`` writes the report).

The run: the schedule is written first (``schedule.json``); then a fleet of simulated devices
and an operator (the experiments' fleet, its ledger) and, with ``--load N``, N locust devices in
the background; every second the windows due are applied or healed and the alerts sampled;
every ``CHECK_EVERY`` seconds the ledger is checked against the devices and Postgres (a breach
is printed at once, with the fault windows around it); every ``HALT_EVERY`` seconds the halt
condition is asked of Prometheus. At the end: every fault healed, a recovery window, the fleet
drained, the final ledger check, the alerts still firing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from chaos import experiment, gameday, gameday_report, probes
from chaos.actions import Actions
from chaos.identity import Identity
from chaos.ledger import Ledger, ReadingKey, check
from iot.settings import Settings
from loadtest.background import BackgroundLoad, LoadOptions
from loadtest.prom import PromError, Prometheus

CHECK_EVERY = 10.0
HALT_EVERY = 15.0
PROGRESS_EVERY = 10.0
ALERT_GRACE = 60.0  # an expected alert may start this long after its fault healed
STICKY = experiment.STICKY_ALERTS


def catalog(names: list[str], cluster: bool) -> list[gameday.Kind]:
    """The fault kinds: the experiments named (default: every one for this stack, the
    rollout experiments aside, which repeat the kills with a rollout)."""
    chosen = names or [
        n
        for n in experiment.names() + (experiment.cluster_names() if cluster else [])
        if not n.startswith("rollout-")
    ]
    kinds = []
    for name in chosen:
        folder = experiment.UNSAFE if name in gameday.UNSAFE_KINDS else experiment.EXPERIMENTS
        exp = experiment.load(name, folder)
        kinds.append(
            gameday.Kind(name, tuple(exp.method), tuple(exp.rollbacks), tuple(exp.expect_alert))
        )
    return kinds


def parse_halt_on(text: str) -> dict[str, float]:
    """``api-availability=100,ingest-lag=50``: halt when an SLO's 5-minute burn rate (its error
    ratio over its error budget) passes the number."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError as exc:
            raise ValueError(f"--halt-on {part!r}: expected SLO=BURN_RATE") from exc
    return out


class Checker:
    """The continuous ledger: readings stored since the last look, breaches of :func:`due`."""

    def __init__(self, settings: Settings, ledger: Ledger, o: gameday.Options) -> None:
        self.url = settings.database_direct_url
        self.ledger = ledger
        self.o = o
        self.stored: set[ReadingKey] = set()
        self.watermark = 0.0
        self.breaches: list[dict[str, Any]] = []
        self.reported: set[Any] = set()
        self.checks = 0

    def _fetch(self) -> None:
        devices = [uuid.UUID(d) for d in self.ledger.devices]
        with psycopg.connect(self.url, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT device_id::text, sensor, (extract(epoch FROM ts) * 1000000)::bigint,"
                " extract(epoch FROM stored_at) FROM readings"
                " WHERE device_id = ANY(%s) AND stored_at >= to_timestamp(%s)",
                (devices, self.watermark - 60),  # a late commit may carry an earlier stamp
            ).fetchall()
        for device, sensor, ts, stored_at in rows:
            self.stored.add((device, sensor, int(ts)))
            self.watermark = max(self.watermark, float(stored_at))

    def check(self, windows: list[gameday.Window], now: float) -> list[dict[str, Any]]:
        """New breaches: items past due and not accounted for (none while Postgres is away:
        the next check sees them)."""
        try:
            self._fetch()
        except psycopg.Error:
            return []
        self.checks += 1
        spans = [(w.started, w.ended) for w in windows if w.started is not None]
        late = {
            k: a
            for k, a in self.ledger.unaccounted(self.stored).items()
            if k not in self.reported and gameday.due(a, spans, self.o.base, self.o.bound) < now
        }
        if not late:
            return []
        self.reported |= set(late)
        first = min(late.values())
        breach = {
            "at": now,
            "items": len(late),
            "readings": sum(1 for k in late if isinstance(k, tuple)),
            "commands": sum(1 for k in late if isinstance(k, str)),
            "first_ids": [str(k) for k, _ in sorted(late.items(), key=lambda kv: kv[1])[:5]],
            "oldest_accepted": first,
            "windows": gameday.around(windows, first),
        }
        self.breaches.append(breach)
        return [breach]


def _halt_reason(prom: Prometheus, halt_on: dict[str, float], now: float) -> str | None:
    for slo, limit in halt_on.items():
        expr = (
            f'slo:sli_error:ratio_rate5m{{slo="{slo}"}}'
            f' / on(slo) slo:error_budget:ratio{{slo="{slo}"}}'
        )
        try:
            burn = prom.scalar(expr, now)
        except PromError:
            continue
        if burn is not None and burn > limit:
            return f"{slo}: 5-minute burn rate {burn:.1f} over the bound {limit:g}"
    return None


def run(
    o: gameday.Options,
    settings: Settings,
    folder: Path,
    progress: Callable[[str], None] = print,
    prom: Prometheus | None = None,
) -> dict[str, Any]:
    """Run the game day; returns its report (the report's writer renders it)."""
    kinds = catalog(o.faults, settings.rabbitmq_cluster)
    plan = gameday.plan(o, kinds)
    by_name = {k.name: k for k in kinds}
    folder.mkdir(parents=True, exist_ok=True)
    gameday_report.write_schedule(folder, o, plan)
    progress(
        f"gameday: {len(plan)} faults over {o.duration:g} s ({gameday.overlaps(plan)} overlapping),"
        f" seed {o.seed}; schedule in {folder / 'schedule.json'}"
    )
    bad = probes.unhealthy(settings, 120)
    if bad:
        raise experiment.ExperimentError(f"steady state not met, unhealthy: {bad}")
    background = BackgroundLoad(LoadOptions(devices=o.load)) if o.load else None
    if background is not None:
        background.start(lambda m: progress(f"load: {m}"))
    actions = Actions(settings)
    actions.reset_all()
    identity = Identity(settings, o.devices)
    ledger, timeline, fleet = identity.fleet(o.command_rate)
    checker = Checker(settings, ledger, o)
    prom = prom or Prometheus.of(settings)
    alert_samples: list[tuple[float, set[tuple[str, str]]]] = []
    halted: str | None = None
    active: list[gameday.Window] = []

    def sample_alerts(now: float) -> None:
        firing = probes.firing_instances(settings, STICKY)
        if firing is not None:
            alert_samples.append((now, firing))

    def heal(w: gameday.Window) -> None:
        for a in by_name[w.kind].rollbacks:
            try:
                actions.run(**a)
            except Exception as exc:  # noqa: BLE001 - healing goes on, the report says so
                progress(f"gameday: rollback {a} of {w.kind} failed: {exc}")
        w.ended = time.time()
        active.remove(w)

    before = probes.active_alerts(settings) or set()  # not the game day's: not judged
    t0 = time.time()
    try:
        fleet.start()
        last_check = last_halt = last_note = t0
        pending = list(plan)
        while time.time() < t0 + o.duration and halted is None:
            now = time.time()
            for w in [w for w in active if now - t0 >= w.end]:
                heal(w)
                progress(f"gameday: {now - t0:6.0f} s healed {w.kind}")
            for w in [w for w in pending if now - t0 >= w.start]:
                pending.remove(w)
                w.started = time.time()
                active.append(w)
                progress(f"gameday: {now - t0:6.0f} s fault {w.kind} for {w.length:g} s")
                try:
                    for a in by_name[w.kind].method:
                        actions.run(**a)
                except Exception as exc:  # noqa: BLE001
                    progress(f"gameday: fault {w.kind} could not be applied: {exc}")
                    heal(w)
            sample_alerts(now)
            if now - last_check >= CHECK_EVERY:
                last_check = now
                for b in checker.check(plan, now):
                    progress(
                        f"gameday: BREACH {b['items']} items not accounted for in time "
                        f"(readings {b['readings']}, commands {b['commands']}), first "
                        f"{b['first_ids'][:2]}; faults around: "
                        + ", ".join(x["kind"] for x in b["windows"])
                    )
            if o.halt_on and now - last_halt >= HALT_EVERY:
                last_halt = now
                halted = _halt_reason(prom, o.halt_on, now)
                if halted:
                    progress(f"gameday: HALT {halted}")
            if now - last_note >= PROGRESS_EVERY:
                last_note = now
                load = f"; load {background.status()}" if background else ""
                seen = ledger.snapshot()
                progress(
                    f"gameday: {now - t0:6.0f} s, active: "
                    f"{', '.join(w.kind for w in active) or 'none'}; ledger "
                    f"{seen['commands_accepted']} commands, "
                    f"{seen['readings_accepted']} readings; breaches "
                    f"{len(checker.breaches)}{load}"
                )
            time.sleep(1)
    finally:
        for w in list(active):
            heal(w)
        actions.reset_all()
    healed_at = time.time()
    progress(f"gameday: every fault healed; recovery window {o.recovery:g} s")
    while time.time() < healed_at + o.recovery:
        sample_alerts(time.time())
        if time.time() - last_check >= CHECK_EVERY:
            last_check = time.time()
            checker.check(plan, last_check)
        time.sleep(1)
    left = probes.active_alerts(settings) or set()
    settle_end = time.time() + o.settle
    # burn-rate alerts outlast their cause by their short window (5 minutes): wait them out
    while o.settle and (left - STICKY - before) and time.time() < settle_end:
        time.sleep(5)
        sample_alerts(time.time())
        left = probes.active_alerts(settings) or left
    quiet_after = round(time.time() - healed_at, 1)
    fleet.stop_load.set()
    drained = fleet.wait_drained(experiment.DRAIN_TIMEOUT)
    fleet.stop()
    load_figures = None
    if background is not None:
        background.stop()
        load_figures = background.finish(
            {"gameday": (t0, healed_at)}, lambda m: progress(f"load: {m}")
        )
    counts = check(ledger, settings.database_direct_url)
    end = time.time()
    try:
        identity.remove()
    except Exception as exc:  # noqa: BLE001
        progress(f"gameday: could not remove the test devices: {exc}")
    actions.close()
    return gameday_report.build(
        o,
        plan,
        t0,
        healed_at,
        end,
        counts,
        checker.breaches,
        checker.checks,
        timeline,
        alert_samples,
        (left - before) if o.settle else set(),
        STICKY,
        drained,
        halted,
        load_figures,
        prom,
        {"before": sorted(before), "quiet_after_heal_s": quiet_after},
    )

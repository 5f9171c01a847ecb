"""``iotctl chaos degrade``: for each link and kind of degradation, the smallest strength that
breaks an SLO, and the alerts that fire then.

For one link (toxiproxy's proxy in front of Postgres, RabbitMQ or Redis) and one kind, the
strengths of its ladder are tried from the mildest: each is held ``hold`` seconds while the
experiments' fleet (and ``--load`` locust devices) runs, then Prometheus judges every SLO over
the held window (``loadtest.prom.step_figures``: the same judgement as a load run's step) and
the alerts that started firing during it (or within ``grace`` after) are noted. The ladder
stops at the first strength that breaks an SLO. Between strengths the toxic is removed and the
system given ``rest`` seconds. At the end the ledger checks that nothing was lost.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chaos import alertwindows, probes
from chaos.experiment import STICKY_ALERTS
from chaos.toxiproxy import Toxiproxy

LINKS = ("postgres", "rabbitmq", "redis")
QUIET_LIMIT = 150.0  # seconds a rest may grow while a quick alert of the last strength clears


@dataclass(frozen=True)
class Ladder:
    """A kind of degradation: the toxic, the attribute (or toxicity) its strength sets, and its
    strengths from the mildest."""

    toxic: str
    unit: str
    strengths: tuple[float, ...]
    attribute: str | None  # None: the strength is the toxic's toxicity (share of connections)
    stream: str = "downstream"
    fixed: tuple[tuple[str, Any], ...] = ()

    def toxic_args(self, strength: float) -> tuple[dict[str, Any], float]:
        """(attributes, toxicity) for one strength."""
        attributes = dict(self.fixed)
        if self.attribute is None:
            return attributes, strength
        attributes[self.attribute] = int(strength)
        return attributes, 1.0


LADDERS = {
    "latency": Ladder("latency", "ms", (25, 50, 100, 200, 400, 800, 1600), "latency"),
    "bandwidth": Ladder("bandwidth", "KB/s", (4096, 1024, 256, 64, 16), "rate"),
    "reset_peer": Ladder(
        "reset_peer",
        "share of connections",
        (0.01, 0.05, 0.2, 0.5, 1.0),
        None,
        "upstream",
        (("timeout", 500),),
    ),
    "timeout": Ladder(
        "timeout",
        "share of connections",
        (0.01, 0.05, 0.2, 0.5, 1.0),
        None,
        "upstream",
        (("timeout", 0),),
    ),
}


@dataclass
class Step:
    link: str
    kind: str
    strength: float
    start: float
    end: float
    slos: dict[str, Any] = field(default_factory=dict)
    alerts: list[str] = field(default_factory=list)

    @property
    def broken(self) -> list[str]:
        return sorted(n for n, v in self.slos.items() if v.get("held") is False)

    def burn(self, slo: str) -> float | None:
        """The SLO's burn rate over the held window: error ratio / budget (1x spends the
        budget exactly over the SLO's period; the fast page is for 14.4x)."""
        v = self.slos[slo]
        ratio, objective = v.get("error_ratio"), v.get("objective")
        if ratio is None or objective is None or objective >= 1:
            return None
        return float(ratio) / (1 - float(objective))

    def burns(self) -> str:
        """The broken SLOs with their burn rates."""
        out = []
        for name in self.broken:
            b = self.burn(name)
            out.append(name if b is None else f"{name} ({b:.1f}x)")
        return ", ".join(out)

    def sustained(self, rules: list[BurnRule]) -> str:
        """For each broken SLO, the burn-rate alert that fires if the degradation lasts."""
        out = []
        for name in self.broken:
            b = self.burn(name)
            if b is not None:
                out.append(if_sustained(name, b, rules))
        return "; ".join(out) or "–"


@dataclass(frozen=True)
class BurnRule:
    slo: str
    alert: str
    severity: str
    windows: str  # "1h/5m"
    factor: float
    hold: str  # its `for:`


def burn_rules(path: Path = alertwindows.RULES / "slo-burn.yml") -> list[BurnRule]:
    """The multi-window burn-rate rules (monitoring/alerts/slo-burn.yml), fastest first."""
    out = []
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            labels = rule.get("labels", {})
            factor = re.search(r">\s*\(\s*([\d.]+)\s*\*", str(rule["expr"]))
            if "slo" not in labels or factor is None:
                continue
            out.append(
                BurnRule(
                    labels["slo"],
                    rule["alert"],
                    labels.get("severity", ""),
                    f"{labels.get('long')}/{labels.get('short')}",
                    float(factor.group(1)),
                    str(rule.get("for", "0s")),
                )
            )
    return sorted(out, key=lambda r: -r.factor)


def if_sustained(slo: str, burn: float, rules: list[BurnRule]) -> str:
    """The burn-rate alert that fires if a burn this fast goes on (the fastest whose factor
    it passes), e.g. ``CommandLatencyBudgetBurn page (1h/5m > 14.4x, for 2m)``."""
    for r in rules:
        if r.slo == slo and burn > r.factor:
            return f"{r.alert} {r.severity} ({r.windows} > {r.factor:g}x, for {r.hold})"
    return "none (below every burn-rate rule)"


def new_alerts(before: set[tuple[str, str]], during: list[set[tuple[str, str]]]) -> list[str]:
    """Names of the alert instances firing in any of the ``during`` samples that were not
    firing in the ``before`` sample."""
    return sorted({name for name, _ in set().union(*during) - before})


def order(strengths: int, broke: Callable[[int], bool], search: str) -> list[int]:
    """The ladder's indices tried, in order, to find the smallest that breaks an SLO.

    ``up``: from the mildest until the first that breaks. ``bisect``: the mildest first (a
    share of connections reset often breaks an SLO at once: one trial), then halve the rest
    each time (a strength that breaks makes every stronger one assumed broken too, one that
    holds every milder one): 1 + log2 of the ladder's trials instead of up to all of them.
    """
    tried: list[int] = []
    if search == "up":
        for i in range(strengths):
            tried.append(i)
            if broke(i):
                break
        return tried
    tried.append(0)
    if broke(0):
        return tried
    lo, hi = 1, strengths  # the answer is in [lo, hi]; hi == strengths: none breaks
    while lo < hi:
        mid = (lo + hi) // 2
        tried.append(mid)
        if broke(mid):
            hi = mid
        else:
            lo = mid + 1
    return tried


def sweep(
    toxiproxy: Toxiproxy,
    link: str,
    kind: str,
    judge: Callable[[float, float], dict[str, Any]],
    sample: Callable[[], set[tuple[str, str]] | None],
    *,
    hold: float,
    grace: float,
    rest: float,
    progress: Callable[[str], None],
    search: str = "up",
    on_step: Callable[[Step], None] = lambda step: None,
    active: Callable[[], set[str]] = set,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Step]:
    """Find the smallest strength of ``kind``'s ladder on ``link`` that breaks an SLO (see
    ``order`` for ``search``); returns the steps tried, in the order tried."""
    ladder = LADDERS[kind]
    samples: list[tuple[float, set[tuple[str, str]]]] = []

    def wait(seconds: float) -> None:
        until = clock() + seconds
        while clock() < until:
            firing = sample()
            if firing is not None:
                samples.append((clock(), firing))
            sleep(min(2.0, max(until - clock(), 0)))

    steps: list[Step] = []

    def quiet(limit: float) -> None:
        """Wait (up to ``limit`` s) until no alert is pending, and none firing but the
        burn-rate ones (their 5-minute short window outlasts any rest; a step counts them only
        when they start during it) and the sticky ones. A quick alert left from the previous
        strength would be in this one's baseline and not be seen firing again; one still
        pending would fire during this one and be taken for its."""
        until = clock() + limit
        while clock() < until:
            firing = sample()
            if firing is not None:
                names = {n for n, _ in firing}
                busy = [n for n in names if not n.endswith("BudgetBurn") and n not in STICKY_ALERTS]
                if not busy and not (active() - names - STICKY_ALERTS):
                    return
            sleep(2.0)

    def trial(index: int) -> bool:
        if steps:
            wait(rest)
            quiet(QUIET_LIMIT)
        strength = ladder.strengths[index]
        attributes, toxicity = ladder.toxic_args(strength)
        name = f"degrade_{kind}"
        start = clock()
        before = sample() or set()
        first = len(samples)
        toxiproxy.add_toxic(
            link, ladder.toxic, attributes, name=name, stream=ladder.stream, toxicity=toxicity
        )
        progress(f"[{link} {kind}] {strength:g} {ladder.unit} for {hold:g} s")
        try:
            wait(hold)
        finally:
            toxiproxy.remove_toxic(link, name)
        end = clock()
        wait(grace)
        step = Step(
            link,
            kind,
            strength,
            start,
            end,
            judge(start, end),
            new_alerts(before, [f for _, f in samples[first:]]),
        )
        steps.append(step)
        on_step(step)
        progress(
            f"[{link} {kind}] {strength:g} {ladder.unit}: SLOs broken "
            f"{', '.join(step.broken) or 'none'}; alerts {', '.join(step.alerts) or 'none'}"
        )
        return bool(step.broken)

    order(len(ladder.strengths), trial, search)
    return steps


def table(steps: list[Step], rules: list[BurnRule] | None = None) -> list[str]:
    """The chaos/README table: per link and kind, the strongest strength tried that held, with
    the alerts then (none is right), and the smallest that broke an SLO, its burn rates, the
    alerts that fired while it was held (or within the grace after), and the burn-rate alert
    that fires if it goes on longer than the hold."""
    rules = burn_rules() if rules is None else rules
    lines = [
        "| link | kind | strongest that held | alerts then | smallest that breaks "
        "| SLOs broken (burn rate) | alerts then | if it lasts |",
        "|---|---|---|---|---|---|---|---|",
    ]
    pairs: dict[tuple[str, str], list[Step]] = {}
    for s in steps:
        pairs.setdefault((s.link, s.kind), []).append(s)
    for (link, kind), ss in pairs.items():
        ladder = LADDERS[kind]
        rank = ladder.strengths.index  # from the mildest (a narrower bandwidth is stronger)
        ss = sorted(ss, key=lambda s: rank(s.strength))
        broke = next((s for s in ss if s.broken), None)
        below = len(ladder.strengths) if broke is None else rank(broke.strength)
        held = [s for s in ss if not s.broken and rank(s.strength) < below]
        unit = ladder.unit
        if held:
            ok = f"{held[-1].strength:g} {unit}"
            ok_alerts = ", ".join(held[-1].alerts) or "none"
        else:
            ok, ok_alerts = "–", "–"
        if broke is None:
            lines.append(
                f"| {link} | {kind} | {ok} | {ok_alerts} | none of the ladder | – | – | – |"
            )
        else:
            alerts = ", ".join(broke.alerts) or "**none**"
            lines.append(
                f"| {link} | {kind} | {ok} | {ok_alerts} | {broke.strength:g} {unit} | "
                f"{broke.burns()} | {alerts} | {broke.sustained(rules)} |"
            )
    return lines


def firing(settings: Any) -> set[tuple[str, str]] | None:
    return probes.firing_instances(settings, STICKY_ALERTS)


def run(
    settings: Any,
    links: list[str],
    kinds: list[str],
    *,
    hold: float = 180,
    grace: float = 60,
    rest: float = 60,
    devices: int = 20,
    command_rate: float = 2.0,
    load: int = 0,
    search: str = "bisect",
    progress: Callable[[str], None] = print,
    on_step: Callable[[list[Step]], None] = lambda steps: None,
) -> dict[str, Any]:
    """Sweep every (link, kind) with a fleet running throughout; returns the report.
    ``on_step`` gets every step so far after each one (to keep a partial report)."""
    from chaos.identity import Identity
    from chaos.ledger import check
    from loadtest.background import BackgroundLoad, LoadOptions
    from loadtest.prom import Prometheus, load_slos, step_figures

    prom = Prometheus.of(settings)
    slos = load_slos()
    toxiproxy = Toxiproxy(f"http://{settings.host}:{settings.toxiproxy_port}")
    toxiproxy.reset()
    background = BackgroundLoad(LoadOptions(devices=load)) if load else None
    if background is not None:
        background.start(lambda m: progress(f"load: {m}"))
    identity = Identity(settings, devices)
    ledger, _, fleet = identity.fleet(command_rate)
    steps: list[Step] = []

    def record(step: Step) -> None:
        steps.append(step)
        on_step(steps)

    started = time.time()
    try:
        fleet.start()
        time.sleep(rest)  # a baseline before the first toxic
        for link in links:
            for kind in kinds:
                sweep(
                    toxiproxy,
                    link,
                    kind,
                    lambda a, b: step_figures(prom, slos, a + min(30.0, hold / 4), b)["slos"],
                    lambda: firing(settings),
                    hold=hold,
                    grace=grace,
                    rest=rest,
                    progress=progress,
                    search=search,
                    on_step=record,
                    active=lambda: probes.active_alerts(settings) or set(),
                )
    finally:
        toxiproxy.reset()
        fleet.stop_load.set()
        fleet.wait_drained(120)
        fleet.stop()
        if background is not None:
            background.stop()
            background.finish({"sweep": (started, time.time())}, lambda m: progress(f"load: {m}"))
        toxiproxy.close()
    counts = check(ledger, settings.database_direct_url)
    identity.remove()
    return {
        "started_at": started,
        "options": {
            "hold": hold,
            "grace": grace,
            "rest": rest,
            "devices": devices,
            "command_rate": command_rate,
            "load": load,
            "search": search,
        },
        "steps": [{**s.__dict__, "broken": s.broken} for s in steps],
        "table": table(steps),
        "counts": counts,
        "passed": all(c["clean"] for c in counts.values()),
    }

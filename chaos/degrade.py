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

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chaos import probes
from chaos.experiment import STICKY_ALERTS
from chaos.toxiproxy import Toxiproxy

LINKS = ("postgres", "rabbitmq", "redis")


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


def new_alerts(before: set[tuple[str, str]], during: list[set[tuple[str, str]]]) -> list[str]:
    """Names of the alert instances firing in any of the ``during`` samples that were not
    firing in the ``before`` sample."""
    return sorted({name for name, _ in set().union(*during) - before})


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
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Step]:
    """Try ``kind``'s ladder on ``link`` until a strength breaks an SLO; returns the steps."""
    ladder = LADDERS[kind]
    samples: list[tuple[float, set[tuple[str, str]]]] = []

    def wait(seconds: float) -> None:
        until = clock() + seconds
        while clock() < until:
            firing = sample()
            if firing is not None:
                samples.append((clock(), firing))
            sleep(min(2.0, max(until - clock(), 0)))

    steps = []
    for strength in ladder.strengths:
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
        progress(
            f"[{link} {kind}] {strength:g} {ladder.unit}: SLOs broken "
            f"{', '.join(step.broken) or 'none'}; alerts {', '.join(step.alerts) or 'none'}"
        )
        if step.broken:
            break
        wait(rest)
    return steps


def table(steps: list[Step]) -> list[str]:
    """The chaos/README table: per link and kind, the smallest strength that broke an SLO."""
    lines = [
        "| link | kind | held, not broken | smallest that breaks | SLOs broken | alerts then |",
        "|---|---|---|---|---|---|",
    ]
    pairs: dict[tuple[str, str], list[Step]] = {}
    for s in steps:
        pairs.setdefault((s.link, s.kind), []).append(s)
    for (link, kind), ss in pairs.items():
        unit = LADDERS[kind].unit
        held = [s for s in ss if not s.broken]
        broke = next((s for s in ss if s.broken), None)
        ok = f"{held[-1].strength:g} {unit}" if held else "–"
        if broke is None:
            lines.append(f"| {link} | {kind} | {ok} | none of the ladder | – | – |")
        else:
            alerts = ", ".join(broke.alerts) or "**none**"
            lines.append(
                f"| {link} | {kind} | {ok} | {broke.strength:g} {unit} | "
                f"{', '.join(broke.broken)} | {alerts} |"
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
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Sweep every (link, kind) with a fleet running throughout; returns the report."""
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
    started = time.time()
    try:
        fleet.start()
        time.sleep(rest)  # a baseline before the first toxic
        for link in links:
            for kind in kinds:
                steps += sweep(
                    toxiproxy,
                    link,
                    kind,
                    lambda a, b: step_figures(prom, slos, a + min(30.0, hold / 4), b)["slos"],
                    lambda: firing(settings),
                    hold=hold,
                    grace=grace,
                    rest=rest,
                    progress=progress,
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
        },
        "steps": [{**s.__dict__, "broken": s.broken} for s in steps],
        "table": table(steps),
        "counts": counts,
        "passed": all(c["clean"] for c in counts.values()),
    }

"""What Prometheus saw during a step: the SLOs of ``monitoring/rules/slos.yml`` evaluated over
the step's window, queue depths, ingest lag, command delivery and broker confirms.

The SLO expressions are not copied: :func:`load_slos` reads each SLO's objective and its
``slo:sli_error:ratio_rate5m`` expression from the rules file and evaluates it with the step's
window in place of ``5m``, so the report judges steps exactly as the alerts judge production.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from iot.settings import Settings, get_settings

SLO_RULES = Path(__file__).resolve().parent.parent / "monitoring" / "rules" / "slos.yml"
# Queues not worth a row: Celery's delayed-delivery and event queues, reply queues.
_QUIET = r"celery_delayed_.*|celeryev\..*|.*\.pidbox|amq\..*"
_PER_DEVICE = r"commands\.dev\..+"


class PromError(RuntimeError):
    """Prometheus did not answer or refused a query; the message says which."""


MIN_EVENTS = 20  # fewer events in a window: the SLO is not judged (one slow event of two
# would otherwise read as a 50 % error ratio)


def _window(expr: str, seconds: float) -> str:
    return expr.replace("[5m]", f"[{max(int(seconds), 10)}s]")


@dataclass(frozen=True)
class Slo:
    name: str
    objective: float
    error_ratio_expr: str  # with a 5m window, as in the rules file
    events_rate_expr: str | None = None  # events per second, 5m window

    def expr(self, seconds: float) -> str:
        """The error-ratio expression over a window of ``seconds`` instead of 5 minutes."""
        return _window(self.error_ratio_expr, seconds)

    def events_expr(self, seconds: float) -> str | None:
        """Events per second over a window of ``seconds``, if the rules define it."""
        return _window(self.events_rate_expr, seconds) if self.events_rate_expr else None


def load_slos(path: Path = SLO_RULES) -> list[Slo]:
    """Every SLO of the rules file with its objective and 5-minute error-ratio expression.

    Raises:
        PromError: the file is missing or has no such rules.
    """
    try:
        groups = yaml.safe_load(path.read_text())["groups"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise PromError(f"cannot read the SLO rules in {path}: {exc}") from exc
    objectives: dict[str, float] = {}
    exprs: dict[str, str] = {}
    events: dict[str, str] = {}
    for group in groups:
        for rule in group.get("rules", []):
            slo = (rule.get("labels") or {}).get("slo")
            if rule.get("record") == "slo:objective:ratio" and slo:
                match = re.search(r"vector\(([\d.]+)\)", rule["expr"])
                if match:
                    objectives[slo] = float(match.group(1))
            elif rule.get("record") == "slo:sli_error:ratio_rate5m" and slo:
                exprs[slo] = rule["expr"]
            elif rule.get("record") == "slo:sli_events:rate5m" and slo:
                events[slo] = rule["expr"]
    slos = [
        Slo(n, objectives[n], exprs[n], events.get(n)) for n in sorted(exprs) if n in objectives
    ]
    if not slos:
        raise PromError(f"no SLOs (objective + 5m error ratio) found in {path}")
    return slos


def _number(raw: str) -> float | None:
    value = float(raw)
    return None if math.isnan(value) or math.isinf(value) else value


class Prometheus:
    """The instant and range query API of one Prometheus."""

    def __init__(
        self, base_url: str, timeout: float = 15.0, auth: tuple[str, str] | None = None
    ) -> None:
        """``auth``: basic auth, by default the stack's monitoring credentials."""
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.auth = auth or get_settings().monitoring_auth

    @classmethod
    def of(cls, s: Settings) -> Prometheus:
        """The stack's own Prometheus."""
        return cls(f"http://{s.host}:{s.prometheus_port}")

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        try:
            r = httpx.get(
                f"{self.base_url}{path}", params=params, timeout=self.timeout, auth=self.auth
            )
        except httpx.HTTPError as exc:
            raise PromError(f"Prometheus at {self.base_url}: {exc}") from exc
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        if r.status_code != 200 or body.get("status") != "success":
            raise PromError(f"query refused ({r.status_code}): {body.get('error', r.text[:200])}")
        return body["data"]

    def query(self, expr: str, at: float) -> list[tuple[dict[str, str], float | None]]:
        """An instant query at ``at`` (epoch s): [(labels, value or None for NaN)].

        Raises:
            PromError: no answer or an invalid query.
        """
        data = self._get("/api/v1/query", {"query": expr, "time": f"{at:.3f}"})
        if data["resultType"] == "scalar":
            return [({}, _number(data["result"][1]))]
        return [(item["metric"], _number(item["value"][1])) for item in data["result"]]

    def scalar(self, expr: str, at: float) -> float | None:
        """The first value of an instant query, or None (no series, or NaN)."""
        result = self.query(expr, at)
        return result[0][1] if result else None

    def by_label(self, expr: str, at: float, label: str) -> dict[str, float | None]:
        return {labels.get(label, ""): value for labels, value in self.query(expr, at)}

    def series(
        self, expr: str, start: float, end: float, step: float
    ) -> dict[str, list[tuple[float, float]]]:
        """A range query: one list of (t, value) per series, keyed by its labels as text.

        Raises:
            PromError: no answer or an invalid query.
        """
        data = self._get(
            "/api/v1/query_range",
            {
                "query": expr,
                "start": f"{start:.3f}",
                "end": f"{end:.3f}",
                "step": f"{max(1, round(step))}s",
            },
        )
        out = {}
        for item in data["result"]:
            key = ",".join(f"{k}={v}" for k, v in sorted(item["metric"].items())) or "value"
            out[key] = [
                (float(t), v) for t, raw in item["values"] if (v := _number(raw)) is not None
            ]
        return out


def _quantile(metric: str, q: float, w: str, selector: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (increase({metric}_bucket{{{selector}}}[{w}])))"


def slo_figures(prom: Prometheus, slos: list[Slo], start: float, end: float) -> dict[str, Any]:
    """Each SLO over the window ``[start, end]``: objective, error ratio, events, and whether
    it held (None when the window had fewer than ``MIN_EVENTS`` events).

    Raises:
        PromError: Prometheus did not answer.
    """
    seconds = max(end - start, 10.0)
    out: dict[str, Any] = {}
    for slo in slos:
        ratio = prom.scalar(slo.expr(seconds), end)
        events_expr = slo.events_expr(seconds)
        rate = prom.scalar(events_expr, end) if events_expr else None
        count = None if rate is None else round(rate * seconds)
        budget = 1 - slo.objective
        judged = ratio is not None and (count is None or count >= MIN_EVENTS)
        out[slo.name] = {
            "objective": slo.objective,
            "error_ratio": ratio,
            "events": count,
            "held": (ratio <= budget + 1e-12) if judged and ratio is not None else None,
        }
    return out


def step_figures(prom: Prometheus, slos: list[Slo], start: float, end: float) -> dict[str, Any]:
    """Prometheus's view of the window ``[start, end]``: the SLOs (error ratio, events, held or
    not: None when the window had fewer than ``MIN_EVENTS`` events), queue depths (max and
    growth per second), ingest lag, command delivery latency and counts, broker confirm time.

    Raises:
        PromError: Prometheus did not answer.
    """
    seconds = max(end - start, 10.0)
    w = f"{int(seconds)}s"
    at = end
    out: dict[str, Any] = {"slos": slo_figures(prom, slos, start, end)}
    ready = f"rabbitmq_queue_messages_ready{{queue!~`{_QUIET}|{_PER_DEVICE}`}}"
    queues_max = prom.by_label(f"max by (queue) (max_over_time({ready}[{w}]))", at, "queue")
    queues_growth = prom.by_label(f"sum by (queue) (deriv({ready}[{w}]))", at, "queue")
    per_device = f"sum(rabbitmq_queue_messages_ready{{queue=~`{_PER_DEVICE}`}})"
    device_max = prom.scalar(f"max_over_time({per_device}[{w}:5s])", at)
    queues = {
        q: {"max_ready": v, "growth_per_s": queues_growth.get(q)}
        for q, v in sorted(queues_max.items())
        if v or q in ("sensors.data", "commands.data", "commands.log")
    }
    if device_max:
        queues["commands.dev.* (sum)"] = {"max_ready": device_max, "growth_per_s": None}
    out["queues"] = queues
    lag = 'job="worker"'
    out["ingest_lag_s"] = {
        "p50": prom.scalar(_quantile("iot_ingest_lag_seconds", 0.5, w, lag), at),
        "p99": prom.scalar(_quantile("iot_ingest_lag_seconds", 0.99, w, lag), at),
    }
    api = 'job="api"'
    out["command_delivery"] = {
        "p50_s": prom.scalar(_quantile("iot_command_delivery_latency_seconds", 0.5, w, api), at),
        "p99_s": prom.scalar(_quantile("iot_command_delivery_latency_seconds", 0.99, w, api), at),
        "acked_per_s": prom.scalar(f"sum(rate(iot_commands_acked_total{{{api}}}[{w}]))", at),
        "expired_or_dead": prom.scalar(
            f'sum(increase(iot_command_events_total{{{api},status=~"expired|dead"}}[{w}]))', at
        ),
    }
    out["broker_confirm_p99_s"] = prom.scalar(
        _quantile("iot_broker_publish_confirm_seconds", 0.99, w, api), at
    )
    out["readings_stored_per_s"] = prom.scalar(f"sum(rate(iot_readings_stored_total[{w}]))", at)
    return out


def run_series(prom: Prometheus, start: float, end: float) -> dict[str, Any]:
    """Time series over the whole run for the plots: queue depths and ingest lag p99.

    Raises:
        PromError: Prometheus did not answer.
    """
    step = max(5.0, (end - start) / 500)
    ready = (
        "rabbitmq_queue_messages_ready"
        f"{{queue=~`sensors[.]data|commands[.].*`,queue!~`{_PER_DEVICE}`}}"
    )
    return {
        "queues": prom.series(f"sum by (queue) ({ready})", start, end, step),
        "ingest_lag_p99": prom.series(
            _quantile("iot_ingest_lag_seconds", 0.99, "30s", 'job="worker"'), start, end, step
        ),
    }

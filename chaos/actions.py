"""Actions: the code that acts on the system (faults and their rollbacks). A failing action
raises; nothing fails silently."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from typing import Any

import httpx
import pika

from chaos.toxiproxy import Toxiproxy
from iot.settings import Settings
from iot.stack import cluster, ha, ha_hosts
from iot.stack.control import Supervisor, rabbitmq_api

# Toxic presets by fault name: (toxic type, attributes, stream).
TOXICS: dict[str, tuple[str, dict[str, Any], str]] = {
    "latency": ("latency", {"latency": 400, "jitter": 300}, "downstream"),
    "timeout": ("timeout", {"timeout": 0}, "upstream"),  # blackhole: data is held, never sent
    "reset_peer": ("reset_peer", {"timeout": 500}, "upstream"),
    "bandwidth": ("bandwidth", {"rate": 16}, "downstream"),  # KB/s
}


# Members of `iotctl up --ha` named by their role when the fault starts (kept for the rollback).
HA_TARGETS = frozenset({"pg-primary", "pg-standby", "redis-master", "redis-replica"})


class ActionError(RuntimeError):
    """An action could not be carried out."""


class Actions:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.toxiproxy = Toxiproxy(f"http://{settings.host}:{settings.toxiproxy_port}")
        self.supervisor = Supervisor(settings)
        self.stolen = 0
        self.resolved: dict[str, str] = {}  # symbolic target -> program, for the rollbacks
        self._stealers: list[tuple[threading.Event, threading.Thread]] = []

    def run(self, action: str, target: str, **params: Any) -> None:
        """Carry out one action of an experiment's method or rollbacks."""
        handler = getattr(self, f"_{action}", None)
        if handler is None:
            raise ActionError(f"unknown action {action!r}")
        handler(self.resolve(target), **params)

    def resolve(self, target: str) -> str:
        """The program (and toxiproxy proxy) a target names. Besides a name, a RabbitMQ node of
        the cluster chosen when the fault starts, kept for the rollbacks:
        ``leader:QUEUE`` the node leading that queue; ``busiest-node`` the node serving the
        most client connections (the API's and workers')."""
        if target in self.resolved:
            return self.resolved[target]
        if target in HA_TARGETS:
            self.resolved[target] = self._ha_member(target)
            return self.resolved[target]
        if target.startswith("leader:"):
            name = self._leader(target.partition(":")[2])
        elif target == "busiest-node":
            name = self._busiest()
        else:
            return target
        program = {n.nodename: n.program for n in self.s.rabbitmq_nodes}.get(name)
        if program is None:
            raise ActionError(f"{target}: {name!r} is not one of our RabbitMQ nodes")
        self.resolved[target] = program
        return program

    def _ha_member(self, target: str) -> str:
        """The member of ``iotctl up --ha`` a role names, when the fault starts."""
        if not self.s.ha:
            raise ActionError(f"{target} needs the highly available data tier: `iotctl up --ha`")
        if target.startswith("pg-"):
            leader = ha.primary(self.s)
            if leader is None:
                raise ActionError("no Postgres member is primary")
            members = [m.name for m in ha.pg_members(self.s)]
            others = [n for n in members if n != leader.name]
            return leader.name if target == "pg-primary" else others[0]
        masters = ha.redis_masters(self.s)
        if len(masters) != 1:
            raise ActionError(f"expected one Redis master, found {masters or 'none'}")
        replicas = [f"redis-{i}" for i in range(1, len(ha.REDIS_PORTS) + 1)]
        return (
            masters[0] if target == "redis-master" else next(n for n in replicas if n != masters[0])
        )

    def _leader(self, queue: str) -> str:
        for q in cluster.queues(self.s):
            if q["name"] == queue:
                return cluster.leader(q)
        raise ActionError(f"no queue {queue!r}")

    def _busiest(self) -> str:
        try:
            r = rabbitmq_api(self.s, "GET", "connections", params={"columns": "node"})
            r.raise_for_status()
        except httpx.HTTPError as exc:
            raise ActionError(f"cannot list RabbitMQ's connections: {exc}") from exc
        counts = Counter(str(c["node"]) for c in r.json())
        if not counts:
            raise ActionError("no client is connected to RabbitMQ")
        return counts.most_common(1)[0][0]

    def _proxy_disable(self, target: str) -> None:
        self.toxiproxy.set_enabled(target, False)

    def _proxy_enable(self, target: str) -> None:
        self.toxiproxy.set_enabled(target, True)

    def _toxic_add(self, target: str, fault: str, **attributes: Any) -> None:
        toxic_type, defaults, stream = TOXICS[fault]
        self.toxiproxy.add_toxic(
            target, toxic_type, {**defaults, **attributes}, name=f"chaos_{fault}", stream=stream
        )

    def _toxic_remove(self, target: str, fault: str) -> None:
        names = {t["name"] for t in self.toxiproxy.proxy(target).get("toxics", [])}
        if f"chaos_{fault}" in names:
            self.toxiproxy.remove_toxic(target, f"chaos_{fault}")

    def _kill(self, target: str) -> None:
        """kill -9 of a supervised program's whole process group (e.g. RabbitMQ's shell and its
        Erlang VM, Postgres and its backends); the supervisor restarts it."""
        os.killpg(self._pid(target), signal.SIGKILL)

    def _pid(self, target: str) -> int:
        """The pid (and process group) of a running supervised program."""
        info = self.supervisor.info().get(target)
        if not info or not info.get("pid"):
            raise ActionError(f"{target} is not running; cannot kill it")
        return int(info["pid"])

    def _kill_hold(self, target: str) -> None:
        """kill -9 of a program, then keep it stopped until the rollback (``ensure_running``)
        starts it: a node that stays lost for the whole fault, not only while it restarts.

        The process group is frozen (SIGSTOP) before the supervisor is told to stop it, then
        killed. Killed first, the supervisor restarted it within a second and the stop that
        followed reached the new process as a SIGTERM: a graceful shutdown, not a crash
        (Patroni then hands its leader key over at once, and the failover measured 7 s
        instead of the 15-18 s of a crash)."""
        groups = [self._pid(target), *self._postgres_group(target)]
        for group in groups:  # no signal handled, no exit, until the SIGKILL
            os.killpg(group, signal.SIGSTOP)
        try:
            self.supervisor.mark_stopping(target)  # its SIGTERM waits, never delivered
        finally:
            for group in groups:
                os.killpg(group, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while self.supervisor.info().get(target, {}).get("statename") != "STOPPED":
            if time.monotonic() > deadline:
                raise ActionError(f"{target} did not stop after kill -9")
            time.sleep(0.2)

    def _host_cut(self, target: str) -> None:
        """Cut the host a member runs on off the network (its namespace's link down): a real
        partition. The member keeps running; the others and our processes lose it."""
        ha_hosts.cut(self._host(target))

    def _host_heal(self, target: str) -> None:
        ha_hosts.heal(self._host(target))

    def _host(self, target: str) -> ha_hosts.Host:
        if not self.s.ha_netns:
            raise ActionError(
                f"{target}: cutting a host off needs the members on hosts of their own: "
                "`iotctl up --ha --ha-netns`"
            )
        try:
            return ha_hosts.host(int(target.rsplit("-", 1)[1]))  # patroni-2 runs on host 2
        except (IndexError, ValueError) as exc:
            raise ActionError(f"{target} is not a member of the HA data tier") from exc

    def _postgres_group(self, program: str) -> list[int]:
        """The process group of a Patroni member's Postgres (the postmaster and its backends):
        Patroni starts it in a session of its own, so killing Patroni's group leaves it
        running. Empty for any other program, or when it does not run."""
        for m in ha.pg_members(self.s):
            if m.name == program and (pid := ha.postmaster_pid(m)) is not None:
                try:
                    return [os.getpgid(pid)]
                except OSError:
                    return []
        return []

    def _ensure_running(self, target: str, timeout: float = 60) -> None:
        """Rollback of a kill: make sure the supervisor has the program running again."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.supervisor.info().get(target, {}).get("statename")
            if state == "RUNNING":
                return
            if state in ("STOPPED", "EXITED", "FATAL"):
                self.supervisor.start_program(target)
            time.sleep(0.5)
        raise ActionError(f"{target} is not running {timeout:.0f}s after the rollback")

    def _steal_auto_ack(self, target: str) -> None:
        """Deliberately unsafe: a consumer that takes messages from a queue with auto-ack and
        drops them, as a design that "takes the message synchronously" would lose them when
        anything fails after the take. Only for proving that the checker catches loss."""
        stop = threading.Event()
        url = (
            f"amqp://{self.s.rabbitmq_user}:{self.s.rabbitmq_password}@{self.s.rabbitmq_host}:"
            f"{self.s.rabbitmq_port}/"
        )

        def steal() -> None:
            connection = pika.BlockingConnection(pika.URLParameters(url))
            channel = connection.channel()

            def drop(*_: Any) -> None:
                self.stolen += 1

            # A push consumer competes with the workers round-robin; auto-ack = no way back.
            channel.basic_consume(target, drop, auto_ack=True)
            while not stop.is_set():
                connection.process_data_events(time_limit=0.2)
            connection.close()

        thread = threading.Thread(target=steal, daemon=True)
        thread.start()
        self._stealers.append((stop, thread))

    def _stop_stealing(self, target: str) -> None:
        for stop, thread in self._stealers:
            stop.set()
            thread.join(10)
        self._stealers.clear()

    def close(self) -> None:
        self._stop_stealing("")
        self.toxiproxy.close()

    def reset_all(self) -> None:
        """Remove every toxic, re-enable every proxy and join every cut-off host again (the
        universal rollback)."""
        self.toxiproxy.reset()
        if self.s.ha and self.s.ha_netns:
            for n in range(1, ha_hosts.COUNT + 1):
                ha_hosts.heal(ha_hosts.host(n))

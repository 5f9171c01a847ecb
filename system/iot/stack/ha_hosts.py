"""The HA data tier's three hosts as network namespaces of this machine (``IOT_HA_NETNS``).

Host N is namespace ``iothostN`` with address 10.79.0.(10+N) on the bridge ``iothost-br0``
(10.79.0.1 on this machine's side, where our processes, haproxy and Prometheus run). The
supervisor starts each member inside its host (``ha.on_host``); files and Unix sockets are
shared, the network is not, so cutting a host's link (:func:`cut`) is a real partition: the
other hosts and our processes lose it and it loses them, while it keeps running. Needs root.
Created by ``iotctl up --ha`` when missing (:func:`ensure`), removed by ``--no-ha``
(:func:`remove`, once the members are stopped).
"""

from __future__ import annotations

from iot.ha.netns import Host, Net, NetError, ip
from iot.settings import HA_NETNS_SUBNET

PREFIX = "iothost"
GATEWAY = f"{HA_NETNS_SUBNET}.1"
COUNT = 3

__all__ = [
    "COUNT",
    "GATEWAY",
    "Host",
    "NetError",
    "cut",
    "ensure",
    "heal",
    "host",
    "is_cut",
    "remove",
]


def _net() -> Net:
    return Net(COUNT, prefix=PREFIX, subnet=HA_NETNS_SUBNET)


def host(n: int) -> Host:
    """Host ``n`` (1-3), whether or not it exists yet."""
    return _net().planned()[n - 1]


def ensure() -> list[Host]:
    """The hosts, created (bridge, namespaces, links, addresses) unless all of them exist."""
    net = _net().attach()
    if net is None:
        net = _net().open()
    for h in net.hosts:  # a cut an interrupted experiment left
        heal(h)
    return net.hosts


def remove() -> None:
    """Remove the hosts (their members must be stopped: processes left in them are ended)."""
    _net().close()


def cut(h: Host) -> None:
    """Cut ``h`` off: its link down (a partition, not a stop)."""
    _net().cut(h)


def heal(h: Host) -> None:
    _net().heal(h)


def is_cut(h: Host) -> bool:
    return "state DOWN" in ip("link", "show", h.outer, check=False).stdout

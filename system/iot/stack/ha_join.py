"""Start a member of the HA data tier in the role the cluster gives it now, never one of its own.

``iotctl up --ha`` runs members through this (standard library only: Patroni's members run as
``postgres`` under Debian's ``/usr/bin/python3``, outside the product's virtualenv):

- ``ha_join.py patroni DATA_DIR CONFIG ETCD_URL...`` (``patroni-2``): while the member has no
  data of its own, wait until etcd holds the cluster's ``initialize`` key (the first member
  took over the single Postgres's data), then run Patroni, which copies the primary. Without
  the wait both members start at once on a fresh etcd and the empty one may win the race to
  initialise: a new, empty cluster, the product's data left on the other member, which Patroni
  then refuses ("system ID mismatch").
- ``ha_join.py redis CONFIG SENTINEL_PORT...`` (every Redis member): ask the Sentinels which
  member is master; when it is another one, start as its replica (``--replicaof``). A killed
  master started again with its own file would otherwise come back as a second master until
  the Sentinels convert it (seconds), and haproxy, which routes to whoever says
  ``role:master``, would send writes to both meanwhile.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.error
import urllib.request

SCOPE = "iot"  # ha.SCOPE
MASTER_NAME = "iot"  # ha.REDIS_MASTER_NAME
PATRONI = "/usr/bin/patroni"
REDIS = "/usr/bin/redis-server"


def cluster_exists(etcd_urls: list[str]) -> bool:
    """Whether any etcd member answers that the cluster's ``initialize`` key is set (v2 API)."""
    for url in etcd_urls:
        try:
            with urllib.request.urlopen(
                f"{url}/v2/keys/service/{SCOPE}/initialize", timeout=2
            ) as answer:
                return bool(answer.status == 200)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # this member answers: no cluster yet
                return False
        except OSError:
            continue  # this etcd member is down: ask the next
    return False


def join_patroni(data_dir: str, config: str, etcd_urls: list[str]) -> None:
    waited = 0
    while not os.path.exists(os.path.join(data_dir, "PG_VERSION")):
        if cluster_exists(etcd_urls):
            break
        if waited % 30 == 0:
            print(f"waiting for the cluster {SCOPE!r} to exist in etcd ({waited} s)", flush=True)
        time.sleep(1)
        waited += 1
    os.execv(PATRONI, [PATRONI, config])


def _conf(path: str) -> dict[str, str]:
    """The first value of each directive of a redis.conf."""
    out: dict[str, str] = {}
    with open(path) as f:
        for line in f:
            name, _, value = line.strip().partition(" ")
            if name and not name.startswith("#"):
                out.setdefault(name.lower(), value.strip().strip('"'))
    return out


def _command(host: str, port: int, password: str, *args: str) -> list[str] | None:
    """One Sentinel command over RESP (AUTH first); its array of bulk strings, or None."""

    def encode(*words: str) -> bytes:
        out = f"*{len(words)}\r\n"
        for w in words:
            out += f"${len(w.encode())}\r\n{w}\r\n"
        return out.encode()

    with socket.create_connection((host, port), timeout=2) as sock:
        stream = sock.makefile("rb")
        sock.sendall(encode("AUTH", password) + encode(*args))
        if not stream.readline().startswith(b"+OK"):
            return None
        head = stream.readline()
        if not head.startswith(b"*") or head.startswith(b"*-1"):
            return None
        values = []
        for _ in range(int(head[1:])):
            stream.readline()  # $<length>
            values.append(stream.readline().rstrip(b"\r\n").decode())
        return values


def current_master(password: str, sentinels: list[tuple[str, int]]) -> tuple[str, int] | None:
    """The master the first Sentinel that answers names, or None (none answers)."""
    for host, port in sentinels:
        try:
            answer = _command(
                host, port, password, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME
            )
        except OSError:
            continue
        if answer and len(answer) == 2:
            return answer[0], int(answer[1])
    return None


def sentinel_address(word: str) -> tuple[str, int]:
    """``HOST:PORT`` (or a bare port, on 127.0.0.1) as a Sentinel's address."""
    host, _, port = word.rpartition(":")
    return host or "127.0.0.1", int(port)


def join_redis(config: str, sentinels: list[tuple[str, int]]) -> None:
    conf = _conf(config)
    host, port = conf["bind"].split()[0], int(conf["port"])
    master = current_master(conf.get("requirepass", ""), sentinels)
    args = [REDIS, config]
    if master is not None and master != (host, port):
        print(f"the Sentinels name {master[0]}:{master[1]} master: starting as its replica")
        args += ["--replicaof", master[0], str(master[1])]
    os.execv(REDIS, args)


def main(argv: list[str]) -> None:
    if len(argv) >= 5 and argv[1] == "patroni":
        join_patroni(argv[2], argv[3], argv[4:])
    elif len(argv) >= 4 and argv[1] == "redis":
        join_redis(argv[2], [sentinel_address(w) for w in argv[3:]])
    else:
        sys.exit(
            "usage: ha_join.py patroni DATA_DIR CONFIG ETCD_URL... | "
            "ha_join.py redis CONFIG SENTINEL_HOST:PORT..."
        )


if __name__ == "__main__":
    main(sys.argv)

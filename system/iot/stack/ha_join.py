"""Start a Patroni member that must join an existing cluster, never bootstrap one of its own.

``iotctl up --ha`` runs ``patroni-2`` through this: ``python3 ha_join.py DATA_DIR CONFIG
ETCD_URL...``. While the member has no data of its own, it waits until etcd holds the
cluster's ``initialize`` key (the first member took over the single Postgres's data, or
bootstrapped it), then runs Patroni, which then copies the primary (``pg_basebackup``). Without
the wait both members start at once on a fresh etcd, and the empty one may win the race to
initialise: a new, empty cluster, with the product's data left on the other member, which
Patroni then refuses ("system ID mismatch").

Standard library only: Patroni's member runs as ``postgres`` under Debian's ``/usr/bin/python3``,
outside the product's virtualenv.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request

SCOPE = "iot"  # ha.SCOPE
PATRONI = "/usr/bin/patroni"


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


def main(argv: list[str]) -> None:
    if len(argv) < 4:
        sys.exit("usage: ha_join.py DATA_DIR PATRONI_CONFIG ETCD_URL...")
    data_dir, config, etcd_urls = argv[1], argv[2], argv[3:]
    waited = 0
    while not os.path.exists(os.path.join(data_dir, "PG_VERSION")):
        if cluster_exists(etcd_urls):
            break
        if waited % 30 == 0:
            print(f"waiting for the cluster {SCOPE!r} to exist in etcd ({waited} s)", flush=True)
        time.sleep(1)
        waited += 1
    os.execv(PATRONI, [PATRONI, config])


if __name__ == "__main__":
    main(sys.argv)

"""Writes from inside a host to its own Postgres (127.0.0.1), to see whether a primary that was
cut off keeps accepting writes (split brain) or is fenced. Started by the bench inside the
namespace: ``python -m iot.ha.probe PORT OUT SECONDS``; one JSON line a write in OUT.

Every write waits at most two seconds: then the probe cancels it (a cancel request, as a client
library's timeout does). A commit that waited for a synchronous standby and was cancelled is
committed locally: Postgres says so in a warning, recorded here as ``local-only``, apart from
``ok`` (acknowledged) and errors.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import psycopg

from iot.ha.writer import error_class

TABLE = "ha_fence"
SCHEMA = f"CREATE TABLE IF NOT EXISTS {TABLE} (n bigint PRIMARY KEY, at timestamptz)"


def main(port: int, out: str, seconds: float, rate: float = 5) -> None:
    deadline = time.time() + seconds
    n = 0
    notices: list[str] = []
    conn: psycopg.Connection | None = None
    with open(out, "a", buffering=1) as f:
        while time.time() < deadline:
            sent = time.time()
            result = ""
            try:
                if conn is None:
                    conn = psycopg.connect(
                        f"host=127.0.0.1 port={port} dbname=postgres user=postgres "
                        "connect_timeout=2",
                        autocommit=True)
                    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
                n += 1
                notices.clear()
                timer = threading.Timer(2.0, conn.cancel_safe)
                timer.start()
                try:
                    conn.execute(f"INSERT INTO {TABLE} VALUES (%s, clock_timestamp())", (n,))
                finally:
                    timer.cancel()
                local = any("committed locally" in m or "synchronous replication" in m
                            for m in notices)
                result = "local-only" if local else "ok"
            except psycopg.Error as exc:
                result = error_class(exc)
                if conn is not None:
                    conn.close()
                conn = None
            f.write(json.dumps({"t": sent, "done": time.time(), "n": n,
                                "result": result}) + "\n")
            time.sleep(max(0.0, 1 / rate - (time.time() - sent)))
    if conn is not None:
        conn.close()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], float(sys.argv[3]))

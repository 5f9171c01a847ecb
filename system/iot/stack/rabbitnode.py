"""Start a RabbitMQ node that joins the cluster on its first boot.

``python -m iot.stack.rabbitnode --data DIR --wait-port PORT -- rabbitmq-server``: when the
node has no data yet (``DIR``, its mnesia folder, is missing), wait until the first node
accepts AMQP connections on ``PORT`` (its boot is complete), so that peer discovery in the
node's rabbitmq.conf finds it and the new node joins its cluster instead of starting a cluster
of its own. A node with data rejoins its cluster by itself. Then become the server (exec).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time


def wait_port(host: str, port: int) -> None:
    """Block until ``host:port`` accepts a TCP connection (printing every 10 s)."""
    started = last = time.monotonic()
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError:
            if time.monotonic() - last > 10:
                last = time.monotonic()
                print(
                    f"waiting for the first node on port {port} ({last - started:.0f}s)", flush=True
                )
            time.sleep(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--wait-port", type=int, required=True)
    parser.add_argument("--host", default=os.environ.get("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1"))
    parser.add_argument("server", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    server = [a for a in args.server if a != "--"]
    if not server:
        parser.error("the server command is missing (after --)")
    if not os.path.isdir(args.data):
        print(
            f"{args.data} is new: joining the cluster of the node on port {args.wait_port}",
            flush=True,
        )
        wait_port(args.host, args.wait_port)
    sys.stdout.flush()
    os.execv(server[0], server)


if __name__ == "__main__":
    main()

"""``iotctl bench worker``: what the sensors worker, Postgres, Redis and RabbitMQ spend per
message and per reading, with messages of a chosen shape.

The API coalesces requests into messages (``IOT_INGEST_LINGER_MS``), so the same readings can
reach the worker as many small messages or as few large ones; this bench shows what that choice
costs. It fills a private queue with ``--messages`` messages of ``--batches`` device batches of
``--readings`` readings each (the API's own message format, for devices of a throw-away user),
then starts one sensors worker (the stack's command line, threads pool) on that queue alone and
measures CPU seconds (from /proc: the worker process, and the stack's Postgres, Redis and
RabbitMQ, children included) until the queue is empty and every reading is in Postgres. The
worker's own start-up (about 1.5 s of CPU) is measured first with an empty queue and
subtracted. Afterwards the queue, the devices, their readings and the user are deleted.

CPU seconds, not wall time: they hold on a busy machine far better than throughput does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import psycopg
import typer

from iot import messages, security
from iot.settings import Settings, get_settings
from loadtest.cpu import proc_table, tree_seconds

QUEUE = "sensors.bench"
METRICS_PORT = 9599  # the bench worker's metrics listener (not one of the stack's ports)


def member_postmasters(s: Settings, running: dict[str, int]) -> dict[str, int]:
    """Under ``--ha`` (Patroni programs among ``running``), each member's Postgres, which is
    not in its Patroni's process tree (``ha.postmasters``); else nothing."""
    from iot.stack import ha

    return ha.postmasters(s) if any(n.startswith("patroni-") for n in running) else {}


def stack_pids() -> dict[str, int]:
    """Every supervised process of the stack that runs, and the Postgres of each Patroni
    member: name → pid."""
    from iot.stack.control import Supervisor

    s = get_settings()
    pids = {name: int(p["pid"]) for name, p in Supervisor(s).info().items() if p.get("pid")}
    return {**pids, **member_postmasters(s, pids)}


def stack_cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process and its descendants."""
    table = proc_table()
    return {name: tree_seconds(table, pid) or 0.0 for name, pid in pids.items()}


def _publish(s: Settings, devices: list[str], count: int, batches: int, readings: int) -> int:
    """Fill the private queue; returns how many readings it holds."""
    from kombu import Queue

    from iot.workers.app import app as celery_app

    base = datetime(2020, 1, 1, tzinfo=UTC)
    k = 0
    with celery_app.connection_for_write() as conn:
        Queue(QUEUE, durable=True)(conn.default_channel).declare()
        for _ in range(count):
            group = []
            for _ in range(batches):
                k += 1
                ts = (base + timedelta(milliseconds=k)).isoformat()
                group.append(
                    {
                        "device_id": devices[k % len(devices)],
                        "received_at": datetime.now(UTC).isoformat(),
                        "readings": [
                            {"sensor": f"s{i}", "value": float(k), "ts": ts, "id": None}
                            for i in range(readings)
                        ],
                    }
                )
            celery_app.send_task(
                messages.SENSORS_TASK,
                kwargs={"batches": group},
                queue=QUEUE,
                routing_key=QUEUE,
                exchange="",
                connection=conn,
            )
    return k * readings


def _depth() -> int:
    from iot.workers.app import app as celery_app

    with celery_app.connection_for_write() as conn:
        return int(conn.default_channel.queue_declare(QUEUE, passive=True).message_count)


def _delete_queue() -> None:
    from iot.workers.app import app as celery_app

    with celery_app.connection_for_write() as conn:
        conn.default_channel.queue_delete(QUEUE)


def _worker(threads: int, log: Any) -> subprocess.Popen[bytes]:
    celery = os.path.join(os.path.dirname(sys.executable), "celery")
    env = {
        **os.environ,
        "IOT_WORKER_METRICS_PORT": str(METRICS_PORT),
        "IOT_WORKER_TASK_EVENTS": "false",
    }
    return subprocess.Popen(
        [celery, "-A", "iot.workers.app", "worker", "-Q", QUEUE, "-n", "bench@%h",
         "--pool", "threads", "-c", str(threads), "--without-gossip", "--without-mingle",
         "-l", "WARNING"],
        env=env,
        stdout=log,
        stderr=log,
    )  # fmt: skip


def _stop(worker: subprocess.Popen[bytes]) -> float:
    """CPU seconds the worker used in all, then stop it (by its own pid)."""
    seconds = tree_seconds(proc_table(), worker.pid) or 0.0
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        worker.kill()
    return seconds


def _stored(conn: psycopg.Connection[Any], devices: list[str]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM readings WHERE device_id = ANY(%s::uuid[])", (devices,)
    ).fetchone()
    return int(row[0]) if row else 0


def worker(
    messages_: Annotated[int, typer.Option("--messages", min=1, help="Messages to store.")] = 2000,
    batches: Annotated[int, typer.Option(min=1, max=5000, help="Device batches per message.")] = 1,
    readings: Annotated[int, typer.Option(min=1, max=1000, help="Readings per batch.")] = 5,
    threads: Annotated[int, typer.Option(min=1, help="Worker threads.")] = 8,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the queue to drain.")] = 600,
    json_out: Annotated[str, typer.Option("--json", help="Also write the figures here.")] = "",
) -> None:
    """CPU per message and per reading of the sensors worker, Postgres, Redis and RabbitMQ,
    for messages of the given shape (see `--batches`: the API's coalescing)."""
    get_settings.cache_clear()
    s = get_settings()
    pids = {k: v for k, v in stack_pids().items() if k in ("postgres", "redis", "rabbitmq")}
    if len(pids) != 3:
        typer.secho("error: the stack is not running; start it with `iotctl up`", err=True)
        raise typer.Exit(1)
    user_id = uuid.uuid4()
    devices = [str(uuid.uuid4()) for _ in range(min(batches * 10, 1000))]
    conn = psycopg.connect(s.database_direct_url, autocommit=True)
    log_path = s.var / "log" / "bench-worker.log"
    log = log_path.open("ab")
    typer.echo(f"the bench worker logs to {log_path}")
    try:
        conn.execute(
            "INSERT INTO users (id, username, password_hash, is_admin) VALUES (%s, %s, %s, false)",
            (user_id, f"bench-worker-{user_id.hex[:8]}", "-"),
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO devices (id, owner_id, name, token_hash) VALUES (%s, %s, 'bench', %s)",
                [(d, user_id, security.hash_device_token(uuid.uuid4().hex)) for d in devices],
            )
        typer.echo("measuring the worker's start-up with an empty queue ...")
        _publish(s, devices, 0, batches, readings)
        w = _worker(threads, log)
        time.sleep(4)
        startup = _stop(w)
        typer.echo(f"filling {QUEUE}: {messages_} messages of {batches} x {readings} readings ...")
        total = _publish(s, devices, messages_, batches, readings)
        before = stack_cpu(pids)
        started = time.monotonic()
        w = _worker(threads, log)
        deadline = started + timeout
        while (_depth() > 0 or _stored(conn, devices) < total) and time.monotonic() < deadline:
            time.sleep(0.25)
        wall = time.monotonic() - started
        worker_cpu = max(_stop(w) - startup, 0.0)
        after = stack_cpu(pids)
        stored = _stored(conn, devices)
    finally:
        log.close()
        _delete_queue()
        conn.execute("DELETE FROM readings WHERE device_id = ANY(%s::uuid[])", (devices,))
        conn.execute("DELETE FROM users WHERE id = %s", (user_id,))
        conn.close()
    figures: dict[str, Any] = {
        "messages": messages_,
        "batches_per_message": batches,
        "readings_per_batch": readings,
        "readings": total,
        "stored": stored,
        "wall_seconds": round(wall, 2),
        "cpu_seconds": {"worker-sensors": round(worker_cpu, 3)}
        | {k: round(after[k] - before[k], 3) for k in pids},
    }
    typer.echo(f"stored {stored:,} of {total:,} readings in {wall:.1f} s")
    typer.echo(f"{'component':16} {'CPU s':>8} {'µs/message':>11} {'µs/reading':>11}")
    for name, sec in figures["cpu_seconds"].items():
        typer.echo(f"{name:16} {sec:8.2f} {sec / messages_ * 1e6:11.0f} {sec / total * 1e6:11.1f}")
    if json_out:
        with open(json_out, "w") as f:
            json.dump(figures, f, indent=1)
    if stored < total:
        typer.secho(f"error: {total - stored} readings not stored in {timeout:.0f} s", err=True)
        raise typer.Exit(1)

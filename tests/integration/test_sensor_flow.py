"""Scenario 1 end to end, through nginx: a device posts readings, people read them back."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pika
import psycopg
import pytest

from iot import messages
from iot.settings import Settings
from tests.integration.conftest import Person, eventually, reading, rows_for

pytestmark = pytest.mark.integration


def test_reading_appears_in_latest_from_cache_and_in_history(alice: Person, pg: psycopg.Connection):
    device = alice.new_device()
    r = device.post([reading("temperature", 21.5, age_s=30), reading("humidity", 40.0)])
    assert r.status_code == 201 and r.json() == {"accepted": 2}

    def latest():
        body = alice.api.get(
            "/sensors", params={"device_id": str(device.id)}, headers=alice.headers
        ).json()
        return body if len(body["readings"]) == 2 and body["source"] == "cache" else None

    body = eventually(latest, what="both readings in GET /sensors from the cache")
    values = {x["sensor"]: x["value"] for x in body["readings"]}
    assert values == {"temperature": 21.5, "humidity": 40.0}
    assert rows_for(pg, device.id) == 2

    r = alice.api.get(
        "/sensors/history",
        headers=alice.headers,
        params={
            "device_id": str(device.id),
            "sensor": "temperature",
            "step": "1m",
            "from": (datetime.now(UTC) - timedelta(minutes=10)).isoformat(),
            "to": (datetime.now(UTC) + timedelta(minutes=1)).isoformat(),
        },
    )
    assert r.status_code == 200, r.text
    points = r.json()["points"]
    assert len(points) == 1 and points[0]["avg"] == 21.5 and points[0]["count"] == 1


def test_history_aggregates_in_buckets(alice: Person):
    device = alice.new_device()
    base = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    values = [(base + timedelta(seconds=10 * i), float(i)) for i in range(12)]  # 2 minutes
    r = device.post([{"sensor": "t", "value": v, "ts": ts.isoformat()} for ts, v in values])
    assert r.status_code == 201
    params = {
        "device_id": str(device.id),
        "sensor": "t",
        "step": "60",
        "from": base.isoformat(),
        "to": (base + timedelta(minutes=2)).isoformat(),
    }

    def history():
        pts = alice.api.get("/sensors/history", params=params, headers=alice.headers).json()
        return pts["points"] if sum(p["count"] for p in pts["points"]) == 12 else None

    points = eventually(history, what="12 readings in history")
    assert [(p["count"], p["min"], p["max"], p["avg"]) for p in points] == [
        (6, 0.0, 5.0, 2.5),
        (6, 6.0, 11.0, 8.5),
    ]


def test_an_older_reading_never_replaces_a_newer_one(alice: Person, pg: psycopg.Connection):
    device = alice.new_device()
    assert device.post([reading("t", 2.0, age_s=0)]).status_code == 201
    eventually(lambda: rows_for(pg, device.id) == 1, what="newer reading stored")
    assert device.post([reading("t", 1.0, age_s=600)]).status_code == 201  # flushed from a buffer
    eventually(lambda: rows_for(pg, device.id) == 2, what="older reading stored")
    body = device.api.get("/sensors", headers=device.headers).json()
    assert [x["value"] for x in body["readings"]] == [2.0]


def test_a_cold_cache_is_filled_from_the_database(alice: Person, pg, stack, settings: Settings):
    import redis

    device = alice.new_device()
    assert device.post([reading("t", 7.0)]).status_code == 201
    eventually(lambda: rows_for(pg, device.id) == 1, what="reading stored")
    redis.Redis.from_url(settings.redis_direct_url).delete(f"latest:{device.id}")
    first = device.api.get("/sensors", headers=device.headers).json()
    assert first["source"] == "database" and first["readings"][0]["value"] == 7.0
    second = device.api.get("/sensors", headers=device.headers).json()
    assert second["source"] == "cache" and second["readings"][0]["value"] == 7.0


def _publish_directly(settings: Settings, kwargs: dict, times: int = 1) -> None:
    """A message on sensors.data as the API would publish it (confirmed), ``times`` times."""
    body, headers, task_id = messages.celery_message(messages.SENSORS_TASK, kwargs)
    params = pika.URLParameters(settings.node_url(settings.rabbitmq_nodes[0], direct=True))
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        props = pika.BasicProperties(
            headers=headers,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            correlation_id=task_id,
        )
        for _ in range(times):
            channel.basic_publish(messages.EXCHANGE, messages.SENSORS_QUEUE, body, props, True)
    finally:
        connection.close()


def test_same_message_delivered_twice_stores_one_row(alice: Person, pg, settings: Settings):
    device = alice.new_device()
    batch = {
        "device_id": str(device.id),
        "received_at": datetime.now(UTC).isoformat(),
        "readings": [
            {"sensor": f"s{i}", "value": float(i), "ts": datetime.now(UTC).isoformat(), "id": None}
            for i in range(5)
        ],
    }
    _publish_directly(settings, {"batch": batch}, times=2)  # as after a lost ack

    def both_processed():
        n = pg.execute(
            "SELECT count(*) FROM readings WHERE device_id = %s AND received_at = %s",
            (device.id, batch["received_at"]),
        ).fetchone()[0]
        return n

    eventually(lambda: both_processed() == 5, what="first delivery stored")
    # A client retry of the same readings through the API is just as harmless.
    assert (
        device.post(
            [{k: r[k] for k in ("sensor", "value", "ts")} for r in batch["readings"]]
        ).status_code
        == 201
    )
    marker = device.post([reading("marker", 1.0)])
    assert marker.status_code == 201
    eventually(lambda: rows_for(pg, device.id) == 6, what="marker stored after the duplicates")
    assert rows_for(pg, device.id) == 6


def test_a_batch_postgres_refuses_costs_only_its_own_readings(
    alice: Person, pg, settings: Settings
):
    # The API refuses such values; should one ever slip through, the other devices' readings
    # that travel in the same message (and were answered 201) must still be stored.
    bad, good = alice.new_device(), alice.new_device()
    now = datetime.now(UTC).isoformat()
    _publish_directly(
        settings,
        {
            "batches": [
                {
                    "device_id": str(bad.id),
                    "received_at": now,
                    "readings": [{"sensor": "t", "value": 1.0, "ts": now, "id": "a\x00b"}],
                },
                {
                    "device_id": str(good.id),
                    "received_at": now,
                    "readings": [{"sensor": "t", "value": 2.0, "ts": now, "id": None}],
                },
            ]
        },
    )
    eventually(lambda: rows_for(pg, good.id) == 1, what="the good batch stored")
    marker = bad.post([reading("marker", 1.0)])  # the worker goes on with later messages
    assert marker.status_code == 201
    eventually(lambda: rows_for(pg, bad.id) == 1, what="the refused device's next reading")
    sensors = pg.execute("SELECT sensor FROM readings WHERE device_id = %s", (bad.id,)).fetchall()
    assert sensors == [("marker",)]  # the refused reading alone was dropped


def test_many_readings_in_one_post_are_all_stored(alice: Person, pg):
    device = alice.new_device()
    start = datetime.now(UTC) - timedelta(hours=1)
    batch = [
        {
            "sensor": "t",
            "value": float(i),
            "ts": (start + timedelta(seconds=i)).isoformat(),
            "id": f"r{i}",
        }
        for i in range(1000)
    ]
    r = device.post(batch)
    assert r.status_code == 201 and r.json() == {"accepted": 1000}
    eventually(lambda: rows_for(pg, device.id) == 1000, what="1000 rows")


def test_deleting_a_device_deletes_its_readings(alice: Person, pg):
    device = alice.new_device()
    assert device.post([reading()]).status_code == 201
    eventually(lambda: rows_for(pg, device.id) == 1, what="reading stored")
    assert alice.api.delete(f"/devices/{device.id}", headers=alice.headers).status_code == 204
    assert rows_for(pg, device.id) == 0
    assert alice.api.get(f"/devices/{device.id}", headers=alice.headers).status_code == 404
    r = device.api.get("/sensors", headers=device.headers)
    assert r.status_code == 401 or r.status_code == 200  # its token dies within the auth cache
    r = eventually(
        lambda: device.api.get("/sensors", headers=device.headers).status_code == 401,
        timeout=10,
        what="deleted device's token refused",
    )


def test_token_is_accepted_over_https(alice: Person, settings: Settings):
    import ssl

    import httpx

    device = alice.new_device()
    ctx = ssl.create_default_context(cafile=str(settings.var / "tls" / "server.crt"))
    with httpx.Client(base_url=f"https://{settings.host}:{settings.https_port}", verify=ctx) as tls:
        r = tls.post("/sensors", json={"readings": [reading()]}, headers=device.headers)
    assert r.status_code == 201, r.text


def test_unknown_device_id_in_history_is_404(alice: Person):
    r = alice.api.get(
        "/sensors/history",
        headers=alice.headers,
        params={"device_id": str(uuid.uuid4()), "sensor": "t"},
    )
    assert r.status_code == 404 and "detail" in r.json()

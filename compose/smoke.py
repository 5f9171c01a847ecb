"""Check a running Compose stack end to end through its nginx, as a device and a person would.

``python compose/smoke.py --exec "docker-compose -f compose/docker-compose.yml exec -T api-1"``
with ``IOT_COMPOSE_URL`` (default http://127.0.0.1:38080): creates a person with ``iotctl users
create`` inside the API container, registers a device, sends a reading and checks that it is
stored (history comes from Postgres, latest from Redis), sends a command, takes it with the
device's long poll, acks it and checks that it ends ``succeeded``. Exits 1 with what failed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx


class SmokeError(RuntimeError):
    """A step of the check failed; the message says which."""


def step(name: str) -> None:
    print(f"  - {name}", flush=True)


def expect(r: httpx.Response, status: int, what: str) -> Any:
    if r.status_code != status:
        raise SmokeError(f"{what}: HTTP {r.status_code} (expected {status}): {r.text[:300]}")
    return r.json() if r.content else None


def until(what: str, probe: Callable[[], Any], timeout: float = 30) -> Any:
    """Call ``probe`` until it returns something true; raises SmokeError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SmokeError(f"{what}: not seen within {timeout:.0f} s")
        time.sleep(0.5)


# How long a request answered 503 is tried again, as a device does (after the answer's
# Retry-After): right after a failover of the HA tier a replica answers 503 until it has seen
# the new primary; the product promises service again within 30 s of a primary's loss.
PATIENCE_SECONDS = 30.0


class PatientClient(httpx.Client):
    """An HTTP client that tries a request answered 503 again after its Retry-After, for up to
    PATIENCE_SECONDS, and counts the retries (a 503 means nothing was accepted)."""

    retried = 0

    def request(self, method: str, url: Any, **kwargs: Any) -> httpx.Response:  # type: ignore[override]
        deadline = time.monotonic() + PATIENCE_SECONDS
        while True:
            r = super().request(method, url, **kwargs)
            if r.status_code != 503 or time.monotonic() > deadline:
                return r
            self.retried += 1
            time.sleep(float(r.headers.get("retry-after", "1")))


def run(base_url: str, exec_prefix: list[str]) -> None:
    name, password = f"smoke-{secrets.token_hex(4)}", secrets.token_urlsafe(18)
    step(f"iotctl users create {name} (inside the API container)")
    created = subprocess.run(
        [*exec_prefix, "iotctl", "users", "create", name, "--admin", "--password-stdin"],
        input=password + "\n",
        capture_output=True,
        text=True,
    )
    if created.returncode != 0:
        raise SmokeError(f"iotctl users create failed: {created.stderr or created.stdout}")

    with PatientClient(base_url=base_url, timeout=40) as http:
        step("POST /auth/token, POST /devices")
        token = expect(
            http.post("/auth/token", json={"username": name, "password": password}), 200, "login"
        )["access_token"]
        person = {"authorization": f"Bearer {token}"}
        device = expect(
            http.post("/devices", json={"name": "compose-smoke"}, headers=person), 201, "register"
        )
        dev = {"authorization": f"Bearer {device['token']}"}

        ts = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
        reading = {"sensor": "temperature", "value": 21.5, "ts": ts.isoformat()}
        step("POST /sensors as the device")
        expect(http.post("/sensors", json={"readings": [reading]}, headers=dev), 201, "reading")

        def stored() -> bool:
            r = http.get(
                "/sensors/history",
                params={
                    "device_id": device["id"],
                    "sensor": "temperature",
                    "from": (ts - timedelta(minutes=1)).isoformat(),
                    "to": (ts + timedelta(minutes=1)).isoformat(),
                    "step": 60,
                },
                headers=person,
            )
            return r.status_code == 200 and "21.5" in r.text

        step("the reading is in Postgres (GET /sensors/history) ...")
        until("the reading in GET /sensors/history", stored)

        def latest() -> bool:
            r = http.get("/sensors", params={"device_id": device["id"]}, headers=person)
            return r.status_code == 200 and "21.5" in r.text

        step("... and in GET /sensors")
        until("the reading in GET /sensors", latest)

        step("POST /commands as the person")
        command = expect(
            http.post(
                "/commands",
                json={"device_id": device["id"], "name": "open_valve", "args": {"s": 30}},
                headers=person,
            ),
            201,
            "command",
        )

        def delivered() -> list[dict[str, Any]]:
            r = http.get("/commands", params={"wait": 10}, headers=dev)
            if r.status_code == 200:
                return [c for c in r.json()["commands"] if c["id"] == command["id"]]
            if r.status_code not in (204, 503):
                raise SmokeError(f"device poll: HTTP {r.status_code}: {r.text[:300]}")
            return []

        step("the device's long poll delivers it")
        until("the command in the device's poll", delivered, timeout=60)
        step("POST /commands/{id}/ack as the device")
        expect(
            http.post(
                f"/commands/{command['id']}/ack",
                json={"status": "succeeded", "result": {}},
                headers=dev,
            ),
            200,
            "ack",
        )
        status = expect(http.get(f"/commands/{command['id']}", headers=person), 200, "status")
        if status["status"] != "succeeded":
            raise SmokeError(f"command status {status['status']!r}, expected 'succeeded'")
        step("the command is succeeded")
        http.delete(f"/devices/{device['id']}", headers=person)
        if http.retried:
            step(f"{http.retried} answer(s) 503 tried again after their Retry-After")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exec", required=True, help="command prefix running a command in api-1")
    args = parser.parse_args()
    base_url = os.environ.get("IOT_COMPOSE_URL", "http://127.0.0.1:38080")
    try:
        run(base_url, shlex.split(args.exec))
    except (SmokeError, httpx.HTTPError) as exc:
        print(f"compose smoke test FAILED: {exc}", file=sys.stderr)
        return 1
    print("compose smoke test passed: the reading was stored, the command succeeded")
    return 0


if __name__ == "__main__":
    sys.exit(main())

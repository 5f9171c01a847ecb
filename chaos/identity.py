"""A throw-away user and its devices for one experiment, removed afterwards."""

from __future__ import annotations

import uuid

import httpx
import psycopg

from chaos.fleet import Fleet, SimDevice, Timeline
from chaos.ledger import Ledger
from iot import security
from iot.settings import Settings


class Identity:
    """A throw-away user and devices for one run, removed afterwards."""

    def __init__(self, s: Settings, n: int) -> None:
        self.s = s
        self.username = f"chaos-{uuid.uuid4().hex[:10]}"
        password = self._password = uuid.uuid4().hex
        self.user_id = uuid.uuid4()
        with psycopg.connect(s.database_direct_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO users (id, username, password_hash) VALUES (%s, %s, %s)",
                (self.user_id, self.username, security.hash_password(password)),
            )
        with httpx.Client(base_url=s.base_url, timeout=30) as http:
            r = http.post("/auth/token", json={"username": self.username, "password": password})
            r.raise_for_status()
            self.token = r.json()["access_token"]
            self.devices = []
            for i in range(n):
                r = http.post("/devices", json={"name": f"chaos-{i}"}, headers=self.headers)
                r.raise_for_status()
                self.devices.append(SimDevice(r.json()["id"], r.json()["token"]))

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def login(self) -> str:
        """A fresh access token (tokens expire after an hour; a game day lasts longer)."""
        with httpx.Client(base_url=self.s.base_url, timeout=30) as http:
            r = http.post(
                "/auth/token", json={"username": self.username, "password": self._password}
            )
            r.raise_for_status()
        self.token = r.json()["access_token"]
        return self.token

    def remove(self) -> None:
        self.login()  # the run may have outlasted the token
        with httpx.Client(base_url=self.s.base_url, timeout=30) as http:
            for d in self.devices:
                http.delete(f"/devices/{d.id}", headers=self.headers)
        with psycopg.connect(self.s.database_direct_url, autocommit=True) as conn:
            conn.execute("DELETE FROM users WHERE username = %s", (self.username,))

    def fleet(self, command_rate: float) -> tuple[Ledger, Timeline, Fleet]:
        """A fleet of these devices and an operator at ``command_rate``, with its ledger and
        timeline (the fleet is not started)."""
        ledger = Ledger(devices=[d.id for d in self.devices])
        timeline = Timeline()
        fleet = Fleet(
            self.s.base_url,
            self.devices,
            self.token,
            ledger,
            timeline,
            command_rate=command_rate,
            relogin=self.login,
        )
        return ledger, timeline, fleet

"""Fixtures for the web app's browser tests: Debian's Chromium driven by Playwright through
nginx (the app and the API on one origin), people with a password, and simulated devices."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from iot import security
from iot.settings import Settings
from tests.integration.conftest import (  # noqa: F401  (fixtures shared with integration tests)
    pg,
    settings,
    stack,
)

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "reports" / "webui"
# Chromium on a machine without internet: no background connections, no GPU, no sandbox as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


class Login:
    """A person's user name and password, and an API client logged in as them."""

    def __init__(self, base_url: str, username: str, password: str, admin: bool) -> None:
        self.username, self.password, self.admin = username, password, admin
        self.api = httpx.Client(base_url=base_url, timeout=30)
        r = self.api.post("/auth/token", json={"username": username, "password": password})
        if r.status_code != 200:
            self.api.close()
            pytest.fail(f"POST /auth/token answered {r.status_code}: {r.text}")
        self.api.headers["Authorization"] = f"Bearer {r.json()['access_token']}"


@pytest.fixture
def make_login(pg: psycopg.Connection, settings: Settings) -> Iterator[Callable[[bool], Login]]:  # noqa: F811
    made: list[Login] = []

    def make(admin: bool) -> Login:
        name = f"web-{uuid.uuid4().hex[:10]}"
        password = uuid.uuid4().hex
        pg.execute(
            "INSERT INTO users (id, username, password_hash, is_admin) VALUES (%s, %s, %s, %s)",
            (uuid.uuid4(), name, security.hash_password(password), admin),
        )
        made.append(Login(settings.base_url, name, password, admin))
        return made[-1]

    yield make
    for login in made:
        login.api.close()
    # A rollout left running to devices that never poll again would stall for ever and page
    # (RolloutStalled) in later tests: cancel the test's unfinished ones (a driver then
    # cancels their commands).
    pg.execute(
        "UPDATE rollouts SET state = 'cancelled', finished_at = now(), driver = NULL"
        " WHERE state IN ('scheduled', 'running', 'paused')"
        " AND owner_id IN (SELECT id FROM users WHERE username = ANY(%s))",
        ([login.username for login in made],),
    )


@pytest.fixture
def person(make_login: Callable[[bool], Login]) -> Login:
    return make_login(False)


class SimulatedDevice:
    """A device with the token the web app showed: it posts readings and runs commands."""

    def __init__(self, base_url: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=base_url, timeout=40, headers={"Authorization": f"Bearer {token}"}
        )

    def post(self, readings: list[dict[str, Any]]) -> httpx.Response:
        return self.http.post("/sensors", json={"readings": readings})

    def take_commands(self, wait: float = 20, lease: float = 30) -> list[dict[str, Any]]:
        r = self.http.get("/commands", params={"wait": wait, "lease": lease})
        assert r.status_code in (200, 204), r.text
        return r.json()["commands"] if r.status_code == 200 else []

    def ack(self, command_id: str, status: str, result: dict[str, Any]) -> httpx.Response:
        return self.http.post(
            f"/commands/{command_id}/ack", json={"status": status, "result": result}
        )


@pytest.fixture
def device_for(settings: Settings) -> Iterator[Callable[[str], SimulatedDevice]]:  # noqa: F811
    made: list[SimulatedDevice] = []

    def make(token: str) -> SimulatedDevice:
        made.append(SimulatedDevice(settings.base_url, token))
        return made[-1]

    yield make
    for d in made:
        d.http.close()


@pytest.fixture(scope="module")  # Playwright leaves its event loop running until it stops
def browser(stack: Any) -> Iterator[Browser]:  # noqa: F811
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make up` (scripts/setup.sh) installs it")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, settings: Settings, request: pytest.FixtureRequest) -> Iterator[Page]:  # noqa: F811
    """A fresh browser tab (no stored state). Uncaught page errors fail the test; a screenshot
    of the last state is saved under reports/webui/ whatever happens."""
    viewport = getattr(request, "param", DESKTOP)
    context = browser.new_context(base_url=settings.base_url, viewport=viewport)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=settings.base_url)
    context.set_default_timeout(15_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    SHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def log_in(page: Page, who: Login) -> None:
    """Log in with the keyboard only, as a person would without a mouse."""
    page.goto("/app/")
    expect(page.get_by_label("User name")).to_be_focused()
    page.keyboard.type(who.username)
    page.keyboard.press("Tab")
    page.keyboard.type(who.password)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Devices", level=1)).to_be_visible()


def register(page: Page, name: str) -> str:
    """Register a device from the device list; returns the token the app showed once."""
    page.get_by_label("New device name").fill(name)
    page.get_by_role("button", name="Register").click()
    expect(page.get_by_text("This token is shown only once.")).to_be_visible()
    token = page.get_by_label("Device token").input_value()
    assert token.startswith("dvc_")
    return token

"""The web app in Debian's Chromium, through nginx, against the running stack: what a person
does with it and sees, with simulated devices on the other side."""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from playwright.sync_api import Page, expect

from iot.settings import Settings
from iot.stack.control import Supervisor, wait_healthy
from tests.browser.conftest import PHONE, SHOTS, Login, SimulatedDevice, log_in, register

pytestmark = pytest.mark.integration


def reading(sensor: str, value: float, age_s: float = 0) -> dict[str, object]:
    ts = datetime.now(UTC) - timedelta(seconds=age_s)
    return {"sensor": sensor, "value": value, "ts": ts.isoformat()}


def last_hour(sensor: str, base: float) -> list[dict[str, object]]:
    """A reading every 90 s over the last hour, in a gentle wave."""
    return [reading(sensor, round(base + 3 * math.sin(i / 5), 2), age_s=90 * i) for i in range(40)]


def open_device(page: Page, name: str) -> None:
    page.get_by_role("link", name=name, exact=True).click()
    expect(page.get_by_role("heading", name=name, level=1)).to_be_visible()


def test_log_in_register_and_see_readings_arrive_without_reloading(
    page: Page, person: Login, device_for: Callable[[str], SimulatedDevice]
):
    log_in(page, person)
    name = f"greenhouse-{uuid.uuid4().hex[:6]}"
    token = register(page, name)

    page.get_by_role("button", name="Copy token").click()
    expect(page.get_by_text("Copied to the clipboard.")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == token
    row = page.get_by_role("row").filter(has_text=name)
    expect(row).to_contain_text("offline")
    expect(row).to_contain_text("never")

    page.get_by_role("button", name="I have saved it — hide the token").click()
    assert token not in page.content()

    open_device(page, name)
    expect(page.get_by_text("No readings yet.")).to_be_visible()
    page.evaluate("window.loadedOnce = true")  # gone if the page reloads

    device = device_for(token)
    assert device.post([reading("temperature", 21.5), reading("humidity", 40)]).status_code == 201
    temperature = page.locator("#latest tr[data-sensor='temperature'] td.value")
    expect(temperature).to_have_text("21.5")
    assert device.post([reading("temperature", 22.75)]).status_code == 201
    expect(temperature).to_have_text("22.75")
    assert page.evaluate("window.loadedOnce") is True

    # A chart per sensor, for each range of the picker.
    chart = page.get_by_role("figure").filter(has_text="temperature").get_by_role("img")
    expect(chart).to_have_attribute("aria-label", re.compile(r"temperature from .*points"))
    expect(page.get_by_role("figure").filter(has_text="humidity")).to_be_visible()
    page.get_by_label("24 h").check()
    expect(page.get_by_text("one point per 600 s")).to_be_visible()
    page.get_by_label("7 d").check()
    expect(page.get_by_text("one point per 7200 s")).to_be_visible()
    page.get_by_label("Custom").check()
    page.get_by_label("From", exact=True).fill("2026-01-01T00:00")
    page.get_by_label("To", exact=True).fill("2026-01-01T01:00")
    page.get_by_role("button", name="Show").click()
    expect(chart.first).to_have_attribute("aria-label", re.compile("no readings from"))

    page.get_by_role("link", name="← All devices").click()
    expect(page.get_by_role("row").filter(has_text=name)).to_contain_text("online")
    listed = [d for d in person.api.get("/devices").json()["devices"] if d["name"] == name]
    assert listed[0]["online"] is True and listed[0]["last_seen"] is not None


def test_a_command_from_the_form_goes_live_to_succeeded_with_its_timeline(
    page: Page, person: Login, device_for: Callable[[str], SimulatedDevice]
):
    log_in(page, person)
    name = f"valve-{uuid.uuid4().hex[:6]}"
    device = device_for(register(page, name))
    assert (
        device.post(last_hour("temperature", 21) + last_hour("pressure", 1013)).status_code == 201
    )
    open_device(page, name)
    expect(page.locator("svg.chart .line")).to_have_count(2)

    # Arguments are checked before anything is sent.
    page.get_by_label("Command name").fill("open_valve")
    page.get_by_label("Arguments (JSON)").fill('{"seconds": 30')
    expect(page.get_by_label("Arguments (JSON)")).to_have_attribute("aria-invalid", "true")
    page.get_by_role("button", name="Send command").click()
    expect(page.get_by_text(re.compile("^Not sent: Not valid JSON"))).to_be_visible()
    device_id = page.url.rsplit("/", 1)[1]
    assert person.api.get(f"/devices/{device_id}/commands").json()["commands"] == []

    page.get_by_label("Arguments (JSON)").fill('{"seconds": 30}')
    page.get_by_label("Time to live (seconds)").fill("600")
    page.get_by_role("button", name="Send command").click()
    expect(page.get_by_text("Command “open_valve” accepted")).to_be_visible()
    status = page.locator("#cmd-status")
    expect(status).to_have_text("queued")

    (command,) = device.take_commands()
    assert command["name"] == "open_valve" and command["args"] == {"seconds": 30}
    expect(status).to_have_text("delivered")
    assert device.ack(command["id"], "succeeded", {"opened": True}).status_code == 200
    expect(status).to_have_text("succeeded")
    timeline = page.locator("#cmd-timeline li")
    expect(timeline).to_have_count(3)
    expect(timeline.nth(0)).to_contain_text("queued")
    expect(timeline.nth(1)).to_contain_text("delivered")
    expect(timeline.nth(2)).to_contain_text("succeeded")
    expect(page.get_by_text('Result: {"opened":true}')).to_be_visible()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "command-succeeded.png"), full_page=True)
    history = page.locator("#history tbody tr")
    expect(history.first).to_contain_text("succeeded")

    # A second command, cancelled before the device takes it.
    page.get_by_label("Command name").fill("close_valve")
    page.get_by_role("button", name="Send command").click()
    expect(page.get_by_text("Command “close_valve” accepted")).to_be_visible()
    page.get_by_role("button", name="Cancel this command").click()
    expect(status).to_have_text("cancelled")
    expect(history).to_have_count(2)
    expect(history.first).to_contain_text("cancelled")
    assert device.take_commands(wait=0) == []


@pytest.fixture
def broker_stopped(settings: Settings) -> Iterator[Callable[[bool], None]]:
    """Stop (and start again) RabbitMQ itself; started again whatever happens, then the whole
    stack must be healthy again."""
    stack = Supervisor(settings)

    def stopped(down: bool) -> None:
        if down:
            stack.stop_program("rabbitmq")
        else:
            stack.start_program("rabbitmq")

    try:
        yield stopped
    finally:
        stack.start_program("rabbitmq")
        results = wait_healthy(settings, None, timeout=90)
        bad = {n: h.detail for n, h in results.items() if not h.ok}
        assert not bad, f"stack did not recover: {bad}"


def test_while_rabbitmq_is_stopped_the_app_says_so_plainly_then_recovers(
    page: Page, person: Login, broker_stopped: Callable[[bool], None]
):
    log_in(page, person)
    name = f"pump-{uuid.uuid4().hex[:6]}"
    register(page, name)
    open_device(page, name)
    page.get_by_label("Command name").fill("start_pump")

    broker_stopped(True)
    page.get_by_role("button", name="Send command").click()
    error = page.get_by_role("alert").filter(has_text="not accepted")
    expect(error).to_have_text(
        re.compile(r"^Command not accepted: the broker is unavailable — try again in \d+ s$")
    )
    expect(page.get_by_role("heading", name="Send a command")).to_be_visible()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "broker-unavailable.png"), full_page=True)

    broker_stopped(False)
    accepted = page.get_by_text("Command “start_pump” accepted")
    deadline = time.monotonic() + 90  # RabbitMQ boots, the API reconnects
    while not accepted.is_visible() and time.monotonic() < deadline:
        page.get_by_role("button", name="Send command").click()
        page.wait_for_timeout(1000)
    expect(accepted).to_be_visible()
    expect(page.locator("#history tbody tr")).to_have_count(1)  # one command, however many tries


@pytest.mark.parametrize("page", [PHONE], indirect=True, ids=["phone"])
def test_rotate_and_delete_on_a_phone_sized_screen(
    page: Page, person: Login, device_for: Callable[[str], SimulatedDevice]
):
    log_in(page, person)
    name = f"door-{uuid.uuid4().hex[:6]}"
    old = register(page, name)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], "the page scrolls sideways on a phone"

    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name=f"Rotate the token of {name}").click()
    expect(page.get_by_role("heading", name=f"Rotated: token of “{name}”")).to_be_visible()
    new = page.get_by_label("Device token").input_value()
    assert new != old
    refused = device_for(old).post([reading("t", 1)])
    assert refused.status_code == 401, refused.text
    accepted = device_for(new).post([reading("t", 1)])
    assert accepted.status_code == 201, accepted.text

    (listed,) = [d for d in person.api.get("/devices").json()["devices"] if d["name"] == name]
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name=f"Delete {name}").click()
    expect(page.get_by_text(f"Deleted “{name}”.")).to_be_visible()
    expect(page.get_by_role("row").filter(has_text=name)).to_have_count(0)
    gone = device_for(new).post([reading("t", 1)])
    assert gone.status_code == 401, gone.text
    page.evaluate(f"location.hash = '#/devices/{listed['id']}'")
    expect(page.get_by_role("heading", name="Device not found")).to_be_visible()


def test_an_admin_pages_through_the_history_and_requeues_a_dead_command(
    page: Page, make_login: Callable[[bool], Login], device_for: Callable[[str], SimulatedDevice]
):
    admin = make_login(True)
    log_in(page, admin)
    name = f"lamp-{uuid.uuid4().hex[:6]}"
    registered = admin.api.post("/devices", json={"name": name}).json()
    device, device_id = device_for(registered["token"]), registered["id"]
    sent = []
    for i in range(21):
        body = {"device_id": device_id, "name": f"blink-{i}", "args": {}, "ttl": 600}
        r = admin.api.post("/commands", json=body)
        assert r.status_code == 201, r.text
        sent.append(r.json()["id"])
    page.evaluate(f"location.hash = '#/devices/{device_id}'")  # an admin lists every device
    expect(page.get_by_role("heading", name=name, level=1)).to_be_visible()

    rows = page.locator("#history tbody tr")
    expect(rows).to_have_count(20)
    expect(rows.first).to_contain_text("blink-20")
    page.get_by_role("button", name="Older").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("blink-0")
    page.get_by_role("button", name="Newer").click()
    expect(rows).to_have_count(20)

    # The oldest command is taken five times and never acked: it dies. (The others cancelled.)
    for cid in sent[1:]:
        assert admin.api.post(f"/commands/{cid}/cancel").status_code == 200
    deliveries = 0
    deadline = time.monotonic() + 30
    while admin.api.get(f"/commands/{sent[0]}").json()["status"] != "dead":
        assert time.monotonic() < deadline, "the command did not die after 5 deliveries"
        deliveries += len(device.take_commands(wait=0, lease=1))
        time.sleep(1.1)
    assert deliveries == 5

    page.get_by_label("Show", exact=True).select_option("dead")
    expect(rows).to_have_count(1)
    page.get_by_role("button", name=re.compile("^Show command blink-0")).click()
    status, timeline = page.locator("#cmd-status"), page.locator("#cmd-timeline li")
    expect(status).to_have_text("dead")
    expect(timeline).to_have_count(7)  # queued, 5 × delivered, dead

    # Requeued from the page, it is delivered again and the device's ack ends it.
    page.get_by_role("button", name="Requeue", exact=True).click()
    expect(page.get_by_role("alert").filter(has_text="Requeue answered: queued.")).to_be_visible()
    expect(status).to_have_text("queued")
    expect(page.get_by_role("button", name="Requeue", exact=True)).to_have_count(0)
    (again,) = device.take_commands()
    assert (again["id"], again["attempt"]) == (sent[0], 1)
    expect(status).to_have_text("delivered")
    assert device.ack(sent[0], "succeeded", {"lit": True}).status_code == 200
    expect(status).to_have_text("succeeded")
    expect(timeline).to_have_count(10)
    expect(timeline.nth(7)).to_contain_text(f'"by":"{admin.username}"')

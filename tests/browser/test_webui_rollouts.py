"""Rollouts in the web app (Chromium, through nginx, the running stack): device labels edited in
the list, a rollout created from ticked devices or a label selector, watched live (phases, the
decision log, failed devices), approved, paused, resumed and cancelled; a 409 said in words.
The devices on the other side run the firmware's protocol core (tests/integration's Fleet)."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, Request, expect

from iot.settings import Settings
from tests.browser.conftest import SHOTS, Login, log_in
from tests.integration.conftest import Device
from tests.integration.test_rollouts import Fleet

pytestmark = pytest.mark.integration

ACTIONS = ["Start", "Pause", "Resume", "Approve the next phase", "Cancel the rollout"]
STATUSES = [
    "succeeded",
    "failed",
    "rejected",
    "expired",
    "dead",
    "refused",
    "cancelled",
    "delivered",
    "queued",
]


def registered(who: Login, name: str, labels: dict[str, str] | None = None) -> Device:
    r = who.api.post("/devices", json={"name": name, "labels": labels or {}})
    assert r.status_code == 201, r.text
    body = r.json()
    return Device(who.api, uuid.UUID(body["id"]), body["token"])


def in_words(phase: dict[str, Any]) -> str:
    """A phase's counts as the page says them (rules.js countsText)."""
    counts = phase["counts"]
    parts = [f"{counts[s]} {s}" for s in STATUSES if counts.get(s)]
    unsent = phase["size"] - sum(counts.values())
    if unsent > 0:
        parts.append(f"{unsent} not sent")
    return " · ".join(parts) or "nothing yet"


def enabled(page: Page) -> list[str]:
    """The names of the rollout's action buttons that can be pressed now."""
    group = page.get_by_role("group", name="Steer the rollout")
    return [a for a in ACTIONS if group.get_by_role("button", name=a, exact=True).is_enabled()]


def expect_enabled(page: Page, names: list[str]) -> None:
    group = page.get_by_role("group", name="Steer the rollout")
    for a in ACTIONS:
        button = group.get_by_role("button", name=a, exact=True)
        if a in names:
            expect(button).to_be_enabled()
        else:
            expect(button).to_be_disabled()


def decision_rows(page: Page) -> Locator:
    return page.locator("#ro-decisions tbody tr")


def cells(row: Locator) -> list[str]:
    return [c.strip() for c in row.locator("td").all_inner_texts()]


def test_a_rollout_to_ticked_devices_waits_for_approval_then_completes(
    page: Page, person: Login, settings: Settings
) -> None:
    tag = uuid.uuid4().hex[:6]
    devices = [registered(person, f"unit-{i}-{tag}") for i in range(5)]
    chosen, left_out = devices[:4], devices[4]
    failing = chosen[2]
    log_in(page, person)

    for i in range(4):
        page.get_by_label(f"Select unit-{i}-{tag}", exact=True).check()
    expect(page.locator("#selected-count")).to_have_text("4 devices selected")
    page.get_by_role("link", name="Roll out a command to the selected devices").click()
    expect(page.get_by_role("heading", name="Rollouts", level=1)).to_be_visible()
    expect(page.get_by_label("The 4 devices selected in the device list")).to_be_checked()

    page.get_by_label("Command name").fill("configure")
    page.get_by_label("Arguments (JSON)").fill('{"interval": 30}')
    page.get_by_label("Time to live (seconds)").fill("600")
    page.get_by_label("Phases (cumulative)").fill("25, 100")
    page.get_by_label("Pause after each phase until I approve the next").check()
    page.get_by_label("when more than this % of finished commands failed").fill("50")
    with Fleet(settings.base_url, devices, {failing.id}) as fleet:
        page.get_by_role("button", name="Create rollout").click()
        expect(page.get_by_role("heading", name="Rollout of “configure”")).to_be_visible()
        rollout_id = page.url.rsplit("/", 1)[1]
        body = person.api.get(f"/rollouts/{rollout_id}").json()
        assert sorted(body["target"]["device_ids"]) == sorted(str(d.id) for d in chosen)
        assert [p["size"] for p in body["phases"]] == [1, 3]
        assert body["approval"] is True and body["max_failure_share"] == 0.5

        # Phase 1 (one device) ends; the rollout pauses there and says what it waits for.
        gate = page.locator("#ro-awaiting")
        expect(gate).to_have_text(
            "Phase 1 finished: waiting for your approval to start phase 2.", timeout=30_000
        )
        expect(page.locator("#ro-state")).to_have_text("paused")
        expect_enabled(page, ["Approve the next phase", "Cancel the rollout"])
        phases = page.locator("#ro-phases tbody tr")
        expect(phases.nth(0).locator("svg.bar")).to_have_attribute(
            "aria-label", re.compile(r"^1 of 1 finished: 1 (succeeded|failed)$")
        )
        expect(phases.nth(1).locator("td.counts")).to_have_text("3 not sent")
        assert len(fleet.devices_reached()) == 1
        rows = decision_rows(page)
        expect(rows).to_have_count(2)
        assert cells(rows.nth(0))[1:] == [person.username, "created", "4 targets"]
        waiting = cells(rows.nth(1))
        assert waiting[0] and waiting[1:] == [
            "automatic",
            "awaiting approval",
            "phase 1 finished; approve phase 2 to go on",
        ]
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "rollout-awaiting-approval.png"), full_page=True)

        page.get_by_role("button", name="Approve the next phase").click()
        expect(page.locator("#ro-action-status")).to_have_text(
            re.compile(r"^Approved: the rollout is (running|completed)\.$")
        )
        expect(page.locator("#ro-state")).to_have_text("completed", timeout=30_000)
        expect(gate).to_be_hidden()
        expect_enabled(page, [])
        expect(page.get_by_text("Final: completed. Nothing changes any more.")).to_be_visible()

        final = person.api.get(f"/rollouts/{rollout_id}").json()
        for i, phase in enumerate(final["phases"]):
            expect(phases.nth(i).locator("td.counts")).to_have_text(in_words(phase))
        everything: dict[str, int] = {}
        for phase in final["phases"]:
            for s, n in phase["counts"].items():
                everything[s] = everything.get(s, 0) + n
        assert everything == {"succeeded": 3, "failed": 1}
        expect(rows).to_have_count(4)
        assert cells(rows.nth(2))[1:] == [person.username, "approve", "phase 2 approved"]
        assert cells(rows.nth(3))[1:] == ["automatic", "completed", "every phase finished"]

        # The failed device, by name, with what it answered.
        expect(page.get_by_role("heading", name="Failed devices (1)")).to_be_visible()
        (failed,) = page.locator("#ro-failed tbody tr").all()
        assert cells(failed) == [f"unit-2-{tag}", "failed", "the device answered failed"]
        page.screenshot(path=str(SHOTS / "rollout-completed.png"), full_page=True)

        assert fleet.devices_reached() == {str(d.id) for d in chosen}
        assert str(left_out.id) not in fleet.devices_reached()
        assert set(fleet.deliveries.values()) == {1}, fleet.deliveries

    # The list of rollouts shows it too.
    page.get_by_role("link", name="← All rollouts").click()
    listed = page.locator("#rollouts tbody tr").filter(has_text="configure")
    expect(listed).to_contain_text("4 chosen devices")
    expect(listed).to_contain_text("completed")
    expect(listed).to_contain_text("4 of 4")


def test_labels_edited_in_the_list_select_a_rollout_paused_resumed_and_cancelled(
    page: Page, person: Login
) -> None:
    tag = uuid.uuid4().hex[:6]
    north_a = registered(person, f"gate-a-{tag}")
    north_b = registered(person, f"gate-b-{tag}")
    south = registered(person, f"gate-c-{tag}", {"site": "south"})
    page.clock.install()  # lets the test hold the page's polling still (the 409 below)
    log_in(page, person)

    # Labels: shown in the list, edited as key=value pairs; a wrong line is refused whole.
    row_c = page.get_by_role("row").filter(has_text=f"gate-c-{tag}")
    expect(row_c).to_contain_text("site=south")
    page.get_by_role("button", name=f"Edit the labels of gate-a-{tag}").click()
    editor = page.get_by_label("Labels", exact=True)
    editor.fill("site=north\nmodel esp32")
    page.get_by_role("button", name="Save labels").click()
    expect(page.get_by_text("Labels not saved: “model esp32” is not key=value.")).to_be_visible()
    assert person.api.get(f"/devices/{north_a.id}").json()["labels"] == {}
    editor.fill("site=north\nmodel=esp32-s3")
    page.get_by_role("button", name="Save labels").click()
    expect(
        page.get_by_text(f"Labels of “gate-a-{tag}” saved: model=esp32-s3, site=north.")
    ).to_be_visible()
    assert person.api.get(f"/devices/{north_a.id}").json()["labels"] == {
        "site": "north",
        "model": "esp32-s3",
    }
    chips = page.get_by_role("row").filter(has_text=f"gate-a-{tag}").locator(".chip")
    expect(chips).to_have_text(["model=esp32-s3", "site=north"])
    page.get_by_role("button", name=f"Edit the labels of gate-b-{tag}").click()
    editor.fill("site=north")
    page.get_by_role("button", name="Save labels").click()
    expect(page.get_by_text(f"Labels of “gate-b-{tag}” saved: site=north.")).to_be_visible()
    page.get_by_label(f"Select gate-b-{tag}", exact=True).check()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "devices-labels.png"), full_page=True)
    page.get_by_role("button", name="Clear the selection").click()
    expect(page.locator("#selected-count")).to_have_text(
        "Tick devices to roll a command out to them."
    )

    # A rollout to site=north at one device a minute: the first goes at once, the second waits.
    page.get_by_role("navigation", name="Sections").get_by_role("link", name="Rollouts").click()
    expect(page.get_by_label("Devices with labels")).to_be_checked()
    page.get_by_label("Label selector").fill("site=north")
    page.get_by_label("Command name").fill("reboot")
    page.get_by_label("Phases (cumulative)").fill("100")
    page.get_by_label("Rate (devices per minute)").fill("1")
    page.get_by_role("button", name="Create rollout").click()
    expect(page.get_by_role("heading", name="Rollout of “reboot”")).to_be_visible()
    rollout_id = page.url.rsplit("/", 1)[1]
    state = page.locator("#ro-state")
    expect(state).to_have_text("running")
    expect(page.get_by_text("sent to 1 of 2 devices")).to_be_visible()
    expect(page.get_by_text("to devices labelled site=north.")).to_be_visible()
    expect_enabled(page, ["Pause", "Cancel the rollout"])
    status = page.locator("#ro-action-status")

    page.get_by_role("button", name="Pause", exact=True).click()
    expect(status).to_have_text("Paused: the rollout is paused.")
    expect(state).to_have_text("paused")
    expect_enabled(page, ["Resume", "Cancel the rollout"])
    page.get_by_role("button", name="Resume", exact=True).click()
    expect(status).to_have_text("Resumed: the rollout is running.")
    expect(state).to_have_text("running")
    expect_enabled(page, ["Pause", "Cancel the rollout"])

    # Someone else pauses it while this page still shows it running: Pause here gets the
    # API's 409, said in words; the page then shows the rollout as it is.
    pending: set[Request] = set()  # the page's calls of the rollout not answered yet
    page.on("request", lambda r: pending.add(r) if f"/rollouts/{rollout_id}" in r.url else None)
    page.on("requestfinished", lambda r: pending.discard(r))
    page.on("requestfailed", lambda r: pending.discard(r))
    now = page.evaluate("Date.now()") / 1000
    page.clock.pause_at(datetime.fromtimestamp(now + 1, UTC))  # no more refreshes start
    deadline = time.monotonic() + 15
    while pending and time.monotonic() < deadline:  # the one under way (if any) ends
        page.wait_for_timeout(50)
    assert not pending, "a refresh of the rollout did not end"
    assert enabled(page) == ["Pause", "Cancel the rollout"]
    assert person.api.post(f"/rollouts/{rollout_id}/pause").status_code == 200
    page.wait_for_timeout(300)
    assert enabled(page) == ["Pause", "Cancel the rollout"], "the page refreshed while held"
    page.get_by_role("button", name="Pause", exact=True).click()
    expect(status).to_have_text("Pause not accepted: a paused rollout cannot be paused.")
    expect(status).to_have_class("error")
    expect(state).to_have_text("paused")
    expect_enabled(page, ["Resume", "Cancel the rollout"])
    page.clock.resume()

    page.get_by_role("button", name="Resume", exact=True).click()
    expect(state).to_have_text("running")
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Cancel the rollout").click()
    expect(status).to_have_text("Cancelled: the rollout is cancelled.")
    expect(state).to_have_text("cancelled")
    expect_enabled(page, [])
    # Its command not yet run is cancelled too (by a driver, moments later); nothing more is sent.
    counts = page.locator("#ro-phases tbody tr td.counts")
    expect(counts).to_have_text("1 cancelled · 1 not sent", timeout=30_000)
    rows = decision_rows(page)
    expect(rows).to_have_count(6)
    who_did = [cells(rows.nth(i))[1:3] for i in range(6)]
    assert who_did == [
        [person.username, "created"],
        [person.username, "pause"],
        [person.username, "resume"],
        [person.username, "pause"],
        [person.username, "resume"],
        [person.username, "cancel"],
    ]
    final = person.api.get(f"/rollouts/{rollout_id}").json()
    assert final["state"] == "cancelled" and final["sent"] == 1 and final["total"] == 2
    sent = {
        d.id: [c["status"] for c in person.api.get(f"/devices/{d.id}/commands").json()["commands"]]
        for d in (north_a, north_b, south)
    }
    assert sorted(sent[north_a.id] + sent[north_b.id]) == ["cancelled"], sent
    assert sent[south.id] == []

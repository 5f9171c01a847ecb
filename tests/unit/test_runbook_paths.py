"""Runbooks must work on any machine the product is installed on: no page may send the reader
into one particular checkout."""

from __future__ import annotations

import re
from pathlib import Path

RUNBOOKS = Path(__file__).resolve().parents[2] / "runbooks"
# an absolute path into a home or work directory, e.g. `cd /home/alice/iot` or `/work/iot/var`
CHECKOUT_PATH = re.compile(r"(?<![\w.$}])/(?:work|home|root|srv|opt)/[\w.-]+")


def test_no_runbook_names_a_particular_checkout():
    pages = sorted(RUNBOOKS.glob("*.md"))
    assert len(pages) > 20
    offending = {
        p.name: CHECKOUT_PATH.findall(p.read_text())
        for p in pages
        if CHECKOUT_PATH.search(p.read_text())
    }
    assert offending == {}


def test_the_pattern_catches_a_checkout_and_spares_product_paths():
    assert CHECKOUT_PATH.search("Run everything from the project directory (`cd /work/main`)")
    assert CHECKOUT_PATH.search("cd /home/alice/iot && .venv/bin/iotctl status")
    assert not CHECKOUT_PATH.search('cd "$IOT_HOME" && ls var/log /usr/lib/rabbitmq/bin')
    assert not CHECKOUT_PATH.search("GET /commands/{id}/ack, see /app/ and /etc/hosts")

"""Fuzzing through nginx with schemathesis, from the OpenAPI document the API serves.

As a person and as a device, schemathesis sends examples it derives from the document: valid
ones, invalid ones (wrong types, out of range, missing or unknown fields) and sequences that
follow the document's links (create a device, then read, rotate, delete it). Every answer must
be a documented status with a body and headers matching the document, never a 5xx other than
the documented 503; invalid input must be refused; a route must not answer without credentials.

The number of examples is bounded (``EXAMPLES`` per operation) so both runs take one to two
minutes together.
Each runs with credentials of its own: a person made for it (removed with all they made
afterwards), and a device whose owner the fuzzer never acts as (so it is not deleted mid-run).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from iot.settings import Settings
from tests.integration.conftest import Person

pytestmark = pytest.mark.integration

EXAMPLES = 20
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "ignored_auth",
    "use_after_free",
    "ensure_resource_availability",
]


def fuzz(settings: Settings, token: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(Path(__file__).with_name("schemathesis.toml")),
        "run",
        f"{settings.base_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        str(EXAMPLES),
        "--workers",
        "1",  # one request at a time: well below nginx's per-credential rate limit
        "--checks",
        ",".join(CHECKS),
        "--request-timeout",
        "40",  # GET /commands may long-poll up to 30 s
        "--generation-database",
        "none",
        "--no-color",
    ]
    return subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=240, check=False
    )


@pytest.mark.parametrize("role", ["person", "device"])
def test_fuzzing_finds_only_documented_answers(
    role: str, tenant: Callable[..., Person], settings: Settings, tmp_path: Path
) -> None:
    token = tenant().token if role == "person" else tenant().new_device("fuzzed").token
    run = fuzz(settings, token, tmp_path)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-2000:]
    # It did test: every operation the document lists, with many generated cases.
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", run.stdout)
    generated = re.search(r"(\d+) generated", run.stdout)
    assert selected and generated, run.stdout[-3000:]
    assert selected[1] == selected[2] == selected[3], selected[0]
    assert int(generated[1]) >= EXAMPLES * int(selected[3]), generated[0]

"""The web app's pure rules (argument checks, error sentences, chart steps) in Node's own test
runner: `node --test webui/test/` (no npm packages)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

WEBUI = Path(__file__).resolve().parents[2] / "webui"


def test_the_web_apps_rules_pass_their_node_tests():
    node = shutil.which("node")
    assert node, "node is missing: the web app's rules are tested with Node.js"
    run = subprocess.run(
        [node, "--test", "test/"], cwd=WEBUI, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "# fail 0" in run.stdout

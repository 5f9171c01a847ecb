"""The protocol core's cases (core_cases.py) under CPython and under the real MicroPython
interpreter (its WebAssembly port, run by Node; `scripts/setup.sh` installs it with npm)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.firmware import core_cases

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "firmware" / "lib" / "iotcore"
MICROPYTHON = (
    ROOT / "firmware/node_modules/@micropython/micropython-webassembly-pyscript/micropython.mjs"
)
CASES = core_cases.names()


@pytest.mark.parametrize("name", CASES)
def test_under_cpython(name: str) -> None:
    getattr(core_cases, name)()


@pytest.fixture(scope="module")
def micropython_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    node = shutil.which("node")
    assert node, "node is not installed"
    assert MICROPYTHON.exists(), "MicroPython is not installed: run scripts/setup.sh"
    files = {f"/lib/iotcore/{p.name}": str(p) for p in LIB.glob("*.py") if p.name != "host.py"}
    files["/lib/core_cases.py"] = str(Path(core_cases.__file__))
    code = (
        "import sys\nprint('IMPL', sys.implementation.name)\n"
        "import core_cases\ncore_cases.run_all()\n"
    )
    spec = tmp_path_factory.mktemp("mp") / "spec.json"
    spec.write_text(json.dumps({"module": str(MICROPYTHON), "files": files, "code": code}))
    done = subprocess.run(
        [node, str(ROOT / "tests/firmware/run_micropython.mjs"), str(spec)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "IMPL micropython", lines[:1]
    results = {}
    for line in lines[1:]:
        verdict, _, rest = line.partition(" ")
        name, _, why = rest.partition(": ")
        results[name] = "" if verdict == "PASS" else why or line
    return results


@pytest.mark.parametrize("name", CASES)
def test_under_micropython(name: str, micropython_results: dict[str, str]) -> None:
    assert name in micropython_results, "the case did not run"
    assert micropython_results[name] == "", micropython_results[name]

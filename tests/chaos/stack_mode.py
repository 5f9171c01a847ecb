"""Switching the shared stack to a mode for a test module and back (`iotctl up --cluster`,
`--ha`): the modules that test a mode leave the stack in the mode they found it in."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from iot.settings import Settings, get_settings

IOTCTL = Path(sys.executable).parent / "iotctl"


def iotctl_up(*options: str) -> str:
    result = subprocess.run(
        [str(IOTCTL), "up", *options], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"iotctl up {' '.join(options)}:\n{result.stdout}{result.stderr}"
    get_settings.cache_clear()
    return result.stdout


def switched(
    option: str,
    already_on: bool,
    restore: dict[str, bool],
    on: tuple[str, ...] = (),
    off: tuple[str, ...] = (),
) -> Iterator[Settings]:
    """A module fixture's body: the stack in ``--OPTION`` (with the options ``on``) for the
    module; afterwards the mode it was in (with ``off``; the module's last test switches back
    and checks it, popping ``restore["single"]``; this is the fallback if it did not run)."""
    if not already_on:
        restore["single"] = True
        iotctl_up(f"--{option}", *on)
    try:
        yield Settings()
    finally:
        if restore.pop("single", False):
            iotctl_up(f"--no-{option}", *off)

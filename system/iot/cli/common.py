"""What every ``iotctl`` command module shares: fresh settings and a plain error exit."""

from __future__ import annotations

from typing import NoReturn

import typer

from iot.settings import Settings, get_settings


def settings() -> Settings:
    """Settings read anew (``iotctl up`` may just have written var/secrets.env)."""
    get_settings.cache_clear()
    return get_settings()


def fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)

"""``iotctl users``: the people who use the API. ``create`` and ``list``; ``set`` (admin or not,
device limit) and ``delete`` hold at once on every API replica (a trigger announces the change;
the replicas forget what they cached)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import psycopg
import typer

from iot import cache, db, security
from iot.cli.common import fail, settings
from iot.errors import CacheUnavailable, Conflict
from iot.sql import users as users_sql

T = TypeVar("T")

app = typer.Typer(help="Manage the people who use the API.", no_args_is_help=True)


def with_connection(use: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
    """Run ``use`` on one pooled connection of the owner role."""

    async def run() -> T:
        pool = db.open_pool(settings())
        await pool.open(wait=True, timeout=10)
        try:
            async with db.connection(pool) as conn:
                return await use(conn)
        finally:
            await pool.close()

    return asyncio.run(run())


@app.command("create")
def create_user(
    name: str = typer.Argument(..., help="User name (letters, digits, _ . @ -)."),
    admin: bool = typer.Option(False, "--admin", help="Admins see and manage every device."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from standard input (first line)."
    ),
    max_devices: int | None = typer.Option(
        None, "--max-devices", min=0, help="Devices they may register (default: the setting)."
    ),
) -> None:
    """Create a user. The password is read from stdin (--password-stdin) or prompted for."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        fail("the password needs at least 8 characters")
    try:
        user = with_connection(
            lambda conn: users_sql.create_user(
                conn, name, security.hash_password(password), admin, max_devices
            )
        )
    except Conflict as exc:
        fail(exc.detail)
    except Exception as exc:  # noqa: BLE001 - report any failure to the operator plainly
        fail(f"could not create the user: {exc}")
    typer.echo(f"created {'admin' if admin else 'user'} {user['username']} ({user['id']})")


@app.command("list")
def list_users() -> None:
    """List users."""
    for u in with_connection(users_sql.list_users):
        cap = "" if u["max_devices"] is None else f"  max {u['max_devices']} devices"
        typer.echo(f"{u['username']:<24} {'admin' if u['is_admin'] else 'user':<6} {u['id']}{cap}")


@app.command("set")
def set_user(
    name: Annotated[str, typer.Argument(help="User name.")],
    admin: Annotated[
        bool | None,
        typer.Option("--admin/--no-admin", help="Make the person an admin, or no longer one."),
    ] = None,
    max_devices: Annotated[
        int | None,
        typer.Option(
            "--max-devices",
            min=0,
            help="Devices this person may register (default: IOT_MAX_DEVICES_PER_USER).",
        ),
    ] = None,
    default_max_devices: Annotated[
        bool, typer.Option("--default-max-devices", help="Back to the default device limit.")
    ] = False,
) -> None:
    """Change a person: admin or not, and their device limit. Their access tokens keep working
    with the new rights at once on every replica."""
    changes: dict[str, Any] = {}
    if admin is not None:
        changes["is_admin"] = admin
    if max_devices is not None and default_max_devices:
        fail("give --max-devices or --default-max-devices, not both")
    if max_devices is not None or default_max_devices:
        changes["max_devices"] = max_devices
    if not changes:
        fail("nothing to change: give --admin/--no-admin or --max-devices")
    if not with_connection(lambda conn: users_sql.update_user(conn, name, changes)):
        fail(f"no user {name!r}")
    typer.echo(f"{name}: " + ", ".join(f"{k} = {v}" for k, v in changes.items()))


def delete_person(name: str) -> tuple[list[str], str | None] | None:
    """Delete a person with their devices (and the devices' readings and commands) and the
    devices' latest readings in Redis. Returns the ids of the devices deleted and a warning
    when Redis did not answer (their derived data stays until evicted); None: no such person."""
    devices = with_connection(lambda conn: users_sql.delete_user(conn, name))
    if devices is None:
        return None
    try:
        cache.forget_devices(cache.sync_client(settings().redis_direct_url, 5), devices)
    except CacheUnavailable as exc:
        return devices, f"{exc}; their latest readings stay in Redis until evicted"
    return devices, None


@app.command("delete")
def delete_user(
    name: Annotated[str, typer.Argument(help="User name.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a person with every device they own (and the devices' readings and commands).
    Their access tokens and their devices' tokens are refused at once on every replica."""
    if not yes:
        typer.confirm(f"Delete {name} and every device they own?", abort=True)
    deleted = delete_person(name)
    if deleted is None:
        fail(f"no user {name!r}")
    devices, warning = deleted
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"deleted {name} and {len(devices)} device(s)")

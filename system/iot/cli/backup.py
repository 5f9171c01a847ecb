"""``iotctl backup``: base backups of the stack's Postgres, the WAL archive, and restores into
a Postgres of their own (``iot.backup``; runbooks/postgres-backup-restore.md)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from iot import backup
from iot.cli.common import fail, settings

app = typer.Typer(
    help="Postgres backups: base backups, the continuous WAL archive, tested restores.",
    no_args_is_help=True,
)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


@app.command("create")
def create(
    compress: Annotated[bool, typer.Option(help="gzip the base backup (slower, smaller).")] = False,
    keep: Annotated[
        int,
        typer.Option(
            min=0,
            help="Then keep only the N newest base backups and the WAL they need (0: keep all).",
        ),
    ] = 0,
) -> None:
    """Take a base backup of the running Postgres (online: the system keeps serving) into
    <backup_dir>/base/<UTC time>/. With the WAL archive it can be restored to any moment
    after it."""
    s = settings()
    if "postgres" in s.external_services:
        fail("Postgres is external (IOT_EXTERNAL_SERVICES): back it up where it runs")
    typer.echo(f"backup: base backup of 127.0.0.1:{s.postgres_port} into {backup.base_dir(s)}")
    started = time.monotonic()
    try:
        base = backup.create(s, compress=compress)
        segment = backup.switch_wal(s)  # the backup's end reaches the archive now, not later
    except backup.BackupError as exc:
        fail(str(exc))
    typer.echo(
        f"backup: {base.path.name}: {_mib(base.size_bytes)} in "
        f"{time.monotonic() - started:.1f} s; WAL archived up to {segment}"
    )
    if keep:
        removed, segments = backup.prune(s, keep)
        typer.echo(f"backup: pruned {len(removed)} older base backups and {segments} WAL segments")
    typer.echo("Copy the backup directory off this machine: a backup on the same disk is not one.")


@app.command("list")
def list_() -> None:
    """The base backups (oldest first) and the WAL archive: what can be restored."""
    s = settings()
    bases = backup.bases(s)
    if not bases:
        typer.echo(f"no base backup in {backup.base_dir(s)}: take one with `iotctl backup create`")
    for b in bases:
        typer.echo(
            f"{b.path.name}  {b.taken_at:%Y-%m-%d %H:%M:%S} UTC  {_mib(b.size_bytes):>14}  "
            f"starts at WAL {backup.start_segment(b)}"
        )
    wal = sorted(backup.wal_dir(s).glob("*.gz")) if backup.wal_dir(s).is_dir() else []
    if wal:
        newest = datetime.fromtimestamp(wal[-1].stat().st_mtime)
        size = sum(f.stat().st_size for f in wal)
        typer.echo(
            f"WAL archive {backup.wal_dir(s)}: {len(wal)} files, {_mib(size)}, newest "
            f"{wal[-1].name} at {newest:%Y-%m-%d %H:%M:%S} (local time)"
        )
    else:
        typer.echo(f"WAL archive {backup.wal_dir(s)}: empty")


@app.command("restore")
def restore(
    data_dir: Annotated[
        Path,
        typer.Option(
            help="A new, empty directory for the restored database; the postgres user must "
            "be able to reach it (not under a private /tmp directory)."
        ),
    ],
    port: Annotated[int, typer.Option(help="Port of the restored Postgres (a free one).")] = 5499,
    base: Annotated[
        str, typer.Option(help="Base backup to start from (a name from `list`; latest).")
    ] = "latest",
    target_time: Annotated[
        datetime | None,
        typer.Option(help="Replay the WAL up to this moment (UTC), not to its end."),
    ] = None,
) -> None:
    """Restore a base backup plus the archived WAL into a new Postgres of its own (the running
    stack is not touched), replayed to the end of the archive or to --target-time, then
    opened for writes. Check it, then follow the runbook to switch over."""
    s = settings()
    bases = backup.bases(s)
    if not bases:
        fail(f"no base backup in {backup.base_dir(s)}")
    chosen = (
        bases[-1] if base == "latest" else next((b for b in bases if b.path.name == base), None)
    )
    if chosen is None:
        fail(f"no base backup named {base!r}; `iotctl backup list` shows them")
    when = target_time
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    typer.echo(f"restore: {chosen.path.name} into {data_dir} on port {port}, replaying the WAL")
    started = time.monotonic()
    try:
        pid = backup.restore(s, chosen, data_dir.resolve(), port, target_time=when)
        commands = backup.restored_sql(s, data_dir.resolve(), port, "SELECT count(*) FROM commands")
    except backup.BackupError as exc:
        fail(str(exc))
    typer.echo(
        f"restore: Postgres {pid} serves the restored database on {s.host}:{port} after "
        f"{time.monotonic() - started:.1f} s ({commands} command rows)\n"
        f"  check it:  psql -h {data_dir.resolve()} -p {port} -U postgres {s.postgres_db}\n"
        f"  stop it:   iotctl backup stop-restored --data-dir {data_dir}"
    )


@app.command("stop-restored")
def stop_restored(
    data_dir: Annotated[Path, typer.Option(help="The directory given to `restore`.")],
) -> None:
    """Stop the Postgres that `restore` started on --data-dir (its files stay)."""
    backup.stop_restored(settings(), data_dir.resolve())
    typer.echo(f"stopped the Postgres of {data_dir} (if it ran)")


@app.command("prune")
def prune(
    keep: Annotated[int, typer.Option(min=1, help="Base backups to keep (the newest).")] = 2,
) -> None:
    """Delete older base backups and the WAL that only they needed."""
    try:
        removed, segments = backup.prune(settings(), keep)
    except backup.BackupError as exc:
        fail(str(exc))
    typer.echo(f"pruned {len(removed)} base backups and {segments} WAL segments")

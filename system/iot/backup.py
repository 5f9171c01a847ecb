"""Postgres backups that can be restored to any moment since the oldest base backup.

Two parts, the standard way (PostgreSQL manual, "Continuous Archiving and Point-in-Time
Recovery"):

- **continuous archiving**: the stack's Postgres gzips every finished WAL segment into
  ``<backup_dir>/wal/`` (``archive_command``; ``archive_timeout`` closes a segment at least
  every five minutes, so a quiet system loses at most five minutes of history with its disk;
  a closed segment is 16 MiB however little it holds, and gzip keeps the quiet ones small);
- **base backups**: ``iotctl backup create`` runs ``pg_basebackup`` into
  ``<backup_dir>/base/<UTC time>/`` (tar format, with the WAL it needs to be consistent).

A restore (``iotctl backup restore``) unpacks a base backup into a new data directory and
starts a separate Postgres on it that replays the archived WAL up to the end (or to
``--target-time``) and then opens for writes. It never touches the running stack: on-call
checks the restored instance (the runbook's queries) before pointing anything at it.

``backup_dir`` is outside ``var/`` (``iotctl down --purge`` deletes ``var/``); a backup on the
same disk as the database is not one: copy the directory off the machine (runbooks/
postgres-backup-restore.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from iot.errors import IotError
from iot.settings import Settings
from iot.stack import ha

ARCHIVE_TIMEOUT_SECONDS = 300


class BackupError(IotError):
    """A backup or restore step failed; the message says which and why."""


def _root(s: Settings) -> Path:
    assert s.backup_dir is not None  # Settings fills it in
    return s.backup_dir


def wal_dir(s: Settings) -> Path:
    return _root(s) / "wal"


def base_dir(s: Settings) -> Path:
    return _root(s) / "base"


def archive_command(s: Settings) -> str:
    """Postgres's ``archive_command``: gzip the finished segment into the archive.

    WAL older than the first base backup can never be replayed (a restore starts from a base
    backup), so while ``base/`` is empty a segment is reported archived without a copy: a
    machine that never took a backup does not fill its disk with WAL. ``test ! -f`` never
    overwrites a segment already archived (the manual's advice), and the copy goes through a
    temporary name so a crash mid-copy leaves no truncated segment.
    """
    gz = f"{wal_dir(s)}/%f.gz"
    return (
        f'[ -z "$(ls -A {base_dir(s)})" ] || '
        f"{{ test ! -f {gz} && gzip -1 -c %p > {gz}.tmp && mv {gz}.tmp {gz}; }}"
    )


def archive_parameters(s: Settings) -> dict[str, str]:
    """The Postgres parameters that make it archive its WAL (Patroni's members take them as
    parameters, the single Postgres as ``-c`` options)."""
    return {
        "archive_mode": "on",
        "archive_command": archive_command(s),
        "archive_timeout": str(ARCHIVE_TIMEOUT_SECONDS),
    }


def archive_settings(s: Settings) -> list[str]:
    """The ``-c`` options that make the stack's single Postgres archive its WAL."""
    return [a for k, v in archive_parameters(s).items() for a in ("-c", f"{k}={v}")]


def prepare(s: Settings) -> None:
    """Create the archive directory, writable by the postgres user (``iotctl up``)."""
    wal = wal_dir(s)
    wal.mkdir(parents=True, exist_ok=True)
    base_dir(s).mkdir(parents=True, exist_ok=True)
    shutil.chown(wal, "postgres", "postgres")
    wal.chmod(0o700)
    base_dir(s).chmod(0o755)  # the archive command lists it as the postgres user


@dataclass(frozen=True)
class Base:
    path: Path
    taken_at: datetime
    size_bytes: int


def bases(s: Settings) -> list[Base]:
    """The base backups, oldest first."""
    out = []
    root = base_dir(s)
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if not (d / "base.tar").exists() and not (d / "base.tar.gz").exists():
            continue  # unfinished (a hidden .partial directory) or not ours
        try:
            taken = datetime.strptime(d.name, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            continue
        size = sum(f.stat().st_size for f in d.iterdir())
        out.append(Base(d, taken, size))
    return out


def _local(s: Settings) -> tuple[Path, int]:
    """The stack's Postgres for superuser tools: the single one, or the HA primary."""
    try:
        return ha.local_postgres(s)
    except ha.NoPrimary as exc:
        raise BackupError(str(exc)) from exc


def _as_postgres(
    s: Settings, tool: str, *args: str, timeout: float | None = 60
) -> subprocess.CompletedProcess[str]:
    """Run one of Postgres's programs (psql, pg_ctl) as the postgres user."""
    command = ["runuser", "-u", "postgres", "--", str(s.postgres_bin_dir / tool), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def _psql(s: Settings, socket_dir: Path, port: int, sql: str) -> subprocess.CompletedProcess[str]:
    return _as_postgres(
        s,
        "psql",
        "-h",
        str(socket_dir),
        "-p",
        str(port),
        "-d",
        s.postgres_db,
        "-XAtq",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
    )


def superuser_sql(s: Settings, sql: str) -> str:
    """Run ``sql`` as the postgres superuser over the stack's local socket; its output."""
    r = _psql(s, *_local(s), sql)
    if r.returncode != 0:
        raise BackupError(f"psql: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout.strip()


def switch_wal(s: Settings, timeout: float = 60) -> str:
    """Close the current WAL segment and wait until it is archived (what was committed before
    the call is then in the archive); returns the segment's name."""
    segment = superuser_sql(s, "SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (wal_dir(s) / f"{segment}.gz").exists():
            return segment
        time.sleep(0.5)
    failed = superuser_sql(s, "SELECT last_failed_wal, last_failed_time FROM pg_stat_archiver")
    raise BackupError(
        f"WAL segment {segment} not archived into {wal_dir(s)} within {timeout:g} s "
        f"(last failure: {failed or 'none'}); is archive_mode on? (`iotctl up` turns it on)"
    )


def create(s: Settings, *, compress: bool = False) -> Base:
    """A base backup of the running stack's Postgres into ``<backup_dir>/base/<UTC time>/``."""
    if not (wal_dir(s)).is_dir():
        raise BackupError(f"no WAL archive at {wal_dir(s)}: run `iotctl up` first")
    name = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = base_dir(s) / name
    partial = base_dir(s) / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    socket_dir, port = _local(s)
    command = [
        str(s.postgres_bin_dir / "pg_basebackup"),
        "-h",
        str(socket_dir),
        "-p",
        str(port),
        "-U",
        "postgres",
        "-D",
        str(partial),
        "-Ft",
        "-X",
        "stream",
        "-c",
        "fast",
        "-l",
        f"iotctl backup {name}",
        *(["-z"] if compress else []),
    ]
    r = subprocess.run(command, capture_output=True, text=True)
    if r.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise BackupError(f"pg_basebackup failed: {r.stderr.strip()}")
    partial.rename(target)
    return next(b for b in bases(s) if b.path == target)


def start_segment(base: Base) -> str:
    """The first WAL segment ``base`` needs (from its ``backup_label``)."""
    suffix = ".tar.gz" if (base.path / "base.tar.gz").exists() else ".tar"
    with tarfile.open(base.path / f"base{suffix}") as tar:
        member = tar.extractfile("backup_label")
        label = member.read().decode() if member is not None else ""
    for line in label.splitlines():
        if line.startswith("START WAL LOCATION:") and "(file " in line:
            return line.split("(file ", 1)[1].rstrip(")").strip()
    raise BackupError(f"{base.path}: no START WAL LOCATION in its backup_label")


def prune(s: Settings, keep: int) -> tuple[list[Path], int]:
    """Keep the ``keep`` newest base backups and the WAL from the oldest of them on; delete
    the rest. Returns (base backups deleted, WAL segments deleted)."""
    if keep < 1:
        raise BackupError("keep at least one base backup")
    all_bases = bases(s)
    old, kept = all_bases[:-keep], all_bases[-keep:]
    for b in old:
        shutil.rmtree(b.path)
    if not kept:
        return [b.path for b in old], 0
    first = start_segment(kept[0])
    deleted = 0
    for f in wal_dir(s).iterdir():
        segment = f.name.split(".", 1)[0]
        # 24 hex digits: a segment (timeline, log, seg); .history files are kept for ever
        if len(segment) == 24 and f.name.endswith(".gz") and ".history" not in f.name:
            if segment[8:] < first[8:] and segment[:8] <= first[:8]:
                f.unlink()
                deleted += 1
    return [b.path for b in old], deleted


def _free(port: int, host: str) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex((host, port)) != 0


def _extract(archive: Path, into: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="tar")


def restore(
    s: Settings,
    base: Base,
    data_dir: Path,
    port: int,
    *,
    target_time: datetime | None = None,
    timeout: float = 300,
) -> int:
    """Unpack ``base`` into ``data_dir`` (new or empty), start a Postgres of its own on
    ``port`` that replays the archive (to its end, or to ``target_time``) and opens for writes.
    Returns that Postgres's pid (stop it with ``stop_restored``)."""
    if data_dir.exists() and any(data_dir.iterdir()):
        raise BackupError(f"{data_dir} is not empty: restore into a new directory")
    if not _free(port, s.host):
        raise BackupError(f"port {port} is in use: choose another with --port")
    data_dir.mkdir(parents=True, exist_ok=True)
    suffix = ".tar.gz" if (base.path / "base.tar.gz").exists() else ".tar"
    _extract(base.path / f"base{suffix}", data_dir)
    wal_tar = base.path / f"pg_wal{suffix}"
    if wal_tar.exists():
        _extract(wal_tar, data_dir / "pg_wal")
    # The restored instance must not archive into the live archive, nor listen where the
    # stack's Postgres does; its own settings win over the copied postgresql.auto.conf.
    with (data_dir / "postgresql.auto.conf").open("a") as f:
        f.write(f"\n# iotctl backup restore, {datetime.now(UTC).isoformat()}\n")
        f.write(f"restore_command = 'gunzip -c {wal_dir(s)}/%f.gz > %p'\n")
        f.write("recovery_target_action = 'promote'\n")
        if target_time is not None:
            f.write(f"recovery_target_time = '{target_time.isoformat()}'\n")
        f.write("archive_mode = 'off'\n")
    (data_dir / "recovery.signal").touch()
    for p in [data_dir, *data_dir.rglob("*")]:
        os.chown(p, _uid("postgres"), _gid("postgres"))
    data_dir.chmod(0o700)
    log = data_dir / "restore.log"
    # Recovery refuses settings lower than the primary's (max_connections and friends): take
    # them from the backup's own control file.
    options = f"-p {port} -k {data_dir} -c listen_addresses={s.host}" + "".join(
        f" -c {k}={v}" for k, v in _primary_limits(s, data_dir).items()
    )
    r = _as_postgres(
        s,
        "pg_ctl",
        "-D",
        str(data_dir),
        "-l",
        str(log),
        "-w",
        "-t",
        str(int(timeout)),
        "-o",
        options,
        "start",
        timeout=None,
    )
    if r.returncode != 0:
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise BackupError(f"the restored Postgres did not start: {r.stderr.strip()}\n{tail}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if restored_sql(s, data_dir, port, "SELECT pg_is_in_recovery()") == "f":
            return restored_pid(data_dir)
        time.sleep(0.5)
    raise BackupError(f"the restored Postgres still replays WAL after {timeout:g} s: see {log}")


_CONTROL_LIMITS = {
    "max_connections setting": "max_connections",
    "max_worker_processes setting": "max_worker_processes",
    "max_wal_senders setting": "max_wal_senders",
    "max_prepared_xacts setting": "max_prepared_transactions",
    "max_locks_per_xact setting": "max_locks_per_transaction",
}


def _primary_limits(s: Settings, data_dir: Path) -> dict[str, str]:
    """The settings a hot standby's recovery needs at least as high as the primary's, read
    with pg_controldata from the restored data directory."""
    r = _as_postgres(s, "pg_controldata", str(data_dir))
    if r.returncode != 0:
        raise BackupError(f"pg_controldata {data_dir}: {r.stderr.strip()}")
    out = {}
    for line in r.stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in _CONTROL_LIMITS:
            out[_CONTROL_LIMITS[key.strip()]] = value.strip()
    return out


def restored_sql(s: Settings, data_dir: Path, port: int, sql: str) -> str:
    """Run ``sql`` as the superuser on the restored instance (its socket in ``data_dir``)."""
    r = _psql(s, data_dir, port, sql)
    if r.returncode != 0:
        raise BackupError(f"psql on the restored instance: {r.stderr.strip()}")
    return r.stdout.strip()


def restored_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


def stop_restored(s: Settings, data_dir: Path) -> None:
    """Stop the Postgres a restore started on ``data_dir`` (by its own pid file)."""
    if not (data_dir / "postmaster.pid").exists():
        return
    _as_postgres(s, "pg_ctl", "-D", str(data_dir), "-m", "fast", "-w", "stop", timeout=120)


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def _gid(group: str) -> int:
    import grp

    return grp.getgrnam(group).gr_gid

"""Backups that restore: a base backup plus the WAL archive bring back every command accepted
before and after the base backup, in a Postgres of its own, and a point-in-time restore stops
where it was told (runbooks/postgres-backup-restore.md)."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from iot import backup
from iot.settings import Settings
from tests.integration.conftest import Person

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def restore_dirs(settings: Settings) -> Iterator[list[Path]]:
    """Directories for restored instances under var/ (the postgres user must reach them);
    their Postgres is stopped (by its own pid file) and the files removed afterwards, with
    the base backups the test took (a machine's own backups stay)."""
    if "postgres" in settings.external_services:
        pytest.skip("Postgres is external (IOT_EXTERNAL_SERVICES): its backups are not ours")
    had = {b.path for b in backup.bases(settings)}
    made: list[Path] = []
    yield made
    for d in made:
        backup.stop_restored(settings, d)
        shutil.rmtree(d, ignore_errors=True)
    for b in backup.bases(settings):
        if b.path not in had:
            shutil.rmtree(b.path)


def send(person: Person, device, n: int) -> list[str]:
    ids = []
    for i in range(n):
        r = person.send(device, "set", {"step": i})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def present(settings: Settings, data_dir: Path, port: int, ids: list[str]) -> set[str]:
    listed = ",".join(f"'{i}'" for i in ids)
    out = backup.restored_sql(
        settings, data_dir, port, f"SELECT id FROM commands WHERE id IN ({listed})"
    )
    return set(out.split()) if out else set()


def test_a_base_backup_and_the_wal_archive_restore_every_accepted_command(
    alice: Person, settings: Settings, restore_dirs: list[Path]
):
    device = alice.new_device()
    before = send(alice, device, 5)  # in the base backup
    base = backup.create(settings)
    assert backup.start_segment(base)
    middle = send(alice, device, 5)  # only in the archived WAL
    backup.switch_wal(settings)
    time.sleep(1.5)
    cut = datetime.now(UTC)  # the point in time of the second restore
    time.sleep(1.5)
    after = send(alice, device, 5)
    backup.switch_wal(settings)

    full = settings.var / f"restore-test-{free_port()}"
    restore_dirs.append(full)
    port = free_port()
    backup.restore(settings, base, full, port)
    ids = before + middle + after
    assert present(settings, full, port, ids) == set(ids)
    # The restored instance is open for writes (promoted), and the live stack untouched.
    assert backup.restored_sql(settings, full, port, "SELECT pg_is_in_recovery()") == "f"

    pitr = settings.var / f"restore-test-{free_port()}"
    restore_dirs.append(pitr)
    port = free_port()
    backup.restore(settings, base, pitr, port, target_time=cut)
    assert present(settings, pitr, port, ids) == set(before + middle)


def test_restoring_into_a_used_directory_or_port_is_refused(
    settings: Settings, restore_dirs: list[Path]
):
    # Both refusals come before anything is read from the base backup.
    bases = [backup.Base(settings.var / "no-such-backup", datetime.now(UTC), 0)]
    used = settings.var / f"restore-test-{free_port()}"
    restore_dirs.append(used)
    used.mkdir(parents=True)
    (used / "something").write_text("keep me")
    with pytest.raises(backup.BackupError, match="not empty"):
        backup.restore(settings, bases[-1], used, free_port())
    assert (used / "something").read_text() == "keep me"
    with pytest.raises(backup.BackupError, match="in use"):
        backup.restore(settings, bases[-1], settings.var / "restore-never", settings.postgres_port)

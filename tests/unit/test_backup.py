"""The WAL archive command and the pruning of base backups (iot/backup.py), on files only; the
restore itself is tested against the stack's Postgres (tests/integration/test_backup.py)."""

from __future__ import annotations

import gzip
import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from iot import backup
from iot.settings import Settings


@pytest.fixture
def s(tmp_path: Path) -> Settings:
    settings = Settings(home=tmp_path / "home", backup_dir=tmp_path / "backups")
    backup.wal_dir(settings).mkdir(parents=True)
    backup.base_dir(settings).mkdir(parents=True)
    return settings


def archive(s: Settings, segment: Path) -> int:
    """Run the archive command as Postgres would for ``segment``."""
    command = backup.archive_command(s).replace("%p", str(segment)).replace("%f", segment.name)
    return subprocess.run(["sh", "-c", command]).returncode


def make_base(s: Settings, name: str, start: str) -> None:
    d = backup.base_dir(s) / name
    d.mkdir()
    label = f"START WAL LOCATION: 0/3000028 (file {start})\nCHECKPOINT LOCATION: 0/3000060\n"
    with tarfile.open(d / "base.tar", "w") as tar:
        info = tarfile.TarInfo("backup_label")
        info.size = len(label)
        tar.addfile(info, io.BytesIO(label.encode()))


def test_segments_are_archived_gzipped_once_a_base_backup_exists(s: Settings, tmp_path: Path):
    segment = tmp_path / "000000010000000000000007"
    segment.write_bytes(b"wal" * 1000)
    # No base backup yet: nothing could ever replay this segment; reported done, not kept.
    assert archive(s, segment) == 0
    assert list(backup.wal_dir(s).iterdir()) == []
    make_base(s, "20261207T120000Z", "000000010000000000000006")
    assert archive(s, segment) == 0
    kept = backup.wal_dir(s) / "000000010000000000000007.gz"
    assert gzip.decompress(kept.read_bytes()) == b"wal" * 1000
    # An archived segment is never overwritten: Postgres sees a failure and keeps its own.
    segment.write_bytes(b"other")
    assert archive(s, segment) != 0
    assert gzip.decompress(kept.read_bytes()) == b"wal" * 1000


def test_prune_keeps_the_newest_bases_and_the_wal_they_need(s: Settings):
    make_base(s, "20261201T000000Z", "000000010000000000000002")
    make_base(s, "20261202T000000Z", "000000010000000000000005")
    make_base(s, "20261203T000000Z", "000000010000000000000009")
    names = [f"0000000100000000000000{i:02X}.gz" for i in range(1, 12)]
    for n in [*names, "00000002.history.gz", "000000010000000000000005.00000028.backup.gz"]:
        (backup.wal_dir(s) / n).write_bytes(b"x")
    removed, segments = backup.prune(s, keep=2)
    assert [p.name for p in removed] == ["20261201T000000Z"]
    assert [b.path.name for b in backup.bases(s)] == ["20261202T000000Z", "20261203T000000Z"]
    left = sorted(p.name for p in backup.wal_dir(s).iterdir())
    assert segments == 4  # 1 to 4: older than the oldest kept base needs
    assert left[0] == "000000010000000000000005.00000028.backup.gz"
    assert "000000010000000000000004.gz" not in left
    assert "00000002.history.gz" in left
    with pytest.raises(backup.BackupError):
        backup.prune(s, keep=0)

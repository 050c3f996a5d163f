from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cds_daemon.store.spool import DiskFullError, Spool, valid_uid


def test_write_is_complete_and_named_by_uid(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    f = spool.write("1.2.3", b"abc" * 1000)
    assert f.path.name == "1.2.3.dcm" and f.path.read_bytes() == b"abc" * 1000
    assert f.sha256 == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert list(spool.incoming.iterdir()) == []


def test_disk_full_leaves_no_partial_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=2**62)
    with pytest.raises(DiskFullError):
        spool.write("1.2.3", b"x")
    assert list(spool.incoming.iterdir()) == []
    assert list(spool.objects.rglob("*.dcm")) == []


@pytest.mark.parametrize("uid", ["", "../../etc/passwd", "1.2.a", "1." + "2" * 70, "1..2"])
def test_rejects_unsafe_uids(tmp_path: Path, uid: str) -> None:
    assert not valid_uid(uid)
    with pytest.raises(ValueError):
        Spool(tmp_path).path_for(uid)


def test_recovery_helpers(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (spool.incoming / "dead.part").write_bytes(b"half")
    kept = spool.write("1.1", b"a")
    orphan = spool.write("1.2", b"b")
    assert spool.clean_incoming() == 1
    assert spool.unreferenced({str(kept.path)}) == [orphan.path]
    moved = spool.quarantine(orphan.path)
    assert moved.read_bytes() == b"b" and not orphan.path.exists()

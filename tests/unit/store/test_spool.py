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


def test_write_all_stores_each_object_with_one_round_of_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    spool = Spool(tmp_path)
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    items = [(f"1.2.{i}", bytes([i]) * 100) for i in range(3)]
    files = spool.write_all(items)
    assert [f.path.read_bytes() for f in files] == [data for _, data in items]
    directories = {f.path.parent for f in files} | {spool.incoming}
    assert len(synced) == len(items) + len(directories)  # each file, then each directory once
    assert list(spool.incoming.iterdir()) == []


def test_write_all_that_fails_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    spool = Spool(tmp_path)
    real_replace = os.replace
    calls: list[object] = []

    def replace_then_fail(src: object, dst: object) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", replace_then_fail)
    with pytest.raises(DiskFullError):
        spool.write_all([("1.2.1", b"a"), ("1.2.2", b"b")])
    assert list(spool.incoming.iterdir()) == []
    assert [p.read_bytes() for p in spool.objects.rglob("*.dcm")] == [b"a"]  # whole, and never reported


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

"""Durable storage of received DICOM files.

A file is written to ``incoming/`` under a random name, fsynced, renamed to its final
name, and both directories are fsynced. Only then is it durable: a crash at any point
leaves either the complete file under its final name or nothing there (an orphan in
``incoming/`` is removed at the next start).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class DiskFullError(Exception):
    """Not enough space to store the object durably (reported to the sender as 0xA700)."""


@dataclass(frozen=True)
class SpooledFile:
    path: Path
    size: int
    sha256: str


def valid_uid(uid: str) -> bool:
    """A DICOM UID: digits and dots, at most 64 characters (also safe as a file name)."""
    return 0 < len(uid) <= 64 and bool(_UID_RE.match(uid))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # purged meanwhile
        return float("inf")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The directory of received objects, one file per SOPInstanceUID."""

    def __init__(
        self, root: Path, min_free_bytes: int = 0, max_used_ratio: float = 1.0, *, node: str | None = None
    ) -> None:
        """``node``: several nodes share ``root``; each writes (and at start cleans) its own ``incoming/NODE``."""
        self.root = root
        self.max_used_ratio = max_used_ratio
        self.incoming = root / "incoming" / re.sub(r"[^A-Za-z0-9_.-]", "_", node) if node else root / "incoming"
        self.objects = root / "objects"
        self.min_free_bytes = min_free_bytes
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.objects.mkdir(parents=True, exist_ok=True)

    def path_for(self, sop_instance_uid: str) -> Path:
        if not valid_uid(sop_instance_uid):
            raise ValueError(f"not a valid DICOM UID: {sop_instance_uid!r}")
        shard = hashlib.sha1(sop_instance_uid.encode()).hexdigest()[:2]
        return self.objects / shard / f"{sop_instance_uid}.dcm"

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def used_ratio(self) -> float:
        usage = shutil.disk_usage(self.root)
        return usage.used / usage.total

    def has_room(self, size: int) -> bool:
        """Whether ``size`` more bytes leave the configured reserve and watermark intact."""
        return self.free_bytes() - size >= self.min_free_bytes and self.used_ratio() <= self.max_used_ratio

    def _check_room(self, size: int) -> None:
        if self.free_bytes() - size < self.min_free_bytes:
            raise DiskFullError(f"free space below the configured minimum ({self.min_free_bytes // 2**20} MiB)")
        if self.used_ratio() > self.max_used_ratio:
            raise DiskFullError(f"disk usage above the configured watermark ({self.max_used_ratio:.0%})")

    def adopt(self, sop_instance_uid: str, received: Path) -> SpooledFile:
        """Make a file received to disk durable under the instance's final path: fsynced, hashed, renamed
        (copied when it lies on another file system). The received file is gone afterwards."""
        final = self.path_for(sop_instance_uid)
        size = received.stat().st_size
        self._check_room(0)  # the bytes are on this disk already (the listener checked while they came)
        digest = hashlib.sha256()
        with open(received, "rb") as fh:
            while chunk := fh.read(2**22):
                digest.update(chunk)
            os.fsync(fh.fileno())
        final.parent.mkdir(exist_ok=True)
        try:
            try:
                os.replace(received, final)
                moved_from = received.parent
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                tmp = self.incoming / f"{uuid.uuid4().hex}.part"
                try:
                    with open(received, "rb") as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst, 2**22)
                        dst.flush()
                        os.fsync(dst.fileno())
                    os.replace(tmp, final)
                finally:
                    tmp.unlink(missing_ok=True)
                moved_from = self.incoming
            for directory in dict.fromkeys([final.parent, moved_from]):
                _fsync_dir(directory)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"disk full while writing: {exc.strerror}") from exc
            raise
        return SpooledFile(final, size, digest.hexdigest())

    def write(self, sop_instance_uid: str, data: bytes) -> SpooledFile:
        """Store ``data`` durably under the instance's final path."""
        return self.write_all([(sop_instance_uid, data)])[0]

    def write_all(self, items: Sequence[tuple[str, bytes]]) -> list[SpooledFile]:
        """Store several objects (one case's results) durably, with one round of fsyncs for all of them.

        Each is written and fsynced under a temporary name, then all are renamed into place and each
        directory is fsynced once. A crash leaves each object either absent or whole; none is reported
        until all are durable.
        """
        finals = [self.path_for(uid) for uid, _ in items]
        self._check_room(sum(len(data) for _, data in items))
        temps = [self.incoming / f"{uuid.uuid4().hex}.part" for _ in items]
        try:
            for tmp, (_, data) in zip(temps, items, strict=True):
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            for tmp, final in zip(temps, finals, strict=True):
                final.parent.mkdir(exist_ok=True)
                os.replace(tmp, final)
            for directory in dict.fromkeys([*(f.parent for f in finals), self.incoming]):
                _fsync_dir(directory)
        except OSError as exc:
            for tmp in temps:
                tmp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"disk full while writing: {exc.strerror}") from exc
            raise
        return [
            SpooledFile(final, len(data), hashlib.sha256(data).hexdigest())
            for final, (_, data) in zip(finals, items, strict=True)
        ]

    def clean_incoming(self) -> int:
        """Remove partial files left by a crash; they were never acknowledged."""
        removed = 0
        for part in self.incoming.glob("*.part"):
            part.unlink(missing_ok=True)
            removed += 1
        return removed

    def unreferenced(self, known: set[str], min_age_s: float = 0.0) -> list[Path]:
        """Complete files with no store row: written, but the crash came before the row.

        ``min_age_s``: with nodes sharing the spool, another node's file may be a moment ahead of its row;
        only files older than this are taken for orphans.
        """
        cutoff = time.time() - min_age_s
        return [p for p in self.objects.glob("*/*.dcm") if str(p) not in known and _mtime(p) < cutoff]

    def quarantine(self, path: Path) -> Path:
        """Move a file out of the object tree without deleting it (a lost database must not
        turn into lost images)."""
        target_dir = self.root / "unreferenced"
        target_dir.mkdir(exist_ok=True)
        target = target_dir / path.name
        os.replace(path, target)
        _fsync_dir(target_dir)
        return target

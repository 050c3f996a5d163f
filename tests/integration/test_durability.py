"""Acknowledged means durable: SIGKILL during and after bursts loses nothing."""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from tests.support.dicom_files import dataset_bytes, write_images
from tests.support.processes import DAEMON_AE, SENDER_AE, DaemonProcess, echoscu, storescu

pytestmark = pytest.mark.integration


def _instances(d: DaemonProcess) -> dict[str, str]:
    db = sqlite3.connect(d.data_dir / "cds.sqlite3")
    try:
        return dict(db.execute("SELECT sop_instance_uid, spool_path FROM instances").fetchall())
    finally:
        db.close()


def _acknowledged(storescu_output: str) -> list[str]:
    """Files storescu got a Success response for (from its -v output)."""
    acked, current = [], None
    for line in storescu_output.splitlines():
        m = re.search(r"Sending file: (.+)$", line)
        if m:
            current = m.group(1).strip()
        elif "Received Store Response (Success)" in line and current:
            acked.append(current)
            current = None
    return acked


def _assert_intact(d: DaemonProcess, files: list[Path]) -> None:
    stored = _instances(d)
    for path in files:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert uid in stored, f"acknowledged {path.name} lost"
        assert dataset_bytes(Path(stored[uid]).read_bytes()) == dataset_bytes(path.read_bytes())


def test_kill_during_and_after_bursts(daemon: DaemonProcess, tmp_path: Path) -> None:
    files = write_images(tmp_path / "in", 40, seed=100)

    # 1. SIGKILL in the middle of a burst.
    sender = subprocess.Popen(
        [
            "storescu",
            "-v",
            "-aet",
            SENDER_AE,
            "-aec",
            DAEMON_AE,
            "127.0.0.1",
            str(daemon.port),
            *map(str, files),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while len(_instances(daemon)) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    daemon.stop(signal.SIGKILL)
    out, _ = sender.communicate(timeout=60)
    acked = [Path(p) for p in _acknowledged(out)]
    # Rows are committed before their response is sent, so the last responses may not have reached storescu.
    assert 0 < len(acked) < len(files), "the kill should land mid-burst"

    daemon.start()
    _assert_intact(daemon, acked)
    recovered = [e for e in daemon.log_events() if e["event"] == "recovered"][-1]
    assert recovered["partial_files_removed"] + recovered["unreferenced_files_moved"] <= 1

    # 2. The sender retries everything; nothing is duplicated.
    assert storescu(daemon.port, *files).returncode == 0
    daemon.stop(signal.SIGKILL)  # right after the burst
    daemon.start()
    _assert_intact(daemon, files)
    assert len(_instances(daemon)) == len(files)
    assert len(list((daemon.data_dir / "spool" / "objects").rglob("*.dcm"))) == len(files)


def test_sigterm_finishes_in_flight_and_exits_0(daemon: DaemonProcess, tmp_path: Path) -> None:
    files = write_images(tmp_path / "in", 15, seed=200)
    sender = subprocess.Popen(
        ["storescu", "-aet", SENDER_AE, "-aec", DAEMON_AE, "127.0.0.1", str(daemon.port), *map(str, files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    while not _instances(daemon):
        time.sleep(0.01)
    assert daemon.stop(signal.SIGTERM) == 0
    out, _ = sender.communicate(timeout=60)
    assert sender.returncode == 0, f"the open association should have been allowed to finish: {out}"
    daemon.start()
    _assert_intact(daemon, files)
    events = [e["event"] for e in daemon.log_events()]
    assert "stopped" in events
    assert echoscu(daemon.port).returncode == 0

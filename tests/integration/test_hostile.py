"""What any host on the hospital network can send: each attack on a daemon process is refused, the daemon
keeps answering C-ECHO and storing a valid image right after, and its memory stays under the cap.

Loopback has many addresses (127.0.0.0/8): the trusted sender connects from 127.0.0.1, attackers from
others, so one machine plays both sides.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
)

from tests.support.dicom_files import write_images
from tests.support.hostile import connect, rss_mb, sc_dataset, send_dataset, send_huge_pdu, threads
from tests.support.processes import DaemonProcess, echoscu, storescu
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

RSS_CAP_MB = 700
TRUSTED = "127.0.0.1"
UNKNOWN = "127.0.0.9"  # no allowed caller uses it
NEIGHBOUR = "127.0.0.5"  # allowed (a second modality), used to flood


@pytest.fixture
def daemon(make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path) -> Iterator[DaemonProcess]:
    d = make_daemon(
        bundle=tiny_bundle,
        allowed=[("STORESCU", [f"{TRUSTED}/32"]), ("MODALITY", [f"{NEIGHBOUR}/32"])],
        listener_options={
            "acse_timeout_s": 3,
            "network_timeout_s": 5,
            "max_connections_per_address": 4,
            "max_dataset_mb": 16,
        },
    ).start()
    yield d


def still_serving(daemon: DaemonProcess, tmp_path: Path, seed: int) -> None:
    """After an attack: C-ECHO works and a valid image is stored and analysed."""
    assert echoscu(daemon.port).returncode == 0
    image = write_images(tmp_path / f"ok{seed}", 1, seed=seed)[0]
    assert storescu(daemon.port, image).returncode == 0
    uid = str(pydicom.dcmread(image, stop_before_pixels=True).SOPInstanceUID)
    db = daemon.data_dir / "cds.sqlite3"

    def analysed() -> bool:
        with sqlite3.connect(db) as con:
            row = con.execute("SELECT state FROM instances WHERE sop_instance_uid = ?", (uid,)).fetchone()
        return row is not None and row[0] in ("reported", "delivered")

    wait_until(analysed, 60, "the image after the attack analysed")
    assert daemon.proc is not None
    assert rss_mb(daemon.proc.pid) < RSS_CAP_MB


def refusals(daemon: DaemonProcess) -> list[str]:
    with sqlite3.connect(daemon.data_dir / "cds.sqlite3") as con:
        return [str(r[0]) for r in con.execute("SELECT code FROM rejections ORDER BY id")]


def test_oversized_pdu_from_an_unknown_address_is_cut_at_once(daemon: DaemonProcess, tmp_path: Path) -> None:
    sent = send_huge_pdu(daemon.port, UNKNOWN)
    assert sent < 64 * 2**20, "the daemon must close the connection, not read 300 MiB"
    wait_until(lambda: "peer_unknown" in refusals(daemon), 10, "the refusal recorded")
    still_serving(daemon, tmp_path, 900)


def test_oversized_pdu_from_a_known_address_is_refused_by_its_header(daemon: DaemonProcess, tmp_path: Path) -> None:
    sent = send_huge_pdu(daemon.port, TRUSTED)
    assert sent < 64 * 2**20
    wait_until(lambda: "pdu_too_large" in refusals(daemon), 10, "the refusal recorded")
    still_serving(daemon, tmp_path, 901)


def test_connection_flood_is_capped_per_address(daemon: DaemonProcess, tmp_path: Path) -> None:
    assert daemon.proc is not None
    before = threads(daemon.proc.pid)
    flood = []
    for _ in range(40):
        with contextlib.suppress(OSError):
            flood.append(connect(daemon.port, NEIGHBOUR))
    time.sleep(1.0)
    assert threads(daemon.proc.pid) <= before + 2 * 4 + 4  # at most 4 admitted, 2 threads each (+ slack)
    assert "too_many_connections" in refusals(daemon)
    still_serving(daemon, tmp_path, 902)  # another address is not starved
    for sock in flood:
        sock.close()


def test_a_slow_sender_is_dropped_by_the_timeouts(daemon: DaemonProcess, tmp_path: Path) -> None:
    sock = connect(daemon.port, TRUSTED)
    sock.sendall(b"\x01\x00")  # the start of a header, then nothing more
    time.sleep(0.2)
    still_serving(daemon, tmp_path, 903)  # served while the slow one waits
    sock.settimeout(15)
    try:
        closed = sock.recv(1024) == b""  # the daemon closes it (ACSE timeout, 3 s here)
    except ConnectionResetError:
        closed = True
    finally:
        sock.close()
    assert closed


def test_deflate_bomb_is_refused_without_inflating_it(daemon: DaemonProcess, tmp_path: Path) -> None:
    bomb = sc_dataset(bytes(64 * 2**20))  # 64 MiB of zeros: a few hundred KiB once deflated
    assert send_dataset(daemon.port, bomb, DeflatedExplicitVRLittleEndian) == 0xA700
    assert "dataset_too_large" in refusals(daemon)
    still_serving(daemon, tmp_path, 904)


def test_pixel_data_longer_than_the_image_is_refused(daemon: DaemonProcess, tmp_path: Path) -> None:
    assert send_dataset(daemon.port, sc_dataset(bytes(16 * 16 * 3 + 4096)), ExplicitVRLittleEndian) == 0xA900
    assert "pixel_data_long" in refusals(daemon)
    huge = sc_dataset(bytes(32 * 2**20))  # past max_dataset_mb (16 here): the association is aborted mid-way
    assert send_dataset(daemon.port, huge, ExplicitVRLittleEndian) is None
    wait_until(lambda: "dataset_too_large" in refusals(daemon), 10, "the refusal recorded")
    still_serving(daemon, tmp_path, 905)


def test_malformed_dates_and_names_in_free_text_stay_out_of_the_logs(daemon: DaemonProcess, tmp_path: Path) -> None:
    image = write_images(tmp_path / "dates", 1, seed=906)[0]
    ds = pydicom.dcmread(image)
    ds.PatientBirthDate = "31.01.1970"
    ds.StudyDate = "2024-13-45"
    ds.ImageComments = "Patient Jane Roe, born 31.01.1970, left lobe"
    ds.save_as(image, enforce_file_format=True)
    assert storescu(daemon.port, image).returncode == 0
    bad = sc_dataset(bytes(10), rows=16, cols=16)
    bad.PatientName = "Roe^Jane"
    bad.SOPInstanceUID = "1.2.3.Roe.Jane"  # refused, and its ErrorComment quotes the value
    assert send_dataset(daemon.port, bad, ExplicitVRLittleEndian) == 0xA900
    uid = str(ds.SOPInstanceUID)
    db = daemon.data_dir / "cds.sqlite3"

    def done() -> bool:
        with sqlite3.connect(db) as con:
            row = con.execute("SELECT state FROM instances WHERE sop_instance_uid = ?", (uid,)).fetchone()
        return row is not None and row[0] in ("reported", "delivered")

    wait_until(done, 60, "the image with malformed dates analysed (its report is written)")
    text = daemon.log_path.read_text(errors="replace")
    for secret in ("31.01.1970", "2024-13-45", "Jane", "Roe"):
        assert secret not in text, secret


def test_memory_stays_under_the_cap_while_images_arrive(daemon: DaemonProcess, tmp_path: Path) -> None:
    files = write_images(tmp_path / "load", 20, ts="jpeg-baseline", seed=950)
    assert storescu(daemon.port, *files, extra=("-xy",)).returncode == 0
    assert daemon.proc is not None
    peak = 0.0
    deadline = time.monotonic() + 90
    db = daemon.data_dir / "cds.sqlite3"
    while time.monotonic() < deadline:
        peak = max(peak, rss_mb(daemon.proc.pid))
        with sqlite3.connect(db) as con:
            left = con.execute("SELECT COUNT(*) FROM instances WHERE state IN ('received','processing')").fetchone()
        if left[0] == 0:
            break
        time.sleep(0.2)
    assert peak < RSS_CAP_MB, f"peak RSS {peak:.0f} MiB"


def test_idle_connections_to_the_health_port_are_capped_and_timed_out(daemon: DaemonProcess, tmp_path: Path) -> None:
    assert daemon.proc is not None
    before = threads(daemon.proc.pid)
    idle = []
    for _ in range(60):
        with contextlib.suppress(OSError):
            idle.append(socket.create_connection(("127.0.0.1", daemon.health_port), timeout=5))
    time.sleep(1.0)
    assert threads(daemon.proc.pid) <= before + 8 + 2  # 8 request threads at most, whatever connects

    def live() -> bool:
        try:
            return daemon.http("/healthz/live")[0] == 200
        except OSError:  # closed at once while the 8 slots are held: no thread queued for it
            return False

    wait_until(live, 15, "liveness answered once the idle ones time out")
    for sock in idle:
        sock.close()
    still_serving(daemon, tmp_path, 907)


def test_refusals_keep_metrics_labels_bounded_and_files_private(daemon: DaemonProcess, tmp_path: Path) -> None:
    """Sender-chosen text never becomes a label value; what the daemon writes is not world-readable."""
    for i in range(5):
        bad = sc_dataset(bytes(10))
        bad.SOPInstanceUID = f"not-a-uid-{i}"
        assert send_dataset(daemon.port, bad, ExplicitVRLittleEndian) == 0xA900
    metrics = daemon.http("/metrics")[1]
    rejected = [line for line in metrics.splitlines() if line.startswith("cds_stores_rejected_total{")]
    assert rejected and not any("not-a-uid" in line for line in rejected)
    assert len({line.split("}")[0] for line in rejected}) <= 3
    still_serving(daemon, tmp_path, 908)
    written = [p for p in daemon.data_dir.rglob("*") if p.is_file()]
    assert written and all(p.stat().st_mode & 0o007 == 0 for p in written), "umask 0027 in every mode"

"""The listener as a real process, with dcmtk and pynetdicom as the senders."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from tests.support.dicom_files import dataset_bytes, write_images
from tests.support.processes import SENDER_AE, STORESCU_PROPOSE, DaemonProcess, echoscu, send_raw, storescu

pytestmark = pytest.mark.integration
VL_MICROSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.2"


def _rows(d: DaemonProcess, sql: str) -> list[tuple]:
    db = sqlite3.connect(d.data_dir / "cds.sqlite3")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_echo_and_rejected_callers(make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon(allowed=[(SENDER_AE, ["127.0.0.1/32"]), ("ELSEWHERE", ["127.0.0.2/32"])]).start()
    assert echoscu(d.port).returncode == 0
    unknown = echoscu(d.port, calling="INTRUDER")
    assert unknown.returncode != 0 and "Calling AE Title Not Recognized" in unknown.stderr
    wrong_address = echoscu(d.port, calling="ELSEWHERE")
    assert wrong_address.returncode != 0 and "Calling AE Title Not Recognized" in wrong_address.stderr
    wrong_called = echoscu(d.port, called="SOMEONE_ELSE")
    assert wrong_called.returncode != 0 and "Called AE Title Not Recognized" in wrong_called.stderr
    reasons = {e.get("reason") for e in d.log_events() if e["event"] == "association_rejected"}
    assert reasons == {"calling AE title not recognised", "calling AE title not permitted from this address"}


@pytest.mark.parametrize(
    ("iod", "ts", "extra"),
    [
        ("vl-microscopic", "explicit", ()),
        ("vl-microscopic", "explicit", ("-xy",)),  # storescu converts to JPEG baseline on the fly
        ("vl-slide-microscopic", "jpeg-baseline", ()),
        ("vl-photographic", "rle", ()),
        ("sc", "implicit", ()),
        ("mf-true-color-sc", "jpeg2000", ()),
        ("vl-microscopic", "jpeg-ls", ()),
        ("sc", "deflated", ()),
    ],
)
def test_store_is_durable_and_byte_exact(
    daemon: DaemonProcess, tmp_path: Path, iod: str, ts: str, extra: tuple[str, ...]
) -> None:
    files = write_images(tmp_path / "in", 2, iod=iod, ts=ts, seed=7)
    r = storescu(daemon.port, *files, extra=extra or STORESCU_PROPOSE[ts])
    assert r.returncode == 0, r.stderr
    rows = _rows(daemon, "SELECT sop_instance_uid, spool_path, state, calling_ae FROM instances ORDER BY id")
    assert len(rows) == 2
    for path, (uid, spool_path, state, calling) in zip(files, rows, strict=True):
        original = pydicom.dcmread(path)
        assert uid == original.SOPInstanceUID and state == "received" and calling == SENDER_AE
        received = Path(spool_path).read_bytes()
        if not extra:
            assert dataset_bytes(received) == dataset_bytes(path.read_bytes())
        assert pydicom.dcmread(spool_path).SOPInstanceUID == uid
    events = [e for e in daemon.log_events() if e["event"] == "instance_received"]
    assert len(events) == 2 and all(e["bytes"] > 0 and e["ms"] >= 0 for e in events)


def test_resend_is_acknowledged_once(daemon: DaemonProcess, tmp_path: Path) -> None:
    files = write_images(tmp_path / "in", 1, seed=3)
    for _ in range(3):
        assert storescu(daemon.port, *files).returncode == 0
    assert _rows(daemon, "SELECT COUNT(*) FROM instances") == [(1,)]
    assert len(list((daemon.data_dir / "spool" / "objects").rglob("*.dcm"))) == 1
    dup = [e for e in daemon.log_events() if e["event"] == "instance_received" and e["duplicate"]]
    assert len(dup) == 2


def test_unsupported_sop_class_is_refused(daemon: DaemonProcess, tmp_path: Path) -> None:
    ds = pydicom.dcmread(write_images(tmp_path / "in", 1)[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image
    ct = tmp_path / "ct.dcm"
    ds.save_as(ct, enforce_file_format=True)
    r = storescu(daemon.port, ct)
    assert r.returncode != 0 and "No Acceptable Presentation Contexts" in r.stderr
    assert _rows(daemon, "SELECT COUNT(*) FROM instances") == [(0,)]


def test_missing_pixel_data_gets_a900(daemon: DaemonProcess, tmp_path: Path) -> None:
    ds = pydicom.dcmread(write_images(tmp_path / "in", 1)[0])
    del ds.PixelData
    path = tmp_path / "nopix.dcm"
    ds.save_as(path, enforce_file_format=True)
    r = storescu(daemon.port, path, extra=("-v",))
    assert r.returncode != 0 and "Error: DataSetDoesNotMatchSOPClass" in r.stderr  # dcmtk's name for 0xA900
    assert _rows(daemon, "SELECT status, reason FROM rejections") == [(0xA900, "no pixel data")]
    assert _rows(daemon, "SELECT COUNT(*) FROM instances") == [(0,)]


def test_truncated_files_are_refused(daemon: DaemonProcess, tmp_path: Path) -> None:
    data = write_images(tmp_path / "in", 1)[0].read_bytes()
    in_pixels = tmp_path / "cut-in-pixels.dcm"
    in_pixels.write_bytes(data[: len(data) // 2])
    assert send_raw(daemon.port, in_pixels) == 0xA900
    in_header = tmp_path / "cut-in-header.dcm"
    header_end = data.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010) PixelData
    in_header.write_bytes(data[: header_end - 7])
    assert send_raw(daemon.port, in_header) in (0xA900, 0xC000)
    assert _rows(daemon, "SELECT COUNT(*) FROM instances") == [(0,)]
    assert len(_rows(daemon, "SELECT * FROM rejections")) == 2
    assert echoscu(daemon.port).returncode == 0, "daemon must keep serving"


def test_disk_below_watermark_gets_a700(make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    d = make_daemon(extra_env={"CDS_STORAGE__MIN_FREE_MB": str(2**40)}).start()
    files = write_images(tmp_path / "in", 1)
    r = storescu(d.port, *files, extra=("-v",))
    assert r.returncode != 0 and "Refused: OutOfResources" in r.stderr  # dcmtk's name for 0xA700
    assert list((d.data_dir / "spool" / "objects").rglob("*.dcm")) == []
    assert list((d.data_dir / "spool" / "incoming").iterdir()) == []


def test_logs_are_json_without_patient_identifiers(daemon: DaemonProcess, tmp_path: Path) -> None:
    files = write_images(tmp_path / "in", 2, seed=11)
    assert storescu(daemon.port, *files).returncode == 0
    text = daemon.log_path.read_text()
    for path in files:
        ds = pydicom.dcmread(path)
        for value in (str(ds.PatientName), str(ds.PatientID), str(ds.get("PatientBirthDate", ""))):
            if value:
                assert value not in text
    assert all(line.startswith("{") for line in text.splitlines() if line.strip())
